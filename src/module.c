/* migrate.so: nothing but the exported entry point; the work is in mig_core. */
#include "migrate.h"

LUAMOD_API int
luaopen_migrate_so_anchor(lua_State *L)
{
	return luaopen_migrate(L);
}
