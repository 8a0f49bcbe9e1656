#!/usr/bin/env node
// node-postgres (pg) against pgsluice in transaction pooling mode.
//
// Usage: cd tests/drivers && npm ci && cd - &&
//        PGSLUICE_DSN=postgresql://user:pass@127.0.0.1:6432/db node tests/drivers/node_pg_matrix.js
//
// node-postgres sends a named query ({name, text, values}) as Parse(name) + Bind + Describe +
// Execute + Sync the first time on a client, and only Bind + Describe + Execute + Sync after
// that, wherever the pooler puts the client.
//
// Phases, each with many clients at once against a pool of a few servers:
//   a. 30 pg.Clients x 50 iterations of named queries ('add', 'concat', 'series', 'shared' whose
//      text differs between clients, and 10 statements of each client's own, 300+ distinct
//      statements in all, more than the pooler keeps per server by default), some inside
//      BEGIN/COMMIT, one in ten rolled back, and an error inside a transaction followed by
//      ROLLBACK and the same named statement again.
//   b. a pg.Pool (max 5) shared by 30 tasks running named queries.
// Any error or wrong result fails the run (exit 1); the whole run has a hard timeout
// (PGSLUICE_DRIVER_TIMEOUT seconds, default 60, exit 3). Only the table drv_node_<pid>_rows is
// created, and it is dropped at the end.
'use strict';

const path = require('path');
let pg;
try {
  pg = require(path.join(__dirname, 'node_modules', 'pg'));
} catch (e) {
  console.log('node_pg_matrix: FAIL: pg is not installed (run `npm ci` in tests/drivers): ' + e.message);
  process.exit(2);
}

const DSN = process.env.PGSLUICE_DSN;
const TIMEOUT = Number(process.env.PGSLUICE_DRIVER_TIMEOUT || 60);
const CLIENTS = 30;
const ITERATIONS = 50;
const OWN = 10;
const TABLE = `drv_node_${process.pid}_rows`;

let phase = 'startup';
let finished = false;

function log(msg) {
  console.log(`node_pg_matrix: ${msg}`);
}

const timer = setTimeout(() => {
  log(`FAIL: timeout after ${TIMEOUT} s (phase ${phase}): a hang counts as a failure`);
  process.exit(3);
}, TIMEOUT * 1000);
timer.unref();

// If the event loop ever drains without main() finishing (a promise that never settles), the
// run must not look like a success.
process.on('exit', (code) => {
  if (!finished && code === 0) {
    console.log(`node_pg_matrix: FAIL: exited before finishing (phase ${phase})`);
    process.exitCode = 1;
  }
});

class Failure extends Error {}

function describe(e) {
  return `${e.constructor.name}${e.code ? ` [${e.code}]` : ''}: ${e.message}`;
}

function check(got, want, what) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) throw new Failure(`${what}: got ${g}, want ${w}`);
}

async function connect() {
  const c = new pg.Client({ connectionString: DSN, connectionTimeoutMillis: 10000, query_timeout: 30000 });
  // An 'error' event without a listener would crash the process with a less clear message.
  c.on('error', (e) => { c.lastError = e; });
  await c.connect();
  return c;
}

const ADD = { name: 'add', text: 'SELECT $1::int + 1 AS v' };
const CONCAT = { name: 'concat', text: "SELECT $1::text || ':' || $2::text AS v" };
const SERIES = { name: 'series', text: 'SELECT g, g * $1::int AS m FROM generate_series(1, $2::int) AS g ORDER BY g' };
const SHARED_EVEN = { name: 'shared', text: 'SELECT $1::int * 2 AS v' };
const SHARED_ODD = { name: 'shared', text: "SELECT $1::text || '!' AS v" };
const INS = { name: 'ins', text: `INSERT INTO ${TABLE} (worker, i, v) VALUES ($1, $2, $3)` };
const COUNT = { name: 'count', text: `SELECT count(*)::int AS n FROM ${TABLE} WHERE worker = $1 AND i >= 0` };
const COUNT_NEG = { name: 'count_neg', text: `SELECT count(*)::int AS n FROM ${TABLE} WHERE worker = $1 AND i < 0` };
const DIV = { name: 'div', text: 'SELECT 10 / $1::int AS v' };

function q(stmt, values) {
  return { name: stmt.name, text: stmt.text, values };
}

async function runAll(name, n, fn) {
  phase = name;
  const t0 = Date.now();
  const results = await Promise.allSettled(Array.from({ length: n }, (_, k) => fn(k)));
  const errors = [];
  results.forEach((r, k) => {
    if (r.status === 'rejected') {
      errors.push(`[${name}] client ${k}: ${describe(r.reason)}`);
      if (!(r.reason instanceof Failure) && !r.reason.code && errors.length < 3) errors.push(r.reason.stack);
    }
  });
  return { errors, secs: (Date.now() - t0) / 1000 };
}

