/*-------------------------------------------------------------------------
 *
 * failover.h
 *	  Which server and timeline wrote the stream Redis holds, and the sweep
 *	  after a reload.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_FAILOVER_H
#define PG2REDIS_FAILOVER_H

/* What the worker does with a slot it found, given Redis's origin. */
typedef enum SlotVerdict
{
	SLOT_STREAM,	/* Redis holds this slot's stream (or no origin): go on */
	SLOT_RELOAD,	/* Redis holds another history: drop the slot, reload */
	SLOT_SUPERSEDED /* Redis holds a later timeline of this system: wait */
} SlotVerdict;

extern void		   failover_define_settings(void);
extern bool		   failover_load_needs_sweep(bool redis_has_position);
extern void		   failover_after_load(bool sweep, bool loaded_all);
extern SlotVerdict failover_check_slot(void);

#endif /* PG2REDIS_FAILOVER_H */
