/*
 * sha256.c: migration checksums, SHA-256 (FIPS 180-4) implemented here.
 * checksum(bytes) -> "sha256-v1:<hex>" of the bytes with CRLF folded to LF, so
 * a file checked out on Windows does not count as drift. The "v1" prefix lets
 * a later algorithm coexist with history rows written by this one.
 *
 * Not OpenSSL's EVP: the first libcrypto digest initialises its provider
 * (about 0.6 ms and 1.4 MB of resident pages per process, measured), more
 * than `show` spends on everything else but the connection. Here: the x86
 * SHA extensions when the CPU has them (200 migration files: ~0.1 ms),
 * else portable C (~0.5 ms).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "migrate.h"

typedef struct {
	uint32_t h[8];
	uint64_t len;            /* bytes hashed so far */
	unsigned char buf[64];
	size_t used;             /* bytes waiting in buf */
} Sha256;

static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void
sha256_block(uint32_t h[8], const unsigned char *p)
{
	uint32_t w[64], a, b, c, d, e, f, g, k;
	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t) p[4 * i] << 24 | (uint32_t) p[4 * i + 1] << 16 | (uint32_t) p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++)
	{
		uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; k = h[7];
	for (int i = 0; i < 64; i++)
	{
		uint32_t t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
		uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
		k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
	}
	h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

/* n consecutive 64-byte blocks, portable C */
static void
blocks_portable(uint32_t h[8], const unsigned char *p, size_t n)
{
	for (; n > 0; n--, p += 64)
		sha256_block(h, p);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_SHA_NI 1

/*
 * The same with the x86 SHA extensions (most x86-64 CPUs since 2017-2019),
 * about 6 times faster: the state is kept as ABEF / CDGH, each group of 4
 * message words is scheduled by sha256msg1/msg2 and hashed by two
 * sha256rnds2 (2 rounds each), as Intel's reference code does.
 */
__attribute__((target("sha,sse4.1"))) static void
blocks_sha_ni(uint32_t h[8], const unsigned char *p, size_t n)
{
	const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
	__m128i tmp = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *) &h[0]), 0xB1);   /* B A D C */
	__m128i s1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *) &h[4]), 0x1B);    /* H G F E */
	__m128i s0 = _mm_alignr_epi8(tmp, s1, 8);                                           /* ABEF */
	s1 = _mm_blend_epi16(s1, tmp, 0xF0);                                                /* CDGH */

	for (; n > 0; n--, p += 64)
	{
		__m128i abef = s0, cdgh = s1, m[4];
		for (int g = 0; g < 16; g++)
		{
			__m128i w;
			if (g < 4)
				w = m[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *) (p + 16 * g)), bswap);
			else
			{
				/* m[g & 3] is words g-4, then g-3, g-2, g-1 follow (mod 4) */
				w = _mm_sha256msg1_epu32(m[g & 3], m[(g + 1) & 3]);
				w = _mm_add_epi32(w, _mm_alignr_epi8(m[(g + 3) & 3], m[(g + 2) & 3], 4));
				w = m[g & 3] = _mm_sha256msg2_epu32(w, m[(g + 3) & 3]);
			}
			__m128i msg = _mm_add_epi32(w, _mm_loadu_si128((const __m128i *) &K[4 * g]));
			s1 = _mm_sha256rnds2_epu32(s1, s0, msg);
			s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(msg, 0x0E));
		}
		s0 = _mm_add_epi32(s0, abef);
		s1 = _mm_add_epi32(s1, cdgh);
	}
	tmp = _mm_shuffle_epi32(s0, 0x1B);                                                  /* A B E F */
	s1 = _mm_shuffle_epi32(s1, 0xB1);                                                   /* G H C D */
	_mm_storeu_si128((__m128i *) &h[0], _mm_blend_epi16(tmp, s1, 0xF0));                /* A B C D */
	_mm_storeu_si128((__m128i *) &h[4], _mm_alignr_epi8(s1, tmp, 8));                   /* E F G H */
}
#endif

/*
 * The block function, chosen once: the SHA extensions when the CPU has
 * them, unless MIGRATE_SHA256=portable (how tests/core_spec.lua checks the
 * portable code on a machine that has them).
 */
static void (*blocks)(uint32_t h[8], const unsigned char *p, size_t n) = NULL;

static void
choose_blocks(void)
{
	const char *want = getenv("MIGRATE_SHA256");
	blocks = blocks_portable;
#ifdef HAVE_SHA_NI
	__builtin_cpu_init();
	if (!(want != NULL && strcmp(want, "portable") == 0) && __builtin_cpu_supports("sha") &&
		__builtin_cpu_supports("sse4.1"))
		blocks = blocks_sha_ni;
#else
	(void) want;
#endif
}

