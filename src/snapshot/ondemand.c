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
#include "pg2redis/pgarray.h"
#include "pg2redis/relutil.h"
#include "pg2redis/sender.h"
#include "pg2redis/settings.h"
#include "pg2redis/snapshot.h"
#include "pg2redis/snapshot_filters.h"
#include "pg2redis/state.h"
#include "pg2redis/xactsql.h"

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

/* how often the rows a chunk's window changed are read again, at most */
#define RETRY_ROUNDS 10

/*
 * Requests are looked for every REQUEST_POLL_MS; for REQUESTED_WINDOW_MS
 * after a request's commit woke the worker (or after a request ended, as
 * others may be queued behind it), every REQUESTED_POLL_MS.
 */
#define REQUEST_POLL_MS 10000
#define REQUESTED_POLL_MS 50
#define REQUESTED_WINDOW_MS 2000

/* One selected row: its key and its rendered commands. */
typedef struct ChunkRow
{
	Datum *key;		 /* hash key: the key columns' values */
	char **keytext;	 /* and their text, for the row's dead letters */
	bool   removed;	 /* the stream changed it: not sent */
	bool   changed;	 /* removed by its own key, not with the whole chunk */
	Size   cmds_off; /* its serialized commands in chunk.cmds */
	Size   cmds_len;
} ChunkRow;

/* The request being served. */
typedef struct Request
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
} Request;

/*
 * The progress of the last chunk sent, to be recorded once Redis has applied
 * it.  One chunk may wait for its acknowledgement while the next one is
 * selected (the selection does not depend on Redis), so that reading
 * PostgreSQL and applying in Redis overlap; a restart before the
 * acknowledgement selects that chunk again.
 */
typedef struct PendingProgress
{
	bool	   active;
	XLogRecPtr sent_at; /* the chunk's fence */
	uint64	   rows;
	Oid		   leaf;
	List	  *last_key; /* text, in od.cxt */
	List	  *retry;	 /* keys to read again (Datum *), of types: */
	Oid		   keyindex;
	int		   nkeys;
	Oid		  *keytypes;
} PendingProgress;

/* The chunk in flight between its watermarks. */
typedef struct Chunk
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
	StringInfoData cmds;		/* its rows' commands (cmdbuf.c) */
	Size		   bytes;		/* all its rows take */
	MemoryContext  cxt;
} Chunk;

/* Everything this file keeps between calls (worker only). */
typedef struct OndemandState
{
	Request			req;
	PendingProgress pending;
	Chunk			chunk;
	MemoryContext	cxt;	 /* the request's */
	MemoryContext	scratch; /* per decoded change or chunk row */

	/*
	 * Guard 1: the decoded transactions that may still be in the proc
	 * array (TopMemoryContext).  A transaction leaves it for good, so the
	 * set holds only those whose commit was decoded but which had not left
	 * it yet when last looked at: a handful, however many transactions are
	 * decoded, and never an entry old enough for its xid to wrap around.
	 */
	TransactionId *decoded;
	int			   ndecoded;
	int			   maxdecoded;
	int			   prune_at;
	TimestampTz	   waiting_since; /* a selection waits for guard 1 */
	TransactionId  waiting_for;

	uint64		chunk_seq;
	TimestampTz last_poll;					/* requests were last looked for */
	TimestampTz requested_until;			/* look often until then */
	char		nonce[NONCE_BYTES * 2 + 1]; /* in the watermarks */
} OndemandState;

static OndemandState od = {.prune_at = DECODED_PRUNE_MIN};

static void chunk_reset(void);
static void open_chunk(void);

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

	for (int i = 0; i < od.chunk.key.nkeys; i++)
		h = hash_combine(h, datum_image_hash(k[i], od.chunk.key.byval[i],
											 od.chunk.key.len[i]));
	return h;
}

static int
key_match(const void *a, const void *b, Size keysize)
{
	const Datum *ka = *(const Datum *const *) a;
	const Datum *kb = *(const Datum *const *) b;

	for (int i = 0; i < od.chunk.key.nkeys; i++)
		if (!datum_image_eq(ka[i], kb[i], od.chunk.key.byval[i],
							od.chunk.key.len[i]))
			return 1;
	return 0;
}

/* invisible tells whether the chunk's snapshot does not see xid. */
static bool
invisible(TransactionId xid)
{
	if (!TransactionIdIsNormal(xid))
		return false;
	if (TransactionIdFollowsOrEquals(xid, od.chunk.xmax))
		return true;
	if (TransactionIdPrecedes(xid, od.chunk.xmin))
		return false;
	for (int i = 0; i < od.chunk.xcnt; i++)
		if (TransactionIdEquals(od.chunk.xip[i], xid))
			return true;
	return false;
}

