/*-------------------------------------------------------------------------
 *
 * ondemand.c
 *	  Snapshots on demand while streaming goes on (pg2redis_snapshot()).
 *
 * A snapshot request is served chunk by chunk, in key order, with the
 * watermark method of DBLog (Netflix, 2019), all inside the worker:
 *
 *	1. write a low watermark L (a non-transactional logical message, flushed);
 *	2. select the next chunk of rows by key under a fresh snapshot, and
 *	   render each row's commands (the table's snapshot rules, else its
 *	   insert rules) right away, keyed by the row's key;
 *	3. write a high watermark H.
 *
 * Decoding goes on meanwhile.  Every change the stream applies between L
 * and H to a row of the chunk removes that row from the chunk: the stream's
 * version is newer.  When H is decoded, the rows left are sent to Redis at
 * that point of the stream, as one more transaction; a row changed after H
 * is applied after it.  So a snapshot never writes a row state older than
 * one already written.
 *
 * The key is the one whose old values PostgreSQL logs: the replica identity
 * index (the primary key under REPLICA IDENTITY DEFAULT, the chosen index
 * under USING INDEX), else the primary key (FULL logs every column; NOTHING
 * none).  A decoded delete carries only the identity's columns, so a chunk
 * keyed by the primary key of a table whose identity is another index
 * would never see its rows deleted, and would write them back.  A change
 * whose old key is not known (REPLICA IDENTITY NOTHING, an identity changed
 * while the request runs, a null or unreadable key column) removes every
 * row of the open chunk: they are all read again later (see below).  Such
 * tables are served, not refused: the rule costs rereads only while a
 * chunk is open, and tables with only insert rules (a log) need nothing
 * more.  A request whose leaf's key index changes between chunks reads the
 * leaf again from its start.
 *
 * PostgreSQL adds a hole DBLog does not have: a commit can be in the WAL
 * (and decoded, and applied) before it leaves the proc array (a
 * synchronous replication wait, COMMIT PREPARED), so the chunk's snapshot
 * may not see a transaction the stream applied before L.  Two guards close
 * it.  Guard 1: the worker keeps every decoded transaction that may still
 * be in the proc array (pruned with TransactionIdIsInProgress(), which
 * stays false once a transaction has left it), and selects a chunk only
 * under a snapshot that sees all of them; it waits for them meanwhile,
 * while the stream goes on.  Guard 2: while the chunk is open, a change by
 * a transaction the snapshot does not see removes its row from the chunk
 * even before L.
 *
 * Keys never go through text while a request runs: the last key sent and
 * the keys to read again are kept as Datums of the key columns' base types
 * and passed to the chunk's query as typed parameters, compared with the
 * operators of the key index's btree opfamily, named by schema (see
 * keyorder.c).  A cast from text to the key type would run a domain's
 * CHECK or a user's cast as the superuser the worker is.  The chunk's query
 * runs as the table's owner, in a security-restricted operation with a
 * pinned search_path (snapshot_become_owner), like the filter it contains.
 * Rows of the open chunk are found by their key columns' binary images
 * (datum_image_hash/datum_image_eq), column by column: two different keys
 * cannot alias, as keys joined into one string could.
 *
 * The watermarks carry a random nonce drawn at worker start, besides the
 * request id and chunk number: anyone may write logical messages
 * (pg_logical_emit_message()), and a forged high watermark decoded before
 * the real one would send the chunk at the wrong stream position.
 *
 * Progress (the leaf being read, the last key sent, and the keys still to
 * read again) is recorded in pg2redis.snapshots after every chunk, so that
 * a request interrupted by a restart resumes after its last chunk and still
 * reads again the rows the stream changed while their chunk was open.  A
 * request that fails (a table without a primary key, a bad filter) is
 * marked failed with the reason, and the stream goes on.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "replication/message.h"
#include "storage/procarray.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "common/hashfn.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/pg_lsn.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "pg2redis/cmdbuf.h"
#include "pg2redis/keyorder.h"
#include "pg2redis/mapping.h"
#include "pg2redis/ondemand.h"
#include "pg2redis/relutil.h"
#include "pg2redis/sender.h"
#include "pg2redis/settings.h"
#include "pg2redis/snapshot.h"
#include "pg2redis/state.h"
#include "pg2redis/worker.h"

#define WATERMARK_PREFIX "pg2redis"
#define NONCE_BYTES 16
#define CHUNK_FETCH_ROWS 64 /* rows a chunk's cursor hands over at a time */

/*
 * Guard 1 waits for decoded transactions still in the proc array without
 * holding the stream up: it looks again every SELECT_POLL_MS (or after each
 * decoding batch), and fails the request after SELECT_WAIT_MS.
 */
#define SELECT_POLL_MS 10
#define SELECT_WAIT_MS 60000
#define DECODED_PRUNE_MIN 64

/* One selected row: its key and its rendered commands. */
typedef struct ChunkRow
{
	Datum *key;		 /* hash key: the key columns' values */
	char **keytext;	 /* and their text, for the row's dead letters */
	bool   removed;	 /* the stream changed it: not sent */
	bool   changed;	 /* removed by its own key, not with the whole chunk */
	Size   cmds_off; /* its serialized commands in chunk_cmds */
	Size   cmds_len;
} ChunkRow;

/* The request being served. */
static struct
{
	bool   active;
	int64  id;
	List  *leaves;		  /* OIDs still to read, in order */
	Oid	   leaf;		  /* being read */
	Datum *last_key;	  /* the last key sent, or NULL */
	List  *last_key_text; /* its text, as recorded, or NIL */
	uint64 rows;		  /* sent so far */
	bool   leaf_done;	  /* the leaf's last range chunk was sent */
	List  *retry;		  /* keys to select again (Datum *) */
	List  *retry_text;	  /* the same, as recorded: not read yet */
	int	   retry_round;	  /* how often they were selected again */
	bool   retry_blind;	  /* some of them no known change touched */
	Oid	   keyindex;	  /* the leaf's key index, once known */
	int	   nkeys;		  /* and its key columns' base types */
	Oid	  *keytypes;
	bool   keys_only;			   /* reads the keys in retry, never a range */
	int	   first_keys;			   /* of those, not read once yet */
	char   leaf_name[NAMEDATALEN]; /* for messages outside transactions */
} req;

#define RETRY_ROUNDS 10

/*
 * The progress of the last chunk sent, to be recorded once Redis has applied
 * it.  One chunk may wait for its acknowledgement while the next one is
 * selected (the selection does not depend on Redis), so that reading
 * PostgreSQL and applying in Redis overlap; a restart before the
 * acknowledgement selects that chunk again.
 */
static struct
{
	bool	   active;
	XLogRecPtr sent_at; /* the chunk's fence */
	uint64	   rows;
	Oid		   leaf;
	List	  *last_key; /* text, in OndemandCxt */
	List	  *retry;	 /* keys to read again (Datum *), of types: */
	Oid		   keyindex;
	int		   nkeys;
	Oid		  *keytypes;
} pending;

