/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  The variables behind the pg2redis.* settings, with their defaults.
 *
 * Every stage reads settings, so their variables live in the lowest stage
 * (common/), declared in settings.h.  They are registered, with their
 * ranges, units and help texts, by _PG_init (src/pg2redis.c:
 * define_settings) and failover_define_settings; nothing here depends on
 * anything else of pg2redis.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "pg2redis/common.h"
#include "pg2redis/settings.h"

int	  pg2r_numeric_mode = PG2R_NUMERIC_NUMBER;
char *pg2r_database = NULL;
char *pg2r_redis_url = NULL;
char *pg2r_slot_name = NULL;
char *pg2r_redis_password_file = NULL;
char *pg2r_redis_tls_ca_file = NULL;
char *pg2r_redis_tls_cert_file = NULL;
char *pg2r_redis_tls_key_file = NULL;
int	  pg2r_redis_tls_verify = REDIS_TLS_VERIFY_FULL;
bool  pg2r_enabled = true;
int	  pg2r_batch_size = 1000;
int	  pg2r_flush_interval_ms = 10;
int	  pg2r_redis_timeout_ms = 5000;
int	  pg2r_redis_cluster_wait_replicas = 1;
int	  pg2r_redis_wait_replicas = -1;
char *pg2r_redis_sentinel_user = NULL;
char *pg2r_redis_sentinel_password_file = NULL;
int	  pg2r_retry_initial_ms = 100;
int	  pg2r_retry_max_ms = 10000;
int	  pg2r_on_command_error = PG2R_ON_ERROR_DEAD_LETTER;
int	  pg2r_max_transaction_commands = 10000;
int	  pg2r_batch_bytes = 16 * 1024 * 1024;
int	  pg2r_max_argument_bytes = 64 * 1024 * 1024;
int	  pg2r_decoding_work_mem_kb = 16384;
int	  pg2r_snapshot_batch_size = 10000;
int	  pg2r_dead_letter_retention_s = 0;
int	  pg2r_snapshot_statement_timeout_ms = 60000;
int	  pg2r_load_stall_timeout_ms = 60000;
