/*-------------------------------------------------------------------------
 *
 * xactsql.c
 *	  Ordinary SQL in the decoding process: a transaction around it, the
 *	  decoding flag off while it runs, an ERROR returned as a value.
 *
 * The worker's own SQL (dead letters, snapshot requests and progress) runs
 * between decoding batches through pg2r_run_sql.  It owns only the
 * bracketing (begin_sql/end_sql); it may call subxact.c and the server,
 * never the worker, which tells it the memory context to return to
 * (xactsql_init) and whether a decoding context exists
 * (pg2r_xactsql_set_decoding).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "pg2redis/common.h"
#include "pg2redis/xactsql.h"

static MemoryContext return_cxt = NULL;
static bool			 decoding = false; /* the process has a decoding context */

/*
 * xactsql_init sets the context pg2r_run_sql returns to and copies errors
 * into (the worker's, at its start).
 */
void
xactsql_init(MemoryContext cxt)
{
	return_cxt = cxt;
}

/*
 * pg2r_xactsql_set_decoding tells whether the process has a decoding
 * context now: while it has, the SQL runs with the decoding flag cleared.
 */
void
pg2r_xactsql_set_decoding(bool on)
{
	decoding = on;
}

/* set_decoding_flag sets or clears PROC_IN_LOGICAL_DECODING. */
static void
set_decoding_flag(bool on)
{
	LWLockAcquire(ProcArrayLock, LW_EXCLUSIVE);
	if (on)
		MyProc->statusFlags |= PROC_IN_LOGICAL_DECODING;
	else
		MyProc->statusFlags &= ~PROC_IN_LOGICAL_DECODING;
	ProcGlobal->statusFlags[MyProc->pgxactoff] = MyProc->statusFlags;
	LWLockRelease(ProcArrayLock);
}

/*
 * begin_sql / end_sql bracket ordinary SQL in the decoding process: the
 * decoding flag must be off (else vacuum and other snapshots ignore us)
 * and no time-travel catalog entry may survive into it, or out of it.
 */
static void
begin_sql(void)
{
	if (decoding)
		set_decoding_flag(false);
	InvalidateSystemCaches();
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	/* never wait long for a lock: the stream waits meanwhile */
	(void) set_config_option("lock_timeout", "5s", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
}

static void
end_sql(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	InvalidateSystemCaches();
	if (decoding)
		set_decoding_flag(true);
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(return_cxt);
}

/* A call of a pg2r_run_sql function, for pg2r_run_guarded. */
typedef struct SqlCall
{
	bool (*fn)(void *arg);
	void *arg;
	bool  result;
} SqlCall;

/* sql_call runs the function of arg (a SqlCall) and keeps its result. */
static void
sql_call(void *arg)
{
	SqlCall *c = arg;

	c->result = c->fn(c->arg);
}

/*
 * pg2r_run_sql runs fn in a transaction (SPI connected, a snapshot
 * active, the decoding flag cleared) inside a subtransaction, so that an
 * ERROR in it is returned in *err instead of ending the worker.  *result
 * (if given) gets fn's result.
 */
bool
pg2r_run_sql(bool (*fn)(void *arg), void *arg, bool *result, char **err)
{
	SqlCall	   call = {fn, arg, false};
	ErrorData *edata;

	begin_sql();
	edata = pg2r_run_guarded(sql_call, &call);
	if (edata)
	{
		*err = MemoryContextStrdup(return_cxt, edata->message);
		FreeErrorData(edata);
	}
	end_sql();
	if (result)
		*result = call.result;
	return edata == NULL;
}
