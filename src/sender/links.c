/*-------------------------------------------------------------------------
 *
 * links.c
 *	  The connections to Redis: one link to a standalone server, or one to
 *	  each primary of a Redis Cluster, and the slot map.
 *
 * Each link is a small state machine (down, connecting, handshake, ready)
 * driven by sender_service(), which waits on the latch and every socket
 * with the deadlines of pg2redis.redis_timeout.  The handshake
 * authenticates, ends the connection this one replaces (CLIENT KILL by id
 * and address, so that a block still queued in a stalled server's input
 * cannot run after the positions were read), and reads the stream position
 * of every slot the link serves; on a first connect it also makes those
 * positions durable on the replicas (a write and WAIT).  Once every link is
 * ready, src/sender/sender.c decides what of the block in flight Redis has
 * (pg2r_topo_ready).
 *
 * Behind Redis Sentinel (redis-sentinel:// URLs) the map link asks a
 * sentinel (each in turn, one more each attempt) for the primary's address,
 * and the data link checks with ROLE that the server is a primary: a
 * replica (a failover under way, or a sentinel's stale view) drops the link
 * and the sentinels are asked again.  While ready, a sentinel is asked
 * again every SENTINEL_CHECK_MS on a connection of its own; a new primary
 * drops the links.  A primary that fails, or that the sentinels demote
 * (they end its clients' connections, and it answers READONLY), drops them
 * too; every reconnect starts with the sentinels.  The sentinels get their
 * own credentials when pg2redis.redis_sentinel_password_file is set, else
 * the data nodes'; a sentinel without a password refusing those is used as
 * it is.
 *
 * In a cluster the slot map comes from CLUSTER SLOTS, asked of a node of the
 * last map or a seed of the URL, and is checked again every MAP_REFRESH_MS
 * on a connection of its own.  Any failure, and any redirection (MOVED,
 * ASK, TRYAGAIN, CLUSTERDOWN), drops every link (pg2r_topo_fail); after a
 * back-off with jitter (gentle for redirections: the cluster is healthy,
 * its map changes) the map is asked for again and the links reconnect.
 * Nothing here blocks without a deadline, and nothing raises an ERROR for
 * a Redis failure.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <netdb.h>

#include "common/pg_prng.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg2redis/cluster.h"
#include "pg2redis/compat.h"
#include "pg2redis/keyslot.h"
#include "pg2redis/redis_io.h"
#include "pg2redis/sender.h"
#include "pg2redis/settings.h"
#include "pg2redis/stages.h"
#include "pg2redis/state.h"

#include "sender_int.h"

#define MAP_REFRESH_MS 5000	   /* how often a cluster's slot map is checked */
#define SENTINEL_CHECK_MS 1000 /* how often the sentinels are asked again */

/* the next pg2r_topo_fail is a redirection */
static bool redirect_next = false;

static void		   link_close(Link *l);
static void		   topo_close(void);
static void		   map_check_done(void);
static bool		   map_equal(const ClusterMap *a, const ClusterMap *b);
static void		   map_check_start(void);
static int		   client_slot(const char *name, bool add);
static char		  *info_field(const char *info, const char *key);
static void		   remember_client(Link *l, const redisReply *r);
static const char *client_name(void);
static void		   link_named_kills(Link *l, const redisReply *r);
static bool		   link_start(Link *l, const char *host, int port);
static void		   topo_connect(void);
static void		   forget_other_clients(const ClusterMap *map);
static void		   topo_forget_map(void);
static void		   topo_use_map(ClusterMap *map);
static void		   link_ready(Link *l);
static bool		   handle_sentinel_reply(Link *l, redisReply *r);
static bool		   handle_role_reply(Link *l, redisReply *r);
static bool handle_sync_reply(int li, Link *l, redisReply *r, int which);
static bool handle_handshake_reply(int li, Link *l, redisReply *r);
static bool link_write(Link *l);
static bool link_read(int li, Link *l);
static bool link_awaiting(const Link *l);
static int	link_events(const Link *l);
static bool link_step(int li, Link *l, int events);

/*
 * pg2r_link_reset makes *l an unused, closed link (its socket is not 0, which a
 * later close would take for a real descriptor).
 */
void
pg2r_link_reset(Link *l)
{
	memset(l, 0, sizeof(Link));
	redis_conn_init(&l->conn);
}

/*
 * pg2r_link_arm_deadline gives l pg2redis.redis_timeout from now for what it
 * waits for (a connection, a reply, room to write).
 */
void
pg2r_link_arm_deadline(Link *l)
{
	l->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											  pg2r_redis_timeout_ms);
}

/*
 * pg2r_wait_timeout_ms returns the timeout WAIT is given: half of
 * pg2redis.redis_timeout (the reply's own deadline is the whole of it), at
 * least 1 ms.
 */
int
pg2r_wait_timeout_ms(void)
{
	return Max(pg2r_redis_timeout_ms / 2, 1);
}

/*
 * pg2r_wait_reply_ok tells whether r, the reply to a WAIT for n replicas,
 * reports that at least n got the writes before it; *replicated is how many
 * it reports (0 for an error).  The caller drops the links when not.
 */
bool
pg2r_wait_reply_ok(const redisReply *r, int n, long long *replicated)
{
	*replicated = r->type == REDIS_REPLY_INTEGER ? r->integer : 0LL;
	return r->type == REDIS_REPLY_INTEGER && r->integer >= n;
}

/* link_close closes a link's connection. */
static void
link_close(Link *l)
{
	redis_close(&l->conn);
	l->state = LINK_DOWN;
	l->deadline = 0;
	l->npend = 0;
	l->wait_sent = false;
	l->skip = 0;
}

/* topo_close closes every link. */
static void
topo_close(void)
{
	for (int li = 0; li < snd.topo.nlinks; li++)
		link_close(&snd.topo.links[li]);
	link_close(&snd.topo.maplink);
}

/*
 * map_check_done closes the map link after a check of the slot map while
 * the links are ready, and forgets what it used.
 */
static void
map_check_done(void)
{
	link_close(&snd.topo.maplink);
	MemoryContextReset(snd.map_cxt);
	pg2r_link_reset(&snd.topo.maplink);
	snd.topo.map_read_at = GetCurrentTimestamp();
}

/*
 * map_equal tells whether two slot maps route every slot to the same
 * primary, with the same number of replicas.
 */
