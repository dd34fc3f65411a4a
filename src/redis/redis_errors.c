/*-------------------------------------------------------------------------
 *
 * redis_errors.c
 *	  What a Redis error reply means: retry it, follow it, or report it.
 *
 * Pure classification of the text of a Redis error reply (its code, the
 * first word), shared by the worker's sender and links and by the SQL
 * functions' clients: transient errors, redirections (and where a MOVED or
 * ASK points), errors only a Redis Cluster node sends.  It owns no state
 * and calls nothing of pg2redis: what it must know of the topology (a
 * cluster URL, Sentinel) is a parameter.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <hiredis/hiredis.h>

#include "pg2redis/redis_errors.h"

/*
 * pg2r_error_code_in tells whether a Redis error's code, its first word (e.g.
 * "MOVED" in "MOVED 3999 127.0.0.1:6381"), is one of codes.
 */
bool
pg2r_error_code_in(const char *err, const char *const *codes, size_t ncodes)
{
	size_t len = strcspn(err, " ");

	for (size_t i = 0; i < ncodes; i++)
		if (strlen(codes[i]) == len && strncmp(err, codes[i], len) == 0)
			return true;
	return false;
}

/* Errors only a Redis Cluster node sends: redirections, keys across slots. */
static const char *const cluster_codes[] = {"MOVED", "ASK", "CROSSSLOT",
											"CLUSTERDOWN", "TRYAGAIN"};

/*
 * pg2r_error_is_transient tells whether a Redis error is worth retrying as
 * is.  On a cluster (cluster: pg2redis.redis_url names one), redirections
 * are (the map is asked for again), but CROSSSLOT is about the command
 * itself: a dead letter.
 */
bool
pg2r_error_is_transient(const char *err, bool cluster)
{
	static const char *const codes[] = {"OOM",		  "LOADING",
										"BUSY",		  "READONLY",
										"MASTERDOWN", "NOREPLICAS"};
	static const char *const crossslot[] = {"CROSSSLOT"};

	if (cluster && pg2r_error_code_in(err, crossslot, 1))
		return false;
	return pg2r_error_code_in(err, codes, lengthof(codes)) ||
		   pg2r_error_code_in(err, cluster_codes, lengthof(cluster_codes));
}

/*
 * pg2r_redis_cluster_note returns a remark to append to a Redis error that
 * only a Redis Cluster node sends when pg2redis.redis_url names a standalone
 * server (cluster false), or "" for any other error.  The stream cannot go
 * on against such a node with such a URL: it stops and retries, losing
 * nothing, until the URL is changed.
 */
const char *
pg2r_redis_cluster_note(const char *err, bool cluster)
{
	if (!cluster &&
		pg2r_error_code_in(err, cluster_codes, lengthof(cluster_codes)))
		return " (pg2redis.redis_url names a node of a Redis Cluster, or a "
			   "proxy of a sharded database that refuses a MULTI across hash "
			   "slots; write it as redis-cluster://host:port, with the OSS "
			   "Cluster API enabled on Redis Enterprise or Redis Cloud)";
	return "";
}

/*
 * pg2r_error_is_redirect tells whether err, a reply of a node, says the
 * slot map changed or is changing (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, on a
 * cluster), or, behind Sentinel (sentinel), that the primary moved.
 */
bool
pg2r_error_is_redirect(const char *err, bool cluster, bool sentinel)
{
	static const char *const codes[] = {"MOVED", "ASK", "TRYAGAIN",
										"CLUSTERDOWN"};

	static const char *const readonly[] = {"READONLY"};

	/* behind Sentinel, a primary demoted by a failover answers READONLY */
	return (cluster && pg2r_error_code_in(err, codes, lengthof(codes))) ||
		   (sentinel && pg2r_error_code_in(err, readonly, 1));
}

/*
 * pg2r_redirection reads "MOVED <slot> <host>:<port>" or "ASK ..." from a
 * cluster node's error into *host and *port (an empty host: the node that
 * answered, current_host); false for any other reply.
 */
bool
pg2r_redirection(const redisReply *reply, const char *current_host,
				 char **host, int *port, bool *asking)
{
	const char *addr;
	const char *colon;

	if (reply->type != REDIS_REPLY_ERROR)
		return false;
	if (strncmp(reply->str, "MOVED ", 6) == 0)
		*asking = false;
	else if (strncmp(reply->str, "ASK ", 4) == 0)
		*asking = true;
	else
		return false;
	addr = strchr(strchr(reply->str, ' ') + 1, ' ');
	if (addr == NULL || (colon = strrchr(addr + 1, ':')) == NULL)
		return false;
	*port = atoi(colon + 1);
	if (*port <= 0 || *port > 65535)
		return false;
	*host = colon > addr + 1 ? pnstrdup(addr + 1, colon - addr - 1)
							 : pstrdup(current_host);
	return true;
}
