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

/*
 * Keep rules inline and uncompressed, so that reading them during decoding
 * never needs a TOAST table, which the slot's catalog horizon does not
 * protect; the rule trigger refuses rules too large for that.
 */
ALTER TABLE pg2redis.rules ALTER COLUMN command SET STORAGE PLAIN;
ALTER TABLE pg2redis.rules ALTER COLUMN condition SET STORAGE PLAIN;

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

CREATE FUNCTION pg2redis_key_slot(key text)
RETURNS integer
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'pg2redis_key_slot';

COMMENT ON FUNCTION pg2redis_key_slot(text)
    IS 'the Redis Cluster hash slot (0..16383) of a key, hash tags honoured';

CREATE FUNCTION pg2redis_command_slot(command text[])
RETURNS integer
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'pg2redis_command_slot';

COMMENT ON FUNCTION pg2redis_command_slot(text[])
    IS 'the Redis Cluster hash slot of a command''s keys; NULL without keys';

CREATE FUNCTION pg2redis_preview(relation regclass, op text, new_row jsonb,
                                 old_row jsonb DEFAULT NULL)
RETURNS SETOF text[]
LANGUAGE C
AS 'MODULE_PATHNAME', 'pg2redis_preview';

COMMENT ON FUNCTION pg2redis_preview(regclass, text, jsonb, jsonb)
    IS 'the Redis commands the current rules would send for a change; touches no Redis';

/*
 * pg2redis_import: the pgwalk pg2redis YAML config, converted to JSON, as
 * rules.  All or nothing: any error rolls the whole import back, and says
 * which table, op and command it is about.  Keys pg2redis cannot honour
 * are named in a NOTICE.
 */
CREATE FUNCTION pg2redis_import(config jsonb)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    created   integer := 0;
    item      jsonb;
    tname     text;
    tbody     jsonb;
    rel       regclass;
    k         text;
    op        text;
    cmds      jsonb;
    cmd       jsonb;
    idx       integer;
    argv      text[];
    cond      jsonb;
    msg       text;
    state     text;
    hint      text;
    entry     jsonb;
    filter    text;
BEGIN
    IF config IS NULL OR jsonb_typeof(config) <> 'object' THEN
        RAISE EXCEPTION 'pg2redis_import needs a JSON object'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Convert the YAML config to JSON, e.g. with yq -o json config.yaml.';
    END IF;
    FOR k IN SELECT jsonb_object_keys(config) LOOP
        IF k NOT IN ('tables', 'snapshot') THEN
            RAISE NOTICE 'pg2redis_import ignores top-level key "%"', k
                USING HINT = 'Connection settings go to pg2redis.redis_url and pg2redis.database.';
        END IF;
    END LOOP;
    IF config ? 'tables' AND jsonb_typeof(config->'tables') <> 'array' THEN
        RAISE EXCEPTION '"tables" must be a list'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    FOR item IN SELECT value FROM jsonb_array_elements(coalesce(config->'tables', '[]')) LOOP
        IF jsonb_typeof(item) <> 'object' OR (SELECT count(*) FROM jsonb_object_keys(item)) <> 1 THEN
            RAISE EXCEPTION 'each item of "tables" must be an object with one key, the table name: %', item
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT key, value INTO tname, tbody FROM jsonb_each(item);
        rel := to_regclass(tname);
        IF rel IS NULL THEN
            RAISE EXCEPTION 'table "%" of the config does not exist', tname
                USING ERRCODE = 'undefined_table',
                      HINT = 'Create the table before importing its mapping.';
        END IF;
        IF jsonb_typeof(tbody) <> 'object' THEN
            RAISE EXCEPTION 'the mapping of table "%" must be an object', tname
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        FOR k IN SELECT jsonb_object_keys(tbody) LOOP
            IF k NOT IN ('commands', 'insert', 'update', 'delete', 'truncate', 'snapshot') THEN
                RAISE NOTICE 'pg2redis_import ignores key "%" of table "%"', k, tname;
            END IF;
        END LOOP;

        FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate', 'snapshot'] LOOP
            -- shared commands apply to insert, update and delete, before the op's own
            cmds := '[]';
            IF op IN ('insert', 'update', 'delete') AND tbody ? 'commands' THEN
                IF jsonb_typeof(tbody->'commands') <> 'array' THEN
                    RAISE EXCEPTION '"commands" of table "%" must be a list', tname
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
                cmds := tbody->'commands';
            END IF;
            IF tbody ? op THEN
                IF jsonb_typeof(tbody->op) <> 'object' THEN
                    RAISE EXCEPTION '"%" of table "%" must be an object with "commands"', op, tname
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
                FOR k IN SELECT jsonb_object_keys(tbody->op) LOOP
                    IF k <> 'commands' THEN
                        RAISE NOTICE 'pg2redis_import ignores key "%" of %.%', k, tname, op;
                    END IF;
                END LOOP;
                IF jsonb_typeof(coalesce(tbody->op->'commands', '[]')) <> 'array' THEN
                    RAISE EXCEPTION '"commands" of %.% must be a list', tname, op
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
                cmds := cmds || coalesce(tbody->op->'commands', '[]');
            END IF;

            idx := 0;
            FOR cmd IN SELECT value FROM jsonb_array_elements(cmds) LOOP
                idx := idx + 1;
                cond := NULL;
                IF jsonb_typeof(cmd) = 'object' THEN
                    FOR k IN SELECT jsonb_object_keys(cmd) LOOP
                        IF k NOT IN ('command', 'condition') THEN
                            RAISE NOTICE 'pg2redis_import ignores key "%" of %.% command %', k, tname, op, idx;
                        END IF;
                    END LOOP;
                    cond := cmd->'condition';
                    cmd := cmd->'command';
                END IF;
                IF cmd IS NULL OR jsonb_typeof(cmd) <> 'array'
                   OR EXISTS (SELECT FROM jsonb_array_elements(cmd) e
                               WHERE jsonb_typeof(e) IN ('object', 'array', 'null')) THEN
                    RAISE EXCEPTION 'table "%", % command %: a command is a list of arguments, or {"command": [...], "condition": {...}}', tname, op, idx
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
                argv := ARRAY(SELECT jsonb_array_elements_text(cmd));
                BEGIN
                    PERFORM @extschema@.pg2redis_add_rule(rel, op, argv, cond);
                EXCEPTION WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE,
                                            hint = PG_EXCEPTION_HINT;
                    RAISE EXCEPTION 'table "%", % command % (%): %', tname, op, idx, cmd, msg
                        USING ERRCODE = state, HINT = coalesce(hint, '');
                END;
                created := created + 1;
            END LOOP;
        END LOOP;
    END LOOP;

    IF config ? 'snapshot' THEN
        FOR k IN SELECT jsonb_object_keys(config->'snapshot') LOOP
            IF k <> 'config' THEN
                RAISE NOTICE 'pg2redis_import ignores snapshot key "%"', k
                    USING HINT = 'Snapshots run in the worker; see pg2redis.snapshot_batch_size.';
            END IF;
        END LOOP;
        FOR entry IN SELECT value FROM jsonb_array_elements(coalesce(config->'snapshot'->'config', '[]')) LOOP
            rel := to_regclass(entry->>'name');
            IF rel IS NULL THEN
                RAISE EXCEPTION 'snapshot config names table "%", which does not exist', entry->>'name'
                    USING ERRCODE = 'undefined_table';
            END IF;
            FOR k IN SELECT jsonb_object_keys(entry) LOOP
                IF k NOT IN ('name', 'type', 'where', 'query') THEN
                    RAISE NOTICE 'pg2redis_import ignores key "%" of the snapshot config of "%"', k, entry->>'name';
                END IF;
            END LOOP;
            IF coalesce(entry->>'type', 'full') = 'full' THEN
                CONTINUE;
            ELSIF entry->>'type' <> 'query' THEN
                RAISE EXCEPTION 'snapshot type "%" of table "%" is unknown', entry->>'type', entry->>'name'
                    USING ERRCODE = 'invalid_parameter_value', HINT = 'Use full or query.';
            END IF;
            filter := entry->>'where';
            IF filter IS NULL AND entry ? 'query' THEN
                -- keep the WHERE clause of the query
                filter := substring(entry->>'query' FROM '(?i)\mwhere\M(.*)$');
                filter := rtrim(btrim(filter), ';');
            END IF;
            IF filter IS NULL OR filter = '' THEN
                RAISE EXCEPTION 'snapshot config of table "%" has type query but no WHERE clause', entry->>'name'
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Give "where": "<condition>", or a "query" with a WHERE clause.';
            END IF;
            INSERT INTO pg2redis.snapshot_filters (relation, filter) VALUES (rel, filter)
                ON CONFLICT (relation) DO UPDATE SET filter = EXCLUDED.filter;
        END LOOP;
    END IF;
    RETURN created;
