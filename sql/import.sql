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
