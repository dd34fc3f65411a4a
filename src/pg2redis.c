/*-------------------------------------------------------------------------
 *
 * pg2redis.c
 *	  Library entry point: load checks and settings.
 *
 * pg2redis must be loaded through shared_preload_libraries: its worker is
 * registered by the postmaster, and every backend must have the library
 * loaded so that the commit hook and the output plugin are the same code.
 * Loading it any other way is refused with a hint, never half-done.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "pg2redis/pg2redis.h"

PG_MODULE_MAGIC;

int pg2r_numeric_mode = PG2R_NUMERIC_NUMBER;

static const struct config_enum_entry numeric_mode_options[] =
	{{"number", PG2R_NUMERIC_NUMBER, false},
	 {"string", PG2R_NUMERIC_STRING, false},
	 {NULL, 0, false}};

static const char *const op_names[PG2R_NUM_OPS] = {"insert", "update",
												   "delete", "truncate",
												   "snapshot"};

void _PG_init(void);

/*
 * _PG_init refuses to load outside shared_preload_libraries and defines
 * the pg2redis.* settings.
 */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg2redis must be loaded via \"shared_preload_libraries\""),
				 errhint("Add pg2redis to \"shared_preload_libraries\" in postgresql.conf and restart the server.")));

	DefineCustomEnumVariable("pg2redis.numeric_mode",
							 "How {json:…} renders numeric and float values.",
							 "\"number\" writes JSON numbers (exact digits as PostgreSQL prints them); \"string\" writes JSON strings.",
							 &pg2r_numeric_mode, PG2R_NUMERIC_NUMBER,
							 numeric_mode_options, PGC_SIGHUP, 0, NULL, NULL,
							 NULL);

	MarkGUCPrefixReserved("pg2redis");
}

/* pg2r_op_name returns the name of op as stored in pg2redis.rules.op. */
const char *
pg2r_op_name(Pg2rOp op)
{
	return op_names[op];
}

/* pg2r_op_parse sets *op from its name; false if the name is unknown. */
bool
pg2r_op_parse(const char *name, Pg2rOp *op)
{
	for (int i = 0; i < PG2R_NUM_OPS; i++)
		if (strcmp(name, op_names[i]) == 0)
		{
			*op = (Pg2rOp) i;
			return true;
		}
	return false;
}
