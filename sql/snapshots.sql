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
