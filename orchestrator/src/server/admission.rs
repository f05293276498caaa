//! Admission: what a request must show before it may use the orchestrator,
//! and what it is told when it may not.
//!
//! In order, for every request:
//!
//! 1. **Its body must arrive** within `request_receive_timeout`, else
//!    DEADLINE_EXCEEDED: for a unary call (every call but reflection's
//!    stream) one whole message and then the end of the body, for a stream
//!    its first message. Until then the request holds no concurrency permit,
//!    so streams that send HEADERS and nothing else, or a message but never
//!    the end, cannot starve anyone; the per-connection stream limit bounds
//!    how many such requests one connection can park, and one byte budget
//!    bounds what they buffer.
//! 2. **The message is checked from its gRPC frame header** before it is
//!    read whole: a compression flag other than 0 (or 1 with
//!    `grpc-encoding`) is INVALID_ARGUMENT, larger than `max_message_bytes`
//!    is RESOURCE_EXHAUSTED; a request with no message, a body that ends
//!    inside the message or a unary call with more than one message is
//!    INVALID_ARGUMENT. (A message that arrives whole but does not decode is
//!    INVALID_ARGUMENT from the codec, `orchestrator_proto::codec`.)
//! 3. **A permit** from its pool: worker calls and admin/reflection calls
//!    have separate pools, health checks take none, so health and admin reads
//!    are answered while worker calls are shed. No connection may hold more
//!    than `max_connection_share` of a pool. A request that gets no permit is
//!    answered at once with UNAVAILABLE, ErrorInfo reason `OVERLOADED` and
//!    `grpc-retry-pushback-ms`, instead of queueing (memory stays bounded).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;

use super::incoming::{ConnInfo, ConnState};

/// Milliseconds a shed client is asked to wait.
pub(crate) const PUSHBACK_MS: u64 = 250;

/// The gRPC length-prefixed message header: a compression flag, then the
/// length as a big-endian u32.
const FRAME_HEADER: usize = 5;

/// Which pool a request draws its permit from, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// `grpc.health.v1.Health`: no permit.
    Health,
    /// `orchestrator.v1.WorkerService`.
    Worker,
    /// Everything else: the admin service, reflection, unknown paths.
    Admin,
}

impl Class {
    fn of(path: &str) -> Self {
        if path.starts_with("/grpc.health.v1.Health/") {
            Class::Health
        } else if path.starts_with("/orchestrator.v1.WorkerService/") {
            Class::Worker
        } else {
            Class::Admin
        }
    }

    /// Index into `ConnState::permits` and `Admission::pools`.
    fn pool(self) -> Option<usize> {
        match self {
            Class::Health => None,
            Class::Worker => Some(0),
            Class::Admin => Some(1),
        }
    }
}

/// One pool of concurrency permits.
#[derive(Debug)]
struct Pool {
    name: &'static str,
    permits: Arc<Semaphore>,
    size: usize,
    /// Most permits one connection may hold.
    per_connection: usize,
}

impl Pool {
    fn new(name: &'static str, size: usize, share: f64) -> Self {
        let size = size.max(1);
        // Rounded down, at least one: a connection can always make progress.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let per_connection = ((size as f64 * share).floor() as usize).clamp(1, size);
        Self { name, permits: Arc::new(Semaphore::new(size)), size, per_connection }
    }
}

/// The limits the admission layer enforces.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Worker calls handled at once.
    pub(crate) max_concurrent_requests: usize,
    /// Admin and reflection calls handled at once.
    pub(crate) max_concurrent_admin_requests: usize,
    /// Share of a pool one connection may hold, in (0, 1].
    pub(crate) max_connection_share: f64,
    /// Largest request message, bytes.
    pub(crate) max_message_bytes: usize,
    /// How long a request's first message may take to arrive.
    pub(crate) request_receive_timeout: Duration,
    /// Counts shed calls (metrics on).
    pub(crate) shed: Option<prometheus_client::metrics::counter::Counter>,
}

#[derive(Debug)]
struct Shared {
    pools: [Pool; 2],
    limits: Limits,
    /// Rate limit for the shedding warning: the last one's second.
    last_shed_log: AtomicU64,
    started: std::time::Instant,
    /// KiB of request bytes buffered by calls being received or handled:
    /// [`BUFFER_BUDGET_KIB`].
    buffer_budget: Arc<Semaphore>,
}

/// Request bytes all calls together may hold in buffers (256 MiB): a peer
/// that sends large messages slowly on many streams cannot exhaust memory
/// before any permit is taken. Beyond it, calls are shed (OVERLOADED).
const BUFFER_BUDGET_KIB: usize = 256 * 1024;

/// The tower layer; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct AdmissionLayer {
    shared: Arc<Shared>,
}