/* The chunk in flight between its watermarks. */
static struct
{
	bool		   open;	  /* selected, H not decoded yet */
	bool		   in_window; /* L decoded */
	XLogRecPtr	   low_end;	  /* where L's and H's WAL records end */
	XLogRecPtr	   high_end;
	bool		   sent; /* H decoded, rows sent: record progress */
	bool		   last; /* the leaf has no rows after this chunk */
	char		   low[128];
	char		   high[128];
	TransactionId  xmin;
	TransactionId  xmax;
	TransactionId *xip;
	int			   xcnt;
	HTAB		  *rows;
	List		  *order;		  /* ChunkRow *, in key order */
	Datum		  *next_key;	  /* key of the chunk's last row, or NULL */
	List		  *next_key_text; /* the same as text */
	uint64		   nsent;
	XLogRecPtr	   sent_at;		/* stream position the rows were sent at */
	bool		   is_retry;	/* selects req.retry keys, not a range */
	int			   retry_taken; /* how many of them */
	KeyOrder	   key;			/* the leaf's key */
	MemoryContext  cxt;
} chunk;

static MemoryContext  OndemandCxt = NULL;
static MemoryContext  ScratchCxt = NULL; /* per decoded change or chunk row */
static StringInfoData chunk_cmds;		 /* the open chunk's rows' commands */
static Size			  chunk_bytes;		 /* all its rows take */

static void chunk_reset(void);
static void open_chunk(void);

/*
 * Guard 1: the decoded transactions that may still be in the proc array
 * (TopMemoryContext).  A transaction leaves it for good, so the set holds
 * only those whose commit was decoded but which had not left it yet when
 * last looked at: a handful, however many transactions are decoded, and
 * never an entry old enough for its xid to wrap around.
 */
static TransactionId *decoded = NULL;
static int			  ndecoded = 0;
static int			  maxdecoded = 0;
static int			  prune_at = DECODED_PRUNE_MIN;
static TimestampTz	  waiting_since = 0; /* a selection waits for guard 1 */
static TransactionId  waiting_for = InvalidTransactionId;

static uint64	   chunk_seq = 0;
static TimestampTz last_poll = 0;
static TimestampTz requested_until = 0;
static char		   nonce[NONCE_BYTES * 2 + 1]; /* in the watermarks */

/* ---------------------------------------------------------------------------
 * Keys and visibility
 * ---------------------------------------------------------------------------
 */

/*
 * key_hash and key_match hash chunk rows by the binary images of their key
 * columns, one by one (no separator that a value could contain).
 */
static uint32
key_hash(const void *key, Size keysize)
{
	const Datum *k = *(const Datum *const *) key;
	uint32		 h = 0;

	for (int i = 0; i < chunk.key.nkeys; i++)
		h = hash_combine(h, datum_image_hash(k[i], chunk.key.byval[i],
											 chunk.key.len[i]));
	return h;
}

static int
key_match(const void *a, const void *b, Size keysize)
{
	const Datum *ka = *(const Datum *const *) a;
	const Datum *kb = *(const Datum *const *) b;

	for (int i = 0; i < chunk.key.nkeys; i++)
		if (!datum_image_eq(ka[i], kb[i], chunk.key.byval[i],
							chunk.key.len[i]))
			return 1;
	return 0;
}

/* invisible tells whether the chunk's snapshot does not see xid. */
static bool
invisible(TransactionId xid)
{
	if (!TransactionIdIsNormal(xid))
		return false;
	if (TransactionIdFollowsOrEquals(xid, chunk.xmax))
		return true;
	if (TransactionIdPrecedes(xid, chunk.xmin))
		return false;
	for (int i = 0; i < chunk.xcnt; i++)
		if (TransactionIdEquals(chunk.xip[i], xid))
			return true;
	return false;
}

/* drop_all removes every row from the open chunk. */
static void
drop_all(void)
{
	ListCell *lc;

	foreach(lc, chunk.order)
		((ChunkRow *) lfirst(lc))->removed = true;
}

/*
 * drop_tuple removes the row of a decoded tuple from the open chunk; every
 * row, if the tuple's key is null or cannot be read (the key of a decoded
 * old tuple is null where the replica identity did not log it).
 */
static void
drop_tuple(TupleDesc desc, HeapTuple tuple)
{
	bool   unreadable;
	Datum *key = keyorder_row_key(&chunk.key, desc, tuple, false, &unreadable);
	ChunkRow *row;

	if (key == NULL)
	{
		drop_all();
		return;
	}
	row = hash_search(chunk.rows, &key, HASH_FIND, NULL);
	if (row)
	{
		row->removed = true;
		row->changed = true;
	}
	pfree(key);
}

/*
 * old_key_logged tells whether PostgreSQL logs the old key of the chunk's
 * leaf whenever an update changes it: with REPLICA IDENTITY FULL, or when
 * the chunk's key index is the replica identity index.  rel is the leaf as
 * decoding sees it, when the change was made.
 */
static bool
old_key_logged(Relation rel)
{
	if (rel->rd_rel->relreplident == REPLICA_IDENTITY_FULL)
		return true;
	return RelationGetReplicaIndex(rel) == chunk.key.index;
}

/* ---------------------------------------------------------------------------
 * Hooks called while decoding (worker only)
 * ---------------------------------------------------------------------------
 */

/*
 * prune_decoded forgets the decoded transactions that are no longer in
 * progress: every snapshot taken from now on sees them.
 */
static void
prune_decoded(void)
{
	int kept = 0;

	for (int i = 0; i < ndecoded; i++)
		if (TransactionIdIsInProgress(decoded[i]))
			decoded[kept++] = decoded[i];
	ndecoded = kept;
	prune_at = Max(DECODED_PRUNE_MIN, 2 * ndecoded);
}

/*
 * ondemand_note_commit remembers a decoded transaction for guard 1 until it
 * has left the proc array.  Pruning whenever the set doubled keeps the cost
 * per commit constant.
 */
void
ondemand_note_commit(TransactionId xid)
{
	if (!TransactionIdIsNormal(xid))
		return;
	if (ndecoded == maxdecoded)
	{
		maxdecoded = Max(2 * maxdecoded, DECODED_PRUNE_MIN);
		decoded = decoded == NULL
					  ? MemoryContextAlloc(TopMemoryContext,
										   sizeof(TransactionId) * maxdecoded)
					  : repalloc(decoded, sizeof(TransactionId) * maxdecoded);
	}
	decoded[ndecoded++] = xid;
	if (ndecoded >= prune_at)
		prune_decoded();
}

/*
 * ondemand_note_change removes from the open chunk the rows a decoded
 * change (of kind op) touches, when the stream's version is newer than the
 * chunk's; every row, when the change's old key is not known.
 */
void
ondemand_note_change(Relation rel, TransactionId xid, Pg2rOp op,
					 HeapTuple oldtuple, HeapTuple newtuple)
{
	MemoryContext old;

	if (!chunk.open || RelationGetRelid(rel) != req.leaf)
		return;
	if (!chunk.in_window && !invisible(xid))
		return;
	/* not in chunk.cxt: a big transaction in the window would grow it */
	old = MemoryContextSwitchTo(ScratchCxt);
	if (oldtuple)
		drop_tuple(RelationGetDescr(rel), oldtuple);
	else if (op == PG2R_OP_DELETE ||
			 (op == PG2R_OP_UPDATE && !old_key_logged(rel)))
	{
		/*
		 * A delete without an old row (REPLICA IDENTITY NOTHING), or an
		 * update that may have changed the key without saying from what.
		 * An update without an old row otherwise kept its key.
		 */
		drop_all();
	}
	if (newtuple)
		drop_tuple(RelationGetDescr(rel), newtuple);
	MemoryContextSwitchTo(old);
	MemoryContextReset(ScratchCxt);
}