static bool
map_equal(const ClusterMap *a, const ClusterMap *b)
{
	/* b's node i is a's node same[i]; nodes come in any order */
	int same[CLUSTER_MAX_NODES];

	if (a->nnodes != b->nnodes)
		return false;
	for (int i = 0; i < b->nnodes; i++)
	{
		same[i] = -1;
		for (int j = 0; j < a->nnodes; j++)
			if (a->nodes[j].port == b->nodes[i].port &&
				a->nodes[j].replicas == b->nodes[i].replicas &&
				strcmp(a->nodes[j].host, b->nodes[i].host) == 0)
				same[i] = j;
		if (same[i] < 0)
			return false;
	}
	for (int s = 0; s < REDIS_CLUSTER_SLOTS; s++)
		if (a->slot_node[s] != same[b->slot_node[s]])
			return false;
	return true;
}

/*
 * map_check_start asks a primary for the slot map, on a connection of its
 * own, to notice replicas added or removed and slots moved without a
 * redirection having told (every MAP_REFRESH_MS while the links are ready);
 * behind Redis Sentinel, asks the next sentinel for the primary (every
 * SENTINEL_CHECK_MS).
 */
static void
map_check_start(void)
{
	static int next = 0;
	int		   i;

	snd.topo.maplink.is_map = true;
	if (snd.topo.sentinel)
	{
		i = next++ % snd.topo.target.nseeds;
		(void) link_start(&snd.topo.maplink, snd.topo.target.seed_hosts[i],
						  snd.topo.target.seed_ports[i]);
		return;
	}
	i = next++ % snd.topo.map->nnodes;
	(void) link_start(&snd.topo.maplink, snd.topo.map->nodes[i].host,
					  snd.topo.map->nodes[i].port);
}

/*
 * pg2r_topo_fail drops every link, records why (naming link l's server in a
 * cluster), and schedules a reconnect after a backoff with jitter.
 */
void
pg2r_topo_fail(Link *l, const char *fmt, ...)
{
	char	msg[512];
	char	full[600];
	va_list ap;
	long	delay;
	bool	redirect = redirect_next;

	if (l == &snd.topo.maplink && snd.topo.state == TOPO_READY)
	{
		/* a failed check of the slot map: the links are fine */
		redirect_next = false;
		map_check_done();
		return;
	}


	redirect_next = false;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (snd.topo.cluster && l && l->name)
		snprintf(full, sizeof(full), "%s: %s", l->name, msg);
	else
		strlcpy(full, msg, sizeof(full));

	topo_close();
	snd.topo.state = TOPO_DOWN;
	delay = pg2r_retry_initial_ms;
	if (redirect)
	{
		/* the cluster changes its map: back off gently, up to 16 x */
		snd.topo.redirects++;
		delay = Min((long) delay << Min(snd.topo.redirect_streak, 4),
					pg2r_retry_max_ms);
		snd.topo.redirect_streak++;
	}
	else
	{
		for (int i = 0; i < snd.topo.attempts && delay < pg2r_retry_max_ms;
			 i++)
			delay *= 2;
		delay = Min(delay, pg2r_retry_max_ms);
		snd.topo.attempts++;
	}
	delay =
		(long) (delay * (0.5 + 0.5 * pg_prng_double(&pg_global_prng_state)));
	snd.topo.next_attempt =
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay);
	pg2r_inflight_restart();
	pg2r_report_connected(false);
	pg2r_report_retry();
	pg2r_report_error("%s", full);
	if (!snd.stopped)
		pg2r_report_state(PG2R_STATE_REDIS_UNAVAILABLE);
	if (redirect ? snd.topo.redirects % 100 == 1
				 : snd.topo.attempts == 1 || snd.topo.attempts % 20 == 0)
		ereport(LOG,
				(redirect && snd.topo.sentinel
					 ? errmsg("the Redis primary behind the sentinels at %s is failing over: %s",
							  snd.topo.target.display, full)
				 : redirect
					 ? errmsg("the Redis Cluster at %s is moving slots or failing over: %s",
							  snd.topo.target.display, full)
					 : errmsg("Redis at %s is unavailable: %s",
							  snd.topo.target.display, full),
				 errdetail("Retrying in %ld ms.", delay)));
}

/*
 * pg2r_note_redirect tells the next pg2r_topo_fail() that err, a reply of a cluster
 * node, says the slot map changed or is changing (MOVED, ASK, TRYAGAIN,
 * CLUSTERDOWN): the map is read again after the initial backoff only.
 */
void
pg2r_note_redirect(const char *err)
{
	redirect_next =
		pg2r_error_is_redirect(err, snd.topo.cluster, snd.topo.sentinel);
}

/*
 * client_slot returns the index in topo.clients of server name, or -1;
 * with add, a free (or the oldest) entry for it.
 */
static int
client_slot(const char *name, bool add)
{
	static int next = 0;

	for (int c = 0; c < (int) lengthof(snd.topo.clients); c++)
		if (snd.topo.clients[c].name &&
			strcmp(snd.topo.clients[c].name, name) == 0)
			return c;
	if (!add)
		return -1;
	for (int c = 0; c < (int) lengthof(snd.topo.clients); c++)
		if (snd.topo.clients[c].name == NULL)
			return c;
	return next++ % lengthof(snd.topo.clients);
}

/*
 * info_field copies the value of "key=" in a CLIENT INFO line into a new
 * string in SenderCxt, or returns NULL.
 */
static char *
info_field(const char *info, const char *key)
{
	size_t		klen = strlen(key);
	const char *p = info;

	while (p && *p)
	{
		if (strncmp(p, key, klen) == 0 && p[klen] == '=')
		{
			size_t len;
			char  *v;

			p += klen + 1;
			len = strcspn(p, " \r\n");
			v = MemoryContextAlloc(snd.cxt, len + 1);
			memcpy(v, p, len);
			v[len] = '\0';
			return v;
		}
		p = strchr(p, ' ');
		if (p)
			p++;
	}
	return NULL;
}

/*
 * client_name returns the name every data connection of this worker takes
 * (CLIENT SETNAME): one per slot name, so that the next worker finds them.
 */
static const char *
client_name(void)
{
	static char name[NAMEDATALEN + 16];

	snprintf(name, sizeof(name), "pg2redis:%s", pg2r_slot_name);
	return name;
}

/*
 * link_named_kills reads CLIENT LIST (reply r) and queues a CLIENT KILL for
 * every other connection named as this worker's, then the fence GETs of
 * the link: the server runs one command at a time, so a block still queued
 * on such a connection has either run before the GETs, or never will.
 */
