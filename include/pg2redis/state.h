/*-------------------------------------------------------------------------
 *
 * state.h
 *	  Shared memory: what the worker reports, and how backends wake it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_STATE_H
#define PG2REDIS_STATE_H

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/spin.h"

/* What pg2redis_status().state says. */
typedef enum Pg2rWorkerState
{
	PG2R_STATE_STOPPED,
	PG2R_STATE_WAITING_FOR_EXTENSION,
	PG2R_STATE_STARTING,
	PG2R_STATE_SNAPSHOTTING,
	PG2R_STATE_STREAMING,
	PG2R_STATE_PAUSED,
	PG2R_STATE_REDIS_UNAVAILABLE,
	PG2R_STATE_STANDBY /* the server is a standby: waits for promotion */
} Pg2rWorkerState;

typedef struct Pg2rShared
{
	slock_t			mutex;		   /* protects everything but the atomics */
	pid_t			worker_pid;	   /* 0 when no worker runs */
	int				worker_procno; /* its PGPROC number, or -1 */
	Oid				dboid;		   /* database the worker streams */
	Pg2rWorkerState state;
	bool			redis_connected;
	XLogRecPtr		confirmed_lsn; /* slot position confirmed */
	XLogRecPtr	applied_lsn; /* all WAL before it is in Redis or irrelevant */
	TimestampTz last_commit_time; /* of the last transaction applied */
	TimestampTz pending_since;	  /* commit time of the oldest transaction
								   * decoded and not applied; 0: none */
	/* the initial load: its progress, or the totals of the last one */
	int				 load_tables_total;
	int				 load_tables_done;
	uint64			 load_rows;
	uint64			 load_rows_estimate;
	TimestampTz		 load_started_at; /* 0: no load since the server started */
	TimestampTz		 load_finished_at; /* 0: running (or not started) */
	uint64			 transactions;
	uint64			 changes;
	uint64			 commands;
	uint64			 dead_letters;
	uint64			 retries;
	char			 last_error[512];
	TimestampTz		 last_error_time;
	bool			 resync_requested;
	XLogRecPtr		 careful_until; /* decode transactions ending up to here
								* with each rule in a subtransaction */
	bool			 careful_load;	/* an ERROR ended the last initial load */
	pg_atomic_uint32 wakeup_pending;
	pg_atomic_uint32 snapshot_requested; /* pg2redis_snapshot() was called */
	ConditionVariable progress_cv;		 /* broadcast when applied_lsn moves */
} Pg2rShared;

/* Every read and write of the shared state goes through these. */
/* True in the pg2redis worker process only. */
extern bool pg2r_in_worker;

extern void			   pg2r_state_request_shmem(void);
extern void			   pg2r_state_init_shmem(void);
extern void			   pg2r_wake_worker(void);
extern void			   pg2r_xact_callback_register(void);
extern const char	  *pg2r_state_name(Pg2rWorkerState state);
extern XLogRecPtr	   pg2r_wal_record_start(XLogRecPtr lsn);
extern bool			   pg2r_wait_applied(XLogRecPtr target, int64 timeout_ms);
extern void			   pg2r_state_copy(Pg2rShared *out);
extern pid_t		   pg2r_worker_pid(void);
extern Pg2rWorkerState pg2r_worker_state(void);
extern bool			   pg2r_request_resync(void);
extern bool			   pg2r_request_snapshot(void);

/* What the worker reports and reads (worker process only). */
extern void pg2r_worker_attach(void);
extern void pg2r_worker_detach(void);
extern bool pg2r_resync_requested(void);
extern void pg2r_clear_resync_request(void);
extern bool pg2r_take_snapshot_request(void);
extern void pg2r_clear_wakeup(void);
extern bool pg2r_wakeup_pending(void);
extern void pg2r_report_state(Pg2rWorkerState state);
extern void pg2r_report_connected(bool connected);
extern void pg2r_report_error(const char *fmt, ...) pg_attribute_printf(1, 2);
extern void pg2r_clear_error(void);
extern void pg2r_report_applied(XLogRecPtr lsn, TimestampTz commit_time,
								uint64 transactions, uint64 commands,
								uint64 changes);
extern void pg2r_report_confirmed(XLogRecPtr lsn);
extern void pg2r_report_pending(TimestampTz oldest);
extern void pg2r_report_load_start(int tables_total, uint64 rows_estimate);
extern void pg2r_report_load_progress(int tables_done, uint64 rows);
extern void pg2r_report_load_end(void);
extern void pg2r_report_retry(void);
extern void pg2r_report_dead_letters(uint64 n);
extern void pg2r_set_careful_until(XLogRecPtr lsn);
extern XLogRecPtr pg2r_careful_until(void);
extern void		  pg2r_set_careful_load(bool on);
extern bool		  pg2r_careful_load(void);

/*
 * Per-relation statistics (pg2redis_relation_stats): counted by the worker
 * in local memory, published at each acknowledged block.
 */
#define PG2R_RELSTATS_MAX 1024

typedef struct Pg2rRelStats
{
	Oid			relid; /* InvalidOid: tables past PG2R_RELSTATS_MAX */
	uint64		changes;
	uint64		commands;
	uint64		dead_letters;
	TimestampTz last_applied;
} Pg2rRelStats;

extern void	 pg2r_relstats_count(Oid relid, uint64 changes, uint64 commands,
								 uint64 dead_letters);
extern void	 pg2r_relstats_publish(TimestampTz applied_at);
extern List *pg2r_relstats_read(void);

#endif /* PG2REDIS_STATE_H */
