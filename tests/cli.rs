//! The `pgsluice` binary: command line, configuration errors, signals; and pgbench through it.
#![allow(clippy::unwrap_used, clippy::zombie_processes)]

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn pgsluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgsluice"))
}

#[test]
fn version_and_help() {
    let out = pgsluice().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = pgsluice().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config"));
}

#[test]
fn malformed_value_exits_before_listening_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ini = dir.path().join("bad.ini");
    std::fs::write(
        &ini,
        format!("[pgbouncer]\nlisten_port = {port}\ndefault_pool_size = twenty\n"),
    )
    .unwrap();
    let out = pgsluice().arg(&ini).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.ini:3") && err.contains("default_pool_size"),
        "{err}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

struct Running {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_binary(mode: &str) -> Running {
    start_binary_with(&format!("pool_mode = {mode}"))
}

/// Starts the real binary with `extra` lines in its `[pgbouncer]` section.
fn start_binary_with(extra: &str) -> Running {
    let pg = Postgres::shared();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("users.txt"),
        format!("\"{SCRAM_USER}\" \"{SCRAM_PASSWORD}\"\n"),
    )
    .unwrap();
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\nappdb = host=127.0.0.1 port={}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir = {}\nauth_type = md5\nauth_file = users.txt\n{extra}\n",
            pg.port,
            dir.path().display()
        ),
    )
    .unwrap();
    let child = pgsluice()
        .arg(&ini)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Built first, so that a pooler that does not come up is killed with it.
    let r = Running { child, port, dir };
    assert!(listening(port), "pgsluice did not start listening");
    let mut r = r;
    // Something listening on the port is not proof that it is this process.
    assert!(
        r.child.try_wait().unwrap().is_none(),
        "pgsluice exited at start"
    );
    r
}

