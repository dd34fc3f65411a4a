// Commit-to-Redis latency: single-row UPDATE transactions of table lat at a
// fixed rate for a fixed time; the time from the client's COMMIT returning
// to the new value arriving on Redis channel "lat" (published by a PUBLISH
// rule of pg2redis, or by the sidecar).  Same process, same clock.
//
// Environment: PGPORT, PGHOST, PGUSER, PGDATABASE, REDIS_PORT, RATE (tx/s),
// DURATION (s).  Prints "p50 <ms> p99 <ms> max <ms> n <count> lost <count>".
'use strict';
const { Client } = require('pg');
const Redis = require('ioredis');

const rate = Number(process.env.RATE), secs = Number(process.env.DURATION);
const sub = new Redis({ host: '127.0.0.1', port: Number(process.env.REDIS_PORT), enableReadyCheck: false });
const pg = new Client({ host: process.env.PGHOST || '127.0.0.1', port: Number(process.env.PGPORT),
  user: process.env.PGUSER || 'postgres', database: process.env.PGDATABASE || 'postgres' });
const committed = new Map();   // v -> hrtime of COMMIT returning
const latencies = [];
const early = new Map();       // v -> hrtime of arrival before our COMMIT returned

function now() { return Number(process.hrtime.bigint()) / 1e6; }

sub.on('message', (_ch, msg) => {
  const t = now(), v = Number(msg);
  if (committed.has(v)) { latencies.push(t - committed.get(v)); committed.delete(v); }
  else early.set(v, t);
});

(async () => {
  await pg.connect();
  await sub.subscribe('lat');
  let v = Number((await pg.query('SELECT v FROM lat WHERE id = 1')).rows[0].v);
  const n = Math.round(rate * secs), interval = 1000 / rate, t0 = now();
  for (let i = 0; i < n; i++) {
    const due = t0 + i * interval, wait = due - now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    v++;
    await pg.query('UPDATE lat SET v = $1 WHERE id = 1', [v]);
    const t = now();
    if (early.has(v)) { latencies.push(Math.max(0, early.get(v) - t)); early.delete(v); }
    else committed.set(v, t);
  }
  await new Promise((r) => setTimeout(r, 1000));
  latencies.sort((a, b) => a - b);
  const q = (p) => latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : NaN;
  console.log(`p50 ${q(0.5).toFixed(3)} p99 ${q(0.99).toFixed(3)} max ${(latencies[latencies.length - 1] || NaN).toFixed(3)} n ${latencies.length} lost ${committed.size}`);
  await pg.end(); sub.disconnect();
})().catch((e) => { console.error(e); process.exit(1); });
