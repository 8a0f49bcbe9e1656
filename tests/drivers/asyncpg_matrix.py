#!/usr/bin/env python3
"""asyncpg against pgsluice in transaction pooling mode.

Usage: PGSLUICE_DSN=postgresql://user:pass@127.0.0.1:6432/db python asyncpg_matrix.py

asyncpg prepares every query as a named statement (Parse + Describe + Sync), keeps it in
its statement cache (on, the default) and later sends only Bind + Execute + Sync, so each
of these lands on whichever server the pooler picks at that moment.

Phases, each with many connections at once against a pool of a few servers:
  a. 30 connections x 50 iterations of fetchval/fetch/fetchrow with parameters, some in
     `async with conn.transaction()` (one in ten rolled back), and one query text per
     connection of its own.
  b. executemany from 10 connections at once (autocommit and in a transaction).
  c. copy_records_to_table from 10 connections at once (autocommit and in a transaction).
  d. the same query text prepared by 30 connections at once (conn.prepare), also under
     the same explicit statement name (with two different texts), then run interleaved.
  e. statement_cache_size=4 with 8 queries: asyncpg evicts and closes statements all the
     time.
  f. an asyncpg Pool (max_size 5) used by 30 tasks (reset query on every release).
  g. migration: connections A cache SELECT * FROM t, B adds a column, new connections C
     must see two columns; A's next fetch must give two columns as well (asyncpg re-prepares
     by itself on "cached plan must not change result type").
  h. migration where A's cached statement must be prepared on demand on another server
     after the ALTER: A must get both columns (asyncpg re-prepares on PostgreSQL's
     "cached plan must not change result type"), not rows that do not match the row
     description it cached.

Any error fails the run (exit 1) with a message naming the phase and step. The whole run
has a hard timeout (PGSLUICE_DRIVER_TIMEOUT seconds, default 60), exit 3.
Only tables named drv_apg_<pid>_* are created, and they are dropped at the end.
"""

import asyncio
import os
import sys
import threading
import time
import traceback

try:
    import asyncpg
except ImportError:  # pragma: no cover
    print("asyncpg_matrix: FAIL: asyncpg is not installed (pip install -r requirements.txt)")
    sys.exit(2)

DSN = os.environ.get("PGSLUICE_DSN")
TIMEOUT = float(os.environ.get("PGSLUICE_DRIVER_TIMEOUT", "60"))
CLIENTS = 30
ITERATIONS = 50
PREFIX = f"drv_apg_{os.getpid()}"
T_MAIN = f"{PREFIX}_rows"
T_MANY = f"{PREFIX}_many"
T_COPY = f"{PREFIX}_copy"
T_MIG = f"{PREFIX}_mig"
T_MIG2 = f"{PREFIX}_mig2"

_phase = "startup"


def log(msg):
    print(f"asyncpg_matrix: {msg}", flush=True)


class Failure(Exception):
    pass


def describe(e):
    state = getattr(e, "sqlstate", None)
    return f"{type(e).__name__}" + (f" [{state}]" if state else "") + f": {str(e).strip()}"


def check(got, want, what):
    if got != want:
        raise Failure(f"{what}: got {got!r}, want {want!r}")


EXPECTED_ERRORS = (Failure, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError,
                   asyncpg.exceptions.ProtocolError)


async def connect(**kw):
    kw.setdefault("timeout", 10)
    kw.setdefault("command_timeout", 30)
    return await asyncpg.connect(DSN, **kw)


async def run_tasks(name, n, target):
    """Run target(k) for k in range(n) at once; return (errors, seconds)."""
    global _phase
    _phase = name
    t0 = time.monotonic()
    results = await asyncio.gather(*(target(k) for k in range(n)), return_exceptions=True)
    errors = []
    traced = False
    for k, r in enumerate(results):
        if isinstance(r, BaseException):
            errors.append(f"[{name}] task {k}: {describe(r)}")
            if not traced and not isinstance(r, EXPECTED_ERRORS):
                traced = True  # one traceback is enough to see where
                errors.append("".join(traceback.format_exception(r)))
    return errors, time.monotonic() - t0


