/*-------------------------------------------------------------------------
 *
 * sender.h
 *	  Decoded transactions to Redis: blocks, the fence, replies, retries.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_SENDER_H
#define PG2REDIS_SENDER_H

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
#include "pg2redis/common.h"

struct Rule;

/* A command Redis rejected or a rule could not render, to be recorded. */
typedef struct DeadLetter
{
	XLogRecPtr	  lsn;
	TransactionId xid;
	Oid			  relid;
	Pg2rOp		  op;
	int			  argc;
	char		**argv;
	char		 *error;
	Oid			  keyindex; /* the row's key: its index, or InvalidOid */
	int			  nkeys;	/* and its columns' text, in index order */
	char		**key;
} DeadLetter;

/*
 * What the sender calls back into the process that runs it (the worker):
 * the sender sits below the worker and does not include it.
 */
typedef struct SenderHooks
{
	void (*confirm)(XLogRecPtr lsn);   /* Redis has everything before lsn */
	XLogRecPtr (*confirmed_lsn)(void); /* the slot's confirmed position */
	void (*interrupts)(void);		   /* serve SIGTERM and SIGHUP */
} SenderHooks;

extern void sender_init(const SenderHooks *hooks);
extern void sender_begin_txn(TransactionId xid, XLogRecPtr commit_lsn,
							 XLogRecPtr end_lsn, TimestampTz commit_time);
extern bool sender_txn_skipped(void);
extern void sender_count_change(void);
/* CommandSink callbacks; arg points to the changed relation's Oid. */
extern void	 sender_command(void *arg, const struct Rule *rule, Pg2rOp op,
							int argc, const char *const *argv,
							const size_t *argvlen);
extern void	 sender_render_error(void *arg, const struct Rule *rule, Pg2rOp op,
								 const Pg2rError *err);
extern void	 sender_change_error(Oid relid, Pg2rOp op, const char *message);
extern void	 sender_set_row_key(Oid keyindex, int nkeys, char **key);
extern void	 sender_clear_row_key(void);
extern void	 sender_commit_txn(void);
extern bool	 sender_ready(void);
extern bool	 sender_idle(void);
extern bool	 sender_stopped(void);
extern bool	 sender_applied_through(XLogRecPtr lsn);
extern void	 sender_flush(void);
extern bool	 sender_batch_open_longer_than(int ms);
extern void	 sender_service(long timeout_ms);
extern void	 sender_reconfigure(void);
extern void	 sender_disconnect(void);
extern List *sender_take_dead_letters(void);
extern bool	 sender_has_dead_letters(void);
extern void	 sender_set_idle_position(XLogRecPtr lsn);
extern bool	 sender_reset_fence(void);
extern bool	 sender_has_position(void);

/* For the initial load, which waits for Redis itself, holding no lock. */
extern bool	  sender_part_full(void);
extern void	  sender_caller_parts(void);
extern void	  sender_end_part(void);
extern bool	  sender_inflight(void);
extern uint64 sender_txn_seq(void);
extern bool	  sender_applied_part(XLogRecPtr end_lsn, uint64 ncmds);

#endif /* PG2REDIS_SENDER_H */
