/*-------------------------------------------------------------------------
 *
 * snapshot.c
 *	  Loading existing rows of mapped tables into Redis.
 *
 * The initial load runs in the worker when it creates its slot, inside the
 * transaction that holds the slot's initial snapshot (see worker.c), so the
 * rows it reads are exactly those committed before the slot's start point
 * and the stream continues from there with nothing missed and nothing
 * doubled.  Every partition is read on its own and mapped exactly as its
 * changes are (its own rules, else its nearest ancestor's), with the
 * relation's snapshot rules, else its insert rules.  The load goes through
 * the sender as one transaction ending at the start point, so it is split
 * into atomic parts like any large transaction and fenced by the start
 * point when done.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "pg2redis/mapping.h"
#include "pg2redis/sender.h"
#include "pg2redis/snapshot.h"

/*
 * mapped_leaves returns the OIDs of the tables whose rows the load reads:
 * every mapped table, and every leaf partition of a mapped partitioned
 * table, once each.
 */
static List *
mapped_leaves(void)
{
	List	 *result = NIL;
	ListCell *lc;

	foreach(lc, rules_relations())
	{
		Oid		  relid = lfirst_oid(lc);
		ListCell *lc2;

		foreach(lc2, find_all_inheritors(relid, AccessShareLock, NULL))
		{
			Oid child = lfirst_oid(lc2);

			if (get_rel_relkind(child) == RELKIND_RELATION)
				result = list_append_unique_oid(result, child);
		}
	}
	return result;
}

/*
 * snapshot_initial_load sends every row of every mapped table, as the
 * current transaction snapshot sees it, to Redis, fenced at start.
 */
void
snapshot_initial_load(XLogRecPtr start)
{
	MemoryContext rowcxt =
		AllocSetContextCreate(CurrentMemoryContext, "pg2redis snapshot row",
							  ALLOCSET_DEFAULT_SIZES);
	ChangeMeta meta;
	Snapshot   snap;
	List	  *leaves;
	ListCell  *lc;
	uint64	   rows = 0;

	PushActiveSnapshot(GetTransactionSnapshot());
	snap = GetActiveSnapshot();
	meta.xid = InvalidTransactionId;
	meta.lsn = start;
	meta.commit_time = GetCurrentTimestamp();

	leaves = mapped_leaves();
	sender_begin_txn(InvalidTransactionId, start, start, meta.commit_time);
	foreach(lc, leaves)
	{
		Relation	  rel = table_open(lfirst_oid(lc), AccessShareLock);
		RelMap		 *map = mapping_get(rel);
		Oid			  relid = RelationGetRelid(rel);
		CommandSink	  sink = {sender_command, sender_render_error, &relid};
		TableScanDesc scan;
		HeapTuple	  tuple;

		if (!mapping_has_rules(map))
		{
			table_close(rel, AccessShareLock);
			continue;
		}
		pgstat_report_activity(STATE_RUNNING, "pg2redis: initial load");
		scan = table_beginscan(rel, snap, 0, NULL);
		while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(rowcxt);

			sender_count_change();
			mapping_change(map, rel, PG2R_OP_SNAPSHOT, NULL, tuple, &meta,
						   &sink);
			MemoryContextSwitchTo(old);
			MemoryContextReset(rowcxt);
			rows++;
			CHECK_FOR_INTERRUPTS();
		}
		table_endscan(scan);
		table_close(rel, AccessShareLock);
	}
	sender_commit_txn();
	sender_flush();
	while (!sender_idle())
		sender_service(1000);
	PopActiveSnapshot();
	MemoryContextDelete(rowcxt);
	ereport(LOG, (errmsg("pg2redis: initial load sent " UINT64_FORMAT
						 " rows of %d tables",
						 rows, list_length(leaves))));
}
