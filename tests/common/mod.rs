//! Test harness: a throwaway PostgreSQL (initdb on a free loopback port, its own pg_hba with SCRAM
//! and md5 users), started once per test binary, and pgsluice instances started in-process per test.
//! The server speaks TLS (`ssl=on`, certificates from [`certs::TestCerts`]) and carries the users the
//! authentication tests need: the CloudNativePG auth user with its `user_search` function, a user
//! refused without TLS, and a user known only through auth_query.
#![allow(dead_code, clippy::unwrap_used, clippy::zombie_processes)]

pub mod auth;
pub mod certs;
pub mod cluster;
pub mod kube_api;
pub mod tls;
pub mod wire;

use certs::TestCerts;

use pgsluice::app::App;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const SCRAM_USER: &str = "app";
pub const SCRAM_PASSWORD: &str = "app-secret";
pub const MD5_USER: &str = "legacy";
pub const MD5_PASSWORD: &str = "legacy-secret";
/// CloudNativePG's auth user: logs in with a client certificate (`hostssl ... cert`) and may only
/// call `public.user_search`.
pub const AUTH_USER: &str = "cnpg_pooler_pgbouncer";
/// A SCRAM user pg_hba rejects over plain TCP (`hostnossl ... reject`).
pub const TLS_ONLY_USER: &str = "tlsonly";
pub const TLS_ONLY_PASSWORD: &str = "tlsonly-secret";
/// A SCRAM user missing from the tests' userlist.txt, found through auth_query only.
pub const QUERY_USER: &str = "fromquery";
pub const QUERY_PASSWORD: &str = "fromquery-secret";

pub struct Postgres {
    pub port: u16,
    pub dir: PathBuf,
    pub bindir: PathBuf,
    pub certs: TestCerts,
}

/// PostgreSQL's psql, from the same installation as the test server.
pub fn psql_bin() -> PathBuf {
    bindir().join("psql")
}