/* drop_all removes every row from the open chunk. */
static void
drop_all(void)
{
	ListCell *lc;

	foreach(lc, od.chunk.order)
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
	Datum *key =
		keyorder_row_key(&od.chunk.key, desc, tuple, false, &unreadable);
	ChunkRow *row;

	if (key == NULL)
	{
		drop_all();
		return;
	}
	row = hash_search(od.chunk.rows, &key, HASH_FIND, NULL);
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
	return RelationGetReplicaIndex(rel) == od.chunk.key.index;
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

	for (int i = 0; i < od.ndecoded; i++)
		if (TransactionIdIsInProgress(od.decoded[i]))
			od.decoded[kept++] = od.decoded[i];
	od.ndecoded = kept;
	od.prune_at = Max(DECODED_PRUNE_MIN, 2 * od.ndecoded);
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
	if (od.ndecoded == od.maxdecoded)
	{
		od.maxdecoded = Max(2 * od.maxdecoded, DECODED_PRUNE_MIN);
		od.decoded =
			od.decoded == NULL
				? MemoryContextAlloc(TopMemoryContext,
									 sizeof(TransactionId) * od.maxdecoded)
				: repalloc(od.decoded, sizeof(TransactionId) * od.maxdecoded);
	}
	od.decoded[od.ndecoded++] = xid;
	if (od.ndecoded >= od.prune_at)
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

	if (!od.chunk.open || RelationGetRelid(rel) != od.req.leaf)
		return;
	if (!od.chunk.in_window && !invisible(xid))
		return;
	/* not in od.chunk.cxt: a big transaction in the window would grow it */
	old = MemoryContextSwitchTo(od.scratch);
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
	MemoryContextReset(od.scratch);
}

/* ondemand_note_truncate empties the open chunk when its leaf is truncated. */
void
ondemand_note_truncate(Oid relid, TransactionId xid)
{
	if (!od.chunk.open || relid != od.req.leaf)
		return;
	if (!od.chunk.in_window && !invisible(xid))
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
	Oid			 relid = od.req.leaf;
	CmdBufReader reader = {0};
	Rule		 rule;
	int			 argc;
	const char	*error;

	sender_begin_txn(InvalidTransactionId, lsn, lsn, GetCurrentTimestamp());
	foreach(lc, od.chunk.order)
	{
		ChunkRow *row = lfirst(lc);

		if (row->removed)
			continue;
		if (!sender_txn_skipped())
		{
			od.chunk.nsent++;
			sender_count_change();
		}
		/* the row's key, which its dead letters record (see redrive.c) */
		sender_set_row_key(od.chunk.key.index, od.chunk.key.nkeys,
						   row->keytext);
		cmdbuf_reader_init(&reader, od.chunk.cmds.data + row->cmds_off,
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
	od.chunk.sent_at = od.chunk.nsent > 0 ? lsn : InvalidXLogRecPtr;
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
	if (!od.chunk.open || strcmp(prefix, WATERMARK_PREFIX) != 0)
		return;

	/*
	 * A watermark is the record this worker wrote, at the position it was
	 * written: its payload, nonce included, can be read from WAL by anyone
	 * who may decode it, and copied into a message of their own.
	 */
	if (lsn == od.chunk.low_end && size == strlen(od.chunk.low) &&
		memcmp(message, od.chunk.low, size) == 0)
		od.chunk.in_window = true;
	else if (od.chunk.in_window && lsn == od.chunk.high_end &&
			 size == strlen(od.chunk.high) &&
			 memcmp(message, od.chunk.high, size) == 0)
	{
		send_chunk(lsn);
		od.chunk.open = false;
		od.chunk.sent = true;
	}
}

/* ---------------------------------------------------------------------------
 * Rendering the chunk's rows
 * ---------------------------------------------------------------------------
 */

/*
 * row_sink_command keeps a rendered command of a chunk row in the buffer
 * arg (the chunk's commands, od.chunk.cmds).
 */
static void
row_sink_command(void *arg, const Rule *rule, Pg2rOp op, int argc,
				 const char *const *argv, const size_t *argvlen)
{
	cmdbuf_append((StringInfo) arg, rule, argc, argv, argvlen);
}

/*
 * row_sink_error keeps a render error of a chunk row in the buffer arg, a
 * dead letter once the chunk is sent.
 */
static void
row_sink_error(void *arg, const Rule *rule, Pg2rOp op, const Pg2rError *err)
{
	cmdbuf_append_error((StringInfo) arg, rule, err->message);
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

	if (list_length(text) != od.chunk.key.nkeys)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the key of table \"%s\" changed while a snapshot read it",
						od.req.leaf_name),
				 errhint("Request the snapshot again.")));
	old = MemoryContextSwitchTo(od.cxt);
	key = palloc(sizeof(Datum) * od.chunk.key.nkeys);
	foreach(lc, text)
	{
		int k = foreach_current_index(lc);
		Oid infunc;
		Oid ioparam;

		getTypeInputInfo(od.chunk.key.types[k], &infunc, &ioparam);
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

	if (od.req.last_key == NULL && od.req.last_key_text != NIL)
		od.req.last_key = read_key(od.req.last_key_text);
	foreach(lc, od.req.retry_text)
	{
		Datum		 *key = read_key(lfirst(lc));
		MemoryContext old = MemoryContextSwitchTo(od.cxt);

		od.req.retry = lappend(od.req.retry, key);
		MemoryContextSwitchTo(old);
	}
	od.req.retry_text = NIL;
}

