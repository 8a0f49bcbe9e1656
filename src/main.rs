//! The `pgsluice` binary: command line, configuration, runtime, exit codes.
//!
//! It takes PgBouncer's flags with PgBouncer's meaning, so that scripts, systemd units and
//! CloudNativePG's Pooler pods start it as they start PgBouncer.

use anyhow::Context;
use clap::{ArgAction, Parser};
use pgsluice::process;
use std::path::PathBuf;

/// A PostgreSQL connection pooler: session, transaction and statement pooling, PgBouncer-compatible.
#[derive(Debug, Parser)]
#[command(about, disable_version_flag = true)]
struct Cli {
    /// Configuration file: pgsluice TOML or PgBouncer's pgbouncer.ini (told apart by extension or content).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// PgBouncer's own form: `pgsluice pgbouncer.ini`.
    #[arg(value_name = "FILE", conflicts_with = "config")]
    file: Option<PathBuf>,
    /// Run in the background; logs go to `logfile` only.
    #[arg(short, long)]
    daemon: bool,
    /// PgBouncer's online restart: accepted, but pgsluice starts normally (not supported).
    #[arg(short = 'R', long)]
    reboot: bool,
    /// Log nothing to stderr (`logfile` still gets every line).
    #[arg(short, long)]
    quiet: bool,
    /// More detail in the log; twice for all of it.
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,
    /// Switch to this user's uid and gid once the configuration is read (when started as root).
    #[arg(short, long, value_name = "USER")]
    user: Option<String>,
    /// Print the version (SHOW VERSION's value) and exit.
    #[arg(short = 'V', long)]
    version: bool,
    /// Load and check the configuration (files, TLS keys, hba), print what would listen, and exit:
    /// 0 when it is good, 1 when it is not.
    #[arg(long)]
    check: bool,
    /// Set on the process `--daemon` starts.
    #[arg(long, hide = true)]
    detached: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("{}", pgsluice::admin::VERSION);
        return std::process::ExitCode::SUCCESS;
    }
    match real_main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgsluice: {e:#}");
            // EX_CONFIG-ish: anything before listening is a configuration or environment problem.
            std::process::ExitCode::from(78)
        }
    }
}

/// What `--check` prints: the addresses and the socket clients would reach.
fn listen_plan(g: &pgsluice::config::General) -> Vec<String> {
    let mut plan: Vec<String> = g
        .listen_addr
        .iter()
        .map(|a| format!("listen {a}:{}", g.listen_port))
        .collect();
    if let Some(dir) = &g.unix_socket_dir {
        plan.push(format!(
            "listen {}",
            dir.join(format!(".s.PGSQL.{}", g.listen_port)).display()
        ));
    }
    plan
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let path = cli
        .config
        .clone()
        .or(cli.file.clone())
        .context("no configuration file given (use --config FILE or FILE.ini)")?;
    let loaded = pgsluice::config::load(&path);
    if cli.check {
        match loaded {
            Ok(c) => {
                for w in &c.warnings {
                    println!("warning: {w}");
                }
                for line in listen_plan(&c.general) {
                    println!("{line}");
                }
                println!("{}: configuration is good", path.display());
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("pgsluice: {}: {e}", path.display());
                std::process::exit(1);
            }
        }
    }
    let config = loaded.with_context(|| format!("cannot load {}", path.display()))?;
    if cli.daemon {
        // PgBouncer's rule: a daemon must be findable, and stoppable, by its pidfile.
        anyhow::ensure!(
            config.general.pidfile.is_some(),
            "daemon needs pidfile configured"
        );
        let mut args = process::without_daemon_flag(std::env::args_os().skip(1));
        args.push("--detached".into());
        process::detach(args)?;
        return Ok(());
    }
    if let Some(user) = &cli.user {
        process::switch_user(user)?;
    }
    let g = &config.general;
    pgsluice::logging::init(
        g.log_format,
        &pgsluice::logging::Output {
            logfile: g.logfile.as_deref(),
            quiet: cli.quiet || cli.detached,
            verbosity: cli.verbose,
        },
    )
    .context("cannot open the logfile")?;
    if cli.reboot {
        tracing::warn!("online restart (-R) is not supported; starting normally");
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let _pidfile = g
        .pidfile
        .as_deref()
        .map(process::Pidfile::create)
        .transpose()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = pgsluice::run::worker_count(g.workers, cores);
    // One worker needs no work stealing: the current-thread scheduler skips it and its bookkeeping.
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = builder
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