/* ondemand_note_truncate empties the open chunk when its leaf is truncated. */
void
ondemand_note_truncate(Oid relid, TransactionId xid)
{
	if (!chunk.open || relid != req.leaf)
		return;
	if (!chunk.in_window && !invisible(xid))
		return;
	drop_all();
}

/*
 * send_chunk hands the rows left in the chunk to the sender, as one
 * transaction at the stream position of the high watermark.
 */
static void
send_chunk(XLogRecPtr lsn)
{
	ListCell	*lc;
	Oid			 relid = req.leaf;
	CmdBufReader reader = {0};
	Rule		 rule;
	int			 argc;
	const char	*error;

	sender_begin_txn(InvalidTransactionId, lsn, lsn, GetCurrentTimestamp());
	foreach(lc, chunk.order)
	{
		ChunkRow *row = lfirst(lc);

		if (row->removed)
			continue;
		if (!sender_txn_skipped())
		{
			chunk.nsent++;
			sender_count_change();
		}
		/* the row's key, which its dead letters record (see redrive.c) */
		sender_set_row_key(chunk.key.index, chunk.key.nkeys, row->keytext);
		cmdbuf_reader_init(&reader, chunk_cmds.data + row->cmds_off,
						   row->cmds_len, CurrentMemoryContext);
		while (cmdbuf_next(&reader, &rule, &argc, &error))
		{
			if (error != NULL)
			{
				Pg2rError err = {ERRCODE_DATA_EXCEPTION, (char *) error, NULL,
								 NULL};

				sender_render_error(&relid, &rule, PG2R_OP_SNAPSHOT, &err);
			}
			else
				sender_command(&relid, &rule, PG2R_OP_SNAPSHOT, argc,
							   reader.argv, reader.lens);
		}
	}
	sender_clear_row_key();
	sender_commit_txn();
	/* send it now, so that its acknowledgement can be awaited */
	sender_flush();
	chunk.sent_at = chunk.nsent > 0 ? lsn : InvalidXLogRecPtr;
}

/*
 * ondemand_on_message handles a decoded watermark: the low one opens the
 * chunk's window, the high one sends what is left of the chunk.  Only the
 * open chunk's own payloads count, nonce included; any other message with
 * our prefix (which anyone can write) is ignored.
 */
void
ondemand_on_message(XLogRecPtr lsn, const char *prefix, Size size,
					const char *message)
{
	if (!chunk.open || strcmp(prefix, WATERMARK_PREFIX) != 0)
		return;

	/*
	 * A watermark is the record this worker wrote, at the position it was
	 * written: its payload, nonce included, can be read from WAL by anyone
	 * who may decode it, and copied into a message of their own.
	 */
	if (lsn == chunk.low_end && size == strlen(chunk.low) &&
		memcmp(message, chunk.low, size) == 0)
		chunk.in_window = true;
	else if (chunk.in_window && lsn == chunk.high_end &&
			 size == strlen(chunk.high) &&
			 memcmp(message, chunk.high, size) == 0)
	{
		send_chunk(lsn);
		chunk.open = false;
		chunk.sent = true;
	}
}

/* ---------------------------------------------------------------------------
 * Rendering the chunk's rows
 * ---------------------------------------------------------------------------
 */

/* row_sink_command keeps a rendered command of a chunk row in chunk_cmds. */
static void
row_sink_command(void *arg, const Rule *rule, Pg2rOp op, int argc,
				 const char *const *argv, const size_t *argvlen)
{
	cmdbuf_append(&chunk_cmds, rule, argc, argv, argvlen);
}

/*
 * row_sink_error keeps a render error of a chunk row in chunk_cmds, a dead
 * letter once the chunk is sent.
 */
static void
row_sink_error(void *arg, const Rule *rule, Pg2rOp op, const Pg2rError *err)
{
	cmdbuf_append_error(&chunk_cmds, rule, err->message);
}

/* ---------------------------------------------------------------------------
 * Selecting a chunk (between decoding batches, in a transaction)
 * ---------------------------------------------------------------------------
 */

/*
 * write_watermark writes and flushes a watermark message; returns the end
 * of its WAL record, which is how the decoder recognizes it.
 */
static XLogRecPtr
write_watermark(const char *payload)
{
	XLogRecPtr lsn =
		LogLogicalMessage(WATERMARK_PREFIX, payload, strlen(payload), false);

	XLogFlush(lsn);
	return lsn;
}

/*
 * ondemand_filter_for returns the snapshot filter of relation relid, or NULL
 * (in a transaction, SPI connected).  Its operator is named by schema, like
 * every name in the worker's SQL.
 */
char *
ondemand_filter_for(Oid relid)
{
	Oid	  types[1] = {OIDOID};
	Datum values[1] = {ObjectIdGetDatum(relid)};

	if (SPI_execute_with_args("SELECT filter FROM pg2redis.snapshot_filters "
							  "WHERE relation::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, true,
							  1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg2redis.snapshot_filters");
	if (SPI_processed == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * read_key turns the recorded text of a key (of a request resumed after a
 * restart) into values of the key columns' base types with their input
 * functions.  The caller runs it as the table's owner: this is the one place
 * a key goes through text, once per recorded key of a resumed request, and
 * an input function may run the owner's code (e.g. an array of a domain).
 */
static Datum *
read_key(List *text)
{
	MemoryContext old;
	Datum		 *key;
	ListCell	 *lc;

	if (list_length(text) != chunk.key.nkeys)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the key of table \"%s\" changed while a snapshot read it",
						req.leaf_name),
				 errhint("Request the snapshot again.")));
	old = MemoryContextSwitchTo(OndemandCxt);
	key = palloc(sizeof(Datum) * chunk.key.nkeys);
	foreach(lc, text)
	{
		int k = foreach_current_index(lc);
		Oid infunc;
		Oid ioparam;

		getTypeInputInfo(chunk.key.types[k], &infunc, &ioparam);
		key[k] = OidInputFunctionCall(infunc, lfirst(lc), ioparam, -1);
	}
	MemoryContextSwitchTo(old);
	return key;
}

/*
 * read_recorded_keys turns the keys a resumed request recorded (the last
 * key sent, the keys to read again) into values, with read_key.
 */
static void
read_recorded_keys(void)
{
	ListCell *lc;

	if (req.last_key == NULL && req.last_key_text != NIL)
		req.last_key = read_key(req.last_key_text);
	foreach(lc, req.retry_text)
	{
		Datum		 *key = read_key(lfirst(lc));
		MemoryContext old = MemoryContextSwitchTo(OndemandCxt);

		req.retry = lappend(req.retry, key);
		MemoryContextSwitchTo(old);
	}
	req.retry_text = NIL;
}

/*
 * forget_leaf_progress forgets where the request is in its current leaf:
 * the last key read, the keys to read again and their rounds.
 */
static void
forget_leaf_progress(void)
{
	req.last_key = NULL;
	req.last_key_text = NIL;
	req.retry = NIL;
	req.retry_text = NIL;
	req.retry_round = 0;
	req.retry_blind = false;
	req.leaf_done = false;
	req.first_keys = 0;
}

/*
 * use_key makes the chunk's key index the one the request reads its leaf
 * by.  When it changed since the request's last chunk of that leaf (a new
 * replica identity or primary key), the keys the request holds mean nothing
 * any more: the leaf is read again from its start.
 */
static void
use_key(void)
{
	if (req.keys_only && req.keyindex != chunk.key.index)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the key of table \"%s\" changed since the keys to read were recorded",
						req.leaf_name),
				 errhint("Run pg2redis_snapshot() on the table to write all its rows again.")));
	if (OidIsValid(req.keyindex) && req.keyindex != chunk.key.index)
	{
		ereport(LOG,
				(errmsg("pg2redis: snapshot request " INT64_FORMAT
						" reads table \"%s\" again from its start: its key changed",
						req.id, req.leaf_name)));
		forget_leaf_progress();
		chunk.is_retry = false;
	}
	if (req.keyindex != chunk.key.index || req.keytypes == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(OndemandCxt);

		req.keyindex = chunk.key.index;
		req.nkeys = chunk.key.nkeys;
		req.keytypes = palloc(sizeof(Oid) * chunk.key.nkeys);
		memcpy(req.keytypes, chunk.key.types, sizeof(Oid) * chunk.key.nkeys);
		MemoryContextSwitchTo(old);
	}
}

