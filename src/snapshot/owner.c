/*-------------------------------------------------------------------------
 *
 * owner.c
 *	  Running a table owner's code (filters, policies, domain checks) as
 *	  that owner, safely, from the worker or a backend.
 *
 * snapshot_become_owner switches to the table's owner in a
 * security-restricted operation with search_path pinned, and arms
 * pg2redis.snapshot_statement_timeout in the worker, so that no owner's
 * code holds up the one process that streams for everyone;
 * snapshot_restore_user undoes it.  Used by the initial load, snapshots on
 * demand, key-ordered reads and the filter trigger.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/timeout.h"

#include "pg2redis/owner.h"
#include "pg2redis/settings.h"
#include "pg2redis/state.h"

/* the subtransaction the owner's statement timeout was armed in, if any */
static SubTransactionId armed_in = InvalidSubTransactionId;
static bool				timeout_callbacks = false;

/*
 * disarm_timeout stops the owner's statement timeout and forgets a cancel
 * it already requested: the worker has no other use for a query cancel.
 */
static void
disarm_timeout(void)
{
	if (get_timeout_active(STATEMENT_TIMEOUT))
		disable_timeout(STATEMENT_TIMEOUT, false);
	if (get_timeout_indicator(STATEMENT_TIMEOUT, true))
		QueryCancelPending = false;
	armed_in = InvalidSubTransactionId;
}

/*
 * timeout_at_subxact_abort disarms the timer when the subtransaction it
 * was armed in (or one around it) aborts; an inner subtransaction's abort
 * (a rule's render error) leaves it armed.
 */
static void
timeout_at_subxact_abort(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB &&
		armed_in != InvalidSubTransactionId && armed_in >= mySubid)
		disarm_timeout();
}

/* timeout_at_xact_abort disarms the timer when the transaction aborts. */
static void
timeout_at_xact_abort(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT && armed_in != InvalidSubTransactionId)
		disarm_timeout();
}

/*
 * snapshot_become_owner makes owner the current user, in a security-
 * restricted operation with search_path pinned, as VACUUM, CLUSTER and
 * REFRESH MATERIALIZED VIEW do (CVE-2022-1552), and saves the identity in
 * *saved.  snapshot_restore_user restores it; an ERROR in between is undone
 * by the abort of the (sub)transaction.
 */
void
snapshot_become_owner(Oid owner, SnapshotOwner *saved)
{
	GetUserIdAndSecContext(&saved->save_userid, &saved->save_sec_context);
	SetUserIdAndSecContext(owner, saved->save_sec_context |
									  SECURITY_RESTRICTED_OPERATION);
	saved->save_nestlevel = NewGUCNestLevel();
	/* in the worker the setting is already pinned (worker.c): this is a no-op */
	(void) set_config_option("search_path", PG2R_SAFE_SEARCH_PATH, PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);

	/*
	 * The owner's code (a filter, a policy, a domain check) must not hold up
	 * the one worker that streams for everyone: it gets
	 * pg2redis.snapshot_statement_timeout, as a statement would.  The timer
	 * is disarmed by snapshot_restore_user, or, when an ERROR skips that, by
	 * the abort of the (sub)transaction it was armed in (timeout_at_abort).
	 */
	if (pg2r_in_worker && pg2r_snapshot_statement_timeout_ms > 0)
	{
		if (!timeout_callbacks)
		{
			RegisterXactCallback(timeout_at_xact_abort, NULL);
			RegisterSubXactCallback(timeout_at_subxact_abort, NULL);
			timeout_callbacks = true;
		}
		armed_in = GetCurrentSubTransactionId();
		enable_timeout_after(STATEMENT_TIMEOUT,
							 pg2r_snapshot_statement_timeout_ms);
	}
}

/* snapshot_restore_user undoes snapshot_become_owner. */
void
snapshot_restore_user(const SnapshotOwner *saved)
{
	if (armed_in != InvalidSubTransactionId)
	{
		/*
		 * A timeout that fired while the worker was busy with no interrupt
		 * check (rendering the rows) is raised here, inside the caller's
		 * guard, not later in the decoding loop, where it would end the
		 * worker.
		 */
		CHECK_FOR_INTERRUPTS();
		disarm_timeout();
	}
	AtEOXact_GUC(false, saved->save_nestlevel);
	SetUserIdAndSecContext(saved->save_userid, saved->save_sec_context);
}