static void
link_named_kills(Link *l, const redisReply *r)
{
	MemoryContext old = MemoryContextSwitchTo(snd.topo_cxt);
	char		  key[CLUSTER_FENCE_KEY_LEN];
	const char	 *name = client_name();
	size_t		  nlen = strlen(name);
	static bool	  warned = false;

	if (r->type != REDIS_REPLY_STRING || l->my_id == NULL)
	{
		if (!warned)
			ereport(LOG,
					(errmsg("cannot end the connections an earlier worker left on Redis at %s",
							l->name),
					 errdetail("%s", r->type == REDIS_REPLY_ERROR
										 ? r->str
										 : "CLIENT INFO gave no id"),
					 errhint("Grant the Redis user +client|setname, +client|info, +client|list and +client|kill, or a block of a killed worker may run twice.")));
		warned = true;
	}
	else
	{
		const char *line = r->str;

		while (line && *line)
		{
			const char *end = strchr(line, '\n');
			char	   *id = info_field(line, "id");
			const char *n = strstr(line, " name=");

			if (id && n && (end == NULL || n < end) &&
				strncmp(n + 6, name, nlen) == 0 &&
				(n[6 + nlen] == ' ' || n[6 + nlen] == '\r' ||
				 n[6 + nlen] == '\n') &&
				strcmp(id, l->my_id) != 0)
			{
				redis_append_cstrings(&l->hs, 4, "CLIENT", "KILL", "ID", id);
				l->hs_extra++;
			}
			if (id)
				pfree(id);
			line = end ? end + 1 : NULL;
		}
	}
	for (int i = 0; i < l->hs_nslots; i++)
		redis_append_cstrings(&l->hs, 2, "GET",
							  cluster_fence_key(key, pg2r_slot_name,
												snd.topo.cluster
													? l->hs_slots[i]
													: -1));
	MemoryContextSwitchTo(old);
}

/* remember_client records which connection l is, from CLIENT INFO. */
static void
remember_client(Link *l, const redisReply *r)
{
	int	  c;
	char *id, *addr;

	if (r->type != REDIS_REPLY_STRING)
		return; /* older than Redis 6.2, or not granted: nothing to end */
	id = info_field(r->str, "id");
	l->my_id = id ? MemoryContextStrdup(snd.topo_cxt, id) : NULL;
	addr = info_field(r->str, "addr");
	if (id == NULL || addr == NULL)
	{
		if (id)
			pfree(id);
		if (addr)
			pfree(addr);
		return;
	}
	c = client_slot(l->name, true);
	if (snd.topo.clients[c].name == NULL)
		snd.topo.clients[c].name = MemoryContextStrdup(snd.cxt, l->name);
	else if (strcmp(snd.topo.clients[c].name, l->name) != 0)
	{
		pfree(snd.topo.clients[c].name);
		snd.topo.clients[c].name = MemoryContextStrdup(snd.cxt, l->name);
	}
	if (snd.topo.clients[c].id)
		pfree(snd.topo.clients[c].id);
	if (snd.topo.clients[c].addr)
		pfree(snd.topo.clients[c].addr);
	snd.topo.clients[c].id = id;
	snd.topo.clients[c].addr = addr;
}

/*
 * link_start begins connecting l to host:port; the handshake (AUTH, then
 * CLUSTER SLOTS for the map link or the fence GETs of its slots) is queued
 * to go once connected.
 */
static bool
link_start(Link *l, const char *host, int port)
{
	MemoryContext old =
		MemoryContextSwitchTo(l->is_map ? snd.map_cxt : snd.topo_cxt);


	redis_conn_init(&l->conn);
	if (l->is_map && snd.topo.sentinel)
		redis_sentinel_target(&snd.topo.target, 0,
							  &l->target); /* creds, db 0 */
	else
		l->target = snd.topo.target;
	if (!snd.topo.target.unix_socket)
	{
		l->target.host = pstrdup(host);
		l->target.port = port;
	}
	l->name = snd.topo.target.unix_socket ? pstrdup(snd.topo.target.path)
										  : psprintf("%s:%d", host, port);
	initStringInfo(&l->hs);
	initStringInfo(&l->out);
	l->segs = NULL;
	l->nsegs = l->seg = 0;
	l->segcap = 0;
	l->skip = 0;
	l->hs_written = 0;
	l->hs_seen = 0;
	l->hs_setup = redis_append_handshake(&l->hs, &l->target);
	l->hs_extra = 0;

	l->hs_role = -1;
	if (l->is_map && snd.topo.sentinel)
	{
		redis_append_cstrings(&l->hs, 3, "SENTINEL", "GET-MASTER-ADDR-BY-NAME",
							  snd.topo.target.master_name);
	}
	else if (l->is_map)
		redis_append_cstrings(&l->hs, 2, "CLUSTER", "SLOTS");
	else
	{
		int c = client_slot(l->name, false);

		/*
		 * The connection this one replaces may still have a block in the
		 * server's input buffer (the server stalled, or the network): it
		 * would run after the fences are read here.  End it first; the
		 		 * server runs commands one at a time, so after the KILL that block
		 * either ran (and the fences show it) or never will.  Not over a
		 * unix socket: every client there has the address "<path>:0", and
		 * after a restart of the server another client may have our old id.
		 */
		if (c >= 0 && snd.topo.clients[c].id && !snd.topo.target.unix_socket)
		{
			redis_append_cstrings(&l->hs, 6, "CLIENT", "KILL", "ID",
								  snd.topo.clients[c].id, "ADDR",
								  snd.topo.clients[c].addr);

			l->hs_extra++;
		}

		/*
		 * A worker that died (killed, or PostgreSQL stopped) left
		 * connections this process does not know, and one of them may
		 * hold a block too.  Every data connection is named after the
		 * slot; the ones of that name that are not this one are ended
		 * before the fences are read (link_named_kills).
		 */
		redis_append_cstrings(&l->hs, 3, "CLIENT", "SETNAME", client_name());
		redis_append_cstrings(&l->hs, 2, "CLIENT", "INFO");
		l->hs_info = l->hs_setup + l->hs_extra + 1;
		redis_append_cstrings(&l->hs, 4, "CLIENT", "LIST", "TYPE", "normal");
		l->hs_list = l->hs_info + 1;
		l->hs_extra += 3;
		l->my_id = NULL;
		if (!snd.topo.cluster)
		{
			/* a replica must not be taken for the primary (a failover) */
			redis_append_cstrings(&l->hs, 1, "ROLE");
			l->hs_role = l->hs_list + 1;
			l->hs_extra++;
		}
	}
	MemoryContextSwitchTo(old);
	if (!redis_connect_start(&l->conn, &l->target))
	{
		pg2r_topo_fail(l, "%s", l->conn.error);
		return false;
	}
	l->state = LINK_CONNECTING;
	pg2r_link_arm_deadline(l);
	return true;
}

