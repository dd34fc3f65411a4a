/*-------------------------------------------------------------------------
 *
 * redis_errors.h
 *	  Classifying Redis error replies (redis_errors.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_REDIS_ERRORS_H
#define PG2REDIS_REDIS_ERRORS_H

#include <hiredis/hiredis.h>

extern bool pg2r_error_code_in(const char *err, const char *const *codes,
							   size_t ncodes);
extern bool pg2r_error_is_transient(const char *err, bool cluster);
extern bool pg2r_error_is_redirect(const char *err, bool cluster,
								   bool sentinel);
extern const char *pg2r_redis_cluster_note(const char *err, bool cluster);
extern bool pg2r_redirection(const redisReply *reply, const char *current_host,
							 char **host, int *port, bool *asking);

#endif /* PG2REDIS_REDIS_ERRORS_H */
