/*
 * sha256.c: migration checksums through OpenSSL's libcrypto.
 * checksum(bytes) -> "sha256-v1:<hex>" of the bytes with CRLF folded to LF, so
 * a file checked out on Windows does not count as drift. The "v1" prefix lets
 * a later algorithm coexist with history rows written by this one.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* SHA256_Init/Update/Final: deprecated in OpenSSL 3 in favour of EVP, and
 * kept here on purpose (see digest below); declared without the warning */
#define OPENSSL_API_COMPAT 0x10100000L
#include <openssl/sha.h>

#include "migrate.h"

/* a checksum as history rows hold it: the version of the algorithm, the hex */
#define CHECKSUM_FORMAT "sha256-v1:%s"

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

/*
 * Hashes s[0..len), skipping every '\r' that precedes '\n' when fold is set.
 * Through libcrypto's SHA-256 functions, not EVP: EVP_MD_fetch in OpenSSL 3
 * initialises the provider machinery, which touched 1.4 MB more of
 * libcrypto (peak RSS of every show and run, issue 13) and ran ~3.5 M
 * instructions once per process; the digest is the same code either way.
 */
static int
digest(const char *s, size_t len, int fold, char hex[65])
{
	SHA256_CTX ctx;
	unsigned char md[SHA256_DIGEST_LENGTH];
	size_t start = 0;
	int ok;

	ok = SHA256_Init(&ctx) == 1;
	for (size_t i = 0; ok && fold && i + 1 < len; i++)
		if (s[i] == '\r' && s[i + 1] == '\n')
		{
			ok = SHA256_Update(&ctx, s + start, i - start) == 1;
			start = i + 1;
		}
	ok = ok && SHA256_Update(&ctx, s + start, len - start) == 1;
	ok = ok && SHA256_Final(md, &ctx) == 1;
	if (ok)
		to_hex(md, SHA256_DIGEST_LENGTH, hex);
	return ok;
}

/* The digest of the string argument, pushed as format gives it (%s: the hex). */
static int
push_digest(lua_State *L, int fold, const char *format)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	char hex[65];
	if (!digest(s, len, fold, hex))
		return luaL_error(L, "sha256 failed in libcrypto");
	lua_pushfstring(L, format, hex);
	return 1;
}

/* checksum(bytes) -> "sha256-v1:<hex>", CRLF folded */
int
mig_l_checksum(lua_State *L)
{
	return push_digest(L, 1, CHECKSUM_FORMAT);
}

/* sha256(bytes) -> "<hex>" of the bytes as they are */
int
mig_l_sha256(lua_State *L)
{
	return push_digest(L, 0, "%s");
}

/*
 * checksum_file(path) -> "sha256-v1:<hex>" | nil, message
 * The same checksum as checksum(contents), without making the contents a
 * Lua string: `show` hashes every file and needs nothing else of them.
 * The buffer is freed before anything is pushed, so no error can leak it.
 */
int
mig_l_checksum_file(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	char *buf = NULL, hex[65];
	size_t len = 0;
	int ok = 0, err = 0;

	if (fd >= 0 && fstat(fd, &st) == 0)
	{
		size_t cap = (size_t) st.st_size + 1;
		buf = malloc(cap);
		while (buf != NULL)
		{
			ssize_t n = read(fd, buf + len, cap - len);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
			{
				ok = n == 0;
				break;
			}
			len += (size_t) n;
			if (len == cap)
			{
				char *bigger = realloc(buf, cap *= 2); /* the file grew since fstat */
				if (bigger == NULL)
					break;
				buf = bigger;
			}
		}
	}
	err = errno;
	if (fd >= 0)
		close(fd);
	ok = ok && digest(buf, len, 1, hex);
	free(buf);
	if (!ok)
	{
		luaL_pushfail(L);
		lua_pushfstring(L, "%s: %s", path, strerror(err ? err : EIO));
		return 2;
	}
	lua_pushfstring(L, CHECKSUM_FORMAT, hex);
	return 1;
}
