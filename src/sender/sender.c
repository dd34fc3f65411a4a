/*-------------------------------------------------------------------------
 *
 * sender.c
 *	  Decoded transactions to Redis: blocks, fences, replies, retries.
 *
 * The decoder hands every command of a committed transaction to
 * sender_command(), in commit order.  Commands are collected in a block of
 * one or more whole transactions, which goes to Redis as
 *
 *		MULTI
 *		<the block's commands>
 *		SET <fence key> <fence>
 *		EXEC
 *
 * so that Redis applies the commands, and the fence saying how far the
 * stream got, atomically.  The fence is "<end_lsn>" when the transaction
 * whose commit record ends at end_lsn (and every earlier one) is applied,
 * or "<end_lsn>:<n>" when only its first n commands are: a transaction with
 * more than pg2redis.max_transaction_commands commands is split into
 * several blocks.  After any reconnect or restart the fence is read back,
 * and the decoder skips what Redis already has; decoding is deterministic
 * (same WAL, same rules at the same point of the stream), so command n of a
 * transaction is the same command every time.  That is what applies INCRBY,
 * XADD and PUBLISH exactly once.
 *
 * Redis Cluster (redis-cluster:// URLs) runs a MULTI/EXEC only when all its
 * keys are in one hash slot.  There a block is cut into groups, one per
 * slot it touches, each a MULTI/EXEC of its slot's commands (in commit
 * order) and of the slot's own fence key (src/redis/cluster.c), sent on the link
 * to the primary that serves the slot.  Atomicity and the fence are then per
 * slot: a reader of one key still sees transactions whole and in order,
 * and every slot knows exactly which commands it has.  Multi-key DEL,
 * UNLINK and MSET whose keys span slots are split per slot; other commands
 * whose keys span slots are dead letters.  A standalone server is the same
 * machinery with one group per block and one fence key.
 *
 * At most two blocks exist: one in flight (its EXEC sent, not yet
 * acknowledged) and one being built.  The next block is built while Redis
 * executes the previous one, and its EXEC is never sent before every group
 * of the previous one is acknowledged.  That keeps ordering simple under
 * failures: only the block whose EXEC was sent is ever in doubt, and each
 * group's fence tells whether Redis applied it.  If Redis refuses a command
 * while queueing it (EXECABORT), nothing of its group was applied, so the
 * group is sent again without it.  When the block being built is full and
 * one is still in flight, the caller (possibly a decoding callback in the
 * middle of a huge transaction) waits here: that is the back-pressure that
 * bounds memory.
 *
 * The held EXEC.  On a standalone server (and Sentinel's primary: one link,
 * one group per block), the closed block that waits does not wait idle: its
 * MULTI, commands and fence SET are written on the link right behind the
 * block in flight's output (held_write), and only its EXEC is held back.
 * Redis parses and queues it while the worker reads the block in flight's
 * replies, so that the hand-over between blocks costs Redis one small
 * write and a round trip instead of a whole block's transfer.  Once the
 * block in flight's outcome is known (its EXEC reply, and its WAIT reply
 * when replicas must acknowledge it):
 *	  - applied: it is acknowledged, and the held block becomes the block in
 *		flight by sending EXEC (and WAIT) alone (held_release); its queue's
 *		replies are read as any group's, and a command of it refused while
 *		queueing aborts its EXEC (EXECABORT), handled as always: sending it
 *		anyway costs nothing, while waiting for those replies would cost the
 *		round trip the held EXEC saves;
 *	  - refused while queueing: DISCARD drops the held queue (its replies,
 *		and DISCARD's +OK, are skipped as they come: Link.skip), the block
 *		in flight goes again without the refused commands, and the held
 *		block is queued again behind it (held_discard);
 *	  - the link lost: Redis drops the MULTI with the connection (the next
 *		connection also ends the old one), so the held block is simply not
 *		sent yet (pg2r_inflight_restart);
 *	  - the stream stopped (pg2redis.on_command_error = stop): nothing more
 *		is written; the worker restarts before it streams again;
 *	  - an ERROR left the wait and its caller went on (a rule's, in a
 *		careful decode): the links are dropped with the held queue, since
 *		the held block goes on being built (push_building).
 * When Redis refused the held block's MULTI (an ACL), it ran its commands
 * and fence at once: the fence read after the reconnect says so, and the
 * block is not sent again (push_building).
 * The held block is the block being built, closed: no third buffer.  The
 * link's output pieces (OutSeg) name the block they point into, so that
 * the held block's queue may follow a block in flight not yet fully
 * written.  On a Redis Cluster, where a block is many groups on several
 * links, blocks still go one at a time.
 *
  * Links.  A standalone server has one link; a cluster has a link to each
 * primary (src/sender/links.c: connections, handshakes, the slot map, reconnects).
 * Any failure, and any redirection (MOVED, ASK, TRYAGAIN, CLUSTERDOWN: the
 * topology changed or is changing), drops every link; once they are back
 * and have read the fences of their slots (pg2r_topo_ready, here), the
 * groups of the block in flight that Redis has are done, the others are
 * sent again to whoever serves their slot now.  Nothing here blocks without
 * a deadline, and nothing raises an ERROR for a Redis failure.
 *
 * Failover.  Redis replicates asynchronously, so a write a primary
 * acknowledged can be lost when a replica takes its place.  Fence and
 * commands of a group are one MULTI/EXEC, replicated as a unit, so a
 * promoted replica holds a fence consistent with its data.  To be able to
 * resend what it lacks, a block counts as applied (and the replication slot
 * is confirmed past it) only once WAIT reports the groups replicated to
 * pg2redis.redis_wait_replicas replicas of their primary (in a cluster, or
 * to as many as the map lists, when fewer: pg2r_link_wait_replicas).  A position read
 * back behind the last block acknowledged means Redis lost what it had
 * acknowledged: a WARNING names the range (pg2r_topo_ready).
 *
 * Commands Redis rejects are kept, with where they came from, for the
 * worker to record in pg2redis.dead_letters between decoding batches (or,
 * with pg2redis.on_command_error = stop, the stream stops).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/pg_prng.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg2redis/cluster.h"
#include "pg2redis/commands.h"
#include "pg2redis/compat.h"
#include "pg2redis/keyslot.h"
#include "pg2redis/redis_errors.h"
#include "pg2redis/redis_io.h"
#include "pg2redis/sender.h"
#include "pg2redis/settings.h"
#include "pg2redis/state.h"

#include "sender_int.h"

#define MAX_DEAD_LETTERS 10000


SenderState			 snd;
static MemoryContext DeadCxt = NULL;
static Block		 blocks[2];

/* The transaction being decoded. */
static struct
{
	bool		  active;
	bool		  skip; /* wholly applied already */
	bool		  seen; /* reached Redis before (its errors are recorded) */
	TransactionId xid;
	XLogRecPtr	  commit_lsn;
	XLogRecPtr	  end_lsn;
	TimestampTz	  commit_time;
	uint64		  seq; /* its commands so far */
	uint64		  changes;
	bool		  caller_parts; /* split only by sender_end_part */
} cur;

static List	 *dead_letters = NIL;
static uint64 dead_letters_dropped = 0;

/*
 * The key of the row whose commands are being appended (sender_set_row_key),
 * serialized: the key index's OID, the number of columns, then each
 * column's text with its terminating NUL.  A block keeps one copy per row
 * that has commands in it, and each command the offset of its row's copy,
 * so that a command Redis refuses later still names its row.
 */
static struct
{
	bool		   set;
	StringInfoData ser;
	Block		  *block;  /* the block holding a copy, */
	uint32		   resets; /* its resets then, */
	int32		   off;	   /* and the copy's offset */
} rowkey;

static void dispatch_inflight(void);
static void inflight_check(void);
static bool held_possible(const Block *b);
static void held_write(Block *b);
static void held_forget(void);
static void held_release(void);
static void held_discard(Link *l);
static void held_abandon(void);

/*
 * report_pending publishes the commit time of the oldest transaction decoded
 * and not yet applied (the first one in the block in flight, else in the
 * block being built), or 0 when none waits: pg2redis_status().lag_time.
 */
static void
report_pending(void)
{
	TimestampTz oldest = 0;

	if (snd.inflight != NULL && snd.inflight->ncmds > 0)
		oldest = snd.inflight->first_commit_time;
	else if (snd.building != NULL && snd.building->ncmds > 0)
		oldest = snd.building->first_commit_time;
	pg2r_report_pending(oldest);
}

/* ---------------------------------------------------------------------------
 * Fences
 * ---------------------------------------------------------------------------
 */

/* fence_cmp orders two fences: <0, 0 or >0 as a is before, at or after b. */
static int
fence_cmp(Fence a, Fence b)
{
	if (a.lsn != b.lsn)
		return a.lsn < b.lsn ? -1 : 1;
	if (a.seq != b.seq)
		return a.seq < b.seq ? -1 : 1;
	return 0;
}

