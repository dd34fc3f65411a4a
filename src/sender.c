/*-------------------------------------------------------------------------
 *
 * sender.c
 *	  Decoded transactions to Redis: blocks, the fence, replies, retries.
 *
 * The decoder hands every command of a committed transaction to
 * sender_command(), in commit order.  Commands are written in RESP into a
 * block:
 *
 *		MULTI
 *		<commands of one or more whole transactions>
 *		SET pg2redis:<slot>:lsn <fence>
 *		EXEC
 *
 * so that Redis applies a block, and the fence saying how far the stream
 * got, atomically.  The fence is "<end_lsn>" when the transaction whose
 * commit record ends at end_lsn (and every earlier one) is applied, or
 * "<end_lsn>:<n>" when only its first n commands are: a transaction with
 * more than pg2redis.max_transaction_commands commands is split into
 * several blocks.  After any reconnect or restart the fence is read back,
 * and the decoder skips what Redis already has; decoding is deterministic
 * (same WAL, same rules at the same point of the stream), so command n of a
 * transaction is the same command every time.  That is what applies INCRBY,
 * XADD and PUBLISH exactly once.
 *
 * At most two blocks exist: one in flight (sent, not yet acknowledged) and
 * one being built.  The next block is built while Redis executes the
 * previous one, which keeps both processes busy, but a block is never sent
 * before the previous one's EXEC reply came back.  That keeps ordering
 * simple under failures: if the connection drops, only the block in flight
 * is in doubt, and the fence tells whether Redis applied it; if Redis
 * refuses a command while queueing it (EXECABORT), nothing after it has
 * been sent, so the block can be sent again without it.  When the block
 * being built is full and one is still in flight, the caller (possibly a
 * decoding callback in the middle of a huge transaction) waits here: that
 * is the back-pressure that bounds memory.
 *
 * The connection is a small state machine (down, connecting, handshake,
 * ready) driven by sender_service(), which waits on the latch and the
 * socket with the deadlines of pg2redis.redis_timeout and reconnects with
 * exponential backoff and jitter.  Nothing here blocks without a deadline,
 * and nothing raises an ERROR for a Redis failure.
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
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg2redis/redis_io.h"
#include "pg2redis/sender.h"
#include "pg2redis/settings.h"
#include "pg2redis/state.h"
#include "pg2redis/worker.h"

#define FENCE_DONE PG_UINT64_MAX
#define MAX_DEAD_LETTERS 10000

/* How far the stream got: see the header comment. */
typedef struct Fence
{
	XLogRecPtr lsn;
	uint64	   seq;
} Fence;

/* Where a command of a block came from, for dead letters. */
typedef struct CmdInfo
{
	int64		  rule_id;
	Oid			  relid;
	Pg2rOp		  op;
	TransactionId xid;
	XLogRecPtr	  lsn;
	uint32		  offset; /* of its RESP in the block */
	uint32		  len;
} CmdInfo;

typedef struct Block
{
	StringInfoData resp;
	int			   ncmds;
	int			   cmdcap;
	CmdInfo		  *cmds;
	int			   txn_cmds; /* commands of the open transaction here */
	bool		   closed;
	Fence		   fence;
	int			   ntxns; /* transactions completed in this block */
	uint64		   nchanges;
	TimestampTz	   commit_time; /* of the last completed transaction */
	TimestampTz	   opened_at;
	/* while in flight */
	size_t written;
	int	   replies;		 /* replies received so far */
	bool  *queue_failed; /* per command: refused when queued */
	char **queue_errors;
	bool   any_queue_error;
} Block;

typedef enum LinkState
{
	LINK_DOWN,
	LINK_CONNECTING,
	LINK_HANDSHAKE,
	LINK_READY
} LinkState;

static MemoryContext SenderCxt = NULL;
static MemoryContext DeadCxt = NULL;
static Block		 blocks[2];
static Block		*building = NULL;
static Block		*inflight = NULL;

static struct
{
	LinkState	   state;
	RedisConn	   conn;
	RedisTarget	   target;			 /* for messages: the URL, masked */
	RedisTarget	   connected_target; /* what the connection uses */
	char		  *url; /* settings signature the target is from */
	char		  *fence_key;
	StringInfoData hs; /* handshake bytes to send */
	size_t		   hs_written;
	int			   hs_pending;	/* handshake replies still expected */
	bool		   fence_known; /* read at least once since start */
	Fence		   applied;		/* Redis's fence as last read or set */
	int			   attempts;	/* failed attempts since last success */
	TimestampTz	   next_attempt;
	TimestampTz	   deadline; /* of the current connect or reply */
} rlink;

