/*-------------------------------------------------------------------------
 *
 * settings.h
 *	  The pg2redis.* settings (GUCs).
 *
 * Stage: common (every stage may include it)
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_SETTINGS_H
#define PG2REDIS_SETTINGS_H

/* How a TLS server is checked (pg2redis.redis_tls_verify). */
typedef enum RedisTlsVerify
{
	REDIS_TLS_VERIFY_FULL, /* chain to a trusted CA, and the host name */
	REDIS_TLS_VERIFY_CA,   /* chain to a trusted CA only */
	REDIS_TLS_VERIFY_NONE  /* nothing: encryption without authentication */
} RedisTlsVerify;

/* pg2redis.numeric_mode */
typedef enum Pg2rNumericMode
{
	PG2R_NUMERIC_NUMBER,
	PG2R_NUMERIC_STRING
} Pg2rNumericMode;

typedef enum Pg2rOnCommandError
{
	PG2R_ON_ERROR_DEAD_LETTER,
	PG2R_ON_ERROR_STOP
} Pg2rOnCommandError;

extern char *pg2r_database;
extern int	 pg2r_numeric_mode;
extern char *pg2r_redis_url;
extern char *pg2r_redis_password_file;
extern char *pg2r_redis_tls_ca_file;
extern char *pg2r_redis_tls_cert_file;
extern char *pg2r_redis_tls_key_file;
extern int	 pg2r_redis_tls_verify;
extern char *pg2r_slot_name;
extern bool	 pg2r_enabled;
extern int	 pg2r_batch_size;
extern int	 pg2r_flush_interval_ms;
extern int	 pg2r_redis_timeout_ms;
extern int	 pg2r_redis_cluster_wait_replicas;
extern int	 pg2r_redis_wait_replicas;
extern char *pg2r_redis_sentinel_user;
extern char *pg2r_redis_sentinel_password_file;
extern int	 pg2r_retry_initial_ms;
extern int	 pg2r_retry_max_ms;
extern int	 pg2r_on_command_error;
extern int	 pg2r_dead_letter_retention_s;
extern int	 pg2r_max_transaction_commands;
extern int	 pg2r_batch_bytes;
extern int	 pg2r_max_argument_bytes;
extern int	 pg2r_decoding_work_mem_kb;
extern int	 pg2r_snapshot_batch_size;
extern int	 pg2r_snapshot_statement_timeout_ms;
extern int	 pg2r_load_stall_timeout_ms;

struct RedisTarget;
struct RedisSetupError;

extern bool	 pg2r_redis_target(struct RedisTarget	  *target,
							   struct RedisSetupError *err);
extern char *pg2r_redis_settings_signature(void);

#endif /* PG2REDIS_SETTINGS_H */
