/*-------------------------------------------------------------------------
 *
 * control.c
 *	  SQL functions that talk to the worker or to Redis: status, wait,
 *	  resync, the DROP EXTENSION check, and running one Redis command.
 *
 * It reads the shared state only through state.c, and reaches Redis only
 * through session_redis.c (pg2redis_redis() checks the caller's access to
 * the command here, then runs it there).  Snapshot requests and filters are
 * in snapshot_filters.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xlogrecovery.h"
#include "access/table.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/event_trigger.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "replication/slot.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"

#include "pg2redis/commands.h"
#include "pg2redis/mapping.h"
#include "pg2redis/pgarray.h"
#include "pg2redis/redis_io.h"
#include "pg2redis/relutil.h"
#include "pg2redis/session_redis.h"
#include "pg2redis/settings.h"
#include "pg2redis/snapshot.h"
#include "pg2redis/state.h"

PG_FUNCTION_INFO_V1(pg2redis_status);
PG_FUNCTION_INFO_V1(pg2redis_relation_stats);
PG_FUNCTION_INFO_V1(pg2redis_wait);
PG_FUNCTION_INFO_V1(pg2redis_resync);
PG_FUNCTION_INFO_V1(pg2redis_check_drop);
PG_FUNCTION_INFO_V1(pg2redis_redis);

#define STATUS_COLUMNS 24


/*
 * lag_interval returns the time from since to now as an interval (zero for
 * 0, or for a time in the future: clocks of one server agree).
 */
static Interval *
lag_interval(TimestampTz since)
{
	Interval   *iv = palloc0(sizeof(Interval));
	TimestampTz now = GetCurrentTimestamp();

	if (since != 0 && now > since)
		iv->time = now - since;
	return iv;
}

/*
 * pg2redis_status() returns one row describing the worker, its slot and
 * Redis; the Redis password is masked.
 */
Datum
pg2redis_status(PG_FUNCTION_ARGS)
{
	TupleDesc  desc;
	Datum	   values[STATUS_COLUMNS];
	bool	   nulls[STATUS_COLUMNS] = {0};
	Pg2rShared s;
	XLogRecPtr server_lsn;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	/* a standby inserts no WAL: its position is what it replayed */
	server_lsn = RecoveryInProgress()
					 ? GetXLogReplayRecPtr(NULL)
					 : pg2r_wal_record_start(GetXLogInsertRecPtr());

	pg2r_state_copy(&s);

	values[0] = Int32GetDatum(s.worker_pid);
	nulls[0] = s.worker_pid == 0;
	values[1] = CStringGetTextDatum(pg2r_state_name(s.state));
	values[2] = CStringGetTextDatum(pg2r_slot_name);
	values[3] = CStringGetTextDatum(redis_mask_url(pg2r_redis_url));
	values[4] = BoolGetDatum(s.redis_connected);
	values[5] = LSNGetDatum(s.confirmed_lsn);
	nulls[5] = s.confirmed_lsn == InvalidXLogRecPtr;
	values[6] = LSNGetDatum(server_lsn);
	values[7] =
		Int64GetDatum(s.confirmed_lsn == InvalidXLogRecPtr
						  ? 0
						  : (int64) (server_lsn -
									 Min(server_lsn, s.confirmed_lsn)));
	nulls[7] = s.confirmed_lsn == InvalidXLogRecPtr;
	values[8] = TimestampTzGetDatum(s.last_commit_time);
	nulls[8] = s.last_commit_time == 0;
	values[9] = Int64GetDatum(s.transactions);
	values[10] = Int64GetDatum(s.changes);
	values[11] = Int64GetDatum(s.commands);
	values[12] = Int64GetDatum(s.dead_letters);
	values[13] = Int64GetDatum(s.retries);
	values[14] = CStringGetTextDatum(s.last_error);
	nulls[14] = s.last_error[0] == '\0';
	values[15] = TimestampTzGetDatum(s.last_error_time);
	nulls[15] = s.last_error_time == 0;
	values[16] = LSNGetDatum(s.applied_lsn);
	nulls[16] = s.applied_lsn == InvalidXLogRecPtr;

	/*
	 * lag_time: since the commit of the oldest transaction decoded and not
	 * yet applied; 0 when none waits, unless WAL waits undecoded while the
	 * stream does not run (paused, no worker): then no time is known.
	 */
	if (s.pending_since != 0)
		values[17] = IntervalPGetDatum(lag_interval(s.pending_since));
	else
	{
		values[17] = IntervalPGetDatum(lag_interval(0));
		nulls[17] = (s.state != PG2R_STATE_STREAMING &&
					 s.state != PG2R_STATE_REDIS_UNAVAILABLE) &&
					s.confirmed_lsn != InvalidXLogRecPtr &&
					server_lsn > s.confirmed_lsn;
	}

	/* the initial load: progress, or the totals of the last one */
	if (s.load_started_at == 0)
		for (int c = 18; c < 24; c++)
			nulls[c] = true;
	else
	{
		TimestampTz end = s.load_finished_at != 0 ? s.load_finished_at
												  : GetCurrentTimestamp();
		double		secs = (double) (end - s.load_started_at) / USECS_PER_SEC;
		double		rate = secs > 0 ? (double) s.load_rows / secs : 0;

		values[18] = Int32GetDatum(s.load_tables_total);
		values[19] = Int32GetDatum(s.load_tables_done);
		values[20] = Int64GetDatum((int64) s.load_rows);
		values[21] = Int64GetDatum((int64) s.load_rows_estimate);
		values[22] = Float8GetDatum(rate);
		nulls[22] = secs <= 0;
		if (s.load_finished_at != 0)
			values[23] = IntervalPGetDatum(lag_interval(0));
		else if (rate > 0 && s.load_rows_estimate > s.load_rows)
		{
			Interval *eta = palloc0(sizeof(Interval));

			eta->time =
				(int64) ((double) (s.load_rows_estimate - s.load_rows) / rate *
						 USECS_PER_SEC);
			values[23] = IntervalPGetDatum(eta);
		}
		else
			nulls[23] = true;
	}

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc),
													  values, nulls)));
}

