/*-------------------------------------------------------------------------
 *
 * snapshot.c
 *	  Loading existing rows of mapped tables into Redis.
 *
 * The initial load runs in the worker when it creates its slot, inside the
 * transaction that holds the slot's initial snapshot (see worker.c), so the
 * rows it reads are exactly those committed before the slot's start point
 * and the stream continues from there with nothing missed and nothing
 * doubled.  Every partition is read on its own and mapped exactly as its
 * changes are (its own rules, else its nearest ancestor's), with the
 * relation's snapshot rules, else its insert rules.  The load goes through
 * the sender as one transaction ending at the start point, so it is split
 * into atomic parts like any large transaction and fenced by the start
 * point when done.
 *
 * Locks.  Redis slow or gone must not hold up PostgreSQL users, so no lock
 * is held while the load waits for Redis.  A leaf with a key (a primary key
 * or a replica identity index) is read in chunks, in key order
 * (keyorder.c); each chunk locks the leaf in a subtransaction, renders its
 * rows into a buffer, and rolls the subtransaction back, which releases
 * every lock the chunk took; only then are its commands handed to the
 * sender, as one atomic part of the load's transaction, which may wait for
 * Redis.  So Redis has a leaf's rows up to some chunk's last key, and a
 * leaf whose storage changed since the snapshot (VACUUM FULL, CLUSTER,
 * TRUNCATE, a rewriting ALTER TABLE: it can no longer be read as of the
 * snapshot), or a load that gives up, leaves a snapshot on demand to read
 * on after that key: no row is sent twice, so INCRBY or XADD load rules
 * count each row once.  Leaves without a key are read first, whole, in
 * one subtransaction that keeps them locked while their rows are rendered
 * into a temporary file, and sent from there once the locks are released
 * (load_keyless): they cannot be read on after a rewrite.  Other DDL (ADD
 * COLUMN, say) applies to the rows not read yet, as it would to rows the
 * stream decodes after it.  The load still holds its snapshot and its new
 * slot while it waits, for pg2redis.load_stall_timeout without an
 * acknowledgement at most; then it gives up (snapshot_initial_load).
 *
 * A table's snapshot filter is one boolean expression over the table
 * (snapshot_check_filter), run by SQL.  The query runs as the table's owner,
 * in a security-restricted operation with search_path pinned to pg_catalog,
 * pg_temp (snapshot_become_owner), as PostgreSQL's own maintenance commands
 * run index expressions: the worker is a superuser, and a filter, a domain
 * check or a cast on the table is the owner's code, which must not run with
 * more than the owner's rights.  The rows themselves are read with a plain
 * heap scan when there is no filter: no user code runs there.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/heaptoast.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/stratnum.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "common/keywords.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/parser.h"
#include "parser/scanner.h"
#include "pgstat.h"
#include "storage/buffile.h"
#include "storage/bufmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/pg_lsn.h"
#include "utils/array.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/resowner.h"
#include "utils/timeout.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "pg2redis/cmdbuf.h"
#include "pg2redis/keyorder.h"
#include "pg2redis/mapping.h"
#include "pg2redis/ondemand.h"
#include "pg2redis/pgarray.h"
#include "pg2redis/relutil.h"
#include "pg2redis/sender.h"
#include "pg2redis/settings.h"
#include "pg2redis/snapshot.h"
#include "pg2redis/snapshot_filters.h"
#include "pg2redis/state.h"

/* ---------------------------------------------------------------------------
 * The initial load
 * ---------------------------------------------------------------------------
 */

/*
 * A chunk of a leaf read in key order, handed to the sender: Redis has the
 * leaf's rows up to key once it acknowledged the first ncmds commands of
 * the load's transaction.
 */
typedef struct KeyMark
{
	uint64 ncmds;
	Datum *key;
} KeyMark;

/* What the load did with a leaf. */
typedef struct LeafState
{
	Oid		 relid;
	bool	 keyed;	   /* read in key order, by key */
	KeyOrder key;	   /* its key, when keyed */
	List	*marks;	   /* KeyMark *, oldest first: see leaf_resume_key */
	bool	 done;	   /* every chunk was handed to the sender */
	uint64	 ncmds;	   /* once done: the commands Redis must acknowledge */
	bool	 deferred; /* its storage changed: a snapshot on demand reads on */
} LeafState;

/* The initial load. */
typedef struct Load
{
	XLogRecPtr		start;
	Snapshot		snap;
	ChangeMeta		meta;
	bool			careful; /* an ERROR ended the last load */
	MemoryContext	cxt;	 /* outlives the chunks' subtransactions */
	MemoryContext	chunkcxt;
	MemoryContext	rowcxt;
	StringInfoData	buf;	/* the chunk's commands, see buf_command */
	uint64			ncmds;	/* and how many */
	CmdBufReader	reader; /* reads them back for the sender */
	uint64			rows;
	int				leaves_done;
	List		   *leaves;	   /* LeafState *, in load order */
	struct LeafPos *cut;	   /* a keyless leaf spilled in part */
	List		   *unspilled; /* keyless leaves not spilled (OIDs) */
	bool			stalled;   /* Redis acknowledged nothing for too long */
} Load;

/* Where the next chunk of a leaf starts. */
typedef struct LeafPos
{
	LeafState	   *state;
	Oid				relid;
	Oid				filenode; /* its storage as of the load's snapshot */
	bool			started;  /* a chunk was read */
	BlockNumber		nblocks;  /* keyless: its size when first read */
	ItemPointerData next;	  /* heap scan: the first row not read yet */
	BlockNumber		block;	  /* filtered: the first block not read yet */
	BlockNumber		step;	  /* filtered: blocks per chunk */
	Datum		   *last;	  /* keyed: the key of the last row read */
} LeafPos;

static bool load_leaf(Load *ld, Oid relid);
static bool load_leaf_from(Load *ld, LeafPos *ppos);

/* How a chunk of a leaf ended. */
typedef enum ChunkEnd
{
	CHUNK_MORE,		/* the leaf has more rows */
	CHUNK_LAST,		/* the leaf is done */
	CHUNK_GONE,		/* the leaf was dropped since the load began */
	CHUNK_REWRITTEN /* its storage or its key changed since the snapshot */
} ChunkEnd;

/*
 * The arg of the load's CommandSink: the leaf's OID first, which is what
 * sender_render_error reads, then the buffer commands go to.
 */
typedef struct LoadSinkArg
{
	Oid		   relid;
	StringInfo buf;
	uint64	  *ncmds; /* commands in buf */
} LoadSinkArg;

#define LOAD_FIRST_STEP 16		/* blocks of a filtered leaf's first chunk */
#define LOAD_MAX_STEP (1 << 20) /* and most of any */
#define LOAD_KEEP_BUFFER (64 * 1024 * 1024)
/* commands a chunk renders before they are sent: small enough to stay in cache */
#define LOAD_CHUNK_BYTES (256 * 1024)
#define LOAD_FETCH_ROWS 1024 /* TIDs a key-ordered chunk's cursor hands over */