impl AdmissionLayer {
    pub(crate) fn new(limits: Limits) -> Self {
        // At least four of the largest messages.
        let budget_kib = BUFFER_BUDGET_KIB.max(limits.max_message_bytes.div_ceil(1024).saturating_mul(4));
        let pools = [
            Pool::new("worker", limits.max_concurrent_requests, limits.max_connection_share),
            Pool::new("admin", limits.max_concurrent_admin_requests, limits.max_connection_share),
        ];
        Self {
            shared: Arc::new(Shared {
                pools,
                limits,
                last_shed_log: AtomicU64::new(u64::MAX),
                started: std::time::Instant::now(),
                // At least four of the largest messages.
                buffer_budget: Arc::new(Semaphore::new(budget_kib)),
            }),
        }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission { inner, shared: Arc::clone(&self.shared) }
    }
}

/// The service [`AdmissionLayer`] makes.
#[derive(Debug, Clone)]
pub(crate) struct Admission<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Admission<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The ready clone goes into the future; a fresh clone stays (tower's
        // rule for services called from a future).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        Box::pin(admit(shared, inner, request))
    }
}

/// A request on the connection: counted while it is in flight, so the
/// connection is not idle; the count drops when the response body ends.
struct Activity(Option<Arc<ConnState>>);

impl Activity {
    fn begin(conn: Option<&ConnInfo>) -> Self {
        let state = conn.map(|c| Arc::clone(&c.state));
        if let Some(s) = &state {
            s.requests.fetch_add(1, Ordering::AcqRel);
            s.touch();
        }
        Self(state)
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.touch();
            s.requests.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A permit of a pool and the connection's count of it.
struct Permit {
    _permit: OwnedSemaphorePermit,
    conn: Option<(Arc<ConnState>, usize)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some((state, pool)) = &self.conn {
            state.permits[*pool].fetch_sub(1, Ordering::AcqRel);
        }
    }
}

async fn admit<S>(
    shared: Arc<Shared>,
    mut inner: S,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, S::Error>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
{
    let class = Class::of(request.uri().path());
    let conn = super::incoming::conn_info(request.extensions()).cloned();
    let activity = Activity::begin(conn.as_ref());
    let (parts, body) = request.into_parts();
    let limits = &shared.limits;
    let framing = Framing {
        max_message_bytes: limits.max_message_bytes,
        unary: !parts.uri.path().starts_with("/grpc.reflection."),
        encoding: parts.headers.contains_key("grpc-encoding"),
        budget: &shared.buffer_budget,
    };
    let (arrived, buffered) = match tokio::time::timeout(limits.request_receive_timeout, receive(body, framing)).await {
        Ok(Ok(arrived)) => arrived,
        Ok(Err(status)) => {
            if status.code() == tonic::Code::Unavailable
                && let Some(shed) = &limits.shed
            {
                shed.inc();
            }
            return Ok(respond(status, activity));
        }
        Err(_) => {
            let status = Status::deadline_exceeded(format!(
                "the request message did not arrive within {:?} (--request-receive-timeout)",
                limits.request_receive_timeout
            ));
            tracing::debug!(path = %parts.uri.path(), remote = ?conn.as_ref().and_then(|c| c.remote), "{}", status.message());
            return Ok(respond(status, activity));
        }
    };
    let permit = match class.pool().map(|pool| acquire(&shared, pool, conn.as_ref())).transpose() {
        Ok(permit) => permit,
        Err(why) => {
            log_shed(&shared, &why);
            return Ok(respond(overloaded(&why), activity));
        }
    };
    let request = http::Request::from_parts(parts, Body::new(arrived));
    let response = inner.call(request).await;
    drop(permit);
    drop(buffered);
    Ok(response?.map(|body| Body::new(WithActivity { inner: body, _activity: activity })))
}

/// A permit, or why there is none.
fn acquire(shared: &Shared, pool: usize, conn: Option<&ConnInfo>) -> Result<Permit, String> {
    let p = &shared.pools[pool];
    let conn_state = conn.map(|c| Arc::clone(&c.state));
    if let Some(state) = &conn_state {
        let held = state.permits[pool].fetch_add(1, Ordering::AcqRel);
        if held >= p.per_connection {
            state.permits[pool].fetch_sub(1, Ordering::AcqRel);
            return Err(format!(
                "this connection already has {held} {} call(s) in progress, its share of the {} permits \
                 (--max-connection-share)",
                p.name, p.size
            ));
        }
    }
    match Arc::clone(&p.permits).try_acquire_owned() {
        Ok(permit) => Ok(Permit { _permit: permit, conn: conn_state.map(|s| (s, pool)) }),
        Err(_) => {
            if let Some(state) = &conn_state {
                state.permits[pool].fetch_sub(1, Ordering::AcqRel);
            }
            Err(format!("all {} {} permits are taken", p.size, p.name))
        }
    }
}

/// One warning per second at most: under attack the log must stay useful.
fn log_shed(shared: &Shared, why: &str) {
    if let Some(shed) = &shared.limits.shed {
        shed.inc();
    }
    let second = shared.started.elapsed().as_secs();
    if shared.last_shed_log.swap(second, Ordering::Relaxed) != second {
        tracing::warn!("shedding requests: {why}");
    } else {
        tracing::debug!("shedding a request: {why}");
    }
}

fn respond(status: Status, activity: Activity) -> http::Response<Body> {
    drop(activity);
    status.into_http()
}

pub(crate) fn overloaded(why: &str) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let details = ErrorDetails::with_error_info(
        orchestrator_proto::reason::OVERLOADED,
        orchestrator_proto::ERROR_DOMAIN,
        std::collections::HashMap::new(),
    );
    let mut status = Status::with_error_details(
        tonic::Code::Unavailable,
        format!("the orchestrator is overloaded ({why}); retry after the pushback"),
        details,
    );
    status
        .metadata_mut()
        .insert(orchestrator_proto::RETRY_PUSHBACK_HEADER, tonic::metadata::MetadataValue::from(PUSHBACK_MS));
    status
}

/// How the body of a call is read before it is admitted.
struct Framing<'a> {
    max_message_bytes: usize,
    /// A unary call (everything but reflection's bidirectional stream):
    /// exactly one message, then the end of the body. Read whole, so that
    /// no admitted call waits on its peer any more.
    unary: bool,
    /// The request's `grpc-encoding`, if any.
    encoding: bool,
    /// The budget of bytes buffered by calls not yet admitted.
    budget: &'a Arc<Semaphore>,
}