/// PostgreSQL's programs (initdb, pg_ctl, psql, pgbench, ...).
pub fn bindir() -> PathBuf {
    if let Ok(d) = std::env::var("PG_BINDIR") {
        return d.into();
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if d.join("initdb").exists() {
            return d;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (apt-get install postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL server binaries under /usr/lib/postgresql")
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Runs a PostgreSQL program as the `postgres` user when we are root (PostgreSQL refuses root).
fn pg_command(bindir: &Path, program: &str) -> Command {
    let path = bindir.join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// A port nothing listens on now, and never handed out before in this test binary: the kernel may
/// give a just-released port again, and two tests starting poolers on one port make one of them
/// talk to the other's process.
pub fn free_port() -> u16 {
    static GIVEN: parking_lot::Mutex<Vec<u16>> = parking_lot::const_mutex(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl Postgres {
    /// The shared server of this test binary.
    pub fn shared() -> &'static Postgres {
        static PG: OnceLock<Postgres> = OnceLock::new();
        PG.get_or_init(Postgres::start)
    }

    fn start() -> Postgres {
        let bindir = bindir();
        let dir = tempfile::Builder::new()
            .prefix("pgsluice-pg-")
            .tempdir()
            .unwrap()
            .keep();
        // Made before the chown below, which hands the keys to `postgres` too: PostgreSQL wants its
        // key file owned by the user it runs as, mode 0600 (generate sets the mode).
        let certs = TestCerts::generate(&dir.join("certs"));
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
        }
        let data = dir.join("data");
        let st = pg_command(&bindir, "initdb")
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 host all postgres 127.0.0.1/32 trust\n\
                 hostssl all {AUTH_USER} 127.0.0.0/8 cert\n\
                 hostnossl all {TLS_ONLY_USER} 127.0.0.0/8 reject\n\
                 host all {MD5_USER} 127.0.0.0/8 md5\n\
                 host all all 127.0.0.0/8 scram-sha-256\n"
            ),
        )
        .unwrap();
        let port = free_port();
        // The watchdog stops PostgreSQL and removes its files once this test process has exited,
        // since a static is never dropped.
        let me = std::process::id();
        let script = format!(
            "{pg} -D {data} -p {port} -c listen_addresses=127.0.0.1,127.0.0.2 -c unix_socket_directories={dir} \
             -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c logging_collector=off -c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key} \
             -c ssl_ca_file={ca} > {dir}/postgres.log 2>&1 & pid=$!; \
             while [ -d /proc/{me} ] && kill -0 $pid 2>/dev/null; do sleep 0.5; done; \
             kill -INT $pid 2>/dev/null; wait $pid; rm -rf {dir}",
            pg = bindir.join("postgres").display(),
            data = data.display(),
            dir = dir.display(),
            cert = certs.server_cert.display(),
            key = certs.server_key.display(),
            ca = certs.ca.display(),
        );
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.spawn().unwrap();
        let pg = Postgres {
            port,
            dir,
            bindir,
            certs,
        };
        pg.wait_ready();
        pg.psql_super(&format!(
            "SET password_encryption = 'scram-sha-256';\
             CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{SCRAM_PASSWORD}';\
             SET password_encryption = 'md5';\
             CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';\
             GRANT ALL ON SCHEMA public TO PUBLIC;"
        ));
        // As CloudNativePG sets up its pooler's auth user (in database postgres).
        pg.psql_super(&format!(
            "SET password_encryption = 'scram-sha-256';\
             CREATE ROLE {TLS_ONLY_USER} LOGIN PASSWORD '{TLS_ONLY_PASSWORD}';\
             CREATE ROLE {QUERY_USER} LOGIN PASSWORD '{QUERY_PASSWORD}';\
             CREATE ROLE cnpg_pooler_pgbouncer WITH LOGIN;\
             GRANT CONNECT ON DATABASE postgres TO cnpg_pooler_pgbouncer;\
             CREATE OR REPLACE FUNCTION public.user_search(uname TEXT) \
             RETURNS TABLE (usename name, passwd text) AS \
             'SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename=$1;' \
             LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp;\
             REVOKE ALL ON FUNCTION public.user_search(text) FROM public;\
             GRANT EXECUTE ON FUNCTION public.user_search(text) TO cnpg_pooler_pgbouncer;"
        ));
        pg.psql_super(&format!("CREATE DATABASE appdb OWNER {SCRAM_USER}"));
        pg
    }

    fn wait_ready(&self) {
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                let ok = Command::new(self.bindir.join("pg_isready"))
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &self.port.to_string(),
                        "-U",
                        "postgres",
                    ])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                if ok {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
        panic!("PostgreSQL did not start on port {}: {log}", self.port);
    }

    /// Runs SQL as the superuser with psql, returning stdout (unaligned, tuples only).
    pub fn psql_super(&self, sql: &str) -> String {
        let out = Command::new(self.bindir.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Server connections of `user` as pg_stat_activity sees them (client backends only).
    pub fn backends_of(&self, user: &str) -> usize {
        self.psql_super(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}' AND backend_type = 'client backend'"
        ))
        .parse()
        .unwrap()
    }
}

/// Runs Debian's psql (`-X -A -t -w -c sql`) against any libpq connection string, e.g.
/// `host=127.0.0.1 port=N user=app password=app-secret dbname=postgres sslmode=require`; never
/// prompts for a password. The caller looks at the status, stdout and stderr.
pub fn psql_conninfo(conninfo: &str, sql: &str) -> std::process::Output {
    Command::new(bindir().join("psql"))
        .args(["-X", "-A", "-t", "-w", "-c", sql, "-d", conninfo])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// A pgsluice instance inside the test process, configured through a real pgbouncer.ini.
pub struct Sluice {
    pub app: Arc<App>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Sluice {
    /// Starts pgsluice in front of the shared PostgreSQL. `pgbouncer` lines are added to the
    /// `[pgbouncer]` section and `databases` lines to `[databases]` (a default `* =` entry is there).
    pub async fn start(pgbouncer: &str, databases: &str) -> Sluice {
        let pg = Postgres::shared();
        Self::start_exact(
            pgbouncer,
            &format!("{databases}\n* = host=127.0.0.1 port={}", pg.port),
        )
        .await
    }

    /// Like [`Sluice::start`], without the `* =` fallback entry.
    pub async fn start_exact(pgbouncer: &str, databases: &str) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("userlist.txt"),
            format!("\"{SCRAM_USER}\" \"{SCRAM_PASSWORD}\"\n\"{MD5_USER}\" \"{MD5_PASSWORD}\"\n\"postgres\" \"\"\n"),
        )
        .unwrap();
        let ini = format!(
            "[databases]\n{databases}\n\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 0\nunix_socket_dir =\n\
             auth_type = md5\nauth_file = userlist.txt\nstats_period = 0\n{pgbouncer}\n"
        );
        let path = dir.path().join("pgbouncer.ini");
        std::fs::write(&path, ini).unwrap();
        let config = pgsluice::config::load(&path).expect("test config loads");
        let app = App::new(config);
        let listeners = pgsluice::run::bind(&app).await.unwrap();
        let addr = listeners.local_addrs()[0];
        let task = {
            let app = app.clone();
            tokio::spawn(async move {
                let _ = pgsluice::run::serve(app, listeners, false).await;
            })
        };
        Sluice {
            app,
            addr,
            dir,
            task,
        }
    }

    pub fn conn_str(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db}",
            self.addr.port()
        )
    }

    /// Connects with tokio-postgres as the SCRAM user to `db`, driving the connection in a task.
    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        self.connect_as(SCRAM_USER, SCRAM_PASSWORD, db)
            .await
            .expect("connect through pgsluice")
    }

    /// Connects as the SCRAM user to `db` with more connection-string options (`application_name=x`).
    pub async fn connect_with(&self, db: &str, options: &str) -> tokio_postgres::Client {
        let cs = format!(
            "{} {options}",
            self.conn_str(SCRAM_USER, SCRAM_PASSWORD, db)
        );
        let (client, conn) = tokio_postgres::connect(&cs, tokio_postgres::NoTls)
            .await
            .expect("connect through pgsluice");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) =
            tokio_postgres::connect(&self.conn_str(user, password, db), tokio_postgres::NoTls)
                .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.app
            .shutdown
            .request(pgsluice::shutdown::Phase::Immediate);
        self.task.abort();
    }
}

