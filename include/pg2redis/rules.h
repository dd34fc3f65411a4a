/*-------------------------------------------------------------------------
 *
 * rules.h
 *	  The rule catalog: validation when written, a compiled cache when read.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_RULES_H
#define PG2REDIS_RULES_H

#include "nodes/pg_list.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "pg2redis/condition.h"
#include "pg2redis/template.h"
#include "utils/relcache.h"

/* One enabled rule of pg2redis.rules, compiled against its relation. */
typedef struct Rule
{
	int64						  id;
	Oid							  relid;
	Pg2rOp						  op;
	int							  position;
	Template					 *tpl;	/* NULL if broken */
	const struct RedisCommandDef *def;	/* the command's shape */
	Condition					 *cond; /* NULL = always */
	Pg2rError *broken;	 /* why it no longer compiles, or NULL */
	int		   ncommand; /* the command as stored, for dead letters */
	char	 **command;
} Rule;

extern List	 *rules_for(Oid relid, Pg2rOp op);
extern bool	  rules_exist_for(Oid relid);
extern bool	  rules_have_disabled(Oid relid);
extern uint64 rules_generation(void);
extern List	 *rules_relations(void);
extern List	 *rules_mapped_leaves(Oid relid);

extern void rules_validate(Relation rel, Pg2rOp op, ArrayType *command,
						   Jsonb *condition, Oid writer, bool restoring);

#endif /* PG2REDIS_RULES_H */
