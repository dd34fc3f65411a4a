/*-------------------------------------------------------------------------
 *
 * stages.h
 *	  Where the worker's time goes: decode, map and render, append, I/O and
 *	  waiting for Redis (pg2redis.stage_timing).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_STAGES_H
#define PG2REDIS_STAGES_H

typedef enum Pg2rStage
{
	PG2R_STAGE_OTHER,  /* the main loop, bookkeeping */
	PG2R_STAGE_DECODE, /* reading WAL and the reorder buffer */
	PG2R_STAGE_MAP,	   /* rules: deforming, rendering, expanding */
	PG2R_STAGE_APPEND, /* commands into the block's RESP, closing blocks */
	PG2R_STAGE_IO,	   /* sending blocks, reading replies */
	PG2R_STAGE_WAIT,   /* blocked until Redis or the latch is ready */
	PG2R_NSTAGES
} Pg2rStage;

extern bool pg2r_stage_timing;

extern Pg2rStage pg2r_stage_switch(Pg2rStage stage);
extern void		 pg2r_stage_count_changes(uint64 n);
extern void		 pg2r_stage_report(void);

/*
 * pg2r_stage_enter charges the time since the last switch to the current
 * stage and makes stage current; returns the stage to go back to.  Without
 * pg2redis.stage_timing it costs a test.
 */
static inline Pg2rStage
pg2r_stage_enter(Pg2rStage stage)
{
	return pg2r_stage_timing ? pg2r_stage_switch(stage) : stage;
}

/* pg2r_stage_leave goes back to the stage pg2r_stage_enter returned. */
static inline void
pg2r_stage_leave(Pg2rStage back)
{
	if (pg2r_stage_timing)
		(void) pg2r_stage_switch(back);
}

#endif /* PG2REDIS_STAGES_H */
