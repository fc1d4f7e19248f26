/*
 * lpg_error.c: the notices of a connection.
 */
#include "lpg_int.h"

/* Notices (RAISE NOTICE, "table does not exist, skipping") are dropped:
 * nothing reads them yet, and libpq's default receiver would write them to
 * stderr, across the tool's own output. Nothing here may raise. */
void
lpg_notice_receiver(void *arg, const PGresult *res)
{
	(void) arg;
	(void) res;
}
