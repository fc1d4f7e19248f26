#!/usr/bin/env python3
"""bench/delay_proxy.py LISTEN_PORT UNIX_SOCKET DELAY_MS: a TCP proxy on
127.0.0.1:LISTEN_PORT to PostgreSQL's unix socket that holds every chunk
DELAY_MS milliseconds in each direction (latency, not bandwidth: chunks in
flight overlap, order is kept). bench/net_bench.sh uses it where the kernel
has no netem qdisc (containers). Prints "ready" when it listens."""
import asyncio, collections, sys, time

port, sock, delay = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]) / 1000.0


async def pump(reader, writer):
    queue = collections.deque()
    ready = asyncio.Event()
    done = False

    async def deliver():
        while True:
            while not queue:
                if done:
                    writer.close()
                    return
                ready.clear()
                await ready.wait()
            due, data = queue[0]
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            queue.popleft()
            writer.write(data)
            await writer.drain()

    task = asyncio.ensure_future(deliver())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            queue.append((time.monotonic() + delay, data))
            ready.set()
    except (ConnectionError, OSError):
        pass
    done = True
    ready.set()
    try:
        await task
    except (ConnectionError, OSError):
        pass


async def handle(creader, cwriter):
    try:
        sreader, swriter = await asyncio.open_unix_connection(sock)
    except OSError:
        cwriter.close()
        return
    await asyncio.gather(pump(creader, swriter), pump(sreader, cwriter))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