/// A table name unique to one test, so tests can share the database and run in parallel.
pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The first column of the first row of a simple query's result.
pub fn first_value(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

impl Postgres {
    /// A direct superuser connection, for watching pg_stat_activity while a test runs.
    pub async fn super_client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("direct superuser connection");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Creates a database of its own for one test, owned by the SCRAM user, so that counting its
    /// server connections is not disturbed by tests running in parallel.
    pub fn create_database(&self, prefix: &str) -> String {
        let name = unique(prefix);
        self.psql_super(&format!("CREATE DATABASE {name} OWNER {SCRAM_USER}"));
        name
    }
}

/// Client backends connected to `db`, optionally only those of `user`.
pub async fn backends_in(c: &tokio_postgres::Client, db: &str, user: Option<&str>) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
         AND ($2::text IS NULL OR usename = $2) AND backend_type = 'client backend'",
        &[&db, &user],
    )
    .await
    .expect("count backends")
    .get(0)
}

/// Runs `work` while sampling `backends_in(db, user)` every 20 ms; returns its output and the peak.
pub async fn peak_backends_while<T>(
    db: &str,
    user: Option<&str>,
    work: impl std::future::Future<Output = T>,
) -> (T, i64) {
    let watcher = Postgres::shared().super_client().await;
    let mut peak = 0;
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => {
                peak = peak.max(backends_in(&watcher, db, user).await);
                return (out, peak);
            }
            n = async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                backends_in(&watcher, db, user).await
            } => peak = peak.max(n),
        }
    }
}

/// Waits up to `within` for `backends_in(db, user)` to equal `want`; returns the last count seen.
pub async fn await_backends(db: &str, user: Option<&str>, want: i64, within: Duration) -> i64 {
    let watcher = Postgres::shared().super_client().await;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = backends_in(&watcher, db, user).await;
        if n == want || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The SQLSTATE of a tokio-postgres error, if the server (or pooler) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// The message of a tokio-postgres error: the ErrorResponse's text when there is one.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// The driver matrix's Python (psycopg 3, asyncpg), in the venv `.ci/run` makes.
pub fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/drivers-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run .ci/run, or python3 -m venv target/drivers-venv && \
         target/drivers-venv/bin/pip install -r tests/drivers/requirements.txt",
        p.display()
    );
    p
}

/// Waits (at most 2 s) until a pool holds `want` = (idle, total) servers. A server is checked in
/// just after its client sees the reply, so a test that needs a known checkin order waits here.
pub async fn pool_settles(pool: &pgsluice::pool::Pool, want: (usize, usize)) {
    for _ in 0..200 {
        if pool.counts() == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!(
        "the pool never reached (idle, total) = {want:?}: {:?}",
        pool.counts()
    );
}

/// Runs pgbench `-M prepared` through pgsluice, as the SCRAM user, for at most 120 s (a hang fails
/// with exit 124), and checks that all `want` transactions went through with no statement errors.
pub async fn pgbench_prepared(s: &Sluice, db: &str, args: &[&str], want: usize) {
    let pg = Postgres::shared();
    let mut cmd = Command::new("timeout");
    cmd.arg("120")
        .arg(pg.bindir.join("pgbench"))
        .args(["-M", "prepared", "-n"])
        .args(args)
        .args(["-h", "127.0.0.1", "-p", &s.addr.port().to_string()])
        .args(["-U", SCRAM_USER, db])
        .env("PGPASSWORD", SCRAM_PASSWORD);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pgbench {args:?} failed or hung (exit {:?}): {text}",
        out.status.code()
    );
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    assert!(
        text.contains(&format!(
            "number of transactions actually processed: {want}/{want}"
        )),
        "{text}"
    );
    assert!(
        !text.contains("does not exist") && !text.contains("already exists"),
        "{text}"
    );
}
