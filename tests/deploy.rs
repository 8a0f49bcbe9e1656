//! deploy/: every manifest, rule, dashboard and the Dockerfile checked offline (tests/deploy/
//! validate.py), the example configurations loaded by the binary, and the image's layout run as
//! CloudNativePG runs it: `/usr/bin/pgbouncer /controller/configs/pgbouncer.ini` as uid 998 with
//! the files its manager writes, driven over the unix socket's admin console.
#![allow(clippy::unwrap_used, clippy::zombie_processes)]

mod common;

use common::{free_port, psql_bin, Postgres, Sluice, QUERY_PASSWORD, QUERY_USER, SCRAM_USER};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The sample names in a Prometheus text exposition.
fn sample_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    names
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_in_deploy_validates_offline_against_the_metrics_pgsluice_exposes() {
    // The names the dashboard and the rules may use: those of a pooler that has served a client,
    // refused one, and found a database's primary through a Service.
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let api = common::kube_api::FakeApi::start(&["127.0.0.1"], Postgres::shared().port).await;
    let kube_dir = tempfile::tempdir().unwrap();
    let s = Sluice::start(
        &format!(
            "[pgsluice]\nmetrics_addr = {metrics}\nkubeconfig = {}",
            api.kubeconfig(kube_dir.path()).display()
        ),
        "found = host=pg-rw dbname=appdb discovery=kubernetes discovery_service=testns/pg-rw",
    )
    .await;
    for db in ["appdb", "found"] {
        s.connect(db).await.simple_query("SELECT 1").await.unwrap();
    }
    assert!(s.connect_as(SCRAM_USER, "wrong", "appdb").await.is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let names = sample_names(&http_get(metrics, "/metrics").await);
    assert!(
        names.iter().any(|n| n == "pgsluice_transactions_total"),
        "{names:?}"
    );
    let list = s.dir.path().join("metric-names.txt");
    std::fs::write(&list, names.join("\n")).unwrap();

    let out = Command::new(common::python())
        .arg(repo().join("tests/deploy/validate.py"))
        .arg(repo().join("deploy"))
        .arg("--metrics")
        .arg(&list)
        .current_dir(repo())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "deploy/ does not validate:\n{}\n{report}",
        String::from_utf8_lossy(&out.stderr)
    );
    for checked in [
        "deploy/docker/Dockerfile",
        "deploy/cnpg/pooler.yaml",
        "deploy/kubernetes/overlays/toml",
        "deploy/kubernetes/overlays/ini",
        "deploy/monitoring/prometheusrule.yaml",
        "deploy/monitoring/prometheusrule-cnpg.yaml",
        "deploy/monitoring/grafana-dashboard.json",
    ] {
        assert!(
            report.contains(checked),
            "{checked} was not checked:\n{report}"
        );
    }
}

