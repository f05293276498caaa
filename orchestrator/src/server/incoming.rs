//! Accepting connections: back off when the process runs out of file
//! descriptors instead of spinning, and close connections that stay idle.
//!
//! Every accepted socket becomes a [`Conn`], whose [`ConnInfo`] tonic puts
//! in the extensions of each request on it; the admission layer
//! (`admission.rs`) counts the connection's requests and permits there.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TlsConnectInfo};

use crate::auth::Caller;

/// What the admission layer knows about one connection.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// When the connection was accepted.
    opened: Instant,
    /// Requests begun and not yet answered (awaiting their message included).
    pub(crate) requests: AtomicUsize,
    /// Concurrency permits held, per pool (see `admission::Class`).
    pub(crate) permits: [AtomicUsize; 2],
    /// Milliseconds after `opened` when the last request ended.
    last_active_ms: AtomicU64,
    /// Whom the TLS client certificate names (parsed at the first request
    /// that needs it, see `auth.rs`).
    pub(crate) peer: OnceLock<Result<Caller, &'static str>>,
}

impl ConnState {
    pub(crate) fn new() -> Self {
        Self {
            opened: Instant::now(),
            requests: AtomicUsize::new(0),
            permits: [AtomicUsize::new(0), AtomicUsize::new(0)],
            last_active_ms: AtomicU64::new(0),
            peer: OnceLock::new(),
        }
    }

    /// Marks activity now (a request began or ended).
    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last_active(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }
}

/// The request extension tonic adds for every request on a [`Conn`].
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The peer's address.
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) state: Arc<ConnState>,
}

/// The connection a request came on: tonic's extension is the
/// [`ConnInfo`] itself on plaintext, wrapped in [`TlsConnectInfo`] on TLS.
pub(crate) fn conn_info(extensions: &http::Extensions) -> Option<&ConnInfo> {
    extensions.get::<ConnInfo>().or_else(|| extensions.get::<TlsConnectInfo<ConnInfo>>().map(TlsConnectInfo::get_ref))
}

/// What the server accepts connections from: a TCP listener, or a
/// simulated network's (the simulation seam).
pub trait Listener: Send + Unpin + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Accepts the next connection, with the peer's address.
    ///
    /// # Errors
    ///
    /// The accept error; those that mean exhaustion (EMFILE, ENFILE,
    /// ENOBUFS, ENOMEM) make the server back off.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, SocketAddr)>>;

    /// The address it is bound to.
    ///
    /// # Errors
    ///
    /// The OS error.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, SocketAddr)>> {
        let accepted = ready!(TcpListener::poll_accept(self, cx));
        Poll::Ready(accepted.inspect(|(stream, _)| {
            let _ = stream.set_nodelay(true);
        }))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
}

/// An accepted connection that ends itself (EOF) after `idle_timeout` with
/// no request in flight.
#[derive(Debug)]
pub(crate) struct Conn<Io> {
    stream: Io,
    info: ConnInfo,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    closed: bool,
}

impl<Io> Conn<Io> {
    fn new(stream: Io, remote: SocketAddr, idle_timeout: Option<Duration>) -> Self {
        let state = Arc::new(ConnState::new());
        let idle = idle_timeout.map(|t| (t, Box::pin(tokio::time::sleep(t))));
        Self { stream, info: ConnInfo { remote: Some(remote), state }, idle, closed: false }
    }

    /// Whether the idle timer says the connection should end; arms the timer
    /// (registering the waker) otherwise.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((timeout, timer)) = self.idle.as_mut() else { return false };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let state = &self.info.state;
            let now = Instant::now();
            let deadline = if state.requests.load(Ordering::Acquire) > 0 {
                now + *timeout
            } else {
                state.last_active() + *timeout
            };
            if deadline <= now {
                tracing::debug!(remote = ?self.info.remote, ?timeout, "closing a connection idle for the idle timeout");
                return true;
            }
            timer.as_mut().reset(deadline);
        }
    }
}

impl<Io> Connected for Conn<Io> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Conn<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.closed || self.idle_expired(cx) {
            // EOF: hyper ends the connection and drops the socket.
            self.closed = true;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Conn<Io> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// First wait after an accept fails for lack of resources; doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The stream of accepted connections tonic serves.
#[derive(Debug)]
pub(crate) struct Incoming<L> {
    listener: L,
    idle_timeout: Option<Duration>,
    backoff: Option<Pin<Box<Sleep>>>,
    delay: Duration,
    /// Failed accepts in the current spell of resource exhaustion.
    exhausted: u64,
    exhausted_since: Option<Instant>,
}

impl<L> Incoming<L> {
    pub(crate) fn new(listener: L, idle_timeout: Option<Duration>) -> Self {
        Self { listener, idle_timeout, backoff: None, delay: FIRST_BACKOFF, exhausted: 0, exhausted_since: None }
    }
}

/// Errors that say the process or the system is out of something (file
/// descriptors, buffers, memory): accepting again at once would spin.
fn is_exhaustion(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        use rustix::io::Errno;
        let errno = Errno::from_io_error(e);
        matches!(errno, Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM))
    }
    #[cfg(not(unix))]
    {
        e.kind() == io::ErrorKind::OutOfMemory
    }
}

impl<L: Listener> tokio_stream::Stream for Incoming<L> {
    type Item = io::Result<Conn<L::Io>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(backoff) = this.backoff.as_mut() {
                ready!(backoff.as_mut().poll(cx));
                this.backoff = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((stream, remote))) => {
                    if let Some(since) = this.exhausted_since.take() {
                        tracing::info!(
                            failed_accepts = this.exhausted,
                            after = ?since.elapsed(),
                            "accepting connections again"
                        );
                        this.exhausted = 0;
                        this.delay = FIRST_BACKOFF;
                    }
                    return Poll::Ready(Some(Ok(Conn::new(stream, remote, this.idle_timeout))));
                }
                Poll::Ready(Err(e)) if is_exhaustion(&e) => {
                    if this.exhausted_since.is_none() {
                        this.exhausted_since = Some(Instant::now());
                        tracing::warn!(
                            error = %e,
                            "cannot accept connections: out of resources (file descriptors? see `ulimit -n`); \
                             retrying with backoff up to {MAX_BACKOFF:?}, pending connections wait in the backlog"
                        );
                    }
                    this.exhausted += 1;
                    this.backoff = Some(Box::pin(tokio::time::sleep(this.delay)));
                    this.delay = (this.delay * 2).min(MAX_BACKOFF);
                }
                Poll::Ready(Err(e)) => {
                    // The peer gave up before we accepted (ECONNABORTED and
                    // the like): nothing to wait for.
                    tracing::debug!(error = %e, "accept failed; continuing");
                }
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit, as many servers
/// do, and returns the limit in force. Each worker holds one connection (one
/// file descriptor); see the README's "File descriptors".
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
            && current < maximum
        {
            let _ = setrlimit(Resource::Nofile, Rlimit { current: Some(maximum), maximum: Some(maximum) });
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}
