/*-------------------------------------------------------------------------
 *
 * cluster.h
 *	  Redis Cluster topology: the slot map and the per-slot fence keys.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_CLUSTER_H
#define PG2REDIS_CLUSTER_H

#include <hiredis/hiredis.h>

#include "lib/stringinfo.h"
#include "pg2redis/keyslot.h"

#define CLUSTER_MAX_NODES 64

/* A primary of the slot map. */
typedef struct ClusterNode
{
	char *host;
	int	  port;
	int	  replicas; /* healthy replicas CLUSTER SLOTS lists for it */
} ClusterNode;

/* Which primary serves each hash slot, from CLUSTER SLOTS. */
typedef struct ClusterMap
{
	int			nnodes;
	ClusterNode nodes[CLUSTER_MAX_NODES];
	int16		slot_node[REDIS_CLUSTER_SLOTS]; /* index into nodes */
} ClusterMap;

extern bool cluster_parse_slots(const redisReply *reply, const char *seed_host,
								ClusterMap *map, char *err, size_t errlen);
/* room for a fence key: "pg2redis:" + a slot name + ":lsn:{nnnnnn}" */
#define CLUSTER_FENCE_KEY_LEN (NAMEDATALEN + 32)

extern char *cluster_fence_key(char *buf, const char *slot_name, int slot);
extern int	 cluster_fence_tag(int slot);

#endif /* PG2REDIS_CLUSTER_H */
