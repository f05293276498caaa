use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use resilience::{CircuitBreakerConfig, ConfigError, RetryConfig};

use crate::Error;
use crate::connector::{ClientTls, Connector, SharedConnector, TcpConnector};

/// The `authorization` header value, ready to send; its `Debug` hides it.
#[derive(Clone)]
pub(crate) struct AuthToken(pub(crate) tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl AuthToken {
    fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.is_empty() {
            return Err("must not be empty".into());
        }
        if token.chars().any(|c| !c.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces".into());
        }
        let mut value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {token}").parse().map_err(|_| "must be printable ASCII without spaces".to_owned())?;
        value.set_sensitive(true);
        Ok(Self(value))
    }
}

/// A secret the builder holds until `build`; its `Debug` hides it.
#[derive(Clone)]
struct Redacted(String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// An `http://` URL whose host is not a loopback address or `localhost`.
fn plaintext_beyond_loopback(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !(host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

/// Everything a [`ResilientWorkerClient`](crate::ResilientWorkerClient) is
/// configured with. Built and validated by [`ClientBuilder`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub(crate) orchestrator_url: String,
    /// `orchestrator_url` split at commas: the replicas to try in turn.
    pub(crate) endpoints: Vec<String>,
    pub(crate) server_id: String,
    pub(crate) max_streams: u32,
    pub(crate) breaker: CircuitBreakerConfig,
    pub(crate) retry: RetryConfig,
    pub(crate) state_path: PathBuf,
    pub(crate) state_sync_full: bool,
    pub(crate) heartbeat_interval: Option<Duration>,
    pub(crate) local_mode_after: Duration,
    pub(crate) local_mode_limit: Option<Duration>,
    pub(crate) reconnect: RetryConfig,
    pub(crate) connector: SharedConnector,
    pub(crate) auth_token: Option<AuthToken>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) state_write_delay: Duration,
    pub(crate) state_history: u64,
    /// Standalone mode: no orchestrator, these streams.
    pub(crate) standalone: Option<Vec<i64>>,
    pub(crate) client_version: String,
    pub(crate) wall_clock: fn() -> SystemTime,
    pub(crate) state_on_runtime: bool,
}

impl ClientConfig {
    /// The orchestrator's address (several, comma-separated, for
    /// replicas).
    pub fn orchestrator_url(&self) -> &str {
        &self.orchestrator_url
    }

    /// The endpoints tried in turn.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// This worker's stable id.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// Most streams this worker processes at once.
    pub fn max_streams(&self) -> u32 {
        self.max_streams
    }

    /// The state file.
    pub fn state_path(&self) -> &std::path::Path {
        &self.state_path
    }

    /// The local-mode limit, if any.
    pub fn local_mode_limit(&self) -> Option<Duration> {
        self.local_mode_limit
    }

    /// How long `shutdown` may take.
    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }
}

