/*
 * clock.c: the two clocks the Lua side reads.
 *   now_ms()   monotonic milliseconds (float), for durations
 *   wall_ms()  milliseconds since the epoch (float), for log timestamps
 *              (Lua's os.time has whole seconds only)
 */
#include <time.h>

#include "migrate.h"

static lua_Number
ms_of(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (lua_Number) ts.tv_sec * 1000.0 + (lua_Number) ts.tv_nsec / 1e6;
}

int
mig_l_now_ms(lua_State *L)
{
	lua_pushnumber(L, ms_of(CLOCK_MONOTONIC));
	return 1;
}

int
mig_l_wall_ms(lua_State *L)
{
	lua_pushnumber(L, ms_of(CLOCK_REALTIME));
	return 1;
}