/*
 * topo_connect starts a (re)connect: to the server, or, in a cluster, to a
 * node asked for the slot map (the nodes of the last map first, then the
 * URL's seeds, one more each attempt).
 */
static void
topo_connect(void)
{
	MemoryContext old;
	int			  known;
	int			  i;


	topo_close();
	MemoryContextReset(snd.topo_cxt);
	MemoryContextReset(snd.map_cxt);
	for (int li = 0; li < CLUSTER_MAX_NODES; li++)
		pg2r_link_reset(&snd.topo.links[li]);
	pg2r_link_reset(&snd.topo.maplink);
	snd.topo.nlinks = 0;
	if (snd.topo.sentinel)
	{
		/* ask a sentinel for the primary, one more each attempt */
		i = (snd.topo.attempts + snd.topo.redirect_streak) %
			snd.topo.target.nseeds;
		snd.topo.maplink.is_map = true;
		snd.topo.state = TOPO_MAP;
		(void) link_start(&snd.topo.maplink, snd.topo.target.seed_hosts[i],
						  snd.topo.target.seed_ports[i]);
		return;
	}
	if (!snd.topo.cluster)
	{
		Link *l = &snd.topo.links[0];

		snd.topo.nlinks = 1;
		old = MemoryContextSwitchTo(snd.topo_cxt);
		l->hs_nslots = 1;
		l->hs_slots = palloc0(sizeof(int));
		MemoryContextSwitchTo(old);
		snd.topo.state = TOPO_LINKS;
		(void) link_start(l, snd.topo.target.host, snd.topo.target.port);
		return;
	}

	/* link_start copies the host: the map may be replaced later */
	known = snd.topo.map ? snd.topo.map->nnodes : 0;
	i = (snd.topo.attempts + snd.topo.redirect_streak) %
		(known + snd.topo.target.nseeds);
	snd.topo.maplink.is_map = true;
	snd.topo.state = TOPO_MAP;
	if (i < known)
		(void) link_start(&snd.topo.maplink, snd.topo.map->nodes[i].host,
						  snd.topo.map->nodes[i].port);
	else
		(void) link_start(&snd.topo.maplink,
						  snd.topo.target.seed_hosts[i - known],
						  snd.topo.target.seed_ports[i - known]);
}

/*
 * forget_other_clients drops the connections remembered for servers that are
 * not primaries of map (so that the table holds the current ones).
 */
static void
forget_other_clients(const ClusterMap *map)
{
	for (int c = 0; c < (int) lengthof(snd.topo.clients); c++)
	{
		bool keep = false;

		if (snd.topo.clients[c].name == NULL)
			continue;
		for (int i = 0; i < map->nnodes && !keep; i++)
		{
			char name[NI_MAXHOST + 16];

			snprintf(name, sizeof(name), "%s:%d", map->nodes[i].host,
					 map->nodes[i].port);
			keep = strcmp(name, snd.topo.clients[c].name) == 0;
		}
		if (keep)
			continue;
		pfree(snd.topo.clients[c].name);
		if (snd.topo.clients[c].id)
			pfree(snd.topo.clients[c].id);
		if (snd.topo.clients[c].addr)
			pfree(snd.topo.clients[c].addr);
		snd.topo.clients[c].name = snd.topo.clients[c].id =
			snd.topo.clients[c].addr = NULL;
	}
}

/* topo_forget_map frees the slot map, if any. */
static void
topo_forget_map(void)
{
	if (snd.topo.map == NULL)
		return;
	for (int i = 0; i < snd.topo.map->nnodes; i++)
		pfree(snd.topo.map->nodes[i].host);
	pfree(snd.topo.map);
	snd.topo.map = NULL;
}

/* topo_use_map starts a link to every primary of a new slot map. */
static void
topo_use_map(ClusterMap *map)
{
	MemoryContext old = MemoryContextSwitchTo(snd.cxt);

	topo_forget_map();
	snd.topo.map = map;
	forget_other_clients(map);
	for (int i = 0; i < map->nnodes; i++)
		map->nodes[i].host = pstrdup(map->nodes[i].host);
	MemoryContextSwitchTo(old);

	link_close(&snd.topo.maplink);
	MemoryContextReset(snd.map_cxt);
	pg2r_link_reset(&snd.topo.maplink);
	snd.topo.map_read_at = GetCurrentTimestamp();
	snd.topo.nlinks = map->nnodes;
	old = MemoryContextSwitchTo(snd.topo_cxt);
	for (int li = 0; li < map->nnodes; li++)
	{
		Link *l = &snd.topo.links[li];

		l->hs_slots = palloc(sizeof(int) * REDIS_CLUSTER_SLOTS);
		for (int s = 0; s < REDIS_CLUSTER_SLOTS; s++)
			if (map->slot_node[s] == li)
				l->hs_slots[l->hs_nslots++] = s;
	}
	MemoryContextSwitchTo(old);
	snd.topo.state = TOPO_LINKS;
	for (int li = 0; li < map->nnodes; li++)
		if (!link_start(&snd.topo.links[li], map->nodes[li].host,
						map->nodes[li].port))
			return;
}

/*
 * handle_sentinel_reply consumes a sentinel's reply on the map link: the
 * primary's address.  Connecting, the data link then starts to that
 * primary; while ready (a periodic check), a different primary drops the
 * links.  Returns false when the map link is closed (or the links dropped).
 */
static bool
handle_sentinel_reply(Link *l, redisReply *r)
{
	char name[NI_MAXHOST + 16];
	int	 port;

	if (r->type == REDIS_REPLY_ERROR)
	{
		pg2r_topo_fail(l,
					   "the sentinel at %s refused to name the primary \"%s\": %s",
					   l->name, snd.topo.target.master_name, r->str);
		return false;
	}
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
		r->element[0]->type != REDIS_REPLY_STRING ||
		r->element[1]->type != REDIS_REPLY_STRING ||
		(port = atoi(r->element[1]->str)) <= 0 || port > 65535)
	{
		pg2r_topo_fail(l, "the sentinel at %s knows no primary named \"%s\"",
					   l->name, snd.topo.target.master_name);
		return false;
	}
	if (snd.topo.state == TOPO_READY)
	{
		bool same = snd.topo.primary_host &&
					strcmp(r->element[0]->str, snd.topo.primary_host) == 0 &&
					port == snd.topo.primary_port;

		snprintf(name, sizeof(name), "%s:%d", r->element[0]->str, port);
		map_check_done();
		if (!same)
		{
			redirect_next = true;
			pg2r_topo_fail(NULL,
						   "the sentinels name a new primary for \"%s\": %s",
						   snd.topo.target.master_name, name);
		}
		return false; /* the map link is closed */
	}
	if (snd.topo.primary_host)
		pfree(snd.topo.primary_host);
	snd.topo.primary_host = MemoryContextStrdup(snd.cxt, r->element[0]->str);
	snd.topo.primary_port = port;
	map_check_done();

	{
		Link		 *data = &snd.topo.links[0];
		MemoryContext old = MemoryContextSwitchTo(snd.topo_cxt);

		snd.topo.nlinks = 1;
		data->hs_nslots = 1;
		data->hs_slots = palloc0(sizeof(int));
		MemoryContextSwitchTo(old);
		snd.topo.state = TOPO_LINKS;
		(void) link_start(data, snd.topo.primary_host, snd.topo.primary_port);
	}
	return false; /* the map link is closed */
}