/// Builds a [`ResilientWorkerClient`](crate::ResilientWorkerClient) from the
/// original client's configuration names and defaults.
///
/// | setting | default |
/// |---|---|
/// | `circuit_failure_threshold` | 5 |
/// | `circuit_recovery_timeout` | 60 s |
/// | `circuit_success_threshold` | 3 |
/// | `circuit_timeout` (per call) | 30 s |
/// | `retry_max_attempts` | 3 |
/// | `retry_base_delay` | 1 s |
/// | `retry_max_delay` | 60 s |
/// | `retry_exponential_base` | 2.0 |
/// | `retry_jitter` | true |
/// | `state_path` | `./worker-state-<server_id>.db` |
/// | `heartbeat_interval` | what the orchestrator says (5 s by default) |
/// | `local_mode_after` | 30 s without a successful call (or the breaker open) |
/// | `local_mode_limit` | none: process indefinitely in local mode |
/// | `connector` | [`TcpConnector`]: TCP with HTTP/2 and TCP keepalive |
/// | `tls` | none (plaintext `http://`); [`ClientTls`] for `https://` |
/// | `auth_token` | none; a bearer token sent with every call |
/// | `shutdown_timeout` | 10 s: the longest `shutdown()` takes |
/// | `state_history` | 5,000 synced records kept in the state file (mode 0600) |
///
/// **Timing.** Each call's deadline is `min(circuit_timeout,
/// local_mode_after)`, and the retries of one operation stop once it has
/// taken `local_mode_after`: however the orchestrator fails (refuses, hangs,
/// drops packets, answers too slowly), the client is in local mode within
/// `local_mode_after` plus one heartbeat interval of its last successful
/// call. `circuit_timeout` keeps the seed's meaning, the upper bound of one
/// call. A call that fails for want of an answer drops its connection: the
/// next call starts on a fresh one.
///
/// ```no_run
/// use std::time::Duration;
/// use worker_client::ResilientWorkerClient;
///
/// # async fn run() -> Result<(), worker_client::Error> {
/// let client = ResilientWorkerClient::builder("http://127.0.0.1:50051", "worker-01")
///     .max_streams(50)
///     .circuit_failure_threshold(3)
///     .circuit_recovery_timeout(Duration::from_secs(30))
///     .retry_max_attempts(5)
///     .retry_base_delay(Duration::from_millis(500))
///     .build()
///     .await?;
/// client.start().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientBuilder {
    orchestrator_url: String,
    server_id: String,
    max_streams: u32,
    failure_threshold: u32,
    recovery_timeout: Duration,
    success_threshold: u32,
    call_timeout: Duration,
    retry_max_attempts: u32,
    retry_base_delay: Duration,
    retry_max_delay: Duration,
    retry_exponential_base: f64,
    retry_jitter: bool,
    state_path: Option<PathBuf>,
    state_sync_full: bool,
    heartbeat_interval: Option<Duration>,
    local_mode_after: Duration,
    local_mode_limit: Option<Duration>,
    reconnect_base_delay: Duration,
    reconnect_max_delay: Duration,
    connect_timeout: Duration,
    connector: Option<SharedConnector>,
    tls: Option<ClientTls>,
    auth_token: Option<Redacted>,
    shutdown_timeout: Duration,
    state_write_delay: Duration,
    state_history: u64,
    standalone: Option<Vec<i64>>,
    client_version: String,
    wall_clock: fn() -> SystemTime,
    state_on_runtime: bool,
}

impl ClientBuilder {
    /// A builder for standalone mode: see
    /// [`ResilientWorkerClient::standalone`](crate::ResilientWorkerClient::standalone).
    pub(crate) fn standalone(server_id: impl Into<String>, streams: Vec<i64>) -> Self {
        let mut builder = Self::new("http://orchestrator.invalid", server_id);
        builder.max_streams = u32::try_from(streams.len()).unwrap_or(u32::MAX).max(1);
        builder.standalone = Some(streams);
        builder
    }

    pub(crate) fn new(orchestrator_url: impl Into<String>, server_id: impl Into<String>) -> Self {
        Self {
            orchestrator_url: orchestrator_url.into(),
            server_id: server_id.into(),
            max_streams: 10,
            failure_threshold: 5,
            recovery_timeout: Duration::from_secs(60),
            success_threshold: 3,
            call_timeout: Duration::from_secs(30),
            retry_max_attempts: 3,
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
            retry_exponential_base: 2.0,
            retry_jitter: true,
            state_path: None,
            state_sync_full: false,
            heartbeat_interval: None,
            local_mode_after: Duration::from_secs(30),
            local_mode_limit: None,
            reconnect_base_delay: Duration::from_secs(1),
            reconnect_max_delay: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            connector: None,
            tls: None,
            auth_token: None,
            shutdown_timeout: Duration::from_secs(10),
            state_write_delay: Duration::ZERO,
            state_history: 5_000,
            standalone: None,
            client_version: concat!("worker-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            wall_clock: SystemTime::now,
            state_on_runtime: false,
        }
    }

    /// Most streams this worker processes at once (default 10).
    pub fn max_streams(mut self, n: u32) -> Self {
        self.max_streams = n;
        self
    }

    /// Consecutive failures that open the circuit breaker (default 5).
    pub fn circuit_failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n;
        self
    }

