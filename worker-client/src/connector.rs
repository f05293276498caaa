//! The connection seam: how the client reaches the orchestrator.
//!
//! Everything that changes *how* the worker client talks to the orchestrator
//! plugs in here, once: the default TCP connection with HTTP/2 and TCP
//! keepalive ([`TcpConnector`], with [`ClientTls`] for TLS), a Unix socket or an HTTP proxy, a
//! network simulation. A [`Connector`] makes a [`Channel`] for an endpoint
//! URI; the client asks for a fresh one whenever a call fails for want of an
//! answer (refused, reset, timed out), so a connection stuck on a dead link
//! is never reused.
//!
//! ```no_run
//! use std::time::Duration;
//! use worker_client::{ResilientWorkerClient, TcpConnector};
//!
//! # async fn run() -> Result<(), worker_client::Error> {
//! // The default, with other keepalive settings:
//! let tcp = TcpConnector::default().http2_keepalive(Duration::from_secs(20), Duration::from_secs(10));
//! let client = ResilientWorkerClient::builder("http://orchestrator:50051", "worker-01")
//!     .connector(tcp)
//!     .build()
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Any `Fn(&str) -> Result<Channel, BoxError>` is a connector too, for
//! example one that dials a Unix socket with tonic's
//! `Endpoint::connect_with_connector_lazy`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The error a connector returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Makes the gRPC channel the client talks to the orchestrator over.
///
/// `connect` is called when the client is built and again after every call
/// that failed for want of an answer; it should not block or do I/O: return
/// a lazily connecting channel (`Endpoint::connect_lazy`,
/// `connect_with_connector_lazy`), which connects on its first call.
pub trait Connector: Send + Sync + 'static {
    /// A channel to `uri` (the client's `orchestrator_url`).
    ///
    /// # Errors
    ///
    /// Whatever makes `uri` unusable for this connector; the client reports
    /// it as a configuration error at build time and keeps its current
    /// channel later.
    fn connect(&self, uri: &str) -> Result<Channel, BoxError>;
}

impl<F> Connector for F
where
    F: Fn(&str) -> Result<Channel, BoxError> + Send + Sync + 'static,
{
    fn connect(&self, uri: &str) -> Result<Channel, BoxError> {
        self(uri)
    }
}

/// The default connector: plain TCP (`http://`), with HTTP/2 keepalive
/// pings (every 10 s, also while idle, 10 s to answer) and TCP keepalive
/// (30 s), `TCP_NODELAY`, and a 5 s connect timeout. The pings find a dead
/// connection even when no call is in flight; the client's own rule (a
/// failed or overdue call drops the connection) finds it at once when one
/// is.
///
/// HTTP/2 servers of other implementations may refuse pings this frequent
/// while no call is open (gRPC core's default minimum is 5 minutes):
/// lengthen the interval or turn idle pings off with
/// [`keepalive_while_idle`](Self::keepalive_while_idle) when the
/// orchestrator is behind such a server.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    tls: Option<ClientTls>,
    connect_timeout: Duration,
    http2_keepalive_interval: Duration,
    http2_keepalive_timeout: Duration,
    keepalive_while_idle: bool,
    tcp_keepalive: Option<Duration>,
}

impl Default for TcpConnector {
    fn default() -> Self {
        Self {
            tls: None,
            connect_timeout: Duration::from_secs(5),
            http2_keepalive_interval: Duration::from_secs(10),
            http2_keepalive_timeout: Duration::from_secs(10),
            keepalive_while_idle: true,
            tcp_keepalive: Some(Duration::from_secs(30)),
        }
    }
}

impl TcpConnector {
    /// TLS (for `https://` addresses): the orchestrator's certificate is
    /// verified against `tls`'s CA, and a client certificate is presented
    /// if it has one (mTLS).
    #[must_use]
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Time allowed to open a connection (default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// HTTP/2 pings every `interval`; a connection whose ping is not
    /// answered within `timeout` is closed (defaults 10 s and 10 s).
    #[must_use]
    pub fn http2_keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.http2_keepalive_interval = interval;
        self.http2_keepalive_timeout = timeout;
        self
    }

    /// Ping also while no call is open (default true).
    #[must_use]
    pub fn keepalive_while_idle(mut self, on: bool) -> Self {
        self.keepalive_while_idle = on;
        self
    }

