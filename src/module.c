/*
 * migrate.so: nothing but a reference that pulls luaopen_migrate (the one
 * exported symbol) out of mig_core; this anchor itself is hidden.
 */
#include "migrate.h"

int
luaopen_migrate_so_anchor(lua_State *L)
{
	return luaopen_migrate(L);
}
