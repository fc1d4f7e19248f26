#!/usr/bin/env python3
"""bench/delay_proxy.py LISTEN_PORT UNIX_SOCKET DELAY_MS [TURNS_FILE]: a TCP
proxy on 127.0.0.1:LISTEN_PORT to PostgreSQL's unix socket that holds every
chunk DELAY_MS milliseconds in each direction (latency, not bandwidth: chunks
in flight overlap, order is kept). bench/net_bench.sh uses it where the
kernel has no netem qdisc (containers). Prints "ready" when it listens.

TURNS_FILE: when a connection ends, one line "application_name turns" is
appended: turns = how many times the client sent after the server had
answered, i.e. the round trips it waited for (what it sends while nothing
came back, a pipeline's commands, counts once). The name is the startup
packet's application_name (or fallback_application_name); connect with
sslmode=disable gssencmode=disable so the startup packet comes first.
tests/core_pipeline_spec.lua counts a migration's round trips with it."""
import asyncio, collections, sys, time

port, sock, delay = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]) / 1000.0
turns_file = sys.argv[4] if len(sys.argv) > 4 else None


def startup_name(data):
    """application_name from a startup packet (int32 length, int32 protocol, key\0value\0 ...)."""
    parts = data[8:].split(b"\0")
    pairs = dict(zip(parts[0::2], parts[1::2]))
    name = pairs.get(b"application_name") or pairs.get(b"fallback_application_name") or b"?"
    return name.decode("utf-8", "replace").replace(" ", "_")


async def pump(reader, writer, stats=None, upstream=False):
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
            if stats is not None:
                if upstream:
                    if stats["name"] is None:
                        stats["name"] = startup_name(data)
                    if stats["answered"]:
                        stats["turns"] += 1
                        stats["answered"] = False
                else:
                    stats["answered"] = True
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
    stats = {"name": None, "turns": 0, "answered": True} if turns_file else None
    await asyncio.gather(pump(creader, swriter, stats, True), pump(sreader, cwriter, stats))
    if stats is not None:
        with open(turns_file, "a") as f:
            f.write("%s %d\n" % (stats["name"], stats["turns"]))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
