/*-------------------------------------------------------------------------
 *
 * subxact.c
 *	  Running a piece of work in an internal subtransaction, so that an
 *	  ERROR in it is a value for the caller instead of the end of the
 *	  process.
 *
 * This is how PL/pgSQL's exception blocks recover: the subtransaction's
 * abort releases whatever the failed work held (locks, buffer pins, catalog
 * references, its memory), which a bare PG_TRY would leak.  The worker uses
 * it for its own SQL between decoding batches (worker.c) and, inside
 * decoding, to render a transaction again rule by rule after an ERROR ended
 * a worker (plugin.c, mapping.c).  It assigns no transaction id: the work
 * must not write.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "pg2redis/common.h"

/*
 * pg2r_run_guarded runs fn(arg) in an internal subtransaction and returns
 * NULL, or, when fn raised an ERROR, rolls the subtransaction back and
 * returns the error (allocated in the caller's memory context, which is
 * current again either way).
 */
ErrorData *
pg2r_run_guarded(void (*fn)(void *arg), void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return edata;
}