/* pg2r_fence_format writes a fence as Redis keeps it into buf, returned. */
char *
pg2r_fence_format(Fence f, char *buf, size_t len)
{
	if (f.seq == FENCE_DONE)
		snprintf(buf, len, "%X/%X", LSN_FORMAT_ARGS(f.lsn));
	else
		snprintf(buf, len, "%X/%X:" UINT64_FORMAT, LSN_FORMAT_ARGS(f.lsn),
				 f.seq);
	return buf;
}

/* pg2r_fence_parse reads a fence from Redis; false if malformed. */
bool
pg2r_fence_parse(const char *s, Fence *f)
{
	unsigned int	   hi, lo;
	unsigned long long seq;
	int				   n = 0;

	if (sscanf(s, "%X/%X%n", &hi, &lo, &n) != 2)
		return false;
	f->lsn = ((uint64) hi << 32) | lo;
	f->seq = FENCE_DONE;
	if (s[n] == '\0')
		return true;
	if (s[n] != ':' || sscanf(s + n + 1, "%llu", &seq) != 1)
		return false;
	f->seq = seq;
	return true;
}

/*
 * fence_covers tells whether a slot whose fence is f has command seq of the
 * transaction ending at end_lsn.
 */
static bool
fence_covers(Fence f, XLogRecPtr end_lsn, uint64 seq)
{
	if (end_lsn != f.lsn)
		return end_lsn < f.lsn;
	return f.seq == FENCE_DONE || seq < f.seq;
}

/* fence_slot returns the index into topo.applied of a group's slot. */
static inline int
fence_slot(int slot)
{
	return slot < 0 ? 0 : slot;
}

/* append_fence_set appends SET <fence key of slot> <fence>. */
static void
append_fence_set(StringInfo buf, int slot, Fence fence)
{
	char key[CLUSTER_FENCE_KEY_LEN];
	char val[64];

	redis_append_cstrings(buf, 3, "SET",
						  cluster_fence_key(key, pg2r_slot_name, slot),
						  pg2r_fence_format(fence, val, sizeof(val)));
}

/* ---------------------------------------------------------------------------
 * Blocks
 * ---------------------------------------------------------------------------
 */

/* block_forget_groups frees what sending a block needed. */
static void
block_forget_groups(Block *b)
{
	if (b->queue_errors)
	{
		for (int i = 0; i < b->ncmds; i++)
			if (b->queue_errors[i])
				pfree(b->queue_errors[i]);
		pfree(b->queue_errors);
	}
	b->queue_errors = NULL;
	if (b->order)
		pfree(b->order);
	b->order = NULL;
	if (b->groups)
		pfree(b->groups);
	b->groups = NULL;
	b->ngroups = 0;
}

/* block_reset empties a block for reuse, keeping its buffers. */
static void
block_reset(Block *b)
{
	block_forget_groups(b);
	resetStringInfo(&b->resp);
	resetStringInfo(&b->keys);
	b->resets++;
	b->ncmds = 0;
	b->txn_cmds = 0;
	b->fence.lsn = InvalidXLogRecPtr;
	b->fence.seq = FENCE_DONE;
	b->reset = false;
	b->ntxns = 0;
	b->nchanges = 0;
	b->commit_time = 0;
	b->first_commit_time = 0;
	b->opened_at = 0;
	if (b->resp.maxlen > 64 * 1024 * 1024)
	{
		/* do not keep a huge buffer around after a huge transaction */
		MemoryContext old = MemoryContextSwitchTo(snd.cxt);

		pfree(b->resp.data);
		initStringInfo(&b->resp);
		MemoryContextSwitchTo(old);
	}
	if (b->keys.maxlen > 64 * 1024 * 1024)
	{
		MemoryContext old = MemoryContextSwitchTo(snd.cxt);

		pfree(b->keys.data);
		initStringInfo(&b->keys);
		MemoryContextSwitchTo(old);
	}
}

/*
 * sender_init sets up the sender's memory and keeps the hooks it calls
 * back through (worker start).
 */
