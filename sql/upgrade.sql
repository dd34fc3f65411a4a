-- The upgrade path: version 1.0 (as released), with rules and data in it,
-- then ALTER EXTENSION pg2redis UPDATE, gives the catalog a fresh install
-- of the current version gives (test/catalog.sql lists it: members,
-- function definitions and privileges, columns by position, constraints,
-- indexes, triggers, views, event triggers, roles), and keeps the data.
\set origdb :DBNAME
\set catalog `cat test/catalog.sql`
CREATE DATABASE pg2redis_upgrade_fresh;
CREATE DATABASE pg2redis_upgrade_old;

\c pg2redis_upgrade_fresh
CREATE EXTENSION pg2redis;
SELECT string_agg(line, E'\n' ORDER BY line) AS fresh FROM (:catalog) c \gset
SELECT extversion AS fresh_version, count(*) > 100 AS many_catalog_lines
  FROM (:catalog) c, pg_extension WHERE extname = 'pg2redis' GROUP BY 1;

\c pg2redis_upgrade_old
CREATE EXTENSION pg2redis VERSION '1.0';
CREATE TABLE items (id int PRIMARY KEY, name text);
-- a rule written under 1.0 (this library's trigger refuses 1.0's table
-- until the update: "pg2redis.rules has 7 columns, expected 8")
ALTER TABLE pg2redis.rules DISABLE TRIGGER validate;
INSERT INTO pg2redis.rules (relation, op, command)
    VALUES ('items', 'insert', ARRAY['SET', 'item:{id}', '{name}']);
ALTER TABLE pg2redis.rules ENABLE TRIGGER validate;
INSERT INTO pg2redis.snapshot_filters (relation, filter) VALUES ('items', 'id > 0');
INSERT INTO pg2redis.dead_letters (lsn, xid, relation, op, command, error)
    VALUES ('0/1', '7', 'items', 'insert', '{SET,k,v}', 'WRONGTYPE');
ALTER EXTENSION pg2redis UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'pg2redis';

-- what the upgrade made that a fresh install does not, and the reverse
SELECT line AS only_after_upgrade FROM (:catalog) c
EXCEPT SELECT regexp_split_to_table(:'fresh', E'\n');
SELECT regexp_split_to_table(:'fresh', E'\n') AS only_in_fresh_install
EXCEPT SELECT line FROM (:catalog) c;

-- the data is kept; rules written before 1.1 are recorded as the
-- extension owner's, and still validate
SELECT id, relation, op, command, enabled, created_by = (
    SELECT extowner::regrole FROM pg_extension WHERE extname = 'pg2redis') AS owner_is_writer
  FROM pg2redis.rules;
SELECT * FROM pg2redis_validate_rules();
SELECT relation, filter FROM pg2redis.snapshot_filters;
SELECT relation, op, command, error FROM pg2redis.dead_letters;
SELECT c FROM pg2redis_preview('items', 'insert', '{"id": 1, "name": "one"}') c;

\c :origdb
DROP DATABASE pg2redis_upgrade_old;
DROP DATABASE pg2redis_upgrade_fresh;