/*
 * buf_command is the load's CommandSink: a chunk's commands are kept (see
 * cmdbuf.c) and handed to the sender once
 * the chunk has released its locks (load_send).  A command is appended
 * whole or, when memory runs out, not at all; one that could not fit in a
 * block is refused here, where a careful load turns it into a dead letter,
 * rather than in the sender later.
 */
static void
buf_command(void *arg, const Rule *rule, Pg2rOp op, int argc,
			const char *const *argv, const size_t *argvlen)
{
	StringInfo buf = ((LoadSinkArg *) arg)->buf;
	Size	   need = cmdbuf_command_size(argc, argvlen);
	Size	   inblock = 16;

	for (int i = 0; i < argc; i++)
		inblock += argvlen[i] + 32;
	if (inblock >= MaxAllocSize - (Size) pg2r_batch_bytes ||
		need >= MaxAllocSize - (Size) buf->len)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("command of %zu bytes does not fit in a block",
						inblock),
				 errhint("Lower pg2redis.max_argument_bytes or pg2redis.batch_bytes.")));
	cmdbuf_append(buf, rule, argc, argv, argvlen);
	(*((LoadSinkArg *) arg)->ncmds)++;
}

/* buf_error records a row a rule could not render (no Redis wait). */
static void
buf_error(void *arg, const Rule *rule, Pg2rOp op, const Pg2rError *err)
{
	sender_render_error(arg, rule, op, err);
}

/*
 * load_wait serves Redis while busy() says the load must wait for the
 * block in flight; false when Redis acknowledged nothing for
 * pg2redis.load_stall_timeout.  No lock is held here: only the snapshot.
 */
static bool
load_wait(bool (*busy)(void))
{
	TimestampTz since = GetCurrentTimestamp();

	while (busy())
	{
		long wait = 1000;

		if (pg2r_load_stall_timeout_ms > 0)
		{
			long waited =
				TimestampDifferenceMilliseconds(since, GetCurrentTimestamp());

			if (waited >= pg2r_load_stall_timeout_ms)
				return false;
			wait = Min(wait, pg2r_load_stall_timeout_ms - waited);
		}
		sender_service(wait);
	}
	return true;
}

/*
 * chunk_full tells whether the chunk being read has as many commands as an
 * atomic part of the load should: pg2redis.max_transaction_commands, or
 * LOAD_CHUNK_BYTES (at most pg2redis.batch_bytes) of them.
 */
static bool
chunk_full(Load *ld)
{
	return ld->ncmds >= (uint64) pg2r_max_transaction_commands ||
		   ld->buf.len >= Min(LOAD_CHUNK_BYTES, pg2r_batch_bytes);
}

/*
 * load_send hands the chunk's commands to the sender as one atomic part of
 * the load's transaction, after waiting (with no lock held) for the part in
 * flight; false when Redis stalled (load_wait).  A chunk read by key is
 * sized to be one part (chunk_full), so that Redis has the rows of a leaf up
 * to the key of a chunk's last row, or none of the chunk: what a load that
 * gives up resumes from (leaf_resume_key).  Other chunks are cut into parts
 * wherever they outgrow the limits.
 */
static bool
load_send(Load *ld, Oid relid, bool keyed)
{
	Rule		rule;
	int			argc;
	const char *error;
	bool		ok = true;

	cmdbuf_reader_init(&ld->reader, ld->buf.data, ld->buf.len, ld->cxt);
	while (cmdbuf_next(&ld->reader, &rule, &argc, &error))
	{
		if (!keyed && sender_part_full())
		{
			if (!load_wait(sender_inflight))
			{
				ok = false;
				break;
			}
			sender_end_part();
		}
		sender_command(&relid, &rule, PG2R_OP_SNAPSHOT, argc, ld->reader.argv,
					   ld->reader.lens);
	}
	if (ok && !load_wait(sender_inflight))
		ok = false;
	if (ok)
		sender_end_part();
	if (ld->buf.maxlen > LOAD_KEEP_BUFFER)
	{
		MemoryContext old = MemoryContextSwitchTo(ld->cxt);

		pfree(ld->buf.data);
		initStringInfo(&ld->buf);
		MemoryContextSwitchTo(old);
	}
	resetStringInfo(&ld->buf);
	ld->ncmds = 0;
	return ok;
}

/* One row of a heap chunk, for load_row_call. */
typedef struct LoadRow
{
	Relation		   rel;
	RelMap			  *map;
	HeapTuple		   tuple;
	const ChangeMeta  *meta;
	const CommandSink *sink;
} LoadRow;

/*
 * load_row_call maps one row of the initial load.  A value stored out of
 * line is an on-disk TOAST pointer in a heap tuple, which the mapping takes
 * for an unchanged value of an update (never sent): such values are
 * fetched first.
 */
static void
load_row_call(void *arg)
{
	LoadRow	 *lr = arg;
	HeapTuple tuple = lr->tuple;

	if (HeapTupleHasExternal(tuple))
		tuple = toast_flatten_tuple(tuple, RelationGetDescr(lr->rel));
	sender_count_change();
	mapping_change(lr->map, lr->rel, PG2R_OP_SNAPSHOT, NULL, tuple, lr->meta,
				   lr->sink);
}

/*
 * describe_row names a row of rel for a message: by its key when it was
 * read by key, else by its TID.
 */
static char *
describe_row(Relation rel, HeapTuple tuple, const KeyOrder *key)
{
	StringInfoData str;
	bool		   unreadable;
	Datum		  *values;
	ListCell	  *lc;

	if (key == NULL)
		return DatumGetCString(DirectFunctionCall1(tidout,
												   PointerGetDatum(&tuple
																		->t_self)));
	values = keyorder_row_key(key, RelationGetDescr(rel), tuple, false,
							  &unreadable);
	if (values == NULL)
		return pstrdup("with an unknown key");
	initStringInfo(&str);
	appendStringInfoString(&str, "with key (");
	foreach(lc, keyorder_key_text(key, values))
		appendStringInfo(&str, "%s%s", foreach_current_index(lc) ? ", " : "",
						 (char *) lfirst(lc));
	appendStringInfoChar(&str, ')');
	return str.data;
}

/*
 * load_row maps one row read by the heap scan, a key-ordered query or a
 * filtered query, in the per-row context, and counts it.  With guard, in a
 * careful load, anything the row raises (a tuple past 1 GB) is a dead
 * letter of its own; a filtered chunk's rows are not guarded one by one
 * (the whole chunk is, see load_chunk_locked).
 */