void
sender_init(const SenderHooks *hooks)
{
	MemoryContext old;

	snd.hooks = *hooks;
	snd.cxt = AllocSetContextCreate(TopMemoryContext, "pg2redis sender",
									ALLOCSET_DEFAULT_SIZES);
	DeadCxt = AllocSetContextCreate(TopMemoryContext, "pg2redis dead letters",
									ALLOCSET_DEFAULT_SIZES);
	snd.topo_cxt = AllocSetContextCreate(snd.cxt, "pg2redis Redis links",
										 ALLOCSET_DEFAULT_SIZES);
	snd.map_cxt = AllocSetContextCreate(snd.cxt, "pg2redis Redis Cluster map",
										ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(snd.cxt);
	for (int i = 0; i < 2; i++)
	{
		memset(&blocks[i], 0, sizeof(Block));
		initStringInfo(&blocks[i].resp);
		initStringInfo(&blocks[i].keys);
		block_reset(&blocks[i]);
	}
	initStringInfo(&rowkey.ser);
	rowkey.set = false;
	snd.building = &blocks[0];
	snd.inflight = NULL;
	snd.topo.state = TOPO_INIT;
	for (int li = 0; li < CLUSTER_MAX_NODES; li++)
		pg2r_link_reset(&snd.topo.links[li]);
	pg2r_link_reset(&snd.topo.maplink);
	snd.topo.acked.lsn = InvalidXLogRecPtr;
	snd.topo.acked.seq = FENCE_DONE;
	snd.topo.confirmed = snd.topo.acked;
	/* one fence until the settings say more (an invalid URL says nothing) */
	snd.topo.nfences = 1;
	snd.topo.applied = palloc(sizeof(Fence));
	snd.topo.read = palloc(sizeof(Fence));
	snd.topo.applied[0] = snd.topo.acked;
	snd.topo.read[0] = snd.topo.acked;
	MemoryContextSwitchTo(old);
	sender_reconfigure();
}

/*
 * make_groups cuts a closed block into its groups: one per slot touched
 * (cluster), one in all (standalone), or one per fence (a reset block).
 */
static void
make_groups(Block *b)
{
	static int	  counts[REDIS_CLUSTER_SLOTS + 1];
	MemoryContext old = MemoryContextSwitchTo(snd.cxt);

	b->order = palloc(sizeof(int) * Max(b->ncmds, 1));
	b->queue_errors = palloc0(sizeof(char *) * Max(b->ncmds, 1));
	if (b->reset)
	{
		b->ngroups = snd.topo.cluster ? REDIS_CLUSTER_SLOTS : 1;
		b->groups = palloc0(sizeof(Group) * b->ngroups);
		for (int g = 0; g < b->ngroups; g++)
			b->groups[g].slot = snd.topo.cluster ? g : -1;
	}
	else if (!snd.topo.cluster)
	{
		b->ngroups = 1;
		b->groups = palloc0(sizeof(Group));
		b->groups[0].slot = -1;
		b->groups[0].n = b->ncmds;
		for (int i = 0; i < b->ncmds; i++)
			b->order[i] = i;
	}
	else
	{
		/* a counting sort by slot keeps commit order within each slot */
		int ngroups = 0;
		int g = 0;

		memset(counts, 0, sizeof(counts));
		for (int i = 0; i < b->ncmds; i++)
			if (counts[b->cmds[i].slot + 1]++ == 0)
				ngroups++;
		b->groups = palloc0(sizeof(Group) * ngroups);
		b->ngroups = ngroups;
		for (int s = 0, start = 0; s < REDIS_CLUSTER_SLOTS; s++)
		{
			int n = counts[s + 1];

			if (n == 0)
				continue;
			b->groups[g].slot = s;
			b->groups[g].first = start;
			b->groups[g].n = n;
			counts[s + 1] = start; /* next free position of slot s */
			start += n;
			g++;
		}
		for (int i = 0; i < b->ncmds; i++)
			b->order[counts[b->cmds[i].slot + 1]++] = i;
	}
	MemoryContextSwitchTo(old);
}

/*
 * push_building closes the block being built (when it holds anything) and
 * hands it over for sending, waiting for the block in flight to be
 * acknowledged first.  fence is where the stream is once it is applied.
 */
static void
push_building(Fence fence)
{
	Block *b = snd.building;

	if (b->ncmds == 0 && !b->reset)
		return;
	b->fence = fence;

	/*
	 * Wait for the block in flight to be acknowledged, serving Redis; b is
	 * queued behind it meanwhile whenever that is possible (held_write),
	 * and then becomes the block in flight as the other is acknowledged.
	 * Possibly inside a decoding callback: the back-pressure that bounds
	 * memory.  A stopped stream returns at once, so that the worker's loop
	 * records the dead letters.
	 */
	PG_TRY();
	{
		while (snd.inflight != NULL && snd.inflight != b && !snd.stopped)
		{
			if (held_possible(b))
				held_write(b);
			sender_service(1000);
		}
	}
	PG_CATCH();
	{
		/*
		 * An ERROR left the wait, and its caller may go on: a query cancel
		 * inside a rule of a careful decode is that rule's dead letter
		 * (pg2r_run_guarded).  b stays the block being built, closed, and
		 * gets what is decoded next, so a queue of it held in Redis must
		 * not be released as it is: drop it with the links (Redis drops a
		 * MULTI with its connection), and b goes whole later.
		 */
		if (snd.held == b)
			pg2r_topo_fail(NULL, "an error interrupted the wait for Redis: %s",
						   "the block queued behind the one in flight goes again");

		/*
		 * b was released (it is in flight) before the ERROR, later in the
		 * same service call (an out-of-memory, say): what is decoded next
		 * goes into the other block, as on the way out below, never into
		 * the block in flight.
		 */
		if (snd.inflight == b && snd.building == b)
		{
			snd.building = (b == &blocks[0]) ? &blocks[1] : &blocks[0];
			block_reset(snd.building);
		}
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (snd.stopped && snd.inflight != b)
	{
		/* not sent: decoded again when the stream restarts */
		if (snd.held == b)
			held_abandon();
		block_reset(b);
		return;
	}
	Assert(snd.held == NULL);
	snd.building = (b == &blocks[0]) ? &blocks[1] : &blocks[0];
	block_reset(snd.building);
	if (snd.inflight != b)
	{
		snd.inflight = b;
		if (b->groups == NULL)
			make_groups(b);
		if (snd.topo.state == TOPO_READY)
		{
			/*
			 * Redis may hold b's position already although b's EXEC was
			 * never sent: b was queued behind the previous block (held_write)
			 * and Redis refused its MULTI (an ACL), running its commands and
			 * fence SET at once; the links were dropped and read the fence
			 * again since.  Then b is applied, as pg2r_topo_ready decides
			 * for the block in flight: sending it again would apply it
			 * twice.
			 */
			if (!snd.topo.cluster && !b->reset &&
				fence_cmp(b->fence, snd.topo.applied[0]) <= 0)
			{
				Group *g = &b->groups[0];

				g->fence_only =
					pg2r_link_wait_replicas(&snd.topo.links[0]) > 0;
				g->state = g->fence_only ? GROUP_PENDING : GROUP_DONE;
			}
			dispatch_inflight();
			inflight_check();
		}
	}
	sender_service(0);
}

/* ---------------------------------------------------------------------------
 * The decoder's side
 * ---------------------------------------------------------------------------
 */

/*
 * sender_begin_txn starts a decoded transaction; what of it is skipped
 * depends on the fences Redis holds.
 */
void
sender_begin_txn(TransactionId xid, XLogRecPtr commit_lsn, XLogRecPtr end_lsn,
				 TimestampTz commit_time)
{
	cur.active = true;
	sender_clear_row_key();
	cur.xid = xid;
	cur.commit_lsn = commit_lsn;
	cur.end_lsn = end_lsn;
	cur.commit_time = commit_time;
	cur.seq = 0;
	cur.changes = 0;
	cur.caller_parts = false;
	/* on a cluster, each command is checked against its slot's fence */
	cur.skip = !snd.topo.cluster && (end_lsn < snd.topo.applied[0].lsn ||
									 (end_lsn == snd.topo.applied[0].lsn &&
									  snd.topo.applied[0].seq == FENCE_DONE));
	cur.seen =
		cur.skip || (snd.topo.cluster && snd.topo.read_max.lsn >= end_lsn &&
					 snd.topo.read_max.lsn != InvalidXLogRecPtr);
	snd.building->txn_cmds = 0;
}

/* sender_txn_skipped tells whether Redis already has the transaction. */
bool
sender_txn_skipped(void)
{
	return cur.skip;
}

/* sender_count_change counts a decoded change of a mapped table. */
void
sender_count_change(void)
{
	cur.changes++;
}

/*
 * queue_dead_letter keeps a dead letter for the worker to record; key is
 * its row's key as sender_set_row_key serialized it, or NULL.
 */
static void
queue_dead_letter(XLogRecPtr lsn, TransactionId xid, Oid relid, Pg2rOp op,
				  int argc, char **argv, const char *error, const char *key)
{
	MemoryContext old;
	DeadLetter	 *dl;

	if (list_length(dead_letters) >= MAX_DEAD_LETTERS)
	{
		if (dead_letters_dropped++ == 0)
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("the dead letter queue is full; further dead letters are only counted")));
		pg2r_report_dead_letters(1);
		return;
	}
	old = MemoryContextSwitchTo(DeadCxt);
	dl = palloc(sizeof(DeadLetter));
	dl->lsn = lsn;
	dl->xid = xid;
	dl->relid = relid;
	dl->op = op;
	dl->argc = argc;
	dl->argv = palloc(sizeof(char *) * Max(argc, 1));
	for (int i = 0; i < argc; i++)
		dl->argv[i] = pstrdup(argv[i]);
	dl->error = pstrdup(error);
	dl->keyindex = InvalidOid;
	dl->nkeys = 0;
	dl->key = NULL;
	if (key != NULL)
	{
		const char *p = key + sizeof(Oid) + sizeof(int32);
		int32		n;

		memcpy(&dl->keyindex, key, sizeof(Oid));
		memcpy(&n, key + sizeof(Oid), sizeof(int32));
		dl->nkeys = n;
		dl->key = palloc(sizeof(char *) * Max(n, 1));
		for (int k = 0; k < n; k++)
		{
			dl->key[k] = pstrdup(p);
			p += strlen(p) + 1;
		}
	}
	dead_letters = lappend(dead_letters, dl);
	MemoryContextSwitchTo(old);
	pg2r_report_dead_letters(1);
	pg2r_relstats_count(relid, 0, 0, 1);
}

/* current_row_key returns the serialized key of the current row, or NULL. */
static const char *
current_row_key(void)
{
	return rowkey.set ? rowkey.ser.data : NULL;
}

/*
 * row_key_in returns the offset of the current row's key in block b's keys,
 * copying it there first if the block does not hold it yet; -1 without a
 * current row key.
 */
static int32
row_key_in(Block *b)
{
	MemoryContext old;

	if (!rowkey.set)
		return -1;
	if (rowkey.block == b && rowkey.resets == b->resets)
		return rowkey.off;
	old = MemoryContextSwitchTo(snd.cxt);
	rowkey.off = b->keys.len;
	appendBinaryStringInfo(&b->keys, rowkey.ser.data, rowkey.ser.len);
	MemoryContextSwitchTo(old);
	rowkey.block = b;
	rowkey.resets = b->resets;
	return rowkey.off;
}

/*
 * sender_set_row_key sets the key of the row whose commands and render
 * errors follow (the columns of index keyindex, as text, in its order), so
 * that their dead letters record it; until sender_clear_row_key or the next
 * transaction.
 */
void
sender_set_row_key(Oid keyindex, int nkeys, char **key)
{
	int32 n = nkeys;

	resetStringInfo(&rowkey.ser);
	appendBinaryStringInfo(&rowkey.ser, (char *) &keyindex, sizeof(Oid));
	appendBinaryStringInfo(&rowkey.ser, (char *) &n, sizeof(int32));
	for (int k = 0; k < nkeys; k++)
		appendBinaryStringInfo(&rowkey.ser, key[k], strlen(key[k]) + 1);
	rowkey.set = true;
	rowkey.block = NULL;
}

/* sender_clear_row_key: the commands that follow belong to no known row. */
void
sender_clear_row_key(void)
{
	rowkey.set = false;
	rowkey.block = NULL;
}

/*
 * append_command adds one command for slot to the block being built,
 * unless that slot has it already.
 */
