/*-------------------------------------------------------------------------
 *
 * cli.h
 *	  Splitting a command written as in redis-cli (cli.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_CLI_H
#define PG2REDIS_CLI_H

#include "nodes/pg_list.h"
#include "pg2redis/common.h"

extern List *pg2r_split_cli(const char *command, Pg2rError *err);

#endif /* PG2REDIS_CLI_H */