/*
 * take_rows adds the rows of the current SPI result to the chunk, with
 * their rendered commands, until the chunk's commands reach
 * pg2redis.batch_bytes; returns false once they have (the rows after the
 * last one taken are left to the next chunk).  chunk.next_key is the key of
 * the last row taken.  Each row is rendered in a scratch context: only its
 * key and commands stay in the chunk's.
 */
static bool
take_rows(Relation rel, RelMap *map, const ChangeMeta *meta,
		  const CommandSink *sink)
{
	bool room = true;

	for (uint64 i = 0; i < SPI_processed && room; i++)
	{
		HeapTupleData tuple;
		Datum		 *key;
		ChunkRow	 *row;
		bool		  found;
		bool		  unreadable;
		MemoryContext old;

		pg2r_spi_whole_row(i, req.leaf, &tuple);

		old = MemoryContextSwitchTo(chunk.cxt);
		key = keyorder_row_key(&chunk.key, RelationGetDescr(rel), &tuple, true,
							   &unreadable);
		if (key == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("a key column of table \"%s\" is null",
							RelationGetRelationName(rel)),
					 errhint("Snapshots on demand need a primary key, or a replica identity index on columns that are not null.")));
		row = hash_search(chunk.rows, &key, HASH_ENTER, &found);
		if (found)
		{
			/* a key read again twice in one chunk */
			MemoryContextSwitchTo(old);
			continue;
		}
		row->key = key;

		/*
		 * Its text now, in the transaction: a key type's output function
		 * may read the catalogs (enum_out), which the watermark's callback,
		 * outside any transaction, may not.
		 */
		row->keytext = palloc(sizeof(char *) * chunk.key.nkeys);
		for (int k = 0; k < chunk.key.nkeys; k++)
			row->keytext[k] = OutputFunctionCall(&chunk.key.out[k], key[k]);
		row->removed = false;
		row->changed = false;
		row->cmds_off = chunk_cmds.len;
		chunk.order = lappend(chunk.order, row);
		chunk.next_key = key;

		MemoryContextSwitchTo(ScratchCxt);
		mapping_change(map, rel, PG2R_OP_SNAPSHOT, NULL, &tuple, meta, sink);
		MemoryContextSwitchTo(old);
		MemoryContextReset(ScratchCxt);
		row->cmds_len = chunk_cmds.len - row->cmds_off;
		chunk_bytes += row->cmds_len + sizeof(ChunkRow) +
					   sizeof(Datum) * chunk.key.nkeys + 64; /* hash, list */
		room = chunk_bytes < (Size) pg2r_batch_bytes;
	}
	SPI_freetuptable(SPI_tuptable);
	return room;
}

/*
 * query_kind tells what the chunk's query selects: the keys read again, or
 * the range after the last key sent, or the first range of the leaf.
 */
static KeyQuery
query_kind(void)
{
	if (chunk.is_retry)
		return KEYQ_EQUAL;
	return req.last_key != NULL ? KEYQ_AFTER : KEYQ_FIRST;
}

/*
 * select_chunk reads the next chunk of the leaf under the transaction's
 * snapshot and renders its rows.  Returns false (without rows) when the
 * snapshot misses a transaction the worker already decoded: the caller
 * selects again.  The query runs as the table's owner
 * (snapshot_become_owner).
 */
static bool
select_chunk(void *arg)
{
	Snapshot	  snap = GetActiveSnapshot();
	Relation	  rel;
	RelMap		 *map;
	char		 *relname;
	char		 *filter = NULL;
	char		 *sql;
	ChangeMeta	  meta = {0};
	CommandSink	  sink = {row_sink_command, row_sink_error, NULL, false};
	MemoryContext old;
	HASHCTL		  ctl;
	SnapshotOwner saved;

	/*
	 * Guard 1: the snapshot must see what the stream already applied.  What
	 * it sees as ended, every later snapshot sees too: forget it.
	 */
	{
		int kept = 0;

		for (int i = 0; i < ndecoded; i++)
			if (XidInMVCCSnapshot(decoded[i], snap))
				decoded[kept++] = decoded[i];
		ndecoded = kept;
		if (ndecoded > 0)
		{
			waiting_for = decoded[0];
			return false;
		}
	}

	old = MemoryContextSwitchTo(chunk.cxt);
	chunk.xmin = snap->xmin;
	chunk.xmax = snap->xmax;
	chunk.xcnt = snap->xcnt;
	chunk.xip = palloc(sizeof(TransactionId) * Max(snap->xcnt, 1));
	memcpy(chunk.xip, snap->xip, sizeof(TransactionId) * snap->xcnt);
	ctl.keysize = sizeof(Datum *);
	ctl.entrysize = sizeof(ChunkRow);
	ctl.hash = key_hash;
	ctl.match = key_match;
	ctl.hcxt = chunk.cxt;
	chunk.rows =
		hash_create("pg2redis chunk rows", 1024, &ctl,
					HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	MemoryContextSwitchTo(old);

	rel = table_open(req.leaf, AccessShareLock);
	strlcpy(req.leaf_name, RelationGetRelationName(rel), NAMEDATALEN);
	relname =
		quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
								   RelationGetRelationName(rel));
	map = mapping_get(rel);
	if (!keyorder_setup(rel, chunk.cxt, &chunk.key))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has no primary key or replica identity index",
						RelationGetRelationName(rel)),
				 errhint("Snapshots on demand read tables by key; add a primary key.")));
	use_key();
	if (mapping_has_rules(map))
		filter = ondemand_filter_for(map->rulerelid);
	if (filter)
		snapshot_check_filter(relname, filter);

	meta.lsn = InvalidXLogRecPtr;
	meta.commit_time = GetCurrentTimestamp();
	chunk.next_key = NULL;
	chunk.next_key_text = NIL;

	/*
	 * The owner's identity covers the recorded keys' input functions and a
	 * filter, the owner's code, with the query and the rendering of its
	 * rows, which needs no rights of its own.  A query without a filter
	 * runs no one's code (keyorder_query) and runs as the worker, so that no
	 * row-level security policy (FORCE ROW LEVEL SECURITY binds the owner
	 * too) hides rows.
	 */
	snapshot_become_owner(rel->rd_rel->relowner, &saved);
	read_recorded_keys();
	if (filter == NULL)
		snapshot_restore_user(&saved);
	old = MemoryContextSwitchTo(chunk.cxt);
	initStringInfo(&chunk_cmds);
	MemoryContextSwitchTo(old);
	chunk_bytes = 0;
	if (chunk.is_retry)
	{
		SPIPlanPtr plan;
		ListCell  *lc;
		int		   n = 0;
		bool	   room = true;

		sql = keyorder_query(&chunk.key, rel, relname, query_kind(), filter,
							 pg2r_snapshot_batch_size, false);
		plan = SPI_prepare(sql, chunk.key.nkeys, chunk.key.types);
		if (plan == NULL)
			elog(ERROR, "could not prepare a snapshot chunk: %s",
				 SPI_result_code_string(SPI_result));
		foreach(lc, req.retry)
		{
			if (n >= pg2r_snapshot_batch_size || !room)
				break;
			n++;
			if (SPI_execute_plan(plan, (Datum *) lfirst(lc), NULL, true, 0) !=
				SPI_OK_SELECT)
				elog(ERROR, "could not select a snapshot chunk");
			room = take_rows(rel, map, &meta, &sink);
		}
		chunk.retry_taken = n;
		chunk.last = false;
	}
	else
	{
		Portal portal;
		uint64 nrows = 0;
		bool   room = true;

		sql = keyorder_query(&chunk.key, rel, relname, query_kind(), filter,
							 pg2r_snapshot_batch_size, false);

		/*
		 * A cursor, so that rows are held a few at a time (a whole-row value
		 * is detoasted): the chunk ends at pg2redis.snapshot_batch_size rows
		 * (the query's LIMIT) or pg2redis.batch_bytes of commands.
		 */
		portal = SPI_cursor_open_with_args(NULL, sql,
										   req.last_key ? chunk.key.nkeys : 0,
										   chunk.key.types, req.last_key, NULL,
										   true, 0);
		while (room)
		{
			SPI_cursor_fetch(portal, true, CHUNK_FETCH_ROWS);
			if (SPI_processed == 0)
			{
				SPI_freetuptable(SPI_tuptable);
				break;
			}
			nrows += SPI_processed;
			room = take_rows(rel, map, &meta, &sink);
		}
		SPI_cursor_close(portal);
		chunk.last = room && nrows < (uint64) pg2r_snapshot_batch_size;
		if (chunk.next_key != NULL)
		{
			MemoryContext old2 = MemoryContextSwitchTo(chunk.cxt);

			chunk.next_key_text =
				keyorder_key_text(&chunk.key, chunk.next_key);
			MemoryContextSwitchTo(old2);
		}
	}
	if (filter != NULL)
		snapshot_restore_user(&saved);
	table_close(rel, AccessShareLock);
	return true;
}