/*
 * pg2redis_relation_stats() returns one row per table the worker handled
 * since the server started: changes decoded, commands applied, dead
 * letters, and when its commands were last applied (relation NULL: tables
 * past the first PG2R_RELSTATS_MAX).
 */
Datum
pg2redis_relation_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ListCell	  *lc;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	foreach(lc, pg2r_relstats_read())
	{
		Pg2rRelStats *e = lfirst(lc);
		Datum		  values[5];
		bool		  nulls[5] = {0};

		values[0] = ObjectIdGetDatum(e->relid);
		nulls[0] = e->relid == InvalidOid;
		values[1] = Int64GetDatum((int64) e->changes);
		values[2] = Int64GetDatum((int64) e->commands);
		values[3] = Int64GetDatum((int64) e->dead_letters);
		values[4] = TimestampTzGetDatum(e->last_applied);
		nulls[4] = e->last_applied == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values,
							 nulls);
	}
	return (Datum) 0;
}

/*
 * pg2redis_wait(timeout) returns true once every transaction committed
 * before the call is applied in Redis, false when timeout passes first.
 */
Datum
pg2redis_wait(PG_FUNCTION_ARGS)
{
	Interval *timeout = PG_GETARG_INTERVAL_P(0);
	int64	  timeout_ms;
	bool	  done;

	timeout_ms =
		(int64) timeout->time / 1000 +
		((int64) timeout->day * 86400 + (int64) timeout->month * 30 * 86400) *
			1000;
	if (timeout_ms < 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("timeout must not be negative")));

	done = pg2r_wait_applied(pg2r_wal_record_start(GetXLogInsertRecPtr()),
							 timeout_ms);
	PG_RETURN_BOOL(done);
}

/*
 * pg2redis_resync() makes the worker drop its Redis position and its slot,
 * recreate the slot and load every mapped table again.
 */
Datum
pg2redis_resync(PG_FUNCTION_ARGS)
{
	if (!pg2r_request_resync())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg2redis worker is not running"),
				 errhint("Check pg2redis_status() and the server log; the worker needs shared_preload_libraries = 'pg2redis' and wal_level = logical.")));
	pg2r_wake_worker();
	PG_RETURN_VOID();
}

/*
 * drops_pg2redis tells whether a DROP statement drops extension pg2redis.
 */