    /// How long the breaker stays open before probing (default 60 s).
    pub fn circuit_recovery_timeout(mut self, d: Duration) -> Self {
        self.recovery_timeout = d;
        self
    }

    /// Successful probes that close the breaker (default 3).
    pub fn circuit_success_threshold(mut self, n: u32) -> Self {
        self.success_threshold = n;
        self
    }

    /// Time after which one call counts as failed (default 30 s). The
    /// deadline a call really gets is the smaller of this and
    /// [`local_mode_after`](Self::local_mode_after).
    pub fn circuit_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    /// Attempts per call, the first included (default 3).
    pub fn retry_max_attempts(mut self, n: u32) -> Self {
        self.retry_max_attempts = n;
        self
    }

    /// Delay before the first retry (default 1 s).
    pub fn retry_base_delay(mut self, d: Duration) -> Self {
        self.retry_base_delay = d;
        self
    }

    /// Longest delay between retries (default 60 s).
    pub fn retry_max_delay(mut self, d: Duration) -> Self {
        self.retry_max_delay = d;
        self
    }

    /// Growth of the retry delay (default 2.0).
    pub fn retry_exponential_base(mut self, f: f64) -> Self {
        self.retry_exponential_base = f;
        self
    }

    /// Randomise retry delays (default true: full jitter).
    pub fn retry_jitter(mut self, on: bool) -> Self {
        self.retry_jitter = on;
        self
    }

