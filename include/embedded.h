/* Lua sources compiled into the binary and the module (cmake/embed_lua.cmake). */
#ifndef MIGRATE_EMBEDDED_H
#define MIGRATE_EMBEDDED_H
#include <stddef.h>

struct mig_embedded
{
	const char *module;    /* "migrate.cli" */
	const char *chunkname; /* "@lua/migrate/cli.lua", so tracebacks name the file */
	const char *source;
	size_t len;
};

extern const struct mig_embedded mig_embedded_lua[];
#endif