static bool
drops_pg2redis(Node *parsetree)
{
	DropStmt *stmt;
	ListCell *lc;

	if (parsetree == NULL || !IsA(parsetree, DropStmt))
		return false;
	stmt = (DropStmt *) parsetree;
	if (stmt->removeType != OBJECT_EXTENSION)
		return false;
	foreach(lc, stmt->objects)
		if (IsA(lfirst(lc), String) &&
			strcmp(strVal(lfirst(lc)), "pg2redis") == 0)
			return true;
	return false;
}

/*
 * pg2redis_check_drop is the ddl_command_start event trigger of DROP
 * EXTENSION: dropping pg2redis from the database the worker streams, while
 * its slot holds changes committed before the DROP that Redis lacks, waits
 * up to pg2redis.redis_timeout for the stream to apply them, and is refused
 * if it did not.  The decoder reads the rules table as of each decoded
 * transaction; once the table is gone, those changes cannot be mapped.
 * Changes committed while the DROP itself runs are not covered: the worker
 * skips them with a WARNING (rules.c), as it does after a DROP let through
 * with this trigger disabled.
 */
Datum
pg2redis_check_drop(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata;
	ReplicationSlot	 *slot;
	Oid				  slotdb = InvalidOid;
	XLogRecPtr		  confirmed = InvalidXLogRecPtr;
	XLogRecPtr		  target;
	char			 *dbname;
	Pg2rShared		  s;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		elog(ERROR, "pg2redis_check_drop must be called as an event trigger");
	trigdata = (EventTriggerData *) fcinfo->context;
	if (!drops_pg2redis(trigdata->parsetree))
		PG_RETURN_VOID();

	/* only the streamed database has a slot whose changes need the rules */
	dbname = get_database_name(MyDatabaseId);
	if (dbname == NULL || strcmp(dbname, pg2r_database) != 0)
		PG_RETURN_VOID();
	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	slot = SearchNamedReplicationSlot(pg2r_slot_name, false);
	if (slot != NULL)
	{
		SpinLockAcquire(&slot->mutex);
		slotdb = slot->data.database;
		confirmed = slot->data.confirmed_flush;
		SpinLockRelease(&slot->mutex);
	}
	LWLockRelease(ReplicationSlotControlLock);
	if (slot == NULL || slotdb != MyDatabaseId)
		PG_RETURN_VOID();

	target = pg2r_wal_record_start(GetXLogInsertRecPtr());
	if (confirmed >= target ||
		pg2r_wait_applied(target, pg2r_redis_timeout_ms))
		PG_RETURN_VOID();

	pg2r_state_copy(&s);
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot drop extension pg2redis while Redis lacks changes committed before it"),
			 errdetail("The stream has applied changes up to %X/%X, not up to %X/%X, within %d ms; the worker is %s.",
					   LSN_FORMAT_ARGS(Max(s.applied_lsn, confirmed)),
					   LSN_FORMAT_ARGS(target), pg2r_redis_timeout_ms,
					   pg2r_state_name(s.state)),
			 errhint("Let the stream catch up (SELECT pg2redis_wait()) and drop the extension again. To drop it without sending those changes, run ALTER EVENT TRIGGER pg2redis_check_drop DISABLE first.")));
	PG_RETURN_VOID();
}

/* What a caller of pg2redis_redis() must be to run a command. */
typedef enum RedisAccess
{
	REDIS_ACCESS_READ,		/* read-only: any role that may execute it */
	REDIS_ACCESS_WRITE,		/* data: members of pg2redis_admin */
	REDIS_ACCESS_SUPERUSER, /* server-level or unknown: superusers */
} RedisAccess;

/*
 * Read-only commands: they change nothing and cannot store a result
 * (ZRANGE has no STORE form; ZRANGESTORE, SORT and GEORADIUS are left out),
 * and none is slow enough to stall the server by design (no KEYS).
 */