/*
 * handle_role_reply checks ROLE on a standalone server's data link: a
 * replica is refused (behind Sentinel, the sentinels are asked again).
 * Returns false when the links were dropped.
 */
static bool
handle_role_reply(Link *l, redisReply *r)
{
	if (r->type == REDIS_REPLY_ERROR)
	{
		if (!snd.topo.sentinel)
			return true; /* not granted: writes to a replica fail anyway */
		pg2r_topo_fail(l,
					   "could not check that Redis at %s is the primary: %s (grant the Redis user +role)",
					   l->name, r->str);
		return false;
	}
	if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
		r->element[0]->type == REDIS_REPLY_STRING &&
		strcmp(r->element[0]->str, "master") != 0)
	{
		redirect_next = snd.topo.sentinel;
		pg2r_topo_fail(l, "Redis at %s is a %s, not a primary%s", l->name,
					   r->element[0]->str,
					   snd.topo.sentinel ? "; asking the sentinels again"
										 : "");
		return false;
	}
	return true;
}

/* link_ready marks a link ready, and the topology once all links are. */
static void
link_ready(Link *l)
{
	l->state = LINK_READY;
	l->deadline = 0;
	for (int i = 0; i < snd.topo.nlinks; i++)
		if (snd.topo.links[i].state != LINK_READY)
			return;
	pg2r_topo_ready();
}

/*
 * handle_sync_reply consumes the replies to the SET and the WAIT that make
 * the positions read at the first connect durable.  Returns false when the
 * links were dropped.
 */
static bool
handle_sync_reply(int li, Link *l, redisReply *r, int which)
{
	long long replicated;

	if (r->type == REDIS_REPLY_ERROR)
	{
		pg2r_note_redirect(r->str);
		pg2r_topo_fail(l,
					   "could not confirm the stream positions on the replicas: %s",
					   r->str);
		return false;
	}
	if (which == 0)
		return true;
	if (!pg2r_wait_reply_ok(r, pg2r_link_wait_replicas(l), &replicated))
	{
		pg2r_topo_fail(l,
					   "Redis replicated the stream's positions to %lld of the %d replicas asked for within %d ms (pg2redis.redis_wait_replicas)",
					   replicated, pg2r_link_wait_replicas(l),
					   pg2r_wait_timeout_ms());
		return false;
	}
	link_ready(l);
	return true;
}

/*
 * The replies a link's handshake reads, in order (link_start queues the
 * commands): hs_setup replies to AUTH and SELECT, then on the map link the
 * sentinel's or the cluster's answer, on a data link hs_extra replies to
 * the CLIENT commands and ROLE, hs_nslots to the fence GETs, and the SET
 * and WAIT of a sync when one was queued after them.
 */
typedef enum HandshakePhase
{
	HS_SETUP,	 /* AUTH, SELECT */
	HS_SENTINEL, /* map link behind Sentinel: the primary's address */
	HS_MAP,		 /* map link of a cluster: CLUSTER SLOTS */
	HS_CLIENT,	 /* CLIENT KILL, SETNAME, INFO, LIST; ROLE */
	HS_FENCE,	 /* a fence GET */
	HS_SYNC		 /* the SET and WAIT that make the positions durable */
} HandshakePhase;

/* handshake_phase tells which phase the idx-th reply of l's handshake is. */
static HandshakePhase
handshake_phase(const Link *l, int idx)
{
	if (idx < l->hs_setup)
		return HS_SETUP;
	if (l->is_map)
		return snd.topo.sentinel ? HS_SENTINEL : HS_MAP;
	if (idx < l->hs_setup + l->hs_extra)
		return HS_CLIENT;
	if (idx < l->hs_setup + l->hs_extra + l->hs_nslots)
		return HS_FENCE;
	return HS_SYNC;
}

/*
 * handle_setup_reply consumes a reply to AUTH or SELECT.  Returns false
 * when the links were dropped.
 */
static bool
handle_setup_reply(Link *l, redisReply *r)
{
	/* a sentinel without a password may get the data nodes' AUTH */
	if (r->type == REDIS_REPLY_ERROR &&
		!(l->is_map && snd.topo.sentinel &&
		  snd.topo.target.sentinel_password == NULL &&
		  redis_sentinel_auth_absent(r->str)))
	{
		pg2r_topo_fail(l, "Redis refused the connection setup: %s", r->str);
		return false;
	}
	return true;
}

/*
 * handle_map_reply consumes CLUSTER SLOTS on the map link: connecting, the
 * links to the map's primaries start; while ready (a periodic check), a
 * changed map drops the links.  Returns false: the map link is closed (or
 * the links dropped).
 */
static bool
handle_map_reply(Link *l, redisReply *r)
{
	char		  err[REDIS_ERROR_LEN];
	ClusterMap	 *map;
	MemoryContext old;

	if (r->type == REDIS_REPLY_ERROR)
	{
		pg2r_topo_fail(l,
					   "could not read the slot map of the Redis Cluster: %s",
					   r->str);
		return false;
	}
	old = MemoryContextSwitchTo(snd.map_cxt);
	map = MemoryContextAllocZero(snd.cxt, sizeof(ClusterMap));
	if (!cluster_parse_slots(r, l->target.host, map, err, sizeof(err)))
	{
		MemoryContextSwitchTo(old);
		pfree(map);
		pg2r_topo_fail(l, "%s", err);
		return false;
	}
	MemoryContextSwitchTo(old);
	if (snd.topo.state == TOPO_READY)
	{
		/* a periodic check: reconnect only if the map changed */
		bool same = map_equal(map, snd.topo.map);

		pfree(map);
		map_check_done();
		if (!same)
		{
			redirect_next = true;
			pg2r_topo_fail(NULL, "the slot map of the Redis Cluster changed");
		}
		return false;
	}
	topo_use_map(map); /* copies the host names */
	return false;	   /* the map link is closed */
}

