/*-------------------------------------------------------------------------
 *
 * session_redis.c
 *	  A backend's own connections to Redis, for SQL functions that read it
 *	  in bulk (pg2redis_verify()) or run one command (pg2redis_redis()).
 *
 * The worker's connections (links.c) live in its event loop; a backend
 * needs something simpler: run a batch of commands and get every reply
 * back, in order, before the function goes on.  A session connects to the
 * server of pg2redis.redis_url (on a Redis Cluster: reads the slot map
 * from the first seed that answers, and keeps one connection per primary),
 * and each batch is pipelined: every command for one node is written,
 * then every reply read, one node after the other.  A MOVED or ASK reply
 * (a slot moved meanwhile) re-reads the map and runs the command again on
 * the node the map names, a few times at most; the session never follows a
 * redirection to a node outside the slot map, so a compromised node cannot
 * send it, and its password, elsewhere.  redis_session_command runs one
 * command outside any session (a connection of its own to the node that
 * owns it), following MOVED and ASK under the same rule.
 *
 * Every wait is bounded by pg2redis.redis_timeout and interruptible (a
 * query cancel or a terminate ends it), and a failure is an ERROR without
 * any secret in it.  Connections are closed when the session is, and on an
 * ERROR by the memory context reset callback, so none leaks.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg2redis/cluster.h"
#include "pg2redis/compat.h"
#include "pg2redis/keyslot.h"
#include "pg2redis/redis_errors.h"
#include "pg2redis/redis_io.h"
#include "pg2redis/session_redis.h"
#include "pg2redis/settings.h"

#define SESSION_REDIRECT_ROUNDS 3

typedef struct SessionNode
{
	RedisTarget target; /* the session's, with this node's host and port */
	RedisConn	conn;
	bool		ready; /* connected and handshake done */
	/* a round sent and not yet finished (round_send, round_finish) */
	StringInfoData out;
	size_t		   sent;
	int			   nh;	  /* handshake replies first */
	int			   count; /* then the replies of idx[] */
	int			  *idx;
} SessionNode;

struct RedisSession
{
	MemoryContext		  cxt;
	MemoryContextCallback cb;
	RedisTarget			  target;
	bool				  cluster;
	ClusterMap			  map;
	int					  nnodes;
	SessionNode			 *nodes; /* [map.nnodes], or [1] standalone */
};

/*
 * redis_session_wait_socket waits, interruptibly, for events on sock until
 * deadline; false on timeout.  For every backend's Redis connection.
 */
bool
redis_session_wait_socket(pgsocket sock, int events, TimestampTz deadline)
{
	long remaining =
		TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
	int rc;

	if (remaining <= 0)
		return false;
	rc = WaitLatchOrSocket(MyLatch,
						   events | WL_LATCH_SET | WL_TIMEOUT |
							   WL_EXIT_ON_PM_DEATH,
						   sock, remaining,
						   pg2r_wait_event(PG2R_WAIT_SESSION_REDIS));
	if (rc & WL_LATCH_SET)
		ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	return (rc & events) != 0 || !(rc & WL_TIMEOUT);
}

/*
 * redis_session_connect finishes connecting conn, for which
 * redis_connect_start succeeded: waits interruptibly while the host name
 * is resolved and the socket connects, giving each address the name
 * resolved to pg2redis.redis_timeout (the lookup counts with the first).
 * Returns 1 when connected, 0 on timeout, -1 on failure (conn->error says
 * why in both cases).
 */
