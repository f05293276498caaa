//! The HTTP listener, separate from gRPC so that it can stay internal while
//! gRPC is public behind TLS (`serve --http-listen`, default
//! 127.0.0.1:50052):
//!
//! | path | what | auth |
//! |---|---|---|
//! | `/` | the live dashboard (one self-contained page) | open (it holds no data) |
//! | `/api/v1/status` | the fleet as JSON (`docs/HTTP-API.md`) | admin token, with authentication on |
//! | `/metrics` | Prometheus text format (`crate::metrics`) | open |
//! | `/healthz` | 200 while the process runs | open |
//! | `/readyz` | 200 while this process serves the fleet; 503 on a follower or once stopping | open |
//!
//! The listener lives as long as the process: a replica keeps it across
//! its terms, and the [`Fleet`] it reads from says which engine (if any)
//! is being served.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::auth::Authenticator;
use crate::metrics::{Fleet, Metrics, Role, reason_label};

/// The dashboard page.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The dashboard's Content-Security-Policy: nothing but requests to its
/// own origin, and no script or style sheet but the page's own, by their
/// SHA-256 (an injected script or style would not apply, whatever it came
/// through; the page sets styles through the CSSOM only).
static CSP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let hash = |open: &str, close: &str| {
        let inner = DASHBOARD.split_once(open).and_then(|(_, rest)| rest.split_once(close)).map_or("", |(x, _)| x);
        // Browsers hash the element's text with line ends as LF (a CRLF
        // checkout must not change the hash).
        let inner = inner.replace("\r\n", "\n").replace('\r', "\n");
        base64(ring::digest::digest(&ring::digest::SHA256, inner.as_bytes()).as_ref())
    };
    format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash("<script>", "</script>"),
        hash("<style>", "</style>")
    )
});

/// Standard base64, padded.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Workers `/api/v1/status` lists by default, and at most.
pub const DEFAULT_WORKERS: usize = 1000;
/// The most workers one status answer lists.
pub const MAX_WORKERS: usize = 10_000;
/// Unassigned and revoking streams listed (each).
pub const LISTED_STREAMS: usize = 100;
/// Audit events listed, newest first.
pub const LISTED_EVENTS: usize = 50;

/// How long open HTTP connections get once shutdown begins.
const DRAIN: Duration = Duration::from_secs(2);

/// What the HTTP listener serves from; one per process.
#[derive(Debug)]
pub struct Site {
    metrics: Option<Arc<Metrics>>,
    fleet: Arc<Fleet>,
    auth: Arc<Authenticator>,
    /// Served on a loopback address: without authentication, `/api/*`
    /// answers only requests whose `Host` names this machine (a web page
    /// elsewhere cannot read it through DNS rebinding).
    loopback: std::sync::atomic::AtomicBool,
}

impl Site {
    /// The site of a process: metrics collected if `metrics`, `/api/*`
    /// checked by `auth`.
    pub fn new(metrics: bool, auth: Arc<Authenticator>) -> Arc<Self> {
        let fleet = Arc::new(Fleet::default());
        let metrics = metrics.then(|| Arc::new(Metrics::new(Arc::clone(&fleet))));
        Arc::new(Self { metrics, fleet, auth, loopback: std::sync::atomic::AtomicBool::new(false) })
    }

    /// Says where the listener is bound (see [`Site`]'s DNS rebinding
    /// check).
    pub fn bound_to(&self, addr: SocketAddr) {
        self.loopback.store(addr.ip().is_loopback(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The metrics, unless collection is off.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// What is being served.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }
}

/// Connections the listener serves at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 256;
/// A connection is closed (gracefully) after this long, however busy: a
/// client that stops reading cannot hold a connection slot for ever.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// How long a request's headers may take to arrive (slow clients are cut).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the site on `listener` until `shutdown` fires; open connections
/// then get two seconds to finish. At most 256 connections at once, each
/// closed after a minute,
/// (the listener shares the process's file descriptors with gRPC), each
/// request's headers within 10 s.
///
/// # Errors
///
/// None today: accept errors are logged and retried after a pause.
pub async fn serve(
    listener: tokio::net::TcpListener,
    site: Arc<Site>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(site);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: back off, as gRPC does.
                    tracing::warn!("HTTP listener: cannot accept ({e}); retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!("HTTP listener: {MAX_CONNECTIONS} connections open; closing a new one");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn).await;
                }
                () = tokio::time::sleep(MAX_CONNECTION_AGE) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn).await;
                }
            }
        });
        // Reap finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
    }
    // The port is free at once; open connections get the drain.
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(DRAIN, async { while connections.join_next().await.is_some() {} }).await;
    Ok(())
}