async def table_summary(conn, table):
    rows = await conn.fetch(f"SELECT worker, count(*), sum(v) FROM {table} GROUP BY worker ORDER BY worker")
    return {r[0]: (r[1], r[2]) for r in rows}


async def expect_rows(conn, table, want, what):
    got = await table_summary(conn, table)
    if got != want:
        diff = {w: (got.get(w), want.get(w)) for w in set(got) | set(want) if got.get(w) != want.get(w)}
        raise Failure(f"{what}: per-worker (count, sum) differ (got, want): {dict(sorted(diff.items()))}")


# --- phase a ---------------------------------------------------------------------------

async def phase_a(admin):
    await admin.execute(f"TRUNCATE {T_MAIN}")

    async def worker(k):
        conn = await connect()
        committed = 0
        try:
            for i in range(ITERATIONS):
                step = "fetchval add"
                try:
                    check(await conn.fetchval("SELECT $1::int + 1", i), i + 1, step)
                    step = "fetchval own text"
                    check(await conn.fetchval(f"SELECT $1::int + {k} AS own_{k}", i), i + k, step)
                    step = "fetchrow"
                    row = await conn.fetchrow("SELECT $1::int AS a, $2::text AS b, $3::float8 * 2 AS c", k, f"r{i}", i / 4)
                    check(tuple(row), (k, f"r{i}", i / 2), step)
                    step = "fetch series"
                    n = i % 7 + 1
                    rows = await conn.fetch("SELECT g, g * $1::int AS m FROM generate_series(1, $2::int) AS g ORDER BY g", k, n)
                    check([tuple(r) for r in rows], [(g, g * k) for g in range(1, n + 1)], step)
                    step = "transaction"
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO {T_MAIN} (worker, i, v) VALUES ($1, $2, $3)", k, i, k * i)
                        check(await conn.fetchval(f"SELECT v FROM {T_MAIN} WHERE worker = $1 AND i = $2", k, i), k * i,
                              "row read back inside its transaction")
                        check(await conn.fetchval(f"SELECT count(*) FROM {T_MAIN} WHERE worker = $1 AND i >= 0", k),
                              committed + 1, "count inside the transaction")
                    committed += 1
                    if i % 10 == 4:
                        step = "rolled-back transaction"
                        try:
                            async with conn.transaction():
                                await conn.execute(f"INSERT INTO {T_MAIN} (worker, i, v) VALUES ($1, $2, $3)", k, -1 - i, 0)
                                raise _Rollback()
                        except _Rollback:
                            pass
                        check(await conn.fetchval(f"SELECT count(*) FROM {T_MAIN} WHERE worker = $1 AND i < 0", k), 0,
                              "rows of a rolled-back transaction")
                        step = "failed statement inside a transaction"
                        try:
                            async with conn.transaction():
                                await conn.fetchval("SELECT 1 / $1::int", 0)
                        except asyncpg.DivisionByZeroError:
                            pass
                        else:
                            raise Failure("1/0 did not fail")
                        check(await conn.fetchval("SELECT 1 / $1::int", 1), 1, "the same statement after the error")
                except Exception as e:
                    raise Failure(f"iteration {i} step {step}: {describe(e)}") from e
        finally:
            await conn.close()

    errors, secs = await run_tasks("a fetch", CLIENTS, worker)
    if not errors:
        want = {k: (ITERATIONS, sum(k * i for i in range(ITERATIONS))) for k in range(CLIENTS)}
        try:
            await expect_rows(admin, T_MAIN, want, "[a fetch] rows after the run")
        except Failure as e:
            errors.append(str(e))
    return errors, secs


class _Rollback(Exception):
    pass


# --- phase b: executemany ------------------------------------------------------------

MANY = 200