static const char *const read_commands[] = {
	"BITCOUNT",	   "BITPOS",		 "DBSIZE",
	"ECHO",		   "EXISTS",		 "GET",
	"GETBIT",	   "GETRANGE",		 "HEXISTS",
	"HGET",		   "HGETALL",		 "HKEYS",
	"HLEN",		   "HMGET",			 "HSCAN",
	"HSTRLEN",	   "HVALS",			 "JSON.ARRLEN",
	"JSON.GET",	   "JSON.MGET",		 "JSON.OBJKEYS",
	"JSON.OBJLEN", "JSON.STRLEN",	 "JSON.TYPE",
	"LINDEX",	   "LLEN",			 "LPOS",
	"LRANGE",	   "MGET",			 "PING",
	"PTTL",		   "SCAN",			 "SCARD",
	"SISMEMBER",   "SMEMBERS",		 "SMISMEMBER",
	"SSCAN",	   "STRLEN",		 "TTL",
	"TYPE",		   "XLEN",			 "XRANGE",
	"XREVRANGE",   "ZCARD",			 "ZCOUNT",
	"ZLEXCOUNT",   "ZMSCORE",		 "ZRANGE",
	"ZRANGEBYLEX", "ZRANGEBYSCORE",	 "ZRANK",
	"ZREVRANGE",   "ZREVRANGEBYLEX", "ZREVRANGEBYSCORE",
	"ZREVRANK",	   "ZSCAN",			 "ZSCORE",
};

/*
 * Data commands beyond those rules may send (src/redis/commands.c), with their
 * keys as in RedisCommandDef, so that every key written can be checked.
 */
static const RedisCommandDef write_commands[] = {
	/* name, min args, first key, last key, key step */
	{"GETDEL", 2, 1, 1, 1},			{"GETSET", 3, 1, 1, 1},
	{"JSON.ARRAPPEND", 4, 1, 1, 1}, {"JSON.NUMINCRBY", 4, 1, 1, 1},
	{"LINSERT", 5, 1, 1, 1},		{"LPOP", 2, 1, 1, 1},
	{"LSET", 4, 1, 1, 1},			{"RENAME", 3, 1, 2, 1},
	{"RENAMENX", 3, 1, 2, 1},		{"RPOP", 2, 1, 1, 1},
	{"SMOVE", 4, 1, 2, 1},			{"SPOP", 2, 1, 1, 1},
	{"ZPOPMAX", 2, 1, 1, 1},		{"ZPOPMIN", 2, 1, 1, 1},
	{"ZREMRANGEBYLEX", 4, 1, 1, 1}, {"ZREMRANGEBYRANK", 4, 1, 1, 1},
};


/*
 * redis_access returns what a caller must be to run the command named
 * name, and for a data command its key positions in *def.
 */
static RedisAccess
redis_access(const char *name, const RedisCommandDef **def)
{
	*def = NULL;
	for (size_t i = 0; i < lengthof(read_commands); i++)
		if (pg_strcasecmp(name, read_commands[i]) == 0)
			return REDIS_ACCESS_READ;
	*def = redis_command_lookup(name);
	if (*def != NULL)
		return REDIS_ACCESS_WRITE;
	for (size_t i = 0; i < lengthof(write_commands); i++)
		if (pg_strcasecmp(name, write_commands[i].name) == 0)
		{
			*def = &write_commands[i];
			return REDIS_ACCESS_WRITE;
		}
	return REDIS_ACCESS_SUPERUSER;
}

/*
 * check_redis_access raises an ERROR unless the current user may run the
 * command argv[0..argc-1]: superusers may run any; members of
 * pg2redis_admin data commands that write no key of pg2redis's own; other
 * roles read-only commands.  Decided before any connection.
 */
