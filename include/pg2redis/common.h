/*-------------------------------------------------------------------------
 *
 * common.h
 *	  What every stage shares: operations, soft errors, guarded calls.
 *
 * Stage: common (every stage may include it)
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_COMMON_H
#define PG2REDIS_COMMON_H

#include "postgres.h"

/* Name of the catalog schema and of the rules table. */
#define PG2R_SCHEMA "pg2redis"
#define PG2R_RULES "rules"

/*
 * The prefix of pg2redis's own keys in Redis (stream positions
 * "pg2redis:<slot name>:lsn", cluster fences and sync keys).  Rules may not
 * write keys under it, or one instance's rule could move another's
 * position: refused in a rule's literal keys, a render error in keys that
 * values make.
 */
#define PG2R_KEY_PREFIX "pg2redis:"

/*
 * Operations a rule can be written for.  The order is that of the values
 * stored in pg2redis.rules.op; see pg2r_op_name().
 */
typedef enum Pg2rOp
{
	PG2R_OP_INSERT,
	PG2R_OP_UPDATE,
	PG2R_OP_DELETE,
	PG2R_OP_TRUNCATE,
	PG2R_OP_SNAPSHOT
} Pg2rOp;

#define PG2R_NUM_OPS 5

extern const char *pg2r_op_name(Pg2rOp op);
extern bool		   pg2r_op_parse(const char *name, Pg2rOp *op);

/*
 * A soft error: what a compile or render step reports instead of raising,
 * so that the caller decides whether it becomes an ERROR (rule validation,
 * preview) or a dead letter (the stream).
 */
typedef struct Pg2rError
{
	int	  sqlerrcode;
	char *message;
	char *hint; /* NULL if none */
	char *key;	/* the row's key, "col=value, ...", set for sinks; or NULL */
} Pg2rError;

extern bool pg2r_fail(Pg2rError *err, int sqlerrcode, const char *hint,
					  const char *fmt, ...) pg_attribute_printf(4, 5);
extern void pg2r_raise(const Pg2rError *err) pg_attribute_noreturn();

extern ErrorData *pg2r_run_guarded(void (*fn)(void *arg), void *arg);

#endif /* PG2REDIS_COMMON_H */
