//! The product's network seams, plugged into turmoil's simulated network:
//! the orchestrator accepts on a [`SimListener`], the worker client dials
//! through [`connector`] (the shape of turmoil's own gRPC example).

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use orchestrator::server::Listener;
use tonic::transport::{Channel, Endpoint, Uri};
use worker_client::connector::BoxError;

type Accepting = Pin<Box<dyn Future<Output = io::Result<(turmoil::net::TcpStream, SocketAddr)>> + Send>>;

/// A turmoil listener as the orchestrator's [`Listener`].
pub(crate) struct SimListener {
    listener: Arc<turmoil::net::TcpListener>,
    accepting: Option<Accepting>,
}

impl SimListener {
    /// Binds `port` on the current simulated host.
    pub(crate) async fn bind(port: u16) -> io::Result<Self> {
        let listener = turmoil::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await?;
        Ok(Self { listener: Arc::new(listener), accepting: None })
    }
}

impl Listener for SimListener {
    type Io = turmoil::net::TcpStream;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, SocketAddr)>> {
        let listener = Arc::clone(&self.listener);
        let accepting = self.accepting.get_or_insert_with(|| Box::pin(async move { listener.accept().await }));
        let accepted = ready!(accepting.as_mut().poll(cx));
        self.accepting = None;
        Poll::Ready(accepted)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// The worker client's connector on the simulated network, with the
/// settings of the default `TcpConnector` (connect timeout aside, which
/// follows the simulation's timings).
pub(crate) fn connector(
    connect_timeout: Duration,
) -> impl Fn(&str) -> Result<Channel, BoxError> + Send + Sync + 'static {
    move |uri: &str| {
        let endpoint = Endpoint::from_shared(uri.to_owned())?
            .connect_timeout(connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        Ok(endpoint.connect_with_connector_lazy(tower::service_fn(dial)))
    }
}

/// A channel with tonic's defaults (no keepalive), as an application that
/// does not use the worker client would make one.
pub(crate) fn plain_channel(uri: &'static str) -> Channel {
    Endpoint::from_static(uri).connect_with_connector_lazy(tower::service_fn(dial))
}

async fn dial(uri: Uri) -> io::Result<TokioIo<turmoil::net::TcpStream>> {
    let host = uri.host().unwrap_or_default().to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
    Ok(TokioIo::new(stream))
}
