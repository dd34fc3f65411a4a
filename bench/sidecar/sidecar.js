// The sidecar baseline: what a Node.js service built on logical replication
// does for the same mapping as pg2redis's bench rules.  It consumes a
// pgoutput slot, writes HSET bench:<id> <row> + SADD bench:all <id> per
// inserted or updated row (DEL + SREM per deleted row, PUBLISH lat <v> for
// the latency table) through an ioredis pipeline, flushed at the end of
// each event-loop turn, and acknowledges the slot only after the pipeline's
// replies came back (no loss, at-least-once).
//
// Environment: PGPORT, PGHOST, PGUSER, PGDATABASE, SLOT, PUBLICATION,
// REDIS_PORT, EXPECT (exit after this many row changes; 0 = run until
// SIGTERM).  Prints "ready" once streaming, "done <changes> <ms>" at the end.
'use strict';
const { LogicalReplicationService, PgoutputPlugin } = require('pg-logical-replication');
const Redis = require('ioredis');

const expect = Number(process.env.EXPECT || 0);
const redis = new Redis({ host: '127.0.0.1', port: Number(process.env.REDIS_PORT), enableAutoPipelining: false });
const service = new LogicalReplicationService(
  { host: process.env.PGHOST || '127.0.0.1', port: Number(process.env.PGPORT),
    user: process.env.PGUSER || 'postgres', database: process.env.PGDATABASE || 'postgres' },
  { acknowledge: { auto: false, timeoutSeconds: 0 } });
const plugin = new PgoutputPlugin({ protoVersion: 1, publicationNames: [process.env.PUBLICATION] });

let pipe = redis.pipeline();
let queued = 0;          // changes in pipe
let lastCommitLsn = null;
let scheduled = false;
let changes = 0;
let started = null;
let chain = Promise.resolve();

function flush() {
  scheduled = false;
  if (queued === 0 && lastCommitLsn === null) return;
  const p = pipe, n = queued, lsn = lastCommitLsn;
  pipe = redis.pipeline(); queued = 0; lastCommitLsn = null;
  // keep order: one pipeline after the other, ack after its replies
  chain = chain.then(async () => {
    if (n > 0) await p.exec();
    if (lsn) await service.acknowledge(lsn);
    changes += n;
    if (expect > 0 && changes >= expect) {
      console.log(`done ${changes} ${Date.now() - started}`);
      await service.stop(); redis.disconnect(); process.exit(0);
    }
  }).catch((e) => { console.error(e); process.exit(1); });
}

service.on('data', (lsn, msg) => {
  if (started === null) started = Date.now();
  const table = msg.relation && msg.relation.name;
  if (msg.tag === 'insert' || msg.tag === 'update') {
    const row = msg.new;
    if (table === 'lat') { pipe.publish('lat', String(row.v)); }
    else {
      const flat = [];
      for (const [k, v] of Object.entries(row)) flat.push(k, v === null ? '' : String(v));
      pipe.hset(`bench:${row.id}`, ...flat);
      pipe.sadd('bench:all', String(row.id));
    }
    queued++;
  } else if (msg.tag === 'delete') {
    const key = msg.key || msg.old;
    pipe.del(`bench:${key.id}`);
    pipe.srem('bench:all', String(key.id));
    queued++;
  } else if (msg.tag === 'commit') {
    lastCommitLsn = lsn;
    if (!scheduled) { scheduled = true; setImmediate(flush); }
  }
});
service.on('error', (e) => { console.error(e); process.exit(1); });
process.on('SIGTERM', async () => { await service.stop(); redis.disconnect(); process.exit(0); });
console.log('ready');
service.subscribe(plugin, process.env.SLOT).catch((e) => { console.error(e); process.exit(1); });