    /// The SQLite state file (default `./worker-state-<server_id>.db`).
    pub fn state_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.state_path = Some(path.into());
        self
    }

    /// Also survive a power loss (an fsync per group of writes; default off:
    /// writes survive a crash of the worker process).
    pub fn state_sync_full(mut self, on: bool) -> Self {
        self.state_sync_full = on;
        self
    }

    /// Heartbeat interval; by default the orchestrator's suggestion.
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat_interval = Some(d);
        self
    }

    /// Enter local mode after this long without a successful call, even if
    /// the breaker is still closed (default 30 s).
    pub fn local_mode_after(mut self, d: Duration) -> Self {
        self.local_mode_after = d;
        self
    }

    /// Stop processing after this long in local mode (default: never).
    ///
    /// With a limit below the orchestrator's `session_timeout`, no stream is
    /// ever processed by two workers at once: this worker stops before the
    /// orchestrator can give its streams to anyone else. Without a limit the
    /// worker keeps processing through any outage, and a long partition can
    /// have a stream processed twice (the lease epoch lets sinks reject the
    /// stale writer).
    pub fn local_mode_limit(mut self, d: Duration) -> Self {
        self.local_mode_limit = Some(d);
        self
    }

    /// Backoff of the reconnect probe in local mode (defaults 1 s .. 30 s,
    /// full jitter).
    pub fn reconnect_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.reconnect_base_delay = base;
        self.reconnect_max_delay = max;
        self
    }

    /// Time allowed to open a connection (default 5 s), for the default
    /// [`TcpConnector`]; a connector set with
    /// [`connector`](Self::connector) has its own.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How the client reaches the orchestrator (default: [`TcpConnector`]
    /// with [`connect_timeout`](Self::connect_timeout)). Plug in TLS, a
    /// Unix socket, a proxy or a network simulation here; see the
    /// [`connector`](crate::connector) module.
    pub fn connector(mut self, connector: impl Connector) -> Self {
        self.connector = Some(SharedConnector(std::sync::Arc::new(connector)));
        self
    }

    /// Several orchestrator replicas (the same as a comma-separated
    /// `orchestrator_url`): the client talks to one at a time, and moves to
    /// the next at once when one does not answer; the circuit breaker
    /// counts a failure only when every endpoint failed in a round.
    pub fn orchestrator_urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.orchestrator_url = urls.into_iter().map(|u| u.as_ref().trim().to_owned()).collect::<Vec<_>>().join(",");
        self
    }

    /// TLS for the default [`TcpConnector`] (the `orchestrator_url` must be
    /// `https://`): the CA to verify the orchestrator against, and a client
    /// certificate for mTLS. A connector set with
    /// [`connector`](Self::connector) configures its own TLS
    /// ([`TcpConnector::tls`]).
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A bearer token sent with every call (`authorization: Bearer
    /// <token>`), for an orchestrator with an auth file. Never logged.
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = Some(Redacted(token.into()));
        self
    }

    /// How long [`shutdown`](crate::ResilientWorkerClient::shutdown) may
    /// take (default 10 s: inside the 30 s most service managers give
    /// between SIGTERM and SIGKILL), plus at most 100 ms to close the state
    /// file. What it could not do by then is left to the session's expiry
    /// and the next run.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Synced processing records kept in the state file, the newest
    /// (default 5,000); older ones are deleted, so the file does not grow
    /// with every record ever made. Unsynced records are never deleted.
    pub fn state_history(mut self, records: u64) -> Self {
        self.state_history = records;
        self
    }

    /// Test hook: the state thread waits this long before each group commit
    /// (slow storage). Not for production.
    #[doc(hidden)]
    pub fn state_write_delay(mut self, d: Duration) -> Self {
        self.state_write_delay = d;
        self
    }

    /// Simulation seam: the wall clock that stamps processing records, the
    /// last contact and mode transitions (default `SystemTime::now`). A
    /// deterministic simulation passes its simulated clock.
    #[doc(hidden)]
    pub fn wall_clock(mut self, clock: fn() -> SystemTime) -> Self {
        self.wall_clock = clock;
        self
    }

    /// Simulation seam: run the state file's writer as a task on the
    /// current runtime, and open the file inline, instead of on a thread of
    /// its own (default false). Every SQLite call then blocks the runtime
    /// while it runs; a deterministic simulation needs it, because a
    /// thread's replies arrive in real time.
    #[doc(hidden)]
    pub fn state_on_runtime(mut self, on: bool) -> Self {
        self.state_on_runtime = on;
        self
    }

    /// Free text sent at registration, for the orchestrator's logs.
    pub fn client_version(mut self, v: impl Into<String>) -> Self {
        self.client_version = v.into();
        self
    }

    /// Validates the configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the setting.
    pub fn config(self) -> Result<ClientConfig, Error> {
        let bad = |setting: &'static str, problem: String| Error::Config { setting, problem, source: None };
        let endpoints: Vec<String> =
            self.orchestrator_url.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect();
        if endpoints.is_empty() {
            return Err(bad(
                "orchestrator_url",
                "is empty: give http://host:port (or several, comma-separated)".into(),
            ));
        }
        for e in &endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(bad("orchestrator_url", format!("{e:?} must start with http:// or https://")));
            }
        }
        if self.server_id.is_empty()
            || self.server_id.len() > 128
            || !self.server_id.bytes().all(|b| (0x21..=0x7e).contains(&b))
        {
            return Err(bad("server_id", "must be 1..=128 printable ASCII bytes without spaces".into()));
        }
        if self.max_streams == 0 {
            return Err(bad("max_streams", "must be at least 1".into()));
        }
        if self.local_mode_after.is_zero() {
            return Err(bad("local_mode_after", "must be greater than zero".into()));
        }
        if let Some(streams) = &self.standalone {
            if streams.is_empty() {
                return Err(bad("streams", "standalone mode needs at least one stream id".into()));
            }
            if let Some(id) = streams.iter().find(|&&id| id <= 0) {
                return Err(bad("streams", format!("stream id {id} must be greater than 0")));
            }
        }
        if self.state_history == 0 {
            return Err(bad("state_history", "must be at least 1".into()));
        }
        if self.heartbeat_interval.is_some_and(|d| d.is_zero()) {
            return Err(bad("heartbeat_interval", "must be greater than zero".into()));
        }
        let breaker_err = |e: ConfigError| bad("circuit breaker", e.to_string());
        let breaker = CircuitBreakerConfig::builder()
            .failure_threshold(self.failure_threshold)
            .recovery_timeout(self.recovery_timeout)
            .success_threshold(self.success_threshold)
            .timeout(self.call_timeout.min(self.local_mode_after))
            .build()
            .map_err(breaker_err)?;
        let retry = RetryConfig::builder()
            .max_attempts(self.retry_max_attempts)
            .base_delay(self.retry_base_delay)
            .max_delay(self.retry_max_delay)
            .exponential_base(self.retry_exponential_base)
            .jitter(self.retry_jitter)
            .build()
            .map_err(|e| bad("retry", e.to_string()))?;
        let reconnect = RetryConfig::builder()
            .max_attempts(u32::MAX)
            .base_delay(self.reconnect_base_delay)
            .max_delay(self.reconnect_max_delay)
            .no_budget()
            .build()
            .map_err(|e| bad("reconnect_backoff", e.to_string()))?;
        if self.tls.is_some() && self.connector.is_some() {
            return Err(bad("tls", "applies to the default connector; configure TLS on your connector instead".into()));
        }
        let auth_token =
            self.auth_token.as_ref().map(|t| AuthToken::new(&t.0)).transpose().map_err(|e| bad("auth_token", e))?;
        if auth_token.is_some() && endpoints.iter().any(|e| plaintext_beyond_loopback(e)) && self.standalone.is_none() {
            tracing::warn!(
                url = %self.orchestrator_url,
                "the bearer token goes to a non-loopback orchestrator over plaintext http://: anyone on the path can \
                 read it; use https:// with tls()"
            );
        }
        let state_path =
            self.state_path.unwrap_or_else(|| PathBuf::from(format!("./worker-state-{}.db", self.server_id)));
        Ok(ClientConfig {
            orchestrator_url: endpoints.join(","),
            endpoints,
            server_id: self.server_id,
            max_streams: self.max_streams,
            breaker,
            retry,
            state_path,
            state_sync_full: self.state_sync_full,
            heartbeat_interval: self.heartbeat_interval,
            local_mode_after: self.local_mode_after,
            local_mode_limit: self.local_mode_limit,
            reconnect,
            connector: match (self.connector, self.tls) {
                (Some(connector), _) => connector,
                (None, tls) => {
                    let mut tcp = TcpConnector::default().connect_timeout(self.connect_timeout);
                    if let Some(tls) = tls {
                        tcp = tcp.tls(tls);
                    }
                    SharedConnector(std::sync::Arc::new(tcp))
                }
            },
            auth_token,
            shutdown_timeout: self.shutdown_timeout,
            state_write_delay: self.state_write_delay,
            state_history: self.state_history,
            standalone: self.standalone,
            client_version: self.client_version,
            wall_clock: self.wall_clock,
            state_on_runtime: self.state_on_runtime,
        })
    }

    /// Validates the configuration, opens the state file and creates the
    /// client (it does not contact the orchestrator yet: call
    /// [`start`](crate::ResilientWorkerClient::start) or
    /// [`register`](crate::ResilientWorkerClient::register)).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a bad setting, [`Error::State`] for a state
    /// file that cannot be used (the message says how to recover).
    pub async fn build(self) -> Result<crate::ResilientWorkerClient, Error> {
        crate::ResilientWorkerClient::from_config(self.config()?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_endpoints_are_split_at_commas_and_each_is_checked() {
        let c = ClientBuilder::new(" http://a:1 ,http://b:2,", "w1").config().unwrap();
        assert_eq!(c.endpoints(), ["http://a:1", "http://b:2"]);
        assert_eq!(c.orchestrator_url(), "http://a:1,http://b:2");
        let c = ClientBuilder::new("unused", "w1").orchestrator_urls(["http://a:1", "https://b:2"]);
        assert_eq!(c.config().unwrap().endpoints().len(), 2);
        let e = ClientBuilder::new("http://a:1,b:2", "w1").config().unwrap_err().to_string();
        assert!(e.contains("\"b:2\" must start with http://"), "{e}");
        let e = ClientBuilder::new(" , ", "w1").config().unwrap_err().to_string();
        assert!(e.contains("orchestrator_url") && e.contains("empty"), "{e}");
    }

    #[test]
    fn the_token_is_in_no_debug_output_and_plaintext_beyond_loopback_is_spotted() {
        let builder = ClientBuilder::new("http://127.0.0.1:1", "w1").auth_token("tok-secret-0123456789");
        assert!(!format!("{builder:?}").contains("tok-secret"), "{builder:?}");
        let config = builder.config().unwrap();
        assert!(!format!("{config:?}").contains("tok-secret"), "{config:?}");
        for (url, beyond) in [
            ("http://127.0.0.1:50051", false),
            ("http://localhost:50051", false),
            ("http://[::1]:50051", false),
            ("https://orchestrator:50051", false),
            ("http://orchestrator:50051", true),
            ("http://10.0.0.5:50051/", true),
        ] {
            assert_eq!(plaintext_beyond_loopback(url), beyond, "{url}");
        }
    }

    fn b() -> ClientBuilder {
        ClientBuilder::new("http://127.0.0.1:50051", "w1")
    }

    #[test]
    fn defaults_are_the_seed_defaults() {
        let c = b().config().unwrap();
        assert_eq!(c.breaker.failure_threshold(), 5);
        assert_eq!(c.breaker.recovery_timeout(), Duration::from_secs(60));
        assert_eq!(c.breaker.success_threshold(), 3);
        assert_eq!(c.breaker.timeout(), Some(Duration::from_secs(30)));
        assert_eq!(c.retry.max_attempts(), 3);
        assert_eq!(c.retry.base_delay(), Duration::from_secs(1));
        assert_eq!(c.retry.max_delay(), Duration::from_secs(60));
        assert_eq!(c.retry.exponential_base(), 2.0);
        assert_eq!(c.state_path, PathBuf::from("./worker-state-w1.db"));
    }

    #[test]
    fn a_call_never_outlasts_local_mode_after() {
        let c = b().local_mode_after(Duration::from_secs(3)).config().unwrap();
        assert_eq!(c.breaker.timeout(), Some(Duration::from_secs(3)), "min(circuit_timeout, local_mode_after)");
        let c = b().circuit_timeout(Duration::from_secs(2)).config().unwrap();
        assert_eq!(c.breaker.timeout(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn invalid_settings_are_errors_naming_them() {
        let setting = |r: Result<ClientConfig, Error>| match r {
            Err(Error::Config { setting, .. }) => setting,
            other => panic!("{other:?}"),
        };
        assert_eq!(setting(ClientBuilder::new("127.0.0.1:50051", "w").config()), "orchestrator_url");
        assert_eq!(setting(ClientBuilder::new("http://x", "").config()), "server_id");
        assert_eq!(setting(ClientBuilder::new("http://x", "a b").config()), "server_id");
        assert_eq!(setting(b().max_streams(0).config()), "max_streams");
        assert_eq!(setting(b().circuit_failure_threshold(0).config()), "circuit breaker");
        assert_eq!(setting(b().retry_max_attempts(0).config()), "retry");
        assert_eq!(setting(b().retry_base_delay(Duration::from_secs(100)).config()), "retry");
        assert_eq!(setting(b().local_mode_after(Duration::ZERO).config()), "local_mode_after");
    }
}