/*
 * forget_leaf_progress forgets where the request is in its current leaf:
 * the last key read, the keys to read again and their rounds.
 */
static void
forget_leaf_progress(void)
{
	od.req.last_key = NULL;
	od.req.last_key_text = NIL;
	od.req.retry = NIL;
	od.req.retry_text = NIL;
	od.req.retry_round = 0;
	od.req.retry_blind = false;
	od.req.leaf_done = false;
	od.req.first_keys = 0;
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
	if (od.req.keys_only && od.req.keyindex != od.chunk.key.index)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the key of table \"%s\" changed since the keys to read were recorded",
						od.req.leaf_name),
				 errhint("Run pg2redis_snapshot() on the table to write all its rows again.")));
	if (OidIsValid(od.req.keyindex) && od.req.keyindex != od.chunk.key.index)
	{
		ereport(LOG,
				(errmsg("snapshot request " INT64_FORMAT
						" reads table \"%s\" again from its start: its key changed",
						od.req.id, od.req.leaf_name)));
		forget_leaf_progress();
		od.chunk.is_retry = false;
	}
	if (od.req.keyindex != od.chunk.key.index || od.req.keytypes == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(od.cxt);

		od.req.keyindex = od.chunk.key.index;
		od.req.nkeys = od.chunk.key.nkeys;
		od.req.keytypes = palloc(sizeof(Oid) * od.chunk.key.nkeys);
		memcpy(od.req.keytypes, od.chunk.key.types,
			   sizeof(Oid) * od.chunk.key.nkeys);
		MemoryContextSwitchTo(old);
	}
}

/*
 * take_rows adds the rows of the current SPI result to the chunk, with
 * their rendered commands, until the chunk's commands reach
 * pg2redis.batch_bytes; returns false once they have (the rows after the
 * last one taken are left to the next chunk).  od.chunk.next_key is the key of
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

		pg2r_spi_whole_row(i, od.req.leaf, &tuple);

		old = MemoryContextSwitchTo(od.chunk.cxt);
		key = keyorder_row_key(&od.chunk.key, RelationGetDescr(rel), &tuple,
							   true, &unreadable);
		if (key == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("a key column of table \"%s\" is null",
							RelationGetRelationName(rel)),
					 errhint("Snapshots on demand need a primary key, or a replica identity index on columns that are not null.")));
		row = hash_search(od.chunk.rows, &key, HASH_ENTER, &found);
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
		row->keytext = palloc(sizeof(char *) * od.chunk.key.nkeys);
		for (int k = 0; k < od.chunk.key.nkeys; k++)
			row->keytext[k] = OutputFunctionCall(&od.chunk.key.out[k], key[k]);
		row->removed = false;
		row->changed = false;
		row->cmds_off = od.chunk.cmds.len;
		od.chunk.order = lappend(od.chunk.order, row);
		od.chunk.next_key = key;

		MemoryContextSwitchTo(od.scratch);
		mapping_change(map, rel, PG2R_OP_SNAPSHOT, NULL, &tuple, meta, sink);
		MemoryContextSwitchTo(old);
		MemoryContextReset(od.scratch);
		row->cmds_len = od.chunk.cmds.len - row->cmds_off;
		od.chunk.bytes += row->cmds_len + sizeof(ChunkRow) +
						  sizeof(Datum) * od.chunk.key.nkeys +
						  64; /* hash, list */
		room = od.chunk.bytes < (Size) pg2r_batch_bytes;
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
	if (od.chunk.is_retry)
		return KEYQ_EQUAL;
	return od.req.last_key != NULL ? KEYQ_AFTER : KEYQ_FIRST;
}

/*
 * snapshot_sees_decoded is guard 1: it tells whether snap sees every
 * transaction the stream already applied.  What it sees as ended, every
 * later snapshot sees too: forgotten here.  When it misses one,
 * od.waiting_for names it.
 */
static bool
snapshot_sees_decoded(Snapshot snap)
{
	int kept = 0;

	for (int i = 0; i < od.ndecoded; i++)
		if (XidInMVCCSnapshot(od.decoded[i], snap))
			od.decoded[kept++] = od.decoded[i];
	od.ndecoded = kept;
	if (od.ndecoded > 0)
	{
		od.waiting_for = od.decoded[0];
		return false;
	}
	return true;
}

/*
 * chunk_init_rows records snap's visibility (guard 2) and makes the
 * chunk's empty row table and command buffer, in od.chunk.cxt.
 */