/* ---------------------------------------------------------------------------
 * Requests
 * ---------------------------------------------------------------------------
 */

/* Arguments of request SQL run under worker_run_sql. */
typedef struct ProgressArgs
{
	const char *state; /* new state, or NULL to keep */
	const char *error;
	bool		acked; /* record pending's values, not req's */
} ProgressArgs;

/*
 * retry_array returns the keys to read again as a two-dimensional text
 * array, one row per key: keys (values of the key types types) or, not read
 * yet, keys_text (Lists of strings); NULL when there are none.  The key
 * types' output functions are built in (C), so no one's code runs.
 */
static Datum
retry_array(List *keys, List *keys_text, int nkeys, const Oid *types,
			bool *isnull)
{
	int		  n = list_length(keys) + list_length(keys_text);
	Datum	 *elems;
	FmgrInfo *out = NULL;
	int		  dims[2];
	int		  lbs[2] = {1, 1};
	int		  i = 0;
	ListCell *lc;

	*isnull = n == 0;
	if (n == 0)
		return (Datum) 0;
	if (keys != NIL)
	{
		out = palloc(sizeof(FmgrInfo) * nkeys);
		for (int k = 0; k < nkeys; k++)
		{
			Oid	 outfunc;
			bool varlena;

			getTypeOutputInfo(types[k], &outfunc, &varlena);
			fmgr_info(outfunc, &out[k]);
		}
	}
	else
		nkeys = list_length(linitial(keys_text));
	elems = palloc(sizeof(Datum) * n * nkeys);
	foreach(lc, keys)
		for (int k = 0; k < nkeys; k++)
			elems[i++] =
				CStringGetTextDatum(OutputFunctionCall(&out[k],
													   ((Datum *)
															lfirst(lc))[k]));
	foreach(lc, keys_text)
	{
		ListCell *lk;

		foreach(lk, (List *) lfirst(lc))
			elems[i++] = CStringGetTextDatum(lfirst(lk));
	}
	dims[0] = n;
	dims[1] = nkeys;
	return PointerGetDatum(construct_md_array(elems, NULL, 2, dims, lbs,
											  TEXTOID, -1, false,
											  TYPALIGN_INT));
}

/*
 * record_progress writes the request's progress (and state): that of the
 * chunk Redis acknowledged (pending), or the request's own.
 */
