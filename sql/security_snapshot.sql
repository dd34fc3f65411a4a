-- Snapshot filters are one boolean expression over their table, checked
-- under the search_path the worker uses (pg_catalog, pg_temp): SQL that
-- would end the condition early, add clauses or statements, or rely on the
-- writer's search_path is refused, also when it comes through
-- pg2redis_import().  (t/130_security_snapshot.pl runs the live attacks.)
CREATE EXTENSION pg2redis;
SET client_min_messages = warning;

CREATE TABLE keyed (id int PRIMARY KEY, v text, active boolean);
SELECT pg2redis_add_rule('keyed', 'insert', 'SET k:{id} {v}') > 0 AS ok;

-- one boolean expression: accepted, and stored as written
INSERT INTO pg2redis.snapshot_filters VALUES ('keyed', 'active AND v <> ''x''');
UPDATE pg2redis.snapshot_filters SET filter = 'id IN (SELECT g FROM generate_series(1, 10) g) -- ten'
 WHERE relation = 'keyed'::regclass;
SELECT relation, filter FROM pg2redis.snapshot_filters;
DELETE FROM pg2redis.snapshot_filters;

-- text that closes the condition early, or adds to the statement
INSERT INTO pg2redis.snapshot_filters VALUES ('keyed', 'active) UNION ALL SELECT NULL WHERE (true');
INSERT INTO pg2redis.snapshot_filters VALUES ('keyed', 'active) --');
INSERT INTO pg2redis.snapshot_filters VALUES ('keyed', 'true) OR (true');
INSERT INTO pg2redis.snapshot_filters VALUES ('keyed', 'active ORDER BY 1');
INSERT INTO pg2redis.snapshot_filters VALUES ('keyed', 'active LIMIT 1');
INSERT INTO pg2redis.snapshot_filters VALUES ('keyed', 'active FOR UPDATE');
INSERT INTO pg2redis.snapshot_filters VALUES ('keyed', 'active; SELECT 1');
INSERT INTO pg2redis.snapshot_filters VALUES ('keyed', '(active');
INSERT INTO pg2redis.snapshot_filters VALUES ('keyed', 'active /* unterminated');
INSERT INTO pg2redis.snapshot_filters VALUES ('keyed', '');
-- not boolean
INSERT INTO pg2redis.snapshot_filters VALUES ('keyed', 'id');
SELECT count(*) AS stored FROM pg2redis.snapshot_filters;

-- the writer's search_path does not apply: user objects are qualified
CREATE SCHEMA s;
CREATE FUNCTION s.ok(int) RETURNS boolean LANGUAGE sql AS 'SELECT $1 > 0';
SET search_path = s, public;
INSERT INTO pg2redis.snapshot_filters VALUES ('keyed', 'ok(id)');
INSERT INTO pg2redis.snapshot_filters VALUES ('keyed', 's.ok(id)');
RESET search_path;
SELECT relation, filter FROM pg2redis.snapshot_filters;
DELETE FROM pg2redis.snapshot_filters;

-- pg2redis_import() stores filters through the same check
SELECT pg2redis_import($${"snapshot": {"config": [{"name": "keyed", "type": "query",
  "query": "SELECT * FROM keyed WHERE active) UNION ALL SELECT NULL WHERE (true"}]}}$$);
SELECT pg2redis_import($${"snapshot": {"config": [{"name": "keyed", "type": "query",
  "where": "active) --"}]}}$$);
SELECT pg2redis_import($${"snapshot": {"config": [{"name": "keyed", "type": "query",
  "query": "SELECT * FROM keyed WHERE active AND id > 1"}]}}$$) AS rules_created;
SELECT relation, filter FROM pg2redis.snapshot_filters;

DROP TABLE keyed;
DROP SCHEMA s CASCADE;
DROP EXTENSION pg2redis;
