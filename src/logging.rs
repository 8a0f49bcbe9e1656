//! Log lines in PgBouncer's shape (`2026-01-01 10:00:00.000 UTC [pid] LOG message`) or JSON.

use crate::config::LogFormat;
use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// PgBouncer's text line: time, pid, level word, the client's span where there is one (PgBouncer
/// names the client there too), then the message and any structured fields.
#[derive(Debug, Default)]
pub struct PgBouncerFormat;

impl<S, N> FormatEvent<S, N> for PgBouncerFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = chrono::Utc::now();
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARNING",
            Level::INFO => "LOG",
            Level::DEBUG | Level::TRACE => "DEBUG",
        };
        write!(
            writer,
            "{} UTC [{}] {} ",
            now.format("%Y-%m-%d %H:%M:%S%.3f"),
            std::process::id(),
            level
        )?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{fields}: ")?;
                    }
                }
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Where log lines go and how many there are (the binary's command line and `logfile`).
#[derive(Debug, Default)]
pub struct Output<'a> {
    /// Appended to, in addition to stderr unless `quiet`.
    pub logfile: Option<&'a std::path::Path>,
    /// Nothing on stderr (`-q`, and a daemon, whose stderr is gone).
    pub quiet: bool,
    /// `-v` once for debug lines, twice for trace lines.
    pub verbosity: u8,
}

/// Installs the global subscriber (the binary's edge; tests don't call this). `RUST_LOG` overrides
/// the level, which is `info`, or what `-v` asks for.
pub fn init(format: LogFormat, out: &Output<'_>) -> std::io::Result<()> {
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
    let level = match out.verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let file = match out.logfile {
        Some(path) => Some(std::sync::Arc::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )),
        None => None,
    };
    let writer = match (file, out.quiet) {
        (Some(f), true) => BoxMakeWriter::new(f),
        (Some(f), false) => BoxMakeWriter::new(std::io::stderr.and(f)),
        (None, true) => BoxMakeWriter::new(std::io::sink),
        (None, false) => BoxMakeWriter::new(std::io::stderr),
    };
    // Colour codes only on a terminal: a log file or journald must get plain PgBouncer lines.
    let ansi =
        out.logfile.is_none() && !out.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.event_format(PgBouncerFormat).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
    Ok(())
}
