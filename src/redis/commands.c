/*-------------------------------------------------------------------------
 *
 * commands.c
 *	  The Redis commands a rule may send, and those it never may.
 *
 * Rules write a read model: data commands only.  The table says, for each
 * command, how many arguments it needs at least and where its keys are (the
 * latter for routing in cluster mode).  Anything not listed is refused when
 * the rule is written; server-level and connection-level commands get a
 * message of their own, since sending them from a change stream would harm
 * the server or break the stream's transaction framing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "pg2redis/commands.h"

static const RedisCommandDef commands[] = {
	/* name, min args, first key, last key, key step */
	{"APPEND", 3, 1, 1, 1},		  {"DECR", 2, 1, 1, 1},
	{"DECRBY", 3, 1, 1, 1},		  {"DEL", 2, 1, -1, 1},
	{"EXPIRE", 3, 1, 1, 1},		  {"EXPIREAT", 3, 1, 1, 1},
	{"HDEL", 3, 1, 1, 1},		  {"HINCRBY", 4, 1, 1, 1},
	{"HINCRBYFLOAT", 4, 1, 1, 1}, {"HMSET", 4, 1, 1, 1},
	{"HSET", 4, 1, 1, 1},		  {"HSETNX", 4, 1, 1, 1},
	{"INCR", 2, 1, 1, 1},		  {"INCRBY", 3, 1, 1, 1},
	{"INCRBYFLOAT", 3, 1, 1, 1},  {"JSON.DEL", 2, 1, 1, 1},
	{"JSON.SET", 4, 1, 1, 1},	  {"LPUSH", 3, 1, 1, 1},
	{"LREM", 4, 1, 1, 1},		  {"LTRIM", 4, 1, 1, 1},
	{"MSET", 3, 1, -1, 2},		  {"PERSIST", 2, 1, 1, 1},
	{"PEXPIRE", 3, 1, 1, 1},	  {"PEXPIREAT", 3, 1, 1, 1},
	{"PSETEX", 4, 1, 1, 1},		  {"PUBLISH", 3, 0, 0, 0},
	{"RPUSH", 3, 1, 1, 1},		  {"SADD", 3, 1, 1, 1},
	{"SET", 3, 1, 1, 1},		  {"SETEX", 4, 1, 1, 1},
	{"SETNX", 3, 1, 1, 1},		  {"SREM", 3, 1, 1, 1},
	{"UNLINK", 2, 1, -1, 1},	  {"XADD", 5, 1, 1, 1},
	{"XDEL", 3, 1, 1, 1},		  {"XTRIM", 4, 1, 1, 1},
	{"ZADD", 4, 1, 1, 1},		  {"ZINCRBY", 4, 1, 1, 1},
	{"ZREM", 3, 1, 1, 1},		  {"ZREMRANGEBYSCORE", 4, 1, 1, 1},
};

/* Commands refused with a message of their own. */
static const char *const forbidden[] = {
	"ACL",		"AUTH",		 "BGREWRITEAOF", "BGSAVE",	  "CLIENT",
	"CLUSTER",	"CONFIG",	 "DEBUG",		 "DISCARD",	  "EVAL",
	"EVALSHA",	"EVAL_RO",	 "EVALSHA_RO",	 "EXEC",	  "FAILOVER",
	"FCALL",	"FLUSHALL",	 "FLUSHDB",		 "FUNCTION",  "HELLO",
	"KEYS",		"LASTSAVE",	 "MIGRATE",		 "MODULE",	  "MONITOR",
	"MOVE",		"MULTI",	 "PSUBSCRIBE",	 "PSYNC",	  "QUIT",
	"READONLY", "READWRITE", "REPLCONF",	 "REPLICAOF", "RESET",
	"RESTORE",	"SAVE",		 "SCRIPT",		 "SELECT",	  "SHUTDOWN",
	"SLAVEOF",	"SLOWLOG",	 "SUBSCRIBE",	 "SWAPDB",	  "SYNC",
	"UNWATCH",	"WAIT",		 "WATCH",
};

/*
 * redis_command_lookup returns the definition of a command rules may use
 * (case-insensitive), or NULL.
 */
const RedisCommandDef *
redis_command_lookup(const char *name)
{
	int lo = 0, hi = lengthof(commands) - 1;

	while (lo <= hi)
	{
		int mid = (lo + hi) / 2;
		int cmp = pg_strcasecmp(name, commands[mid].name);

		if (cmp == 0)
			return &commands[mid];
		if (cmp < 0)
			hi = mid - 1;
		else
			lo = mid + 1;
	}
	return NULL;
}

/*
 * redis_command_index returns the position of def in the command table,
 * or -1 for NULL: a number that names the command in buffers (cmdbuf.c)
 * where a pointer would do too, but should not be written.
 */
int
redis_command_index(const RedisCommandDef *def)
{
	return def == NULL ? -1 : (int) (def - commands);
}

/*
 * redis_command_at returns the command at position i of the table
 * (redis_command_index), or NULL for -1.
 */
const RedisCommandDef *
redis_command_at(int i)
{
	Assert(i >= -1 && i < (int) lengthof(commands));
	return i < 0 ? NULL : &commands[i];
}

/*
 * redis_command_is_forbidden tells whether a command is a server-level or
 * connection-level one that a rule must never send.
 */
bool
redis_command_is_forbidden(const char *name)
{
	for (size_t i = 0; i < lengthof(forbidden); i++)
		if (pg_strcasecmp(name, forbidden[i]) == 0)
			return true;
	return false;
}