static void
append_command(const Rule *rule, Oid relid, Pg2rOp op, uint64 seq, int slot,
			   int argc, const char *const *argv, const size_t *argvlen)
{
	Block	*b = snd.building;
	CmdInfo *ci;

	if (fence_covers(snd.topo.applied[slot], cur.end_lsn, seq))
		return;
	if (b->ncmds == 0)
		b->opened_at = GetCurrentTimestamp();
	if (b->ncmds == b->cmdcap)
	{
		MemoryContext old = MemoryContextSwitchTo(snd.cxt);

		b->cmdcap = b->cmdcap ? b->cmdcap * 2 : 1024;
		b->cmds = b->cmds ? repalloc(b->cmds, sizeof(CmdInfo) * b->cmdcap)
						  : palloc(sizeof(CmdInfo) * b->cmdcap);
		MemoryContextSwitchTo(old);
	}
	/*
	 * Room first: the command is appended whole or, when memory runs out,
	 * not at all, so that an ERROR here leaves the block as it was (a
	 * careful render turns it into a dead letter, see mapping.c).
	 */
	{
		Size need = 16;

		for (int i = 0; i < argc; i++)
			need += argvlen[i] + 32;
		if (need >= MaxAllocSize - (Size) b->resp.len)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("command of %zu bytes does not fit in a block",
							need),
					 errhint("Lower pg2redis.max_argument_bytes or pg2redis.batch_bytes.")));
		{
			MemoryContext old = MemoryContextSwitchTo(snd.cxt);

			enlargeStringInfo(&b->resp, (int) need);
			MemoryContextSwitchTo(old);
		}
	}
	if (b->ncmds == 0)
		b->first_commit_time = cur.commit_time;
	ci = &b->cmds[b->ncmds++];
	ci->rule_id = rule->id;
	ci->relid = relid;
	ci->op = op;
	ci->xid = cur.xid;
	ci->lsn = cur.commit_lsn;
	ci->slot = slot;
	ci->dropped = false;
	ci->refused = false;
	ci->key_off = row_key_in(b);
	ci->offset = b->resp.len;
	{
		MemoryContext old = MemoryContextSwitchTo(snd.cxt);

		redis_append_command(&b->resp, argc, argv, argvlen);
		MemoryContextSwitchTo(old);
	}
	ci->len = b->resp.len - ci->offset;
}

/*
  * split_by_slot sends a multi-key command whose keys span slots (those
 * whose keys run to the end: DEL, UNLINK, MSET, each key with the arguments
 * after it up to the next key) as one command per slot, keys in their
 * order; false if the command cannot be split that way.
 */
static bool
split_by_slot(const Rule *rule, Oid relid, Pg2rOp op, uint64 seq, int argc,
			  const char *const *argv, const size_t *argvlen)
{
	const RedisCommandDef *def = rule->def;
	const char			 **sargv;
	size_t				  *slen;
	int					  *slots;
	bool				  *done;
	int					   nunits;

	if (def == NULL || def->last_key != -1 ||
		(argc - def->first_key) % def->key_step != 0)
		return false;
	nunits = (argc - def->first_key) / def->key_step;
	sargv = palloc(sizeof(char *) * argc);
	slen = palloc(sizeof(size_t) * argc);
	slots = palloc(sizeof(int) * nunits);
	done = palloc0(sizeof(bool) * nunits);
	for (int u = 0; u < nunits; u++)
	{
		int k = def->first_key + u * def->key_step;

		slots[u] = redis_key_slot(argv[k], argvlen[k]);
	}
	for (int u = 0; u < nunits; u++)
	{
		int n = def->first_key;

		if (done[u])
			continue;
		memcpy(sargv, argv, sizeof(char *) * def->first_key);
		memcpy(slen, argvlen, sizeof(size_t) * def->first_key);
		for (int v = u; v < nunits; v++)
		{
			int k = def->first_key + v * def->key_step;

			if (done[v] || slots[v] != slots[u])
				continue;
			done[v] = true;
			for (int a = 0; a < def->key_step; a++)
			{
				sargv[n] = argv[k + a];
				slen[n++] = argvlen[k + a];
			}
		}
		append_command(rule, relid, op, seq, slots[u], n, sargv, slen);
	}
	pfree(sargv);
	pfree(slen);
	pfree(slots);
	pfree(done);
	return true;
}

/*
 * sender_command appends one command of the current transaction, unless
 * Redis has it already; splits the transaction when it outgrows
 * pg2redis.max_transaction_commands.
 */
void
sender_command(void *arg, const Rule *rule, Pg2rOp op, int argc,
			   const char *const *argv, const size_t *argvlen)
{
	Oid	   relid = *(Oid *) arg;
	uint64 seq = cur.seq++;
	int	   slot = 0;

	if (cur.skip)
		return;
	/* split by count, or by size once this transaction has a command here */
	if (!cur.caller_parts && sender_part_full())
	{
		Fence part = {cur.end_lsn, seq};

		push_building(part);
		snd.building->txn_cmds = 0;
	}
	snd.building->txn_cmds++;

	if (snd.topo.cluster)
	{
		/* every rule (and every snapshot row's rule) carries its command */
		slot = redis_command_def_slot(rule->def, argc, argv, argvlen);
		if (slot == REDIS_SLOT_UNKNOWN && argc > 1)
			slot = redis_key_slot(argv[1], argvlen[1]); /* not expected */
		if (slot == REDIS_SLOT_CROSSSLOT)
		{
			char **copy;

			if (split_by_slot(rule, relid, op, seq, argc, argv, argvlen))
				return;
			if (cur.seen)
				return;
			copy = palloc(sizeof(char *) * argc);
			for (int i = 0; i < argc; i++)
				copy[i] = pnstrdup(argv[i], argvlen[i]);
			queue_dead_letter(cur.commit_lsn, cur.xid, relid, op, argc, copy,
							  "CROSSSLOT the keys of this command hash to different Redis Cluster slots; give them one hash tag, as in {order:1}:items and {order:1}:total",
							  current_row_key());
			for (int i = 0; i < argc; i++)
				pfree(copy[i]);
			pfree(copy);
			return;
		}
		/* a command without a key (PUBLISH) goes with slot 0's fence */
		if (slot < 0)
			slot = 0;
	}
	append_command(rule, relid, op, seq, slot, argc, argv, argvlen);
}

/*
 * sender_render_error records a change a rule could not render; the
 * command stored in the dead letter is the rule's template, the error
 * names the rule and the row's key.
 */
void
sender_render_error(void *arg, const Rule *rule, Pg2rOp op,
					const Pg2rError *err)
{
	Oid relid = *(Oid *) arg;

	char *msg;

	if (cur.seen)
		return;
	msg = psprintf("rule " INT64_FORMAT "%s%s: %s", rule->id,
				   err->key ? ", key " : "", err->key ? err->key : "",
				   err->message);
	queue_dead_letter(cur.commit_lsn, cur.xid, relid, op, rule->ncommand,
					  rule->command, msg, current_row_key());
	pfree(msg);
}

/*
 * sender_change_error records a change of relid that could not be mapped
 * at all (an ERROR outside any one rule, in a careful decode).
 */
void
sender_change_error(Oid relid, Pg2rOp op, const char *message)
{
	if (cur.seen)
		return;
	queue_dead_letter(cur.commit_lsn, cur.xid, relid, op, 0, NULL, message,
					  current_row_key());
}

/*
 * sender_commit_txn ends the current transaction; the block goes out when
 * it has reached pg2redis.batch_size commands.
 */
void
sender_commit_txn(void)
{
	Block *b = snd.building;

	cur.active = false;
	if (cur.skip)
		return;
	if (b->ncmds > 0)
	{
		b->ntxns++;
		b->nchanges += cur.changes;
		b->commit_time = cur.commit_time;
		b->fence.lsn = cur.end_lsn;
		b->fence.seq = FENCE_DONE;
	}
	else if (cur.changes > 0)
		pg2r_report_applied(InvalidXLogRecPtr, cur.commit_time, 1, 0,
							cur.changes);
	b->txn_cmds = 0;
	if (b->ncmds >= pg2r_batch_size || b->resp.len >= pg2r_batch_bytes)
		push_building(b->fence);
	report_pending();
}

/* sender_flush sends the block being built, at a transaction boundary. */
void
sender_flush(void)
{
	if (cur.active || snd.building->ncmds == 0)
		return;
	push_building(snd.building->fence);
}

/*
 * sender_part_full tells whether the current transaction's part in the
 * block being built reached pg2redis.max_transaction_commands or
 * pg2redis.batch_bytes: its next command starts a new part.
 */
bool
sender_part_full(void)
{
	return snd.building->txn_cmds >= pg2r_max_transaction_commands ||
		   (snd.building->txn_cmds > 0 &&
			snd.building->resp.len >= pg2r_batch_bytes);
}

/*
 * sender_caller_parts makes the caller (the initial load) decide where the
 * current transaction is split into atomic parts: sender_command no longer
 * splits it, sender_end_part does.  The caller keeps its parts within the
 * limits (sender_part_full), give or take one row's commands.
 */
void
sender_caller_parts(void)
{
	cur.caller_parts = true;
}

/*
 * sender_end_part ends the current transaction's part in the block being
 * built and hands the block over for sending: Redis applies the part whole
 * or not at all.  The caller waits for the block in flight first (it would
 * be waited for here).
 */
void
sender_end_part(void)
{
	Fence part = {cur.end_lsn, cur.seq};

	if (cur.skip || snd.building->txn_cmds == 0)
		return;
	push_building(part);
	snd.building->txn_cmds = 0;
}