static void
chunk_init_rows(Snapshot snap)
{
	MemoryContext old = MemoryContextSwitchTo(od.chunk.cxt);
	HASHCTL		  ctl;

	od.chunk.xmin = snap->xmin;
	od.chunk.xmax = snap->xmax;
	od.chunk.xcnt = snap->xcnt;
	od.chunk.xip = palloc(sizeof(TransactionId) * Max(snap->xcnt, 1));
	memcpy(od.chunk.xip, snap->xip, sizeof(TransactionId) * snap->xcnt);
	ctl.keysize = sizeof(Datum *);
	ctl.entrysize = sizeof(ChunkRow);
	ctl.hash = key_hash;
	ctl.match = key_match;
	ctl.hcxt = od.chunk.cxt;
	od.chunk.rows =
		hash_create("pg2redis chunk rows", 1024, &ctl,
					HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	initStringInfo(&od.chunk.cmds);
	od.chunk.bytes = 0;
	od.chunk.next_key = NULL;
	od.chunk.next_key_text = NIL;
	MemoryContextSwitchTo(old);
}

/*
 * select_retry_keys reads the rows of the keys to read again (req.retry),
 * one query per key, up to pg2redis.snapshot_batch_size keys or until the
 * chunk is full.
 */
static void
select_retry_keys(Relation rel, RelMap *map, const char *relname,
				  const char *filter, const ChangeMeta *meta,
				  const CommandSink *sink)
{
	char	  *sql;
	SPIPlanPtr plan;
	ListCell  *lc;
	int		   n = 0;
	bool	   room = true;

	sql = keyorder_query(&od.chunk.key, rel, relname, query_kind(), filter,
						 pg2r_snapshot_batch_size, false);
	plan = SPI_prepare(sql, od.chunk.key.nkeys, od.chunk.key.types);
	if (plan == NULL)
		elog(ERROR, "could not prepare a snapshot chunk: %s",
			 SPI_result_code_string(SPI_result));
	foreach(lc, od.req.retry)
	{
		if (n >= pg2r_snapshot_batch_size || !room)
			break;
		n++;
		if (SPI_execute_plan(plan, (Datum *) lfirst(lc), NULL, true, 0) !=
			SPI_OK_SELECT)
			elog(ERROR, "could not select a snapshot chunk");
		room = take_rows(rel, map, meta, sink);
	}
	od.chunk.retry_taken = n;
	od.chunk.last = false;
}

/*
 * select_range reads the leaf's next range of rows in key order, after the
 * last key sent (or from the leaf's start), and sets chunk.last when the
 * leaf has no rows after them.
 */
static void
select_range(Relation rel, RelMap *map, const char *relname,
			 const char *filter, const ChangeMeta *meta,
			 const CommandSink *sink)
{
	char  *sql;
	Portal portal;
	uint64 nrows = 0;
	bool   room = true;

	sql = keyorder_query(&od.chunk.key, rel, relname, query_kind(), filter,
						 pg2r_snapshot_batch_size, false);

	/*
	 * A cursor, so that rows are held a few at a time (a whole-row value is
	 * detoasted): the chunk ends at pg2redis.snapshot_batch_size rows (the
	 * query's LIMIT) or pg2redis.batch_bytes of commands.
	 */
	portal =
		SPI_cursor_open_with_args(NULL, sql,
								  od.req.last_key ? od.chunk.key.nkeys : 0,
								  od.chunk.key.types, od.req.last_key, NULL,
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
		room = take_rows(rel, map, meta, sink);
	}
	SPI_cursor_close(portal);
	od.chunk.last = room && nrows < (uint64) pg2r_snapshot_batch_size;
	if (od.chunk.next_key != NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(od.chunk.cxt);

		od.chunk.next_key_text =
			keyorder_key_text(&od.chunk.key, od.chunk.next_key);
		MemoryContextSwitchTo(old);
	}
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
	ChangeMeta	  meta = {0};
	CommandSink	  sink = {row_sink_command, row_sink_error, &od.chunk.cmds,
						  false};
	SnapshotOwner saved;

	if (!snapshot_sees_decoded(snap))
		return false;
	chunk_init_rows(snap);

	rel = table_open(od.req.leaf, AccessShareLock);
	strlcpy(od.req.leaf_name, RelationGetRelationName(rel), NAMEDATALEN);
	relname =
		quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
								   RelationGetRelationName(rel));
	map = mapping_get(rel);
	if (!keyorder_setup(rel, od.chunk.cxt, &od.chunk.key))
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
	if (od.chunk.is_retry)
		select_retry_keys(rel, map, relname, filter, &meta, &sink);
	else
		select_range(rel, map, relname, filter, &meta, &sink);
	if (filter != NULL)
		snapshot_restore_user(&saved);
	table_close(rel, AccessShareLock);
	return true;
}

/* ---------------------------------------------------------------------------
 * Requests
 * ---------------------------------------------------------------------------
 */

