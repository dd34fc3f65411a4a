/* pg2redis--1.0.sql — objects of pg2redis 1.0 */

\echo Use "CREATE EXTENSION pg2redis" to load this file. \quit

/*
 * The catalog lives in schema pg2redis; the SQL functions live in the schema
 * the extension is created in (public by default), so that users call them
 * unqualified as SPEC shows.
 */
CREATE SCHEMA pg2redis;
REVOKE ALL ON SCHEMA pg2redis FROM PUBLIC;

/*
 * One row per command template.  user_catalog_table makes the table readable
 * under the historic snapshots of logical decoding: the output plugin reads
 * the rules as of each decoded transaction, so rule changes take effect in
 * stream order.  The rule trigger below validates every row written.
 */
CREATE TABLE pg2redis.rules (
    id        bigserial PRIMARY KEY,
    relation  regclass NOT NULL,
    op        text NOT NULL,
    command   text[] NOT NULL,
    condition jsonb,
    position  integer NOT NULL DEFAULT 0,
    enabled   boolean NOT NULL DEFAULT true
) WITH (user_catalog_table = true);

/* Keep rules inline so that reading them during decoding never detoasts. */
ALTER TABLE pg2redis.rules ALTER COLUMN command SET STORAGE MAIN;
ALTER TABLE pg2redis.rules ALTER COLUMN condition SET STORAGE MAIN;

CREATE INDEX rules_relation_idx ON pg2redis.rules (relation, op, position, id);

COMMENT ON TABLE pg2redis.rules IS 'pg2redis mapping rules: one Redis command template per row';

/* Commands Redis rejected, with where they came from. */
CREATE TABLE pg2redis.dead_letters (
    id         bigserial PRIMARY KEY,
    lsn        pg_lsn,
    xid        xid,
    relation   regclass,
    op         text,
    command    text[],
    error      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE pg2redis.dead_letters IS 'pg2redis commands that could not be rendered or that Redis rejected';

/*
 * Snapshot requests (pg2redis_snapshot()), processed by the worker one at a
 * time, in id order, while streaming goes on.  current_relation and
 * last_key record progress, so that a request interrupted by a restart
 * resumes after the last chunk it sent.
 */
CREATE TABLE pg2redis.snapshots (
    id               bigserial PRIMARY KEY,
    relation         regclass,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'running', 'done', 'failed')),
    rows             bigint NOT NULL DEFAULT 0,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    error            text,
    current_relation regclass,
    last_key         text[]
);

COMMENT ON TABLE pg2redis.snapshots IS 'pg2redis snapshot requests and their progress';

/*
 * Snapshot filters: rows of relation are snapshotted only WHERE filter
 * holds (the pgwalk tool's snapshot "type: query").  Superuser-only, like
 * every table here: the worker runs the filter with superuser rights.
 */
CREATE TABLE pg2redis.snapshot_filters (
    relation regclass PRIMARY KEY,
    filter   text NOT NULL
);

COMMENT ON TABLE pg2redis.snapshot_filters IS 'pg2redis snapshot WHERE clauses per table';

CREATE FUNCTION pg2redis.validate_snapshot_filter()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'pg2redis_validate_snapshot_filter';

CREATE TRIGGER validate
    BEFORE INSERT OR UPDATE ON pg2redis.snapshot_filters
    FOR EACH ROW EXECUTE FUNCTION pg2redis.validate_snapshot_filter();

CREATE VIEW pg2redis_snapshots AS
    SELECT id, relation, state, rows, requested_at, started_at, finished_at,
           error
      FROM pg2redis.snapshots;

COMMENT ON VIEW pg2redis_snapshots IS 'pg2redis snapshot requests: state, rows, timings, error';