/*
 * handle_client_reply consumes the idx-th reply of a data link's
 * handshake, one to CLIENT KILL, SETNAME, INFO or LIST, or to ROLE.
 * Returns false when the links were dropped.
 */
static bool
handle_client_reply(Link *l, redisReply *r, int idx)
{
	/* CLIENT KILL and SETNAME: their results do not matter */
	if (idx == l->hs_info)
		remember_client(l, r);
	else if (idx == l->hs_list)
		link_named_kills(l, r);
	else if (idx == l->hs_role)
		return handle_role_reply(l, r);
	return true;
}

/*
 * fences_read ends the fence GETs of a data link: the link is ready, or,
 * at the first connect with replicas to wait for, it first makes the
 * positions just read durable (handle_sync_reply).
 */
static void
fences_read(Link *l)
{
	if (!snd.topo.fence_known && pg2r_link_wait_replicas(l) > 0 &&
		l->hs_nslots > 0)
	{
		/*
		 * The positions just read may be writes the replicas never got (the
		 * worker stopped before WAIT answered): the slot would be confirmed
		 * past them, and a failover would lose them.  One write now, and
		 * WAIT for it, covers everything before it.
		 */
		char		  key[CLUSTER_FENCE_KEY_LEN];
		MemoryContext old = MemoryContextSwitchTo(snd.topo_cxt);

		/* a key of its own, in a slot of this primary: fences untouched */
		snprintf(key, sizeof(key), "pg2redis:%s:sync:{%d}", pg2r_slot_name,
				 cluster_fence_tag(l->hs_slots[0]));
		redis_append_cstrings(&l->hs, 3, "SET", key, "1");
		pg2r_append_wait(&l->hs, pg2r_link_wait_replicas(l));
		MemoryContextSwitchTo(old);
		return;
	}
	link_ready(l);
}

/*
 * handle_fence_reply consumes the reply to the fence GET of the link's
 * i-th slot: the stream position Redis has for it.  Returns false when the
 * links were dropped.
 */
static bool
handle_fence_reply(Link *l, redisReply *r, int i)
{
	int	  s = snd.topo.cluster ? l->hs_slots[i] : 0;
	Fence f = {InvalidXLogRecPtr, FENCE_DONE};

	if (r->type == REDIS_REPLY_ERROR)
	{
		pg2r_note_redirect(r->str);
		pg2r_topo_fail(l,
					   "could not read the stream position from Redis: %s%s",
					   r->str, pg2r_cluster_note(r->str));
		return false;
	}
	if (r->type == REDIS_REPLY_STRING && !pg2r_fence_parse(r->str, &f))
	{
		char key[CLUSTER_FENCE_KEY_LEN];

		pg2r_topo_fail(l,
					   "Redis key \"%s\" holds \"%s\", which is not a pg2redis stream position",
					   cluster_fence_key(key, pg2r_slot_name,
										 snd.topo.cluster ? s : -1),
					   r->str);
		return false;
	}
	snd.topo.read[s] = f;
	if (i == l->hs_nslots - 1)
		fences_read(l);
	return true;
}

/*
 * handle_handshake_reply consumes the next reply of l's handshake with the
 * handler of its phase (handshake_phase).  Returns false when the links
 * were dropped, or the map link closed.
 */
static bool
handle_handshake_reply(int li, Link *l, redisReply *r)
{
	int first_sync = l->hs_setup + l->hs_extra + l->hs_nslots;
	int idx = l->hs_seen++;

	switch (handshake_phase(l, idx))
	{
		case HS_SETUP:
			return handle_setup_reply(l, r);
		case HS_SENTINEL:
			return handle_sentinel_reply(l, r);
		case HS_MAP:
			return handle_map_reply(l, r);
		case HS_CLIENT:
			return handle_client_reply(l, r, idx);
		case HS_FENCE:
			return handle_fence_reply(l, r, idx - l->hs_setup - l->hs_extra);
		case HS_SYNC:
			return handle_sync_reply(li, l, r, idx - first_sync);
	}
	return true;
}

/*
 * link_write_segs sends what it can of a ready link's output, piece by piece
 * (OutSeg); false when the links failed.
 */
static bool
link_write_segs(Link *l)
{
	while (l->seg < l->nsegs)
	{
		const OutSeg *sg = &l->segs[l->seg];
		const char	 *base = sg->block ? sg->block->resp.data : l->out.data;
		ssize_t		  n = redis_send(&l->conn, base + sg->off + l->seg_sent,
									 sg->len - l->seg_sent);

		if (n < 0)
		{
			pg2r_topo_fail(l, "%s", l->conn.error);
			return false;
		}
		if (n == 0)
			break;
		l->seg_sent += n;
		if (l->seg_sent == sg->len)
		{
			l->seg++;
			l->seg_sent = 0;
		}
		pg2r_link_arm_deadline(l);
	}
	return true;
}

/* link_write sends what is pending on a link; false when the links failed. */
static bool
link_write(Link *l)
{
	const char *data;
	size_t		len;
	size_t	   *written;
	ssize_t		n;

	if (l->state == LINK_HANDSHAKE && l->hs_written < (size_t) l->hs.len)
	{
		data = l->hs.data;
		len = l->hs.len;
		written = &l->hs_written;
	}
	else if (l->state == LINK_READY && l->seg < l->nsegs)
		return link_write_segs(l);
	else
		return true;

	while (*written < len)
	{
		n = redis_send(&l->conn, data + *written, len - *written);
		if (n < 0)
		{
			pg2r_topo_fail(l, "%s", l->conn.error);
			return false;
		}
		if (n == 0)
			break;
		*written += n;
		pg2r_link_arm_deadline(l);
	}
	return true;
}

/*
 * link_read takes in and handles what Redis sent on a link; false when the
 * links failed or were rebuilt (the caller must not touch l again).
 */
static bool
link_read(int li, Link *l)
{
	bool		eof;
	redisReply *r;
	int			rc;
	TimestampTz now = 0;

	if (!redis_receive(&l->conn, &eof))
	{
		pg2r_topo_fail(l, "%s", l->conn.error);
		return false;
	}
	/* a ready link reads blocks' replies: the sender needs no more */
	l->conn.compact_replies = l->state == LINK_READY;
	while ((rc = redis_next_reply(&l->conn, &r)) == 1)
	{
		bool ok;

		/* the replies of one read arrived together: one clock reading */
		if (now == 0)
			now = GetCurrentTimestamp();
		l->deadline = TimestampTzPlusMilliseconds(now, pg2r_redis_timeout_ms);
		if (l->state == LINK_HANDSHAKE)
			ok = handle_handshake_reply(li, l, r);
		else
			ok = pg2r_handle_block_reply(li, r);
		redis_free_reply(r);
		if (!ok || l->state == LINK_DOWN)
			return false;
		l->conn.compact_replies = l->state == LINK_READY;
	}
	if (rc < 0)
	{
		pg2r_topo_fail(l, "%s", l->conn.error);
		return false;
	}
	return true;
}