/* Arguments of request SQL run under pg2r_run_sql. */
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
	List	 *rows = NIL;
	FmgrInfo *out = NULL;
	ListCell *lc;

	*isnull = keys == NIL && keys_text == NIL;
	if (*isnull)
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
	foreach(lc, keys)
	{
		List *row = NIL;

		for (int k = 0; k < nkeys; k++)
			row = lappend(row, OutputFunctionCall(&out[k],
												  ((Datum *) lfirst(lc))[k]));
		rows = lappend(rows, row);
	}
	return pg2r_text_array_2d(list_concat(rows, keys_text));
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
	uint64		  rows = pa->acked ? od.pending.rows : od.req.rows;
	Oid			  leaf = pa->acked ? od.pending.leaf : od.req.leaf;
	List *last_key = pa->acked ? od.pending.last_key : od.req.last_key_text;
	Oid	  keyindex = pa->acked ? od.pending.keyindex : od.req.keyindex;
	bool  isnull;

	values[0] = Int64GetDatum(od.req.id);
	values[1] = Int64GetDatum(rows);
	values[2] = ObjectIdGetDatum(leaf);
	nulls[2] = OidIsValid(leaf) ? ' ' : 'n';
	values[3] = last_key != NIL ? pg2r_text_array(last_key) : (Datum) 0;
	nulls[3] = last_key != NIL ? ' ' : 'n';
	values[4] = pa->state ? CStringGetTextDatum(pa->state) : (Datum) 0;
	nulls[4] = pa->state ? ' ' : 'n';
	values[5] = pa->error ? CStringGetTextDatum(pa->error) : (Datum) 0;
	nulls[5] = pa->error ? ' ' : 'n';
	if (pa->acked)
		values[6] = retry_array(od.pending.retry, NIL, od.pending.nkeys,
								od.pending.keytypes, &isnull);
	else
		values[6] = retry_array(od.req.retry, od.req.retry_text, od.req.nkeys,
								od.req.keytypes, &isnull);
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

	if (!pg2r_run_sql(record_progress, &pa, NULL, &err))
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("could not record the end of snapshot request " INT64_FORMAT
						": %s",
						od.req.id, err)));
	ereport(LOG, (errmsg("snapshot request " INT64_FORMAT
						 " %s after " UINT64_FORMAT " rows%s%s",
						 od.req.id, state, od.req.rows, error ? ": " : "",
						 error ? error : "")));
	od.req.active = false;
	chunk_reset();
	od.pending.active = false;
	od.pending.last_key = NIL;
	od.pending.retry = NIL;
	MemoryContextReset(od.cxt);
	od.req.leaves = NIL;
	forget_leaf_progress();
	od.req.keyindex = InvalidOid;
	od.req.keytypes = NULL;
	od.waiting_since = 0;

	/*
	 * Look for the next request at once, as after a wake-up: requests queued
	 * together (pg2redis_redrive() of many keys or partitions) would
	 * otherwise wait for the 10 s poll each once the first 2 s are over.
	 */
	od.last_poll = 0;
	od.requested_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 REQUESTED_WINDOW_MS);
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
 * ask again.  Run by pg2r_run_sql.
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

			foreach(lc, pg2r_text_array_rows(keys))
			{
				List  *row = lfirst(lc);
				uint64 ncmds = strtou64(linitial(row), NULL, 10);

				if (list_length(row) < 2 || !sender_applied_part(lsn, ncmds))
					break;
				last = list_copy_tail(row, 1);
			}
			values[0] = id;
			values[1] = last != NIL ? pg2r_text_array(last) : (Datum) 0;
			nulls[1] = last != NIL ? ' ' : 'n';
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

	if (!pg2r_run_sql(resolve_resumes, NULL, NULL, &err))
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("could not resolve where snapshot requests resume: %s",
						err)));
}

