/*-------------------------------------------------------------------------
 *
 * stages.c
 *	  Per-stage time of the worker, for tuning (pg2redis.stage_timing).
 *
 * With pg2redis.stage_timing on, the worker charges its time to the stage
 * it is in: the decoder (WAL reading, reorder buffer), the rules (map and
 * render), appending commands to the block, I/O with Redis, or waiting for
 * Redis or the latch.  Stages switch a few times per row change; each
 * switch reads the time stamp counter once (stage_clock), so the figures
 * are elapsed time in each stage, scaled to the thread's CPU time (see
 * pg2r_stage_report).  Whenever the worker reaches the end of
 * WAL after changes, it logs the figures since the last report and starts
 * again:
 *
 *	  LOG:  pg2redis stage times: 300000 changes, 5.07 us CPU per change:
 *	  decode 1.70, map 2.20, append 0.45, io 0.62, other 0.10; wait 0.80 s;
 *	  busy 2.31 s
 *
 * Off (the default), every switch is a test of the flag.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#include "utils/timestamp.h"

#include "pg2redis/stages.h"

bool pg2r_stage_timing = false;

static Pg2rStage	   cur_stage = PG2R_STAGE_OTHER;
static uint64		   last_switch;
static uint64		   spent[PG2R_NSTAGES];
static uint64		   changes = 0;
static bool			   started = false;
static struct timespec cpu_from;
static TimestampTz	   wall_from;
static uint64		   ticks_from;

/*
 * stage_clock reads a clock that only ever goes forward, in ticks of any
 * constant rate: the CPU's time stamp counter where there is one (a few
 * cycles, where even the vDSO clock took 6 % of the worker's time), else
 * the monotonic clock in nanoseconds.
 */
static inline uint64
stage_clock(void)
{
#if defined(__x86_64__) || defined(__i386__)
	return __rdtsc();
#else
	struct timespec ts;

	(void) clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64) ts.tv_sec * 1000000000 + ts.tv_nsec;
#endif
}

/* thread_cpu reads the calling thread's CPU time. */
static struct timespec
thread_cpu(void)
{
	struct timespec ts = {0, 0};

	(void) clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts;
}

/*
 * pg2r_stage_switch charges the time since the last switch to the current
 * stage and makes stage current; returns the stage that was current.
 */
Pg2rStage
pg2r_stage_switch(Pg2rStage stage)
{
	uint64	  now = stage_clock();
	Pg2rStage was = cur_stage;

	if (!started)
	{
		started = true;
		cpu_from = thread_cpu();
		wall_from = GetCurrentTimestamp();
		ticks_from = now;
	}
	else
		spent[was] += now - last_switch;
	last_switch = now;
	cur_stage = stage;
	return was;
}

/* pg2r_stage_count_changes counts n decoded row changes. */
void
pg2r_stage_count_changes(uint64 n)
{
	changes += n;
}

/*
 * pg2r_stage_report logs the stage totals since the last report, when
 * changes were decoded since, and starts counting again (also when none
 * were: a caller that is about to idle for long starts afresh).
 *
 * The clock measures wall time: on a busy machine the worker is preempted,
 * in any stage alike, so the stages are scaled to the thread's CPU time
 * over the same span (waits left out), which the log line reports per
 * change.
 */
void
pg2r_stage_report(void)
{
	struct timespec cpu;
	TimestampTz		wall;
	double			cpu_us;
	double			busy = 0;
	double			us_per_tick;
	double			per[PG2R_NSTAGES];

	if (!pg2r_stage_timing || !started)
		return;
	(void) pg2r_stage_switch(cur_stage);
	cpu = thread_cpu();
	wall = GetCurrentTimestamp();
	cpu_us = (double) (cpu.tv_sec - cpu_from.tv_sec) * 1e6 +
			 (double) (cpu.tv_nsec - cpu_from.tv_nsec) / 1e3;
	us_per_tick =
		last_switch > ticks_from
			? (double) (wall - wall_from) / (double) (last_switch - ticks_from)
			: 0;
	for (int s = 0; s < PG2R_NSTAGES; s++)
		if (s != PG2R_STAGE_WAIT)
			busy += (double) spent[s];
	for (int s = 0; s < PG2R_NSTAGES; s++)
		per[s] = busy > 0 ? (double) spent[s] * cpu_us / busy /
								(double) Max(changes, 1)
						  : 0;
	if (changes > 0)
		ereport(LOG,
				(errmsg("stage times: " UINT64_FORMAT
						" changes, %.2f us CPU per change: decode %.2f, map %.2f, append %.2f, io %.2f, other %.2f; wait %.3f s; busy %.3f s",
						changes, cpu_us / (double) changes,
						per[PG2R_STAGE_DECODE], per[PG2R_STAGE_MAP],
						per[PG2R_STAGE_APPEND], per[PG2R_STAGE_IO],
						per[PG2R_STAGE_OTHER],
						(double) spent[PG2R_STAGE_WAIT] * us_per_tick / 1e6,
						busy * us_per_tick / 1e6)));
	memset(spent, 0, sizeof(spent));
	changes = 0;
	cpu_from = cpu;
	wall_from = wall;
	ticks_from = last_switch;
}