static bool
record_progress(void *arg)
{
	ProgressArgs *pa = arg;
	Oid			  types[8] = {INT8OID, INT8OID, REGCLASSOID,  TEXTARRAYOID,
							  TEXTOID, TEXTOID, TEXTARRAYOID, OIDOID};
	Datum		  values[8];
	char		  nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	uint64		  rows = pa->acked ? pending.rows : req.rows;
	Oid			  leaf = pa->acked ? pending.leaf : req.leaf;
	List		 *last_key = pa->acked ? pending.last_key : req.last_key_text;
	Oid			  keyindex = pa->acked ? pending.keyindex : req.keyindex;
	bool		  isnull;

	values[0] = Int64GetDatum(req.id);
	values[1] = Int64GetDatum(rows);
	values[2] = ObjectIdGetDatum(leaf);
	nulls[2] = OidIsValid(leaf) ? ' ' : 'n';
	if (last_key != NIL)
	{
		Datum	 *elems = palloc(sizeof(Datum) * list_length(last_key));
		ListCell *lc;

		foreach(lc, last_key)
			elems[foreach_current_index(lc)] = CStringGetTextDatum(lfirst(lc));
		values[3] =
			PointerGetDatum(construct_array(elems, list_length(last_key),
											TEXTOID, -1, false, TYPALIGN_INT));
	}
	else
		nulls[3] = 'n';
	values[4] = pa->state ? CStringGetTextDatum(pa->state) : (Datum) 0;
	nulls[4] = pa->state ? ' ' : 'n';
	values[5] = pa->error ? CStringGetTextDatum(pa->error) : (Datum) 0;
	nulls[5] = pa->error ? ' ' : 'n';
	if (pa->acked)
		values[6] = retry_array(pending.retry, NIL, pending.nkeys,
								pending.keytypes, &isnull);
	else
		values[6] = retry_array(req.retry, req.retry_text, req.nkeys,
								req.keytypes, &isnull);
	nulls[6] = isnull ? 'n' : ' ';
	values[7] = ObjectIdGetDatum(keyindex);
	nulls[7] = OidIsValid(keyindex) ? ' ' : 'n';
	if (SPI_execute_with_args("UPDATE pg2redis.snapshots SET rows = $2, current_relation = $3, "
							  "last_key = $4, state = coalesce($5, state), error = $6, "
							  "retry_keys = $7, key_index = $8, resume_lsn = NULL, resume_keys = NULL, "
							  "started_at = coalesce(started_at, pg_catalog.now()), "
							  "finished_at = CASE WHEN $5 OPERATOR(pg_catalog.=) ANY (ARRAY['done', 'failed']) "
							  "THEN pg_catalog.now() END "
							  "WHERE id OPERATOR(pg_catalog.=) $1",
							  8, types, values, nulls, false,
							  0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update pg2redis.snapshots");
	return true;
}

/* finish_request ends the current request as done or failed. */
static void
finish_request(const char *state, const char *error)
{
	ProgressArgs pa = {state, error, false};
	char		*err = NULL;

	if (!worker_run_sql(record_progress, &pa, NULL, &err))
		ereport(WARNING,
				(errmsg("pg2redis could not record the end of snapshot request " INT64_FORMAT
						": %s",
						req.id, err)));
	ereport(LOG, (errmsg("pg2redis: snapshot request " INT64_FORMAT
						 " %s after " UINT64_FORMAT " rows%s%s",
						 req.id, state, req.rows, error ? ": " : "",
						 error ? error : "")));
	req.active = false;
	chunk_reset();
	pending.active = false;
	pending.last_key = NIL;
	pending.retry = NIL;
	MemoryContextReset(OndemandCxt);
	req.leaves = NIL;
	forget_leaf_progress();
	req.keyindex = InvalidOid;
	req.keytypes = NULL;
	waiting_since = 0;

	/*
	 * Look for the next request at once, as after a wake-up: requests queued
	 * together (pg2redis_redrive() of many keys or partitions) would
	 * otherwise wait for the 10 s poll each once the first 2 s are over.
	 */
	last_poll = 0;
	requested_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 2000);
}

/*
 * text_keys returns the rows of a two-dimensional text array (recorded by
 * retry_array) as Lists of strings, in the current memory context.
 */
static List *
text_keys(ArrayType *array)
{
	Datum *elems;
	bool  *nulls;
	int	   n;
	int	   width;
	List  *keys = NIL;

	if (ARR_NDIM(array) != 2 || ARR_DIMS(array)[1] < 1)
		return NIL;
	width = ARR_DIMS(array)[1];
	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls,
					  &n);
	for (int i = 0; i + width <= n; i += width)
	{
		List *key = NIL;

		for (int k = 0; k < width; k++)
			key =
				lappend(key, nulls[i + k] ? pstrdup("")
										  : TextDatumGetCString(elems[i + k]));
		keys = lappend(keys, key);
	}
	return keys;
}

/*
 * resolve_resumes moves the start of each request an initial load that
 * gave up left (snapshot.c, load_requests) past the chunks of the load that
 * Redis turns out to have applied: they were in flight when it gave up, and
 * Redis may have applied them after all.  Whether it did is read from
 * Redis's position before this process decodes anything (worker.c calls
 * ondemand_resolve_resumes() between connecting and decoding): once the
 * stream applies a later transaction the position no longer tells.  The
 * answer is recorded as the request's last key, so that a restart does not
 * ask again.  Run by worker_run_sql.
 */
static bool
resolve_resumes(void *arg)
{
	Oid	   types[2] = {INT8OID, TEXTARRAYOID};
	uint64 n;

	if (SPI_execute("SELECT id, resume_lsn, resume_keys FROM pg2redis.snapshots "
					"WHERE resume_lsn IS NOT NULL AND resume_keys IS NOT NULL "
					"AND state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'running'])",
					false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg2redis.snapshots");
	n = SPI_processed;
	{
		SPITupleTable *rows = SPI_tuptable;

		for (uint64 i = 0; i < n; i++)
		{
			bool  isnull;
			Datum id = SPI_getbinval(rows->vals[i], rows->tupdesc, 1, &isnull);
			XLogRecPtr lsn =
				DatumGetLSN(SPI_getbinval(rows->vals[i], rows->tupdesc, 2,
										  &isnull));
			ArrayType *keys =
				DatumGetArrayTypeP(SPI_getbinval(rows->vals[i], rows->tupdesc,
												 3, &isnull));
			List	 *last = NIL;
			ListCell *lc;
			Datum	  values[2];
			char	  nulls[2] = {' ', ' '};

			foreach(lc, text_keys(keys))
			{
				List  *row = lfirst(lc);
				uint64 ncmds = strtou64(linitial(row), NULL, 10);

				if (list_length(row) < 2 || !sender_applied_part(lsn, ncmds))
					break;
				last = list_copy_tail(row, 1);
			}
			values[0] = id;
			if (last != NIL)
			{
				Datum *elems = palloc(sizeof(Datum) * list_length(last));

				foreach(lc, last)
					elems[foreach_current_index(lc)] =
						CStringGetTextDatum(lfirst(lc));
				values[1] =
					PointerGetDatum(construct_array(elems, list_length(last),
													TEXTOID, -1, false,
													TYPALIGN_INT));
			}
			else
				nulls[1] = 'n';
			if (SPI_execute_with_args("UPDATE pg2redis.snapshots "
									  "SET last_key = coalesce($2, last_key), "
									  "resume_lsn = NULL, resume_keys = NULL "
									  "WHERE id OPERATOR(pg_catalog.=) $1",
									  2, types, values, nulls, false,
									  0) != SPI_OK_UPDATE)
				elog(ERROR, "could not update pg2redis.snapshots");
		}
	}
	return true;
}

/*
 * ondemand_resolve_resumes records where the requests an initial load
 * that gave up left start (resolve_resumes); the worker calls it once
 * Redis's position is known and before it decodes anything.  A failure is
 * a WARNING: those requests then start after the last chunk Redis
 * acknowledged before the load gave up.
 */
void
ondemand_resolve_resumes(void)
{
	char *err = NULL;

	if (!worker_run_sql(resolve_resumes, NULL, NULL, &err))
		ereport(WARNING,
				(errmsg("pg2redis could not resolve where snapshot requests resume: %s",
						err)));
}

/*
 * load_keys_only sets up a keys-only request (pg2redis_redrive()), in
 * OndemandCxt, from the row load_request read: its one table, whose keys in
 * retry_keys are read as keys read again are, and no range after them (the
 * leaf counts as read to its end).  Once they are all read, the request
 * records none: it is done.  Keys of a request the worker recorded
 * progress of (current_relation is set) were left by a chunk: why is not
 * recorded, so they count as read again after an unknown change.
 */
static void
load_keys_only(void)
{
	HeapTuple tup = SPI_tuptable->vals[0];
	TupleDesc desc = SPI_tuptable->tupdesc;
	bool	  isnull;
	Datum	  relation = SPI_getbinval(tup, desc, 2, &isnull);
	Oid		  relid = isnull ? InvalidOid : DatumGetObjectId(relation);
	bool	  resumed;
	Datum	  keys;
	Datum	  keyindex;

	(void) SPI_getbinval(tup, desc, 3, &isnull);
	resumed = !isnull;
	keyindex = SPI_getbinval(tup, desc, 7, &isnull);
	forget_leaf_progress();
	req.leaves = NIL;
	req.keyindex = isnull ? InvalidOid : DatumGetObjectId(keyindex);
	keys = SPI_getbinval(tup, desc, 6, &isnull);
	if (!isnull)
		req.retry_text = text_keys(DatumGetArrayTypeP(keys));
	if (req.retry_text != NIL && get_rel_relkind(relid) == RELKIND_RELATION)
		req.leaves = list_make1_oid(relid);
	req.leaf_done = true;
	req.first_keys = list_length(req.retry_text);
	req.retry_blind = resumed && req.retry_text != NIL;
}

/*
 * load_request picks the oldest pending or running request, the leaves it
 * still has to read, and the progress recorded in the first of them (the
 * last key sent, the keys to read again, the key index they belong to).
 */
static bool
load_request(void *arg)
{
	bool		  isnull;
	Datum		  relation;
	Datum		  current;
	Datum		  lastkey;
	Datum		  rows;
	bool		  current_null;
	List		 *leaves;
	ListCell	 *lc;
	MemoryContext old;

	if (SPI_execute("SELECT id, relation, current_relation, last_key, rows, "
					"retry_keys, key_index, resume_lsn, resume_keys, keys_only "
					"FROM pg2redis.snapshots "
					"WHERE state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'running']) "
					"ORDER BY id LIMIT 1",
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg2redis.snapshots");
	if (SPI_processed == 0)
		return true;

	req.id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));
	relation = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
							 &isnull);
	leaves = isnull ? rules_mapped_leaves(InvalidOid)
					: rules_mapped_leaves(DatumGetObjectId(relation));
	current = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3,
							&isnull);
	current_null = isnull;

	old = MemoryContextSwitchTo(OndemandCxt);
	req.leaves = NIL;
	forget_leaf_progress();
	req.keyindex = InvalidOid;
	req.keytypes = NULL;
	foreach(lc, leaves)
	{
		/* leaves before the one in progress are done */
		if (!isnull && lfirst_oid(lc) < DatumGetObjectId(current))
			continue;
		req.leaves = lappend_oid(req.leaves, lfirst_oid(lc));
	}
	lastkey = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4,
							&isnull);
	if (!isnull && req.leaves != NIL &&
		linitial_oid(req.leaves) == DatumGetObjectId(current))
	{
		Datum *elems;
		bool  *nulls;
		int	   n;

		deconstruct_array(DatumGetArrayTypeP(lastkey), TEXTOID, -1, false,
						  TYPALIGN_INT, &elems, &nulls, &n);
		/* made values of the key's types by the first chunk, as the owner */
		for (int i = 0; i < n; i++)
			req.last_key_text =
				lappend(req.last_key_text, TextDatumGetCString(elems[i]));
	}
	if (req.leaves != NIL && !current_null &&
		linitial_oid(req.leaves) == DatumGetObjectId(current))
	{
		Datum keyindex = SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 7, &isnull);
		Datum retry;

		req.keyindex = isnull ? InvalidOid : DatumGetObjectId(keyindex);
		retry = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6,
							  &isnull);
		/* made values of the key's types by the first chunk, as the owner */
		if (!isnull)
		{
			req.retry_text = text_keys(DatumGetArrayTypeP(retry));
			/* why they were recorded is not: as if no change were known */
			req.retry_blind = req.retry_text != NIL;
		}
	}
	req.keys_only =
		DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
								   SPI_tuptable->tupdesc, 10, &isnull));
	if (req.keys_only)
		load_keys_only();
	rows = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5,
						 &isnull);
	req.rows = DatumGetInt64(rows);
	req.leaf = req.leaves != NIL ? linitial_oid(req.leaves) : InvalidOid;
	req.active = true;
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * ondemand_init sets up memory and draws the watermarks' nonce (worker
 * start).
 */