async def phase_b(admin):
    await admin.execute(f"TRUNCATE {T_MANY}")

    async def worker(k):
        conn = await connect()
        try:
            rows = [(k, j, k * 1000 + j) for j in range(MANY)]
            q = f"INSERT INTO {T_MANY} (worker, i, v) VALUES ($1, $2, $3)"
            if k % 2:
                async with conn.transaction():
                    await conn.executemany(q, rows)
                    check(await conn.fetchval(f"SELECT count(*) FROM {T_MANY} WHERE worker = $1", k), MANY,
                          "count inside the executemany transaction")
            else:
                await conn.executemany(q, rows)
            # a second batch through the now cached statement
            await conn.executemany(q, [(k, MANY + j, j) for j in range(10)])
        finally:
            await conn.close()

    errors, secs = await run_tasks("b executemany", 10, worker)
    if not errors:
        want = {k: (MANY + 10, sum(k * 1000 + j for j in range(MANY)) + sum(range(10))) for k in range(10)}
        try:
            await expect_rows(admin, T_MANY, want, "[b executemany] rows after the run")
        except Failure as e:
            errors.append(str(e))
    return errors, secs


# --- phase c: copy_records_to_table ----------------------------------------------------

COPY_ROWS = 500


async def phase_c(admin):
    await admin.execute(f"TRUNCATE {T_COPY}")

    async def worker(k):
        conn = await connect()
        try:
            records = [(k, j, j * 2) for j in range(COPY_ROWS)]
            if k % 2:
                async with conn.transaction():
                    res = await conn.copy_records_to_table(T_COPY, records=records, columns=["worker", "i", "v"])
                    check(res, f"COPY {COPY_ROWS}", "copy_records_to_table status")
                    check(await conn.fetchval(f"SELECT count(*) FROM {T_COPY} WHERE worker = $1", k), COPY_ROWS,
                          "count inside the COPY transaction")
            else:
                res = await conn.copy_records_to_table(T_COPY, records=records)
                check(res, f"COPY {COPY_ROWS}", "copy_records_to_table status")
            check(await conn.fetchval(f"SELECT count(*) FROM {T_COPY} WHERE worker = $1", k), COPY_ROWS,
                  "count after COPY")
        finally:
            await conn.close()

    errors, secs = await run_tasks("c copy_records_to_table", 10, worker)
    if not errors:
        want = {k: (COPY_ROWS, sum(j * 2 for j in range(COPY_ROWS))) for k in range(10)}
        try:
            await expect_rows(admin, T_COPY, want, "[c copy] rows after the run")
        except Failure as e:
            errors.append(str(e))
    return errors, secs


# --- phase d: one text prepared by many connections at once ----------------------------
#
# Note: asyncpg's Connection.prepare() sends Parse + Describe + Flush and no Sync, so the
# connection keeps its server (an implicit transaction is open) until its next query's
# Sync. A connection therefore uses each statement right after preparing it: 30
# connections that prepared and then waited for each other would need 30 servers.

async def phase_d(_admin):
    global _phase
    _phase = "d same text prepared at once"
    t0 = time.monotonic()
    conns = await asyncio.gather(*(connect() for _ in range(CLIENTS)))
    errors = []
    go = asyncio.Event()
    try:
        async def prep(k):
            c = conns[k]
            await go.wait()  # every connection sends its Parse at the same moment
            auto = await c.prepare("SELECT $1::int * 3 + $2::int AS v")
            check(await auto.fetchval(k, 1), k * 3 + 1, "auto-named statement, first run")
            # The same explicit name on every client; odd clients give it another text.
            text = "SELECT $1::int * 3 + $2::int AS v" if k % 2 == 0 else "SELECT $1::int * 5 + $2::int AS v"
            named = await c.prepare(text, name="drv_same_name")
            check(await named.fetchval(k, 1), k * (3 if k % 2 == 0 else 5) + 1, "drv_same_name, first run")
            return auto, named

        tasks = [asyncio.ensure_future(prep(k)) for k in range(CLIENTS)]
        await asyncio.sleep(0)
        go.set()
        res = await asyncio.gather(*tasks, return_exceptions=True)
        for k, r in enumerate(res):
            if isinstance(r, BaseException):
                errors.append(f"[d] prepare and first run on connection {k}: {describe(r)}")
        if errors:
            return errors, time.monotonic() - t0

        async def use(k):
            auto, named = res[k]
            mul = 3 if k % 2 == 0 else 5
            for i in range(20):
                check(await auto.fetchval(k, i), k * 3 + i, f"auto-named statement, run {i}")
                check(await named.fetchval(k, i), k * mul + i, f"statement drv_same_name, run {i}")
                check(await conns[k].fetchval("SELECT $1::int * 3 + $2::int AS v", i, k), i * 3 + k,
                      f"the same text through the statement cache, run {i}")
                rows = await named.fetch(i, k)
                check([tuple(r) for r in rows], [(i * mul + k,)], f"drv_same_name fetch, run {i}")
        e, _ = await run_tasks("d same text prepared at once", CLIENTS, use)
        errors += e
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    return errors, time.monotonic() - t0


