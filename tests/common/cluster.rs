//! A primary and a streaming replica of its own for one test: initdb, pg_basebackup, pg_ctl
//! promote and stop, on loopback ports. The switchover and discovery tests move the primary.

use super::{bindir, free_port, is_root, SCRAM_PASSWORD, SCRAM_USER};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// One server. The two share a port, on loopback addresses of their own, so that one
/// EndpointSlice (one port, several addresses) can name either.
pub struct Node {
    pub ip: &'static str,
    pub port: u16,
    pub data: PathBuf,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub primary: Node,
    pub replica: Node,
}

/// Runs a PostgreSQL tool as `postgres` when we are root (PostgreSQL refuses to run as root).
fn pg_tool(name: &str) -> Command {
    let path = bindir().join(name);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c.stdin(std::process::Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Node {
    fn start(&self) {
        // Not the data directory: pg_basebackup would copy the primary's socket lock file.
        let sockets = self.data.with_extension("sock");
        if !sockets.exists() {
            std::fs::create_dir(&sockets).unwrap();
            if is_root() {
                let _ = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&sockets)
                    .status();
            }
        }
        let mut c = pg_tool("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.with_extension("log"));
        c.args(["-w", "-t", "30", "-o"]).arg(format!(
            "-p {} -c listen_addresses={} -c unix_socket_directories={} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.ip,
            sockets.display()
        ));
        c.arg("start");
        let out = c.stdin(std::process::Stdio::null()).output().unwrap();
        let log = std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default();
        assert!(out.status.success(), "pg_ctl start {}: {log}", self.ip);
    }

    /// A fast shutdown, as CloudNativePG stops an old primary.
    pub fn stop(&self) {
        let mut c = pg_tool("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]);
        run(c, "pg_ctl stop");
    }

    pub fn promote(&self) {
        let mut c = pg_tool("pg_ctl");
        c.arg("-D").arg(&self.data).args(["-w", "promote"]);
        run(c, "pg_ctl promote");
    }

    /// Runs SQL as the superuser over TCP in `appdb`; the first column of each row.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("appdb", sql)
    }

    fn psql_db(&self, db: &str, sql: &str) -> String {
        let out = Command::new(bindir().join("psql"))
            .args(["-X", "-qAt", "-h", self.ip, "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Cluster {
    /// A primary with database `appdb` and the SCRAM user, and a hot standby streaming from it.
    pub fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("pgsluice-cluster-")
            .tempdir()
            .unwrap();
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(dir.path());
                    c
                },
                "chown",
            );
        }
        let port = free_port();
        let primary = Node {
            ip: "127.0.0.3",
            port,
            data: dir.path().join("primary"),
        };
        let mut c = pg_tool("initdb");
        c.arg("-D").arg(&primary.data);
        c.args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"]);
        run(c, "initdb");
        std::fs::write(
            primary.data.join("pg_hba.conf"),
            "local all all trust\nlocal replication all trust\n\
             host replication postgres 127.0.0.0/8 trust\n\
             host all postgres 127.0.0.0/8 trust\n\
             host all all 127.0.0.0/8 scram-sha-256\n",
        )
        .unwrap();
        primary.start();
        primary.psql_db(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256'; \
                 CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{SCRAM_PASSWORD}'"
            ),
        );
        primary.psql_db(
            "postgres",
            &format!("CREATE DATABASE appdb OWNER {SCRAM_USER}"),
        );
        let replica = Node {
            ip: "127.0.0.4",
            port,
            data: dir.path().join("replica"),
        };
        let mut c = pg_tool("pg_basebackup");
        c.arg("-D").arg(&replica.data);
        c.args([
            "-h",
            primary.ip,
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
        ]);
        run(c, "pg_basebackup");
        replica.start();
        let cluster = Cluster {
            dir,
            primary,
            replica,
        };
        cluster.wait_streaming();
        cluster
    }

    fn wait_streaming(&self) {
        for _ in 0..100 {
            if self
                .primary
                .psql("SELECT count(*) FROM pg_stat_replication")
                == "1"
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the replica does not stream");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in [&self.replica, &self.primary] {
            let mut c = pg_tool("pg_ctl");
            c.arg("-D")
                .arg(&node.data)
                .args(["-m", "immediate", "stop"]);
            let _ = c.stdin(std::process::Stdio::null()).output();
        }
    }
}
