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
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/lsyscache.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "pg2redis/mapping.h"
#include "pg2redis/ondemand.h"
#include "pg2redis/sender.h"
#include "pg2redis/snapshot.h"

/*
 * snapshot_mapped_leaves returns the OIDs, in order, of the tables whose
 * rows a snapshot of relid reads (InvalidOid: of every mapped table): the
 * table itself, or every leaf partition of a partitioned one, once each.
 */
List *
snapshot_mapped_leaves(Oid relid)
{
	List *result = NIL;
	List *roots =
		OidIsValid(relid) ? list_make1_oid(relid) : rules_relations();
	ListCell *lc;

	foreach(lc, roots)
	{
		ListCell *lc2;

		foreach(lc2,
				find_all_inheritors(lfirst_oid(lc), AccessShareLock, NULL))
		{
			Oid child = lfirst_oid(lc2);

			if (get_rel_relkind(child) == RELKIND_RELATION)
				result = list_append_unique_oid(result, child);
		}
	}
	list_sort(result, list_oid_cmp);
	return result;
}

/*
 * load_filtered sends the rows of rel that its snapshot filter keeps,
 * reading them with SQL under the active snapshot.
 */
static uint64
load_filtered(Relation rel, RelMap *map, const char *filter,
			  const ChangeMeta *meta, const CommandSink *sink,
			  MemoryContext rowcxt)
{
	char *sql =
		psprintf("SELECT t FROM ONLY %s t WHERE (%s)",
				 quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
											RelationGetRelationName(rel)),
				 filter);
	Portal	   portal;
	uint64	   rows = 0;
	SPIPlanPtr plan = SPI_prepare(sql, 0, NULL);

	if (plan == NULL)
		elog(ERROR, "could not prepare the snapshot filter of \"%s\"",
			 RelationGetRelationName(rel));
	portal = SPI_cursor_open(NULL, plan, NULL, NULL, true);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 10000);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTupleData tuple;
			MemoryContext old = MemoryContextSwitchTo(rowcxt);

			mapping_spi_row(i, RelationGetRelid(rel), &tuple);
			sender_count_change();
			mapping_change(map, rel, PG2R_OP_SNAPSHOT, NULL, &tuple, meta,
						   sink);
			MemoryContextSwitchTo(old);
			MemoryContextReset(rowcxt);
			rows++;
			CHECK_FOR_INTERRUPTS();
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	return rows;
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
	SPI_connect();
	meta.xid = InvalidTransactionId;
	meta.lsn = start;
	meta.commit_time = GetCurrentTimestamp();

	leaves = snapshot_mapped_leaves(InvalidOid);
	sender_begin_txn(InvalidTransactionId, start, start, meta.commit_time);
	foreach(lc, leaves)
	{
		Relation	  rel = table_open(lfirst_oid(lc), AccessShareLock);
		RelMap		 *map = mapping_get(rel);
		Oid			  relid = RelationGetRelid(rel);
		CommandSink	  sink = {sender_command, sender_render_error, &relid,
							  false};
		TableScanDesc scan;
		HeapTuple	  tuple;
		char		 *filter;

		if (!mapping_has_rules(map))
		{
			table_close(rel, AccessShareLock);
			continue;
		}
		pgstat_report_activity(STATE_RUNNING, "pg2redis: initial load");
		filter = ondemand_filter_for(map->rulerelid);
		if (filter)
		{
			rows += load_filtered(rel, map, filter, &meta, &sink, rowcxt);
			table_close(rel, AccessShareLock);
			continue;
		}
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
	SPI_finish();
	PopActiveSnapshot();
	MemoryContextDelete(rowcxt);
	ereport(LOG, (errmsg("pg2redis: initial load sent " UINT64_FORMAT
						 " rows of %d tables",
						 rows, list_length(leaves))));
}