/// The overlays' configurations load in the binary (`--check`), with their mount points moved
/// into a scratch directory.
#[test]
fn the_kubernetes_example_configurations_load() {
    for (overlay, file) in [("toml", "pgsluice.toml"), ("ini", "pgbouncer.ini")] {
        let dir = tempfile::tempdir().unwrap();
        let src = repo().join("deploy/kubernetes/overlays").join(overlay);
        let mounted = dir.path().display().to_string();
        let text = std::fs::read_to_string(src.join(file))
            .unwrap()
            .replace("/etc/pgsluice", &mounted)
            .replace("/var/run/pgsluice", &mounted);
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        std::fs::copy(
            src.join("userlist.txt"),
            dir.path().join("secrets/userlist.txt"),
        )
        .unwrap();
        std::fs::write(dir.path().join(file), text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pgsluice"))
            .arg("--check")
            .arg(dir.path().join(file))
            // What the deployment's downward API gives each replica.
            .env("POD_IP", "10.0.0.7")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{overlay}/{file} does not load: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The image layout, run as CloudNativePG runs it
// ---------------------------------------------------------------------------------------------

const UID: u32 = 998;
const GID: u32 = 996;

/// A file as CloudNativePG's manager writes it: owned by the pooler's uid, mode 0600, put in
/// place by rename (so a reload must re-open files, not re-read an inode).
fn write_as_manager(path: &Path, text: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::os::unix::fs::chown(&tmp, Some(UID), Some(GID)).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// pgbouncer.ini as the operator renders it for `type: rw` with the automated integration (keys
/// after the first four sorted), pointing at the test PostgreSQL instead of `<cluster>-rw`.
fn cnpg_ini(configs: &Path, run: &Path, pg_port: u16, port: u16, pool_size: u32) -> String {
    let c = configs.display();
    format!(
        "\n[databases]\n* = host=127.0.0.1 port={pg_port}\n\n[pgbouncer]\n\
         pool_mode = session\n\
         auth_user = cnpg_pooler_pgbouncer\n\
         auth_query = SELECT usename, passwd FROM public.user_search($1)\n\
         auth_dbname = postgres\n\n\
         admin_users = pgbouncer\n\
         auth_hba_file = {c}/pg_hba.conf\n\
         auth_type = hba\n\
         client_tls_ca_file = {c}/client-ca/ca.crt\n\
         client_tls_cert_file = {c}/client-tls/tls.crt\n\
         client_tls_key_file = {c}/client-tls/tls.key\n\
         client_tls_sslmode = prefer\n\
         default_pool_size = {pool_size}\n\
         ignore_startup_parameters = extra_float_digits,options\n\
         listen_addr = *\n\
         listen_port = {port}\n\
         log_stats = 0\n\
         server_tls_ca_file = {c}/server-tls/ca.crt\n\
         server_tls_cert_file = {c}/authUser/tls.crt\n\
         server_tls_key_file = {c}/authUser/tls.key\n\
         server_tls_sslmode = verify-ca\n\
         unix_socket_dir = {}\n",
        run.display()
    )
}

/// The pod's filesystem: the image's /usr/bin, and /controller as the manager leaves it.
struct Pod {
    root: tempfile::TempDir,
    configs: PathBuf,
    run: PathBuf,
    port: u16,
}

impl Pod {
    fn new() -> Pod {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // The image: the binary, and /usr/bin/pgbouncer pointing at it (deploy/docker/Dockerfile).
        let bin = root.path().join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_pgsluice"), bin.join("pgsluice")).unwrap();
        std::os::unix::fs::symlink("pgsluice", bin.join("pgbouncer")).unwrap();
        // /controller: the pod's only writable place, the pooler's uid's; configs/ read-only to it.
        let controller = root.path().join("controller");
        let (configs, run) = (controller.join("configs"), controller.join("run"));
        std::fs::create_dir_all(&run).unwrap();
        std::fs::create_dir_all(&configs).unwrap();
        std::os::unix::fs::chown(&controller, Some(UID), Some(GID)).unwrap();
        std::os::unix::fs::chown(&run, Some(UID), Some(GID)).unwrap();
        let pg = Postgres::shared();
        let certs = &pg.certs;
        let port = free_port();
        for (name, from) in [
            ("client-ca/ca.crt", &certs.ca),
            ("client-tls/tls.crt", &certs.server_cert),
            ("client-tls/tls.key", &certs.server_key),
            ("server-tls/ca.crt", &certs.ca),
            ("authUser/tls.crt", &certs.pooler_client_cert),
            ("authUser/tls.key", &certs.pooler_client_key),
        ] {
            write_as_manager(&configs.join(name), &std::fs::read(from).unwrap());
        }
        let hba =
            "local pgbouncer pgbouncer peer\n\nhost all all 0.0.0.0/0 md5\nhost all all ::/0 md5\n";
        write_as_manager(&configs.join("pg_hba.conf"), hba.as_bytes());
        let ini = cnpg_ini(&configs, &run, pg.port, port, 3);
        write_as_manager(&configs.join("pgbouncer.ini"), ini.as_bytes());
        // Read-only for the pooler: it owns its files but cannot create any beside them.
        for dir in std::fs::read_dir(&configs)
            .unwrap()
            .map(|e| e.unwrap().path())
        {
            if dir.is_dir() {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
            }
        }
        std::fs::set_permissions(&configs, std::fs::Permissions::from_mode(0o555)).unwrap();
        Pod {
            root,
            configs,
            run,
            port,
        }
    }

    /// Every path under the pod's root, for what the pooler left behind.
    fn paths(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                out.push(p.clone());
                if p.is_dir() && !p.is_symlink() {
                    walk(&p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.root.path(), &mut out);
        out.sort();
        out
    }

    /// `/usr/bin/pgbouncer /controller/configs/pgbouncer.ini`, as uid 998, no flags, no shell.
    fn exec(&self) -> Child {
        Command::new(self.root.path().join("usr/bin/pgbouncer"))
            .arg(self.configs.join("pgbouncer.ini"))
            .uid(UID)
            .gid(GID)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir(self.root.path().join("controller"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// psql as the manager runs it: user pgbouncer on the unix socket, same uid, no password.
    fn console(&self, sql: &str) -> std::process::Output {
        // Bounded: a command that hangs fails the test instead of stalling it.
        Command::new("timeout")
            .arg("20")
            .arg(psql_bin())
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg(format!(
                "host={} port={} user=pgbouncer dbname=pgbouncer sslmode=disable",
                self.run.display(),
                self.port
            ))
            .args(["-c", sql])
            .uid(UID)
            .gid(GID)
            .env_clear()
            .env("HOME", self.root.path().join("controller"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// Kills the process when the test ends, however it ends (a no-op once it has exited).
struct Reaper(u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

fn ok_text(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_layout_serves_clients_and_the_console_as_cloudnativepg_runs_it() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running as uid 998 needs root (CI runs as root)");
        return;
    }
    let pod = Pod::new();
    let before = pod.paths();
    let mut child = pod.exec();
    // A failed assertion must not leave the pooler running as another user.
    let _reaper = Reaper(child.id());
    let mut up = false;
    for _ in 0..200 {
        if pod.run.join(format!(".s.PGSQL.{}", pod.port)).exists() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if !up {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("did not listen: {}", String::from_utf8_lossy(&out.stderr));
    }

    // A user only auth_query knows, over TCP: md5 hba line, SCRAM verifier from user_search, the
    // auth user logged in to PostgreSQL by its certificate.
    let cs = format!(
        "host=127.0.0.1 port={} user={QUERY_USER} password={QUERY_PASSWORD} dbname=appdb",
        pod.port
    );
    let (client, conn) = tokio_postgres::connect(&cs, tokio_postgres::NoTls)
        .await
        .expect("a client logs in through the pod's pooler");
    tokio::spawn(conn);
    let rows = client.simple_query("SELECT current_user").await.unwrap();
    assert_eq!(common::first_value(&rows).as_deref(), Some(QUERY_USER));

    // The manager's commands, verbatim.
    let lists = ok_text(pod.console("SHOW LISTS;"), "SHOW LISTS");
    assert!(lists.contains("used_clients|1"), "{lists}");
    let pools = ok_text(pod.console("SHOW POOLS;"), "SHOW POOLS");
    assert!(
        pools.contains(&format!("appdb|{QUERY_USER}|1|0")),
        "{pools}"
    );
    let stats = ok_text(pod.console("SHOW STATS;"), "SHOW STATS");
    assert!(stats.starts_with("appdb|"), "{stats}");
    let help = pod.console("SHOW HELP");
    let notices = String::from_utf8_lossy(&help.stderr);
    assert!(
        help.status.success() && notices.contains("SHOW"),
        "SHOW HELP: {notices}"
    );
    // Session mode (the operator's default): PAUSE returns once the session's server is free.
    drop(client);
    ok_text(pod.console("PAUSE"), "PAUSE");
    ok_text(pod.console("RESUME"), "RESUME");
    let (client, conn) = tokio_postgres::connect(&cs, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();

    // The manager rewrites the ini by rename and asks for RELOAD: the new pool size shows.
    std::fs::set_permissions(&pod.configs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pg = Postgres::shared();
    let ini = cnpg_ini(&pod.configs, &pod.run, pg.port, pod.port, 7);
    write_as_manager(&pod.configs.join("pgbouncer.ini"), ini.as_bytes());
    std::fs::set_permissions(&pod.configs, std::fs::Permissions::from_mode(0o555)).unwrap();
    ok_text(pod.console("RELOAD"), "RELOAD");
    let config = ok_text(pod.console("SHOW CONFIG"), "SHOW CONFIG");
    assert!(config.contains("default_pool_size|7|"), "{config}");
    client.simple_query("SELECT 1").await.unwrap();

    // Nothing written outside /controller/run.
    let after = pod.paths();
    let new: Vec<_> = after
        .iter()
        .filter(|p| !before.contains(p) && !p.starts_with(&pod.run))
        .collect();
    assert!(
        new.is_empty(),
        "the pooler wrote outside /controller/run: {new:?}"
    );

    // The manager's only signal: SIGINT, a safe shutdown, exit 0 once the client's server is free.
    drop(client);
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("no exit within 5 s of SIGINT")
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status}: {stderr}");
    // The manager re-logs stderr lines it can parse: `<time> [<pid>] <LEVEL> <message>`.
    let pid = child.id();
    let line = stderr
        .lines()
        .find(|l| l.contains("listening on"))
        .unwrap_or_else(|| panic!("no listening line: {stderr}"));
    assert!(
        line.contains(&format!(" [{pid}] LOG ")),
        "a log line CloudNativePG cannot parse: {line}"
    );
}