static void
load_row(Load *ld, Relation rel, RelMap *map, HeapTuple tuple,
		 const KeyOrder *key, const CommandSink *sink, bool guard)
{
	MemoryContext old = MemoryContextSwitchTo(ld->rowcxt);
	LoadRow		  lr = {rel, map, tuple, &ld->meta, sink};

	if (guard && ld->careful)
	{
		ErrorData *edata = pg2r_run_guarded(load_row_call, &lr);

		if (edata)
			sender_change_error(RelationGetRelid(rel), PG2R_OP_SNAPSHOT,
								psprintf("row %s of table \"%s\" could not be loaded: %s",
										 describe_row(rel, tuple, key),
										 RelationGetRelationName(rel),
										 edata->message));
	}
	else
		load_row_call(&lr);
	MemoryContextSwitchTo(old);
	MemoryContextReset(ld->rowcxt);
	ld->rows++;
	CHECK_FOR_INTERRUPTS();
}

/*
 * load_heap_chunk reads rows of rel visible to the load's snapshot with a
 * TID range scan from pos->next, up to pg2redis.snapshot_batch_size rows or
 * pg2redis.batch_bytes of commands, and moves pos->next past the last.  No
 * user code runs here.  A row visible to the snapshot never moves while the
 * snapshot holds back vacuum (an update writes a new version elsewhere and
 * leaves this one), and only VACUUM FULL, CLUSTER, TRUNCATE and rewriting
 * ALTER TABLEs give a table new storage, which the caller checks: so
 * resuming at a TID after the locks were released misses and repeats
 * nothing.
 */
static ChunkEnd
load_heap_chunk(Load *ld, Relation rel, RelMap *map, LeafPos *pos,
				const CommandSink *sink)
{
	TupleTableSlot *slot;
	TableScanDesc	scan;
	ItemPointerData last;
	uint64			n = 0;
	ChunkEnd		result = CHUNK_LAST;

	if (pos->nblocks == 0)
		return CHUNK_LAST;
	/* blocks added since hold only rows the snapshot does not see */
	ItemPointerSet(&last, pos->nblocks - 1, MaxOffsetNumber);
	slot = table_slot_create(rel, NULL);
	scan = table_beginscan_tidrange(rel, ld->snap, &pos->next, &last);
	while (table_scan_getnextslot_tidrange(scan, ForwardScanDirection, slot))
	{
		bool	  should_free;
		HeapTuple tuple = ExecFetchSlotHeapTuple(slot, false, &should_free);

		load_row(ld, rel, map, tuple, NULL, sink, true);
		if (should_free)
			heap_freetuple(tuple);
		if (++n >= (uint64) pg2r_snapshot_batch_size || chunk_full(ld))
		{
			BlockNumber	 blk = ItemPointerGetBlockNumber(&slot->tts_tid);
			OffsetNumber off = ItemPointerGetOffsetNumber(&slot->tts_tid);

			if (off >= MaxOffsetNumber)
				ItemPointerSet(&pos->next, blk + 1, FirstOffsetNumber);
			else
				ItemPointerSet(&pos->next, blk, off + 1);
			result = CHUNK_MORE;
			break;
		}
	}
	table_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	return result;
}

/*
 * load_filtered_chunk renders the rows of blocks pos->block up to
 * pos->block + pos->step of rel that its snapshot filter keeps, read with
 * SQL under the load's snapshot, as the table's owner
 * (snapshot_become_owner); the rows are rendered as the worker.  The query
 * is bounded by TIDs, and plans as a TID range scan (other scans are
 * disabled for it): each chunk reads its own blocks only, however
 * selective the filter.  The step adapts so that a chunk has about
 * pg2redis.snapshot_batch_size rows.
 */
static ChunkEnd
load_filtered_chunk(Load *ld, Relation rel, RelMap *map, const char *filter,
					LeafPos *pos, const CommandSink *sink)
{
	/*
	 * The other scans are disabled, not removed: their cost gets a penalty
	 * that would make every query the filter's functions run look costly
	 * enough to JIT-compile, at each call, so JIT is off too.
	 */
	static const char *const settings[] = {"enable_seqscan",
										   "enable_indexscan",
										   "enable_indexonlyscan",
										   "enable_bitmapscan", "jit"};
	char					*relname =
		quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
								   RelationGetRelationName(rel));
	BlockNumber		end;
	ItemPointerData from;
	ItemPointerData to;
	Oid				types[2] = {TIDOID, TIDOID};
	Datum			values[2];
	char		   *sql;
	SnapshotOwner	saved;
	uint64			n;

	if (pos->block >= pos->nblocks)
		return CHUNK_LAST;
	end = pos->block + Min(pos->step, pos->nblocks - pos->block);
	ItemPointerSet(&from, pos->block, InvalidOffsetNumber);
	ItemPointerSet(&to, end, InvalidOffsetNumber);
	values[0] = PointerGetDatum(&from);
	values[1] = PointerGetDatum(&to);

	snapshot_check_filter(relname, filter);
	sql = psprintf("SELECT t FROM ONLY %s t "
				   "WHERE t.ctid OPERATOR(pg_catalog.>=) $1 "
				   "AND t.ctid OPERATOR(pg_catalog.<) $2 AND %s",
				   relname, snapshot_filter_clause(filter));
	snapshot_become_owner(rel->rd_rel->relowner, &saved);
	for (size_t i = 0; i < lengthof(settings); i++)
		(void) set_config_option(settings[i], "off", PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0,
								 false);
	if (SPI_execute_with_args(sql, 2, types, values, NULL, true, 0) !=
		SPI_OK_SELECT)
		elog(ERROR, "could not read the rows of \"%s\" for the initial load",
			 RelationGetRelationName(rel));
	snapshot_restore_user(&saved);
	MemoryContextSwitchTo(ld->chunkcxt); /* SPI leaves its own context */
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		HeapTupleData tuple;
		MemoryContext old = MemoryContextSwitchTo(ld->rowcxt);

		/* a whole-row value of a query holds no TOAST pointer */
		pg2r_spi_whole_row(i, RelationGetRelid(rel), &tuple);
		MemoryContextSwitchTo(old);
		load_row(ld, rel, map, &tuple, NULL, sink, false);
	}
	SPI_freetuptable(SPI_tuptable);

	if (n < (uint64) pg2r_snapshot_batch_size / 2 && pos->step < LOAD_MAX_STEP)
		pos->step *= 2;
	else if (n > (uint64) pg2r_snapshot_batch_size * 2 && pos->step > 1)
		pos->step /= 2;
	pos->block = end;
	return end >= pos->nblocks ? CHUNK_LAST : CHUNK_MORE;
}

/*
 * tuple_key returns a copy of the key of a heap tuple of rel, in the
 * current memory context; a key value stored out of line is fetched.
 */
