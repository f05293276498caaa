//! The Rust client's log events, in Python's `logging` under the logger
//! `resilient_worker_client` (and a child per Rust module, e.g.
//! `resilient_worker_client.worker_client.client`).
//!
//! An event is formatted where it happens and queued without blocking; one
//! thread of the package (`rwc-log`) takes the GIL and hands the queued
//! lines to `logging`. So no runtime thread waits for the GIL, and a thread
//! that logs while holding one of the client's locks never waits for the
//! application's thread (which may hold the GIL while it waits for that
//! lock). The queue is bounded: past 10,000 waiting lines new ones are
//! counted and the count is logged. The interpreter-exit hook hands over
//! what is left ([`flush`]).
//!
//! The level the Rust side emits is `info` by default; the environment
//! variable `RESILIENT_WORKER_CLIENT_LOG` (`error`, `warn`, `info`, `debug`,
//! `trace`, or `off`) changes it, read once at import. Python's own logger
//! levels filter further as usual.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Condvar, Mutex, OnceLock};

use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, SubscriberExt};

const QUEUE: usize = 10_000;

struct Line {
    /// Python's level number.
    level: u8,
    logger: String,
    message: String,
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<Line>,
    dropped: u64,
    /// The log thread is handing lines to Python.
    busy: bool,
    /// The interpreter is exiting: [`flush`] took the last lines; nothing
    /// attaches to Python any more (on CPython before 3.13 attaching
    /// during finalization ends the thread, unwinding through Rust).
    closing: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    idle: Condvar,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

fn shared() -> &'static Shared {
    SHARED.get_or_init(Shared::default)
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Queue> {
    shared.queue.lock().unwrap_or_else(|p| p.into_inner())
}

struct ToPython;

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
        let shared = shared();
        let mut queue = lock(shared);
        if queue.closing {
            return;
        }
        if queue.lines.len() >= QUEUE {
            queue.dropped += 1;
            return;
        }
        queue.lines.push_back(Line { level, logger, message: fields.line });
        shared.ready.notify_one();
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

/// Hands `lines` (and a count of dropped ones) to `logging`.
fn emit(py: Python<'_>, lines: Vec<Line>, dropped: u64) {
    let log = |level: u8, logger: &str, message: &str| -> PyResult<()> {
        let logging = py.import("logging")?;
        logging.call_method1("getLogger", (logger,))?.call_method1("log", (level, message))?;
        Ok(())
    };
    if dropped > 0 {
        let _ = log(30, "resilient_worker_client", &format!("{dropped} log lines were dropped (queue full)"));
    }
    for line in lines {
        let _ = log(line.level, &line.logger, &line.message);
    }
}

/// Installs the bridge as the process's tracing subscriber, unless the
/// process already has one (an application embedding Rust of its own).
pub(crate) fn install() {
    let level = level_from_env();
    let targets = Targets::new()
        .with_target("worker_client", level)
        .with_target("resilience", level)
        .with_target("resilient_worker_client", level);
    let subscriber = tracing_subscriber::registry().with(ToPython.with_filter(targets));
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return;
    }
    let spawned = std::thread::Builder::new().name("rwc-log".into()).spawn(|| {
        let shared = shared();
        loop {
            let (lines, dropped) = {
                let mut queue = lock(shared);
                while queue.closing || (queue.lines.is_empty() && queue.dropped == 0) {
                    queue = shared.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
                queue.busy = true;
                (queue.lines.drain(..).collect::<Vec<_>>(), std::mem::take(&mut queue.dropped))
            };
            // Never after `flush` (`closing`), so never during finalization.
            Python::try_attach(|py| emit(py, lines, dropped));
            lock(shared).busy = false;
            shared.idle.notify_all();
        }
    });
    if let Err(e) = spawned {
        // No thread, no bridge: say so once, on stderr.
        std::eprintln!("resilient_worker_client: cannot start the log thread ({e}); Rust log lines are dropped");
    }
}

/// At interpreter exit: takes the queued lines and stops the log thread
/// from attaching again, lets it finish the batch it holds (at most a
/// second, so the lines stay in order), then hands the rest to `logging`
/// on the calling thread (the exit hook's). Later lines are dropped.
pub(crate) fn flush(py: Python<'_>) {
    let Some(shared) = SHARED.get() else { return };
    let (lines, dropped) = {
        let mut queue = lock(shared);
        queue.closing = true;
        (queue.lines.drain(..).collect::<Vec<_>>(), std::mem::take(&mut queue.dropped))
    };
    py.detach(|| {
        let queue = lock(shared);
        let _ = shared.idle.wait_timeout_while(queue, std::time::Duration::from_secs(1), |q| q.busy);
    });
    emit(py, lines, dropped);
}