/* The transaction being decoded. */
static struct
{
	bool		  active;
	bool		  skip; /* wholly applied already */
	TransactionId xid;
	XLogRecPtr	  commit_lsn;
	XLogRecPtr	  end_lsn;
	TimestampTz	  commit_time;
	uint64		  seq;		  /* its commands so far */
	uint64		  skip_until; /* its commands below this are applied */
	uint64		  changes;
} cur;

static bool	  stopped = false;
static List	 *dead_letters = NIL;
static uint64 dead_letters_dropped = 0;

static void link_fail(const char *fmt, ...) pg_attribute_printf(1, 2);
static void wait_for_room(void);

/* ---------------------------------------------------------------------------
 * Fences
 * ---------------------------------------------------------------------------
 */

static int
fence_cmp(Fence a, Fence b)
{
	if (a.lsn != b.lsn)
		return a.lsn < b.lsn ? -1 : 1;
	if (a.seq != b.seq)
		return a.seq < b.seq ? -1 : 1;
	return 0;
}

static char *
fence_format(Fence f, char *buf, size_t len)
{
	if (f.seq == FENCE_DONE)
		snprintf(buf, len, "%X/%X", LSN_FORMAT_ARGS(f.lsn));
	else
		snprintf(buf, len, "%X/%X:" UINT64_FORMAT, LSN_FORMAT_ARGS(f.lsn),
				 f.seq);
	return buf;
}

/* fence_parse reads a fence from Redis; false if malformed. */
static bool
fence_parse(const char *s, Fence *f)
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

/* ---------------------------------------------------------------------------
 * Blocks
 * ---------------------------------------------------------------------------
 */

/* block_reset empties a block for reuse, keeping its buffers. */
static void
block_reset(Block *b)
{
	resetStringInfo(&b->resp);
	b->ncmds = 0;
	b->txn_cmds = 0;
	b->closed = false;
	b->fence.lsn = InvalidXLogRecPtr;
	b->fence.seq = FENCE_DONE;
	b->ntxns = 0;
	b->nchanges = 0;
	b->commit_time = 0;
	b->opened_at = 0;
	b->written = 0;
	b->replies = 0;
	b->any_queue_error = false;
	if (b->queue_failed)
		pfree(b->queue_failed);
	b->queue_failed = NULL;
	if (b->queue_errors)
		pfree(b->queue_errors);
	b->queue_errors = NULL;
	if (b->resp.maxlen > 64 * 1024 * 1024)
	{
		/* do not keep a huge buffer around after a huge transaction */
		MemoryContext old = MemoryContextSwitchTo(SenderCxt);

		pfree(b->resp.data);
		initStringInfo(&b->resp);
		MemoryContextSwitchTo(old);
	}
}

