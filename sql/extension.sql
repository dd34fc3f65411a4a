-- The objects CREATE EXTENSION makes, their privileges, and pg_dump support.
CREATE EXTENSION pg2redis;

-- Catalog tables, as SPEC section 4 names them.
SELECT attname, format_type(atttypid, atttypmod), attnotnull
  FROM pg_attribute
 WHERE attrelid = 'pg2redis.rules'::regclass AND attnum > 0
 ORDER BY attnum;
SELECT attname, format_type(atttypid, atttypmod)
  FROM pg_attribute
 WHERE attrelid = 'pg2redis.dead_letters'::regclass AND attnum > 0
 ORDER BY attnum;

-- The rules table is readable under historic snapshots (decoding).
SELECT reloptions FROM pg_class WHERE oid = 'pg2redis.rules'::regclass;

-- Functions of the extension, and nothing granted to PUBLIC.
SELECT p.oid::regprocedure AS function,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_can_execute
  FROM pg_proc p
  JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg2redis'
 ORDER BY p.oid::regprocedure::text;
SELECT has_schema_privilege('public', 'pg2redis', 'USAGE') AS public_schema_usage,
       has_table_privilege('public', 'pg2redis.rules', 'SELECT') AS public_rules_select;

-- Rule tables and their sequences are kept by pg_dump.
SELECT unnest(extconfig)::regclass AS dumped FROM pg_extension
 WHERE extname = 'pg2redis' ORDER BY 1;

-- An unprivileged role cannot add rules or preview.
CREATE ROLE pg2redis_nobody;
SET ROLE pg2redis_nobody;
SELECT pg2redis_add_rule('pg_class', 'insert', 'SET x 1');
SELECT * FROM pg2redis_preview('pg_class', 'insert', '{}');
RESET ROLE;
DROP ROLE pg2redis_nobody;

-- The library reserves the pg2redis.* settings.
SET pg2redis.no_such_setting = 1;
SHOW pg2redis.numeric_mode;

-- pg2redis_status() never shows a Redis password, whatever it contains.
ALTER SYSTEM SET pg2redis.redis_url = 'redis://app:s3cr@t/x@127.0.0.1:1/0';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SELECT redis_url FROM pg2redis_status();
ALTER SYSTEM SET pg2redis.redis_url = 'redis://top/secret@localhost:2';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SELECT redis_url FROM pg2redis_status();
ALTER SYSTEM RESET pg2redis.redis_url;
SELECT pg_reload_conf();

-- Dropping a mapped table drops its rules.
CREATE TABLE gone (id int PRIMARY KEY);
SELECT pg2redis_add_rule('gone', 'insert', 'SET gone:{id} 1') > 0 AS added;
DROP TABLE gone;
SELECT count(*) AS rules_left FROM pg2redis.rules;

DROP EXTENSION pg2redis;
SELECT count(*) AS schema_left FROM pg_namespace WHERE nspname = 'pg2redis';
