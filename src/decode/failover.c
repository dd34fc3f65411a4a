/*-------------------------------------------------------------------------
 *
 * failover.c
 *	  Which server and timeline wrote the stream Redis holds, and the sweep
 *	  that follows a reload.
 *
 * Beside the stream position (pg2redis:<slot_name>:lsn, one per hash slot
 * on a Redis Cluster), Redis keeps the stream's origin,
 * pg2redis:<slot_name>:origin = "<system identifier>:<timeline>": the
 * server (GetSystemIdentifier()) and timeline on which the worker made the
 * slot whose stream wrote the data.  It is written once a new slot's
 * initial load (and sweep) is done, before the slot is kept, and when a
 * worker finds none (Redis emptied, or data of a version without origins).
 *
 * A physical standby has its primary's system identifier, a promotion
 * starts a new timeline, and slots are not replicated (see compat.h for
 * 17's failover slots).  So after a failover the new primary's worker
 * finds no slot, and Redis holding the stream of an older timeline.  Its
 * new slot's load writes every row again, but the keys of rows that are
 * gone would linger: rows deleted on the new primary before its slot
 * existed, rows the old primary streamed that never reached the standby.
 * Hence:
 *
 * - A new slot is followed by a sweep when Redis holds an earlier stream
 *   (an origin, or a stream position): after the load, under the same
 *   snapshot and before the stream starts, every key that a mapped table's
 *   key pattern matches and that no row renders is deleted
 *   (verify_sweep(), pg2redis_verify()'s orphan search).  That covers a
 *   failover, and also a slot invalidated, resynced or dropped by hand,
 *   whose missed deletes leave the same orphans.  On a first start Redis
 *   holds no stream: keys already there are left alone, unless
 *   pg2redis.load_sweep = always.  The old origin is replaced only after
 *   the sweep, so a load that dies is swept when it is made again.
 *
 * - A slot found while Redis holds the origin of another system, or of an
 *   older timeline of this one, belongs to a history Redis does not follow
 *   (a server restored from a file-level backup with its slot): it is
 *   dropped and made again, with a sweep.  An origin of a later timeline of
 *   this system means this server is an old primary that a failover left
 *   behind: it must not write its history over the new primary's, so the
 *   worker does not stream until pg2redis_resync() says otherwise.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <inttypes.h>

#include "access/xlog.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "pg2redis/cluster.h"
#include "pg2redis/common.h"
#include "pg2redis/failover.h"
#include "pg2redis/session_redis.h"
#include "pg2redis/settings.h"
#include "pg2redis/verify.h"

#define ORIGIN_KEY_LEN (CLUSTER_FENCE_KEY_LEN + 16)

/* pg2redis.load_sweep */
typedef enum LoadSweep
{
	LOAD_SWEEP_AUTO,
	LOAD_SWEEP_ALWAYS,
	LOAD_SWEEP_NEVER
} LoadSweep;

static int load_sweep = LOAD_SWEEP_AUTO;

static const struct config_enum_entry load_sweep_options[] =
	{{"auto", LOAD_SWEEP_AUTO, false},
	 {"always", LOAD_SWEEP_ALWAYS, false},
	 {"never", LOAD_SWEEP_NEVER, false},
	 {NULL, 0, false}};

/* A stream's origin as Redis keeps it. */
typedef struct Origin
{
	bool	   found;
	uint64	   sysid;
	TimeLineID tli;
} Origin;