# --- phase e: statement cache evictions -------------------------------------------------

async def phase_e(_admin):
    queries = [f"SELECT $1::int + {n} AS v{n}" for n in range(8)]

    async def worker(k):
        conn = await connect(statement_cache_size=4)
        try:
            for i in range(ITERATIONS):
                n = (k + i * 3) % len(queries)
                check(await conn.fetchval(queries[n], i), i + n, f"iteration {i}: {queries[n]!r}")
        finally:
            await conn.close()

    return await run_tasks("e statement_cache_size=4", CLIENTS, worker)


# --- phase f: asyncpg pool -------------------------------------------------------------

async def phase_f(_admin):
    pool = await asyncpg.create_pool(DSN, min_size=2, max_size=5, timeout=10, command_timeout=30)
    try:
        async def worker(k):
            for i in range(10):
                async with pool.acquire() as c:
                    check(await c.fetchval("SELECT $1::int * 7", k + i), (k + i) * 7, f"pool acquire {i}")
                    async with c.transaction():
                        check(await c.fetchval("SELECT $1::text || $2::text", f"p{k}", str(i)), f"p{k}{i}",
                              f"pool transaction {i}")
        return await run_tasks("f asyncpg pool", CLIENTS, worker)
    finally:
        await pool.close()


# --- phase g: migration -----------------------------------------------------------------

async def phase_g(admin):
    global _phase
    _phase = "g migration"
    t0 = time.monotonic()
    errors = []
    q = f"SELECT * FROM {T_MIG} ORDER BY a"
    await admin.execute(f"DROP TABLE IF EXISTS {T_MIG}")
    await admin.execute(f"CREATE TABLE {T_MIG} (a int)")
    await admin.execute(f"INSERT INTO {T_MIG} (a) VALUES (1), (2)")
    a_conns = await asyncio.gather(*(connect() for _ in range(6)))
    try:
        async def before(k):
            for _ in range(10):
                rows = await a_conns[k].fetch(q)
                check([tuple(r) for r in rows], [(1,), (2,)], "A before the ALTER")
        e, _ = await run_tasks("g migration: A before", len(a_conns), before)
        errors += e

        b = await connect()
        try:
            await b.execute(f"ALTER TABLE {T_MIG} ADD COLUMN b int DEFAULT 7")
        finally:
            await b.close()

        async def new_client(k):
            c = await connect()
            try:
                for j in range(5):
                    rows = await c.fetch(q)
                    check([(list(r.keys()), tuple(r)) for r in rows],
                          [(["a", "b"], (1, 7)), (["a", "b"], (2, 7))], f"C fetch {j} after the ALTER")
            finally:
                await c.close()
        e, _ = await run_tasks("g migration: C after", 12, new_client)
        errors += e

        # A: asyncpg re-prepares by itself on "cached plan must not change result type"
        # outside a transaction, so A's next fetches must simply give both columns.
        async def after(k):
            for j in range(5):
                rows = await a_conns[k].fetch(q)
                check([tuple(r) for r in rows], [(1, 7), (2, 7)], f"A fetch {j} after the ALTER")
        e, _ = await run_tasks("g migration: A after", len(a_conns), after)
        errors += e
    finally:
        await asyncio.gather(*(c.close() for c in a_conns), return_exceptions=True)
    return errors, time.monotonic() - t0


# --- phase h: migration, statement prepared on demand on another server ---------------------