/* sender_inflight: a block is sent and not acknowledged yet. */
bool
sender_inflight(void)
{
	return snd.inflight != NULL && !snd.stopped;
}

/* sender_txn_seq returns how many commands the current transaction has. */
uint64
sender_txn_seq(void)
{
	return cur.seq;
}

/*
 * sender_applied_part tells whether Redis has acknowledged the first ncmds
 * commands of the transaction ending at end_lsn (as this process knows).
 */
bool
sender_applied_part(XLogRecPtr end_lsn, uint64 ncmds)
{
	if (ncmds == 0 || snd.topo.acked.lsn > end_lsn)
		return true;
	return snd.topo.acked.lsn == end_lsn &&
		   (snd.topo.acked.seq == FENCE_DONE || snd.topo.acked.seq >= ncmds);
}

/* sender_batch_open_longer_than: the block being built is older than ms. */
bool
sender_batch_open_longer_than(int ms)
{
	return snd.building->ncmds > 0 &&
		   TimestampDifferenceExceeds(snd.building->opened_at,
									  GetCurrentTimestamp(), ms);
}

/* sender_ready: connected, and the fences are known. */
bool
sender_ready(void)
{
	return snd.topo.state == TOPO_READY && snd.topo.fence_known &&
		   !snd.stopped;
}

/* sender_idle: nothing built, nothing in flight, not stopped. */
bool
sender_idle(void)
{
	/* a stopped stream discards what it decodes: nothing is "applied" */
	return !snd.stopped && snd.inflight == NULL && snd.building->ncmds == 0;
}

/*
 * sender_applied_through tells whether Redis has applied every transaction
 * ending at or before lsn (as far as this process knows).
 */
bool
sender_applied_through(XLogRecPtr lsn)
{
	return snd.topo.acked.lsn > lsn ||
		   (snd.topo.acked.lsn == lsn && snd.topo.acked.seq == FENCE_DONE);
}

/* sender_stopped: a rejected command stopped the stream. */
bool
sender_stopped(void)
{
	return snd.stopped;
}

/* sender_has_dead_letters: dead letters wait to be recorded. */
bool
sender_has_dead_letters(void)
{
	return dead_letters != NIL;
}

/*
 * sender_take_dead_letters hands the queued dead letters to the caller;
 * they stay valid until the next call.
 */
List *
sender_take_dead_letters(void)
{
	static List *taken = NIL;

	taken = dead_letters;
	dead_letters = NIL;
	if (taken == NIL)
		MemoryContextReset(DeadCxt);
	return taken;
}

/* ---------------------------------------------------------------------------
 * Sending a block: groups on links
 * ---------------------------------------------------------------------------
 */

/*
 * pg2r_link_wait_replicas returns how many replicas WAIT asks for on data
 * link l: pg2redis.redis_wait_replicas (by default the older
 * pg2redis.redis_cluster_wait_replicas on a cluster, 0 elsewhere).  In a
 * cluster it is capped by the replicas the slot map lists for the link's
 * primary (the map stops listing a failed one); on a standalone server or
 * behind Sentinel it is not: with fewer replicas connected the stream
 * waits, rather than confirm what a failover could lose.
 */
int
pg2r_link_wait_replicas(const Link *l)
{
	int n = pg2r_redis_wait_replicas;

	if (n < 0) /* the default: the older, cluster-only setting */
		n = snd.topo.cluster ? pg2r_redis_cluster_wait_replicas : 0;
	if (snd.topo.cluster)
		return Min(n, snd.topo.map->nodes[l - snd.topo.links].replicas);
	return n;
}

/*
 * pg2r_append_wait appends WAIT for n replicas, with half of
 * pg2redis.redis_timeout as its timeout (the reply's own deadline is the
 * whole of it).
 */
void
pg2r_append_wait(StringInfo buf, int n)
{
	char nstr[16], ms[16];

	snprintf(nstr, sizeof(nstr), "%d", n);
	snprintf(ms, sizeof(ms), "%d", pg2r_wait_timeout_ms());
	redis_append_cstrings(buf, 3, "WAIT", nstr, ms);
}

/*
 * Runs of the block's RESP shorter than this are copied into the link's
 * own buffer (fewer sends); longer ones are sent from the block itself, so
 * that the block is not held twice.  A standalone server's group is one
 * run, however many commands it has.
 */
#define OUT_COPY_MAX 4096
/* a link's own buffer larger than this is not kept for the next block */
#define OUT_KEEP_MAX (1024 * 1024)

/*
 * out_seg appends a piece to link l's output (OutSeg): len bytes at off of
 * block b's RESP, or of the link's own buffer when b is NULL.
 */
static void
out_seg(Link *l, const Block *b, size_t off, size_t len)
{
	OutSeg *sg;

	if (l->nsegs == l->segcap)
	{
		MemoryContext old = MemoryContextSwitchTo(snd.topo_cxt);

		l->segcap = l->segcap ? 2 * l->segcap : 64;
		l->segs = l->segs ? repalloc(l->segs, sizeof(OutSeg) * l->segcap)
						  : palloc(sizeof(OutSeg) * l->segcap);
		MemoryContextSwitchTo(old);
	}
	sg = &l->segs[l->nsegs++];
	sg->block = b;
	sg->off = off;
	sg->len = len;
}

/* out_own_done makes the bytes appended to l->out so far a piece. */
static void
out_own_done(Link *l)
{
	if ((size_t) l->out.len > l->own_from)
		out_seg(l, NULL, l->own_from, l->out.len - l->own_from);
	l->own_from = l->out.len;
}

/*
 * out_run_done places the run of block bytes collected: copied into l->out
 * when short, else a piece of its own.  Call it before appending to l->out.
 */
static void
out_run_done(Link *l, const Block *b)
{
	if (l->run_len == 0)
		return;
	if (l->run_len < OUT_COPY_MAX)
		appendBinaryStringInfo(&l->out, b->resp.data + l->run_off, l->run_len);
	else
	{
		out_own_done(l);
		out_seg(l, b, l->run_off, l->run_len);
	}
	l->run_len = 0;
}

/* out_block_bytes adds len bytes of block b's RESP at off to l's output. */
static void
out_block_bytes(Link *l, const Block *b, size_t off, size_t len)
{
	if (l->run_len > 0 && l->run_off + l->run_len == off)
	{
		l->run_len += len;
		return;
	}
	out_run_done(l, b);
	l->run_off = off;
	l->run_len = len;
}

/*
 * link_out_reopen readies link l's output for more pieces: what is written
 * already is forgotten, what is not (a held block's queue, or the DISCARD
 * of one) stays ahead of what is appended next.  Call it in topo_cxt.
 */
static void
link_out_reopen(Link *l)
{
	if (l->seg >= l->nsegs)
	{
		if (l->out.maxlen > OUT_KEEP_MAX)
		{
			pfree(l->out.data);
			initStringInfo(&l->out);
		}
		resetStringInfo(&l->out);
		l->nsegs = l->seg = 0;
		l->seg_sent = 0;
	}
	else
	{
		/* keep the own bytes from the first piece not written yet on */
		size_t from = l->out.len;

		for (int i = l->seg; i < l->nsegs; i++)
			if (l->segs[i].block == NULL)
				from = Min(from, l->segs[i].off);
		if (from > 0)
		{
			memmove(l->out.data, l->out.data + from, l->out.len - from);
			l->out.len -= from;
			l->out.data[l->out.len] = '\0';
			for (int i = l->seg; i < l->nsegs; i++)
				if (l->segs[i].block == NULL)
					l->segs[i].off -= from;
		}
		memmove(l->segs, l->segs + l->seg,
				sizeof(OutSeg) * (l->nsegs - l->seg));
		l->nsegs -= l->seg;
		l->seg = 0;
	}
	l->own_from = l->out.len;
	l->run_len = 0;
}

/*
 * link_sent_room makes room in l->sent for n more command indexes.  Call it
 * in topo_cxt.
 */
static void
link_sent_room(Link *l, int n)
{
	if (l->sent != NULL && l->nsent + n <= l->sentcap)
		return;
	l->sentcap = Max(l->nsent + n, 1);
	l->sent = l->sent ? repalloc(l->sent, sizeof(int) * l->sentcap)
					  : palloc(sizeof(int) * l->sentcap);
}

/*
 * link_append_queue appends group g of block b to link l's output up to,
 * not including, its EXEC: MULTI, its commands (sent from the block
 * itself, OutSeg) and the SET of its fence.
 */