/// Reads the body until its first gRPC message is whole (for a unary call:
/// until the body ends), checking the frame header on the way. Returns a
/// body that replays what was read, then the rest, and the share of the
/// buffer budget it holds.
async fn receive(mut body: Body, framing: Framing<'_>) -> Result<(Replay, Option<OwnedSemaphorePermit>), Status> {
    let mut buffered = BytesMut::new();
    let mut trailers = None;
    let mut ended = false;
    let mut reserved = None;
    loop {
        let mut whole = None;
        if buffered.len() >= FRAME_HEADER {
            let flag = buffered[0];
            if flag > 1 || (flag == 1 && !framing.encoding) {
                return Err(Status::invalid_argument(format!(
                    "bad message header: compression flag {flag} {}",
                    if flag > 1 { "(must be 0 or 1)" } else { "without a grpc-encoding header" }
                )));
            }
            let declared = u32::from_be_bytes([buffered[1], buffered[2], buffered[3], buffered[4]]) as usize;
            if declared > framing.max_message_bytes {
                return Err(Status::resource_exhausted(format!(
                    "the request message is {declared} bytes; this server accepts at most {} \
                     (--max-message-bytes): split the request",
                    framing.max_message_bytes
                )));
            }
            if reserved.is_none() {
                // Memory held before any permit is bounded too.
                let kib = u32::try_from((FRAME_HEADER + declared).div_ceil(1024)).unwrap_or(u32::MAX);
                match Arc::clone(framing.budget).try_acquire_many_owned(kib) {
                    Ok(permit) => reserved = Some(permit),
                    Err(_) => return Err(overloaded("the buffers for arriving requests are full")),
                }
            }
            whole = Some(FRAME_HEADER + declared);
        }
        if let Some(len) = whole
            && buffered.len() >= len
        {
            if !framing.unary {
                break;
            }
            if buffered.len() > len {
                return Err(Status::invalid_argument(
                    "a unary call carries exactly one message; more bytes followed it",
                ));
            }
            if ended {
                break;
            }
        } else if ended {
            return Err(match buffered.len() {
                0 => Status::invalid_argument("the request has no message"),
                n if n < FRAME_HEADER => {
                    Status::invalid_argument(format!("truncated request: {n} byte(s) of a 5-byte message header"))
                }
                n => Status::invalid_argument(format!(
                    "truncated request message: its header declares {} bytes, {} arrived",
                    u32::from_be_bytes([buffered[1], buffered[2], buffered[3], buffered[4]]),
                    n - FRAME_HEADER
                )),
            });
        }
        match body.frame().await {
            None => ended = true,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => buffered.extend_from_slice(&data),
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    ended = true;
                }
            },
            Some(Err(status)) => {
                return Err(Status::cancelled(format!("the request body failed: {}", status.message())));
            }
        }
    }
    Ok((Replay { buffered: Some(buffered.freeze()), trailers, rest: (!ended).then_some(body) }, reserved))
}

/// The request body after admission: the bytes read, then the rest.
struct Replay {
    buffered: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
    rest: Option<Body>,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(data) = self.buffered.take().filter(Buf::has_remaining) {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(rest) = self.rest.as_mut() {
            return Pin::new(rest).poll_frame(cx);
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.as_ref().is_none_or(|b| !b.has_remaining())
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
            && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered = self.buffered.as_ref().map_or(0, |b| b.len() as u64);
        let rest = self.rest.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + buffered);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}

/// A response body that keeps its request counted until it ends.
struct WithActivity {
    inner: Body,
    _activity: Activity,
}

impl http_body::Body for WithActivity {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