async def phase_h(admin):
    """A caches SELECT * FROM t on one server; B adds a column; X holds a server in a
    transaction so that A's next Bind (asyncpg sends no Describe there, it kept the row
    description of its prepare) may land on a server where the pooler must prepare A's
    statement on demand. PostgreSQL answers A with "cached plan must not change result
    type" and asyncpg re-prepares by itself; A must get both columns."""
    global _phase
    _phase = "h migration on demand"
    t0 = time.monotonic()
    errors = []
    q = f"SELECT * FROM {T_MIG2}"
    await admin.execute(f"DROP TABLE IF EXISTS {T_MIG2}")
    await admin.execute(f"CREATE TABLE {T_MIG2} (a int)")
    await admin.execute(f"INSERT INTO {T_MIG2} (a) VALUES (1)")
    a, x = await asyncio.gather(connect(), connect())
    try:
        check([tuple(r) for r in await a.fetch(q)], [(1,)], "A before the ALTER")
        await admin.execute(f"ALTER TABLE {T_MIG2} ADD COLUMN b int DEFAULT 7")
        tr = x.transaction()
        await tr.start()
        await x.execute("SELECT 1")
        try:
            rows = await a.fetch(q)
            check([tuple(r) for r in rows], [(1, 7)], "A after the ALTER")
        except Exception as e:  # noqa: BLE001
            errors.append(f"[h migration on demand] A after the ALTER: {describe(e)}")
        finally:
            await tr.rollback()
    finally:
        await asyncio.gather(a.close(), x.close(), return_exceptions=True)
    return errors, time.monotonic() - t0


async def amain():
    t0 = time.monotonic()
    try:
        admin = await connect()
    except Exception as e:  # noqa: BLE001
        log(f"FAIL: cannot connect: {describe(e)}")
        return 1
    failures, times, ran = [], [], []
    try:
        for t in (T_MAIN, T_MANY, T_COPY):
            await admin.execute(f"CREATE TABLE {t} (worker int, i int, v int)")
        phases = [("a", phase_a), ("b", phase_b), ("c", phase_c), ("d", phase_d), ("e", phase_e),
                  ("f", phase_f), ("g", phase_g), ("h", phase_h)]
        only = os.environ.get("PGSLUICE_DRIVER_PHASES")
        for key, fn in phases:
            if only and key not in only:
                continue
            try:
                errs, secs = await fn(admin)
            except Exception as e:  # noqa: BLE001
                errs, secs = [f"[{key}] {describe(e)}", traceback.format_exc()], 0.0
            times.append(f"{key}={secs:.2f}s")
            ran.append(key)
            failures += errs
    finally:
        global _phase
        _phase += ", then cleanup"
        try:
            for t in (T_MAIN, T_MANY, T_COPY, T_MIG, T_MIG2):
                await admin.execute(f"DROP TABLE IF EXISTS {t}")
            await admin.close()
        except Exception as e:  # noqa: BLE001
            failures.append(f"[cleanup] {describe(e)}")
    if failures:
        log(f"FAIL: {len(failures)} error(s) after {time.monotonic() - t0:.2f}s ({' '.join(times)}); the first ones:")
        for f in failures[:15]:
            print("  " + f.rstrip().replace("\n", "\n  "))
        return 1
    log(f"OK asyncpg {asyncpg.__version__}: {CLIENTS} connections x {ITERATIONS} iterations, phases {','.join(ran)} passed "
        f"in {time.monotonic() - t0:.2f}s ({' '.join(times)})")
    return 0


def _watchdog():
    log(f"FAIL: timeout after {TIMEOUT + 5:.0f} s (phase {_phase}), the event loop did not stop")
    os._exit(3)


def main():
    if not DSN:
        log("FAIL: set PGSLUICE_DSN to a libpq URL, e.g. postgresql://user:pass@127.0.0.1:6432/db")
        return 2
    # Two guards: asyncio.wait_for cancels a hung run; the thread ends the process if even
    # the cancellation hangs.
    timer = threading.Timer(TIMEOUT + 5, _watchdog)
    timer.daemon = True
    timer.start()
    try:
        return asyncio.run(asyncio.wait_for(amain(), TIMEOUT))
    except asyncio.TimeoutError:
        log(f"FAIL: timeout after {TIMEOUT:.0f} s (phase {_phase}): a hang counts as a failure")
        return 3


if __name__ == "__main__":
    sys.exit(main())
