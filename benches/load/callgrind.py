"""S1C: instructions per transaction under callgrind, for pgsluice and PgBouncer.

Instruction counts are repeatable where CPU time on a shared 2-core machine is not. Each pooler runs
under `valgrind --tool=callgrind` on its own port, twice: once for a short pgbench run and once for a
longer one (same clients, so logins and start-up cancel out); the difference in instructions over the
difference in transactions is the cost of one transaction. Bounded by count and time.
"""
import os, re, shutil, signal, subprocess, time

CLIENTS = 10
SHORT, LONG = 50, 250  # transactions per client


def _free_port():
    import socket
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def _wait_port(port, timeout=90):
    import socket
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port} under valgrind")


def _config(env, name, port):
    """A copy of the pooler's ini on another port (and, for pgsluice, another metrics port)."""
    with open(f"{env.dir}/{name}.ini") as f:
        text = f.read()
    text = re.sub(r"listen_port = \d+", f"listen_port = {port}", text)
    text = re.sub(r"metrics_addr = \S+", f"metrics_addr = 127.0.0.1:{_free_port()}", text)
    path = f"{env.dir}/callgrind-{name}.ini"
    with open(path, "w") as f:
        f.write(text)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    return path


def _instructions(env, name, binary, preexec, pgbench, per_client):
    port = _free_port()
    out = f"{env.dir}/callgrind-{name}-{per_client}.out"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary, _config(env, name, port)],
                            stdout=subprocess.DEVNULL, stderr=open(f"{out}.log", "w"), preexec_fn=preexec)
    try:
        _wait_port(port)
        r = pgbench(env, port, ["-S", "-M", "simple", "-c", str(CLIENTS), "-j", "1", "-t", str(per_client)], 600)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    with open(out) as f:
        totals = re.search(r"^(?:totals|summary): (\d+)", f.read(), re.M)
    return int(totals.group(1)) if totals else None, r["xacts"]


def measure(env, pgbench, poolers):
    """One S1C row per pooler (name, binary, preexec_fn): instructions per transaction, or the error."""
    if not shutil.which("valgrind"):
        print("S1C skipped: valgrind is not installed", flush=True)
        return []
    rows = []
    for name, binary, preexec in poolers:
        row = {"scenario": "S1C", "title": f"select-only, simple, {CLIENTS} clients", "target": name, "round": 0,
               "ok": True, "error": None}
        try:
            short_ir, short_x = _instructions(env, name, binary, preexec, pgbench, SHORT)
            long_ir, long_x = _instructions(env, name, binary, preexec, pgbench, LONG)
            row["ir_per_xact"] = round((long_ir - short_ir) / (long_x - short_x))
        except Exception as e:  # reported, not fatal to the run
            row.update(ok=False, error=str(e)[:200])
        rows.append(row)
        print(f"S1C {name:9} instructions per transaction: {row.get('ir_per_xact')} {row['error'] or ''}", flush=True)
    return rows