/* failover_define_settings defines pg2redis.load_sweep. */
void
failover_define_settings(void)
{
	DefineCustomEnumVariable("pg2redis.load_sweep",
							 "When a new slot's initial load removes the keys no row renders.",
							 "\"auto\": when Redis holds the stream of an earlier slot (after a failover, an invalidated slot, a resync), \"always\": also on a first start, \"never\": never.",
							 &load_sweep, LOAD_SWEEP_AUTO, load_sweep_options,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
}

/* origin_key writes the origin key of the slot into buf, returned. */
static char *
origin_key(char *buf)
{
	snprintf(buf, ORIGIN_KEY_LEN, "pg2redis:%s:origin", pg2r_slot_name);
	return buf;
}

/* this_origin returns this server's origin (not in recovery). */
static Origin
this_origin(void)
{
	Origin o = {true, GetSystemIdentifier(), GetWALInsertionTimeLine()};

	return o;
}

/*
 * origin_text formats an origin for messages; palloc'd.
 */
static char *
origin_text(Origin o)
{
	return psprintf("system %" PRIu64 ", timeline %u", o.sysid, o.tli);
}

/*
 * run_one runs one command (at most 3 arguments) on a Redis session of its
 * own, closed before it returns, and returns the reply's type; *text gets
 * the text of a string or error reply (palloc'd), else NULL.  A connection
 * failure is an ERROR.
 */
static int
run_one(int argc, const char *const *argv, char **text)
{
	MemoryContext old = CurrentMemoryContext;
	MemoryContext cxt =
		AllocSetContextCreate(old, "pg2redis origin", ALLOCSET_SMALL_SIZES);
	RedisSession *s;
	SessionBatch  b;
	size_t		  len[3];
	redisReply	 *r;
	int			  type;

	Assert(argc <= lengthof(len));
	MemoryContextSwitchTo(cxt);
	s = redis_session_open();
	redis_batch_init(&b);
	for (int i = 0; i < argc; i++)
		len[i] = strlen(argv[i]);
	redis_batch_add(&b, argc, argv, len);
	redis_session_run(s, &b);
	r = b.cmds[0].reply;
	type = r->type;
	*text = NULL;
	if (type == REDIS_REPLY_STRING || type == REDIS_REPLY_ERROR)
		*text = MemoryContextAlloc(old, r->len + 1);
	if (*text)
	{
		memcpy(*text, r->str, r->len);
		(*text)[r->len] = '\0';
	}
	redis_batch_reset(&b);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt); /* closes the session */
	return type;
}

/*
 * read_origin reads the origin Redis holds (found false when none, or
 * when Redis refuses the read or holds something else: a WARNING).  A
 * connection failure is an ERROR.
 */
static Origin
read_origin(void)
{
	Origin		 o = {false, 0, 0};
	char		 key[ORIGIN_KEY_LEN];
	const char	*argv[2] = {"GET", origin_key(key)};
	char		*text;
	int			 type = run_one(2, argv, &text);
	uint64		 sysid;
	unsigned int tli;
	int			 n = 0;

	if (type == REDIS_REPLY_STRING &&
		sscanf(text, "%" SCNu64 ":%u%n", &sysid, &tli, &n) == 2 &&
		text[n] == '\0')
	{
		o.found = true;
		o.sysid = sysid;
		o.tli = tli;
	}
	else if (type == REDIS_REPLY_STRING)
		ereport(WARNING,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("key \"%s\" in Redis does not hold a stream origin",
						key),
				 errdetail("It holds \"%.64s\".", text)));
	else if (type == REDIS_REPLY_ERROR)
		ereport(WARNING,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("could not read key \"%s\" from Redis: the stream's origin is not known",
						key),
				 errdetail("Redis said: %s", text),
				 errhint("Grant the Redis user GET and SET on pg2redis:*.")));
	return o;
}

/*
 * write_origin records in Redis that this server and timeline stream (a
 * WARNING when Redis refuses; a connection failure is an ERROR).
 */
static void
write_origin(void)
{
	char		key[ORIGIN_KEY_LEN];
	Origin		o = this_origin();
	char	   *val = psprintf("%" PRIu64 ":%u", o.sysid, o.tli);
	const char *argv[3] = {"SET", origin_key(key), val};
	char	   *text;

	if (run_one(3, argv, &text) == REDIS_REPLY_ERROR)
		ereport(WARNING,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("could not write key \"%s\" to Redis: a failover will not be recognized",
						key),
				 errdetail("Redis said: %s", text),
				 errhint("Grant the Redis user GET and SET on pg2redis:*.")));
}

/*
 * failover_load_needs_sweep tells, before a new slot's load, whether the
 * load is to be followed by a sweep: Redis holds an earlier stream (its
 * origin, or redis_has_position: a stream position, as the sender read
 * it) and pg2redis.load_sweep is auto, or load_sweep is always.  It logs
 * why.
 */
bool
failover_load_needs_sweep(bool redis_has_position)
{
	Origin theirs;
	Origin ours = this_origin();

	if (load_sweep == LOAD_SWEEP_NEVER)
		return false;
	theirs = read_origin();
	if (!theirs.found && !redis_has_position)
	{
		if (load_sweep == LOAD_SWEEP_ALWAYS)
			ereport(LOG,
					(errmsg("the initial load is followed by a sweep (pg2redis.load_sweep = always)")));
		return load_sweep == LOAD_SWEEP_ALWAYS;
	}
	if (!theirs.found)
		ereport(LOG,
				(errmsg("Redis holds the stream of an earlier slot, of unknown origin; the load is followed by a sweep of the keys no row renders")));
	else if (theirs.sysid == ours.sysid && theirs.tli == ours.tli)
		ereport(LOG,
				(errmsg("Redis holds the stream of an earlier slot of this system and timeline (%s); the load is followed by a sweep of the keys no row renders",
						origin_text(theirs))));
	else
		ereport(LOG,
				(errmsg("Redis holds the stream of another server or timeline (%s; this server is %s); the load is followed by a sweep of the keys no row renders",
						origin_text(theirs), origin_text(ours)),
				 errdetail("After a failover, the new primary has no slot: the load writes every row again, and the sweep removes the keys of rows the new primary does not have.")));
	return true;
}