static void
link_append_queue(Link *l, Block *b, Group *g)
{
	out_run_done(l, b);
	redis_append_cstrings(&l->out, 1, "MULTI");
	g->sent_first = l->nsent;
	if (!g->fence_only)
		for (int k = 0; k < g->n; k++)
		{
			int		 c = b->order[g->first + k];
			CmdInfo *ci = &b->cmds[c];

			if (ci->dropped)
				continue;
			out_block_bytes(l, b, ci->offset, ci->len);
			l->sent[l->nsent++] = c;
		}
	g->sent_n = l->nsent - g->sent_first;
	out_run_done(l, b);
	append_fence_set(&l->out, g->slot, b->fence);
	g->any_queue_error = false;
}

/*
 * link_build_out sets the output of link li: the pending groups of the
 * block in flight that belong on it, followed by WAIT when replicas must
 * acknowledge them.  Commands are sent from the block itself (OutSeg).
 * Output not written yet (a discarded held block's, see link_pipeline_done)
 * stays ahead of it.
 */
static void
link_build_out(int li)
{
	Link		 *l = &snd.topo.links[li];
	Block		 *b = snd.inflight;
	MemoryContext old = MemoryContextSwitchTo(snd.topo_cxt);

	Assert(snd.held == NULL);
	link_out_reopen(l);
	l->npend = 0;
	l->nsent = 0;
	l->pos = 0;
	l->reply = 0;
	l->wait_sent = false;
	if (l->pend)
		pfree(l->pend);
	l->pend = palloc(sizeof(int) * Max(b->ngroups, 1));
	link_sent_room(l, b->ncmds);
	for (int gi = 0; gi < b->ngroups; gi++)
	{
		Group *g = &b->groups[gi];

		if (g->link != li || g->state != GROUP_PENDING)
			continue;
		link_append_queue(l, b, g);
		redis_append_cstrings(&l->out, 1, "EXEC");
		g->state = GROUP_SENT;
		l->pend[l->npend++] = gi;
	}
	l->wait_n = pg2r_link_wait_replicas(l);
	if (l->npend > 0 && l->wait_n > 0)
	{
		pg2r_append_wait(&l->out, l->wait_n);
		l->wait_sent = true;
	}
	out_run_done(l, b);
	out_own_done(l);
	l->deadline = 0;
	if (l->npend > 0 || l->skip > 0)
		pg2r_link_arm_deadline(l);
	MemoryContextSwitchTo(old);
}

/* ---------------------------------------------------------------------------
 * The held block: the next one queued behind the block in flight
 * ---------------------------------------------------------------------------
 */

/*
 * held_possible tells whether closed block b (the one push_building waits
 * to send) may be queued behind the block in flight now: a standalone
 * server or Sentinel's primary (one link, one group per block), ready,
 * with the block in flight's EXEC on the link, and neither block a reset.
 */
static bool
held_possible(const Block *b)
{
	const Block *n = snd.inflight;

	return snd.held == NULL && n != NULL && n != b && !snd.stopped &&
		   !snd.topo.cluster && snd.topo.nlinks == 1 &&
		   snd.topo.state == TOPO_READY &&
		   snd.topo.links[0].state == LINK_READY && !n->reset && !b->reset &&
		   n->ngroups == 1 &&
		   (n->groups[0].state == GROUP_SENT ||
			n->groups[0].state == GROUP_APPLIED) &&
		   b->ncmds > 0;
}

/*
 * held_write queues block b behind the block in flight: its MULTI,
 * commands and fence go on the link right after the block in flight's
 * output, its EXEC is held back until the block in flight's outcome is
 * known (held_release, held_discard).  Redis parses and queues it
 * meanwhile; nothing of it can be applied without the EXEC.
 */
static void
held_write(Block *b)
{
	Link		 *l = &snd.topo.links[0];
	Group		 *g;
	MemoryContext old;

	if (b->groups == NULL)
		make_groups(b);
	old = MemoryContextSwitchTo(snd.topo_cxt);
	g = &b->groups[0];
	g->link = 0;
	g->fence_only = false;
	link_out_reopen(l);
	link_sent_room(l, b->ncmds);
	link_append_queue(l, b, g);
	out_run_done(l, b);
	out_own_done(l);
	g->state = GROUP_HELD;
	snd.held = b;
	MemoryContextSwitchTo(old);
}

/*
 * held_forget forgets the held block's groups: it is not sent (any more),
 * and goes out whole after the block in flight (push_building).
 */
static void
held_forget(void)
{
	if (snd.held == NULL)
		return;
	block_forget_groups(snd.held);
	snd.held = NULL;
}

/*
 * held_release makes the held block the block in flight, once the previous
 * one is acknowledged: its EXEC (and WAIT) follow its queue on the link.
 * Its queue's replies are read as any group's (pg2r_handle_block_reply): a
 * command refused while queueing aborts its EXEC (EXECABORT), and the
 * group is sent again without it, as always.
 */
static void
held_release(void)
{
	Block		 *b = snd.held;
	Link		 *l = &snd.topo.links[0];
	Group		 *g = &b->groups[0];
	MemoryContext old = MemoryContextSwitchTo(snd.topo_cxt);

	snd.held = NULL;
	snd.inflight = b;
	link_out_reopen(l);
	redis_append_cstrings(&l->out, 1, "EXEC");
	if (l->pend)
		pfree(l->pend);
	l->pend = palloc(sizeof(int));
	l->pend[0] = 0;
	l->npend = 1;
	l->pos = 0;
	l->reply = 0;
	g->state = GROUP_SENT;
	l->wait_n = pg2r_link_wait_replicas(l);
	l->wait_sent = l->wait_n > 0;
	if (l->wait_sent)
		pg2r_append_wait(&l->out, l->wait_n);
	out_own_done(l);
	pg2r_link_arm_deadline(l);
	MemoryContextSwitchTo(old);
	report_pending();
}

/*
 * held_discard drops the held block's queue from Redis with DISCARD: the
 * block in flight was refused while queueing and goes again first.  The
 * replies of the discarded queue and DISCARD's own are skipped as they
 * come (they precede the block in flight's new ones).
 */
static void
held_discard(Link *l)
{
	Group		 *g = &snd.held->groups[0];
	MemoryContext old = MemoryContextSwitchTo(snd.topo_cxt);

	link_out_reopen(l);
	redis_append_cstrings(&l->out, 1, "DISCARD");
	out_own_done(l);
	/* MULTI, the commands, the fence's SET, DISCARD */
	l->skip += g->sent_n + 3;
	MemoryContextSwitchTo(old);
	held_forget();
}

/*
 * held_abandon forgets the held block when the stream stopped on a rejected
 * command: what of its queue is not written yet never will be (nothing is
 * written while stopped, and the worker restarts before streaming again,
 * its connection ending, which discards the queue in Redis).
 */
static void
held_abandon(void)
{
	Link *l = &snd.topo.links[0];

	l->nsegs = l->seg;
	l->seg_sent = 0;
	held_forget();
}

/*
 * dispatch_inflight assigns the pending groups of the block in flight to
 * the links serving their slots and writes every link's output.
 */
static void
dispatch_inflight(void)
{
	Block *b = snd.inflight;

	for (int gi = 0; gi < b->ngroups; gi++)
		if (b->groups[gi].state == GROUP_PENDING)
			b->groups[gi].link =
				snd.topo.cluster ? snd.topo.map->slot_node[b->groups[gi].slot]
								 : 0;
	for (int li = 0; li < snd.topo.nlinks; li++)
		link_build_out(li);
}

/* inflight_acked finishes the block in flight once Redis applied it. */
static void
inflight_acked(void)
{
	Block *b = snd.inflight;

	if (b->reset)
	{
		for (int s = 0; s < snd.topo.nfences; s++)
		{
			snd.topo.applied[s].lsn = InvalidXLogRecPtr;
			snd.topo.applied[s].seq = FENCE_DONE;
		}
		snd.topo.read_max = snd.topo.applied[0];
	}
	else
	{
		for (int i = 0; i < b->ncmds; i++)
			if (!b->cmds[i].dropped && !b->cmds[i].refused)
				pg2r_relstats_count(b->cmds[i].relid, 0, 1, 0);
		pg2r_relstats_publish(GetCurrentTimestamp());
		pg2r_report_applied(b->fence.seq == FENCE_DONE ? b->fence.lsn
													   : InvalidXLogRecPtr,
							b->commit_time, b->ntxns, b->ncmds, b->nchanges);
		if (b->fence.seq == FENCE_DONE)
			snd.hooks.confirm(b->fence.lsn);
	}
	snd.topo.acked = b->fence;
	if (b->reset)
	{
		snd.topo.confirmed.lsn = InvalidXLogRecPtr;
		snd.topo.confirmed.seq = FENCE_DONE;
	}
	else
		snd.topo.confirmed = b->fence;
	snd.topo.redirect_streak = 0;
	block_reset(b);
	snd.inflight = NULL;
	report_pending();
	for (int li = 0; li < snd.topo.nlinks; li++)
		snd.topo.links[li].deadline = 0;
	/* the next block, queued behind this one, goes (not once stopped) */
	if (snd.held != NULL && !snd.stopped)
		held_release();
}