static Datum *
tuple_key(const KeyOrder *key, Relation rel, HeapTuple tuple)
{
	bool   unreadable;
	Datum *result =
		keyorder_row_key(key, RelationGetDescr(rel), tuple, true, &unreadable);

	if (result == NULL && unreadable)
		result =
			keyorder_row_key(key, RelationGetDescr(rel),
							 toast_flatten_tuple(tuple, RelationGetDescr(rel)),
							 true, &unreadable);
	if (result == NULL)
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("a key column of table \"%s\" is null",
							   RelationGetRelationName(rel))));
	return result;
}

/*
 * load_key_chunk renders the next rows of rel in key order after pos->last
 * (from the first when NULL), up to pg2redis.snapshot_batch_size rows or
 * one atomic part of commands (chunk_full), that its snapshot filter keeps,
 * read with SQL under the load's snapshot; and moves pos->last to the key
 * of the last row rendered.  Resuming after that key misses and repeats
 * nothing, whatever happened to the table's storage.  A filter is the
 * owner's code: the query then runs as the table's owner
 * (snapshot_become_owner); without one it runs no one's code
 * (keyorder_query) and runs as the worker, so that no row-level security
 * policy (FORCE ROW LEVEL SECURITY binds the owner too) hides rows.
 */
static ChunkEnd
load_key_chunk(Load *ld, Relation rel, RelMap *map, const char *filter,
			   LeafPos *pos, const CommandSink *sink)
{
	KeyOrder *key = &pos->state->key;
	char	 *relname =
		quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
								   RelationGetRelationName(rel));
	char		 *sql;
	SnapshotOwner saved;
	Portal		  portal;
	uint64		  nrows = 0;
	bool		  room = true;
	Datum		 *last = NULL; /* in the chunk's context */

	if (filter)
		snapshot_check_filter(relname, filter);
	sql =
		keyorder_query(key, rel, relname, pos->last ? KEYQ_AFTER : KEYQ_FIRST,
					   filter, pg2r_snapshot_batch_size, true);
	if (filter)
		snapshot_become_owner(rel->rd_rel->relowner, &saved);

	/*
	 * The query gives TIDs in key order; each row is fetched from the heap
	 * under the same snapshot, with the leaf locked by the chunk, and mapped
	 * by load_row, which in a careful load fetches its values and maps it
	 * in a subtransaction of its own: a row too large to fetch whole is a
	 * dead letter, and the rest of the table loads.
	 */
	portal = SPI_cursor_open_with_args(NULL, sql, pos->last ? key->nkeys : 0,
									   key->types, pos->last, NULL, true, 0);
	while (room)
	{
		SPI_cursor_fetch(portal, true, LOAD_FETCH_ROWS);
		MemoryContextSwitchTo(ld->chunkcxt); /* SPI leaves its own context */
		if (SPI_processed == 0)
		{
			SPI_freetuptable(SPI_tuptable);
			break;
		}
		nrows += SPI_processed;
		for (uint64 i = 0; i < SPI_processed && room; i++)
		{
			bool			isnull;
			ItemPointerData tid =
				*(ItemPointer)
					DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[i],
												  SPI_tuptable->tupdesc, 1,
												  &isnull));
			HeapTupleData tuple;
			Buffer		  buffer;

			tuple.t_self = tid;
			if (!heap_fetch(rel, ld->snap, &tuple, &buffer, false))
				elog(ERROR, "row %u/%u of \"%s\" vanished during the load",
					 ItemPointerGetBlockNumber(&tid),
					 ItemPointerGetOffsetNumber(&tid),
					 RelationGetRelationName(rel));
			load_row(ld, rel, map, &tuple, key, sink, true);
			room = !chunk_full(ld);
			if (!room || i + 1 == SPI_processed)
				last = tuple_key(key, rel, &tuple);
			ReleaseBuffer(buffer);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	if (filter)
		snapshot_restore_user(&saved);
	if (last == NULL)
		return CHUNK_LAST;
	MemoryContextSwitchTo(ld->cxt);
	pos->last = keyorder_copy_key(key, last);
	MemoryContextSwitchTo(ld->chunkcxt);
	return room && nrows < (uint64) pg2r_snapshot_batch_size ? CHUNK_LAST
															 : CHUNK_MORE;
}

/* Arguments of a chunk's reader, for pg2r_run_guarded. */
typedef struct ChunkCall
{
	Load			  *ld;
	Relation		   rel;
	RelMap			  *map;
	const char		  *filter;
	LeafPos			  *pos;
	const CommandSink *sink;
	ChunkEnd		   end;
} ChunkCall;

/*
 * chunk_call reads a chunk with the arguments in arg: in key order when the
 * leaf has a key, else by TID, with the heap scan or, with a filter, SQL.
 */
static void
chunk_call(void *arg)
{
	ChunkCall *c = arg;

	if (c->pos->state->keyed)
		c->end =
			load_key_chunk(c->ld, c->rel, c->map, c->filter, c->pos, c->sink);
	else if (c->filter == NULL)
		c->end = load_heap_chunk(c->ld, c->rel, c->map, c->pos, c->sink);
	else
		c->end = load_filtered_chunk(c->ld, c->rel, c->map, c->filter, c->pos,
									 c->sink);
}

/*
 * load_chunk_locked reads the next chunk of a leaf into ld->buf: it locks
 * the leaf, checks that it still has the storage and the key the load read
 * it by, and renders the chunk's rows.  The first chunk decides how the
 * leaf is read: by key when it has one (keyorder.c).  In a careful load, a
 * query that fails (the filter, the owner's code, privileges or policies)
 * leaves the rest of that table to a dead letter and a WARNING, and the
 * load goes on; the heap scan runs no one's code.
 */