/*
 * load_keys_only sets up a keys-only request (pg2redis_redrive()), in
 * od.cxt, from the row load_request read: its one table, whose keys in
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
	od.req.leaves = NIL;
	od.req.keyindex = isnull ? InvalidOid : DatumGetObjectId(keyindex);
	keys = SPI_getbinval(tup, desc, 6, &isnull);
	if (!isnull)
		od.req.retry_text = pg2r_text_array_rows(DatumGetArrayTypeP(keys));
	if (od.req.retry_text != NIL && get_rel_relkind(relid) == RELKIND_RELATION)
		od.req.leaves = list_make1_oid(relid);
	od.req.leaf_done = true;
	od.req.first_keys = list_length(od.req.retry_text);
	od.req.retry_blind = resumed && od.req.retry_text != NIL;
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

	od.req.id =
		DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									SPI_tuptable->tupdesc, 1, &isnull));
	relation = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
							 &isnull);
	leaves = isnull ? rules_mapped_leaves(InvalidOid)
					: rules_mapped_leaves(DatumGetObjectId(relation));
	current = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3,
							&isnull);
	current_null = isnull;

	old = MemoryContextSwitchTo(od.cxt);
	od.req.leaves = NIL;
	forget_leaf_progress();
	od.req.keyindex = InvalidOid;
	od.req.keytypes = NULL;
	foreach(lc, leaves)
	{
		/* leaves before the one in progress are done */
		if (!isnull && lfirst_oid(lc) < DatumGetObjectId(current))
			continue;
		od.req.leaves = lappend_oid(od.req.leaves, lfirst_oid(lc));
	}
	lastkey = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4,
							&isnull);
	if (!isnull && od.req.leaves != NIL &&
		linitial_oid(od.req.leaves) == DatumGetObjectId(current))
	{
		/* made values of the key's types by the first chunk, as the owner */
		od.req.last_key_text =
			pg2r_text_array_list(DatumGetArrayTypeP(lastkey));
	}
	if (od.req.leaves != NIL && !current_null &&
		linitial_oid(od.req.leaves) == DatumGetObjectId(current))
	{
		Datum keyindex = SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 7, &isnull);
		Datum retry;

		od.req.keyindex = isnull ? InvalidOid : DatumGetObjectId(keyindex);
		retry = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6,
							  &isnull);
		/* made values of the key's types by the first chunk, as the owner */
		if (!isnull)
		{
			od.req.retry_text =
				pg2r_text_array_rows(DatumGetArrayTypeP(retry));
			/* why they were recorded is not: as if no change were known */
			od.req.retry_blind = od.req.retry_text != NIL;
		}
	}
	od.req.keys_only =
		DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
								   SPI_tuptable->tupdesc, 10, &isnull));
	if (od.req.keys_only)
		load_keys_only();
	rows = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5,
						 &isnull);
	od.req.rows = DatumGetInt64(rows);
	od.req.leaf =
		od.req.leaves != NIL ? linitial_oid(od.req.leaves) : InvalidOid;
	od.req.active = true;
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
	od.nonce[hex_encode((const char *) bytes, sizeof(bytes), od.nonce)] = '\0';

	od.cxt = AllocSetContextCreate(TopMemoryContext, "pg2redis snapshots",
								   ALLOCSET_DEFAULT_SIZES);
	od.chunk.cxt =
		AllocSetContextCreate(TopMemoryContext, "pg2redis snapshot chunk",
							  ALLOCSET_DEFAULT_SIZES);
	od.scratch =
		AllocSetContextCreate(TopMemoryContext, "pg2redis snapshot scratch",
							  ALLOCSET_DEFAULT_SIZES);
	memset(&od.req, 0, sizeof(od.req));
	od.ndecoded = 0;
}

/* ondemand_busy: a chunk waits for its high watermark. */
bool
ondemand_busy(void)
{
	return od.chunk.open;
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

	if (od.req.active && od.waiting_since != 0 && !od.chunk.open)
		return SELECT_POLL_MS; /* a chunk waits for guard 1 */
	if (od.req.active || now >= od.requested_until)
		return -1;
	return Max(REQUESTED_POLL_MS -
				   TimestampDifferenceMilliseconds(od.last_poll, now),
			   0);
}

/* chunk_reset forgets the chunk's rows. */
static void
chunk_reset(void)
{
	MemoryContextReset(od.chunk.cxt);
	od.chunk.open = od.chunk.in_window = od.chunk.sent = od.chunk.last = false;
	od.chunk.rows = NULL;
	od.chunk.order = NIL;
	od.chunk.next_key = NULL;
	od.chunk.next_key_text = NIL;
	od.chunk.key.nkeys = 0;
	od.chunk.xip = NULL;
	od.chunk.nsent = 0;
	od.chunk.sent_at = InvalidXLogRecPtr;
	od.chunk.is_retry = false;
	od.chunk.retry_taken = 0;
	od.chunk.key.index = InvalidOid;
}

/*
 * record_acked_progress records the progress of the chunk that waits for
 * Redis (od.pending) once Redis has applied it: a restart before that
 * selects the chunk again instead of skipping it.  With nothing in flight
 * or waiting, the sender has nothing of the chunk left either: its rows may
 * have produced no command at all (conditions, render errors), and then no
 * block carries its fence.  Returns false when recording failed, which
 * fails the request.
 */
static bool
record_acked_progress(void)
{
	char *err = NULL;

	if (od.pending.active &&
		(sender_applied_through(od.pending.sent_at) || sender_idle()))
	{
		ProgressArgs pa = {"running", NULL, true};

		od.pending.active = false;
		if (od.req.leaves != NIL &&
			!pg2r_run_sql(record_progress, &pa, NULL, &err))
		{
			finish_request("failed", err);
			return false;
		}
	}
	return true;
}

/*
 * note_chunk_keys moves the request past the chunk that was sent: the keys
 * it read again leave req.retry, or its last key becomes the request's; and
 * the rows the stream changed while it was open join req.retry.
 */
