-- pg2redis_import(): the pgwalk tool's config (its YAML as JSON) as rules,
-- all or nothing; pg2redis_export() gives the same shape back.
CREATE EXTENSION pg2redis;
SET client_min_messages = notice;
\set SHOW_CONTEXT never
\i example/shop/schema.sql
\set config `cat example/shop/config.json`

-- the article's config imports, and reproduces the article's commands
SELECT pg2redis_import(:'config') AS rules_created;
SELECT relation, op, command, condition FROM pg2redis.rules ORDER BY id;
\i example/shop/seed.sql
SELECT * FROM pg2redis_preview('products', 'update',
    '{"id": 3, "sku": "MN-27", "name": "27\" monitor", "price_cents": 32900, "stock_quantity": 15, "active": false}',
    '{"id": 3, "sku": "MN-27", "name": "27\" monitor", "price_cents": 32900, "stock_quantity": 15, "active": true}');

-- export gives the same tables back, and imports again to the same rules
SELECT pg2redis_export()->'tables' = (:'config')::jsonb->'tables' AS same_tables;
CREATE TEMP TABLE before AS SELECT relation, op, command, condition, position FROM pg2redis.rules ORDER BY id;
SELECT pg2redis_export() AS exported \gset
DELETE FROM pg2redis.rules;
SELECT pg2redis_import(:'exported') AS reimported;
SELECT count(*) AS differences FROM (
    (SELECT relation, op, command, condition, position FROM pg2redis.rules
     EXCEPT SELECT * FROM before)
    UNION ALL
    (SELECT * FROM before
     EXCEPT SELECT relation, op, command, condition, position FROM pg2redis.rules)) d;

-- shared commands apply to insert, update and delete; conditions; every
-- placeholder the pgwalk tool documents; snapshot filters from type: query
DELETE FROM pg2redis.rules;
SELECT pg2redis_import($${
  "redis": {"url": "redis://localhost"},
  "tables": [
    {"public.products": {
        "commands": [["PUBLISH", "changes", "{%schema%}.{%table%}:{%pk%}:{%xid%}"]],
        "update": {"commands": [
            ["INCRBY", "stock:total", "{diff:stock_quantity}"],
            {"command": ["SREM", "sku:{old:sku}", "{id}"],
             "condition": {"column": "sku", "op": "changed"}},
            ["SET", "{{literal}}", "{json:id,sku}"]]},
        "insert": {"commands": [["HSET", "product:{id}", "{pairs:id,sku}"]], "batch": 5}}},
    {"public.orders": {"update": {"commands": [{"command": ["SADD", "paid", "{id}"], "retries": 3,
        "condition": {"column": "status", "op": "=", "value": "paid"}}]}}}
  ],
  "snapshot": {"mode": "onetime", "batchSize": 100, "config": [
    {"name": "public.orders", "type": "query", "query": "SELECT * FROM orders WHERE status <> 'cancelled';"},
    {"name": "public.customers", "type": "query", "where": "email LIKE '%@example.com'"},
    {"name": "public.products", "type": "full"}]}
}$$) AS rules_created;
SELECT relation, op, command, condition FROM pg2redis.rules ORDER BY id;
SELECT relation, filter FROM pg2redis.snapshot_filters ORDER BY relation;
SELECT jsonb_pretty(pg2redis_export()->'snapshot');

-- importing the same config again leaves the same rules: the config is the
-- whole mapping of the tables it names
\set config `cat example/shop/config.json`
DELETE FROM pg2redis.rules;
SELECT pg2redis_import(:'config') AS first_import;
CREATE TEMP TABLE once AS SELECT relation, op, command, condition, position FROM pg2redis.rules;
SELECT pg2redis_import(:'config') AS second_import;
SELECT count(*) AS rules, (SELECT count(*) FROM once) AS rules_after_first
  FROM pg2redis.rules;
SELECT count(*) AS differences FROM (
    (SELECT relation, op, command, condition, position FROM pg2redis.rules
     EXCEPT SELECT * FROM once)
    UNION ALL
    (SELECT * FROM once
     EXCEPT SELECT relation, op, command, condition, position FROM pg2redis.rules)) d;

