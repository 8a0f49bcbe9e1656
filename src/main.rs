//! The `pgsluice` binary: command line, configuration, runtime, exit codes.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

/// A PostgreSQL connection pooler: session, transaction and statement pooling, PgBouncer-compatible.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file: pgsluice TOML or PgBouncer's pgbouncer.ini (told apart by extension or content).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// PgBouncer's own form: `pgsluice pgbouncer.ini`.
    #[arg(value_name = "FILE", conflicts_with = "config")]
    file: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgsluice: {e:#}");
            // EX_CONFIG-ish: anything before listening is a configuration or environment problem.
            std::process::ExitCode::from(78)
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let path = cli
        .config
        .or(cli.file)
        .context("no configuration file given (use --config FILE or FILE.ini)")?;
    let config =
        pgsluice::config::load(&path).with_context(|| format!("cannot load {}", path.display()))?;
    pgsluice::logging::init(config.general.log_format);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let workers = match config.general.workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .thread_name("pgsluice-worker")
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let app = pgsluice::app::App::new(config);
        let listeners = pgsluice::run::bind(&app).await.context("cannot listen")?;
        pgsluice::run::serve(app, listeners, true)
            .await
            .context("serving failed")
    })?;
    // Client tasks still draining after an immediate shutdown are dropped with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}
