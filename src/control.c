/*-------------------------------------------------------------------------
 *
 * control.c
 *	  SQL functions that talk to the worker or to Redis: status, wait,
 *	  resync, and running one Redis command.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/table.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"

#include "pg2redis/commands.h"
#include "pg2redis/mapping.h"
#include "pg2redis/redis_io.h"
#include "pg2redis/settings.h"
#include "pg2redis/snapshot.h"
#include "pg2redis/state.h"

PG_FUNCTION_INFO_V1(pg2redis_status);
PG_FUNCTION_INFO_V1(pg2redis_wait);
PG_FUNCTION_INFO_V1(pg2redis_resync);
PG_FUNCTION_INFO_V1(pg2redis_redis);
PG_FUNCTION_INFO_V1(pg2redis_snapshot);
PG_FUNCTION_INFO_V1(pg2redis_validate_snapshot_filter);

#define STATUS_COLUMNS 17


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
	server_lsn = pg2r_wal_record_start(GetXLogInsertRecPtr());

	SpinLockAcquire(&pg2r_shared->mutex);
	memcpy(&s, pg2r_shared, sizeof(s));
	SpinLockRelease(&pg2r_shared->mutex);

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

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc),
													  values, nulls)));
}

/*
 * pg2redis_wait(timeout) returns true once every transaction committed
 * before the call is applied in Redis, false when timeout passes first.
 */
Datum
pg2redis_wait(PG_FUNCTION_ARGS)
{
	Interval   *timeout = PG_GETARG_INTERVAL_P(0);
	int64		timeout_ms;
	TimestampTz deadline;
	XLogRecPtr	target;
	bool		done = false;

	timeout_ms =
		(int64) timeout->time / 1000 +
		((int64) timeout->day * 86400 + (int64) timeout->month * 30 * 86400) *
			1000;
	if (timeout_ms < 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("timeout must not be negative")));

	/* everything committed so far is in WAL before target; make it readable */
	target = pg2r_wal_record_start(GetXLogInsertRecPtr());
	XLogFlush(target);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	pg2r_wake_worker();
	ConditionVariablePrepareToSleep(&pg2r_shared->progress_cv);
	for (;;)
	{
		XLogRecPtr applied;
		long	   remaining;

		SpinLockAcquire(&pg2r_shared->mutex);
		applied = pg2r_shared->applied_lsn;
		SpinLockRelease(&pg2r_shared->mutex);
		if (applied >= target)
		{
			done = true;
			break;
		}
		remaining =
			TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		(void) ConditionVariableTimedSleep(&pg2r_shared->progress_cv,
										   Min(remaining, 100),
										   PG_WAIT_EXTENSION);
		pg2r_wake_worker();
	}
	ConditionVariableCancelSleep();
	PG_RETURN_BOOL(done);
}

/*
 * pg2redis_resync() makes the worker drop its Redis position and its slot,
 * recreate the slot and load every mapped table again.
 */
Datum
pg2redis_resync(PG_FUNCTION_ARGS)
{
	bool running;

	SpinLockAcquire(&pg2r_shared->mutex);
	running = pg2r_shared->worker_pid != 0;
	if (running)
		pg2r_shared->resync_requested = true;
	SpinLockRelease(&pg2r_shared->mutex);
	if (!running)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg2redis worker is not running"),
				 errhint("Check pg2redis_status() and the server log; the worker needs shared_preload_libraries = 'pg2redis' and wal_level = logical.")));
	pg2r_wake_worker();
	PG_RETURN_VOID();
}

/* wait_socket waits for events on sock until deadline; false on timeout. */
static bool
wait_socket(pgsocket sock, int events, TimestampTz deadline)
{
	long remaining =
		TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
	int rc;

	if (remaining <= 0)
		return false;
	rc = WaitLatchOrSocket(MyLatch,
						   events | WL_LATCH_SET | WL_TIMEOUT |
							   WL_EXIT_ON_PM_DEATH,
						   sock, remaining, PG_WAIT_EXTENSION);
	if (rc & WL_LATCH_SET)
		ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	return (rc & events) != 0 || !(rc & WL_TIMEOUT);
}