-- the tool's documented forms: {columns:*} (names only, so a delete needs no
-- old values), several commands under one condition, a table with no
-- command gets the default mapping, a snapshot "query" that is the WHERE
-- clause alone, redis.commitTimeColumn in {pairs:…}
DELETE FROM pg2redis.rules;
DELETE FROM pg2redis.snapshot_filters;
SELECT pg2redis_import($${
  "redis": {"commitTimeColumn": "committed_at", "addr": "localhost:6379"},
  "tables": [
    {"public.products": {
        "insert": {"commands": [["HSET", "product:{id}", "{pairs:id,sku}"]]},
        "delete": {"commands": [["HDEL", "product:{id}", "{columns:*}"]]},
        "update": {"commands": [
            {"command": [["SREM", "active", "{id}"], ["SADD", "inactive", "{id}"]],
             "condition": {"column": "active", "op": "=", "value": false}}]}}},
    {"public.customers": {}},
    {"public.orders": null},
    {"public.order_items": {"insert": {"commands": [["SET", "oi:{id}", "{json:*}"]]}}}
  ],
  "snapshot": {"config": [
    {"name": "public.orders", "type": "query", "query": "status <> 'cancelled'"}]}
}$$) AS rules_created;
SELECT relation, op, command, condition FROM pg2redis.rules ORDER BY id;
SELECT relation, filter FROM pg2redis.snapshot_filters ORDER BY relation;
SELECT c FROM pg2redis_preview('products', 'delete', '{"id": 3}') c;
-- (the commit time itself, the last argument, changes from run to run)
SELECT c[1:array_length(c, 1) - 1] AS c
  FROM pg2redis_preview('customers', 'insert', '{"id": 7, "email": "a@example.com"}') c;
SELECT c[1:7] AS c FROM pg2redis_preview('products', 'insert', '{"id": 3, "sku": "X"}') c;
-- {columns:…} follows {pairs:…}'s rules: a whole argument, never a key
SELECT pg2redis_add_rule('products', 'delete', 'HDEL k x{columns:*}');
SELECT pg2redis_add_rule('products', 'delete', 'DEL {columns:id}');

-- export keeps disabled rules, marked, and they import disabled
UPDATE pg2redis.rules SET enabled = false
 WHERE id = (SELECT min(id) FROM pg2redis.rules WHERE relation = 'products'::regclass AND op = 'update');
SELECT pg2redis_export()->'tables'->0 AS products;
SELECT pg2redis_export() AS exported \gset
SELECT pg2redis_import(:'exported') AS reimported;
SELECT relation, op, command, enabled FROM pg2redis.rules ORDER BY id;

-- invalid input stores nothing, and says which table, op and command
SELECT count(*) AS rules_before FROM pg2redis.rules \gset
SELECT pg2redis_import('[]');
SELECT pg2redis_import('{"tables": {"public.products": {}}}');
SELECT pg2redis_import('{"tables": [{"public.nope": {"insert": {"commands": [["SET", "k", "v"]]}}}]}');
SELECT pg2redis_import('{"tables": [{"public.products": {"insert": {"commands": [["SET", "k", "v"]]}}}, {"public.orders": {"delete": {"commands": [["SET", "k", "{nope}"]]}}}]}');
SELECT pg2redis_import('{"tables": [{"public.products": {"update": {"commands": [["FLUSHALL"]]}}}]}');
SELECT pg2redis_import('{"tables": [{"public.products": {"insert": {"commands": ["SET k v"]}}}]}');
SELECT pg2redis_import('{"tables": [{"public.products": {"insert": {"commands": [{"command": ["SET", "k", "1"], "condition": {"column": "id", "op": "~"}}]}}}]}');
SELECT pg2redis_import('{"tables": [{"public.products": {"insert": []}}]}');
SELECT pg2redis_import('{"tables": [{"public.products": {"insert": {"commands": [["SET", "k", "v"]]}}, "public.orders": {}}]}');
SELECT pg2redis_import('{"snapshot": {"config": [{"name": "public.orders", "type": "query"}]}}');
SELECT pg2redis_import('{"snapshot": {"config": [{"name": "public.orders", "type": "sample"}]}}');
SELECT pg2redis_import('{"snapshot": {"config": [{"name": "public.orders", "type": "query", "where": "nope > 1"}]}}');
SELECT count(*) = :rules_before AS nothing_stored FROM pg2redis.rules;

DROP TABLE order_items, orders, products, customers;
DROP EXTENSION pg2redis;
