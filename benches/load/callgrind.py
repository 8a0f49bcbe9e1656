"""S1C and S4C: instructions per transaction (S4C: per login) under callgrind, for pgsluice and PgBouncer.

Instruction counts are repeatable where CPU time on a shared 2-core machine is not. Each pooler runs
under `valgrind --tool=callgrind` on its own port, twice: once for a short pgbench run and once for a
longer one (same clients, so logins and start-up cancel out); the difference in instructions over the
difference in transactions is the cost of one transaction. Bounded by count and time.
"""
import os, re, shutil, signal, subprocess

from ports import free_port, wait_port

CLIENTS = 10
# Per scenario: title, pgbench arguments, and the short and long run's transactions per client.
SCENARIOS = {
    "S1C": (f"select-only, simple, {CLIENTS} clients", ["-S", "-M", "simple"], 50, 250),
    "S4C": (f"connection storm -C, SCRAM, {CLIENTS} clients", ["-S", "-C", "-M", "simple"], 10, 40),
}


def _config(env, name, port):
    """A copy of the pooler's ini on another port (and, for pgsluice, another metrics port)."""
    with open(f"{env.dir}/{name}.ini") as f:
        text = f.read()
    text = re.sub(r"listen_port = \d+", f"listen_port = {port}", text)
    text = re.sub(r"metrics_addr = \S+", f"metrics_addr = 127.0.0.1:{free_port()}", text)
    path = f"{env.dir}/callgrind-{name}.ini"
    with open(path, "w") as f:
        f.write(text)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    return path


def _instructions(env, name, binary, preexec, pgbench, args, per_client):
    port = free_port()
    out = f"{env.dir}/callgrind-{name}-{per_client}.out"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary, _config(env, name, port)],
                            stdout=subprocess.DEVNULL, stderr=open(f"{out}.log", "w"), preexec_fn=preexec)
    try:
        wait_port(port, 90)
        r = pgbench(env, port, args + ["-c", str(CLIENTS), "-j", "1", "-t", str(per_client)], 600)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    with open(out) as f:
        totals = re.search(r"^(?:totals|summary): (\d+)", f.read(), re.M)
    return int(totals.group(1)) if totals else None, r["xacts"]


def measure(env, pgbench, poolers, sid="S1C"):
    """One `sid` row per pooler (name, binary, preexec_fn): instructions per transaction, or the error."""
    if not shutil.which("valgrind"):
        print(f"{sid} skipped: valgrind is not installed", flush=True)
        return []
    title, args, short, long = SCENARIOS[sid]
    rows = []
    for name, binary, preexec in poolers:
        row = {"scenario": sid, "title": title, "target": name, "round": 0, "ok": True, "error": None}
        try:
            short_ir, short_x = _instructions(env, name, binary, preexec, pgbench, args, short)
            long_ir, long_x = _instructions(env, name, binary, preexec, pgbench, args, long)
            row["ir_per_xact"] = round((long_ir - short_ir) / (long_x - short_x))
        except Exception as e:  # reported, not fatal to the run
            row.update(ok=False, error=str(e)[:200])
        rows.append(row)
        print(f"{sid} {name:9} instructions per transaction: {row.get('ir_per_xact')} {row['error'] or ''}", flush=True)
    return rows
