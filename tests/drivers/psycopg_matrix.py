#!/usr/bin/env python3
"""psycopg 3 against pgsluice in transaction pooling mode.

Usage: PGSLUICE_DSN=postgresql://user:pass@127.0.0.1:6432/db python psycopg_matrix.py

Phases (each one runs many connections at once against a pool of a few servers):
  a. 30 threads, prepare_threshold=0: every query is a named prepared statement
     (psycopg names them _pg3_0, _pg3_1, ... per connection, so the same name means
     different queries on different clients); some steps inside explicit transactions,
     one rolled back (psycopg then sends DEALLOCATE ALL as a simple query).
  b. the same with psycopg's default prepare_threshold (prepared after 5 uses).
  c. executemany of an INSERT from 10 connections at once (autocommit, in a
     transaction, and server-prepared), then count and sum checks.
  d. prepared_max=3 with 6 queries: psycopg evicts and closes statements all the time
     (protocol-level Close).
  e. pipeline mode with server-prepared statements.
  f. migration: A prepares SELECT * FROM t, B adds a column, C (new connections)
     prepares the same text and must see the new column; A's old statement fails with
     "cached plan must not change result type" as on PostgreSQL, and after DEALLOCATE ALL
     A's retry must work.
  g. the same, made deterministic: C's Parse (+ Sync) and its Bind/Execute run on two
     different servers, the second holding a copy of the statement from before the ALTER
     (needs a pool of at least 2 servers).
  h. a reset inside a pipeline: after a ROLLBACK psycopg pipelines its own DEALLOCATE ALL
     (extended protocol) ahead of the Parse of its next statements. (A DEALLOCATE ALL of the
     application's inside a pipeline confuses psycopg itself, on PostgreSQL too.)

Any error (does not exist, already exists, protocol error, wrong result) fails the
run with a message naming the phase, worker, iteration and step. The whole run has a
hard timeout (PGSLUICE_DRIVER_TIMEOUT seconds, default 60) after which it exits 3.
Only tables named drv_psy_<pid>_* are created, and they are dropped at the end.
"""

import os
import sys
import threading
import time
import traceback

try:
    import psycopg
    from psycopg import sql
except ImportError:  # pragma: no cover
    print("psycopg_matrix: FAIL: psycopg is not installed (pip install -r requirements.txt)")
    sys.exit(2)

DSN = os.environ.get("PGSLUICE_DSN")
TIMEOUT = float(os.environ.get("PGSLUICE_DRIVER_TIMEOUT", "60"))
CLIENTS = 30
ITERATIONS = 50
PREFIX = f"drv_psy_{os.getpid()}"
T_MAIN = f"{PREFIX}_rows"
T_MANY = f"{PREFIX}_many"
T_MIG = f"{PREFIX}_mig"
T_MIG2 = f"{PREFIX}_mig2"

_phase = "startup"


def log(msg):
    print(f"psycopg_matrix: {msg}", flush=True)


def _watchdog():
    log(f"FAIL: timeout after {TIMEOUT:.0f} s (phase {_phase}): a hang counts as a failure")
    os._exit(3)


def connect(**kw):
    kw.setdefault("autocommit", True)
    kw.setdefault("connect_timeout", 10)
    return psycopg.connect(DSN, **kw)


class Failure(Exception):
    pass


def describe(e):
    state = getattr(e, "sqlstate", None)
    return f"{type(e).__name__}" + (f" [{state}]" if state else "") + f": {str(e).strip()}"


def check(got, want, what):
    if got != want:
        raise Failure(f"{what}: got {got!r}, want {want!r}")


