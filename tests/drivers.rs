//! The driver matrix: psycopg 3, asyncpg, node-postgres and the JDBC driver (scripts in
//! tests/drivers/) through pgsluice in transaction mode, many clients each over a pool of 2
//! servers, with named prepared statements. `.ci/run` installs the drivers: Python packages into
//! `target/drivers-venv`, npm packages into `tests/drivers/node_modules`, and pgjdbc and a JDK from
//! Debian.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

/// Runs one driver script against a fresh pgsluice and database; fails with its output.
async fn run_script(program: PathBuf, script: &str, phases: Option<&str>) {
    let cmd = std::process::Command::new(program);
    run_in(cmd, script, phases, "pool_mode = transaction").await;
}

/// Runs `cmd` with `script` against a fresh pgsluice (`general` settings) and database.
async fn run_in(mut cmd: std::process::Command, script: &str, phases: Option<&str>, general: &str) {
    let pg = Postgres::shared();
    let db = pg.create_database("drivers");
    let s = Sluice::start(
        general,
        &format!("{db} = host=127.0.0.1 port={} pool_size=2", pg.port),
    )
    .await;
    let dsn = format!(
        "postgresql://{SCRAM_USER}:{SCRAM_PASSWORD}@127.0.0.1:{}/{db}",
        s.addr.port()
    );
    cmd.arg(drivers_dir().join(script))
        .env("PGSLUICE_DSN", dsn)
        .env("PGSLUICE_DRIVER_TIMEOUT", "120");
    if let Some(p) = phases {
        cmd.env("PGSLUICE_DRIVER_PHASES", p);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{text}");
    assert!(text.contains("OK"), "{script} printed no OK line:\n{text}");
    for bad in ["does not exist", "already exists", "protocol"] {
        assert!(!text.contains(bad), "{script} reported {bad:?}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_prepared_and_default_threshold_executemany_pipeline_migration() {
    run_script(python(), "psycopg_matrix.py", None).await;
}

/// Phases g and h re-run a client's own statement after ALTER TABLE changed its columns: asyncpg keeps
/// the old row description and needs PostgreSQL's 0A000 to prepare again, including when pgsluice
/// prepares the statement afresh on another server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_statement_cache_executemany_copy_records_pool() {
    run_script(python(), "asyncpg_matrix.py", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_named_queries_and_pool() {
    let modules = drivers_dir().join("node_modules/pg");
    assert!(
        modules.exists(),
        "{} is missing: run .ci/run, or npm ci in tests/drivers",
        modules.display()
    );
    run_script(PathBuf::from("node"), "node_pg_matrix.js", None).await;
}

/// pgjdbc with its default prepareThreshold (named statements from the fifth execution), with
/// prepareThreshold=1, batched inserts and a rolled back transaction, 8 threads over 2 servers. The
/// driver sends `extra_float_digits` at startup, which PgBouncer users list in
/// `ignore_startup_parameters`, as here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_prepare_threshold_default_and_one_batches_and_rollback() {
    let jar = Path::new("/usr/share/java/postgresql.jar");
    assert!(
        jar.exists(),
        "{} is missing: run .ci/run (apt-get install libpostgresql-jdbc-java default-jdk-headless)",
        jar.display()
    );
    let mut cmd = std::process::Command::new("java");
    cmd.arg("-cp").arg(jar);
    run_in(
        cmd,
        "JdbcMatrix.java",
        None,
        "pool_mode = transaction\nignore_startup_parameters = extra_float_digits",
    )
    .await;
}
