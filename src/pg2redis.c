/*-------------------------------------------------------------------------
 *
 * pg2redis.c
 *	  Library entry point: load checks, settings, shared memory, the worker.
 *
 * pg2redis must be loaded through shared_preload_libraries: its worker is
 * registered by the postmaster, its shared memory is sized at startup, and
 * every backend must run its commit hook (which wakes the worker).  Loading
 * it any other way is refused with a hint, never half-done.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/hashfn.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "pg2redis/common.h"
#include "pg2redis/compat.h"
#include "pg2redis/failover.h"
#include "pg2redis/redis_io.h"
#include "pg2redis/settings.h"
#include "pg2redis/stages.h"
#include "pg2redis/state.h"

PG_MODULE_MAGIC;


static const struct config_enum_entry numeric_mode_options[] =
	{{"number", PG2R_NUMERIC_NUMBER, false},
	 {"string", PG2R_NUMERIC_STRING, false},
	 {NULL, 0, false}};

static const struct config_enum_entry tls_verify_options[] =
	{{"full", REDIS_TLS_VERIFY_FULL, false},
	 {"ca", REDIS_TLS_VERIFY_CA, false},
	 {"none", REDIS_TLS_VERIFY_NONE, false},
	 {NULL, 0, false}};

static const struct config_enum_entry on_command_error_options[] =
	{{"dead_letter", PG2R_ON_ERROR_DEAD_LETTER, false},
	 {"stop", PG2R_ON_ERROR_STOP, false},
	 {NULL, 0, false}};

/*
 * pg2redis.ddl_check is read by the event trigger pg2redis.check_ddl()
 * (pg2redis--*.sql) through current_setting(); no C code needs its value.
 */
static int ddl_check = 0;

static const struct config_enum_entry ddl_check_options[] = {{"disable", 0,
															  false},
															 {"error", 1,
															  false},
															 {"off", 2, false},
															 {NULL, 0, false}};


static shmem_request_hook_type prev_shmem_request_hook = NULL;
static emit_log_hook_type	   prev_emit_log_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void			 _PG_init(void);
PGDLLEXPORT void pg2redis_worker_main(Datum arg);

/* check_slot_name accepts the names ReplicationSlotCreate accepts. */
static bool
check_slot_name(char **newval, void **extra, GucSource source)
{
	const char *p;

	if (*newval == NULL || (*newval)[0] == '\0' ||
		strlen(*newval) >= NAMEDATALEN)
	{
		GUC_check_errdetail("A slot name has 1 to %d characters.",
							NAMEDATALEN - 1);
		return false;
	}
	for (p = *newval; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
			  *p == '_'))
		{
			GUC_check_errdetail("A slot name contains only lower case letters, digits and underscores.");
			return false;
		}
	return true;
}

/*
 * show_redis_url is the show hook of pg2redis.redis_url: SHOW,
 * current_setting() and pg_settings.setting give the URL with its password
 * masked, also to members of pg_read_all_settings.
 */
static const char *
show_redis_url(void)
{
	static char *shown = NULL;
	char		*masked = redis_mask_url(pg2r_redis_url);

	if (shown)
		pfree(shown);
	shown = MemoryContextStrdup(TopMemoryContext, masked);
	pfree(masked);
	return shown;
}

/*
 * mask_reload_message is an emit_log_hook: on a reload that changes
 * pg2redis.redis_url, PostgreSQL itself logs 'parameter "..." changed to
 * "<new value>"' (the postmaster, at LOG); the password in that message is
 * masked before it is written.  The setting holds the new value by then.
 */