/* A call of verify_sweep, for pg2r_run_guarded. */
typedef struct SweepCall
{
	char *detail;
	int64 swept;
} SweepCall;

/* sweep_call runs verify_sweep with arg (a SweepCall). */
static void
sweep_call(void *arg)
{
	SweepCall *c = arg;

	c->swept = verify_sweep(&c->detail);
}

/*
 * failover_after_load runs, within the load's transaction and snapshot and
 * before the slot is kept, the sweep decided by failover_load_needs_sweep
 * (when the load wrote every table: loaded_all), then records this server
 * as the stream's origin.
 */
void
failover_after_load(bool sweep, bool loaded_all)
{
	if (!loaded_all)
	{
		/*
		 * Redis stalled: snapshots on demand load the rest, and nothing is
		 * asked of Redis here.  The old origin stays: a slot found with
		 * another server's origin is made again (failover_check_slot).
		 */
		if (sweep)
			ereport(WARNING,
					(errcode(ERRCODE_CONNECTION_EXCEPTION),
					 errmsg("the sweep after the initial load was skipped: Redis stalled during the load"),
					 errdetail("Keys of rows that no longer exist may remain in Redis."),
					 errhint("Run pg2redis_verify() once the stream caught up, and delete the orphans it lists.")));
		return;
	}
	if (sweep)
	{
		char	   *detail = NULL;
		TimestampTz start = GetCurrentTimestamp();
		int64		n;
		long		ms;

		SweepCall  call = {NULL, 0};
		ErrorData *edata;

		/*
		 * The load's snapshot: the rows whose keys Redis now has.  A sweep
		 * that fails (Redis refuses SCAN or DEL to its user, Redis gone) is
		 * a WARNING: loading again would not make it pass.
		 */
		PushActiveSnapshot(GetTransactionSnapshot());
		edata = pg2r_run_guarded(sweep_call, &call);
		PopActiveSnapshot();
		detail = call.detail;
		n = call.swept;
		ms = TimestampDifferenceMilliseconds(start, GetCurrentTimestamp());

		if (edata)
			ereport(WARNING,
					(errcode(edata->sqlerrcode),
					 errmsg("the sweep after the initial load failed: %s",
							edata->message),
					 errdetail("Keys of rows that no longer exist may remain in Redis."),
					 errhint("Grant the Redis user SCAN and DEL; run pg2redis_verify() and delete the orphans it lists.")));
		else if (n > 0)
			ereport(LOG,
					(errmsg("the sweep after the initial load removed " INT64_FORMAT
							" keys that no row renders, in %ld ms",
							n, ms),
					 errdetail("Keys removed per table: %s.", detail)));
		else
			ereport(LOG,
					(errmsg("the sweep after the initial load found no key to remove, in %ld ms",
							ms)));
	}
	write_origin();
}

/*
 * failover_check_slot tells what to do with the slot the worker found,
 * given the origin Redis holds (see the file's header); it records this
 * server as the origin when Redis holds none.
 */
SlotVerdict
failover_check_slot(void)
{
	Origin theirs = read_origin();
	Origin ours = this_origin();

	if (!theirs.found)
	{
		write_origin();
		return SLOT_STREAM;
	}
	if (theirs.sysid == ours.sysid && theirs.tli == ours.tli)
		return SLOT_STREAM;
	if (theirs.sysid == ours.sysid && theirs.tli > ours.tli)
	{
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the worker does not stream: Redis holds the stream of a later timeline of this server (%s; this server is %s)",
						origin_text(theirs), origin_text(ours)),
				 errdetail("This server looks like an old primary that a failover left behind; its changes would overwrite the new primary's in Redis."),
				 errhint("Make this server a standby of the new primary.  To make it the source of Redis again, run pg2redis_resync() on it.")));
		return SLOT_SUPERSEDED;
	}
	ereport(WARNING,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("replication slot \"%s\" does not belong to the stream Redis holds (%s; this server is %s)",
					pg2r_slot_name, origin_text(theirs), origin_text(ours)),
			 errdetail("The slot was made on another server or timeline (a server restored with its slot): Redis may hold changes this server does not have."),
			 errhint("The worker drops the slot and loads every mapped table again, with a sweep.")));
	return SLOT_RELOAD;
}