static void
note_chunk_keys(void)
{
	ListCell *lc;
	int		  nretry = 0;

	if (od.chunk.is_retry)
	{
		/* the keys selected again leave the list; new conflicts join it */
		od.req.retry = list_delete_first_n(od.req.retry, od.chunk.retry_taken);
		/* a keys-only request's own keys are read, not read again */
		if (od.req.first_keys > 0)
			od.req.first_keys -= Min(od.req.first_keys, od.chunk.retry_taken);
		else
			od.req.retry_round++;
	}
	else
	{
		od.req.last_key =
			od.chunk.next_key
				? keyorder_copy_key(&od.chunk.key, od.chunk.next_key)
				: NULL;
		od.req.last_key_text = NIL;
		foreach(lc, od.chunk.next_key_text)
			od.req.last_key_text =
				lappend(od.req.last_key_text, pstrdup(lfirst(lc)));
		od.req.leaf_done = od.chunk.last;
	}
	foreach(lc, od.chunk.order)
	{
		ChunkRow *row = lfirst(lc);

		if (row->removed)
		{
			od.req.retry = lappend(od.req.retry,
								   keyorder_copy_key(&od.chunk.key, row->key));
			nretry++;
			if (!row->changed)
				od.req.retry_blind = true;
		}
	}
	if (nretry > 0)
		ereport(DEBUG1,
				(errmsg_internal("snapshot request " INT64_FORMAT
								 " reads %d rows of \"%s\" again",
								 od.req.id, nretry, od.req.leaf_name)));
}

/*
 * rereads_hopeless tells whether the rows to read again changed in each of
 * RETRY_ROUNDS windows and some of them were read again only because a
 * change in their windows did not say which row it changed (REPLICA
 * IDENTITY NOTHING, a null or unreadable key): the stream may never write
 * them, and leaving them to it would lose them.
 */
static bool
rereads_hopeless(void)
{
	return od.req.retry != NIL && od.req.retry_round >= RETRY_ROUNDS &&
		   od.req.retry_blind;
}

/*
 * leave_rereads_to_stream stops reading again rows that changed in each of
 * RETRY_ROUNDS windows, every change of which the stream applies, with a
 * WARNING; and starts the rounds anew once no row is left to read again.
 */
static void
leave_rereads_to_stream(void)
{
	if (od.req.retry != NIL && od.req.retry_round >= RETRY_ROUNDS)
	{
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("snapshot request " INT64_FORMAT
						" leaves %d rows of \"%s\" to the stream",
						od.req.id, list_length(od.req.retry),
						od.req.leaf_name),
				 errdetail("They changed every time they were read again; the stream applied their changes with the update rules.")));
		od.req.retry = NIL;
	}
	if (od.req.retry == NIL)
	{
		od.req.retry_round = 0;
		od.req.retry_blind = false;
	}
}

/*
 * next_leaf moves the request to its next leaf, once the current one was
 * read to its end and no row of it is left to read again.
 */
static void
next_leaf(void)
{
	od.req.leaves = list_delete_first(od.req.leaves);
	od.req.leaf =
		od.req.leaves != NIL ? linitial_oid(od.req.leaves) : InvalidOid;
	od.req.last_key = NULL;
	od.req.last_key_text = NIL;
	od.req.leaf_done = false;
	od.req.keyindex = InvalidOid;
	od.req.nkeys = 0;
	od.req.keytypes = NULL;
}

/*
 * hold_progress_until_acked keeps the request's progress after the chunk
 * sent at od.chunk.sent_at in od.pending, recorded once Redis has applied
 * the chunk (record_acked_progress), with the keys to read again: the last
 * key moved past them, and only they still lack their snapshot rules.  In
 * od.cxt.
 */
static void
hold_progress_until_acked(void)
{
	ListCell *lc;

	list_free_deep(od.pending.last_key);
	od.pending.last_key = NIL;
	foreach(lc, od.req.last_key_text)
		od.pending.last_key =
			lappend(od.pending.last_key, pstrdup(lfirst(lc)));
	list_free(od.pending.retry);
	od.pending.retry = list_copy(od.req.retry);
	od.pending.keyindex = od.req.keyindex;
	od.pending.nkeys = od.req.nkeys;
	od.pending.keytypes = od.req.keytypes;
	od.pending.rows = od.req.rows;
	od.pending.leaf = od.req.leaf;
	od.pending.sent_at = od.chunk.sent_at;
	od.pending.active = true;
}

/*
 * advance_after_sent_chunk moves the request past the chunk whose rows
 * were sent (od.chunk.sent) and forgets the chunk.  Returns false when the
 * request ended (failed, or done: no leaf left) or waits for Redis to
 * apply its last chunk; true when the next chunk may be opened.
 */
