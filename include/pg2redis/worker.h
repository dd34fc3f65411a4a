/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The background worker: what other modules call back into.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_WORKER_H
#define PG2REDIS_WORKER_H

#include "access/xlogdefs.h"

/* True in the pg2redis worker process only. */
extern bool pg2r_in_worker;

#endif /* PG2REDIS_WORKER_H */