/* redis_fail raises the ERROR of a failed pg2redis_redis() call. */
static void
redis_fail(RedisConn *conn, const RedisTarget *target, const char *what)
{
	char msg[sizeof(conn->error)];

	strlcpy(msg, conn->error[0] ? conn->error : what, sizeof(msg));
	redis_close(conn);
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("could not run the command on Redis at %s",
					target->display),
			 errdetail("%s", msg),
			 errhint("Check pg2redis.redis_url and that Redis is running.")));
}

/*
 * redis_roundtrip connects to target, sends the handshake, ASKING when
 * asking, and the command (cmd, in RESP), and returns the command's reply
 * (free it with freeReplyObject).  Raises an ERROR on failure or after
 * pg2redis.redis_timeout.
 */
static redisReply *
redis_roundtrip(const RedisTarget *target, const StringInfo cmd, bool asking)
{
	RedisConn		conn;
	StringInfoData	out;
	volatile size_t sent = 0;
	int				expected;
	TimestampTz		deadline;
	redisReply	   *reply = NULL;

	redis_conn_init(&conn);
	initStringInfo(&out);
	expected = redis_append_handshake(&out, target) + 1;
	if (asking)
	{
		redis_append_cstrings(&out, 1, "ASKING");
		expected++;
	}
	appendBinaryStringInfo(&out, cmd->data, cmd->len);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   pg2r_redis_timeout_ms);
	/* a cancel or timeout must not leak the socket or the reader */
	PG_TRY();
	{
		if (!redis_connect_start(&conn, target))
			redis_fail(&conn, target, "could not connect");
		for (;;)
		{
			int done;

			if (!wait_socket(conn.sock, conn.want, deadline))
				redis_fail(&conn, target, "timed out connecting");
			done = redis_connect_finish(&conn, target);
			if (done < 0)
				redis_fail(&conn, target, "could not connect");
			if (done > 0)
				break;
		}

		while (expected > 0)
		{
			bool eof;
			int	 rc;

			if (sent < (size_t) out.len)
			{
				ssize_t w = redis_send(&conn, out.data + sent, out.len - sent);

				if (w < 0)
					redis_fail(&conn, target, "could not send");
				sent += w;
			}
			if (!wait_socket(conn.sock,
							 WL_SOCKET_READABLE |
								 (sent < (size_t) out.len ? WL_SOCKET_WRITEABLE
														  : 0),
							 deadline))
				redis_fail(&conn, target, "timed out waiting for the reply");
			if (!redis_receive(&conn, &eof))
				redis_fail(&conn, target, "could not receive");
			while (expected > 0 && (rc = redis_next_reply(&conn, &reply)) == 1)
			{
				expected--;
				if (expected > 0)
				{
					/* a handshake reply */
					if (reply->type == REDIS_REPLY_ERROR)
					{
						snprintf(conn.error, sizeof(conn.error), "%s",
								 reply->str);
						freeReplyObject(reply);
						redis_fail(&conn, target,
								   "Redis refused the connection setup");
					}
					freeReplyObject(reply);
					reply = NULL;
				}
			}
			if (expected > 0 && rc < 0)
				redis_fail(&conn, target, "protocol error");
		}
	}
	PG_CATCH();
	{
		redis_close(&conn);
		PG_RE_THROW();
	}
	PG_END_TRY();
	redis_close(&conn);
	pfree(out.data);
	return reply;
}

/*
 * redirection reads "MOVED <slot> <host>:<port>" or "ASK ..." from a cluster
 * node's error into *target's host and port; false for any other reply.
 */
static bool
redirection(const redisReply *reply, RedisTarget *target, bool *asking)
{
	const char *addr;
	const char *colon;
	int			port;

	if (reply->type != REDIS_REPLY_ERROR)
		return false;
	if (strncmp(reply->str, "MOVED ", 6) == 0)
		*asking = false;
	else if (strncmp(reply->str, "ASK ", 4) == 0)
		*asking = true;
	else
		return false;
	addr = strchr(strchr(reply->str, ' ') + 1, ' ');
	if (addr == NULL || (colon = strrchr(addr + 1, ':')) == NULL)
		return false;
	port = atoi(colon + 1);
	if (port <= 0 || port > 65535)
		return false;
	/* an endpoint announced empty is the node that answered */
	if (colon > addr + 1)
		target->host = pnstrdup(addr + 1, colon - addr - 1);
	target->port = port;
	return true;
}

