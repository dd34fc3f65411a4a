/*-------------------------------------------------------------------------
 *
 * commands.h
 *	  The Redis commands rules may use, with their shapes.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_COMMANDS_H
#define PG2REDIS_COMMANDS_H

/*
 * A command rules may send.  Keys are the arguments first_key, first_key +
 * key_step, ... up to last_key (negative counts from the end; 0 = no key).
 */
typedef struct RedisCommandDef
{
	const char *name;
	int			min_args; /* including the command name */
	int			first_key;
	int			last_key;
	int			key_step;
} RedisCommandDef;

extern const RedisCommandDef *redis_command_lookup(const char *name);
extern int					  redis_command_index(const RedisCommandDef *def);
extern const RedisCommandDef *redis_command_at(int i);

extern bool redis_command_is_forbidden(const char *name);

#endif /* PG2REDIS_COMMANDS_H */
