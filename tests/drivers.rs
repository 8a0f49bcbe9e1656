//! The driver matrix: psycopg 3, asyncpg and node-postgres (scripts in tests/drivers/) through
//! pgsluice in transaction mode, 30 clients each over a pool of 2 servers, with named prepared
//! statements. `.ci/run` installs the drivers: Python packages into `target/drivers-venv`, npm
//! packages into `tests/drivers/node_modules`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

/// Runs one driver script against a fresh pgsluice and database; fails with its output.
async fn run_script(program: PathBuf, script: &str, phases: Option<&str>) {
    let pg = Postgres::shared();
    let db = pg.create_database("drivers");
    let s = Sluice::start(
        "pool_mode = transaction",
        &format!("{db} = host=127.0.0.1 port={} pool_size=2", pg.port),
    )
    .await;
    let dsn = format!(
        "postgresql://{SCRAM_USER}:{SCRAM_PASSWORD}@127.0.0.1:{}/{db}",
        s.addr.port()
    );
    let mut cmd = std::process::Command::new(program);
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