/// Whether something listens on `port` within 5 s.
fn listening(port: u16) -> bool {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

async fn client(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={port} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=appdb"
        ),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_clients_to_leave() {
    let mut r = start_binary("transaction");
    let c = client(r.port).await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
    signal(&r.child, "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No new clients, but the connected one carries on.
    assert!(client(r.port).await.is_err());
    c.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
    assert!(
        r.child.try_wait().unwrap().is_none(),
        "exited while a client was connected"
    );
    drop(c);
    assert!(
        wait_exit(&mut r.child, Duration::from_secs(5)).is_some(),
        "did not exit after the last client left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_lets_the_transaction_finish_then_exits() {
    let mut r = start_binary("transaction");
    let c = client(r.port).await.unwrap();
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    signal(&r.child, "-INT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        r.child.try_wait().unwrap().is_none(),
        "exited with a transaction open"
    );
    // The open transaction can still commit; then the client is closed and the process exits.
    c.batch_execute("COMMIT").await.unwrap();
    assert!(
        wait_exit(&mut r.child, Duration::from_secs(5)).is_some(),
        "did not exit once servers were released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_idle_clients() {
    let mut r = start_binary("transaction");
    let idle = client(r.port).await.unwrap();
    idle.batch_execute("SELECT 1").await.unwrap();
    signal(&r.child, "-INT");
    assert!(
        wait_exit(&mut r.child, Duration::from_secs(5)).is_some(),
        "an idle client kept the pooler from exiting"
    );
    assert!(idle.batch_execute("SELECT 1").await.is_err());
    assert!(idle.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_exits_at_once() {
    let mut r = start_binary("session");
    let c = client(r.port).await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
    signal(&r.child, "-TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(r.child.try_wait().unwrap().is_none());
    signal(&r.child, "-TERM");
    assert!(
        wait_exit(&mut r.child, Duration::from_secs(3)).is_some(),
        "second signal did not stop it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_pool_settings() {
    let r = start_binary("session");
    let c = client(r.port).await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
    let ini = r.dir.path().join("pgbouncer.ini");
    let text = std::fs::read_to_string(&ini)
        .unwrap()
        .replace("pool_mode = session", "pool_mode = statement");
    std::fs::write(&ini, text).unwrap();
    signal(&r.child, "-HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The connected client was not dropped by the reload.
    c.batch_execute("SELECT 1").await.unwrap();
    // A new client now gets statement mode: a transaction block is refused.
    let c2 = client(r.port).await.unwrap();
    let refused = c2.batch_execute("BEGIN; SELECT 1").await.is_err()
        || c2.batch_execute("SELECT 1").await.is_err();
    assert!(
        refused,
        "statement mode from the reloaded config was not applied"
    );
}

fn pgbench(pg: &Postgres, port: u16, args: &[&str]) -> std::process::Output {
    Command::new(pg.bindir.join("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", SCRAM_USER])
        .args(args)
        .arg("appdb")
        .env("PGPASSWORD", SCRAM_PASSWORD)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_simple_and_extended_have_no_failures() {
    let pg = Postgres::shared();
    let s = Sluice::start(
        "pool_mode = transaction\ndefault_pool_size = 5\nmax_client_conn = 200",
        "",
    )
    .await;
    let port = s.addr.port();
    let init = tokio::task::spawn_blocking(move || {
        pgbench(Postgres::shared(), port, &["-i", "-q", "-s", "1"])
    })
    .await
    .unwrap();
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    for mode in ["simple", "extended"] {
        let out = tokio::task::spawn_blocking(move || {
            pgbench(
                Postgres::shared(),
                port,
                &["-c", "20", "-j", "2", "-t", "50", "-M", mode],
            )
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pgbench -M {mode}: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("number of transactions actually processed: 1000/1000"),
            "{stdout}"
        );
        assert!(
            !stdout.contains("number of failed transactions: ")
                || stdout.contains("number of failed transactions: 0 "),
            "{stdout}"
        );
    }
    let _ = pg;
}

/// Both schedulers the binary can run on (`workers = 1`: tokio's current-thread one; more: the
/// multi-thread one) serve a pgbench load (logins, simple and extended protocol, a pool smaller than
/// the clients) and stop on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_and_two_workers_serve_pgbench_and_stop_on_sigterm() {
    for workers in [1, 2] {
        let mut r = start_binary_with(&format!(
            "pool_mode = transaction\ndefault_pool_size = 3\n[pgsluice]\nworkers = {workers}"
        ));
        let port = r.port;
        let script = r.dir.path().join("select.sql");
        std::fs::write(&script, "SELECT 1;\nBEGIN;\nSELECT 2;\nEND;\n").unwrap();
        for mode in ["simple", "extended"] {
            let script = script.clone();
            let out = tokio::task::spawn_blocking(move || {
                let f = script.to_str().unwrap();
                pgbench(
                    Postgres::shared(),
                    port,
                    &["-n", "-f", f, "-c", "10", "-j", "2", "-t", "50", "-M", mode],
                )
            })
            .await
            .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("processed: 500/500"),
                "workers = {workers}, pgbench -M {mode}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        signal(&r.child, "-TERM");
        let st = wait_exit(&mut r.child, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("workers = {workers}: still running after SIGTERM"));
        assert!(st.success(), "workers = {workers}: {st:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_listener_serves_clients() {
    let r = start_binary("transaction");
    let dir = r.dir.path().display().to_string();
    let (c, conn) = tokio_postgres::connect(
        &format!(
            "host={dir} port={} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=appdb",
            r.port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect over the unix socket");
    tokio::spawn(conn);
    let v = first_value(&c.simple_query("SELECT 40 + 2").await.unwrap());
    assert_eq!(v.as_deref(), Some("42"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_reaches_the_log() {
    let mut r = start_binary("transaction");
    client(r.port)
        .await
        .unwrap()
        .batch_execute("SELECT 1")
        .await
        .unwrap();
    let wrong = "Wrong-Horse-Battery-Staple";
    let bad = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user={SCRAM_USER} password={wrong} dbname=appdb",
            r.port
        ),
        tokio_postgres::NoTls,
    )
    .await;
    assert_eq!(
        bad.err().and_then(|e| e.code().cloned()),
        Some(tokio_postgres::error::SqlState::INVALID_PASSWORD)
    );
    signal(&r.child, "-QUIT");
    wait_exit(&mut r.child, Duration::from_secs(5)).expect("exits on SIGQUIT");
    let mut log = String::new();
    std::io::Read::read_to_string(r.child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(
        log.contains("login attempt"),
        "log_connections line missing: {log}"
    );
    // Every line about a client names it (its span): peer, database and user.
    let who = format!("db=appdb user={SCRAM_USER}: ");
    for event in ["login attempt", "closing because", "login rejected"] {
        assert!(
            log.lines()
                .any(|l| l.contains("peer=127.0.0.1:") && l.contains(&who) && l.contains(event)),
            "no {event:?} line names the client: {log}"
        );
    }
    assert!(
        log.contains("password authentication failed") || log.contains("login rejected"),
        "{log}"
    );
    for secret in [SCRAM_PASSWORD, wrong] {
        assert!(!log.contains(secret), "a password reached the log: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listens_on_ipv4_and_ipv6_loopback() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine; skipping");
        return;
    }
    let pg = Postgres::shared();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("u.txt"),
        format!("\"{SCRAM_USER}\" \"{SCRAM_PASSWORD}\"\n"),
    )
    .unwrap();
    let ini = dir.path().join("p.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\nappdb = host=127.0.0.1 port={}\n[pgbouncer]\nlisten_addr = 127.0.0.1, ::1\nlisten_port = {port}\n\
             unix_socket_dir =\nauth_file = u.txt\n",
            pg.port
        ),
    )
    .unwrap();
    let mut child = pgsluice().arg(&ini).stderr(Stdio::null()).spawn().unwrap();
    let mut ok = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("::1", port)).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = async {
        for host in ["127.0.0.1", "::1"] {
            let (c, conn) = tokio_postgres::connect(
                &format!("host={host} port={port} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=appdb"),
                tokio_postgres::NoTls,
            )
            .await?;
            tokio::spawn(conn);
            c.simple_query("SELECT 1").await?;
        }
        Ok::<_, tokio_postgres::Error>(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "pgsluice did not listen on both addresses");
    result.unwrap();
}

/// Reads the child's stderr until it exits (after SIGQUIT).
fn stop_and_read_log(r: &mut Running) -> String {
    signal(&r.child, "-QUIT");
    wait_exit(&mut r.child, Duration::from_secs(5)).expect("exits on SIGQUIT");
    let mut log = String::new();
    std::io::Read::read_to_string(r.child.stderr.as_mut().unwrap(), &mut log).unwrap();
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_has_pgbouncer_shape_and_stats_lines() {
    let mut r = start_binary_with("pool_mode = transaction\nstats_period = 1");
    let c = client(r.port).await.unwrap();
    for _ in 0..20 {
        c.batch_execute("SELECT 1").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2200)).await;
    drop(c);
    let log = stop_and_read_log(&mut r);
    assert!(log.lines().count() >= 3, "too few log lines: {log}");
    let pid = format!("[{}]", r.child.id());
    for line in log.lines() {
        // 2026-01-01 10:00:00.000 UTC [pid] LOG message
        let parts: Vec<&str> = line.splitn(5, ' ').collect();
        assert_eq!(parts.len(), 5, "short line: {line}");
        assert_eq!(parts[0].len(), 10, "date: {line}");
        assert_eq!(parts[1].len(), 12, "time with milliseconds: {line}");
        assert_eq!(parts[2], "UTC", "{line}");
        assert_eq!(parts[3], pid, "{line}");
        assert!(
            !line.contains('\u{1b}'),
            "colour codes in a log that is not a terminal: {line:?}"
        );
        assert!(
            parts[4].starts_with("LOG ")
                || parts[4].starts_with("WARNING ")
                || parts[4].starts_with("ERROR "),
            "{line}"
        );
    }
    assert!(
        log.contains("stats: "),
        "no stats line with stats_period = 1: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_is_one_object_per_line() {
    let mut r = start_binary_with("pool_mode = transaction\nlog_format = json");
    let c = client(r.port).await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = stop_and_read_log(&mut r);
    assert!(log.lines().count() >= 2, "{log}");
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("timestamp").is_some() && v.get("level").is_some(),
            "{line}"
        );
    }
    assert!(log.contains("login attempt"), "{log}");
    assert!(!log.contains(SCRAM_PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toml_config_with_environment_overrides_ignores_unrelated_pgsluice_variables() {
    let pg = Postgres::shared();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("users.txt"),
        format!("\"{SCRAM_USER}\" \"{SCRAM_PASSWORD}\"\n"),
    )
    .unwrap();
    let toml = dir.path().join("pgsluice.toml");
    // The file says port 1 and no such database host; the environment corrects both.
    std::fs::write(
        &toml,
        format!(
            "[general]\nlisten_addr = [\"127.0.0.1\"]\nlisten_port = 1\nunix_socket_dir = \"\"\n\
             auth_type = \"md5\"\nauth_file = \"users.txt\"\npool_mode = \"transaction\"\n\n\
             [databases.appdb]\nhost = \"192.0.2.1\"\nport = {}\n",
            pg.port
        ),
    )
    .unwrap();
    let child = pgsluice()
        .args(["--config".as_ref(), toml.as_os_str()])
        .env("PGSLUICE_LISTEN_PORT", port.to_string())
        .env("PGSLUICE_DATABASES__APPDB__HOST", "127.0.0.1")
        // Another tool's variable with the same prefix must not stop pgsluice.
        .env("PGSLUICE_DSN", "postgresql://somewhere/else")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut r = Running { child, port, dir };
    let up = listening(port);
    if !up {
        let log = stop_and_read_log(&mut r);
        panic!("pgsluice --config pgsluice.toml did not listen on the overridden port: {log}");
    }
    let c = client(port).await.unwrap();
    let v: i32 = c.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
}

/// The console as CloudNativePG's manager reaches it: user `pgbouncer` over the unix socket, from
/// the pooler's own uid, no password.
async fn console_over_unix(r: &Running) -> tokio_postgres::Client {
    let dsn = format!(
        "host={} port={} user=pgbouncer dbname=pgbouncer",
        r.dir.path().display(),
        r.port
    );
    // The TCP listener is what start_binary waits for; on a loaded machine the unix socket may
    // take a moment longer to accept.
    let mut tries = 0;
    let (c, conn) = loop {
        match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
            Ok(pair) => break pair,
            Err(_) if tries < 40 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("console over the unix socket: {e:?}"),
        }
    };
    tokio::spawn(conn);
    c
}

async fn console_value(c: &tokio_postgres::Client, sql: &str, key: &str) -> String {
    c.simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some(key) => {
                r.get(1).map(str::to_owned)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql} has no row {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_pauses_sigusr2_resumes_and_console_reload_applies_the_file() {
    let r = start_binary("transaction");
    let c = client(r.port).await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
    let console = console_over_unix(&r).await;

    signal(&r.child, "-USR1");
    let mut paused = String::new();
    for _ in 0..50 {
        paused = console_value(&console, "SHOW STATE", "paused").await;
        if paused == "yes" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(paused, "yes", "SIGUSR1 pauses");
    let held = tokio::spawn(async move { c.simple_query("SELECT 7").await.map(|_| c) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a query ran while paused");
    signal(&r.child, "-USR2");
    let c = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("SIGUSR2 resumes the held query")
        .unwrap()
        .unwrap();
    assert_eq!(console_value(&console, "SHOW STATE", "paused").await, "no");

    // RELOAD re-reads the file: the new pool mode shows in SHOW CONFIG, the client stays.
    let ini = r.dir.path().join("pgbouncer.ini");
    let text = std::fs::read_to_string(&ini)
        .unwrap()
        .replace("pool_mode = transaction", "pool_mode = statement");
    std::fs::write(&ini, text).unwrap();
    console.simple_query("RELOAD").await.unwrap();
    assert_eq!(
        console_value(&console, "SHOW CONFIG", "pool_mode").await,
        "statement"
    );
    c.batch_execute("SELECT 1").await.unwrap();
    // A file that no longer loads: RELOAD fails with F0000 and the old configuration stays.
    std::fs::write(&ini, "[pgbouncer]\nlisten_port = not-a-number\n").unwrap();
    let e = console.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("F0000"), "{e}");
    assert_eq!(
        console_value(&console, "SHOW CONFIG", "pool_mode").await,
        "statement"
    );
}

/// A config for the command-line tests below: `extra` lines in `[pgbouncer]`, no unix socket.
fn ini_in(dir: &std::path::Path, port: u16, extra: &str) -> std::path::PathBuf {
    let pg = Postgres::shared();
    std::fs::write(
        dir.join("users.txt"),
        format!("\"{SCRAM_USER}\" \"{SCRAM_PASSWORD}\"\n"),
    )
    .unwrap();
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\nappdb = host=127.0.0.1 port={}\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = md5\nauth_file = users.txt\n{extra}\n",
            pg.port
        ),
    )
    .unwrap();
    ini
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_flag_is_show_version_and_check_tells_good_from_broken() {
    let out = pgsluice().arg("-V").output().unwrap();
    assert!(out.status.success());
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let r = start_binary("transaction");
    let console = console_over_unix(&r).await;
    let shown = console.simple_query("SHOW VERSION").await.unwrap();
    assert_eq!(
        first_value(&shown).unwrap(),
        first,
        "-V and SHOW VERSION agree"
    );

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let good = ini_in(dir.path(), port, "");
    let out = pgsluice().arg("--check").arg(&good).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(&format!("127.0.0.1:{port}")), "{stdout}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "--check does not listen"
    );
    // An hba file that is not there, and a TLS key that does not parse.
    for broken in [
        "auth_type = hba\nauth_hba_file = missing.conf",
        "client_tls_sslmode = require\nclient_tls_key_file = users.txt\nclient_tls_cert_file = users.txt",
    ] {
        let bad = ini_in(dir.path(), port, broken);
        let out = pgsluice().arg("--check").arg(&bad).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{broken}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_keeps_stderr_empty_and_the_logfile_gets_the_lines() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ini = ini_in(dir.path(), port, "logfile = pgsluice.log");
    let mut child = pgsluice()
        .args(["-q", "-R"])
        .arg(&ini)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let up = listening(port);
    assert!(up, "pgsluice -q did not start");
    let c = client(port).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    signal(&child, "-QUIT");
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits on SIGQUIT");
    assert!(status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(stderr, "", "-q writes nothing to stderr");
    let log = std::fs::read_to_string(dir.path().join("pgsluice.log")).unwrap();
    assert!(log.contains("login attempt"), "{log}");
    assert!(
        log.contains("online restart"),
        "-R is accepted and said so: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_detaches_writes_its_pidfile_and_removes_it_on_exit() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // As PgBouncer: no daemon without a pidfile.
    let bare = ini_in(dir.path(), port, "");
    let out = pgsluice().arg("-d").arg(&bare).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pidfile"));
    let ini = ini_in(
        dir.path(),
        port,
        "pidfile = pgsluice.pid\nlogfile = pgsluice.log",
    );
    let out = pgsluice().arg("-d").arg(&ini).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pidfile = dir.path().join("pgsluice.pid");
    let mut pid = None;
    for _ in 0..100 {
        pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        if pid.is_some() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = pid.expect("the pidfile names the daemon");
    let c = client(port).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    // A second start with the same pidfile is refused while the first runs.
    let again = pgsluice().arg(&ini).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("pidfile"));
    assert!(Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let mut gone = false;
    for _ in 0..100 {
        if !pidfile.exists() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone, "the daemon exits on SIGINT and removes its pidfile");
}

/// `-u`: started as root, the pooler runs as the named user (skipped when the tests do not run as
/// root, which `-u` needs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_flag_switches_to_that_user_when_root() {
    if rustix::process::geteuid().as_raw() != 0 {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ini = ini_in(dir.path(), port, "");
    let mut child = pgsluice()
        .args(["-u", "nobody"])
        .arg(&ini)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let up = listening(port);
    assert!(up, "pgsluice -u nobody did not start");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let nobody = Command::new("id").args(["-u", "nobody"]).output().unwrap();
    let nobody = String::from_utf8_lossy(&nobody.stdout).trim().to_owned();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == nobody),
        "{uid} (nobody is {nobody})"
    );
    let c = client(port).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_missing_auth_file_is_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ini = ini_in(dir.path(), port, "auth_file = nowhere.txt");
    let out = pgsluice().arg(&ini).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nowhere.txt"), "{err}");
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "the OS error once: {err}"
    );
}

/// A shutdown is not held up by clients queued at a paused pool, nor by a console client waiting
/// for its PAUSE: SIGINT closes the first (they hold no server) and SIGQUIT everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_held_by_a_paused_pool_or_a_waiting_console() {
    for (sig, name) in [("-INT", "SIGINT"), ("-QUIT", "SIGQUIT")] {
        let mut r = start_binary("transaction");
        let holder = client(r.port).await.unwrap();
        holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
        let console = console_over_unix(&r).await;
        // PAUSE waits for the server of the holder's open transaction.
        let pause = tokio::spawn(async move { console.simple_query("PAUSE").await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !pause.is_finished(),
            "PAUSE returned while a server was held"
        );
        // A second client queues at the paused pool.
        let queued = tokio::spawn(async move {
            let c = client(r.port).await?;
            c.simple_query("SELECT 1").await.map(|_| ())
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        signal(&r.child, sig);
        // The queued client and the console hold no server: both are told at once.
        let queued = tokio::time::timeout(Duration::from_secs(5), queued).await;
        let e = queued
            .expect("the queued client was left waiting")
            .unwrap()
            .unwrap_err();
        assert_eq!(sqlstate(&e), Some("57P01"), "{name}: {e}");
        let pause = tokio::time::timeout(Duration::from_secs(5), pause).await;
        let pause = pause.expect("the console was left waiting").unwrap();
        match (sig, pause) {
            (_, Err(e)) => assert_eq!(sqlstate(&e), Some("57P01"), "{name}: {e}"),
            // SIGQUIT closes the held server too: the PAUSE may complete just before the console
            // hears of the shutdown. Under SIGINT the server stays held, so it cannot.
            ("-QUIT", Ok(())) => {}
            (_, Ok(())) => panic!("{name}: PAUSE completed while a server was held"),
        }
        if sig == "-INT" {
            // SIGINT lets the open transaction finish; its end lets the pooler go.
            holder.batch_execute("COMMIT").await.unwrap();
        }
        let exited =
            tokio::task::block_in_place(|| wait_exit(&mut r.child, Duration::from_secs(5)));
        assert!(
            exited.is_some(),
            "{name}: still running once every client was closed"
        );
    }
}
