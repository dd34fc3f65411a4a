/*-------------------------------------------------------------------------
 *
 * redis_target.c
 *	  The Redis connection the settings describe: URL, secrets and TLS
 *	  files turned into a RedisTarget, and a signature that changes when
 *	  any of them does.
 *
 * Used by the worker's links (src/sender/links.c) and by a backend's own
 * Redis sessions (src/redis/session_redis.c).  Reads the settings
 * (settings.h) and the secret files; raises no ERROR.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/hashfn.h"

#include "pg2redis/common.h"
#include "pg2redis/redis_io.h"
#include "pg2redis/settings.h"

/*
 * pg2r_redis_target fills *target from the Redis settings: the URL, the
 * password file and the TLS settings, refusing secret files that others
 * could read and an encrypted client key.  Returns false with err set
 * (never containing a secret) for the caller to report.
 */
bool
pg2r_redis_target(RedisTarget *target, RedisSetupError *err)
{
	char msg[REDIS_ERROR_LEN];

	if (!redis_parse_url(pg2r_redis_url, target, msg, sizeof(msg)))
	{
		err->sqlerrcode = ERRCODE_INVALID_PARAMETER_VALUE;
		snprintf(err->message, sizeof(err->message),
				 "invalid pg2redis.redis_url: %s", msg);
		strlcpy(err->hint,
				strstr(pg2r_redis_url, "-sentinel://")
					? "The form is redis-sentinel://[[user]:password@]host[:port][,host[:port]...]/name[/db]; percent-encode an @, : or / in the user, the password or the name."
					: "The form is redis://[[user]:password@]host[:port][/db]; percent-encode an @, : or / in the user or password.",
				sizeof(err->hint));
		return false;
	}
	if (!redis_apply_password_file(target, pg2r_redis_password_file, err))
		return false;
	if (!redis_apply_sentinel_password_file(target, pg2r_redis_sentinel_user,
											pg2r_redis_sentinel_password_file,
											err))
		return false;
	target->tls_ca_file = pg2r_redis_tls_ca_file;
	target->tls_cert_file = pg2r_redis_tls_cert_file;
	target->tls_key_file = pg2r_redis_tls_key_file;
	target->tls_verify = pg2r_redis_tls_verify;
	return redis_check_tls_key(target, err);
}

/*
 * file_signature writes into file a string that changes whenever secret
 * file path does: its modification time, size, mode and a hash of its
 * first line ("" when path is unset or absent).  It holds no secret.
 */
static void
file_signature(const char *path, char *file, size_t size)
{
	struct stat st;
	int			fd = -1;
	bool		found = false;

	file[0] = '\0';

	/*
	 * Opened without blocking and checked on the open file: a FIFO (or a
	 * path replaced by one) would otherwise hold the worker in open() until
	 * something writes to it, deaf to SIGTERM and shutdown.  Only a regular
	 * file is read, and only its first line (at most 1 kB of it).
	 */
	if (path && path[0])
	{
		fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		if (fd >= 0)
			found = fstat(fd, &st) == 0;
		else
			found = stat(path, &st) == 0;
	}
	if (found)
	{
		char	line[1024] = "";
		ssize_t n = 0;
		uint32	hash = 0;

		if (fd >= 0 && S_ISREG(st.st_mode))
		{
			n = read(fd, line, sizeof(line) - 1);
			if (n > 0)
			{
				char *nl = memchr(line, '\n', n);

				if (nl)
					n = nl - line + 1;
				hash = hash_bytes((const unsigned char *) line, (int) n);
			}
			explicit_bzero(line, sizeof(line));
		}
		snprintf(file, size, "%lld.%ld %lld %o %s%08x",
				 (long long) st.st_mtim.tv_sec, (long) st.st_mtim.tv_nsec,
				 (long long) st.st_size, (unsigned int) st.st_mode,
				 fd >= 0 ? "" : "unreadable ", hash);
	}
	if (fd >= 0)
		close(fd);
}

/*
 * pg2r_redis_settings_signature returns a string that changes whenever a
 * setting of the Redis connection does (so that a reload reconnects),
 * including the password files' signatures (file_signature: a password
 * changed in a file, or a file created or fixed, is used, since the worker
 * compares the signature at every connection attempt).  The string holds
 * no secret.
 */
char *
pg2r_redis_settings_signature(void)
{
	char file[128];
	char sfile[128];

	file_signature(pg2r_redis_password_file, file, sizeof(file));
	file_signature(pg2r_redis_sentinel_password_file, sfile, sizeof(sfile));
	return psprintf("%s\n%s\n%s\n%s\n%s\n%s\n%d\n%s\n%s\n%s", pg2r_redis_url,
					pg2r_redis_password_file, file, pg2r_redis_tls_ca_file,
					pg2r_redis_tls_cert_file, pg2r_redis_tls_key_file,
					pg2r_redis_tls_verify, pg2r_redis_sentinel_user,
					pg2r_redis_sentinel_password_file, sfile);
}
