//! The Rust client's log events, in Python's `logging` under the logger
//! `resilient_worker_client` (and a child per Rust module, e.g.
//! `resilient_worker_client.worker_client.client`).
//!
//! An event is formatted where it happens and queued without blocking; a
//! task on the shared runtime takes the GIL and hands it to `logging`. So a
//! thread that logs while holding one of the client's locks never waits for
//! the GIL (which the application's thread may hold while it waits for
//! that lock). The queue is bounded: past 10,000 waiting events new ones
//! are counted and the count is logged once there is room.
//!
//! The level the Rust side emits is `info` by default; the environment
//! variable `RESILIENT_WORKER_CLIENT_LOG` (`error`, `warn`, `info`, `debug`,
//! `trace`, or `off`) changes it, read once at import. Python's own logger
//! level filters further as usual.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, SubscriberExt};

const QUEUE: usize = 10_000;

static DROPPED: AtomicU64 = AtomicU64::new(0);

struct Line {
    /// Python's level number.
    level: u8,
    logger: String,
    message: String,
}

struct ToPython {
    queue: mpsc::Sender<Line>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ToPython {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let level = match *meta.level() {
            tracing::Level::ERROR => 40,
            tracing::Level::WARN => 30,
            tracing::Level::INFO => 20,
            tracing::Level::DEBUG => 10,
            tracing::Level::TRACE => 5,
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let target = meta.target();
        let logger = if target.starts_with("resilient_worker_client") {
            target.replace("::", ".")
        } else {
            format!("resilient_worker_client.{}", target.replace("::", "."))
        };
        let line = Line { level, logger, message: fields.line };
        if self.queue.try_send(line).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `message key=value key=value`.
#[derive(Default)]
struct Fields {
    line: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.line);
            let _ = write!(self.line, "{value:?}");
            if !rest.is_empty() {
                self.line.push(' ');
                self.line.push_str(&rest);
            }
        } else {
            if !self.line.is_empty() {
                self.line.push(' ');
            }
            let _ = write!(self.line, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            if !self.line.is_empty() {
                self.line.push(' ');
            }
            let _ = write!(self.line, "{}={value}", field.name());
        }
    }
}

fn level_from_env() -> LevelFilter {
    match std::env::var("RESILIENT_WORKER_CLIENT_LOG").ok().as_deref().map(str::trim) {
        Some("off") => LevelFilter::OFF,
        Some("error") => LevelFilter::ERROR,
        Some("warn" | "warning") => LevelFilter::WARN,
        Some("debug") => LevelFilter::DEBUG,
        Some("trace") => LevelFilter::TRACE,
        _ => LevelFilter::INFO,
    }
}

/// Installs the bridge as the process's tracing subscriber, unless the
/// process already has one (an application embedding Rust of its own).
pub(crate) fn install() {
    let (queue, mut lines) = mpsc::channel::<Line>(QUEUE);
    let level = level_from_env();
    let targets = Targets::new()
        .with_target("worker_client", level)
        .with_target("resilience", level)
        .with_target("resilient_worker_client", level);
    let subscriber = tracing_subscriber::registry().with(ToPython { queue }.with_filter(targets));
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return;
    }
    crate::runtime().spawn(async move {
        while let Some(line) = lines.recv().await {
            let dropped = DROPPED.swap(0, Ordering::Relaxed);
            // Not while the interpreter is finalizing: the line is lost.
            Python::try_attach(|py| {
                let emit = |level: u8, logger: &str, message: &str| -> PyResult<()> {
                    let logging = py.import("logging")?;
                    logging.call_method1("getLogger", (logger,))?.call_method1("log", (level, message))?;
                    Ok(())
                };
                if dropped > 0 {
                    let _ = emit(30, "resilient_worker_client", &format!("{dropped} log events were dropped"));
                }
                let _ = emit(line.level, &line.logger, &line.message);
            });
        }
    });
}