/* link_awaiting: something was sent on l that Redis has not answered. */
static bool
link_awaiting(const Link *l)
{
	if (l->state == LINK_HANDSHAKE || l->state == LINK_CONNECTING)
		return true;
	return l->state == LINK_READY &&
		   (l->pos < l->npend || l->wait_sent || l->skip > 0);
}

/* link_events returns the socket events l waits for (0: none). */
static int
link_events(const Link *l)
{
	if (l->state == LINK_DOWN)
		return 0;
	if (l->state == LINK_CONNECTING)
		return l->conn.want;
	if ((l->state == LINK_HANDSHAKE && l->hs_written < (size_t) l->hs.len) ||
		(l->state == LINK_READY && l->seg < l->nsegs))
		return WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE;
	return WL_SOCKET_READABLE;
}

/* link_step advances one link after a wait; false when the links failed. */
static bool
link_step(int li, Link *l, int events)
{
	if (l->state == LINK_CONNECTING &&
		((events & (WL_SOCKET_WRITEABLE | WL_SOCKET_READABLE)) ||
		 redis_conn_poll_ms(&l->conn) >= 0))
	{
		struct addrinfo *addr = l->conn.addr;
		int				 done = redis_connect_finish(&l->conn, &l->target);

		if (done < 0)
		{
			pg2r_topo_fail(l, "%s", l->conn.error);
			return false;
		}
		if (done > 0)
		{
			l->state = LINK_HANDSHAKE;
			pg2r_link_arm_deadline(l);
		}
		else if (l->conn.addr != addr)
		{
			/* resolved, or the next address: its own time to answer */
			pg2r_link_arm_deadline(l);
		}
	}
	if (l->state == LINK_HANDSHAKE || l->state == LINK_READY)
	{
		if (!link_write(l) || !link_read(li, l))
			return false;
		if (l->state == LINK_READY && !link_write(l))
			return false;
	}
	if (l->state != LINK_DOWN && l->deadline != 0 && link_awaiting(l) &&
		GetCurrentTimestamp() >= l->deadline)
	{
		if (l->state == LINK_CONNECTING &&
			redis_connect_next(&l->conn, "timed out connecting to Redis"))
		{
			/* the host name's next address */
			pg2r_link_arm_deadline(l);
			return true;
		}
		if (l->state == LINK_CONNECTING && redis_conn_poll_ms(&l->conn) >= 0)
			pg2r_topo_fail(l, "timed out resolving Redis host \"%s\"",
						   l->target.host);
		else
			pg2r_topo_fail(l, l->state == LINK_CONNECTING
								  ? "timed out connecting to Redis"
								  : "timed out waiting for Redis to reply");
		return false;
	}
	return true;
}

/* the settings could not be used at the last sender_reconfigure */
static bool unusable = false;

/*
 * sender_reconfigure applies new pg2redis.redis_* settings: a changed
 * target drops the links and reconnects at once.  Settings that cannot be
 * used (a malformed URL, a secret file others may read) leave the stream
 * down with a WARNING; a reload tries them again even when unchanged, and
 * settings_check() as soon as the password file changes.
 */
void
sender_reconfigure(void)
{
	RedisTarget		target;
	RedisSetupError err;
	char		   *signature = pg2r_redis_settings_signature();
	MemoryContext	old;
	int				nfences;

	if (snd.topo.url && strcmp(snd.topo.url, signature) == 0 && !unusable)
	{
		pfree(signature);
		return;
	}
	/* an error about the old settings may quote them: forget it */
	if (snd.topo.url)
	{
		pg2r_clear_error();
		pfree(snd.topo.url);
	}
	old = MemoryContextSwitchTo(snd.cxt);
	snd.topo.url = pstrdup(signature);
	pfree(signature);
	if (!pg2r_redis_target(&target, &err))
	{
		MemoryContextSwitchTo(old);
		unusable = true;
		pg2r_report_error("%s", err.message);
		ereport(WARNING,
				(errcode(err.sqlerrcode), errmsg("%s", err.message),
				 errhint("%s",
						 err.hint[0]
							 ? err.hint
							 : "Fix the pg2redis.redis_* settings and reload the configuration.")));
		/*
		 * No valid target: stay down (still "initial" if so) until a reload,
		 * or until settings_check() sees the password file change.
		 */
		topo_close();
		if (snd.topo.state != TOPO_INIT)
			snd.topo.state = TOPO_DOWN;
		snd.topo.next_attempt =
			TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										pg2r_retry_max_ms);
		return;
	}
	unusable = false;
	if (target.tls && target.tls_verify != REDIS_TLS_VERIFY_FULL)
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg(target.tls_verify == REDIS_TLS_VERIFY_NONE
							? "pg2redis.redis_tls_verify = none: the Redis server's certificate is not checked"
							: "pg2redis.redis_tls_verify = ca: the Redis server's certificate is not checked against the host name"),
				 errdetail(target.tls_verify == REDIS_TLS_VERIFY_NONE
							   ? "Anyone who can intercept the connection can impersonate the server and read the password and the data."
							   : "Any server with a certificate from a trusted CA can impersonate the Redis server."),
				 errhint("Use pg2redis.redis_tls_verify = full, with a certificate that names the host of pg2redis.redis_url.")));
	if (snd.topo.state != TOPO_DOWN && snd.topo.state != TOPO_INIT)
		ereport(LOG, (errmsg("Redis settings changed, connecting to %s",
							 target.display)));
	nfences = target.cluster ? REDIS_CLUSTER_SLOTS : 1;
	if (snd.topo.nfences != nfences && snd.topo.state != TOPO_INIT)
	{
		/*
		 * Standalone <-> cluster: the blocks decoded so far are cut for the
		 * other kind of server.  Start over from the slot's position, which
		 * only ever moves past what Redis acknowledged.
		 */
		ereport(LOG,
				(errmsg("pg2redis.redis_url switched between a standalone Redis and a Redis Cluster; restarting the worker")));
		proc_exit(1);
	}
	topo_close();
	snd.topo.target = target;
	if (snd.topo.nfences != nfences)
	{
		pfree(snd.topo.applied);
		pfree(snd.topo.read);
		snd.topo.applied = palloc(sizeof(Fence) * nfences);
		snd.topo.read = palloc(sizeof(Fence) * nfences);
		for (int s = 0; s < nfences; s++)
		{
			snd.topo.applied[s].lsn = InvalidXLogRecPtr;
			snd.topo.applied[s].seq = FENCE_DONE;
			snd.topo.read[s] = snd.topo.applied[s];
		}
		snd.topo.nfences = nfences;
	}
	snd.topo.cluster = target.cluster;
	snd.topo.sentinel = target.sentinel;
	if (snd.topo.primary_host)
		pfree(snd.topo.primary_host);
	snd.topo.primary_host = NULL;
	/* another server: nothing is known about its positions or its map */
	snd.topo.fence_known = false;
	snd.topo.confirmed.lsn = InvalidXLogRecPtr;
	snd.topo.confirmed.seq = FENCE_DONE;
	topo_forget_map();
	MemoryContextSwitchTo(old);
	snd.topo.state = TOPO_DOWN;
	snd.topo.attempts = 0;
	snd.topo.next_attempt = 0;
	pg2r_report_connected(false);
	pg2r_inflight_restart();
}