def run_threads(name, n, target):
    """Run target(k) in n threads at once; return a list of error strings."""
    global _phase
    _phase = name
    errors = []
    lock = threading.Lock()
    start = threading.Barrier(n)

    def wrap(k):
        try:
            start.wait(timeout=20)
            target(k)
        except Exception as e:  # noqa: BLE001 - every error is a failure
            with lock:
                errors.append(f"[{name}] worker {k}: {describe(e)}")
                if not isinstance(e, (Failure, psycopg.Error)):
                    errors.append(traceback.format_exc())

    threads = [threading.Thread(target=wrap, args=(k,), daemon=True) for k in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors, time.monotonic() - t0


# --- the per-iteration steps of phases a and b -------------------------------------------

def step_add(conn, k, i, st):
    check(conn.execute("SELECT %s::int + 1", (i,)).fetchone()[0], i + 1, "SELECT $1::int + 1")


def step_concat(conn, k, i, st):
    got = conn.execute("SELECT %s::text || ':' || %s::text", (f"w{k}", i)).fetchone()[0]
    check(got, f"w{k}:{i}", "text concat")


def step_row(conn, k, i, st):
    got = conn.execute(
        "SELECT %s::int AS a, %s::text AS b, %s::float8 * 2 AS c", (k, f"r{i}", i / 4)
    ).fetchone()
    check(tuple(got), (k, f"r{i}", i / 2), "three-column row")


def step_series(conn, k, i, st):
    n = i % 7 + 1
    rows = conn.execute(
        "SELECT g, g * %s FROM generate_series(1, %s) AS g ORDER BY g", (k, n)
    ).fetchall()
    check([tuple(r) for r in rows], [(g, g * k) for g in range(1, n + 1)], "generate_series rows")


def step_same_text_other_types(conn, k, i, st):
    # The same text with different parameter types is a different statement: psycopg sends
    # an int2/int4/int8 parameter for a Python int and an untyped one for a str.
    v = i * 1000 + k  # crosses the int2 limit, so int2 and int4 both occur
    got_int = conn.execute("SELECT %s", (v,)).fetchone()[0]
    check((type(got_int), got_int), (int, v), "SELECT $1 with an int")
    got_str = conn.execute("SELECT %s", (str(v),)).fetchone()[0]
    check((type(got_str), got_str), (str, str(v)), "SELECT $1 with a str")


def step_tx(conn, k, i, st):
    # Explicit transaction: insert, then read it back and count, on the same server.
    with conn.transaction():
        conn.execute(f"INSERT INTO {T_MAIN} (worker, i, v) VALUES (%s, %s, %s)", (k, i, k * i))
        got = conn.execute(
            f"SELECT v FROM {T_MAIN} WHERE worker = %s AND i = %s", (k, i)
        ).fetchone()
        check(got and got[0], k * i, "row read back inside its transaction")
        n = conn.execute(
            f"SELECT count(*) FROM {T_MAIN} WHERE worker = %s AND i >= 0", (k,)
        ).fetchone()[0]
        check(n, st.get("committed", 0) + 1, "count inside transaction")
    st["committed"] = st.get("committed", 0) + 1


def step_rollback(conn, k, i, st):
    # Every 10th iteration (not near the end, so that the default threshold prepares the
    # statements again afterwards): a rolled-back transaction. With prepared statements
    # psycopg reacts to ROLLBACK by sending DEALLOCATE ALL before its next query.
    if i % 10 != 3 or i > 35:
        return
    with conn.transaction():
        conn.execute(f"INSERT INTO {T_MAIN} (worker, i, v) VALUES (%s, %s, %s)", (k, -1 - i, 0))
        raise psycopg.Rollback()
    n = conn.execute(
        f"SELECT count(*) FROM {T_MAIN} WHERE worker = %s AND i < 0", (k,)
    ).fetchone()[0]
    check(n, 0, "rows of a rolled-back transaction")


STEPS = [step_add, step_concat, step_row, step_series, step_same_text_other_types, step_tx,
         step_rollback]


def make_worker(prepare_threshold, label):
    def worker(k):
        kw = {} if prepare_threshold == "default" else {"prepare_threshold": prepare_threshold}
        # A third of the workers run without autocommit: psycopg opens a transaction at the
        # first query and the worker commits at the end of each iteration.
        autocommit = k % 3 != 0
        with connect(autocommit=autocommit, **kw) as conn:
            conn.execute("SELECT 1")
            if not autocommit:
                conn.commit()
            st = {}
            for i in range(ITERATIONS):
                # Rotate the order per worker and iteration: with prepare_threshold=0 psycopg
                # names statements in the order it first sees them, so _pg3_3 is a different
                # query on different clients.
                r = (k + i) % len(STEPS)
                for step in STEPS[r:] + STEPS[:r]:
                    if step in (step_tx, step_rollback) and not autocommit:
                        continue
                    try:
                        step(conn, k, i, st)
                    except Exception as e:
                        raise Failure(f"{label} iteration {i} step {step.__name__}: {describe(e)}") from e
                if not autocommit:
                    # A transaction of its own, committed explicitly.
                    conn.execute(f"INSERT INTO {T_MAIN} (worker, i, v) VALUES (%s, %s, %s)", (k, i, k * i))
                    conn.commit()
            # Make sure the phase really exercised server-side prepared statements.
            names = getattr(getattr(conn, "_prepared", None), "_names", None)
            if names is not None and not names:
                raise Failure(f"{label}: psycopg holds no prepared statement at the end")
        return None
    return worker


def expect_table_rows(conn, table, per_worker, what):
    rows = conn.execute(
        f"SELECT worker, count(*), sum(v) FROM {table} GROUP BY worker ORDER BY worker"
    ).fetchall()
    got = {r[0]: (r[1], r[2]) for r in rows}
    if got != per_worker:
        diff = {w: (got.get(w), per_worker.get(w)) for w in set(got) | set(per_worker)
                if got.get(w) != per_worker.get(w)}
        raise Failure(f"{what}: per-worker (count, sum) differ (got, want): {dict(sorted(diff.items()))}")


def phase_ab(admin, prepare_threshold, label):
    admin.execute(f"TRUNCATE {T_MAIN}")
    errors, secs = run_threads(label, CLIENTS, make_worker(prepare_threshold, label))
    if not errors:
        want = {k: (ITERATIONS, sum(k * i for i in range(ITERATIONS))) for k in range(CLIENTS)}
        try:
            expect_table_rows(admin, T_MAIN, want, f"[{label}] rows after the run")
        except Failure as e:
            errors.append(str(e))
    return errors, secs


# --- phase c: executemany --------------------------------------------------------------

MANY_ROWS = 200


def phase_c(admin):
    admin.execute(f"TRUNCATE {T_MANY}")

    def worker(k):
        mode = k % 3
        kw = {"prepare_threshold": 0} if mode == 2 else {}
        rows = [(k, j, k * 1000 + j) for j in range(MANY_ROWS)]
        with connect(**kw) as conn:
            with conn.cursor() as cur:
                if mode == 1:
                    with conn.transaction():
                        cur.executemany(f"INSERT INTO {T_MANY} (worker, i, v) VALUES (%s, %s, %s)", rows)
                        n = conn.execute(f"SELECT count(*) FROM {T_MANY} WHERE worker = %s", (k,)).fetchone()[0]
                        check(n, MANY_ROWS, "count inside the executemany transaction")
                else:
                    cur.executemany(f"INSERT INTO {T_MANY} (worker, i, v) VALUES (%s, %s, %s)", rows)
                # executemany with RETURNING: one result set per row.
                cur.executemany(
                    f"INSERT INTO {T_MANY} (worker, i, v) VALUES (%s, %s, %s) RETURNING v",
                    [(k, MANY_ROWS + j, j) for j in range(10)],
                    returning=True,
                )
                got = []
                while True:
                    got.append(cur.fetchone()[0])
                    if not cur.nextset():
                        break
                check(got, list(range(10)), "executemany RETURNING values")

    errors, secs = run_threads("c executemany", 10, worker)
    if not errors:
        want = {k: (MANY_ROWS + 10, sum(k * 1000 + j for j in range(MANY_ROWS)) + sum(range(10)))
                for k in range(10)}
        try:
            expect_table_rows(admin, T_MANY, want, "[c executemany] rows after the run")
            total = admin.execute(f"SELECT count(*) FROM {T_MANY}").fetchone()[0]
            check(total, 10 * (MANY_ROWS + 10), "[c executemany] total count")
        except Failure as e:
            errors.append(str(e))
    return errors, secs


# --- phase d: psycopg evicting prepared statements -------------------------------------

EVICT_QUERIES = [f"SELECT %s::int + {n}" for n in range(6)]


def phase_d(_admin):
    def worker(k):
        with connect(prepare_threshold=0) as conn:
            conn.prepared_max = 3
            for i in range(ITERATIONS):
                n = (k + i) % len(EVICT_QUERIES)
                got = conn.execute(EVICT_QUERIES[n], (i,)).fetchone()[0]
                check(got, i + n, f"iteration {i}: {EVICT_QUERIES[n]!r}")
    return run_threads("d prepared_max=3", CLIENTS, worker)


# --- phase e: pipeline mode -----------------------------------------------------------

def phase_e(_admin):
    def worker(k):
        with connect(prepare_threshold=0) as conn:
            for i in range(10):
                with conn.pipeline():
                    curs = [conn.execute("SELECT %s::int * 2", (i * 10 + j,)) for j in range(5)]
                    curs.append(conn.execute("SELECT %s::text || %s::text", (f"w{k}", i)))
                got = [c.fetchone()[0] for c in curs]
                check(got, [(i * 10 + j) * 2 for j in range(5)] + [f"w{k}{i}"], f"pipeline {i}")
                with conn.transaction(), conn.pipeline():
                    c1 = conn.execute("SELECT %s::int * 2", (k,))
                    c2 = conn.execute("SELECT %s::int + 1", (k,))
                check((c1.fetchone()[0], c2.fetchone()[0]), (k * 2, k + 1), f"pipeline in transaction {i}")
    return run_threads("e pipeline", CLIENTS, worker)


# --- phase h: resets inside a pipeline --------------------------------------------------

def phase_h(_admin):
    def worker(k):
        with connect(prepare_threshold=0, autocommit=False) as conn:
            for i in range(10):
                with conn.pipeline():
                    a = conn.execute("SELECT %s::int * 3", (i,))
                    conn.execute("ROLLBACK")
                with conn.pipeline():
                    # psycopg forgot its statements at the ROLLBACK: it pipelines DEALLOCATE ALL
                    # (extended protocol) ahead of preparing these again.
                    b = conn.execute("SELECT %s::int * 3", (i + 1,))
                    c = conn.execute("SELECT %s::text || 'h'", (k,))
                got = (a.fetchone()[0], b.fetchone()[0], c.fetchone()[0])
                check(got, (i * 3, (i + 1) * 3, f"{k}h"), f"pipeline after ROLLBACK {i}")
                conn.rollback()
    return run_threads("h pipeline resets", CLIENTS, worker)


# --- phase f: migration ----------------------------------------------------------------

def phase_f(admin):
    global _phase
    _phase = "f migration"
    errors = []
    t0 = time.monotonic()
    q = f"SELECT * FROM {T_MIG} ORDER BY a"
    admin.execute(f"DROP TABLE IF EXISTS {T_MIG}")
    admin.execute(f"CREATE TABLE {T_MIG} (a int)")
    admin.execute(f"INSERT INTO {T_MIG} (a) VALUES (1), (2)")

    # A: prepares and uses the statement. Several A-like connections at once, so that the
    # statement is prepared on every server of the pool before the ALTER.
    a_conns = [connect(prepare_threshold=0) for _ in range(6)]
    try:
        def use_old(k):
            for _ in range(10):
                rows = a_conns[k].execute(q).fetchall()
                check([tuple(r) for r in rows], [(1,), (2,)], "A before the ALTER")
        e1, _ = run_threads("f migration: A before", len(a_conns), use_old)
        errors += e1
        _phase = "f migration"

        # B: the migration.
        with connect(prepare_threshold=0) as b:
            b.execute("SELECT 1")  # B has prepared something too, so psycopg reacts to ALTER
            b.execute(f"ALTER TABLE {T_MIG} ADD COLUMN b int DEFAULT 7")

        # C: new connections, the same text, prepared; they must see two columns.
        def new_client(k):
            with connect(prepare_threshold=0) as c:
                for j in range(5):
                    cur = c.execute(q)
                    rows = [tuple(r) for r in cur.fetchall()]
                    cols = [d.name for d in cur.description]
                    check((cols, rows), (["a", "b"], [(1, 7), (2, 7)]), f"C execution {j} after the ALTER")
        e2, _ = run_threads("f migration: C after", 12, new_client)
        errors += e2

        # A again: its old statement fails with "cached plan must not change result type"
        # (FeatureNotSupported), as on PostgreSQL itself, and psycopg keeps using it. A
        # recovers the usual way, DEALLOCATE ALL (psycopg then forgets its statements too),
        # and the retry must work and see both columns.
        for n, a in enumerate(a_conns):
            try:
                try:
                    rows = a.execute(q).fetchall()
                except psycopg.errors.FeatureNotSupported:
                    a.execute("DEALLOCATE ALL")
                    rows = a.execute(q).fetchall()
            except psycopg.Error as e:
                errors.append(f"[f migration] A{n} after the ALTER and DEALLOCATE ALL: {describe(e)}")
                continue
            if [tuple(r) for r in rows] != [(1, 7), (2, 7)]:
                errors.append(f"[f migration] A{n} after the ALTER: got {rows!r}")
    finally:
        for a in a_conns:
            a.close()
    return errors, time.monotonic() - t0


# --- phase g: migration, C's Parse and Bind on different servers -------------------------

def phase_g(admin):
    """The deterministic form of what phase f hits by chance. libpq prepares with Parse +
    Sync and executes with Bind + Describe + Execute + Sync, so in transaction mode the two
    may run on different servers. A1 and A2 prepare SELECT * FROM t on two servers (both in
    an open transaction at once, so needs a pool of at least 2); B adds a column; C prepares
    the same text (Parse + Sync); X then takes the server C was on, so C's execution runs
    on a server whose copy of the statement is from before the ALTER. On PostgreSQL C's own
    statement, prepared after the ALTER, just works."""
    global _phase
    _phase = "g migration, Parse and Bind apart"
    t0 = time.monotonic()
    errors = []
    q = f"SELECT * FROM {T_MIG2}"
    admin.execute(f"DROP TABLE IF EXISTS {T_MIG2}")
    admin.execute(f"CREATE TABLE {T_MIG2} (a int)")
    admin.execute(f"INSERT INTO {T_MIG2} (a) VALUES (1)")
    conns = [connect(prepare_threshold=0) for _ in range(4)]
    a1, a2, c, x = conns
    try:
        with a1.transaction(), a2.transaction():
            check([tuple(r) for r in a1.execute(q).fetchall()], [(1,)], "A1 before the ALTER")
            check([tuple(r) for r in a2.execute(q).fetchall()], [(1,)], "A2 before the ALTER")
        admin.execute(f"ALTER TABLE {T_MIG2} ADD COLUMN b int DEFAULT 7")
        res = c.pgconn.prepare(b"drv_c_stmt", q.encode())  # what psycopg does: Parse + Sync
        if res.status != psycopg.pq.ExecStatus.COMMAND_OK:
            errors.append(f"[g] C's Parse: {res.error_message.decode().strip()}")
        else:
            with x.transaction():
                x.execute("SELECT 1")
                for attempt in range(2):
                    res = c.pgconn.exec_prepared(b"drv_c_stmt", [])
                    if res.status != psycopg.pq.ExecStatus.TUPLES_OK:
                        errors.append(f"[g migration, Parse and Bind apart] C's execution {attempt}, "
                                      f"prepared after the ALTER: {res.error_message.decode().strip()}")
                        continue
                    got = ([res.fname(i).decode() for i in range(res.nfields)],
                           [res.get_value(0, i).decode() for i in range(res.nfields)])
                    if got != (["a", "b"], ["1", "7"]):
                        errors.append(f"[g] C's execution {attempt}: got {got!r}")
    finally:
        for conn in conns:
            conn.close()
    return errors, time.monotonic() - t0


def main():
    if not DSN:
        log("FAIL: set PGSLUICE_DSN to a libpq URL, e.g. postgresql://user:pass@127.0.0.1:6432/db")
        return 2
    timer = threading.Timer(TIMEOUT, _watchdog)
    timer.daemon = True
    timer.start()
    t0 = time.monotonic()
    try:
        admin = connect()
    except psycopg.Error as e:
        log(f"FAIL: cannot connect: {describe(e)}")
        return 1
    failures = []
    times = []
    ran = []
    try:
        admin.execute(f"CREATE TABLE {T_MAIN} (worker int, i int, v int)")
        admin.execute(f"CREATE TABLE {T_MANY} (worker int, i int, v int)")
        phases = [
            ("a", lambda: phase_ab(admin, 0, "a prepare_threshold=0")),
            ("b", lambda: phase_ab(admin, "default", "b prepare_threshold=default")),
            ("c", lambda: phase_c(admin)),
            ("d", lambda: phase_d(admin)),
            ("e", lambda: phase_e(admin)),
            ("f", lambda: phase_f(admin)),
            ("g", lambda: phase_g(admin)),
            ("h", lambda: phase_h(admin)),
        ]
        only = os.environ.get("PGSLUICE_DRIVER_PHASES")  # e.g. "af" to run phases a and f
        for key, run in phases:
            if only and key not in only:
                continue
            try:
                errs, secs = run()
            except Exception as e:  # noqa: BLE001
                errs, secs = [f"[{key}] {describe(e)}", traceback.format_exc()], 0.0
            times.append(f"{key}={secs:.2f}s")
            ran.append(key)
            failures += errs
    finally:
        global _phase
        _phase = "cleanup"
        try:
            for t in (T_MAIN, T_MANY, T_MIG, T_MIG2):
                admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(t)))
            admin.close()
        except psycopg.Error as e:
            failures.append(f"[cleanup] {describe(e)}")
    if failures:
        log(f"FAIL: {len(failures)} error(s) after {time.monotonic() - t0:.2f}s ({' '.join(times)}); the first ones:")
        for f in failures[:15]:
            print("  " + f.rstrip().replace("\n", "\n  "), file=sys.stdout)
        return 1
    log(f"OK psycopg {psycopg.__version__} (libpq {psycopg.pq.version()}): {CLIENTS} clients x "
        f"{ITERATIONS} iterations, phases {','.join(ran)} passed in {time.monotonic() - t0:.2f}s ({' '.join(times)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