/* sender_init sets up the sender's memory (worker start). */
void
sender_init(void)
{
	MemoryContext old;

	SenderCxt = AllocSetContextCreate(TopMemoryContext, "pg2redis sender",
									  ALLOCSET_DEFAULT_SIZES);
	DeadCxt = AllocSetContextCreate(TopMemoryContext, "pg2redis dead letters",
									ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(SenderCxt);
	for (int i = 0; i < 2; i++)
	{
		memset(&blocks[i], 0, sizeof(Block));
		initStringInfo(&blocks[i].resp);
		block_reset(&blocks[i]);
	}
	building = &blocks[0];
	inflight = NULL;
	redis_conn_init(&rlink.conn);
	rlink.state = LINK_DOWN;
	initStringInfo(&rlink.hs);
	rlink.fence_key = psprintf("pg2redis:%s:lsn", pg2r_slot_name);
	rlink.applied.lsn = InvalidXLogRecPtr;
	rlink.applied.seq = FENCE_DONE;
	MemoryContextSwitchTo(old);
	sender_reconfigure();
}

/* block_open starts a block with MULTI if it is empty. */
static void
block_open(Block *b)
{
	if (b->resp.len > 0)
		return;
	redis_append_cstrings(&b->resp, 1, "MULTI");
	b->opened_at = GetCurrentTimestamp();
}

/* block_close appends the fence and EXEC. */
static void
block_close(Block *b, Fence fence)
{
	char buf[64];

	b->fence = fence;
	redis_append_cstrings(&b->resp, 3, "SET", rlink.fence_key,
						  fence_format(fence, buf, sizeof(buf)));
	redis_append_cstrings(&b->resp, 1, "EXEC");
	b->closed = true;
}

/*
 * push_building closes the block being built (when it holds anything) and
 * hands it over for sending, waiting for the block in flight to be
 * acknowledged first.  fence is where the stream is once it is applied.
 */
static void
push_building(Fence fence)
{
	Block *b = building;

	if (b->ncmds == 0 && b->resp.len == 0)
		return;
	block_close(b, fence);
	wait_for_room();
	inflight = b;
	building = (b == &blocks[0]) ? &blocks[1] : &blocks[0];
	block_reset(building);
	inflight->written = 0;
	inflight->replies = 0;
	rlink.deadline = 0;
	sender_service(0);
}

/* ---------------------------------------------------------------------------
 * The decoder's side
 * ---------------------------------------------------------------------------
 */

/*
 * sender_begin_txn starts a decoded transaction; whether it is skipped
 * depends on the fence Redis holds.
 */
void
sender_begin_txn(TransactionId xid, XLogRecPtr commit_lsn, XLogRecPtr end_lsn,
				 TimestampTz commit_time)
{
	cur.active = true;
	cur.xid = xid;
	cur.commit_lsn = commit_lsn;
	cur.end_lsn = end_lsn;
	cur.commit_time = commit_time;
	cur.seq = 0;
	cur.changes = 0;
	cur.skip = false;
	cur.skip_until = 0;
	if (end_lsn < rlink.applied.lsn ||
		(end_lsn == rlink.applied.lsn && rlink.applied.seq == FENCE_DONE))
		cur.skip = true;
	else if (end_lsn == rlink.applied.lsn)
		cur.skip_until = rlink.applied.seq;
	building->txn_cmds = 0;
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
 * sender_command appends one command of the current transaction, unless
 * Redis has it already; splits the transaction when it outgrows
 * pg2redis.max_transaction_commands.
 */
void
sender_command(void *arg, const Rule *rule, Pg2rOp op, int argc,
			   const char *const *argv, const size_t *argvlen)
{
	Oid		 relid = *(Oid *) arg;
	Block	*b = building;
	CmdInfo *ci;
	uint64	 seq = cur.seq++;

	if (cur.skip || seq < cur.skip_until)
		return;
	if (b->txn_cmds >= pg2r_max_transaction_commands)
	{
		Fence part = {cur.end_lsn, seq};

		push_building(part);
		b = building;
		b->txn_cmds = 0;
	}

	block_open(b);
	if (b->ncmds == b->cmdcap)
	{
		MemoryContext old = MemoryContextSwitchTo(SenderCxt);

		b->cmdcap = b->cmdcap ? b->cmdcap * 2 : 1024;
		b->cmds = b->cmds ? repalloc(b->cmds, sizeof(CmdInfo) * b->cmdcap)
						  : palloc(sizeof(CmdInfo) * b->cmdcap);
		MemoryContextSwitchTo(old);
	}
	ci = &b->cmds[b->ncmds++];
	ci->rule_id = rule->id;
	ci->relid = relid;
	ci->op = op;
	ci->xid = cur.xid;
	ci->lsn = cur.commit_lsn;
	ci->offset = b->resp.len;
	{
		MemoryContext old = MemoryContextSwitchTo(SenderCxt);

		redis_append_command(&b->resp, argc, argv, argvlen);
		MemoryContextSwitchTo(old);
	}
	ci->len = b->resp.len - ci->offset;
	b->txn_cmds++;
}

/* queue_dead_letter keeps a dead letter for the worker to record. */
static void
queue_dead_letter(XLogRecPtr lsn, TransactionId xid, Oid relid, Pg2rOp op,
				  int argc, char **argv, const char *error)
{
	MemoryContext old;
	DeadLetter	 *dl;

	if (list_length(dead_letters) >= MAX_DEAD_LETTERS)
	{
		if (dead_letters_dropped++ == 0)
			ereport(WARNING,
					(errmsg("pg2redis dead letter queue is full; further dead letters are only counted")));
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
	dead_letters = lappend(dead_letters, dl);
	MemoryContextSwitchTo(old);
	pg2r_report_dead_letters(1);
}

/*
 * sender_render_error records a change a rule could not render; the
 * command stored in the dead letter is the rule's template.
 */
void
sender_render_error(void *arg, const Rule *rule, Pg2rOp op,
					const Pg2rError *err)
{
	Oid relid = *(Oid *) arg;

	if (cur.skip)
		return;
	queue_dead_letter(cur.commit_lsn, cur.xid, relid, op, rule->ncommand,
					  rule->command, err->message);
}

/*
 * sender_commit_txn ends the current transaction; the block goes out when
 * it has reached pg2redis.batch_size commands.
 */
void
sender_commit_txn(void)
{
	Block *b = building;

	cur.active = false;
	if (cur.skip)
		return;
	if (b->resp.len > 0)
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
	if (b->ncmds >= pg2r_batch_size)
		push_building(b->fence);
}

/* sender_flush sends the block being built, at a transaction boundary. */
void
sender_flush(void)
{
	if (cur.active || building->resp.len == 0)
		return;
	push_building(building->fence);
}

/* sender_batch_open_longer_than: the block being built is older than ms. */
bool
sender_batch_open_longer_than(int ms)
{
	return building->resp.len > 0 &&
		   TimestampDifferenceExceeds(building->opened_at,
									  GetCurrentTimestamp(), ms);
}

/* sender_ready: connected, and the fence is known. */
bool
sender_ready(void)
{
	return rlink.state == LINK_READY && rlink.fence_known && !stopped;
}

/* sender_idle: nothing built, nothing in flight. */
bool
sender_idle(void)
{
	return inflight == NULL && building->resp.len == 0;
}

/*
 * sender_applied_through tells whether Redis has applied every transaction
 * ending at or before lsn (as far as this process knows).
 */
bool
sender_applied_through(XLogRecPtr lsn)
{
	return rlink.applied.lsn > lsn ||
		   (rlink.applied.lsn == lsn && rlink.applied.seq == FENCE_DONE);
}

/* sender_stopped: a rejected command stopped the stream. */
bool
sender_stopped(void)
{
	return stopped;
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

	queue_dead_letter(ci->lsn, ci->xid, ci->relid, ci->op, argc, argv, error);
	for (int a = 0; a < argc; a++)
		pfree(argv[a]);
	pfree(argv);
	if (pg2r_on_command_error == PG2R_ON_ERROR_STOP && !stopped)
	{
		stopped = true;
		pg2r_report_error("Redis rejected a command of rule " INT64_FORMAT
						  ": %s; the stream stopped (pg2redis.on_command_error = stop)",
						  ci->rule_id, error);
		pg2r_report_state(PG2R_STATE_STOPPED);
	}
}

/*
 * error_code_in tells whether a Redis error's code, its first word (e.g.
 * "MOVED" in "MOVED 3999 127.0.0.1:6381"), is one of codes.
 */
static bool
error_code_in(const char *err, const char *const *codes, size_t ncodes)
{
	size_t len = strcspn(err, " ");

	for (size_t i = 0; i < ncodes; i++)
		if (strlen(codes[i]) == len && strncmp(err, codes[i], len) == 0)
			return true;
	return false;
}

/* Errors only a Redis Cluster node sends: redirections, keys across slots. */
static const char *const cluster_codes[] = {"MOVED", "ASK", "CROSSSLOT",
											"CLUSTERDOWN"};

/* is_transient tells whether a Redis error is worth retrying as is. */
static bool
is_transient(const char *err)
{
	static const char *const codes[] = {"OOM",		 "LOADING",	   "BUSY",
										"READONLY",	 "MASTERDOWN", "TRYAGAIN",
										"NOREPLICAS"};

	return error_code_in(err, codes, lengthof(codes)) ||
		   error_code_in(err, cluster_codes, lengthof(cluster_codes));
}

/*
 * cluster_note returns a remark to append to a Redis error that only a Redis
 * Cluster node sends, or "" for any other error.  The stream cannot go on
 * against such a node: it stops and retries, losing nothing, until the URL is
 * changed.
 */
static const char *
cluster_note(const char *err)
{
	if (error_code_in(err, cluster_codes, lengthof(cluster_codes)))
		return " (pg2redis.redis_url names a Redis Cluster node; Redis "
			   "Cluster is not supported yet, give a standalone server)";
	return "";
}

/*
 * inflight_restart makes the block in flight go out again from its first
 * byte, forgetting the replies of the connection that carried it.
 */
static void
inflight_restart(void)
{
	if (inflight == NULL)
		return;
	inflight->written = 0;
	inflight->replies = 0;
	if (inflight->queue_failed)
	{
		pfree(inflight->queue_failed);
		inflight->queue_failed = NULL;
		pfree(inflight->queue_errors);
		inflight->queue_errors = NULL;
	}
	inflight->any_queue_error = false;
}

/* inflight_acked finishes the block in flight once Redis applied it. */
static void
inflight_acked(void)
{
	Block *b = inflight;

	rlink.applied = b->fence;
	pg2r_report_applied(b->fence.seq == FENCE_DONE ? b->fence.lsn
												   : InvalidXLogRecPtr,
						b->commit_time, b->ntxns, b->ncmds, b->nchanges);
	if (b->fence.seq == FENCE_DONE)
		worker_confirm(b->fence.lsn);
	block_reset(b);
	inflight = NULL;
	rlink.deadline = 0;
}

/*
 * rebuild_without_refused resends the block in flight without the commands
 * Redis refused to queue (they became dead letters).
 */
static void
rebuild_without_refused(void)
{
	Block		  *b = inflight;
	StringInfoData old = b->resp;
	CmdInfo		  *oldcmds = b->cmds;
	int			   n = b->ncmds;
	MemoryContext  ctx = MemoryContextSwitchTo(SenderCxt);
	int			   kept = 0;

	initStringInfo(&b->resp);
	b->cmds = palloc(sizeof(CmdInfo) * Max(b->cmdcap, 1));
	b->ncmds = 0;
	redis_append_cstrings(&b->resp, 1, "MULTI");
	for (int i = 0; i < n; i++)
	{
		if (b->queue_failed[i])
			continue;
		b->cmds[kept] = oldcmds[i];
		b->cmds[kept].offset = b->resp.len;
		appendBinaryStringInfo(&b->resp, old.data + oldcmds[i].offset,
							   oldcmds[i].len);
		kept++;
	}
	b->ncmds = kept;
	MemoryContextSwitchTo(ctx);
	pfree(old.data);
	pfree(oldcmds);
	pfree(b->queue_failed);
	b->queue_failed = NULL;
	pfree(b->queue_errors);
	b->queue_errors = NULL;
	b->any_queue_error = false;
	{
		char buf[64];

		redis_append_cstrings(&b->resp, 3, "SET", rlink.fence_key,
							  fence_format(b->fence, buf, sizeof(buf)));
		redis_append_cstrings(&b->resp, 1, "EXEC");
	}
	b->written = 0;
	b->replies = 0;
}

/*
 * handle_block_reply consumes one reply of the block in flight.  Returns
 * false when the link must be dropped (the error is recorded).
 */
static bool
handle_block_reply(redisReply *r)
{
	Block *b = inflight;
	int	   idx = b->replies++;

	if (idx == 0)
	{
		if (r->type == REDIS_REPLY_ERROR)
		{
			link_fail("Redis refused MULTI: %s", r->str);
			return false;
		}
		return true;
	}
	if (idx <= b->ncmds + 1)
	{
		/* QUEUED, or an error for a command refused while queueing */
		if (r->type == REDIS_REPLY_ERROR)
		{
			if (idx == b->ncmds + 1 || is_transient(r->str))
			{
				link_fail("Redis refused to queue a command: %s%s", r->str,
						  cluster_note(r->str));
				return false;
			}
			if (b->queue_failed == NULL)
			{
				MemoryContext old = MemoryContextSwitchTo(SenderCxt);

				b->queue_failed = palloc0(sizeof(bool) * Max(b->ncmds, 1));
				b->queue_errors = palloc0(sizeof(char *) * Max(b->ncmds, 1));
				MemoryContextSwitchTo(old);
			}
			b->queue_failed[idx - 1] = true;
			b->queue_errors[idx - 1] = MemoryContextStrdup(SenderCxt, r->str);
			b->any_queue_error = true;
		}
		return true;
	}

	/* the EXEC reply */
	if (r->type == REDIS_REPLY_ARRAY && !b->any_queue_error)
	{
		for (size_t i = 0; i < r->elements && (int) i < b->ncmds; i++)
			if (r->element[i]->type == REDIS_REPLY_ERROR)
				dead_letter_cmd(b, i, r->element[i]->str);
		if (r->elements == (size_t) b->ncmds + 1 &&
			r->element[b->ncmds]->type == REDIS_REPLY_ERROR)
		{
			link_fail("Redis refused to record the stream position: %s",
					  r->element[b->ncmds]->str);
			return false;
		}
		inflight_acked();
		return true;
	}
	if (b->any_queue_error)
	{
		/* EXECABORT: nothing of the block was applied */
		for (int i = 0; i < b->ncmds; i++)
			if (b->queue_failed[i])
				dead_letter_cmd(b, i, b->queue_errors[i]);
		if (stopped)
		{
			/* keep the position before the block; it is sent again on resume */
			link_fail("the stream stopped on a rejected command");
			return false;
		}
		rebuild_without_refused();
		return true;
	}
	link_fail("unexpected reply to EXEC: %s%s",
			  r->type == REDIS_REPLY_ERROR ? r->str : "nil",
			  r->type == REDIS_REPLY_ERROR ? cluster_note(r->str) : "");
	return false;
}

/* handle_handshake_reply consumes AUTH, SELECT and GET replies. */
static bool
handle_handshake_reply(redisReply *r)
{
	rlink.hs_pending--;
	if (rlink.hs_pending > 0)
	{
		if (r->type == REDIS_REPLY_ERROR)
		{
			link_fail("Redis refused the connection setup: %s", r->str);
			return false;
		}
		return true;
	}

	/* the last one is GET of the fence */
	if (r->type == REDIS_REPLY_ERROR)
	{
		link_fail("could not read the stream position from Redis: %s%s",
				  r->str, cluster_note(r->str));
		return false;
	}
	if (r->type == REDIS_REPLY_STRING)
	{
		Fence f;

		if (!fence_parse(r->str, &f))
		{
			link_fail("Redis key \"%s\" holds \"%s\", which is not a pg2redis stream position",
					  rlink.fence_key, r->str);
			return false;
		}
		rlink.applied = f;
	}
	else
	{
		rlink.applied.lsn = InvalidXLogRecPtr;
		rlink.applied.seq = FENCE_DONE;
		if (rlink.fence_known || worker_confirmed_lsn() != InvalidXLogRecPtr)
			ereport(LOG,
					(errmsg("pg2redis: Redis has no stream position (key \"%s\"); streaming resumes from the slot's position",
							rlink.fence_key),
					 errhint("If Redis lost its data, run pg2redis_resync() to load every mapped table again, or pg2redis_snapshot() for one table.")));
	}
	rlink.fence_known = true;
	rlink.state = LINK_READY;
	rlink.attempts = 0;
	rlink.deadline = 0;
	pg2r_report_connected(true);
	if (!stopped)
		pg2r_report_state(PG2R_STATE_STREAMING);
	ereport(LOG, (errmsg("pg2redis: connected to Redis at %s",
						 rlink.target.display)));

	/* The block in flight when the link dropped: applied, or sent again. */
	if (inflight)
	{
		if (rlink.applied.lsn != InvalidXLogRecPtr &&
			fence_cmp(inflight->fence, rlink.applied) <= 0)
			inflight_acked();
		else
			inflight_restart();
	}
	return true;
}

/* ---------------------------------------------------------------------------
 * The link
 * ---------------------------------------------------------------------------
 */

/*
 * link_fail drops the connection, records why, and schedules a reconnect
 * after a backoff with jitter.
 */
static void
link_fail(const char *fmt, ...)
{
	char	msg[512];
	va_list ap;
	long	delay;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	redis_close(&rlink.conn);
	rlink.state = LINK_DOWN;
	rlink.hs_pending = 0;
	delay = pg2r_retry_initial_ms;
	for (int i = 0; i < rlink.attempts && delay < pg2r_retry_max_ms; i++)
		delay *= 2;
	delay = Min(delay, pg2r_retry_max_ms);
	delay =
		(long) (delay * (0.5 + 0.5 * pg_prng_double(&pg_global_prng_state)));
	rlink.attempts++;
	rlink.next_attempt =
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay);
	rlink.deadline = 0;
	inflight_restart();
	pg2r_report_connected(false);
	pg2r_report_retry();
	pg2r_report_error("%s", msg);
	if (!stopped)
		pg2r_report_state(PG2R_STATE_REDIS_UNAVAILABLE);
	if (rlink.attempts == 1 || rlink.attempts % 20 == 0)
		ereport(LOG, (errmsg("pg2redis: Redis at %s is unavailable: %s",
							 rlink.target.display, msg),
					  errdetail("Retrying in %ld ms.", delay)));
}

/* link_connect starts connecting, and the handshake once connected. */
static void
link_connect(void)
{
	RedisTarget	 *target = &rlink.connected_target;
	MemoryContext old = MemoryContextSwitchTo(SenderCxt);
	bool		  ok =
		pg2r_redis_target(target, rlink.conn.error, sizeof(rlink.conn.error));

	MemoryContextSwitchTo(old);
	if (!ok)
	{
		link_fail("%s", rlink.conn.error);
		return;
	}
	if (!redis_connect_start(&rlink.conn, target))
	{
		link_fail("%s", rlink.conn.error);
		return;
	}
	rlink.state = LINK_CONNECTING;
	rlink.deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												 pg2r_redis_timeout_ms);
	resetStringInfo(&rlink.hs);
	rlink.hs_written = 0;
	rlink.hs_pending = redis_append_handshake(&rlink.hs, target) + 1;
	redis_append_cstrings(&rlink.hs, 2, "GET", rlink.fence_key);
}

/*
 * sender_reconfigure applies a new pg2redis.redis_url: a changed URL drops
 * the connection and reconnects at once.
 */
void
sender_reconfigure(void)
{
	RedisTarget	  target;
	char		  err[256];
	char		 *signature = pg2r_redis_settings_signature();
	MemoryContext old;

	if (rlink.url && strcmp(rlink.url, signature) == 0)
		return;
	old = MemoryContextSwitchTo(SenderCxt);
	rlink.url = pstrdup(signature);
	if (!pg2r_redis_target(&target, err, sizeof(err)))
	{
		MemoryContextSwitchTo(old);
		pg2r_report_error("%s", err);
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("%s", err),
				 errhint("Fix the pg2redis.redis_* settings and reload the configuration.")));
		/* no valid target: stay down until a reload */
		redis_close(&rlink.conn);
		rlink.state = LINK_DOWN;
		rlink.next_attempt = DT_NOEND;
		return;
	}
	rlink.target = target;
	MemoryContextSwitchTo(old);
	if (rlink.state != LINK_DOWN)
		ereport(LOG,
				(errmsg("pg2redis: Redis settings changed, connecting to %s",
						target.display)));
	redis_close(&rlink.conn);
	rlink.state = LINK_DOWN;
	rlink.attempts = 0;
	rlink.next_attempt = 0;
	pg2r_report_connected(false);
	inflight_restart();
}