/*
 * pg2redis_redis(VARIADIC args) runs one Redis command on the configured
 * server and returns its reply as JSON: a string, integer, array, null, or
 * {"error": "..."}.  It opens its own connection, with the deadlines of
 * pg2redis.redis_timeout, and never blocks beyond them.  On a Redis Cluster
 * it goes to the first seed and follows MOVED and ASK (up to 5 times) to
 * the node serving the command's key.
 */
Datum
pg2redis_redis(PG_FUNCTION_ARGS)
{
	ArrayType  *args = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *elnulls;
	int			n;
	RedisTarget target;
	char		err[256];

	StringInfoData			 cmd;
	redisReply				*reply = NULL;
	bool					 asking = false;
	char					*json_text;
	int						 not_utf8;
	Datum					 result;
	static const char *const streaming[] = {"SUBSCRIBE",  "PSUBSCRIBE",
											"SSUBSCRIBE", "MONITOR",
											"SYNC",		  "PSYNC"};

	deconstruct_array(args, TEXTOID, -1, false, TYPALIGN_INT, &elems, &elnulls,
					  &n);
	if (n == 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("a Redis command is needed")));
	for (int i = 0; i < n; i++)
		if (elnulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("Redis command argument %d is null", i + 1)));
	for (size_t i = 0; i < lengthof(streaming); i++)
		if (pg_strcasecmp(TextDatumGetCString(elems[0]), streaming[i]) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("Redis command \"%s\" does not return a single reply",
							TextDatumGetCString(elems[0]))));

	if (!pg2r_redis_target(&target, err, sizeof(err)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("%s", err),
				 errhint("Fix the pg2redis.redis_* settings.")));

	initStringInfo(&cmd);
	{
		const char **argv = palloc(sizeof(char *) * n);
		size_t		*argvlen = palloc(sizeof(size_t) * n);

		for (int i = 0; i < n; i++)
		{
			argv[i] = VARDATA_ANY(DatumGetTextPP(elems[i]));
			argvlen[i] = VARSIZE_ANY_EXHDR(DatumGetTextPP(elems[i]));
		}
		redis_append_command(&cmd, n, argv, argvlen);
	}

	reply = redis_roundtrip(&target, &cmd, false);
	for (int hops = 0;
		 target.cluster && hops < 5 && redirection(reply, &target, &asking);
		 hops++)
	{
		freeReplyObject(reply);
		reply = redis_roundtrip(&target, &cmd, asking);
	}

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

/*
 * check_snapshot_table refuses a table an on-demand snapshot cannot read:
 * one without rules that apply to it, or without a primary key or replica
 * identity index to chunk it by.
 */
static void
check_snapshot_table(Oid leaf)
{
	Relation rel = table_open(leaf, AccessShareLock);

	if (!mapping_has_rules(mapping_get(rel)))
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("table \"%s\" has no pg2redis rules",
							   RelationGetRelationName(rel)),
						errhint("Add rules with pg2redis_add_rule() first.")));
	if (!OidIsValid(RelationGetPrimaryKeyIndex(rel)) &&
		!OidIsValid(RelationGetReplicaIndex(rel)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has no primary key or replica identity index",
						RelationGetRelationName(rel)),
				 errdetail("Snapshots on demand read a table in chunks by key."),
				 errhint("Add a primary key, or use pg2redis_resync() to load every table with the slot's own snapshot.")));
	table_close(rel, AccessShareLock);
}

/*
 * pg2redis_snapshot(relation) queues a snapshot of one mapped table (or of
 * all, when NULL) and returns the request id; the worker serves it while
 * streaming goes on.  The request is visible to the worker at commit.
 */