/// The routes (for tests that serve them on a listener of their own).
pub fn router(site: Arc<Site>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .fallback(not_found)
        .with_state(site)
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_str(&CSP).unwrap_or(HeaderValue::from_static("default-src 'none'")),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such path: try / (dashboard), /api/v1/status, /metrics, /healthz or /readyz")
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], axum::Json(json!({ "error": message })))
        .into_response()
}

async fn readyz(State(site): State<Arc<Site>>) -> Response {
    let (current, role) = site.fleet.get();
    match (current, role) {
        (_, Role::Follower { leader }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: this replica is a follower (leader: {})\n",
                leader.as_deref().unwrap_or("not known yet")
            ),
        )
            .into_response(),
        (Some(o), _) if !o.stopped() => "ready\n".into_response(),
        (Some(_), _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: stopping\n").into_response(),
        (None, _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: not serving (loading the state, or stopping)\n")
            .into_response(),
    }
}

async fn metrics(State(site): State<Arc<Site>>) -> Response {
    let Some(metrics) = &site.metrics else {
        return (StatusCode::NOT_FOUND, "metrics are off (--metrics=false)\n").into_response();
    };
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "could not format the metrics\n").into_response(),
    }
}

/// `?workers=N&events=M`: how many workers and audit events to list.
fn list_params(query: Option<&str>) -> Result<(usize, usize), String> {
    let (mut workers, mut events) = (DEFAULT_WORKERS, LISTED_EVENTS);
    let number = |key: &str, value: &str, max: usize| {
        value
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| format!("{key}: must be a number from 1 to {max}, not {value:?}"))
    };
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "workers" => workers = number(key, value, MAX_WORKERS)?,
            "events" => events = number(key, value, crate::store::MAX_EVENTS)?,
            _ => return Err(format!("unknown query parameter {key:?}: the parameters are workers=N and events=N")),
        }
    }
    Ok((workers, events))
}