static void
mask_reload_message(ErrorData *edata)
{
	const char *url = pg2r_redis_url;
	char	   *hit;

	if (edata->message_id != NULL && edata->message != NULL && url != NULL &&
		url[0] != '\0' &&
		strcmp(edata->message_id, "parameter \"%s\" changed to \"%s\"") == 0 &&
		strstr(edata->message, "pg2redis.redis_url") != NULL &&
		(hit = strstr(edata->message, url)) != NULL)
	{
		char *masked = redis_mask_url(url);

		if (strcmp(masked, url) != 0)
			edata->message =
				psprintf("%.*s%s%s", (int) (hit - edata->message),
						 edata->message, masked, hit + strlen(url));
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/* define_redis_settings defines the settings of the database and of the connection to Redis: where, how securely, how patiently, how replicated. */
static void
define_redis_settings(void)
{
	DefineCustomStringVariable("pg2redis.database",
							   "Database whose changes pg2redis streams.",
							   NULL, &pg2r_database, "postgres",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	/*
	 * The URL may hold the password: SHOW shows it masked (show_redis_url),
	 * and it is left out of pg_settings and SHOW ALL, whose reset_val column
	 * would show the value of postgresql.conf unmasked to members of
	 * pg_read_all_settings.
	 */
	DefineCustomStringVariable("pg2redis.redis_url",
							   "Redis server pg2redis writes to.",
							   "redis://[[user]:password@]host[:port][/db], redis-cluster://host[:port][,host...], redis-sentinel://[[user]:password@]host[:port][,host...]/name[/db] or unix:///path/redis.sock[?db=N].",
							   &pg2r_redis_url, "redis://127.0.0.1:6379/0",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL, NULL,
							   NULL, show_redis_url);
	DefineCustomStringVariable("pg2redis.redis_password_file",
							   "File whose first line is the Redis password.",
							   "Keeps the secret out of pg2redis.redis_url and postgresql.conf; the URL may then name just the ACL user.",
							   &pg2r_redis_password_file, "", PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("pg2redis.redis_tls_ca_file",
							   "CA certificates (PEM) that a rediss:// server's certificate must chain to.",
							   "Empty: the system's trusted CAs.",
							   &pg2r_redis_tls_ca_file, "", PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("pg2redis.redis_tls_cert_file",
							   "Client certificate (PEM) pg2redis presents to a rediss:// server.",
							   NULL, &pg2r_redis_tls_cert_file, "", PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("pg2redis.redis_tls_key_file",
							   "Private key (PEM) of the client certificate.",
							   "Empty: the key is in the certificate file.",
							   &pg2r_redis_tls_key_file, "", PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomEnumVariable("pg2redis.redis_tls_verify",
							 "How the certificate of a rediss:// server is checked.",
							 "full: it chains to a trusted CA and names the host of the URL; ca: it chains to a trusted CA; none: not checked (encryption without authentication).",
							 &pg2r_redis_tls_verify, REDIS_TLS_VERIFY_FULL,
							 tls_verify_options, PGC_SIGHUP,
							 GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("pg2redis.redis_sentinel_user",
							   "ACL user pg2redis authenticates as to the sentinels of a redis-sentinel:// URL.",
							   "Used with pg2redis.redis_sentinel_password_file; without that file the sentinels get the credentials of the URL.",
							   &pg2r_redis_sentinel_user, "", PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("pg2redis.redis_sentinel_password_file",
							   "File whose first line is the password of the sentinels of a redis-sentinel:// URL.",
							   "Empty: the sentinels get the credentials of the URL (and a sentinel without a password accepts the connection as it is).",
							   &pg2r_redis_sentinel_password_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL,
							   NULL);
	DefineCustomIntVariable("pg2redis.redis_timeout",
							"Deadline for connecting to Redis and for each reply.",
							NULL, &pg2r_redis_timeout_ms, 5000, 100, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("pg2redis.retry_initial_backoff",
							"First wait before reconnecting to Redis.",
							"Doubled after every failed attempt, with jitter, up to pg2redis.retry_max_backoff.",
							&pg2r_retry_initial_ms, 100, 1, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("pg2redis.retry_max_backoff",
							"Longest wait between attempts to reconnect to Redis.",
							NULL, &pg2r_retry_max_ms, 10000, 1, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("pg2redis.redis_wait_replicas",
							"Replicas of the Redis primary that must have the stream's writes before they count as applied.",
							"The stream confirms its replication slot past a change only once WAIT says this many replicas have it (in a cluster, or all the slot map lists, when fewer), so that a replica taking over a failed primary lacks nothing the slot no longer holds. 0 never waits; -1 (the default) is pg2redis.redis_cluster_wait_replicas on a Redis Cluster and 0 otherwise.",
							&pg2r_redis_wait_replicas, -1, -1, 16, PGC_SIGHUP,
							0, NULL, NULL, NULL);
	DefineCustomIntVariable("pg2redis.redis_cluster_wait_replicas",
							"Deprecated: pg2redis.redis_wait_replicas for a Redis Cluster, when that is -1.",
							"Kept for configurations written before pg2redis.redis_wait_replicas, which replaces it for every topology.",
							&pg2r_redis_cluster_wait_replicas, 1, 0, 16,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
}

/* define_stream_settings defines the settings of the stream: the slot, batching, limits, rendering and what a refused command does. */
static void
define_stream_settings(void)
{
	DefineCustomStringVariable("pg2redis.slot_name",
							   "Logical replication slot the pg2redis worker owns.",
							   NULL, &pg2r_slot_name, "pg2redis",
							   PGC_POSTMASTER, 0, check_slot_name, NULL, NULL);
	DefineCustomBoolVariable("pg2redis.enabled",
							 "Streams changes to Redis; off pauses (the slot keeps its position).",
							 NULL, &pg2r_enabled, true, PGC_SIGHUP, 0, NULL,
							 NULL, NULL);
	DefineCustomBoolVariable("pg2redis.stage_timing",
							 "Logs where the worker's time goes (decode, map, append, I/O, wait) whenever it catches up.",
							 "For tuning: each stage switch reads the clock, a few times per row change.",
							 &pg2r_stage_timing, false, PGC_SIGHUP, 0, NULL,
							 NULL, NULL);
	DefineCustomIntVariable("pg2redis.batch_size",
							"Most commands in one pipeline round trip to Redis.",
							"Several transactions share one MULTI/EXEC up to this many commands; one larger transaction is sent whole up to pg2redis.max_transaction_commands.",
							&pg2r_batch_size, 1000, 1, 1000000, PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("pg2redis.flush_interval",
							"Longest a partial batch waits for more transactions while more WAL is pending.",
							"An idle stream flushes at once.",
							&pg2r_flush_interval_ms, 10, 0, 60000, PGC_SIGHUP,
							GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomEnumVariable("pg2redis.numeric_mode",
							 "How {json:…} renders numeric and float values.",
							 "\"number\" writes JSON numbers (exact digits as PostgreSQL prints them); \"string\" writes JSON strings.",
							 &pg2r_numeric_mode, PG2R_NUMERIC_NUMBER,
							 numeric_mode_options, PGC_SIGHUP, 0, NULL, NULL,
							 NULL);
	DefineCustomEnumVariable("pg2redis.on_command_error",
							 "What to do with a command Redis rejects.",
							 "dead_letter records it in pg2redis.dead_letters and goes on; stop stops the stream, keeping its position.",
							 &pg2r_on_command_error, PG2R_ON_ERROR_DEAD_LETTER,
							 on_command_error_options, PGC_SIGHUP, 0, NULL,
							 NULL, NULL);
	DefineCustomIntVariable("pg2redis.max_transaction_commands",
							"Most commands of one transaction in one MULTI/EXEC.",
							"A larger transaction is applied in several atomic parts.",
							&pg2r_max_transaction_commands, 10000, 1, 10000000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("pg2redis.batch_bytes",
							"Most bytes of commands in one MULTI/EXEC.",
							"Several transactions share a block up to this size; a larger transaction is applied in several atomic parts, as with pg2redis.max_transaction_commands.",
							&pg2r_batch_bytes, 16 * 1024 * 1024, 64 * 1024,
							512 * 1024 * 1024, PGC_SIGHUP, GUC_UNIT_BYTE, NULL,
							NULL, NULL);
	DefineCustomIntVariable("pg2redis.max_argument_bytes",
							"Largest value or Redis argument pg2redis sends.",
							"A change whose value or rendered argument is larger becomes a dead letter; keep it below Redis's proto-max-bulk-len (512MB by default).",
							&pg2r_max_argument_bytes, 64 * 1024 * 1024, 1024,
							1024 * 1024 * 1024, PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomIntVariable("pg2redis.decoding_work_mem",
							"Memory the worker's decoder uses before spilling a large transaction to disk.",
							"The worker's own logical_decoding_work_mem.",
							&pg2r_decoding_work_mem_kb, 16384, 64,
							MAX_KILOBYTES, PGC_SIGHUP, GUC_UNIT_KB, NULL, NULL,
							NULL);
}

/* define_snapshot_settings defines the settings of snapshots, the initial load, schema checks and dead letters. */
static void
define_snapshot_settings(void)
{
	DefineCustomIntVariable("pg2redis.snapshot_statement_timeout",
							"Longest a snapshot query run as a table's owner may take.",
							"Bounds a table owner's code (snapshot filter, row-level security policy, domain check) in the worker; a query that takes longer fails its snapshot request, or its table in the initial load. 0 means no limit.",
							&pg2r_snapshot_statement_timeout_ms, 60000, 0,
							INT_MAX, PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL,
							NULL);
	DefineCustomIntVariable("pg2redis.snapshot_batch_size",
							"Rows per chunk of a snapshot on demand.",
							"Each chunk is selected by primary key between two watermarks; larger chunks are faster, smaller ones hold up the stream less.",
							&pg2r_snapshot_batch_size, 10000, 1, 1000000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("pg2redis.dead_letter_retention",
							"How long dead letters are kept.",
							"The worker deletes older ones from pg2redis.dead_letters once a minute. 0 keeps them all.",
							&pg2r_dead_letter_retention_s, 0, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomEnumVariable("pg2redis.ddl_check",
							 "What a schema change that breaks a rule does.",
							 "After ALTER TABLE, DROP INDEX or REVOKE, the rules of the tables concerned are checked again: \"disable\" disables a rule that fails with a WARNING naming it, \"error\" refuses the change, \"off\" checks nothing (the stream turns the rule's changes into dead letters).",
							 &ddl_check, 0, ddl_check_options, PGC_SUSET, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("pg2redis.load_stall_timeout",
							"Longest the initial load waits for Redis to acknowledge a block.",
							"The load holds no table lock while it waits, but holds its snapshot and its new slot: past this, it gives up, leaves the tables Redis does not have yet to snapshots on demand (or, for a table without a primary key, starts over later). 0 means wait forever.",
							&pg2r_load_stall_timeout_ms, 60000, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
}

/* define_settings defines every pg2redis.* setting. */
static void
define_settings(void)
{
	define_redis_settings();
	define_stream_settings();
	define_snapshot_settings();
	failover_define_settings();

	MarkGUCPrefixReserved("pg2redis");
}

/* shmem_request asks for pg2redis's shared memory. */
static void
shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	pg2r_state_request_shmem();
}

/* shmem_startup creates or attaches pg2redis's shared memory. */
static void
shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	pg2r_state_init_shmem();
}

/* register_worker registers the one static pg2redis worker. */
static void
register_worker(void)
{
	BackgroundWorker worker = {0};

	worker.bgw_flags =
		BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* on a hot standby too: it reports state standby until promoted */
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 5;
	strlcpy(worker.bgw_library_name, "pg2redis", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "pg2redis_worker_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "pg2redis worker", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "pg2redis", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/*
 * _PG_init refuses to load outside shared_preload_libraries, defines the
 * settings, and sets up shared memory, the commit hook and the worker.
 */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg2redis must be loaded via \"shared_preload_libraries\""),
				 errhint("Add pg2redis to \"shared_preload_libraries\" in postgresql.conf and restart the server.")));

	define_settings();

	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = mask_reload_message;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shmem_startup;

	pg2r_xact_callback_register();
	register_worker();
}
