/*
 * runid.c: run_id() -> a random (version 4) UUID naming one run, e.g.
 * "3f2b8c1e-9d4a-4e7b-a1c2-5e6f7a8b9c0d", from getrandom(2), else from
 * libcrypto's RAND_bytes. Raises when neither can give random bytes.
 */
#include <errno.h>
#include <stdio.h>
#include <sys/random.h>

#include <openssl/rand.h>

#include "migrate.h"

static int
random_bytes(unsigned char *buf, size_t n)
{
	size_t got = 0;

	while (got < n)
	{
		ssize_t r = getrandom(buf + got, n - got, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t) r;
	}
	return got == n || RAND_bytes(buf, (int) n) == 1;
}

int
mig_l_run_id(lua_State *L)
{
	unsigned char u[16];
	char out[37];

	if (!random_bytes(u, sizeof u))
		return luaL_error(L, "cannot make a run id: no random bytes (getrandom, RAND_bytes)");
	u[6] = (unsigned char) ((u[6] & 0x0f) | 0x40); /* version 4 */
	u[8] = (unsigned char) ((u[8] & 0x3f) | 0x80); /* RFC 4122 variant */
	snprintf(out, sizeof out,
			 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
			 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7],
			 u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
	lua_pushlstring(L, out, 36);
	return 1;
}
