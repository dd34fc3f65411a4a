-- The snapshot request API: pg2redis_snapshot(), the pg2redis_snapshots
-- view, snapshot filters, and the errors a user can cause.  (The worker of
-- the test instance streams another database, so requests stay pending
-- here; t/060_snapshot.pl serves them.)
CREATE EXTENSION pg2redis;
SET client_min_messages = warning;

CREATE TABLE keyed (id int PRIMARY KEY, v text);
CREATE TABLE unkeyed (a int, b text);
CREATE TABLE unmapped (id int PRIMARY KEY);
CREATE TABLE parts (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE parts_a PARTITION OF parts FOR VALUES IN ('a');
CREATE TABLE parts_b PARTITION OF parts FOR VALUES IN ('b');
SELECT pg2redis_add_rule('keyed', 'insert', 'SET k:{id} {v}') > 0 AS ok;
SELECT pg2redis_add_rule('unkeyed', 'insert', 'SADD u {a}') > 0 AS ok;
SELECT pg2redis_add_rule('parts', 'insert', 'SADD p {id}') > 0 AS ok;

-- a table without rules, without a key, not a table
SELECT pg2redis_snapshot('unmapped');
SELECT pg2redis_snapshot('unkeyed');
CREATE VIEW keyed_view AS SELECT * FROM keyed;
SELECT pg2redis_snapshot('keyed_view');
-- all mapped tables: refused while one of them has no key
SELECT pg2redis_snapshot();
DELETE FROM pg2redis.rules WHERE relation = 'unkeyed'::regclass;

-- requests queue, in order
SELECT pg2redis_snapshot('keyed') AS first_id \gset
SELECT pg2redis_snapshot('parts') = :first_id + 1 AS second_in_order;
SELECT pg2redis_snapshot() = :first_id + 2 AS all_tables;
SELECT id - :first_id AS n, relation, state, rows, started_at IS NULL AS not_started,
       finished_at, error
  FROM pg2redis_snapshots ORDER BY id;

-- progress: tables of the request, rows estimated from the statistics
-- (reltuples, after ANALYZE); rate and ETA once running
INSERT INTO keyed SELECT g, 'v' FROM generate_series(1, 1000) g;
INSERT INTO parts SELECT g, CASE WHEN g % 4 = 0 THEN 'a' ELSE 'b' END FROM generate_series(1, 400) g;
ANALYZE keyed, parts;
SELECT id - :first_id AS n, relation, tables_total, tables_done, rows_estimate,
       rows_per_second, eta
  FROM pg2redis_snapshots ORDER BY id;
-- a request the worker is half way through: the leaves before its current
-- one are done; the rate is rows over time, the ETA what is left at it
UPDATE pg2redis.snapshots
   SET state = 'running', rows = 100, started_at = now() - interval '10 s',
       current_relation = 'parts_b'
 WHERE id = :first_id + 1;
SELECT relation, tables_total, tables_done, rows_estimate,
       rows_per_second BETWEEN 9 AND 10.1 AS about_10_rows_per_second,
       eta BETWEEN interval '29 s' AND interval '31 s' AS about_30_s_left
  FROM pg2redis_snapshots WHERE id = :first_id + 1;

-- the view's columns
SELECT attname FROM pg_attribute
 WHERE attrelid = 'pg2redis_snapshots'::regclass AND attnum > 0 ORDER BY attnum;

-- redriving dead letters: pg2redis_redrive() queues keys-only requests
-- (served by t/190_redrive.pl), and refuses what it cannot redrive
DELETE FROM pg2redis.snapshots;
INSERT INTO pg2redis.dead_letters (relation, op, command, error, key_index, key) VALUES
  ('keyed', 'insert', '{HSET,k:1}', 'WRONGTYPE', 'keyed_pkey'::regclass, '{1}'),
  ('keyed', 'insert', '{HSET,k:2}', 'WRONGTYPE', 'keyed_pkey'::regclass, '{2}'),
  ('keyed', 'update', '{HSET,k:2}', 'WRONGTYPE', 'keyed_pkey'::regclass, '{2}'),
  ('unkeyed', 'insert', '{SADD,u}', 'WRONGTYPE', NULL, NULL),
  ('parts_a', 'insert', '{SADD,p}', 'WRONGTYPE', 'parts_a_pkey'::regclass, '{4,a}'),
  ('keyed', 'insert', '{SET,k:1}', 'WRONGTYPE', 'keyed_pkey'::regclass, '{1,x}');
SELECT min(id) - 1 AS dl FROM pg2redis.dead_letters \gset
SELECT * FROM pg2redis_redrive('{}'::bigint[]);
SELECT * FROM pg2redis_redrive(NULL::bigint[]);
SELECT * FROM pg2redis_redrive(ARRAY[:dl + 1, NULL]);
SELECT * FROM pg2redis_redrive(ARRAY[:dl + 99]);
SELECT * FROM pg2redis_redrive(ARRAY[:dl + 1, :dl + 4]);
SELECT * FROM pg2redis_redrive(ARRAY[:dl + 6]);
-- one request per table, with the distinct keys; the dead letters are marked
SELECT relation, keys FROM pg2redis_redrive(ARRAY[:dl + 1, :dl + 2, :dl + 3, :dl + 5]);
SELECT relation, state, keys_only, retry_keys, key_index::regclass, current_relation
  FROM pg2redis.snapshots ORDER BY id;
SELECT id - :dl AS n, redriven_at IS NOT NULL AS redriven,
       redrive_request IS NOT NULL AS has_request
  FROM pg2redis.dead_letters ORDER BY id;
SELECT * FROM pg2redis_redrive(ARRAY[:dl + 2]);
-- by relation: what is left and has a key; a literal needs the name
SELECT * FROM pg2redis_redrive('keyed');
SELECT relation, keys FROM pg2redis_redrive(relation => 'unkeyed');
SELECT relation, keys FROM pg2redis_redrive(relation => 'keyed', since => now() + interval '1 day');
SELECT relation, keys FROM pg2redis_redrive('parts'::regclass);
SELECT * FROM pg2redis_redrive(relation => 'keyed_view');
SELECT * FROM pg2redis_redrive(relation => NULL);
-- keys-only requests written directly: checked for shape (the trigger's
-- line numbers left out)
\set SHOW_CONTEXT never
INSERT INTO pg2redis.snapshots (relation, keys_only, retry_keys, key_index)
  VALUES ('keyed', true, '{1}', 'keyed_pkey'::regclass);
INSERT INTO pg2redis.snapshots (relation, keys_only, retry_keys, key_index)
  VALUES ('keyed', true, '{{1,2}}', 'keyed_pkey'::regclass);
INSERT INTO pg2redis.snapshots (relation, keys_only, retry_keys, key_index)
  VALUES ('keyed', true, '{{1}}', 'parts_a_pkey'::regclass);
INSERT INTO pg2redis.snapshots (relation, keys_only, retry_keys, key_index)
  VALUES ('parts', true, '{{1,a}}', 'parts_pkey'::regclass);
INSERT INTO pg2redis.snapshots (relation, keys_only, retry_keys, key_index)
  VALUES ('keyed', true, '{{7},{8}}', 'keyed_pkey'::regclass)
  RETURNING relation, state, retry_keys, key_index::regclass;
-- more keys than the worker holds in one request (pg2redis_redrive() splits)
INSERT INTO pg2redis.snapshots (relation, keys_only, retry_keys, key_index)
  SELECT 'keyed', true, array_agg(ARRAY[g::text]), 'keyed_pkey'::regclass
    FROM generate_series(1, current_setting('pg2redis.snapshot_batch_size')::integer + 1) g;
\set SHOW_CONTEXT errors
DELETE FROM pg2redis.snapshots;
DELETE FROM pg2redis.dead_letters;

-- snapshot filters are validated when written
INSERT INTO pg2redis.snapshot_filters VALUES ('keyed', 'id > 10');
INSERT INTO pg2redis.snapshot_filters VALUES ('parts', 'nope > 1');
INSERT INTO pg2redis.snapshot_filters VALUES ('parts', 'id > 1; DROP TABLE keyed');
INSERT INTO pg2redis.snapshot_filters VALUES ('parts', 'true); SELECT (1');
INSERT INTO pg2redis.snapshot_filters VALUES ('parts', 'id >');
INSERT INTO pg2redis.snapshot_filters VALUES (NULL, 'true');
INSERT INTO pg2redis.snapshot_filters VALUES (99999, 'true');
INSERT INTO pg2redis.snapshot_filters VALUES ('parts', NULL);
UPDATE pg2redis.snapshot_filters SET filter = 'v ~ ''[''' WHERE relation = 'keyed'::regclass;
SELECT relation, filter FROM pg2redis.snapshot_filters;
-- dropping a table drops its filter
DROP TABLE keyed CASCADE;
SELECT count(*) AS filters_left FROM pg2redis.snapshot_filters;

DROP TABLE unkeyed, unmapped, parts;
DROP EXTENSION pg2redis;