/// Whether a `Host` header names this machine: `localhost` or a loopback
/// address, with or without a port.
fn names_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => {
            host.rsplit_once(':').map_or(host, |(name, port)| if port.parse::<u16>().is_ok() { name } else { host })
        }
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn status(State(site): State<Arc<Site>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    if let Err((code, message)) =
        site.auth.authorize_http_admin(headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes))
    {
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::UNAUTHORIZED);
        let mut response = error(code, message);
        if code == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        return response;
    }
    if !site.auth.enabled()
        && site.loopback.load(std::sync::atomic::Ordering::Relaxed)
        && !headers.get(header::HOST).and_then(|h| h.to_str().ok()).is_some_and(names_loopback)
    {
        return error(
            StatusCode::FORBIDDEN,
            "the Host header names neither localhost nor a loopback address: refused, as a page on another site \
             could read this API through DNS rebinding; open http://127.0.0.1:<port>/ (or serve an auth file)",
        );
    }
    let (workers, events) = match list_params(query.as_deref()) {
        Ok(n) => n,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let (current, role) = site.fleet.get();
    let mut doc = json!({
        "schema": "orchestrator.status.v1",
        "version": env!("CARGO_PKG_VERSION"),
        "role": match &role {
            Role::Standalone => "standalone",
            Role::Leader => "leader",
            Role::Follower { .. } => "follower",
        },
        "leader": match &role {
            Role::Follower { leader } => json!(leader),
            _ => Value::Null,
        },
        "ready": false,
        "server_time_ms": crate::service::unix_now_ms(),
        "cluster": Value::Null,
        "workers_total": 0,
        "workers_truncated": false,
        "workers": [],
        "unassigned": { "count": 0, "first": [] },
        "revoking": { "count": 0, "first": [] },
        "events": [],
        "events_error": Value::Null,
    });
    let Some(o) = current.filter(|_| !matches!(role, Role::Follower { .. })) else {
        return json_response(doc);
    };
    let view = match o.fleet_view(workers, LISTED_STREAMS) {
        Ok(view) => view,
        Err(status) => return error(StatusCode::SERVICE_UNAVAILABLE, status.message()),
    };
    let s = &view.overview.status;
    doc["ready"] = json!(!o.stopped());
    doc["server_time_ms"] = json!(view.server_time_ms);
    doc["cluster"] = json!({
        "live_workers": s.live_workers,
        "total_streams": s.total_streams,
        "assigned_streams": s.assigned_streams,
        "unassigned_streams": s.total_streams.saturating_sub(s.assigned_streams),
        "revoking_streams": view.overview.leases_revoking,
        "total_capacity": s.total_capacity,
        "rebalancing_paused": s.rebalancing_paused,
        "brake_engaged": s.brake_engaged,
        "grace_ends_at_ms": view.grace_ends_at_ms,
    });
    doc["workers_total"] = json!(view.workers_total);
    doc["workers_truncated"] = json!(view.workers.len() < view.workers_total);
    doc["workers"] = view
        .workers
        .iter()
        .map(|(w, version, last_heartbeat_ms)| {
            json!({
                "server_id": w.server_id,
                "state": w.state.as_str(),
                "worker_epoch": w.worker_epoch,
                "max_streams": w.max_streams,
                "assigned_streams": w.owned,
                "revoking_streams": w.revoking,
                "last_heartbeat_ms": last_heartbeat_ms,
                "client_version": version,
            })
        })
        .collect();
    doc["unassigned"] = json!({
        "count": s.total_streams.saturating_sub(s.assigned_streams),
        "first": view.overview.unassigned_first,
    });
    doc["revoking"] = json!({
        "count": view.overview.leases_revoking,
        "first": view.overview.revoking_first.iter().map(|r| json!({
            "stream_id": r.lease.stream_id,
            "server_id": r.server_id,
            "lease_epoch": r.lease.lease_epoch,
            "reason": reason_label(r.reason),
        })).collect::<Vec<_>>(),
    });
    match o.recent_events(events).await {
        Ok(events) => {
            doc["events"] = events
                .into_iter()
                .map(|e| {
                    json!({
                        "id": e.id,
                        "at_ms": e.at_ms,
                        "event": e.event,
                        "server_id": e.server_id,
                        "stream_id": e.stream_id,
                        "lease_epoch": e.lease_epoch,
                        "detail": e.detail,
                    })
                })
                .collect();
        }
        Err(e) => doc["events_error"] = json!(e.to_string()),
    }
    json_response(doc)
}

fn json_response(doc: Value) -> Response {
    ([(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], axum::Json(doc)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameters_are_checked_and_named() {
        assert_eq!(list_params(None), Ok((DEFAULT_WORKERS, LISTED_EVENTS)));
        assert_eq!(list_params(Some("workers=5&events=200")), Ok((5, 200)));
        assert_eq!(list_params(Some("")), Ok((DEFAULT_WORKERS, LISTED_EVENTS)));
        for bad in ["workers=0", "workers=x", "workers=10001", "workers="] {
            assert!(list_params(Some(bad)).unwrap_err().starts_with("workers:"), "{bad}");
        }
        assert!(list_params(Some("events=1001")).unwrap_err().starts_with("events:"));
        assert!(list_params(Some("limit=3")).unwrap_err().contains("\"limit\""));
    }

    #[test]
    fn base64_and_the_script_hash() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert!(CSP.contains("script-src 'sha256-") && CSP.contains("style-src 'sha256-"), "{}", *CSP);
        assert!(!CSP.contains("unsafe"), "{}", *CSP);
        assert_eq!(DASHBOARD.matches("<script").count(), 1, "the page has one inline script, the one hashed");
        assert_eq!(DASHBOARD.matches("<style").count(), 1, "the page has one style sheet, the one hashed");
        assert!(DASHBOARD.contains("<script>") && DASHBOARD.contains("<style>"), "bare tags: the hash finds them");
        assert!(!DASHBOARD.contains("style=\""), "no style attribute: the CSP refuses them");
    }

    #[test]
    fn only_hosts_naming_this_machine_pass_the_rebinding_check() {
        for ok in
            ["localhost", "LOCALHOST:50052", "127.0.0.1", "127.0.0.1:50052", "127.1.2.3:80", "[::1]:50052", "[::1]"]
        {
            assert!(names_loopback(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:50052", "10.0.0.2:50052", "localhost.evil.example", "", "[::2]:1"] {
            assert!(!names_loopback(bad), "{bad}");
        }
    }
}