Datum
pg2redis_snapshot(PG_FUNCTION_ARGS)
{
	Oid		  relid = PG_ARGISNULL(0) ? InvalidOid : PG_GETARG_OID(0);
	List	 *requested;
	List	 *leaves;
	ListCell *lc;
	Oid		  types[1] = {REGCLASSOID};
	Datum	  values[1] = {ObjectIdGetDatum(relid)};
	char	  nulls[1] = {OidIsValid(relid) ? ' ' : 'n'};
	bool	  isnull;
	int64	  id;

	if (OidIsValid(relid))
	{
		char kind = get_rel_relkind(relid);

		if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("\"%s\" is not a table", get_rel_name(relid))));
	}

	/*
	 * A snapshot sends the table's rows to Redis: require SELECT on the table
	 * requested, or on every mapped table for a snapshot of all (in OID order,
	 * so that the error names the same table every time).
	 */
	requested = OidIsValid(relid) ? list_make1_oid(relid) : rules_relations();
	list_sort(requested, list_oid_cmp);
	foreach(lc, requested)
	{
		Oid checked = lfirst_oid(lc);

		if (pg_class_aclcheck(checked, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for table %s",
							get_rel_name(checked)),
					 errdetail("Requesting a snapshot of a table requires SELECT on it."),
					 errhint("Have the table's owner grant SELECT on it to your role, or request a snapshot of a table you may read.")));
	}
	leaves = snapshot_mapped_leaves(relid);
	if (leaves == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg(OidIsValid(relid)
							? "table \"%s\" has no partitions to snapshot"
							: "no table has pg2redis rules%s",
						OidIsValid(relid) ? get_rel_name(relid) : ""),
				 errhint("Add rules with pg2redis_add_rule() first.")));
	foreach(lc, leaves)
		check_snapshot_table(lfirst_oid(lc));

	SPI_connect();
	if (SPI_execute_with_args("INSERT INTO pg2redis.snapshots (relation) VALUES ($1) RETURNING id",
							  1, types, values, nulls, false,
							  0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not insert into pg2redis.snapshots");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();

	/* the commit hook wakes the worker; the flag tells it to look */
	pg_atomic_write_u32(&pg2r_shared->snapshot_requested, 1);
	if (pg2r_shared->worker_pid == 0)
		ereport(NOTICE,
				(errmsg("the pg2redis worker is not running; the request waits for it")));
	PG_RETURN_INT64(id);
}

/* filter_error_context names the table whose filter is being checked. */
static void
filter_error_context(void *arg)
{
	errcontext("snapshot filter of table \"%s\"", (const char *) arg);
}

/*
 * pg2redis_validate_snapshot_filter is the BEFORE ROW trigger of
 * pg2redis.snapshot_filters: the filter must be a WHERE condition that
 * plans against its relation.
 */
Datum
pg2redis_validate_snapshot_filter(PG_FUNCTION_ARGS)
{
	TriggerData			*trigdata = (TriggerData *) fcinfo->context;
	TupleDesc			 desc;
	HeapTuple			 tuple;
	bool				 relnull;
	bool				 filternull;
	Oid					 relid;
	char				 kind;
	char				*filter;
	char				*sql;
	SPIPlanPtr			 plan;
	ErrorContextCallback errcb;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		elog(ERROR, "pg2redis_validate_snapshot_filter must be a row trigger");
	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event)
				? trigdata->tg_newtuple
				: trigdata->tg_trigtuple;
	desc = RelationGetDescr(trigdata->tg_relation);
	relid = DatumGetObjectId(heap_getattr(tuple, 1, desc, &relnull));
	filter = DatumGetPointer(heap_getattr(tuple, 2, desc, &filternull));
	if (relnull || filternull)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("a snapshot filter needs a relation and a filter")));
	kind = get_rel_relkind(relid);
	if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("relation with OID %u is not a table", relid),
				 errhint("Snapshot filters apply to ordinary and partitioned tables.")));
	filter = TextDatumGetCString(PointerGetDatum(filter));
	sql =
		psprintf("SELECT 1 FROM %s t WHERE (%s)",
				 quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
											get_rel_name(relid)),
				 filter);
	errcb.callback = filter_error_context;
	errcb.arg = get_rel_name(relid);
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	SPI_connect();
	plan = SPI_prepare(sql, 0, NULL);
	if (plan == NULL)
		ereport(ERROR, (errcode(ERRCODE_SYNTAX_ERROR),
						errmsg("invalid snapshot filter: %s",
							   SPI_result_code_string(SPI_result))));
	/* the loads open a cursor on it: one SELECT, nothing after it */
	if (!SPI_is_cursor_plan(plan))
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("invalid snapshot filter: it must be one boolean expression"),
				 errhint("Write a WHERE condition without semicolons, e.g. \"status <> 'archived'\".")));
	SPI_finish();
	error_context_stack = errcb.previous;
	return PointerGetDatum(tuple);
}