int
redis_session_connect(RedisConn *conn, const RedisTarget *target)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   pg2r_redis_timeout_ms);
	struct addrinfo *addr = conn->addr;

	for (;;)
	{
		long poll = redis_conn_poll_ms(conn);
		int	 done;

		if (poll >= 0)
		{
			/* resolving: no socket yet; look again shortly */
			long remaining =
				TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
												deadline);
			int rc;

			if (remaining <= 0)
			{
				snprintf(conn->error, sizeof(conn->error),
						 "timed out resolving Redis host \"%s\"",
						 target->host);
				redis_close(conn);
				return 0;
			}
			rc = WaitLatch(MyLatch,
						   WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						   Min(poll, remaining),
						   pg2r_wait_event(PG2R_WAIT_SESSION_REDIS));
			if (rc & WL_LATCH_SET)
				ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
		else if (!redis_session_wait_socket(conn->sock, conn->want, deadline))
		{
			if (!redis_connect_next(conn, "timed out connecting"))
			{
				if (conn->state == RCONN_CONNECTING)
					snprintf(conn->error, sizeof(conn->error),
							 "timed out connecting to Redis");
				redis_close(conn);
				return 0;
			}
		}
		done = redis_connect_finish(conn, target);
		if (done != 0)
			return done;
		if (conn->addr != addr)
		{
			/* a new address: its own time to answer */
			addr = conn->addr;
			deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   pg2r_redis_timeout_ms);
		}
	}
}

/* session_close_all closes every connection of the session. */
static void
session_close_all(void *arg)
{
	RedisSession *s = arg;

	for (int i = 0; i < s->nnodes; i++)
	{
		redis_close(&s->nodes[i].conn);
		s->nodes[i].ready = false;
	}
}

/* node_fail closes node n and raises the ERROR of a failed exchange. */
static void
node_fail(RedisSession *s, SessionNode *n, const char *what)
{
	char msg[sizeof(n->conn.error)];

	strlcpy(msg, n->conn.error[0] ? n->conn.error : what, sizeof(msg));
	session_close_all(s);
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("could not read from Redis at %s:%d",
					n->target.host ? n->target.host : s->target.display,
					n->target.port),
			 errdetail("%s", msg),
			 errhint("Check pg2redis.redis_url and that Redis is running.")));
}

/*
 * exchange writes the rest of out (past sent bytes; the handshake replies
 * come first: nhandshake of them) to node n and reads nreplies replies into
 * replies[]; raises an ERROR on failure, after pg2redis.redis_timeout
 * without progress, or when a handshake reply is an error.
 */
static void
exchange(RedisSession *s, SessionNode *n, const StringInfo out, size_t sent,
		 int nhandshake, int nreplies, redisReply **replies)
{
	int			got = 0;
	int			total = nhandshake + nreplies;
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   pg2r_redis_timeout_ms);

	while (got < total)
	{
		bool		eof;
		int			rc = 0;
		redisReply *r;

		if (sent < (size_t) out->len)
		{
			ssize_t w =
				redis_send(&n->conn, out->data + sent, out->len - sent);

			if (w < 0)
				node_fail(s, n, "could not send");
			sent += w;
		}
		if (!redis_session_wait_socket(n->conn.sock,
									   WL_SOCKET_READABLE |
										   (sent < (size_t) out->len
												? WL_SOCKET_WRITEABLE
												: 0),
									   deadline))
			node_fail(s, n, "timed out waiting for replies");
		if (!redis_receive(&n->conn, &eof))
			node_fail(s, n, "could not receive");
		while (got < total && (rc = redis_next_reply(&n->conn, &r)) == 1)
		{
			if (got < nhandshake)
			{
				if (r->type == REDIS_REPLY_ERROR)
				{
					snprintf(n->conn.error, sizeof(n->conn.error), "%s",
							 r->str);
					freeReplyObject(r);
					node_fail(s, n, "Redis refused the connection setup");
				}
				freeReplyObject(r);
			}
			else
				replies[got - nhandshake] = r;
			got++;
			/* progress: the deadline is per reply, not per batch */
			deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   pg2r_redis_timeout_ms);
		}
		if (rc < 0)
			node_fail(s, n, "protocol error");
		if (eof && got < total)
			node_fail(s, n, "Redis closed the connection");
	}
}

/*
 * node_connect connects node n and returns the handshake to send first
 * (AUTH, SELECT) in out, and how many replies it produces.
 */
static int
node_connect(RedisSession *s, SessionNode *n, StringInfo out)
{
	if (n->ready)
		return 0;
	redis_conn_init(&n->conn);
	if (!redis_connect_start(&n->conn, &n->target) ||
		redis_session_connect(&n->conn, &n->target) <= 0)
		node_fail(s, n, "could not connect");
	n->ready = true;
	return redis_append_handshake(out, &n->target);
}