/*
 * settings_check runs before each connection attempt, and every
 * pg2redis.retry_max_backoff while the settings cannot be used: the
 * password file is read again (its signature), and settings it changed are
 * applied without a reload, so that a rotated password, or a file created
 * or fixed after a failure, is used at the next attempt.
 */
static void
settings_check(void)
{
	char *signature = pg2r_redis_settings_signature();
	bool  same = snd.topo.url != NULL && strcmp(snd.topo.url, signature) == 0;

	pfree(signature);
	if (!same)
		sender_reconfigure();
	else if (unusable)
		snd.topo.next_attempt =
			TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										pg2r_retry_max_ms);
}

/* sender_disconnect closes the connections (worker exit). */
void
sender_disconnect(void)
{
	if (snd.cxt == NULL)
		return;
	topo_close();
	snd.topo.state = TOPO_DOWN;
}

/*
 * sender_service does one round of Redis work: connects when due, writes
 * what is pending, reads and handles replies, enforces deadlines.  It
 * waits up to timeout_ms for a socket or the latch first (0: does not
 * wait).  Interrupts are handled by the worker's hook.
 */
void
sender_service(long timeout_ms)
{
	TimestampTz	  now = GetCurrentTimestamp();
	WaitEventSet *set;
	WaitEvent	  occurred[CLUSTER_MAX_NODES + 4];
	int			  events[CLUSTER_MAX_NODES + 2];
	Link		 *all[CLUSTER_MAX_NODES + 2];
	int			  nall = 0;
	int			  nsockets = 0;
	int			  nev;
	Pg2rStage	  back = pg2r_stage_enter(PG2R_STAGE_IO);

	snd.hooks.interrupts();
	if (snd.stopped)
	{
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(timeout_ms, 1),
						 pg2r_wait_event(PG2R_WAIT_STOPPED));
		ResetLatch(MyLatch);
		pg2r_stage_leave(back);
		return;
	}

	if ((snd.topo.state == TOPO_DOWN || snd.topo.state == TOPO_INIT) &&
		snd.topo.next_attempt <= now)
	{
		settings_check();
		if (snd.topo.state == TOPO_DOWN && !unusable &&
			snd.topo.next_attempt <= now)
			topo_connect();
	}

	/* never sleep past a deadline or a reconnect attempt */
	if ((snd.topo.state == TOPO_DOWN || snd.topo.state == TOPO_INIT) &&
		snd.topo.next_attempt != DT_NOEND)
		timeout_ms =
			Min(timeout_ms,
				Max(TimestampDifferenceMilliseconds(now,
													snd.topo.next_attempt),
					0));
	if (snd.topo.state == TOPO_READY &&
		(snd.topo.cluster || snd.topo.sentinel) &&
		snd.topo.maplink.state == LINK_DOWN &&
		TimestampDifferenceExceeds(snd.topo.map_read_at, now,
								   snd.topo.sentinel ? SENTINEL_CHECK_MS
													 : MAP_REFRESH_MS))
		map_check_start();
	if (snd.topo.state == TOPO_MAP)
		all[nall++] = &snd.topo.maplink;
	else if (snd.topo.state != TOPO_DOWN)
		for (int li = 0; li < snd.topo.nlinks; li++)
			all[nall++] = &snd.topo.links[li];
	if (snd.topo.state == TOPO_READY && snd.topo.maplink.state != LINK_DOWN)
		all[nall++] = &snd.topo.maplink;
	for (int i = 0; i < nall; i++)
	{
		long poll = redis_conn_poll_ms(&all[i]->conn);

		if (all[i]->deadline != 0 && link_awaiting(all[i]))
			timeout_ms =
				Min(timeout_ms,
					Max(TimestampDifferenceMilliseconds(now, all[i]->deadline),
						0));
		/* a host name being resolved is looked at again shortly */
		if (poll >= 0)
			timeout_ms = Min(timeout_ms, poll);
		events[i] = 0;
		if (link_events(all[i]) != 0)
			nsockets++;
	}

	if (timeout_ms > 0 || nsockets > 0)
	{
		set = PG2R_CREATE_WAIT_EVENT_SET(nsockets + 2);
		AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL,
						  NULL);
		for (int i = 0; i < nall; i++)
		{
			int ev = link_events(all[i]);

			if (ev != 0)
				AddWaitEventToSet(set, ev, all[i]->conn.sock, NULL,
								  (void *) (intptr_t) i);
		}
		(void) pg2r_stage_enter(PG2R_STAGE_WAIT);
		nev = WaitEventSetWait(set, Max(timeout_ms, 0), occurred,
							   lengthof(occurred),
							   pg2r_wait_event(PG2R_WAIT_REDIS));
		(void) pg2r_stage_enter(PG2R_STAGE_IO);
		FreeWaitEventSet(set);
		for (int e = 0; e < nev; e++)
		{
			if (occurred[e].events & WL_LATCH_SET)
				ResetLatch(MyLatch);
			else if (occurred[e].events &
					 (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE))
				events[(intptr_t) occurred[e].user_data] |= occurred[e].events;
		}
		snd.hooks.interrupts();
	}

	/* a failure or a new map rebuilds the links: stop at the first */
	for (int i = 0; i < nall; i++)
		if (!link_step(all[i] == &snd.topo.maplink ? -1 : i, all[i],
					   events[i]))
			break;
	pg2r_stage_leave(back);
}