static void
sha256_init(Sha256 *s)
{
	static const uint32_t H0[8] = {
		0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
	};
	if (blocks == NULL)
		choose_blocks();
	memcpy(s->h, H0, sizeof H0);
	s->len = 0;
	s->used = 0;
}

static void
sha256_update(Sha256 *s, const unsigned char *p, size_t n)
{
	s->len += n;
	if (s->used > 0)
	{
		size_t take = 64 - s->used < n ? 64 - s->used : n;
		memcpy(s->buf + s->used, p, take);
		s->used += take;
		p += take;
		n -= take;
		if (s->used < 64)
			return;
		blocks(s->h, s->buf, 1);
		s->used = 0;
	}
	blocks(s->h, p, n / 64);
	p += n / 64 * 64;
	n %= 64;
	memcpy(s->buf, p, n);
	s->used = n;
}

static void
sha256_final(Sha256 *s, unsigned char md[32])
{
	uint64_t bits = s->len * 8;
	unsigned char pad[72] = {0x80};
	size_t padlen = (s->used < 56 ? 56 : 120) - s->used;
	for (int i = 0; i < 8; i++)
		pad[padlen + i] = (unsigned char) (bits >> (56 - 8 * i));
	sha256_update(s, pad, padlen + 8);
	for (int i = 0; i < 8; i++)
	{
		md[4 * i] = (unsigned char) (s->h[i] >> 24);
		md[4 * i + 1] = (unsigned char) (s->h[i] >> 16);
		md[4 * i + 2] = (unsigned char) (s->h[i] >> 8);
		md[4 * i + 3] = (unsigned char) s->h[i];
	}
}

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
 * Feeds s[0..len) to the hash, skipping every '\r' that precedes '\n' when
 * fold is set. In pieces (a file read in chunks): a '\r' that ends a piece
 * is held back (*held) until the next piece, or the end, says whether a
 * '\n' follows it.
 */
static void
feed(Sha256 *ctx, const char *s, size_t len, int fold, int *held)
{
	size_t start = 0;

	if (!fold)
	{
		sha256_update(ctx, (const unsigned char *) s, len);
		return;
	}
	if (*held && len > 0)
	{
		if (s[0] != '\n')
			sha256_update(ctx, (const unsigned char *) "\r", 1);
		*held = 0;
	}
	for (size_t i = 0; i + 1 < len; i++)
		if (s[i] == '\r' && s[i + 1] == '\n')
		{
			sha256_update(ctx, (const unsigned char *) s + start, i - start);
			start = i + 1;
		}
	if (len > start && s[len - 1] == '\r')
	{
		*held = 1;
		len--;
	}
	sha256_update(ctx, (const unsigned char *) s + start, len - start);
}

/* The hex digest once everything was fed (a held '\r' is hashed: no '\n' came). */
static void
finish(Sha256 *ctx, int held, char hex[65])
{
	unsigned char md[32];
	if (held)
		sha256_update(ctx, (const unsigned char *) "\r", 1);
	sha256_final(ctx, md);
	to_hex(md, 32, hex);
}

static void
digest(const char *s, size_t len, int fold, char hex[65])
{
	Sha256 ctx;
	int held = 0;
	sha256_init(&ctx);
	feed(&ctx, s, len, fold, &held);
	finish(&ctx, held, hex);
}

int
mig_l_checksum(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	char hex[65];
	digest(s, len, 1, hex);
	lua_pushfstring(L, "sha256-v1:%s", hex);
	return 1;
}

int
mig_l_sha256(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	char hex[65];
	digest(s, len, 0, hex);
	lua_pushstring(L, hex);
	return 1;
}

/*
 * checksum_file(path) -> "sha256-v1:<hex>" | nil, message
 * The same checksum as checksum(contents), without making the contents a
 * Lua string: `show` hashes every file and needs nothing else of them. The
 * file is hashed as it is read, through one buffer on the stack: open, the
 * reads, close, nothing allocated.
 */
int
mig_l_checksum_file(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char buf[16384], hex[65];
	Sha256 ctx;
	int ok = 0, err = 0, held = 0;

	sha256_init(&ctx);
	while (fd >= 0)
	{
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
		{
			ok = n == 0;
			break;
		}
		feed(&ctx, buf, (size_t) n, 1, &held);
	}
	err = errno;
	if (fd >= 0)
		close(fd);
	if (!ok)
	{
		luaL_pushfail(L);
		lua_pushfstring(L, "%s: %s", path, strerror(err ? err : EIO));
		return 2;
	}
	finish(&ctx, held, hex);
	lua_pushfstring(L, "sha256-v1:%s", hex);
	return 1;
}