/* set_nodes makes the session's nodes: the map's primaries, or one. */
static void
set_nodes(RedisSession *s, int nnodes)
{
	session_close_all(s);
	s->nnodes = 0;
	s->nodes = MemoryContextAllocZero(s->cxt, sizeof(SessionNode) * nnodes);
	for (int i = 0; i < nnodes; i++)
	{
		SessionNode *n = &s->nodes[i];

		n->target = s->target;
		if (s->cluster)
		{
			n->target.host = MemoryContextStrdup(s->cxt, s->map.nodes[i].host);
			n->target.port = s->map.nodes[i].port;
		}
		redis_conn_init(&n->conn);
	}
	s->nnodes = nnodes;
}

/*
 * ask_node sends the commands in cmds (RESP) to node cand, after its
 * handshake, and reads their nreplies replies; false (with the reason in
 * err) when it cannot be reached.  A cancel or termination is re-raised.
 */
static bool
ask_node(RedisSession *s, SessionNode *cand, const StringInfo cmds,
		 int nreplies, redisReply **replies, char *err, size_t errlen)
{
	StringInfoData out;
	volatile bool  ok = false;
	MemoryContext  cxt = CurrentMemoryContext;

	redis_conn_init(&cand->conn);
	cand->ready = false;
	initStringInfo(&out);
	PG_TRY();
	{
		int nh = node_connect(s, cand, &out);

		appendBinaryStringInfo(&out, cmds->data, cmds->len);
		exchange(s, cand, &out, 0, nh, nreplies, replies);
		ok = true;
	}
	PG_CATCH();
	{
		ErrorData *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		/* only our own connection errors are swallowed: try the next seed */
		if (edata->sqlerrcode != ERRCODE_CONNECTION_FAILURE)
		{
			redis_close(&cand->conn);
			PG_RE_THROW();
		}
		FlushErrorState();
		snprintf(err, errlen, "%s",
				 edata->detail ? edata->detail : edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	redis_close(&cand->conn);
	return ok;
}

/*
 * read_map reads CLUSTER SLOTS from the first seed (or known primary) that
 * answers; raises an ERROR when none does.
 */
static void
read_map(RedisSession *s)
{
	char		   errbuf[256] = "";
	int			   ncand = s->target.nseeds + s->nnodes;
	StringInfoData cmd;

	initStringInfo(&cmd);
	redis_append_cstrings(&cmd, 2, "CLUSTER", "SLOTS");

	for (int i = 0; i < ncand; i++)
	{
		SessionNode	  cand;
		redisReply	 *r = NULL;
		ClusterMap	 *map = palloc(sizeof(ClusterMap));
		MemoryContext old;
		bool		  ok;

		cand.target = s->target;
		if (i < s->target.nseeds)
		{
			cand.target.host = s->target.seed_hosts[i];
			cand.target.port = s->target.seed_ports[i];
		}
		else
		{
			cand.target.host = s->nodes[i - s->target.nseeds].target.host;
			cand.target.port = s->nodes[i - s->target.nseeds].target.port;
		}
		if (!ask_node(s, &cand, &cmd, 1, &r, errbuf, sizeof(errbuf)))
			continue;
		old = MemoryContextSwitchTo(s->cxt);
		ok = r->type == REDIS_REPLY_ARRAY &&
			 cluster_parse_slots(r, cand.target.host, map, errbuf,
								 sizeof(errbuf));
		MemoryContextSwitchTo(old);
		freeReplyObject(r);
		if (ok)
		{
			s->map = *map;
			set_nodes(s, map->nnodes);
			return;
		}
	}
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("could not read the slot map of the Redis Cluster at %s",
					s->target.display),
			 errdetail("%s", errbuf),
			 errhint("Check pg2redis.redis_url and that the cluster is up.")));
}

/*
 * redis_session_find_primary points a redis-sentinel:// target at the
 * primary that the first sentinel to answer names (SENTINEL
 * GET-MASTER-ADDR-BY-NAME); other targets are left as they are.  Raises an
 * ERROR when no sentinel names one.
 */
