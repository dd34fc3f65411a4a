/*-------------------------------------------------------------------------
 *
 * keyslot.c
 *	  Redis Cluster hash slots of keys and of rendered commands.
 *
 * Redis Cluster shards the key space into 16384 slots: a key's slot is the
 * CRC16 (XMODEM: polynomial 0x1021, initial value 0, no reflection) of the
 * key modulo 16384.  When the key holds a hash tag, a '{' followed later by
 * a '}' with at least one byte between them, only the bytes between the first
 * '{' and the first '}' after it are hashed, so that "{user:1}:name" and
 * "{user:1}:orders" land in one slot.  An empty tag ("{}") does not count:
 * the whole key is hashed then.
 *
 * This is the groundwork of cluster mode: the sender routes a command to the
 * primary owning its slot, and a command whose keys hash to different slots
 * cannot be sent to a cluster at all (Redis answers CROSSSLOT).  The
 * functions pg2redis_key_slot(text) and pg2redis_command_slot(text[]) expose
 * the computation so that users can check their hash tags, e.g. on the
 * commands pg2redis_preview() shows.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "pg2redis/commands.h"
#include "pg2redis/keyslot.h"
#include "pg2redis/pgarray.h"

PG_FUNCTION_INFO_V1(pg2redis_key_slot);
PG_FUNCTION_INFO_V1(pg2redis_command_slot);

/* The CRC16 lookup table, filled on first use. */
static uint16 crc16_table[256];
static bool	  crc16_ready = false;

/*
 * crc16_init fills the lookup table of the CRC16 used by Redis Cluster.
 */
static void
crc16_init(void)
{
	for (int byte = 0; byte < 256; byte++)
	{
		uint16 crc = (uint16) (byte << 8);

		for (int bit = 0; bit < 8; bit++)
			crc = (crc & 0x8000) ? (uint16) ((crc << 1) ^ 0x1021)
								 : (uint16) (crc << 1);
		crc16_table[byte] = crc;
	}
	crc16_ready = true;
}

/*
 * crc16 returns the CRC16/XMODEM checksum of len bytes.
 */
static uint16
crc16(const char *buf, size_t len)
{
	uint16 crc = 0;

	if (!crc16_ready)
		crc16_init();
	for (size_t i = 0; i < len; i++)
		crc = (uint16) ((crc << 8) ^
						crc16_table[((crc >> 8) ^ (unsigned char) buf[i]) &
									0xff]);
	return crc;
}

/*
 * redis_key_slot returns the Redis Cluster hash slot (0..16383) of a key of
 * len bytes, honouring hash tags.
 */
int
redis_key_slot(const char *key, size_t len)
{
	const char *open = memchr(key, '{', len);

	if (open != NULL)
	{
		size_t		after = (size_t) (open - key) + 1;
		const char *close = memchr(open + 1, '}', len - after);

		if (close != NULL && close > open + 1)
			return crc16(open + 1, (size_t) (close - open - 1)) %
				   REDIS_CLUSTER_SLOTS;
	}
	return crc16(key, len) % REDIS_CLUSTER_SLOTS;
}

/*
 * redis_command_slot returns the slot all keys of a rendered command hash
 * to, REDIS_SLOT_NONE when it has no key, REDIS_SLOT_CROSSSLOT when its keys
 * hash to different slots, or REDIS_SLOT_UNKNOWN for a command rules may not
 * use.  argv[0] must be NUL-terminated (it is looked up by name).
 */
int
redis_command_slot(int argc, const char *const *argv, const size_t *argvlen)
{
	if (argc < 1)
		return REDIS_SLOT_UNKNOWN;
	return redis_command_def_slot(redis_command_lookup(argv[0]), argc, argv,
								  argvlen);
}

/*
 * redis_command_def_slot is redis_command_slot for a command whose
 * definition is known (a rule's, looked up once when the rule was loaded).
 */
int
redis_command_def_slot(const RedisCommandDef *def, int argc,
					   const char *const *argv, const size_t *argvlen)
{
	int last;
	int slot = REDIS_SLOT_NONE;

	if (def == NULL)
		return REDIS_SLOT_UNKNOWN;
	if (def->first_key <= 0)
		return REDIS_SLOT_NONE;
	last = def->last_key < 0 ? argc + def->last_key : def->last_key;
	for (int i = def->first_key; i <= last && i < argc; i += def->key_step)
	{
		int s = redis_key_slot(argv[i], argvlen[i]);

		if (slot == REDIS_SLOT_NONE)
			slot = s;
		else if (slot != s)
			return REDIS_SLOT_CROSSSLOT;
	}
	return slot;
}

/*
 * pg2redis_key_slot(key text) returns the Redis Cluster hash slot of a key.
 */
Datum
pg2redis_key_slot(PG_FUNCTION_ARGS)
{
	text *key = PG_GETARG_TEXT_PP(0);

	PG_RETURN_INT32(redis_key_slot(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)));
}

/*
 * pg2redis_command_slot(command text[]) returns the hash slot of a command's
 * keys, NULL when it has none, and refuses a command whose keys hash to
 * different slots or that rules may not use.
 */
Datum
pg2redis_command_slot(PG_FUNCTION_ARGS)
{
	ArrayType	*arr = PG_GETARG_ARRAYTYPE_P(0);
	int			 argc;
	const char **argv;
	size_t		*argvlen;
	int			 null_at;
	int			 slot;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR, (errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
						errmsg("a command must be a one-dimensional array")));
	/* the command name, argv[0], is a C string for the lookup */
	argc = pg2r_text_array_argv(arr, &argv, &argvlen, &null_at);
	if (argc == 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("a command needs at least its name")));
	if (null_at >= 0)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("argument %d of the command is null", null_at + 1)));

	slot = redis_command_slot(argc, argv, argvlen);
	if (slot == REDIS_SLOT_UNKNOWN)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("unsupported Redis command \"%s\"", argv[0]),
				 errhint("See the list of supported commands in the README.")));
	if (slot == REDIS_SLOT_CROSSSLOT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the keys of this %s command hash to different "
						"Redis Cluster slots",
						argv[0]),
				 errhint("Give the keys a common hash tag, such as "
						 "\"{order:1}:items\" and \"{order:1}:total\".")));
	if (slot == REDIS_SLOT_NONE)
		PG_RETURN_NULL();
	PG_RETURN_INT32(slot);
}