/* sender_disconnect closes the connection (worker exit). */
void
sender_disconnect(void)
{
	if (SenderCxt == NULL)
		return;
	redis_close(&rlink.conn);
	rlink.state = LINK_DOWN;
}

/* link_write sends what is pending; false when the link failed. */
static bool
link_write(void)
{
	const char *data;
	size_t		len;
	size_t	   *written;
	ssize_t		n;

	if (rlink.state == LINK_HANDSHAKE &&
		rlink.hs_written < (size_t) rlink.hs.len)
	{
		data = rlink.hs.data;
		len = rlink.hs.len;
		written = &rlink.hs_written;
	}
	else if (rlink.state == LINK_READY && inflight &&
			 inflight->written < (size_t) inflight->resp.len)
	{
		data = inflight->resp.data;
		len = inflight->resp.len;
		written = &inflight->written;
	}
	else
		return true;

	while (*written < len)
	{
		n = redis_send(&rlink.conn, data + *written, len - *written);
		if (n < 0)
		{
			link_fail("%s", rlink.conn.error);
			return false;
		}
		if (n == 0)
			break;
		*written += n;
		rlink.deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 pg2r_redis_timeout_ms);
	}
	return true;
}

/* link_read takes in and handles what Redis sent; false on failure. */
static bool
link_read(void)
{
	bool		eof;
	redisReply *r;
	int			rc;

	if (!redis_receive(&rlink.conn, &eof))
	{
		link_fail("%s", rlink.conn.error);
		return false;
	}
	while ((rc = redis_next_reply(&rlink.conn, &r)) == 1)
	{
		bool ok;

		rlink.deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 pg2r_redis_timeout_ms);
		if (rlink.state == LINK_HANDSHAKE)
			ok = handle_handshake_reply(r);
		else if (rlink.state == LINK_READY && inflight)
			ok = handle_block_reply(r);
		else
		{
			link_fail("unexpected reply from Redis");
			ok = false;
		}
		freeReplyObject(r);
		if (!ok)
			return false;
	}
	if (rc < 0)
	{
		link_fail("%s", rlink.conn.error);
		return false;
	}
	return true;
}

