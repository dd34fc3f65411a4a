/*-------------------------------------------------------------------------
 *
 * verify.h
 *	  pg2redis_verify()'s orphan search, for the worker's sweep after a
 *	  reload.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_VERIFY_H
#define PG2REDIS_VERIFY_H

extern int64 verify_sweep(char **detail);

#endif /* PG2REDIS_VERIFY_H */