/* inflight_check acknowledges the block in flight when all its groups are. */
static void
inflight_check(void)
{
	if (snd.inflight == NULL)
		return;
	for (int gi = 0; gi < snd.inflight->ngroups; gi++)
		if (snd.inflight->groups[gi].state != GROUP_DONE)
			return;
	inflight_acked();
}

/*
 * pg2r_inflight_restart forgets what the links carried of the block in flight:
 * every group not known applied is pending again (the fences read on the
 * next connect decide).
 */
void
pg2r_inflight_restart(void)
{
	/* a held block's MULTI dies with its connection: it is not sent yet */
	held_forget();
	if (snd.inflight == NULL)
		return;
	for (int gi = 0; gi < snd.inflight->ngroups; gi++)
	{
		snd.inflight->groups[gi].state = GROUP_PENDING;
		snd.inflight->groups[gi].any_queue_error = false;
	}
	for (int c = 0; c < snd.inflight->ncmds; c++)
		if (snd.inflight->queue_errors[c])
		{
			pfree(snd.inflight->queue_errors[c]);
			snd.inflight->queue_errors[c] = NULL;
		}
}

/* ---------------------------------------------------------------------------
 * Replies
 * ---------------------------------------------------------------------------
 */

/*
 * resp_to_argv parses the RESP of one command of a block back into its
 * arguments (palloc'd), for a dead letter.
 */
static char **
resp_to_argv(const char *p, int *argc)
{
	int	   n = (int) strtol(p + 1, NULL, 10);
	char **argv = palloc(sizeof(char *) * Max(n, 1));

	p = strchr(p, '\n') + 1;
	for (int i = 0; i < n; i++)
	{
		long len = strtol(p + 1, NULL, 10);

		p = strchr(p, '\n') + 1;
		argv[i] = pnstrdup(p, len);
		p += len + 2;
	}
	*argc = n;
	return argv;
}

/* dead_letter_cmd records command i of block b as rejected. */
static void
dead_letter_cmd(Block *b, int i, const char *error)
{
	CmdInfo *ci = &b->cmds[i];
	int		 argc;
	char   **argv = resp_to_argv(b->resp.data + ci->offset, &argc);

	queue_dead_letter(ci->lsn, ci->xid, ci->relid, ci->op, argc, argv, error,
					  ci->key_off >= 0 ? b->keys.data + ci->key_off : NULL);
	/* not applied: the relation's statistics count it when the block is */
	ci->refused = true;
	for (int a = 0; a < argc; a++)
		pfree(argv[a]);
	pfree(argv);
	if (pg2r_on_command_error == PG2R_ON_ERROR_STOP && !snd.stopped)
	{
		snd.stopped = true;
		pg2r_report_error("Redis rejected a command of rule " INT64_FORMAT
						  ": %s; the stream stopped (pg2redis.on_command_error = stop)",
						  ci->rule_id, error);
		pg2r_report_state(PG2R_STATE_STOPPED);
	}
}

/*
 * is_transient tells whether a Redis error is worth retrying as is, on the
 * stream's topology (pg2r_error_is_transient).
 */
static bool
is_transient(const char *err)
{
	return pg2r_error_is_transient(err, snd.topo.cluster);
}

/*
 * pg2r_cluster_note returns the remark pg2r_redis_cluster_note gives for err
 * on the stream's topology ("" for none).
 */
const char *
pg2r_cluster_note(const char *err)
{
	return pg2r_redis_cluster_note(err, snd.topo.cluster);
}

/* group_applied records that Redis ran a group's EXEC. */
static void
group_applied(Link *l, Group *g)
{
	snd.topo.applied[fence_slot(g->slot)] = snd.inflight->fence;
	g->state = l->wait_sent ? GROUP_APPLIED : GROUP_DONE;
}

/*
 * link_pipeline_done runs when every reply a link's output asked for came
 * back: groups to send again go out, or the block may be complete.
 */
static void
link_pipeline_done(int li)
{
	Link *l = &snd.topo.links[li];
	bool  again = false;

	l->npend = 0;
	l->deadline = 0;
	for (int gi = 0; gi < snd.inflight->ngroups; gi++)
		if (snd.inflight->groups[gi].link == li &&
			snd.inflight->groups[gi].state == GROUP_PENDING)
			again = true;
	if (again)
	{
		/* refused while queueing: it goes again first, the held one after */
		if (snd.held != NULL)
			held_discard(l);
		link_build_out(li);
	}
	else
		inflight_check();
}

/*
 * handle_exec_reply consumes the EXEC reply of group g.  Returns false when
 * the links must be dropped (the error is recorded).  The link reads compact
 * replies (src/redis/reply_compact.c): of the array's elements, only the errors
 * carry their text; the others carry their type alone.
 */
static bool
handle_exec_reply(Link *l, Group *g, redisReply *r)
{
	Block *b = snd.inflight;

	if (r->type == REDIS_REPLY_ARRAY && !g->any_queue_error)
	{
		for (size_t i = 0; i < r->elements && (int) i < g->sent_n; i++)
			if (r->element[i]->type == REDIS_REPLY_ERROR)
				dead_letter_cmd(b, l->sent[g->sent_first + i],
								r->element[i]->str);
		if (r->elements == (size_t) g->sent_n + 1 &&
			r->element[g->sent_n]->type == REDIS_REPLY_ERROR)
		{
			pg2r_topo_fail(l,
						   "Redis refused to record the stream position: %s",
						   r->element[g->sent_n]->str);
			return false;
		}
		group_applied(l, g);
		return true;
	}
	if (g->any_queue_error)
	{
		/* EXECABORT: nothing of the group was applied */
		for (int k = 0; k < g->sent_n; k++)
		{
			int c = l->sent[g->sent_first + k];

			if (b->queue_errors[c] == NULL)
				continue;
			dead_letter_cmd(b, c, b->queue_errors[c]);
			b->cmds[c].dropped = true;
			pfree(b->queue_errors[c]);
			b->queue_errors[c] = NULL;
		}
		g->any_queue_error = false;
		if (snd.stopped)
		{
			/* keep the position before the block; it is sent again on resume */
			pg2r_topo_fail(l, "the stream stopped on a rejected command");
			return false;
		}
		g->state = GROUP_PENDING; /* sent again without them */
		return true;
	}
	if (r->type == REDIS_REPLY_ERROR)
		pg2r_note_redirect(r->str);
	pg2r_topo_fail(l, "unexpected reply to EXEC: %s%s",
				   r->type == REDIS_REPLY_ERROR ? r->str : "nil",
				   r->type == REDIS_REPLY_ERROR ? pg2r_cluster_note(r->str)
												: "");
	return false;
}

/*
 * pg2r_handle_block_reply consumes one reply on a ready link.  Returns false
 * when the links must be dropped (the error is recorded).
 */
bool
pg2r_handle_block_reply(int li, redisReply *r)
{
	Link  *l = &snd.topo.links[li];
	Block *b = snd.inflight;
	Group *g;
	int	   idx;

	if (l->skip > 0)
	{
		/* of a discarded held block: its queue's and DISCARD's replies */
		l->skip--;
		if (l->skip == 0 && l->pos >= l->npend && !l->wait_sent)
			l->deadline = 0;
		return true;
	}
	if (snd.stopped && (b == NULL || (l->pos >= l->npend && !l->wait_sent)))
	{
		/* the queue of a held block not sent: the stream stopped before */
		return true;
	}
	if (b == NULL || (l->pos >= l->npend && !l->wait_sent))
	{
		pg2r_topo_fail(l, "unexpected reply from Redis");
		return false;
	}
	if (l->pos >= l->npend)
	{
		/* the reply to WAIT */
		long long replicated;

		if (!pg2r_wait_reply_ok(r, l->wait_n, &replicated))
		{
			pg2r_topo_fail(l,
						   "Redis replicated the stream's writes to %lld of the %d replicas asked for within %d ms (pg2redis.redis_wait_replicas)",
						   replicated, l->wait_n, pg2r_wait_timeout_ms());
			return false;
		}
		l->wait_sent = false;
		for (int gi = 0; gi < b->ngroups; gi++)
			if (b->groups[gi].link == li &&
				b->groups[gi].state == GROUP_APPLIED)
				b->groups[gi].state = GROUP_DONE;
		link_pipeline_done(li);
		return true;
	}

	g = &b->groups[l->pend[l->pos]];
	idx = l->reply++;
	if (idx == 0)
	{
		if (r->type == REDIS_REPLY_ERROR)
		{
			pg2r_topo_fail(l, "Redis refused MULTI: %s", r->str);
			return false;
		}
		return true;
	}
	if (idx <= g->sent_n + 1)
	{
		/* QUEUED, or an error for a command refused while queueing */
		if (r->type == REDIS_REPLY_ERROR)
		{
			int c;

			if (idx == g->sent_n + 1 || is_transient(r->str))
			{
				pg2r_note_redirect(r->str);
				pg2r_topo_fail(l, "Redis refused to queue a command: %s%s",
							   r->str, pg2r_cluster_note(r->str));
				return false;
			}
			c = l->sent[g->sent_first + idx - 1];
			if (b->queue_errors[c] == NULL)
				b->queue_errors[c] = MemoryContextStrdup(snd.cxt, r->str);
			g->any_queue_error = true;
		}
		return true;
	}

	/* the EXEC reply ends the group */
	if (!handle_exec_reply(l, g, r))
		return false;
	l->pos++;
	l->reply = 0;
	pg2r_link_arm_deadline(l);
	if (l->pos == l->npend && !l->wait_sent)
		link_pipeline_done(li);
	return true;
}