void
redis_session_find_primary(RedisTarget *target)
{
	RedisSession   s;
	char		   errbuf[256] = "no sentinel answered";
	StringInfoData cmd;

	if (!target->sentinel)
		return;
	memset(&s, 0, sizeof(s));
	s.cxt = CurrentMemoryContext;
	s.target = *target;
	for (int i = 0; i < target->nseeds; i++)
	{
		SessionNode cand;
		redisReply *r[2] = {NULL, NULL};
		int			nauth;
		bool		ok;

		memset(&cand, 0, sizeof(cand));
		redis_sentinel_target(target, i, &cand.target);
		/* AUTH as a command: a sentinel without a password refuses it */
		initStringInfo(&cmd);
		nauth = redis_append_handshake(&cmd, &cand.target);
		cand.target.user = cand.target.password = NULL;
		redis_append_cstrings(&cmd, 3, "SENTINEL", "GET-MASTER-ADDR-BY-NAME",
							  target->master_name);
		if (!ask_node(&s, &cand, &cmd, nauth + 1, r, errbuf, sizeof(errbuf)))
			continue;
		ok = true;
		if (nauth > 0 && r[0]->type == REDIS_REPLY_ERROR &&
			!(target->sentinel_password == NULL &&
			  redis_sentinel_auth_absent(r[0]->str)))
		{
			snprintf(errbuf, sizeof(errbuf), "%s", r[0]->str);
			ok = false;
		}
		else if (r[nauth]->type != REDIS_REPLY_ARRAY ||
				 r[nauth]->elements != 2 ||
				 r[nauth]->element[0]->type != REDIS_REPLY_STRING ||
				 r[nauth]->element[1]->type != REDIS_REPLY_STRING)
		{
			snprintf(errbuf, sizeof(errbuf),
					 "the sentinel at %s:%d knows no primary named \"%s\"",
					 cand.target.host, cand.target.port, target->master_name);
			ok = false;
		}
		else
		{
			target->host = pstrdup(r[nauth]->element[0]->str);
			target->port = atoi(r[nauth]->element[1]->str);
		}
		for (int k = 0; k <= nauth; k++)
			freeReplyObject(r[k]);
		if (ok)
			return;
	}
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("could not find the Redis primary through the sentinels at %s",
					target->display),
			 errdetail("%s", errbuf),
			 errhint("Check pg2redis.redis_url, pg2redis.redis_sentinel_password_file and that the sentinels are up.")));
}

/*
 * redis_session_target fills *target from the pg2redis.redis_* settings
 * and, for a redis-sentinel:// URL, points it at the primary the sentinels
 * name; raises an ERROR when the settings are unusable or none does.
 */
void
redis_session_target(RedisTarget *target)
{
	RedisSetupError err;

	if (!pg2r_redis_target(target, &err))
		ereport(ERROR,
				(errcode(err.sqlerrcode), errmsg("%s", err.message),
				 errhint("%s", err.hint[0]
								   ? err.hint
								   : "Fix the pg2redis.redis_* settings.")));
	redis_session_find_primary(target);
}

/* redis_fail raises the ERROR of a failed pg2redis_redis() call. */
static void redis_fail(const RedisTarget *target, const char *msg)
	pg_attribute_noreturn();

static void
redis_fail(const RedisTarget *target, const char *msg)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("could not run the command on Redis at %s",
					target->display),
			 errdetail("%s", msg),
			 errhint("Check pg2redis.redis_url and that Redis is running.")));
}

/*
 * redis_roundtrip connects to target, sends the handshake, ASKING when
 * asking, and the command (cmd, in RESP), and returns the command's reply
 * (free it with freeReplyObject).  Raises an ERROR on failure or after
 * pg2redis.redis_timeout.  A one-node exchange of its own (ask_node), not
 * part of any session.
 */