static void
check_redis_access(int argc, char **argv)
{
	const RedisCommandDef *def;
	RedisAccess			   access;
	Oid					   admin;
	int					   last;

	if (superuser())
		return;
	access = redis_access(argv[0], &def);
	if (access == REDIS_ACCESS_READ)
	{
		/* a SCAN over the whole keyspace at once blocks Redis like KEYS */
		bool scan = pg_strcasecmp(argv[0], "SCAN") == 0 ||
					pg_strcasecmp(argv[0], "HSCAN") == 0 ||
					pg_strcasecmp(argv[0], "SSCAN") == 0 ||
					pg_strcasecmp(argv[0], "ZSCAN") == 0;

		for (int i = 1; scan && i + 1 < argc; i++)
			if (pg_strcasecmp(argv[i], "COUNT") == 0 &&
				(strspn(argv[i + 1], "0123456789") != strlen(argv[i + 1]) ||
				 strlen(argv[i + 1]) > 5 || atoi(argv[i + 1]) > 10000))
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("permission denied to scan more than 10000 keys at a time"),
						 errdetail("A large COUNT makes one SCAN block Redis as KEYS does."),
						 errhint("Use COUNT 10000 or less and follow the cursor; a superuser may run any command.")));
		return;
	}
	admin = get_role_oid("pg2redis_admin", true);
	if (!OidIsValid(admin) || !has_privs_of_role(GetUserId(), admin))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to run Redis command \"%s\"",
						argv[0]),
				 errdetail("Roles that are not members of pg2redis_admin may run only read-only commands (GET, HGETALL, ZRANGE, SCAN, ...)."),
				 errhint("A member of pg2redis_admin may run data commands, a superuser any command.")));
	if (access == REDIS_ACCESS_SUPERUSER)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to run Redis command \"%s\"",
						argv[0]),
				 errdetail("Members of pg2redis_admin may run data commands; server-level commands (CONFIG, EVAL, FLUSHALL, ...) and commands pg2redis does not know need a superuser."),
				 errhint("Ask a superuser to run it.")));
	if (def->first_key <= 0)
		return;
	last = def->last_key < 0 ? argc + def->last_key : def->last_key;
	for (int i = def->first_key; i <= last && i < argc; i += def->key_step)
		if (strncmp(argv[i], PG2R_KEY_PREFIX, strlen(PG2R_KEY_PREFIX)) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied to write Redis key \"%s\"",
							argv[i]),
					 errdetail("Keys that start with \"%s\" hold pg2redis's stream positions.",
							   PG2R_KEY_PREFIX),
					 errhint("Only a superuser may change them; pg2redis_resync() starts the stream over.")));
}

/*
 * pg2redis_redis(VARIADIC args) runs one Redis command on the configured
 * server and returns its reply as JSON: a string, integer, array, null, or
 * {"error": "..."}.  Who may run what is checked first (check_redis_access).
 * It opens its own connection, with the deadlines of pg2redis.redis_timeout,
 * and never blocks beyond them.  On a Redis Cluster it goes to the first
 * seed and follows MOVED and ASK (up to 5 times) to the node serving the
 * command's key, if that node is in the cluster's slot map.
 */
Datum
pg2redis_redis(PG_FUNCTION_ARGS)
{
	ArrayType	*args = PG_GETARG_ARRAYTYPE_P(0);
	const char **argv;
	size_t		*argvlen;
	int			 null_at;
	int			 n;
	char	   **cargv;
	RedisTarget	 target;

	StringInfoData			 cmd;
	redisReply				*reply = NULL;
	char					*json_text;
	int						 not_utf8;
	Datum					 result;
	static const char *const streaming[] = {"SUBSCRIBE",  "PSUBSCRIBE",
											"SSUBSCRIBE", "MONITOR",
											"SYNC",		  "PSYNC"};

	n = pg2r_text_array_argv(args, &argv, &argvlen, &null_at);
	if (n == 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("a Redis command is needed")));
	if (null_at >= 0)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("Redis command argument %d is null", null_at + 1)));
	/* the access checks read every argument as a C string */
	cargv = palloc(sizeof(char *) * n);
	for (int i = 0; i < n; i++)
		cargv[i] = pnstrdup(argv[i], argvlen[i]);
	for (size_t i = 0; i < lengthof(streaming); i++)
		if (pg_strcasecmp(cargv[0], streaming[i]) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("Redis command \"%s\" does not return a single reply",
							cargv[0])));
	check_redis_access(n, cargv);

	redis_session_target(&target);

	initStringInfo(&cmd);
	redis_append_command(&cmd, n, argv, argvlen);

	reply = redis_session_command(&target, &cmd);

	json_text = redis_reply_to_json(reply, &not_utf8);
	freeReplyObject(reply);
	if (json_text == NULL && not_utf8)
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("the Redis reply is not valid UTF-8 and cannot be returned as JSON")));
	if (json_text == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY),
						errmsg("out of memory converting a Redis reply")));
	PG_TRY();
	{
		result = DirectFunctionCall1(jsonb_in, CStringGetDatum(json_text));
	}
	PG_FINALLY();
	{
		free(json_text);
	}
	PG_END_TRY();
	PG_RETURN_DATUM(result);
}
