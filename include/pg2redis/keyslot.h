/*-------------------------------------------------------------------------
 *
 * keyslot.h
 *	  Redis Cluster hash slots of keys and of rendered commands.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_KEYSLOT_H
#define PG2REDIS_KEYSLOT_H

#define REDIS_CLUSTER_SLOTS 16384

/* redis_command_slot results other than a slot number */
#define REDIS_SLOT_NONE (-1)	  /* the command has no key */
#define REDIS_SLOT_CROSSSLOT (-2) /* its keys hash to different slots */
#define REDIS_SLOT_UNKNOWN (-3)	  /* not a command rules may use */

extern int redis_key_slot(const char *key, size_t len);
struct RedisCommandDef;

extern int redis_command_slot(int argc, const char *const *argv,
							  const size_t *argvlen);
extern int redis_command_def_slot(const struct RedisCommandDef *def, int argc,
								  const char *const *argv,
								  const size_t		*argvlen);

#endif /* PG2REDIS_KEYSLOT_H */
