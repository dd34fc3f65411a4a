/*-------------------------------------------------------------------------
 *
 * decode.h
 *	  What the output plugin (plugin.c) lets its consumer add: DecodeHooks.
 *
 * Read through SQL, the plugin writes commands as rows and knows nothing
 * else.  The worker installs a DecodeHooks table at start
 * (decode_set_hooks); the plugin then hands each transaction, change,
 * truncate and message to the hooks, and commands to the hooks' sinks.
 * NULL hooks (the default) mean SQL mode.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_DECODE_H
#define PG2REDIS_DECODE_H

#include "pg2redis/mapping.h"
#include "replication/reorderbuffer.h"

typedef struct DecodeHooks
{
	/* a transaction begins; returns whether to map it carefully */
	bool (*begin)(ReorderBufferTXN *txn);
	/* the transaction's changes are all mapped */
	void (*commit)(ReorderBufferTXN *txn);

	/*
	 * A row change arrives, before it is mapped; returns a token for
	 * change_end.
	 */
	int (*change_start)(Relation rel, ReorderBufferTXN *txn, Pg2rOp op,
						HeapTuple oldtup, HeapTuple newtup);
	/* the changed relation has rules; false: skip the change */
	bool (*change_mapped)(Relation rel);
	/* the key of the changed row, before its rules run */
	void (*row_key)(Relation rel, RelMap *map, HeapTuple tuple);
	/* the change is done (mapped: its rules ran) */
	void (*change_end)(int token, bool mapped);
	/* mapping a change raised an ERROR (careful mode only) */
	void (*change_error)(Oid relid, Pg2rOp op, const char *message);
	/* relations are truncated; false: skip the truncate */
	bool (*truncate)(ReorderBufferTXN *txn, int nrelations,
					 Relation relations[]);
	/* a non-transactional message; lsn is the end of its record */
	void (*message)(XLogRecPtr lsn, const char *prefix, Size size,
					const char *message);

	/*
	 * Where commands go, for changes and for truncates; the plugin sets arg
	 * to point to the Oid of the relation the commands are for.
	 */
	CommandSink change_sink;
	CommandSink truncate_sink;
} DecodeHooks;

extern void decode_set_hooks(const DecodeHooks *hooks);

/* The worker's hooks (decode_worker.c). */
extern const DecodeHooks pg2r_worker_decode_hooks;

#endif /* PG2REDIS_DECODE_H */