async function phaseA() {
  return runAll('a named queries', CLIENTS, async (k) => {
    const c = await connect();
    let committed = 0;
    const shared = k % 2 === 0 ? SHARED_EVEN : SHARED_ODD;
    try {
      for (let i = 0; i < ITERATIONS; i++) {
        let step = 'add';
        try {
          check((await c.query(q(ADD, [i]))).rows, [{ v: i + 1 }], step);
          step = 'concat';
          check((await c.query(q(CONCAT, [`w${k}`, i]))).rows, [{ v: `w${k}:${i}` }], step);
          step = 'series';
          const n = (i % 7) + 1;
          check((await c.query(q(SERIES, [k, n]))).rows,
            Array.from({ length: n }, (_, j) => ({ g: j + 1, m: (j + 1) * k })), step);
          step = 'shared (a name with another text on other clients)';
          check((await c.query(q(shared, [i]))).rows, [{ v: k % 2 === 0 ? i * 2 : `${i}!` }], step);
          step = 'own statements';
          const j = (i + k) % OWN;
          const own = { name: `own_${j}`, text: `SELECT $1::int + ${k * 100 + j} AS v` };
          check((await c.query(q(own, [i]))).rows, [{ v: i + k * 100 + j }], step);

          step = 'BEGIN/COMMIT';
          await c.query('BEGIN');
          await c.query(q(INS, [k, i, k * i]));
          check((await c.query(q(COUNT, [k]))).rows, [{ n: committed + 1 }], 'count inside the transaction');
          check((await c.query(q(ADD, [k]))).rows, [{ v: k + 1 }], 'add inside the transaction');
          await c.query('COMMIT');
          committed++;

          if (i % 10 === 6) {
            step = 'BEGIN/ROLLBACK';
            await c.query('BEGIN');
            await c.query(q(INS, [k, -1 - i, 0]));
            await c.query('ROLLBACK');
            check((await c.query(q(COUNT_NEG, [k]))).rows, [{ n: 0 }], 'rows of a rolled-back transaction');

            step = 'error inside a transaction';
            await c.query('BEGIN');
            check((await c.query(q(DIV, [5]))).rows, [{ v: 2 }], 'div before the error');
            let failed = null;
            try {
              await c.query(q(DIV, [0]));
            } catch (e) {
              failed = e;
            }
            if (!failed || failed.code !== '22012') {
              throw new Failure(`10 / 0 should fail with 22012, got ${failed ? describe(failed) : 'no error'}`);
            }
            await c.query('ROLLBACK');
            check((await c.query(q(DIV, [2]))).rows, [{ v: 5 }], 'the same statement after the error');
          }
        } catch (e) {
          throw new Failure(`iteration ${i} step ${step}: ${describe(e)}`);
        }
      }
    } finally {
      await c.end().catch(() => {});
    }
  });
}

async function phaseB() {
  const pool = new pg.Pool({ connectionString: DSN, max: 5, connectionTimeoutMillis: 10000, query_timeout: 30000 });
  pool.on('error', () => {});
  try {
    return await runAll('b pg.Pool', CLIENTS, async (k) => {
      for (let i = 0; i < 10; i++) {
        check((await pool.query(q(ADD, [k + i]))).rows, [{ v: k + i + 1 }], `pool add ${i}`);
        const c = await pool.connect();
        try {
          await c.query('BEGIN');
          check((await c.query(q(CONCAT, [`p${k}`, i]))).rows, [{ v: `p${k}:${i}` }], `pool transaction ${i}`);
          await c.query('COMMIT');
        } finally {
          c.release();
        }
      }
    });
  } finally {
    await pool.end().catch(() => {});
  }
}

async function main() {
  if (!DSN) {
    log('FAIL: set PGSLUICE_DSN to a libpq URL, e.g. postgresql://user:pass@127.0.0.1:6432/db');
    return 2;
  }
  const t0 = Date.now();
  let admin;
  try {
    admin = await connect();
  } catch (e) {
    log(`FAIL: cannot connect: ${describe(e)}`);
    return 1;
  }
  const failures = [];
  const times = [];
  const ran = [];
  try {
    await admin.query(`CREATE TABLE ${TABLE} (worker int, i int, v int)`);
    for (const [key, fn] of [['a', phaseA], ['b', phaseB]]) {
      const only = process.env.PGSLUICE_DRIVER_PHASES;
      if (only && !only.includes(key)) continue;
      const { errors, secs } = await fn();
      times.push(`${key}=${secs.toFixed(2)}s`);
      ran.push(key);
      failures.push(...errors);
      if (key === 'a' && errors.length === 0) {
        phase = 'a check';
        const { rows } = await admin.query(
          `SELECT worker, count(*)::int AS n, sum(v)::int AS s FROM ${TABLE} GROUP BY worker ORDER BY worker`);
        const want = Array.from({ length: CLIENTS }, (_, k) => ({
          worker: k, n: ITERATIONS, s: k * (ITERATIONS * (ITERATIONS - 1)) / 2,
        }));
        try {
          check(rows, want, '[a] per-worker rows after the run');
        } catch (e) {
          failures.push(e.message);
        }
      }
    }
  } catch (e) {
    failures.push(`[${phase}] ${describe(e)}`);
  } finally {
    phase = 'cleanup';
    try {
      await admin.query(`DROP TABLE IF EXISTS ${TABLE}`);
      await admin.end();
    } catch (e) {
      failures.push(`[cleanup] ${describe(e)}`);
    }
  }
  if (failures.length) {
    log(`FAIL: ${failures.length} error(s) after ${((Date.now() - t0) / 1000).toFixed(2)}s (${times.join(' ')}); the first ones:`);
    for (const f of failures.slice(0, 15)) console.log('  ' + String(f).replace(/\n/g, '\n  '));
    return 1;
  }
  const version = require(path.join(__dirname, 'node_modules', 'pg', 'package.json')).version;
  log(`OK pg ${version} (node ${process.version}): ${CLIENTS} clients x ${ITERATIONS} iterations, phases ${ran.join(',')} passed in ` +
    `${((Date.now() - t0) / 1000).toFixed(2)}s (${times.join(' ')})`);
  return 0;
}

main().then((code) => {
  finished = true;
  process.exitCode = code;
}, (e) => {
  finished = true;
  log(`FAIL: ${e && e.stack ? e.stack : e}`);
  process.exitCode = 1;
});