static redisReply *
redis_roundtrip(const RedisTarget *target, const StringInfo cmd, bool asking)
{
	RedisSession   s;
	SessionNode	   cand;
	StringInfoData out;
	redisReply	  *r[2] = {NULL, NULL};
	int			   nreplies = asking ? 2 : 1;
	char		   errbuf[sizeof(cand.conn.error)] = "";

	memset(&s, 0, sizeof(s));
	s.cxt = CurrentMemoryContext;
	s.target = *target;
	memset(&cand, 0, sizeof(cand));
	cand.target = *target;
	initStringInfo(&out);
	if (asking)
		redis_append_cstrings(&out, 1, "ASKING");
	appendBinaryStringInfo(&out, cmd->data, cmd->len);
	if (!ask_node(&s, &cand, &out, nreplies, r, errbuf, sizeof(errbuf)))
		redis_fail(target, errbuf);
	pfree(out.data);
	if (asking)
	{
		/* ASKING is part of the setup: its error fails the call */
		if (r[0]->type == REDIS_REPLY_ERROR)
		{
			snprintf(errbuf, sizeof(errbuf), "%s", r[0]->str);
			freeReplyObject(r[0]);
			freeReplyObject(r[1]);
			redis_fail(target, errbuf);
		}
		freeReplyObject(r[0]);
	}
	return r[nreplies - 1];
}

/*
 * read_slot_map asks the URL's first seed for the cluster's slot map
 * (CLUSTER SLOTS); an ERROR when it cannot.  Redirections are followed only
 * to the primaries this map lists, so that a node (or whoever can answer in
 * its place) cannot send the command, and the AUTH before it, elsewhere.
 */
static ClusterMap *
read_slot_map(const RedisTarget *target)
{
	RedisTarget	   seed = *target;
	StringInfoData cmd;
	redisReply	  *reply;
	ClusterMap	  *map = palloc(sizeof(ClusterMap));
	char		   err[256];
	bool		   ok;

	seed.host = target->seed_hosts[0];
	seed.port = target->seed_ports[0];
	initStringInfo(&cmd);
	redis_append_cstrings(&cmd, 2, "CLUSTER", "SLOTS");
	reply = redis_roundtrip(&seed, &cmd, false);
	ok = cluster_parse_slots(reply, seed.host, map, err, sizeof(err));
	freeReplyObject(reply);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not read the slot map of the Redis Cluster at %s",
						target->display),
				 errdetail("%s", err),
				 errhint("Check that pg2redis.redis_url names nodes of a healthy Redis Cluster.")));
	return map;
}

/* map_has_node tells whether host:port is a primary of map. */
static bool
map_has_node(const ClusterMap *map, const char *host, int port)
{
	for (int i = 0; i < map->nnodes; i++)
		if (map->nodes[i].port == port &&
			strcmp(map->nodes[i].host, host) == 0)
			return true;
	return false;
}

/*
 * redis_session_command runs one command (cmd, in RESP) on target, outside
 * any session, and returns its reply (free it with freeReplyObject).  On a
 * cluster it follows MOVED and ASK, a few hops at most, and only to the
 * primaries of the slot map.  For pg2redis_redis().
 */
redisReply *
redis_session_command(const RedisTarget *cmd_target, const StringInfo cmd)
{
	RedisTarget target = *cmd_target;
	ClusterMap *map = NULL;
	bool		map_fresh = false;
	bool		asking = false;
	redisReply *reply = NULL;

	reply = redis_roundtrip(&target, cmd, false);
	for (int hops = 0; target.cluster && hops < 5; hops++)
	{
		char *host;
		int	  port;

		if (!pg2r_redirection(reply, target.host, &host, &port, &asking))
			break;
		freeReplyObject(reply);
		reply = NULL;
		if (map == NULL || (!map_has_node(map, host, port) && !map_fresh))
		{
			map = read_slot_map(&target);
			map_fresh = true;
		}
		if (!map_has_node(map, host, port))
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("the Redis Cluster redirected the command to %s:%d, which is not a node of its slot map",
							host, port),
					 errdetail("pg2redis_redis() follows MOVED and ASK only to primaries that CLUSTER SLOTS lists."),
					 errhint("Check the cluster's health and the nodes pg2redis.redis_url names.")));
		map_fresh = false;
		target.host = host;
		target.port = port;
		reply = redis_roundtrip(&target, cmd, asking);
	}

	return reply;
}