/* ---------------------------------------------------------------------------
  * The links are back: what Redis has of the block in flight
 * ---------------------------------------------------------------------------
 */

/*
 * pg2r_topo_ready runs once every link has read its fences: the groups of the
 * block in flight that Redis has are done (or, when replicas must
 * acknowledge them, their fence is written again so that WAIT covers it),
 * the others go out again.
 */
void
pg2r_topo_ready(void)
{
	static bool in_doubt[REDIS_CLUSTER_SLOTS];
	int			lost = 0;
	Fence		lost_from = {PG_UINT64_MAX, FENCE_DONE};
	Fence		lost_to = {InvalidXLogRecPtr, 0};

	/*
	 * A held block's queue died with the connection it was written on (any
	 * path that closed it without pg2r_inflight_restart, too): it goes out
	 * after the block in flight, from the start.
	 */
	held_forget();
	memset(in_doubt, 0, sizeof(in_doubt));
	if (snd.inflight)
	{
		for (int gi = 0; gi < snd.inflight->ngroups; gi++)
		{
			Group *g = &snd.inflight->groups[gi];
			Fence  r = snd.topo.read[fence_slot(g->slot)];
			bool   has = snd.inflight->reset
							 ? r.lsn == InvalidXLogRecPtr
							 : fence_cmp(snd.inflight->fence, r) <= 0;
			int li = snd.topo.cluster ? snd.topo.map->slot_node[g->slot] : 0;

			in_doubt[fence_slot(g->slot)] = true;
			g->fence_only =
				has && pg2r_link_wait_replicas(&snd.topo.links[li]) > 0;
			g->state = has && !g->fence_only ? GROUP_DONE : GROUP_PENDING;
		}
	}
	snd.topo.read_max.lsn = InvalidXLogRecPtr;
	snd.topo.read_max.seq = 0;
	for (int s = 0; s < snd.topo.nfences; s++)
	{
		if (fence_cmp(snd.topo.read[s], snd.topo.read_max) > 0)
			snd.topo.read_max = snd.topo.read[s];
		/*
		 * A slot's position went back: writes it acknowledged are gone.  A
		 * slot of the block in flight may be behind what it applied of that
		 * block (not confirmed yet: sent again); on a standalone server it
		 * must not be behind the last block applied and replicated as
		 * asked, whose position the replication slot may be confirmed past.
		 */
		if (snd.topo.fence_known &&
			(!in_doubt[s]
				 ? fence_cmp(snd.topo.read[s], snd.topo.applied[s]) < 0
				 : !snd.topo.cluster &&
					   fence_cmp(snd.topo.read[s], snd.topo.confirmed) < 0))
		{
			Fence to = in_doubt[s] ? snd.topo.confirmed : snd.topo.applied[s];

			lost++;
			if (fence_cmp(snd.topo.read[s], lost_from) < 0)
				lost_from = snd.topo.read[s];
			if (fence_cmp(to, lost_to) > 0)
				lost_to = to;
		}
	}
	if (lost > 0 &&
		(snd.topo.cluster || snd.topo.read[0].lsn != InvalidXLogRecPtr))
	{
		char from[64], to[64];

		pg2r_fence_format(lost_from, from, sizeof(from));
		pg2r_fence_format(lost_to, to, sizeof(to));
		if (snd.topo.cluster)
			ereport(WARNING,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("the Redis Cluster lost writes of %d hash slots that it had acknowledged",
							lost),
					 errdetail("Their stream positions went back, the lowest to %s: changes of transactions ending after %s up to %s may be missing from Redis; the stream goes on from %s.",
							   from, from, to, to),
					 errhint("Run pg2redis_resync() to load every mapped table again, or pg2redis_verify() to list the keys that differ and pg2redis_redrive() to write them again. Set pg2redis.redis_wait_replicas so that a failover cannot lose acknowledged writes.")));
		else
			ereport(WARNING,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("Redis lost writes it had acknowledged: its stream position went back from %s to %s",
							to, from),
					 errdetail("Changes of transactions ending after %s up to %s may be missing from Redis (a failover to a replica that lacked them, or a restart without persistence); the stream goes on from %s.",
							   from, to, to),
					 errhint("Run pg2redis_resync() to load every mapped table again, or pg2redis_verify() to list the keys that differ and pg2redis_redrive() to write them again. Set pg2redis.redis_wait_replicas so that a failover cannot lose acknowledged writes.")));
	}
	else if (!snd.topo.cluster && snd.topo.read[0].lsn == InvalidXLogRecPtr &&
			 (snd.topo.fence_known ||
			  snd.hooks.confirmed_lsn() != InvalidXLogRecPtr))
	{
		char key[CLUSTER_FENCE_KEY_LEN];

		ereport(LOG,
				(errmsg("Redis has no stream position (key \"%s\"); streaming resumes from the slot's position",
						cluster_fence_key(key, pg2r_slot_name, -1)),
				 errhint("If Redis lost its data, run pg2redis_resync() to load every mapped table again, or pg2redis_snapshot() for one table.")));
	}
	memcpy(snd.topo.applied, snd.topo.read, sizeof(Fence) * snd.topo.nfences);
	if (!snd.topo.cluster)
		snd.topo.acked = snd.topo.read[0];
	snd.topo.fence_known = true;
	snd.topo.state = TOPO_READY;
	snd.topo.attempts = 0;
	pg2r_report_connected(true);
	if (!snd.stopped)
		pg2r_report_state(PG2R_STATE_STREAMING);
	if (snd.topo.cluster)
		ereport(LOG, (errmsg("connected to Redis Cluster at %s (%d primaries)",
							 snd.topo.target.display, snd.topo.nlinks)));
	else if (snd.topo.sentinel)
		ereport(LOG,
				(errmsg("connected to Redis primary %s of \"%s\" (Sentinel at %s)",
						snd.topo.links[0].name, snd.topo.target.master_name,
						snd.topo.target.display)));
	else
		ereport(LOG,
				(errmsg("connected to Redis at %s", snd.topo.target.display)));
	if (snd.inflight)
	{
		dispatch_inflight();
		inflight_check();
	}
}

/*
 * sender_set_idle_position notes that everything before lsn is applied or
 * irrelevant to Redis (caught up, nothing pending).
 */
void
sender_set_idle_position(XLogRecPtr lsn)
{
	if (sender_idle())
		pg2r_report_applied(lsn, 0, 0, 0, 0);
}

/*
 * sender_has_position tells whether Redis held a stream position when the
 * links last read it, or has one since: the data of an earlier stream.
 */
bool
sender_has_position(void)
{
	for (int s = 0; s < snd.topo.nfences; s++)
		if (snd.topo.read[s].lsn != InvalidXLogRecPtr ||
			snd.topo.applied[s].lsn != InvalidXLogRecPtr)
			return true;
	return false;
}

/*
 * sender_reset_fence sets every stream position in Redis to 0/0 when a new
 * slot is made (its positions are unrelated to an older slot's), waiting
 * for the replies; false if Redis could not be reached in time.  SET rather
 * than DEL, so that an ACL user needs only SET and GET on the keys.
 */
bool
sender_reset_fence(void)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   pg2r_redis_timeout_ms);

	while (!sender_ready() || !sender_idle())
	{
		if (GetCurrentTimestamp() >= deadline)
			return false;
		sender_service(100);
	}
	snd.building->reset = true;
	push_building(snd.building->fence);
	while (snd.inflight != NULL)
	{
		if (GetCurrentTimestamp() >= deadline)
		{
			pg2r_topo_fail(NULL,
						   "could not reset the stream position in Redis");
			block_reset(snd.inflight);
			snd.inflight = NULL;
			return false;
		}
		sender_service(100);
	}
	return true;
}
