//! Running the pooler: bind, serve, handle signals, report stats, shut down by PgBouncer's rules.

use crate::app::App;
use crate::net::listener::{self, Listeners};
use crate::shutdown::Phase;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// How many runtime threads `workers` asks for on a machine with `cores` (the binary's
/// `available_parallelism`, which follows a container's CPU quota).
///
/// `0` means one per core, except on two cores or fewer: there a pooler shares its cores with its
/// clients and servers, and a second worker costs more in cross-core wake-ups than it brings (the
/// load bench on two cores: CPU per transaction 0.95x PgBouncer's with one worker, 1.13x with two;
/// per login 1.19x and 1.37x). One worker runs tokio's current-thread scheduler (see main.rs).
pub fn worker_count(workers: usize, cores: usize) -> usize {
    match (workers, cores) {
        (0, 0..=2) => 1,
        (0, n) => n,
        (n, _) => n,
    }
}

/// Binds the configured listeners.
pub async fn bind(app: &App) -> std::io::Result<Listeners> {
    let config = app.config();
    let g = &config.general;
    listener::bind(&g.listen_addr, g.listen_port, g.unix_socket_dir.as_deref()).await
}

/// Serves until shutdown completes. Signals are handled here when `signals` is true (the binary);
/// tests drive [`crate::shutdown::Shutdown`] directly.
pub async fn serve(app: Arc<App>, listeners: Listeners, signals: bool) -> std::io::Result<()> {
    for addr in listeners.local_addrs() {
        tracing::info!("listening on {addr}");
    }
    if let Some((_, path)) = &listeners.unix {
        tracing::info!("listening on unix:{}", path.display());
    }
    if signals {
        spawn_signal_handlers(app.clone())?;
    }
    // Bound before anything is served, so that a taken port stops the start; it keeps answering
    // through the drain, where /readyz says "shutting down".
    let metrics = match app.config().general.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("metrics_addr {addr}: {e}")))?;
            tracing::info!("metrics and health on http://{}", listener.local_addr()?);
            let endpoint: Arc<dyn crate::metrics::Endpoint> = app.clone();
            Some(tokio::spawn(crate::metrics::http::serve(
                listener, endpoint,
            )))
        }
        None => None,
    };
    let janitor = tokio::spawn(crate::pool::maintenance::run(app.pools.clone()));
    let peers = tokio::spawn(app.clone().follow_peers());
    let stats = tokio::spawn(stats_loop(app.clone()));
    let statements = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                tick.tick().await;
                app.statements.prune();
                let live = app.statements.ids();
                for pool in app.pools.all() {
                    pool.accepted.retain(&live);
                }
            }
        })
    };
    // Client tasks read the phase from an atomic and wait on their own nudge (see `shutdown`).
    let nudger = {
        let app = app.clone();
        let mut phase = app.shutdown.watch();
        tokio::spawn(async move {
            while phase.changed().await.is_ok() {
                app.cancels.wake_all();
            }
        })
    };
    let accept = tokio::spawn(crate::frontend::serve(app.clone(), listeners));
    let mut phase = app.shutdown.watch();
    crate::shutdown::reached(&mut phase, Phase::WaitForClients).await;
    tracing::info!("shutdown requested, no longer accepting clients");
    tokio::select! {
        _ = app.shutdown.clients_gone() => {}
        _ = crate::shutdown::reached(&mut phase, Phase::Immediate) => {
            // Clients close now, each told why (57P01) first: a short, bounded grace for that,
            // or a client queued or idle may see only its connection cut.
            app.cancels.wake_all();
            let _ = tokio::time::timeout(IMMEDIATE_GRACE, app.shutdown.clients_gone()).await;
        }
    }
    let _ = accept.await;
    janitor.abort();
    peers.abort();
    stats.abort();
    statements.abort();
    nudger.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    // The broadcaster may be aborted before it saw the last change.
    app.cancels.wake_all();
    tracing::info!("shutdown complete");
    Ok(())
}

/// How long an immediate shutdown waits for its clients to hear why they are closed.
const IMMEDIATE_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

fn spawn_signal_handlers(app: Arc<App>) -> std::io::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {
                    tracing::info!("got SIGINT, shutting down once servers are released");
                    app.shutdown.request(Phase::WaitForServers);
                }
                _ = term.recv() => {
                    tracing::info!("got SIGTERM, shutting down once clients have left");
                    app.shutdown.request(Phase::WaitForClients);
                }
                _ = quit.recv() => {
                    tracing::info!("got SIGQUIT, shutting down now");
                    app.shutdown.request(Phase::Immediate);
                }
                _ = usr1.recv() => {
                    tracing::info!("got SIGUSR1, pausing all databases");
                    app.pools.pause(None);
                }
                _ = usr2.recv() => {
                    tracing::info!("got SIGUSR2, resuming");
                    app.pools.resume(None);
                }
                _ = hup.recv() => {
                    if let Err(e) = app.reload() {
                        tracing::error!("reload failed, keeping the previous configuration: {e}");
                    }
                }
            }
        }
    });
    Ok(())
}

/// PgBouncer's periodic stats line, summed over pools.
async fn stats_loop(app: Arc<App>) {
    let Some(period) = app.config().general.stats_period else {
        return;
    };
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    let mut last = (0u64, 0u64, 0u64);
    loop {
        tick.tick().await;
        let (mut xacts, mut wait_us, mut checkouts) = (0u64, 0u64, 0u64);
        let micros = u64::try_from(period.as_micros()).unwrap_or(u64::MAX);
        for p in app.pools.all() {
            // SHOW STATS' averages describe the period just closed.
            p.stats.roll(micros);
            xacts += p.stats.xacts.load(Ordering::Relaxed);
            wait_us += p.stats.wait_us.load(Ordering::Relaxed);
            checkouts += p.stats.checkouts.load(Ordering::Relaxed);
        }
        let secs = period.as_secs_f64().max(0.001);
        let d_x = xacts - last.0;
        let d_c = checkouts - last.2;
        let avg_wait = (wait_us - last.1).checked_div(d_c).unwrap_or(0);
        tracing::info!(
            "stats: {:.0} xacts/s, {} clients, avg wait {} us",
            d_x as f64 / secs,
            app.shutdown.clients(),
            avg_wait
        );
        last = (xacts, wait_us, checkouts);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn workers_default_to_one_per_core_but_one_on_small_machines() {
        use super::worker_count;
        assert_eq!(worker_count(0, 1), 1);
        assert_eq!(worker_count(0, 2), 1);
        assert_eq!(worker_count(0, 8), 8);
        assert_eq!(worker_count(2, 2), 2, "a configured count is kept");
        assert_eq!(worker_count(3, 64), 3);
    }
}