    /// TCP keepalive probes after this long idle (default 30 s; `None`
    /// turns them off).
    #[must_use]
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.tcp_keepalive = idle;
        self
    }
}

impl Connector for TcpConnector {
    fn connect(&self, uri: &str) -> Result<Channel, BoxError> {
        let mut endpoint = Endpoint::from_shared(uri.to_owned())?;
        match &self.tls {
            Some(tls) => {
                if !uri.to_ascii_lowercase().starts_with("https://") {
                    return Err(format!("TLS is configured but {uri:?} is not an https:// address").into());
                }
                endpoint = endpoint.tls_config(tls.config())?;
            }
            None if uri.to_ascii_lowercase().starts_with("https://") => {
                return Err(format!(
                    "{uri:?} is an https:// address but no TLS is configured: give the CA that signed the \
                     orchestrator's certificate (ClientBuilder::tls)"
                )
                .into());
            }
            None => {}
        }
        let endpoint = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .tcp_keepalive(self.tcp_keepalive)
            .http2_keep_alive_interval(self.http2_keepalive_interval)
            .keep_alive_timeout(self.http2_keepalive_timeout)
            .keep_alive_while_idle(self.keepalive_while_idle);
        Ok(endpoint.connect_lazy())
    }
}

/// TLS settings for the client: the CA certificate(s) the orchestrator's
/// certificate must chain to, and optionally a client certificate and key
/// (mTLS: its URI SAN `urn:orchestrator:worker:<server_id>` is the worker's
/// identity). PEM throughout.
///
/// ```no_run
/// use worker_client::{ClientTls, ResilientWorkerClient};
///
/// # async fn run() -> Result<(), worker_client::connector::BoxError> {
/// let tls = ClientTls::from_files("ca.pem", Some(("worker-01.pem", "worker-01.key")))?;
/// let client = ResilientWorkerClient::builder("https://orchestrator:50051", "worker-01")
///     .tls(tls)
///     .build()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("ClientTls")
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// From PEM bytes: the CA certificate(s), and a client certificate
    /// chain with its private key.
    pub fn new(ca_pem: impl Into<Vec<u8>>, identity: Option<(Vec<u8>, Vec<u8>)>) -> Self {
        Self { ca_pem: ca_pem.into(), identity, domain: None }
    }

    /// From PEM files.
    ///
    /// # Errors
    ///
    /// A file cannot be read or holds no PEM block; the message names it.
    pub fn from_files(
        ca: impl AsRef<std::path::Path>,
        identity: Option<(impl AsRef<std::path::Path>, impl AsRef<std::path::Path>)>,
    ) -> Result<Self, BoxError> {
        let read = |what: &str, path: &std::path::Path| -> Result<Vec<u8>, BoxError> {
            let pem = std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
            if !pem.windows(10).any(|w| w == b"-----BEGIN") {
                return Err(format!("{what} {}: not a PEM file (no -----BEGIN line)", path.display()).into());
            }
            Ok(pem)
        };
        let ca = read("TLS CA", ca.as_ref())?;
        let identity = match identity {
            Some((cert, key)) => {
                Some((read("TLS client certificate", cert.as_ref())?, read("TLS client key", key.as_ref())?))
            }
            None => None,
        };
        Ok(Self::new(ca, identity))
    }

    /// The name the orchestrator's certificate must carry, when it is not
    /// the address's host (e.g. connecting by IP to a certificate for a
    /// DNS name).
    #[must_use]
    pub fn domain_name(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// tonic's configuration.
    pub fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        config
    }
}

/// A shared connector in the client's configuration.
#[derive(Clone)]
pub(crate) struct SharedConnector(pub(crate) Arc<dyn Connector>);

impl fmt::Debug for SharedConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Connector")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_default_connector_makes_a_lazy_channel_and_names_a_bad_uri() {
        assert!(TcpConnector::default().connect("http://127.0.0.1:1").is_ok(), "lazy: nothing is dialled yet");
        assert!(TcpConnector::default().connect("not a uri").is_err());
        let closure =
            |uri: &str| -> Result<Channel, BoxError> { Ok(Endpoint::from_shared(uri.to_owned())?.connect_lazy()) };
        assert!(closure.connect("http://127.0.0.1:1").is_ok());
    }
}