static bool
advance_after_sent_chunk(void)
{
	MemoryContext old = MemoryContextSwitchTo(od.cxt);

	od.req.rows += od.chunk.nsent;
	note_chunk_keys();
	if (rereads_hopeless())
	{
		int	  n = list_length(od.req.retry);
		char *msg;

		MemoryContextSwitchTo(old);
		msg =
			psprintf("could not read %d rows of \"%s\": a change that does not say which row it changed (REPLICA IDENTITY NOTHING, or a key the replica identity does not log) came in each of %d windows; set REPLICA IDENTITY DEFAULT or FULL, or request the snapshot again when the table is quieter",
					 n, od.req.leaf_name, RETRY_ROUNDS);
		chunk_reset();
		finish_request("failed", msg);
		return false;
	}
	leave_rereads_to_stream();
	if (od.req.leaf_done && od.req.retry == NIL)
		next_leaf();
	if (od.chunk.sent_at != InvalidXLogRecPtr)
		hold_progress_until_acked();
	MemoryContextSwitchTo(old);
	chunk_reset();
	if (od.req.leaves == NIL)
	{
		if (!od.pending.active)
			finish_request("done", NULL);
		return false;
	}
	return true;
}

/*
 * poll_for_request loads the oldest pending request when it is time to
 * look (REQUEST_POLL_MS, or REQUESTED_POLL_MS for a while after a request
 * woke the worker) and Redis's position is known, and marks it running.
 * Returns true when a request with something to read is active.
 */
static bool
poll_for_request(void)
{
	TimestampTz now = GetCurrentTimestamp();
	char	   *err = NULL;

	/* a request starts once Redis's position is known */
	if (!sender_ready())
		return false;

	/*
	 * A request wakes us at its commit; the row may not be visible yet when
	 * the flag is seen, so look again for a little while.
	 */
	if (pg2r_take_snapshot_request())
		od.requested_until =
			TimestampTzPlusMilliseconds(now, REQUESTED_WINDOW_MS);
	if (!(now < od.requested_until &&
		  TimestampDifferenceExceeds(od.last_poll, now, REQUESTED_POLL_MS)) &&
		!TimestampDifferenceExceeds(od.last_poll, now, REQUEST_POLL_MS))
		return false;
	od.last_poll = GetCurrentTimestamp();
	if (!pg2r_run_sql(load_request, NULL, NULL, &err))
	{
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("could not read snapshot requests: %s", err)));
		return false;
	}
	if (!od.req.active)
		return false;
	ereport(LOG,
			(errmsg("serving snapshot request " INT64_FORMAT, od.req.id)));
	if (od.req.leaves == NIL)
	{
		finish_request("done", NULL);
		return false;
	}
	{
		ProgressArgs pa = {"running", NULL, false};

		(void) pg2r_run_sql(record_progress, &pa, NULL, &err);
	}
	return true;
}

/*
 * ondemand_step advances snapshot requests between decoding batches:
 * records the progress of a chunk Redis applied, moves the request past a
 * chunk that was sent, looks for a request when none is served, and opens
 * the next chunk (watermarks and selection) when none is open.
 */
void
ondemand_step(void)
{
	if (od.chunk.open)
		return;
	if (!record_acked_progress())
		return;
	/* at most one chunk waits for Redis while the next one is selected */
	if (od.chunk.sent && od.pending.active)
		return;
	/* the request is done once Redis has applied its last chunk */
	if (od.req.active && od.req.leaves == NIL && !od.chunk.sent)
	{
		if (!od.pending.active)
			finish_request("done", NULL);
		return;
	}
	if (od.chunk.sent && !advance_after_sent_chunk())
		return;
	if (!od.req.active && !poll_for_request())
		return;
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
	od.chunk.is_retry = od.req.retry != NIL || od.req.retry_text != NIL;

	/*
	 * Guard 1, before any watermark or query: what is no longer in progress
	 * now, the chunk's snapshot sees, so select_chunk's own check passes.
	 */
	prune_decoded();
	if (od.ndecoded == 0)
	{
		od.chunk_seq++;
		snprintf(od.chunk.low, sizeof(od.chunk.low),
				 "L:" INT64_FORMAT ":" UINT64_FORMAT ":%s", od.req.id,
				 od.chunk_seq, od.nonce);
		snprintf(od.chunk.high, sizeof(od.chunk.high),
				 "H:" INT64_FORMAT ":" UINT64_FORMAT ":%s", od.req.id,
				 od.chunk_seq, od.nonce);
		od.chunk.low_end = write_watermark(od.chunk.low);
		if (!pg2r_run_sql(select_chunk, NULL, &selected, &err))
		{
			chunk_reset();
			finish_request("failed", err);
			return;
		}
	}
	else
		od.waiting_for = od.decoded[0];
	if (selected)
	{
		od.waiting_since = 0;
		od.chunk.high_end = write_watermark(od.chunk.high);
		od.chunk.open = true;
		return;
	}

	chunk_reset();
	now = GetCurrentTimestamp();
	if (od.waiting_since == 0)
		od.waiting_since = now;
	else if (TimestampDifferenceExceeds(od.waiting_since, now, SELECT_WAIT_MS))
	{
		char msg[256];

		snprintf(msg, sizeof(msg),
				 "could not take a snapshot that sees every transaction already streamed: transaction %u stayed in progress for %d s after its commit was streamed (a synchronous replication wait?)",
				 od.waiting_for, SELECT_WAIT_MS / 1000);
		finish_request("failed", msg);
	}
}