static ChunkEnd
load_chunk_locked(Load *ld, LeafPos *pos)
{
	LoadSinkArg arg = {pos->relid, &ld->buf, &ld->ncmds};
	CommandSink sink = {buf_command, buf_error, &arg, ld->careful};
	Relation	rel = try_table_open(pos->relid, AccessShareLock);
	RelMap	   *map;
	ChunkCall	call = {ld, NULL, NULL, NULL, pos, &sink, CHUNK_LAST};
	ErrorData  *edata;

	if (rel == NULL)
		return CHUNK_GONE;
	/*
	 * A keyed leaf is read on by the key it was classified with (load_keyless)
	 * while its storage is the same, whatever its key index is now: DDL that
	 * drops, renames or replaces the key changes no row the snapshot sees.
	 */
	if (rel->rd_rel->relfilenode != pos->filenode ||
		(pos->state->keyed && !keyorder_still(&pos->state->key, rel, ld->cxt)))
	{
		table_close(rel, AccessShareLock);
		return CHUNK_REWRITTEN;
	}
	if (!pos->started)
	{
		pos->started = true;
		pos->nblocks = RelationGetNumberOfBlocks(rel);
	}
	map = mapping_get(rel);
	if (!mapping_has_rules(map))
	{
		table_close(rel, AccessShareLock);
		return CHUNK_LAST;
	}
	call.rel = rel;
	call.map = map;
	call.filter = ondemand_filter_for(map->rulerelid);
	MemoryContextSwitchTo(ld->chunkcxt); /* SPI leaves its own context */
	if (!ld->careful || (!pos->state->keyed && call.filter == NULL))
		chunk_call(&call);
	else if ((edata = pg2r_run_guarded(chunk_call, &call)) != NULL)
	{
		char *msg =
			psprintf(call.filter
						 ? "the snapshot filter of table \"%s\" failed: %s; the initial load skipped the rest of the table"
						 : "reading table \"%s\" failed: %s; the initial load skipped the rest of the table",
					 RelationGetRelationName(rel), edata->message);

		ereport(WARNING,
				(errcode(edata->sqlerrcode), errmsg("%s", msg),
				 call.filter
					 ? errhint("Fix or delete the filter in pg2redis.snapshot_filters, then run pg2redis_snapshot() for the table.")
					 : errhint("The table is read as its owner; fix the cause, then run pg2redis_snapshot() for the table.")));
		sender_change_error(pos->relid, PG2R_OP_SNAPSHOT, msg);
		call.end = CHUNK_LAST;
	}
	table_close(rel, AccessShareLock);
	return call.end;
}

/*
 * load_chunk runs load_chunk_locked in a subtransaction that is then rolled
 * back: it writes nothing, and its rollback releases every lock the chunk
 * took (the leaf's, those its filter's query and the owner's code took),
 * which committing it would hand to the load's transaction.  So no lock is
 * held while the load waits for Redis (load_send), and DDL on a mapped table
 * waits for one chunk at most, not for Redis.
 */
static ChunkEnd
load_chunk(Load *ld, LeafPos *pos)
{
	MemoryContext old = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ChunkEnd	  result;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(ld->chunkcxt);
	result = load_chunk_locked(ld, pos);
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(old);
	CurrentResourceOwner = owner;
	MemoryContextReset(ld->chunkcxt);
	return result;
}

/*
 * snapshot_relfilenode returns the storage (relfilenode) relation relid
 * had as of snapshot snap, or InvalidOid when it did not exist then.  The
 * snapshot's xmin keeps that pg_class row from being vacuumed away.
 */