/*
 * redis_session_open connects to the Redis of pg2redis.redis_url (lazily:
 * a node is connected when a batch first needs it); on a cluster, reads
 * the slot map.  The session lives in the current memory context, whose
 * reset or deletion closes it.
 */
RedisSession *
redis_session_open(void)
{
	RedisSession *s = palloc0(sizeof(RedisSession));

	s->cxt = CurrentMemoryContext;
	redis_session_target(&s->target);
	s->cluster = s->target.cluster;
	s->cb.func = session_close_all;
	s->cb.arg = s;
	MemoryContextRegisterResetCallback(s->cxt, &s->cb);
	if (s->cluster)
		read_map(s);
	else
		set_nodes(s, 1);
	return s;
}

/* redis_session_close closes every connection of s. */
void
redis_session_close(RedisSession *s)
{
	session_close_all(s);
}

/* redis_session_is_cluster tells whether s talks to a Redis Cluster. */
bool
redis_session_is_cluster(RedisSession *s)
{
	return s->cluster;
}

/* redis_session_nodes returns how many nodes (primaries) s has. */
int
redis_session_nodes(RedisSession *s)
{
	return s->nnodes;
}

/* redis_batch_init makes an empty batch in the current memory context. */
void
redis_batch_init(SessionBatch *b)
{
	initStringInfo(&b->buf);
	b->cap = 256;
	b->cmds = palloc(sizeof(SessionCmd) * b->cap);
	b->ncmds = 0;
	b->unanswered = NULL;
}

/* redis_batch_reset frees the replies of b and empties it. */
void
redis_batch_reset(SessionBatch *b)
{
	for (int i = 0; i < b->ncmds; i++)
		if (b->cmds[i].reply)
			freeReplyObject(b->cmds[i].reply);
	resetStringInfo(&b->buf);
	b->ncmds = 0;
}

/* batch_push appends a command to b; node < 0 routes it by its slot. */
static int
batch_push(SessionBatch *b, int node, int argc, const char *const *argv,
		   const size_t *argvlen)
{
	SessionCmd *c;

	if (b->ncmds == b->cap)
	{
		b->cap *= 2;
		b->cmds = repalloc(b->cmds, sizeof(SessionCmd) * b->cap);
	}
	c = &b->cmds[b->ncmds];
	c->off = b->buf.len;
	redis_append_command(&b->buf, argc, argv, argvlen);
	c->len = b->buf.len - c->off;
	c->slot = node < 0 && argc > 1 ? redis_key_slot(argv[1], argvlen[1]) : -1;
	c->node = node;
	c->reply = NULL;
	return b->ncmds++;
}

/*
 * redis_batch_add appends a command whose key is its first argument; it
 * goes to the node serving the key.  Returns its index in the batch.
 */
int
redis_batch_add(SessionBatch *b, int argc, const char *const *argv,
				const size_t *argvlen)
{
	return batch_push(b, -1, argc, argv, argvlen);
}

/*
 * redis_batch_add_node appends a command for node number node (0 ..
 * redis_session_nodes() - 1), such as a SCAN of that node's keys.
 */
int
redis_batch_add_node(SessionBatch *b, int node, int argc,
					 const char *const *argv, const size_t *argvlen)
{
	return batch_push(b, node, argc, argv, argvlen);
}

/* node_of returns the node command c goes to in session s. */
static int
node_of(RedisSession *s, const SessionCmd *c)
{
	if (!s->cluster)
		return 0;
	if (c->node >= 0)
		return c->node < s->nnodes ? c->node : 0;
	if (c->slot < 0)
		return 0;
	return s->map.slot_node[c->slot];
}

/* is_redirect tells whether reply r says the command's slot moved. */
static bool
is_redirect(const redisReply *r)
{
	/* not CLUSTERDOWN: the round would only be refused again */
	static const char *const codes[] = {"MOVED", "ASK", "TRYAGAIN"};

	return r && r->type == REDIS_REPLY_ERROR &&
		   pg2r_error_code_in(r->str, codes, lengthof(codes));
}

