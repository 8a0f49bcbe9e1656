#!/usr/bin/env python3
"""pgbench through pgsluice, PgBouncer and directly, alternating targets, in one run.

Starts a throwaway PostgreSQL, PgBouncer (Debian's package) and pgsluice with the same settings
(transaction mode, pool 20, SCRAM client auth from the same userlist), then for each scenario and
target measures TPS, average latency, pooler CPU time per transaction (utime+stime from /proc) and
pooler RSS, and prints the ratios pgsluice/PgBouncer and pgsluice/direct. Every loop is bounded.
"""
import argparse, asyncio, concurrent.futures, json, os, re, resource, shutil, signal, socket, subprocess, sys, tempfile, threading, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import callgrind, idle, large, report  # noqa: E402
from ports import free_port, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def pg_bindir():
    dirs = sorted(d for d in os.listdir("/usr/lib/postgresql") if os.path.exists(f"/usr/lib/postgresql/{d}/bin/initdb"))
    return f"/usr/lib/postgresql/{dirs[-1]}/bin"


def as_pg(cmd):
    return (["runuser", "-u", "postgres", "--"] + cmd) if os.geteuid() == 0 else cmd


def drop_to_postgres():
    if os.geteuid() == 0:
        import pwd
        pw = pwd.getpwnam("postgres")
        os.setgroups([]); os.setgid(pw.pw_gid); os.setuid(pw.pw_uid)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def rss_kib(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE // 1024


def machine_busy():
    """CPU time (s) spent by all processes over the machine, for the noise line."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:8]]
    return sum(parts) / CLK, parts[3] / CLK


class Env:
    def __init__(self, pool_size, workers):
        self.bindir = pg_bindir()
        self.dir = tempfile.mkdtemp(prefix="pgsluice-load-")
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.pg_port, self.bouncer_port, self.sluice_port = free_port(), free_port(), free_port()
        self.metrics_port = free_port()
        self.procs = []
        data = f"{self.dir}/data"
        subprocess.run(as_pg([f"{self.bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"]), check=True, stdout=subprocess.DEVNULL)
        with open(f"{data}/pg_hba.conf", "w") as f:
            f.write("local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        self.pg = subprocess.Popen(as_pg([f"{self.bindir}/postgres", "-D", data, "-p", str(self.pg_port), "-c", "listen_addresses=127.0.0.1",
                                          "-c", f"unix_socket_directories={self.dir}", "-c", "max_connections=400", "-c", "fsync=off",
                                          "-c", "synchronous_commit=off", "-c", "shared_buffers=256MB"]),
                                   stdout=subprocess.DEVNULL, stderr=open(f"{self.dir}/postgres.log", "w"))
        self.procs.append(self.pg)
        wait_port(self.pg_port); time.sleep(0.5)
        self.psql("CREATE ROLE bench LOGIN PASSWORD 'bench'")
        self.psql("CREATE DATABASE bench OWNER bench")
        # The auth file holds the server's SCRAM verifier, not the password: both poolers then log in
        # to PostgreSQL with the ClientKey from the client's proof, and neither derives keys per login.
        verifier = subprocess.run([f"{self.bindir}/psql", "-X", "-qAt", "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "postgres",
                                   "-c", "SELECT rolpassword FROM pg_authid WHERE rolname = 'bench'"],
                                  check=True, capture_output=True, text=True).stdout.strip()
        with open(f"{self.dir}/userlist.txt", "w") as f:
            f.write(f'"bench" "{verifier}"\n')
        # One self-signed certificate for both poolers' TLS towards clients (the S4T storm).
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                        "-keyout", f"{self.dir}/server.key", "-out", f"{self.dir}/server.crt"], check=True, capture_output=True)
        common = (f"auth_type = scram-sha-256\nauth_file = {self.dir}/userlist.txt\npool_mode = transaction\n"
                  f"default_pool_size = {pool_size}\nmax_client_conn = 20000\nlisten_addr = 127.0.0.1\n"
                  f"unix_socket_dir =\nlog_connections = 0\nlog_disconnections = 0\n"
                  f"client_tls_sslmode = allow\nclient_tls_cert_file = {self.dir}/server.crt\nclient_tls_key_file = {self.dir}/server.key\n"
                  f"server_tls_sslmode = disable\n")
        with open(f"{self.dir}/pgbouncer.ini", "w") as f:
            f.write(f"[databases]\nbench = host=127.0.0.1 port={self.pg_port}\n[pgbouncer]\nlisten_port = {self.bouncer_port}\n{common}")
        with open(f"{self.dir}/pgsluice.ini", "w") as f:
            f.write(f"[databases]\nbench = host=127.0.0.1 port={self.pg_port}\n[pgbouncer]\nlisten_port = {self.sluice_port}\n{common}"
                    + f"[pgsluice]\nmetrics_addr = 127.0.0.1:{self.metrics_port}\n"
                    + (f"workers = {workers}\n" if workers else ""))
        if os.geteuid() == 0:
            for name in ("pgbouncer.ini", "userlist.txt", "server.crt", "server.key"):
                shutil.chown(f"{self.dir}/{name}", "postgres", "postgres")
        self.start_poolers()

    def start_poolers(self):
        bouncer = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        # PgBouncer will not run as root. It drops to postgres in the child rather than through
        # runuser, whose PAM session would cut the descriptor limit S5 needs back to 1024.
        self.bouncer = subprocess.Popen([bouncer, f"{self.dir}/pgbouncer.ini"], stdout=subprocess.DEVNULL,
                                        stderr=open(f"{self.dir}/pgbouncer.log", "a"), preexec_fn=drop_to_postgres)
        self.procs.append(self.bouncer)
        self.sluice = subprocess.Popen([os.environ.get("PGSLUICE_BIN", f"{ROOT}/target/release/pgsluice"), f"{self.dir}/pgsluice.ini"], stdout=subprocess.DEVNULL,
                                       stderr=open(f"{self.dir}/pgsluice.log", "a"))
        self.procs.append(self.sluice)
        wait_port(self.bouncer_port); wait_port(self.sluice_port)
        self.bouncer_pid = self.bouncer.pid

    def restart_poolers(self):
        """Fresh pooler processes: RSS growth (S5, S7) shows only on a pooler that has not yet held
        more memory, since the allocator keeps what earlier scenarios took."""
        for p in (self.sluice, self.bouncer):
            self.procs.remove(p)
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill(); p.wait()
        for port in (self.sluice_port, self.bouncer_port):
            end = time.time() + 10
            while time.time() < end:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close(); time.sleep(0.1)
                except OSError:
                    break
        self.start_poolers()

    def psql(self, sql):
        subprocess.run([f"{self.bindir}/psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "postgres", "-c", sql], check=True)

    def close(self):
        try:
            os.kill(self.bouncer_pid, signal.SIGINT)
        except OSError:
            pass
        for p in reversed(self.procs):
            try:
                p.send_signal(signal.SIGINT)
                p.wait(timeout=10)
            except Exception:
                p.kill()
        subprocess.run(["rm", "-rf", self.dir])


def pgbench(env, port, args, timeout, sslmode="disable"):
    cmd = [f"{env.bindir}/pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "bench", "-n"] + args + ["bench"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PGPASSWORD="bench", PGSSLMODE=sslmode), timeout=timeout)
    out = r.stdout + r.stderr
    tps = re.search(r"tps = ([\d.]+) \((?:without|excluding|including)", out)
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    done = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    return {
        "ok": r.returncode == 0 and tps is not None,
        "tps": float(tps.group(1)) if tps else 0.0,
        "latency_ms": float(lat.group(1)) if lat else None,
        "xacts": int(done.group(1)) if done else 0,
        "failed": int(failed.group(1)) if failed else (0 if r.returncode == 0 else None),
        "error": None if r.returncode == 0 else out.strip().splitlines()[-1][:200],
    }


SCENARIOS = {
    "S1": ("select-only, simple, 50 clients", ["-S", "-M", "simple", "-c", "50", "-j", "1"]),
    "S2": ("TPC-B-like, 50 clients", ["-M", "simple", "-c", "50", "-j", "1"]),
    "S3": ("select-only, prepared, 50 clients", ["-S", "-M", "prepared", "-c", "50", "-j", "1"]),
    "S4": ("connection storm -C, SCRAM, 10 clients", ["-S", "-C", "-M", "simple", "-c", "10", "-j", "1"]),
    "S4T": ("connection storm -C, SCRAM over TLS, 10 clients", ["-S", "-C", "-M", "simple", "-c", "10", "-j", "1"]),
    # S1 again while /metrics is scraped every second: what scraping costs the data path.
    "S1M": ("select-only, simple, 50 clients, /metrics scraped 1/s", ["-S", "-M", "simple", "-c", "50", "-j", "1"]),
    "S6": ("select-only, 1 client (latency)", ["-S", "-M", "simple", "-c", "1", "-j", "1"]),
    # 2 000 clients at once over 20 servers: where an event loop per client costs.
    "S8": ("select-only, simple, 2000 clients", ["-S", "-M", "simple", "-c", "2000", "-j", "2"]),
}


def scrape_every_second(port, stop):
    """S1M's scraper: GET /metrics once a second until `stop` is set; the number of scrapes."""
    n = 0
    while not stop.wait(1.0):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                r.read()
            n += 1
        except OSError:
            pass
    return n


def pgbouncer_has_prepared_statements():
    """PgBouncer tracks prepared statements in transaction mode from 1.21 on."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+)\.(\d+)", out)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (1, 21)


def raise_fd_limit(want=65536):
    """S5 holds 10 000 clients: this process and the poolers it starts need the descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def idle_clients(env, port, pid, n):
    """S5: n idle SCRAM-authenticated clients; the pooler's RSS growth per client."""
    time.sleep(1)
    rss0 = rss_kib(pid)
    loop = asyncio.new_event_loop()
    r = {"ok": True, "tps": 0.0, "latency_ms": None, "xacts": 0, "failed": 0, "error": None}
    try:
        conns = loop.run_until_complete(idle.hold(port, "bench", "bench", "bench", n, 300))
        time.sleep(2)
        rss1 = rss_kib(pid)
        r["pooler_rss_kib"] = rss1
        r["rss_per_client_kib"] = round((rss1 - rss0) / n, 2)
        idle.release(conns)
        loop.run_until_complete(asyncio.sleep(1))
    except Exception as e:  # a refused or timed-out login: reported, not fatal to the run
        r.update(ok=False, error=str(e)[:200])
    finally:
        loop.close()
    time.sleep(2)
    return r


def run_pgbench_scenario(env, a, sid, targets, results, rnd, bouncer_prepared):
    title, scenario_args = SCENARIOS[sid]
    tls = sid.endswith("T")
    scraped = sid == "S1M"
    for name, port, pid in (targets[:1] if scraped else targets):
        args = scenario_args
        if name == "direct" and (tls or sid == "S8"):
            continue  # no TLS on the throwaway PostgreSQL, nor 2 000 connection slots
        sslmode = "require" if tls else "disable"
        # An older PgBouncer fails -M prepared in transaction mode: its row in S3 is then the
        # same load with the simple protocol, the best it can do, as the reference.
        if name == "pgbouncer" and "prepared" in args and not bouncer_prepared:
            args = [("simple" if x == "prepared" else x) for x in args]
            name = "pgbouncer -M simple"
        # Warm the pool, then measure.
        pgbench(env, port, ["-S", "-c", "4", "-T", "1"], 60)
        cpu0 = cpu_seconds(pid) if pid else None
        busy0, idle0 = machine_busy()
        if scraped:
            stop = threading.Event()
            scraper = concurrent.futures.ThreadPoolExecutor(1).submit(scrape_every_second, env.metrics_port, stop)
        r = pgbench(env, port, args + ["-T", str(a.duration)], a.duration + 120, sslmode)
        if scraped:
            stop.set()
            r["scrapes"] = scraper.result()
        busy1, idle1 = machine_busy()
        if pid:
            cpu = cpu_seconds(pid) - cpu0
            r["pooler_cpu_us_per_xact"] = round(cpu * 1e6 / r["xacts"], 2) if r["xacts"] else None
            r["pooler_rss_kib"] = rss_kib(pid)
        r["machine_cpu_busy_pct"] = round(100 * (1 - (idle1 - idle0) / max(busy1 - busy0, 1e-9)), 1)
        r.update(scenario=sid, title=title, target=name, round=rnd)
        results.append(r)
        print(f"[{rnd}] {sid} {name:9} tps={r['tps']:9.1f} lat={r['latency_ms']} cpu/xact={r.get('pooler_cpu_us_per_xact')} "
              f"failed={r['failed']} {r['error'] or ''}", flush=True)


def run_idle(env, a, targets, results, rnd, fds):
    for n in (int(x) for x in a.idle.split(",")):
        if n + 100 > fds:
            print(f"S5 {n} clients skipped: the descriptor limit is {fds}", flush=True)
            continue
        for name, port, pid in targets:
            if pid is None:
                continue
            r = idle_clients(env, port, pid, n)
            r.update(scenario="S5", title=f"{n} idle SCRAM clients", target=name, round=rnd)
            results.append(r)
            print(f"[{rnd}] S5 {n} {name:9} rss={r.get('pooler_rss_kib')} KiB per client={r.get('rss_per_client_kib')} KiB "
                  f"{r['error'] or ''}", flush=True)


def run_large(targets, results, rnd):
    for name, port, pid in targets:
        try:
            rows = large.measure(port, pid, rss_kib)
        except Exception as e:  # reported, not fatal to the run
            print(f"[{rnd}] S7 {name:9} ERROR {str(e)[:200]}", flush=True)
            continue
        for row in rows:
            r = {"scenario": "S7", "title": f"{row['mib']} MiB parameter", "target": name, "round": rnd, "ok": True,
                 "seconds": row["seconds"], "rss_growth_kib": row["rss_growth_kib"], "error": None}
            results.append(r)
            print(f"[{rnd}] S7 {row['mib']:3} MiB {name:9} {row['seconds']:.4f} s rss growth={row['rss_growth_kib']} KiB", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=15)
    # S7 and S5 read RSS growth, which only a pooler that has not yet held more memory shows: every
    # round starts with fresh poolers, and the two come before S8's 2 000 clients.
    ap.add_argument("--scenarios", default="S1,S2,S3,S4,S4T,S6,S7,S5,S8,S1C,S4C")
    ap.add_argument("--rounds", type=int, default=3, help="runs of every scenario, the targets' order alternating")
    ap.add_argument("--idle", default="2000,10000", help="S5 client counts")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--out", default=f"{ROOT}/target/load")
    ap.add_argument("--workers", type=int, default=0, help="pgsluice runtime threads (0: its default, one per core but one on 2 cores or fewer)")
    a = ap.parse_args()
    fds = raise_fd_limit()
    env = Env(pool_size=20, workers=a.workers)
    results = []
    try:
        subprocess.run([f"{env.bindir}/pgbench", "-i", "-q", "-s", str(a.scale), "-h", "127.0.0.1", "-p", str(env.pg_port), "-U", "bench", "bench"],
                       check=True, env=dict(os.environ, PGPASSWORD="bench"), capture_output=True)
        targets = [("pgsluice", env.sluice_port, env.sluice.pid), ("pgbouncer", env.bouncer_port, env.bouncer_pid), ("direct", env.pg_port, None)]
        bouncer_prepared = pgbouncer_has_prepared_statements()
        for rnd in range(a.rounds):
            if rnd > 0:
                env.restart_poolers()
                targets = [("pgsluice", env.sluice_port, env.sluice.pid), ("pgbouncer", env.bouncer_port, env.bouncer_pid), targets[2]]
            # Alternate which pooler goes first, so that drift in the machine favours neither.
            order = targets if rnd % 2 == 0 else [targets[1], targets[0], targets[2]]
            for sid in a.scenarios.split(","):
                if sid == "S5":
                    run_idle(env, a, order, results, rnd, fds)
                elif sid == "S7":
                    run_large(order, results, rnd)
                elif sid in callgrind.SCENARIOS:
                    if rnd == 0:
                        sluice_bin = os.environ.get("PGSLUICE_BIN", f"{ROOT}/target/release/pgsluice")
                        bouncer_bin = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
                        results.extend(callgrind.measure(env, pgbench, [("pgsluice", sluice_bin, None),
                                                                        ("pgbouncer", bouncer_bin, drop_to_postgres)], sid))
                else:
                    run_pgbench_scenario(env, a, sid, order, results, rnd, bouncer_prepared)
    finally:
        env.close()
    os.makedirs(a.out, exist_ok=True)
    table = report.render(results, SCENARIOS)
    print("\n" + table)
    with open(f"{a.out}/results.md", "w") as f:
        f.write(table + "\n")
    with open(f"{a.out}/results.json", "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwritten: {a.out}/results.md, {a.out}/results.json")


if __name__ == "__main__":
    main()