/* awaiting_reply: something was sent that Redis has not answered. */
static bool
awaiting_reply(void)
{
	if (rlink.state == LINK_HANDSHAKE || rlink.state == LINK_CONNECTING)
		return true;
	return rlink.state == LINK_READY && inflight != NULL;
}

/*
 * sender_service does one round of Redis work: connects when due, writes
 * what is pending, reads and handles replies, enforces deadlines.  It
 * waits up to timeout_ms for the socket or the latch first (0: does not
 * wait).  Interrupts are handled by the worker's hook.
 */
void
sender_service(long timeout_ms)
{
	TimestampTz now = GetCurrentTimestamp();
	int			events = WL_LATCH_SET | WL_EXIT_ON_PM_DEATH;
	pgsocket	sock = PGINVALID_SOCKET;
	int			rc = 0;

	worker_handle_interrupts();
	if (stopped)
	{
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(timeout_ms, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		return;
	}

	if (rlink.state == LINK_DOWN && rlink.next_attempt <= now)
		link_connect();

	if (rlink.state != LINK_DOWN)
	{
		sock = rlink.conn.sock;
		events |= WL_SOCKET_READABLE;
		if (rlink.state == LINK_CONNECTING)
			events = (events & ~WL_SOCKET_READABLE) | rlink.conn.want;
		else if ((rlink.state == LINK_HANDSHAKE &&
				  rlink.hs_written < (size_t) rlink.hs.len) ||
				 (rlink.state == LINK_READY && inflight &&
				  inflight->written < (size_t) inflight->resp.len))
			events |= WL_SOCKET_WRITEABLE;
	}

	/* never sleep past a deadline or a reconnect attempt */
	if (rlink.state == LINK_DOWN && rlink.next_attempt != DT_NOEND)
		timeout_ms =
			Min(timeout_ms,
				Max(TimestampDifferenceMilliseconds(now, rlink.next_attempt),
					0));
	if (rlink.deadline != 0 && awaiting_reply())
		timeout_ms =
			Min(timeout_ms,
				Max(TimestampDifferenceMilliseconds(now, rlink.deadline), 0));

	if (timeout_ms > 0 || sock != PGINVALID_SOCKET)
	{
		rc = WaitLatchOrSocket(MyLatch, events | WL_TIMEOUT, sock,
							   Max(timeout_ms, 0), PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
			ResetLatch(MyLatch);
		worker_handle_interrupts();
	}

	if (rlink.state == LINK_CONNECTING &&
		(rc & (WL_SOCKET_WRITEABLE | WL_SOCKET_READABLE)))
	{
		int done = redis_connect_finish(&rlink.conn, &rlink.connected_target);

		if (done < 0)
			link_fail("%s", rlink.conn.error);
		else if (done > 0)
		{
			rlink.state = LINK_HANDSHAKE;
			rlink.deadline =
				TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											pg2r_redis_timeout_ms);
		}
	}
	if (rlink.state == LINK_HANDSHAKE || rlink.state == LINK_READY)
	{
		if (link_write())
			(void) link_read();
		if (rlink.state == LINK_READY)
			(void) link_write();
	}

	if (rlink.state != LINK_DOWN && rlink.deadline != 0 && awaiting_reply() &&
		GetCurrentTimestamp() >= rlink.deadline)
		link_fail(rlink.state == LINK_CONNECTING
					  ? "timed out connecting to Redis"
					  : "timed out waiting for Redis to reply");
}

/*
 * wait_for_room waits until nothing is in flight, serving Redis; called
 * with a closed block that must go next, possibly inside a decoding
 * callback.
 */
static void
wait_for_room(void)
{
	while (inflight != NULL)
		sender_service(1000);
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
 * sender_reset_fence sets the stream position in Redis to 0/0 when a new
 * slot is made (its positions are unrelated to an older slot's), waiting
 * for the reply; false if Redis could not be reached in time.  SET rather
 * than DEL, so that an ACL user needs only SET and GET on the key.
 */
bool
sender_reset_fence(void)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   pg2r_redis_timeout_ms);
	StringInfoData out;
	size_t		   sent = 0;
	redisReply	  *r = NULL;

	while (!sender_ready() || !sender_idle())
	{
		if (GetCurrentTimestamp() >= deadline)
			return false;
		sender_service(100);
	}
	initStringInfo(&out);
	redis_append_cstrings(&out, 3, "SET", rlink.fence_key, "0/0");
	while (r == NULL && GetCurrentTimestamp() < deadline)
	{
		bool eof;
		int	 rc;

		if (sent < (size_t) out.len)
		{
			ssize_t n =
				redis_send(&rlink.conn, out.data + sent, out.len - sent);

			if (n < 0)
				break;
			sent += n;
		}
		(void) WaitLatchOrSocket(MyLatch,
								 WL_SOCKET_READABLE | WL_TIMEOUT |
									 WL_LATCH_SET | WL_EXIT_ON_PM_DEATH,
								 rlink.conn.sock, 100, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (!redis_receive(&rlink.conn, &eof))
			break;
		rc = redis_next_reply(&rlink.conn, &r);
		if (rc < 0)
			break;
	}
	pfree(out.data);
	if (r == NULL || r->type == REDIS_REPLY_ERROR)
	{
		if (r)
			freeReplyObject(r);
		link_fail("could not reset the stream position in Redis");
		return false;
	}
	freeReplyObject(r);
	rlink.applied.lsn = InvalidXLogRecPtr;
	rlink.applied.seq = FENCE_DONE;
	return true;
}
