/*-------------------------------------------------------------------------
 *
 * cluster.c
 *	  Redis Cluster topology: the slot map and the per-slot fence keys.
 *
 * In cluster mode (redis-cluster:// URLs) the sender keeps one link per
 * primary and routes every command by its key's hash slot; this file holds
 * what that routing needs and that has nothing to do with sockets:
 *
 * - the slot map, parsed from a CLUSTER SLOTS reply (every Redis version
 *   with Cluster answers it; CLUSTER SHARDS is 7.0+ and adds nothing here);
 *
 * - the fence key of each slot.  A MULTI/EXEC is refused by a cluster unless
 *   all its keys are in one slot, so the stream position that makes the
 *   stream exactly-once is kept per slot, in a key of that very slot:
 *   "pg2redis:<slot_name>:lsn:{<tag>}", where <tag> is the smallest decimal
 *   number whose CRC16 lands in the slot.  Every slot has such a number
 *   below 110,000, found once per process.  Because the fence is an ordinary
 *   key of its slot, it is written in the same MULTI as the slot's commands
 *   and moves with the slot's other keys when the cluster is resharded.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "pg2redis/cluster.h"

static int32 fence_tags[REDIS_CLUSTER_SLOTS];
static bool	 fence_tags_ready = false;

/*
 * fence_tags_init finds, for every slot, the smallest decimal number that
 * hashes to it.
 */
static void
fence_tags_init(void)
{
	int missing = REDIS_CLUSTER_SLOTS;

	for (int s = 0; s < REDIS_CLUSTER_SLOTS; s++)
		fence_tags[s] = -1;
	for (int32 n = 0; missing > 0; n++)
	{
		char buf[16];
		int	 len = snprintf(buf, sizeof(buf), "%d", n);
		int	 s = redis_key_slot(buf, len);

		if (fence_tags[s] < 0)
		{
			fence_tags[s] = n;
			missing--;
		}
	}
	fence_tags_ready = true;
}

/* cluster_fence_tag returns the hash tag of slot's fence key. */
int
cluster_fence_tag(int slot)
{
	if (!fence_tags_ready)
		fence_tags_init();
	return fence_tags[slot];
}

/*
 * cluster_fence_key writes the fence key of a slot into buf (at least
 * CLUSTER_FENCE_KEY_LEN bytes) and returns it: with slot < 0 (a standalone
 * server) the one key "pg2redis:<slot_name>:lsn".
 */
char *
cluster_fence_key(char *buf, const char *slot_name, int slot)
{
	if (slot >= 0)
		snprintf(buf, CLUSTER_FENCE_KEY_LEN, "pg2redis:%s:lsn:{%d}", slot_name,
				 cluster_fence_tag(slot));
	else
		snprintf(buf, CLUSTER_FENCE_KEY_LEN, "pg2redis:%s:lsn", slot_name);
	return buf;
}

/* reply_int reads an integer element of a CLUSTER SLOTS entry. */
static bool
reply_int(const redisReply *r, long long *out)
{
	if (r->type != REDIS_REPLY_INTEGER)
		return false;
	*out = r->integer;
	return true;
}

/*
 * find_node returns the index of host:port in map, adding it when new;
 * -1 when the map is full.
 */
static int
find_node(ClusterMap *map, const char *host, int port)
{
	for (int i = 0; i < map->nnodes; i++)
		if (map->nodes[i].port == port &&
			strcmp(map->nodes[i].host, host) == 0)
			return i;
	if (map->nnodes == CLUSTER_MAX_NODES)
		return -1;
	map->nodes[map->nnodes].host = pstrdup(host);
	map->nodes[map->nnodes].port = port;
	map->nodes[map->nnodes].replicas = 0;
	return map->nnodes++;
}

/*
 * cluster_parse_slots fills *map (host names palloc'd in the current
 * context) from a CLUSTER SLOTS reply: entries [start, end, primary,
  * replica...], each node as [ip, port, id, ...].  A node announced without
 * an endpoint (NULL or "") is the node that answered, seed_host; one whose
 * endpoint is unknown ("?") cannot be reached.  Returns
 * false with a message in err when the reply is not such a map or leaves a
 * slot without a primary (the cluster is not serving every slot).
 */
bool
cluster_parse_slots(const redisReply *reply, const char *seed_host,
					ClusterMap *map, char *err, size_t errlen)
{
	int covered = 0;

	map->nnodes = 0;
	for (int s = 0; s < REDIS_CLUSTER_SLOTS; s++)
		map->slot_node[s] = -1;
	if (reply->type != REDIS_REPLY_ARRAY)
	{
		snprintf(err, errlen, "CLUSTER SLOTS did not return a slot map");
		return false;
	}
	for (size_t i = 0; i < reply->elements; i++)
	{
		const redisReply *e = reply->element[i];
		const redisReply *primary;
		long long		  start, end, port;
		const char		 *host;
		int				  node;

		if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
			!reply_int(e->element[0], &start) ||
			!reply_int(e->element[1], &end) || start < 0 || end < start ||
			end >= REDIS_CLUSTER_SLOTS)
		{
			snprintf(err, errlen, "CLUSTER SLOTS returned a malformed entry");
			return false;
		}
		primary = e->element[2];
		if (primary->type != REDIS_REPLY_ARRAY || primary->elements < 2 ||
			(primary->element[0]->type != REDIS_REPLY_STRING &&
			 primary->element[0]->type != REDIS_REPLY_NIL) ||
			!reply_int(primary->element[1], &port) || port < 1 || port > 65535)
		{
			snprintf(err, errlen,
					 "CLUSTER SLOTS returned a malformed node entry");
			return false;
		}
		/* no endpoint (NULL or ""): the node that answered, on that port */
		host = primary->element[0]->type == REDIS_REPLY_NIL
				   ? seed_host
				   : primary->element[0]->str;
		if (host[0] == '\0')
			host = seed_host;
		if (strcmp(host, "?") == 0)
		{
			snprintf(err, errlen,
					 "the Redis Cluster announces a primary (port %lld) without an endpoint; set cluster-announce-hostname or cluster-preferred-endpoint-type ip",
					 port);
			return false;
		}
		node = find_node(map, host, (int) port);
		if (node < 0)
		{
			snprintf(err, errlen,
					 "the Redis Cluster has more than %d primaries",
					 CLUSTER_MAX_NODES);
			return false;
		}
		map->nodes[node].replicas =
			Max(map->nodes[node].replicas, (int) e->elements - 3);
		for (long long s = start; s <= end; s++)
		{
			if (map->slot_node[s] < 0)
				covered++;
			map->slot_node[s] = (int16) node;
		}
	}
	if (covered < REDIS_CLUSTER_SLOTS)
	{
		for (int s = 0; s < REDIS_CLUSTER_SLOTS; s++)
			if (map->slot_node[s] < 0)
			{
				snprintf(err, errlen,
						 "the Redis Cluster serves only %d of %d hash slots (slot %d has no primary)",
						 covered, REDIS_CLUSTER_SLOTS, s);
				break;
			}
		return false;
	}
	return true;
}
