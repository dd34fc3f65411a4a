/*-------------------------------------------------------------------------
 *
 * mapping.h
 *	  The mapping engine: one row change in, Redis commands out.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_MAPPING_H
#define PG2REDIS_MAPPING_H

#include "access/htup.h"
#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "pg2redis/render.h"
#include "pg2redis/rules.h"
#include "utils/rel.h"

/*
 * A relation that changes arrive for, resolved to the relation whose rules
 * apply (itself, or for a partition its nearest ancestor with rules) and
 * to the per-column rendering lookups.  Cached per backend; rebuilt when the
 * relation or the rules change.
 */
typedef struct RelMap
{
	Oid			  relid; /* hash key */
	bool		  valid;
	uint64		  generation; /* rules_generation() it was built for */
	MemoryContext cxt;		  /* everything below lives here */
	Oid			  rulerelid;  /* InvalidOid: no rules apply */
	char		 *schema;	  /* of rulerelid */
	char		 *table;
	int			  natts;  /* of relid */
	ColType		 *cols;	  /* [attnum - 1] of relid */
	AttrNumber	 *attmap; /* rule relation attnum - 1 -> relid attnum;
								 * NULL if the same relation */
	int			  npk;	  /* key columns for {%pk%}, rule relation */
	AttrNumber	 *pk;
	Bitmapset	 *identity; /* replica identity columns, rule rel attnums */
	bool		  identity_full;
	Oid			  keyindex; /* relid's key (pg2r_row_key_index), or invalid, */
	int			  nkeys;	/* and its columns, relid attnums: what a */
	AttrNumber	 *keyatts;	/* dead letter names its row by */
} RelMap;

/* Transaction facts for {%xid%}, {%lsn%}, {%commit_time%}. */
typedef struct ChangeMeta
{
	TransactionId xid;
	XLogRecPtr	  lsn;
	TimestampTz	  commit_time;
} ChangeMeta;

/*
 * Where expanded commands and render errors go.  With careful, each rule
 * runs in a subtransaction and an ERROR raised while rendering it is
 * handed to error (see mapping.c); command must then add a command whole
 * or not at all.
 */
typedef struct CommandSink
{
	void (*command)(void *arg, const Rule *rule, Pg2rOp op, int argc,
					const char *const *argv, const size_t *argvlen);
	void (*error)(void *arg, const Rule *rule, Pg2rOp op,
				  const Pg2rError *err);
	void *arg;
	bool  careful;
} CommandSink;

extern RelMap *mapping_get(Relation rel);
extern bool	   mapping_has_rules(RelMap *map);
extern void	   mapping_change(RelMap *map, Relation rel, Pg2rOp op,
							  HeapTuple oldtuple, HeapTuple newtuple,
							  const ChangeMeta *meta, const CommandSink *sink);
extern void	   mapping_truncate(RelMap *map, const ChangeMeta *meta,
								const CommandSink *sink);

#endif /* PG2REDIS_MAPPING_H */
