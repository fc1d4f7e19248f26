/*
 * sha256.c: migration checksums through OpenSSL's libcrypto.
 * checksum(bytes) -> "sha256-v1:<hex>" of the bytes with CRLF folded to LF, so
 * a file checked out on Windows does not count as drift. The "v1" prefix lets
 * a later algorithm coexist with history rows written by this one.
 */
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "migrate.h"

static void
to_hex(const unsigned char *md, unsigned int n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (unsigned int i = 0; i < n; i++)
	{
		out[2 * i] = digits[md[i] >> 4];
		out[2 * i + 1] = digits[md[i] & 15];
	}
	out[2 * n] = '\0';
}

/* Hashes s[0..len), skipping every '\r' that precedes '\n' when fold is set. */
static int
digest(const char *s, size_t len, int fold, char hex[65])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx;
	static int initialised = 0;

	/* SHA-256 needs no openssl.cnf: skip reading it (about 1 ms per start) */
	if (!initialised)
		initialised = OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL);
	ctx = EVP_MD_CTX_new();
	int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
	size_t start = 0;

	for (size_t i = 0; ok && fold && i + 1 < len; i++)
		if (s[i] == '\r' && s[i + 1] == '\n')
		{
			ok = EVP_DigestUpdate(ctx, s + start, i - start) == 1;
			start = i + 1;
		}
	ok = ok && EVP_DigestUpdate(ctx, s + start, len - start) == 1;
	ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1;
	EVP_MD_CTX_free(ctx);
	if (ok)
		to_hex(md, mdlen, hex);
	return ok;
}

int
mig_l_checksum(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	char hex[65];
	if (!digest(s, len, 1, hex))
		return luaL_error(L, "sha256 failed in libcrypto");
	lua_pushfstring(L, "sha256-v1:%s", hex);
	return 1;
}

int
mig_l_sha256(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	char hex[65];
	if (!digest(s, len, 0, hex))
		return luaL_error(L, "sha256 failed in libcrypto");
	lua_pushstring(L, hex);
	return 1;
}