void
ondemand_init(void)
{
	uint8 bytes[NONCE_BYTES];

	if (!pg_strong_random(bytes, sizeof(bytes)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random snapshot watermark nonce")));
	nonce[hex_encode((const char *) bytes, sizeof(bytes), nonce)] = '\0';

	OndemandCxt = AllocSetContextCreate(TopMemoryContext, "pg2redis snapshots",
										ALLOCSET_DEFAULT_SIZES);
	chunk.cxt =
		AllocSetContextCreate(TopMemoryContext, "pg2redis snapshot chunk",
							  ALLOCSET_DEFAULT_SIZES);
	ScratchCxt =
		AllocSetContextCreate(TopMemoryContext, "pg2redis snapshot scratch",
							  ALLOCSET_DEFAULT_SIZES);
	memset(&req, 0, sizeof(req));
	ndecoded = 0;
}

/* ondemand_busy: a chunk waits for its high watermark. */
bool
ondemand_busy(void)
{
	return chunk.open;
}

/*
 * ondemand_poll_timeout returns how long the worker may sleep before it
 * should look for a just-requested snapshot again, or try again to open a
 * chunk that waits for guard 1 (ms), or -1.
 */
long
ondemand_poll_timeout(void)
{
	TimestampTz now = GetCurrentTimestamp();

	if (req.active && waiting_since != 0 && !chunk.open)
		return SELECT_POLL_MS; /* a chunk waits for guard 1 */
	if (req.active || now >= requested_until)
		return -1;
	return Max(50 - TimestampDifferenceMilliseconds(last_poll, now), 0);
}

/* chunk_reset forgets the chunk's rows. */
static void
chunk_reset(void)
{
	MemoryContextReset(chunk.cxt);
	chunk.open = chunk.in_window = chunk.sent = chunk.last = false;
	chunk.rows = NULL;
	chunk.order = NIL;
	chunk.next_key = NULL;
	chunk.next_key_text = NIL;
	chunk.key.nkeys = 0;
	chunk.xip = NULL;
	chunk.nsent = 0;
	chunk.sent_at = InvalidXLogRecPtr;
	chunk.is_retry = false;
	chunk.retry_taken = 0;
	chunk.key.index = InvalidOid;
}

/*
 * ondemand_step advances snapshot requests between decoding batches:
 * records the progress of a chunk that was sent, and opens the next chunk
 * (watermarks and selection) when none is open.
 */
void
ondemand_step(void)
{
	char *err = NULL;

	if (chunk.open)
		return;

	/*
	 * Progress is recorded only once Redis has applied the chunk: a restart
	 * before that selects the chunk again instead of skipping it.
	 */
	/*
	 * With nothing in flight or waiting, the sender has nothing of the chunk
	 * left either: its rows may have produced no command at all (conditions,
	 * render errors), and then no block carries its fence.
	 */
	if (pending.active &&
		(sender_applied_through(pending.sent_at) || sender_idle()))
	{
		ProgressArgs pa = {"running", NULL, true};

		pending.active = false;
		if (req.leaves != NIL &&
			!worker_run_sql(record_progress, &pa, NULL, &err))
		{
			finish_request("failed", err);
			return;
		}
	}
	/* at most one chunk waits for Redis while the next one is selected */
	if (chunk.sent && pending.active)
		return;
	/* the request is done once Redis has applied its last chunk */
	if (req.active && req.leaves == NIL && !chunk.sent)
	{
		if (!pending.active)
			finish_request("done", NULL);
		return;
	}

	if (chunk.sent)
	{
		MemoryContext old = MemoryContextSwitchTo(OndemandCxt);
		ListCell	 *lc;
		int			  nretry = 0;

		req.rows += chunk.nsent;
		if (chunk.is_retry)
		{
			/* the keys selected again leave the list; new conflicts join it */
			req.retry = list_delete_first_n(req.retry, chunk.retry_taken);
			/* a keys-only request's own keys are read, not read again */
			if (req.first_keys > 0)
				req.first_keys -= Min(req.first_keys, chunk.retry_taken);
			else
				req.retry_round++;
		}
		else
		{
			req.last_key = chunk.next_key
							   ? keyorder_copy_key(&chunk.key, chunk.next_key)
							   : NULL;
			req.last_key_text = NIL;
			foreach(lc, chunk.next_key_text)
				req.last_key_text =
					lappend(req.last_key_text, pstrdup(lfirst(lc)));
			req.leaf_done = chunk.last;
		}
		foreach(lc, chunk.order)
		{
			ChunkRow *row = lfirst(lc);

			if (row->removed)
			{
				req.retry = lappend(req.retry,
									keyorder_copy_key(&chunk.key, row->key));
				nretry++;
				if (!row->changed)
					req.retry_blind = true;
			}
		}
		if (nretry > 0)
			ereport(DEBUG1,
					(errmsg_internal("pg2redis: snapshot request " INT64_FORMAT
									 " reads %d rows of \"%s\" again",
									 req.id, nretry, req.leaf_name)));
		if (req.retry != NIL && req.retry_round >= RETRY_ROUNDS &&
			req.retry_blind)
		{
			/*
			 * Some of the rows were read again only because a change in
			 * their windows did not say which row it changed (REPLICA
			 * IDENTITY NOTHING, a null or unreadable key): the stream may
			 * never write them, and leaving them to it lost them.
			 */
			int	  n = list_length(req.retry);
			char *msg;

			MemoryContextSwitchTo(old);
			msg =
				psprintf("could not read %d rows of \"%s\": a change that does not say which row it changed (REPLICA IDENTITY NOTHING, or a key the replica identity does not log) came in each of %d windows; set REPLICA IDENTITY DEFAULT or FULL, or request the snapshot again when the table is quieter",
						 n, req.leaf_name, RETRY_ROUNDS);
			chunk_reset();
			finish_request("failed", msg);
			return;
		}
		if (req.retry != NIL && req.retry_round >= RETRY_ROUNDS)
		{
			ereport(WARNING,
					(errmsg("pg2redis: snapshot request " INT64_FORMAT
							" leaves %d rows of \"%s\" to the stream",
							req.id, list_length(req.retry), req.leaf_name),
					 errdetail("They changed every time they were read again; the stream applied their changes with the update rules.")));
			req.retry = NIL;
		}
		if (req.retry == NIL)
		{
			req.retry_round = 0;
			req.retry_blind = false;
		}
		if (req.leaf_done && req.retry == NIL)
		{
			req.leaves = list_delete_first(req.leaves);
			req.leaf =
				req.leaves != NIL ? linitial_oid(req.leaves) : InvalidOid;
			req.last_key = NULL;
			req.last_key_text = NIL;
			req.leaf_done = false;
			req.keyindex = InvalidOid;
			req.nkeys = 0;
			req.keytypes = NULL;
		}
		if (chunk.sent_at != InvalidXLogRecPtr)
		{
			/*
			 * Recorded as progress when Redis has applied the chunk, with the
			 * keys to read again: the last key moved past them, and only they
			 * still lack their snapshot rules.
			 */
			list_free_deep(pending.last_key);
			pending.last_key = NIL;
			foreach(lc, req.last_key_text)
				pending.last_key =
					lappend(pending.last_key, pstrdup(lfirst(lc)));
			list_free(pending.retry);
			pending.retry = list_copy(req.retry);
			pending.keyindex = req.keyindex;
			pending.nkeys = req.nkeys;
			pending.keytypes = req.keytypes;
			pending.rows = req.rows;
			pending.leaf = req.leaf;
			pending.sent_at = chunk.sent_at;
			pending.active = true;
		}
		MemoryContextSwitchTo(old);
		chunk_reset();
		if (req.leaves == NIL)
		{
			if (!pending.active)
				finish_request("done", NULL);
			return;
		}
	}

	if (!req.active)
	{
		TimestampTz now = GetCurrentTimestamp();

		/* a request starts once Redis's position is known */
		if (!sender_ready())
			return;

		/*
		 * A request wakes us at its commit; the row may not be visible yet
		 * when the flag is seen, so look again for a little while.
		 */
		if (pg_atomic_exchange_u32(&pg2r_shared->snapshot_requested, 0) != 0)
			requested_until = TimestampTzPlusMilliseconds(now, 2000);
		if (!(now < requested_until &&
			  TimestampDifferenceExceeds(last_poll, now, 50)) &&
			!TimestampDifferenceExceeds(last_poll, now, 10000))
			return;
		last_poll = GetCurrentTimestamp();
		if (!worker_run_sql(load_request, NULL, NULL, &err))
		{
			ereport(WARNING,
					(errmsg("pg2redis could not read snapshot requests: %s",
							err)));
			return;
		}
		if (!req.active)
			return;
		ereport(LOG,
				(errmsg("pg2redis: serving snapshot request " INT64_FORMAT,
						req.id)));
		if (req.leaves == NIL)
		{
			finish_request("done", NULL);
			return;
		}
		{
			ProgressArgs pa = {"running", NULL, false};

			(void) worker_run_sql(record_progress, &pa, NULL, &err);
		}
	}

	open_chunk();
}

/*
 * open_chunk opens the next chunk: L, select, H.  Guard 1 may have to wait
 * for decoded transactions to leave the proc array: then it returns with no
 * chunk open, so that the stream goes on, and the next ondemand_step() tries
 * again (ondemand_poll_timeout brings the worker back within
 * SELECT_POLL_MS; the worker's loop serves interrupts meanwhile).  The
 * request fails once it waited SELECT_WAIT_MS.
 */
static void
open_chunk(void)
{
	bool		selected = false;
	char	   *err = NULL;
	TimestampTz now;

	chunk_reset();
	chunk.is_retry = req.retry != NIL || req.retry_text != NIL;

	/*
	 * Guard 1, before any watermark or query: what is no longer in progress
	 * now, the chunk's snapshot sees, so select_chunk's own check passes.
	 */
	prune_decoded();
	if (ndecoded == 0)
	{
		chunk_seq++;
		snprintf(chunk.low, sizeof(chunk.low),
				 "L:" INT64_FORMAT ":" UINT64_FORMAT ":%s", req.id, chunk_seq,
				 nonce);
		snprintf(chunk.high, sizeof(chunk.high),
				 "H:" INT64_FORMAT ":" UINT64_FORMAT ":%s", req.id, chunk_seq,
				 nonce);
		chunk.low_end = write_watermark(chunk.low);
		if (!worker_run_sql(select_chunk, NULL, &selected, &err))
		{
			chunk_reset();
			finish_request("failed", err);
			return;
		}
	}
	else
		waiting_for = decoded[0];
	if (selected)
	{
		waiting_since = 0;
		chunk.high_end = write_watermark(chunk.high);
		chunk.open = true;
		return;
	}

	chunk_reset();
	now = GetCurrentTimestamp();
	if (waiting_since == 0)
		waiting_since = now;
	else if (TimestampDifferenceExceeds(waiting_since, now, SELECT_WAIT_MS))
	{
		char msg[256];

		snprintf(msg, sizeof(msg),
				 "could not take a snapshot that sees every transaction already streamed: transaction %u stayed in progress for %d s after its commit was streamed (a synchronous replication wait?)",
				 waiting_for, SELECT_WAIT_MS / 1000);
		finish_request("failed", msg);
	}
}