/*
 * round_send writes the commands of b whose reply is missing (unanswered[i]) to
 * their nodes, as far as the sockets take them without waiting, so that
 * Redis works on them while the caller goes on.
 */
static void
round_send(RedisSession *s, SessionBatch *b, const bool *unanswered)
{
	for (int ni = 0; ni < s->nnodes; ni++)
	{
		SessionNode *n = &s->nodes[ni];

		n->count = 0;
		n->idx = palloc(sizeof(int) * Max(b->ncmds, 1));
		for (int i = 0; i < b->ncmds; i++)
			if (unanswered[i] && node_of(s, &b->cmds[i]) == ni)
				n->idx[n->count++] = i;
		if (n->count == 0)
			continue;
		initStringInfo(&n->out);
		n->nh = node_connect(s, n, &n->out);
		for (int k = 0; k < n->count; k++)
			appendBinaryStringInfo(&n->out,
								   b->buf.data + b->cmds[n->idx[k]].off,
								   b->cmds[n->idx[k]].len);
		n->sent = 0;
		for (;;)
		{
			ssize_t w = redis_send(&n->conn, n->out.data + n->sent,
								   n->out.len - n->sent);

			if (w < 0)
				node_fail(s, n, "could not send");
			if (w == 0)
				break;
			n->sent += w;
		}
	}
}

/*
 * round_finish completes what round_send began: the rest of each node's
 * commands out, every reply in; returns how many replies were redirections
 * (those commands keep unanswered[i] set, to be run again).
 */
static int
round_finish(RedisSession *s, SessionBatch *b, bool *unanswered)
{
	int			 redirects = 0;
	redisReply **replies = palloc(sizeof(redisReply *) * Max(b->ncmds, 1));

	for (int ni = 0; ni < s->nnodes; ni++)
	{
		SessionNode *n = &s->nodes[ni];

		if (n->count == 0)
			continue;
		exchange(s, n, &n->out, n->sent, n->nh, n->count, replies);
		for (int k = 0; k < n->count; k++)
		{
			SessionCmd *c = &b->cmds[n->idx[k]];

			if (s->cluster && c->node < 0 && is_redirect(replies[k]))
			{
				freeReplyObject(replies[k]);
				redirects++;
				continue;
			}
			c->reply = replies[k];
			unanswered[n->idx[k]] = false;
		}
		pfree(n->out.data);
		pfree(n->idx);
		n->count = 0;
	}
	pfree(replies);
	return redirects;
}

/*
 * redis_session_send starts batch b: its commands are written as far as
 * the sockets take them, and Redis runs them while the caller prepares the
 * next batch.  redis_session_finish(s, b) must follow before another batch
 * is sent on s.
 */
void
redis_session_send(RedisSession *s, SessionBatch *b)
{
	b->unanswered = palloc(sizeof(bool) * Max(b->ncmds, 1));
	for (int i = 0; i < b->ncmds; i++)
		b->unanswered[i] = b->cmds[i].reply == NULL;
	round_send(s, b, b->unanswered);
}

/*
 * redis_session_finish reads every reply of b, which redis_session_send
 * started, and sets each command's reply (errors included: a command Redis
 * refuses is a reply of type error).  On a cluster, commands redirected
 * because their slot moved run again, up to a few rounds, after the slot
 * map is read again.
 */
void
redis_session_finish(RedisSession *s, SessionBatch *b)
{
	for (int round = 0;; round++)
	{
		if (round_finish(s, b, b->unanswered) == 0)
			break;
		if (round == SESSION_REDIRECT_ROUNDS)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("Redis Cluster slots kept moving while pg2redis read them"),
					 errhint("Try again once resharding is over.")));
		read_map(s);
		pg_usleep(100000L * (round + 1));
		round_send(s, b, b->unanswered);
	}
	pfree(b->unanswered);
	b->unanswered = NULL;
}

/*
 * redis_session_run runs every command of b and sets its reply, as
 * redis_session_send followed by redis_session_finish.
 */
void
redis_session_run(RedisSession *s, SessionBatch *b)
{
	redis_session_send(s, b);
	redis_session_finish(s, b);
}
