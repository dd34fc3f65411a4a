-- The catalog of the pg2redis extension in the current database, one line
-- per fact, sorted: what an upgrade must make equal to a fresh install
-- (sql/upgrade.sql compares the two).  Columns are listed with their
-- positions, since the worker reads pg2redis.rules by position.
WITH ext AS (
    SELECT oid FROM pg_extension WHERE extname = 'pg2redis'
), members AS (
    SELECT d.classid, d.objid, d.objsubid
      FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid
       AND d.deptype = 'e'
), rels AS (
    SELECT c.* FROM pg_class c JOIN members m
        ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
), lines AS (
    SELECT 'member ' || pg_describe_object(classid, objid, objsubid) AS line
      FROM members
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure || ' returns '
           || pg_get_function_result(p.oid) || ' md5 ' || md5(pg_get_functiondef(p.oid))
           || ' acl ' || coalesce(p.proacl::text, '-')
           || ' comment ' || coalesce(obj_description(p.oid, 'pg_proc'), '-')
      FROM pg_proc p JOIN members m
        ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
    UNION ALL
    SELECT 'relation ' || r.oid::regclass || ' kind ' || r.relkind::text
           || ' acl ' || coalesce(r.relacl::text, '-')
           || ' options ' || coalesce(r.reloptions::text, '-')
           || ' rls ' || r.relrowsecurity
           || ' comment ' || coalesce(obj_description(r.oid, 'pg_class'), '-')
      FROM rels r
    UNION ALL
    SELECT 'column ' || r.oid::regclass || ' ' || a.attnum || ' ' || a.attname
           || ' ' || format_type(a.atttypid, a.atttypmod)
           || ' notnull ' || a.attnotnull || ' storage ' || a.attstorage::text
           || ' default ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-')
      FROM rels r
      JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef d ON d.adrelid = r.oid AND d.adnum = a.attnum
    UNION ALL
    SELECT 'constraint ' || r.oid::regclass || ' ' || pg_get_constraintdef(co.oid)
      FROM rels r JOIN pg_constraint co ON co.conrelid = r.oid
    UNION ALL
    SELECT 'index ' || regexp_replace(pg_get_indexdef(i.indexrelid), 'INDEX \S+ ON', 'INDEX ON')
      FROM rels r JOIN pg_index i ON i.indrelid = r.oid
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text
      FROM rels r JOIN pg_trigger t ON t.tgrelid = r.oid AND NOT t.tgisinternal
    UNION ALL
    SELECT 'view ' || r.oid::regclass || ' ' || md5(pg_get_viewdef(r.oid))
      FROM rels r WHERE r.relkind = 'v'
    UNION ALL
    SELECT 'event trigger ' || e.evtname || ' on ' || e.evtevent || ' tags '
           || coalesce(e.evttags::text, '-') || ' runs ' || e.evtfoid::regproc
           || ' enabled ' || e.evtenabled::text
      FROM pg_event_trigger e JOIN members m
        ON m.classid = 'pg_event_trigger'::regclass AND m.objid = e.oid
    UNION ALL
    SELECT 'policy ' || pol.polrelid::regclass || ' ' || pol.polname
      FROM rels r JOIN pg_policy pol ON pol.polrelid = r.oid
    UNION ALL
    SELECT 'role ' || rolname || ' login ' || rolcanlogin
      FROM pg_roles WHERE rolname LIKE 'pg2redis%'
    UNION ALL
    SELECT 'extension version ' || extversion || ' config ' || coalesce(extconfig::regclass[]::text, '-')
      FROM pg_extension WHERE extname = 'pg2redis'
)
SELECT line FROM lines ORDER BY line