SELECT pg_catalog.pg_extension_config_dump('pg2redis.snapshot_filters', '');
SELECT pg_catalog.pg_extension_config_dump('pg2redis.rules', '');
SELECT pg_catalog.pg_extension_config_dump('pg2redis.rules_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('pg2redis.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('pg2redis.dead_letters_id_seq', '');

/* Rule validation (C): refuses a bad rule with an error naming it. */
CREATE FUNCTION pg2redis.validate_rule()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'pg2redis_validate_rule';

CREATE TRIGGER validate
    BEFORE INSERT OR UPDATE ON pg2redis.rules
    FOR EACH ROW EXECUTE FUNCTION pg2redis.validate_rule();

/* Rule cache invalidation (C): every backend and the decoder reload rules. */
CREATE FUNCTION pg2redis.rules_changed()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'pg2redis_rules_changed';

CREATE TRIGGER invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pg2redis.rules
    FOR EACH STATEMENT EXECUTE FUNCTION pg2redis.rules_changed();

/*
 * Rules of a dropped table go with it, so that no rule names an OID that
 * may later be reused by another table.
 */
CREATE FUNCTION pg2redis.drop_rules_of_dropped_tables()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM pg2redis.rules r
     USING pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.objsubid = 0
       AND d.objid = r.relation::pg_catalog.oid;
    DELETE FROM pg2redis.snapshot_filters f
     USING pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.objsubid = 0
       AND d.objid = f.relation::pg_catalog.oid;
END
$$;

CREATE EVENT TRIGGER pg2redis_drop_rules ON sql_drop
    EXECUTE FUNCTION pg2redis.drop_rules_of_dropped_tables();

CREATE FUNCTION pg2redis_add_rule(relation regclass, op text, command text[],
                                  condition jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE C
AS 'MODULE_PATHNAME', 'pg2redis_add_rule_array';

COMMENT ON FUNCTION pg2redis_add_rule(regclass, text, text[], jsonb)
    IS 'add a validated pg2redis rule; returns its id';

CREATE FUNCTION pg2redis_add_rule(relation regclass, op text, command text,
                                  condition jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE C
AS 'MODULE_PATHNAME', 'pg2redis_add_rule_text';

COMMENT ON FUNCTION pg2redis_add_rule(regclass, text, text, jsonb)
    IS 'add a validated pg2redis rule written as in redis-cli; returns its id';

CREATE FUNCTION pg2redis_split_command(command text)
RETURNS text[]
LANGUAGE C STRICT IMMUTABLE
AS 'MODULE_PATHNAME', 'pg2redis_split_command';

COMMENT ON FUNCTION pg2redis_split_command(text)
    IS 'split a command written as in redis-cli into its arguments';

CREATE FUNCTION pg2redis_preview(relation regclass, op text, new_row jsonb,
                                 old_row jsonb DEFAULT NULL)
RETURNS SETOF text[]
LANGUAGE C
AS 'MODULE_PATHNAME', 'pg2redis_preview';

COMMENT ON FUNCTION pg2redis_preview(regclass, text, jsonb, jsonb)
    IS 'the Redis commands the current rules would send for a change; touches no Redis';

CREATE FUNCTION pg2redis_status(
    OUT worker_pid integer,
    OUT state text,
    OUT slot_name text,
    OUT redis_url text,
    OUT redis_connected boolean,
    OUT confirmed_lsn pg_lsn,
    OUT server_lsn pg_lsn,
    OUT lag_bytes bigint,
    OUT last_commit_time timestamptz,
    OUT transactions bigint,
    OUT changes bigint,
    OUT commands bigint,
    OUT dead_letters bigint,
    OUT retries bigint,
    OUT last_error text,
    OUT last_error_time timestamptz,
    OUT applied_lsn pg_lsn)
RETURNS record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'pg2redis_status';

COMMENT ON FUNCTION pg2redis_status()
    IS 'state of the pg2redis worker, its slot and its Redis connection';

CREATE FUNCTION pg2redis_wait(timeout interval DEFAULT '30s')
RETURNS boolean
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'pg2redis_wait';

COMMENT ON FUNCTION pg2redis_wait(interval)
    IS 'wait until every transaction committed before the call is applied in Redis';

CREATE FUNCTION pg2redis_redis(VARIADIC args text[])
RETURNS jsonb
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'pg2redis_redis';

COMMENT ON FUNCTION pg2redis_redis(text[])
    IS 'run one Redis command on the configured server and return its reply as JSON';

CREATE FUNCTION pg2redis_snapshot(relation regclass DEFAULT NULL)
RETURNS bigint
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pg2redis_snapshot';

COMMENT ON FUNCTION pg2redis_snapshot(regclass)
    IS 'request a consistent snapshot of one mapped table (or all) while streaming goes on; returns the request id';

CREATE FUNCTION pg2redis_resync()
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pg2redis_resync';

COMMENT ON FUNCTION pg2redis_resync()
    IS 'drop the Redis position and the slot, recreate it and load every mapped table again';

REVOKE ALL ON FUNCTION pg2redis_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_wait(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_redis(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_resync() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_snapshot(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.validate_snapshot_filter() FROM PUBLIC;
REVOKE ALL ON pg2redis_snapshots FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_add_rule(regclass, text, text[], jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_add_rule(regclass, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_split_command(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_preview(regclass, text, jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.validate_rule() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.rules_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.drop_rules_of_dropped_tables() FROM PUBLIC;