static Oid
snapshot_relfilenode(Oid relid, Snapshot snap)
{
	Relation	pgclass = table_open(RelationRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			result = InvalidOid;

	ScanKeyInit(&key, Anum_pg_class_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	scan = systable_beginscan(pgclass, ClassOidIndexId, true, snap, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		result = ((Form_pg_class) GETSTRUCT(tuple))->relfilenode;
	systable_endscan(scan);
	table_close(pgclass, AccessShareLock);
	return result;
}

/*
 * leaf_state returns what the load did with leaf relid, or NULL when it did
 * not get to it.
 */
static LeafState *
leaf_state(Load *ld, Oid relid)
{
	ListCell *lc;

	foreach(lc, ld->leaves)
	{
		LeafState *state = lfirst(lc);

		if (state->relid == relid)
			return state;
	}
	return NULL;
}

/*
 * new_leaf_state adds a LeafState for leaf relid to the load and returns it.
 */
static LeafState *
new_leaf_state(Load *ld, Oid relid)
{
	MemoryContext old = MemoryContextSwitchTo(ld->cxt);
	LeafState	 *state = palloc0(sizeof(LeafState));

	state->relid = relid;
	ld->leaves = lappend(ld->leaves, state);
	MemoryContextSwitchTo(old);
	return state;
}

/* The header of a chunk in the keyless leaves' file (load_keyless). */
typedef struct SpillHeader
{
	Oid	   relid;
	uint32 len; /* bytes of commands that follow, as cmdbuf.c writes them */
} SpillHeader;

/*
 * spill_full tells whether the keyless leaves' file reached half of
 * temp_file_limit (in kB; -1: no limit), less a chunk: the load stops
 * spilling there (spill_leaves), for the file not to fail the load at the
 * limit, every time.
 */
static bool
spill_full(BufFile *file)
{
	if (temp_file_limit < 0)
		return false;
	return BufFileSize(file) + 2 * LOAD_CHUNK_BYTES >=
		   (int64) temp_file_limit * 1024 / 2;
}

/*
 * spill_leaves renders the rows of the leaves in keyless (locked by the
 * caller) into file, chunk by chunk, each chunk behind a SpillHeader, and
 * returns their LeafStates; a leaf whose storage changed since the load's
 * snapshot is marked deferred.  When the file reaches half of
 * temp_file_limit (spill_full), it stops: ld->cut is where the leaf being
 * read stopped, ld->unspilled the leaves after it, read later chunk by
 * chunk like any leaf.
 */
static List *
spill_leaves(Load *ld, List *keyless, BufFile *file)
{
	List	 *spilled = NIL;
	ListCell *lc;

	foreach(lc, keyless)
	{
		LeafPos pos = {0};

		pos.state = new_leaf_state(ld, lfirst_oid(lc));
		pos.relid = lfirst_oid(lc);
		pos.filenode = snapshot_relfilenode(pos.relid, ld->snap);
		ItemPointerSet(&pos.next, 0, FirstOffsetNumber);
		pos.step = LOAD_FIRST_STEP;
		spilled = lappend(spilled, pos.state);
		while (OidIsValid(pos.filenode))
		{
			ChunkEnd	end;
			SpillHeader hdr;

			if (spill_full(file))
			{
				/* the rest of this leaf, and the leaves after it, later */
				ld->cut = MemoryContextAlloc(ld->cxt, sizeof(LeafPos));
				*ld->cut = pos;
				break;
			}
			end = load_chunk_locked(ld, &pos);
			hdr.relid = pos.relid;
			hdr.len = (uint32) ld->buf.len;
			MemoryContextReset(ld->chunkcxt);
			if (end == CHUNK_REWRITTEN)
			{
				pos.state->deferred = true;
				break;
			}
			if (ld->buf.len > 0)
			{
				BufFileWrite(file, &hdr, sizeof(hdr));
				BufFileWrite(file, ld->buf.data, ld->buf.len);
			}
			resetStringInfo(&ld->buf);
			ld->ncmds = 0;
			pg2r_report_load_progress(ld->leaves_done, ld->rows);
			if (end != CHUNK_MORE)
				break;
		}
		if (ld->cut != NULL || (lnext(keyless, lc) && spill_full(file)))
		{
			ld->unspilled =
				list_copy_tail(keyless, foreach_current_index(lc) + 1);
			ereport(LOG,
					(errmsg("the initial load's tables without a key take more than half of temp_file_limit; it reads the rest of them chunk by chunk"),
					 errdetail("A rewrite of one of them during the load now makes the load start over.")));
			break;
		}
	}
	return spilled;
}

/*
 * send_spilled sends the chunks spill_leaves wrote, leaf by leaf, and
 * marks the leaves of spilled it sent whole as done; false when Redis
 * stalled.
 */
static bool
send_spilled(Load *ld, BufFile *file, List *spilled)
{
	SpillHeader hdr;
	ListCell   *lc;

	if (BufFileSeek(file, 0, 0, SEEK_SET) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not rewind the initial load's temporary file: %m")));
	while (BufFileRead(file, &hdr, sizeof(hdr)) == sizeof(hdr))
	{
		enlargeStringInfo(&ld->buf, hdr.len);
		if (BufFileRead(file, ld->buf.data, hdr.len) != hdr.len)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read the initial load's temporary file: %m")));
		ld->buf.len = hdr.len;
		if (!load_send(ld, hdr.relid, false))
			return false;
		/* a leaf's chunks are together: its ncmds end at its last */
		leaf_state(ld, hdr.relid)->ncmds = sender_txn_seq();
	}
	foreach(lc, spilled)
	{
		LeafState *state = lfirst(lc);

		if (!state->deferred && (ld->cut == NULL || ld->cut->state != state))
		{
			state->done = true;
			ld->leaves_done++;
		}
	}
	return true;
}

/*
 * load_keyless sends the rows of the leaves in leaves that have no key
 * (neither a primary key nor a replica identity index), and returns the
 * others, to be read by key (load_leaf); *ok is false when Redis stalled.
 *
 * A leaf without a key cannot be read on after a rewrite, as a keyed one
 * can (after its last key): its rows have nothing that survives VACUUM
 * FULL, CLUSTER or TRUNCATE.  So these leaves are read first and whole, in
 * one subtransaction that keeps them locked while they are read and their
 * rows rendered into a temporary file, then rolled back to release the
 * locks, before anything is sent: DDL on them waits for PostgreSQL to read
 * them, never for Redis, and a rewrite cannot come in the middle of one.
 * Only a rewrite committed between the load's snapshot and these locks
 * (milliseconds) still makes the load start over (load_requests).
 */
static List *
load_keyless(Load *ld, List *leaves, bool *ok)
{
	List		 *keyed = NIL;
	List		 *keyless = NIL;
	List		 *spilled;
	ListCell	 *lc;
	MemoryContext old = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	BufFile		 *file;

	*ok = true;
	MemoryContextSwitchTo(ld->cxt);
	file = BufFileCreateTemp(false); /* closed at the end of the load */
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(ld->chunkcxt);
	foreach(lc, leaves)
	{
		Relation rel = try_table_open(lfirst_oid(lc), AccessShareLock);
		Oid		 idxoid = rel ? pg2r_row_key_index(rel) : InvalidOid;

		/*
		 * A key index made after the load's snapshot does not make the rows
		 * the snapshot sees unique (one deleted since may have the key of
		 * another): such a leaf is read whole, as one without a key.
		 */
		if (rel != NULL &&
			(!OidIsValid(idxoid) ||
			 !OidIsValid(snapshot_relfilenode(idxoid, ld->snap))))
		{
			/* the lock is kept until the subtransaction ends */
			keyless = lappend_oid(keyless, lfirst_oid(lc));
			table_close(rel, NoLock);
		}
		else
		{
			/* the key it is read by, to the end (load_chunk_locked) */
			if (rel != NULL)
			{
				LeafState *state = new_leaf_state(ld, lfirst_oid(lc));

				state->keyed = keyorder_setup(rel, ld->cxt, &state->key);
			}
			keyed = lappend_oid(keyed, lfirst_oid(lc));
			if (rel != NULL)
				table_close(rel, AccessShareLock);
		}
	}
	MemoryContextSwitchTo(ld->cxt);
	keyless = list_copy(keyless);
	keyed = list_copy(keyed);
	spilled = spill_leaves(ld, keyless, file);
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(old);
	CurrentResourceOwner = owner;
	MemoryContextReset(ld->chunkcxt);
	if (keyless != NIL)
		*ok = send_spilled(ld, file, spilled);
	BufFileClose(file);
	if (*ok && ld->cut != NULL)
		*ok = load_leaf_from(ld, ld->cut);
	foreach(lc, ld->unspilled)
		if (*ok)
			*ok = load_leaf(ld, lfirst_oid(lc));
	return keyed;
}

/*
 * mark_chunk records that the chunk of a keyed leaf ending at key was
 * handed to the sender, and forgets the marks before the newest one Redis
 * acknowledged: leaf_resume_key needs no older one.
 */
static void
mark_chunk(Load *ld, LeafState *state, Datum *key)
{
	KeyMark		 *mark;
	MemoryContext old;

	if (state->marks != NIL && ((KeyMark *) llast(state->marks))->key == key)
		return; /* a chunk with no row */
	old = MemoryContextSwitchTo(ld->cxt);
	mark = palloc(sizeof(KeyMark));
	mark->ncmds = sender_txn_seq();
	mark->key = key;
	state->marks = lappend(state->marks, mark);
	while (list_length(state->marks) > 1 &&
		   sender_applied_part(ld->start,
							   ((KeyMark *) lsecond(state->marks))->ncmds))
	{
		KeyMark *first = linitial(state->marks);

		keyorder_free_key(&state->key, first->key);
		pfree(first);
		state->marks = list_delete_first(state->marks);
	}
	MemoryContextSwitchTo(old);
}

/*
 * load_leaf sends the rows of one leaf, chunk by chunk; false when Redis
 * stalled.  A leaf whose storage or key changed since the load began cannot
 * be read on as of the load's snapshot: the rest of it is left to a
 * snapshot on demand (load_requests), which reads on after the last key
 * sent when the leaf has a key.
 */
static bool
load_leaf(Load *ld, Oid relid)
{
	LeafPos	   pos = {0};
	LeafState *state = leaf_state(ld, relid);

	if (state == NULL) /* gone when the load classified the leaves */
		state = new_leaf_state(ld, relid);

	pos.state = state;
	pos.relid = relid;
	pos.filenode = snapshot_relfilenode(relid, ld->snap);
	ItemPointerSet(&pos.next, 0, FirstOffsetNumber);
	pos.step = LOAD_FIRST_STEP;
	return load_leaf_from(ld, &pos);
}

/*
 * load_leaf_from sends the rows of a leaf from pos on, chunk by chunk (see
 * load_leaf); false when Redis stalled.
 */
static bool
load_leaf_from(Load *ld, LeafPos *ppos)
{
	LeafPos	   pos = *ppos;
	LeafState *state = pos.state;
	Oid		   relid = pos.relid;

	/* a table made after the start point: the stream has all its rows */
	while (OidIsValid(pos.filenode))
	{
		ChunkEnd end = load_chunk(ld, &pos);

		if (end == CHUNK_REWRITTEN)
		{
			char *name = get_rel_name(relid);

			ereport(LOG,
					(errmsg("table \"%s\" was rewritten or truncated during the initial load, or its key changed; a snapshot on demand loads the rest",
							name ? name : "?")));
			state->deferred = true;
			return true;
		}
		pg2r_report_load_progress(ld->leaves_done, ld->rows);
		if (!load_send(ld, relid, state->keyed))
			return false;
		if (state->keyed && pos.last != NULL)
			mark_chunk(ld, state, pos.last);
		if (end != CHUNK_MORE)
			break;
	}
	state->done = true;
	state->ncmds = sender_txn_seq();
	ld->leaves_done++;
	return true;
}

/*
 * load_finish ends the load's transaction in the sender and waits until
 * Redis acknowledged all of it; false when Redis stalled.
 */
static bool
load_finish(void)
{
	if (!load_wait(sender_inflight))
		return false;
	sender_commit_txn();
	if (!load_wait(sender_inflight))
		return false;
	sender_flush();
	if (!load_wait(sender_inflight))
		return false;
	/* a stream stopped by a rejected command waits here, as it always did */
	while (!sender_idle())
		sender_service(1000);
	return true;
}

/*
 * leaf_unfinished tells whether Redis may lack rows of a leaf the load got
 * to (state): it was deferred, or (after a stall) not sent whole and
 * acknowledged.
 */
static bool
leaf_unfinished(Load *ld, LeafState *state)
{
	if (state->deferred)
		return true;
	if (!state->done)
		return ld->stalled;
	return ld->stalled && !sender_applied_part(ld->start, state->ncmds);
}

/*
 * leaf_resume_key returns the key of the last row of a keyed leaf that
 * Redis has for sure (acknowledged), or NULL when it has none of them: a
 * snapshot on demand of the rest starts after it.  Every key up to it was
 * sent as of the load's snapshot; the stream applies what changed since.
 */
static Datum *
leaf_resume_key(Load *ld, LeafState *state)
{
	Datum	 *result = NULL;
	ListCell *lc;

	foreach(lc, state->marks)
	{
		KeyMark *mark = lfirst(lc);

		if (sender_applied_part(ld->start, mark->ncmds))
			result = mark->key;
	}
	return result;
}

/* A snapshot on demand that loads what the initial load could not. */
typedef struct LoadRequest
{
	Oid	  relid;	   /* a leaf */
	Oid	  keyindex;	   /* when it resumes: the index its keys are of */
	Datum last_key;	   /* text[]: the key Redis has the rows up to, or 0 */
	Datum resume_keys; /* text[][]: later chunks Redis may have, or 0 */
	char *name;
} LoadRequest;

/* key_text_array returns a key as a text[] of its columns' texts. */
static Datum
key_text_array(const KeyOrder *ko, const Datum *key)
{
	return pg2r_text_array(keyorder_key_text(ko, key));
}

/*
 * resume_array returns the marks of a keyed leaf after the newest one Redis
 * acknowledged (chunks it may have applied, or not: the load gave up while
 * they were in flight) as a text[][], one row each: the commands Redis must
 * have applied, then the key; 0 when there are none.
 */
static Datum
resume_array(Load *ld, LeafState *state)
{
	List	 *rows = NIL;
	ListCell *lc;

	foreach(lc, state->marks)
	{
		KeyMark *mark = lfirst(lc);

		if (!sender_applied_part(ld->start, mark->ncmds))
			rows = lappend(rows,
						   lcons(psprintf(UINT64_FORMAT, mark->ncmds),
								 keyorder_key_text(&state->key, mark->key)));
	}
	return pg2r_text_array_2d(rows);
}

/*
 * load_requests returns a LoadRequest for every leaf Redis may lack rows
 * of.  A leaf read by key resumes after the last key Redis acknowledged, or
 * after a later chunk's key if Redis turns out to have applied that chunk
 * (resume_array): no row gets its snapshot rules twice, and none is missed.
 * *keyless is set when such a leaf has neither a primary key nor a replica
 * identity index, which a snapshot on demand needs.
 */
static List *
load_requests(Load *ld, bool *keyless)
{
	List	 *result = NIL;
	ListCell *lc;

	*keyless = false;
	foreach(lc, rules_mapped_leaves(InvalidOid))
	{
		Oid			 relid = lfirst_oid(lc);
		LeafState	*state = leaf_state(ld, relid);
		LoadRequest *request;
		Relation	 rel;

		if (state != NULL && !leaf_unfinished(ld, state))
			continue;
		rel = try_table_open(relid, AccessShareLock);
		if (rel == NULL)
			continue;
		if (!mapping_has_rules(mapping_get(rel)))
		{
			table_close(rel, AccessShareLock);
			continue;
		}
		request = palloc0(sizeof(LoadRequest));
		request->relid = relid;
		request->name = pstrdup(RelationGetRelationName(rel));
		if (!OidIsValid(pg2r_row_key_index(rel)))
			*keyless = true;
		table_close(rel, AccessShareLock);
		if (state != NULL && state->keyed)
		{
			Datum *key = leaf_resume_key(ld, state);

			request->last_key = key ? key_text_array(&state->key, key) : 0;
			request->resume_keys = resume_array(ld, state);
			if (key != NULL || request->resume_keys != 0)
				request->keyindex = state->key.index;
		}
		result = lappend(result, request);
	}
	return result;
}

/*
 * request_snapshots queues the snapshots on demand of requests, in the
 * load's transaction: they are served once it commits and streaming
 * starts, from the slot's start point, which is what makes them consistent
 * with the rows the load did send (DBLog, see ondemand.c).  A request that
 * resumes a leaf records, as a request interrupted by a restart does, the
 * leaf, the last key and the key index, and the chunks Redis may have
 * (the trigger on pg2redis.snapshots clears what an INSERT claims; the
 * worker's UPDATE sets it).
 */
static void
request_snapshots(Load *ld, List *requests)
{
	ListCell	  *lc;
	StringInfoData names;

	initStringInfo(&names);
	foreach(lc, requests)
	{
		LoadRequest *request = lfirst(lc);
		Oid	  types[5] = {INT8OID, TEXTARRAYOID, OIDOID, LSNOID, TEXTARRAYOID};
		Datum values[5];
		char  nulls[5] = {' ', ' ', ' ', ' ', ' '};
		Oid	  reltype[1] = {REGCLASSOID};
		Datum relid[1] = {ObjectIdGetDatum(request->relid)};
		bool  isnull;

		if (SPI_execute_with_args("INSERT INTO pg2redis.snapshots (relation) "
								  "VALUES ($1) RETURNING id",
								  1, reltype, relid, NULL, false,
								  0) != SPI_OK_INSERT_RETURNING ||
			SPI_processed != 1)
			elog(ERROR, "could not request a snapshot");
		values[0] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
								  1, &isnull);
		values[1] = request->last_key;
		nulls[1] = request->last_key ? ' ' : 'n';
		values[2] = ObjectIdGetDatum(request->keyindex);
		values[3] = LSNGetDatum(ld->start);
		values[4] = request->resume_keys;
		nulls[3] = nulls[4] = request->resume_keys ? ' ' : 'n';
		if (OidIsValid(request->keyindex) &&
			SPI_execute_with_args("UPDATE pg2redis.snapshots "
								  "SET current_relation = relation, last_key = $2, key_index = $3, "
								  "resume_lsn = $4, resume_keys = $5 "
								  "WHERE id OPERATOR(pg_catalog.=) $1",
								  5, types, values, nulls, false,
								  0) != SPI_OK_UPDATE)
			elog(ERROR, "could not record where a snapshot starts");
		appendStringInfo(&names, "%s\"%s\"%s", names.len ? ", " : "",
						 request->name,
						 OidIsValid(request->keyindex) ? " (the rest)" : "");
	}
	ereport(LOG,
			(errmsg("the initial load left %d tables to snapshots on demand: %s",
					list_length(requests), names.data)));
}

/*
 * rows_estimate returns the rows the statistics give the leaves (reltuples;
 * a table never analyzed counts as 0), for the load's progress.
 */
static uint64
rows_estimate(List *leaves)
{
	uint64	  total = 0;
	ListCell *lc;

	foreach(lc, leaves)
	{
		HeapTuple tuple =
			SearchSysCache1(RELOID, ObjectIdGetDatum(lfirst_oid(lc)));

		if (HeapTupleIsValid(tuple))
		{
			float4 n = ((Form_pg_class) GETSTRUCT(tuple))->reltuples;

			if (n > 0)
				total += (uint64) n;
			ReleaseSysCache(tuple);
		}
	}
	return total;
}

/*
 * snapshot_initial_load sends every row of every mapped table, as the
 * current transaction snapshot (the slot's initial snapshot) sees it, to
 * Redis, as one transaction fenced at start.
 *
 * Redis slow or gone must not block PostgreSQL users: the leaves are read
 * chunk by chunk, each chunk in a subtransaction that releases its locks
 * before the chunk's commands go to the sender, and the load waits for
 * Redis only between chunks (load_chunk, load_send).  So DDL on a mapped
 * table waits for one chunk, never for Redis.  The snapshot and the new
 * slot are held while waiting, and only for pg2redis.load_stall_timeout
 * without an acknowledgement: then the load gives up.  The tables Redis
 * does not have whole yet are queued as snapshots on demand, and the
 * caller persists the slot and restarts the worker, whose stream starts at
 * the slot's start point and serves them, which is consistent with the
 * rows already sent; if one of those tables has no key to read it by, the
 * caller drops the slot and the next start loads everything again.  A
 * table rewritten during the load is queued the same way.
 */
LoadOutcome
snapshot_initial_load(XLogRecPtr start)
{
	Load		ld = {0};
	List	   *leaves;
	ListCell   *lc;
	List	   *requests;
	bool		keyless;
	bool		sent;
	LoadOutcome outcome;

	ld.start = start;
	ld.careful = pg2r_careful_load();
	ld.cxt =
		AllocSetContextCreate(CurrentMemoryContext, "pg2redis initial load",
							  ALLOCSET_DEFAULT_SIZES);
	ld.chunkcxt = AllocSetContextCreate(ld.cxt, "pg2redis load chunk",
										ALLOCSET_DEFAULT_SIZES);
	ld.rowcxt = AllocSetContextCreate(ld.cxt, "pg2redis snapshot row",
									  ALLOCSET_DEFAULT_SIZES);
	{
		MemoryContext old = MemoryContextSwitchTo(ld.cxt);

		initStringInfo(&ld.buf);
		MemoryContextSwitchTo(old);
	}
	PushActiveSnapshot(GetTransactionSnapshot());
	ld.snap = GetActiveSnapshot();
	SPI_connect();
	ld.meta.xid = InvalidTransactionId;
	ld.meta.lsn = start;
	ld.meta.commit_time = GetCurrentTimestamp();

	leaves = rules_mapped_leaves(InvalidOid);
	pg2r_report_load_start(list_length(leaves), rows_estimate(leaves));
	sender_begin_txn(InvalidTransactionId, start, start, ld.meta.commit_time);
	sender_caller_parts(); /* load_send */
	pgstat_report_activity(STATE_RUNNING, "pg2redis: initial load");
	foreach(lc, load_keyless(&ld, leaves, &sent))
	{
		if (!sent || !load_leaf(&ld, lfirst_oid(lc)))
		{
			sent = false;
			break;
		}
		pg2r_report_load_progress(ld.leaves_done, ld.rows);
	}
	ld.stalled = !sent;
	if (!ld.stalled && !load_finish())
		ld.stalled = true;

	requests = load_requests(&ld, &keyless);
	if (ld.stalled)
	{
		pg2r_report_error("the initial load gave up: Redis acknowledged nothing for %d ms (pg2redis.load_stall_timeout)%s",
						  pg2r_load_stall_timeout_ms,
						  keyless ? "; the next load starts over"
								  : "; snapshots on demand load the rest");
		ereport(WARNING,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("Redis acknowledged nothing for %d ms during the initial load",
						pg2r_load_stall_timeout_ms),
				 errdetail(keyless
							   ? "The load gives up, releasing its snapshot, and the next start loads every table again (a table to load has neither a primary key nor a replica identity index)."
							   : "The load gives up, releasing its snapshot; the stream starts from the slot's start point once Redis is back, and snapshots on demand load the tables Redis does not have whole."),
				 errhint("Check Redis; pg2redis.load_stall_timeout sets how long the load waits.")));
	}
	if (requests != NIL && keyless)
	{
		if (!ld.stalled)
			ereport(LOG,
					(errmsg("a table without a primary key or replica identity index was rewritten during the initial load; the load starts over")));
		outcome = LOAD_START_OVER;
	}
	else
	{
		if (requests != NIL)
			request_snapshots(&ld, requests);
		outcome = ld.stalled ? LOAD_GAVE_UP : LOAD_DONE;
		pg2r_set_careful_load(false);
	}
	pg2r_report_load_end();
	if (outcome == LOAD_DONE)
		ereport(LOG, (errmsg("initial load sent " UINT64_FORMAT
							 " rows of %d tables",
							 ld.rows, list_length(leaves))));
	SPI_finish();
	PopActiveSnapshot();
	MemoryContextDelete(ld.cxt);
	return outcome;
}