END
$$;

COMMENT ON FUNCTION pg2redis_import(jsonb)
    IS 'import a pgwalk pg2redis config (its YAML as JSON) as rules; all or nothing';

/*
 * pg2redis_export: the enabled rules and snapshot filters, in the shape
 * pg2redis_import takes.
 */
CREATE FUNCTION pg2redis_export()
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH r AS (
        SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS tname,
               min(r.id) OVER (PARTITION BY r.relation) AS first_id,
               r.op, r.position, r.id,
               CASE WHEN r.condition IS NULL THEN to_jsonb(r.command)
                    ELSE jsonb_build_object('command', r.command, 'condition', r.condition)
               END AS cmd
          FROM pg2redis.rules r
          JOIN pg_class c ON c.oid = r.relation
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE r.enabled
    ), ops AS (
        SELECT tname, first_id, op,
               jsonb_build_object('commands', jsonb_agg(cmd ORDER BY position, id)) AS body
          FROM r GROUP BY tname, first_id, op
    ), tables AS (
        SELECT first_id, jsonb_build_object(tname, jsonb_object_agg(op, body)) AS item
          FROM ops GROUP BY tname, first_id
    )
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'tables', coalesce((SELECT jsonb_agg(item ORDER BY first_id) FROM tables), '[]'),
        'snapshot', (SELECT jsonb_build_object('config', jsonb_agg(
                         jsonb_build_object('name', quote_ident(n.nspname) || '.' || quote_ident(c.relname),
                                            'type', 'query', 'where', f.filter)
                         ORDER BY f.relation))
                       FROM pg2redis.snapshot_filters f
                       JOIN pg_class c ON c.oid = f.relation
                       JOIN pg_namespace n ON n.oid = c.relnamespace
                     HAVING count(*) > 0)))
$$;

COMMENT ON FUNCTION pg2redis_export()
    IS 'the enabled rules and snapshot filters, in the JSON shape pg2redis_import takes';

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
REVOKE ALL ON FUNCTION pg2redis_import(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_export() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.validate_snapshot_filter() FROM PUBLIC;
REVOKE ALL ON pg2redis_snapshots FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_add_rule(regclass, text, text[], jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_add_rule(regclass, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_split_command(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_key_slot(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_command_slot(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_preview(regclass, text, jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.validate_rule() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.rules_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.drop_rules_of_dropped_tables() FROM PUBLIC;
