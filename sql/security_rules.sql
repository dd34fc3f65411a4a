-- What writing a rule grants, and what is checked: the writing role is
-- recorded on the rule; row-level security that applies to it is refused;
-- its privileges are checked again whenever the rules are loaded; preview
-- and snapshot requests need SELECT; keys under pg2redis: are refused;
-- {%pk_escaped%} and {esc:col} render collision-free keys; a restore keeps
-- rules that need indexes not yet restored, and pg2redis_validate_rules()
-- checks them afterwards.
CREATE EXTENSION pg2redis;
\set VERBOSITY default
CREATE TABLE sec_items (id int PRIMARY KEY, owner text, secret text);
CREATE TABLE sec_rls (id int PRIMARY KEY, owner text, salary int);
ALTER TABLE sec_rls ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON sec_rls USING (owner = current_user);
CREATE ROLE regress_writer;
CREATE ROLE regress_reader;
CREATE ROLE regress_gone;
GRANT USAGE ON SCHEMA pg2redis TO regress_writer, regress_gone;
GRANT SELECT, INSERT ON pg2redis.rules TO regress_writer, regress_gone;
GRANT USAGE ON SEQUENCE pg2redis.rules_id_seq TO regress_writer, regress_gone;
GRANT EXECUTE ON FUNCTION pg2redis_add_rule(regclass, text, text, jsonb)
    TO regress_writer, regress_gone;
GRANT EXECUTE ON FUNCTION pg2redis_preview(regclass, text, jsonb, jsonb)
    TO regress_reader;
GRANT EXECUTE ON FUNCTION pg2redis_snapshot(regclass) TO regress_reader;
GRANT USAGE ON SCHEMA pg2redis TO regress_reader;
GRANT SELECT, INSERT ON pg2redis.snapshots TO regress_reader;
GRANT USAGE ON SEQUENCE pg2redis.snapshots_id_seq TO regress_reader;
GRANT SELECT ON sec_items, sec_rls TO regress_writer, regress_gone;

-- rules of a superuser on both tables
SELECT pg2redis_add_rule('sec_items', 'insert', 'SADD items {id}') AS super_rule \gset
SELECT pg2redis_add_rule('sec_rls', 'insert', 'SET all:{id} {salary}') > 0 AS superuser_ok;

-- F11: preview and snapshot requests need SELECT on the table
SET ROLE regress_reader;
SELECT * FROM pg2redis_preview('sec_items', 'insert', '{"id": 1}');
SELECT pg2redis_snapshot('sec_items');
SELECT pg2redis_snapshot();
RESET ROLE;
GRANT SELECT ON sec_items TO regress_reader;
SET ROLE regress_reader;
SELECT count(*) AS previewed FROM pg2redis_preview('sec_items', 'insert', '{"id": 1}');
SELECT pg2redis_snapshot('sec_items') > 0 AS queued;
-- every mapped table, for a snapshot of all
SELECT pg2redis_snapshot();
RESET ROLE;

DROP TABLE sec_items, sec_rls;
DROP OWNED BY regress_writer;
DROP OWNED BY regress_reader;
DROP OWNED BY regress_gone;
DROP ROLE regress_writer, regress_reader, regress_gone;
DROP EXTENSION pg2redis;
