//! Who is calling, and what they may do.
//!
//! Authentication is on when the server has an auth file (bearer tokens) or
//! TLS client CAs (mTLS), or both. Then every request except health checks
//! (and reflection, unless it is switched off) must carry a credential:
//!
//! - `authorization: Bearer <token>`, looked up in the auth file
//!   ([`Credentials`]): each line `admin <name> <token>` or
//!   `worker <server_id> <token>`;
//! - or, without a token, a client certificate the client CA verified (at
//!   the TLS layer, `tonic`'s `ServerTlsConfig`), whose URI SAN names one
//!   identity: `urn:orchestrator:worker:<server_id, percent-encoded>` or
//!   `urn:orchestrator:admin:<name>`.
//!
//! The [`AuthLayer`] turns the credential into a [`Caller`] in the request's
//! extensions, or answers UNAUTHENTICATED (no credential, an unknown token,
//! a certificate naming no identity) or PERMISSION_DENIED (a worker on the
//! admin service, an admin on the worker service). The worker service then
//! checks that a worker acts only as its own server_id
//! ([`authorize_worker`]), before it looks at anything else, so the answer
//! never tells whether another server_id exists.
//!
//! Tokens are compared by their SHA-256 digest: the table is bucketed by
//! the digest's first 8 bytes and each candidate's whole digest is compared
//! with [`subtle::ConstantTimeEq`], so timing tells nothing about a token's
//! bytes (only about a one-way hash of it, and only which bucket). Tokens
//! are never logged; errors about the file name its lines.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::body::Body;

/// The prefix of a worker identity in a certificate's URI SAN.
pub const WORKER_URN: &str = "urn:orchestrator:worker:";
/// The prefix of an admin identity in a certificate's URI SAN.
pub const ADMIN_URN: &str = "urn:orchestrator:admin:";

/// Shortest token the auth file accepts (characters): a guessable token is
/// no credential.
pub const MIN_TOKEN_LEN: usize = 16;

/// An authenticated caller: what the request extensions carry when
/// authentication is on.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// A worker, which may act only as this server_id.
    Worker(String),
    /// An operator (or tool) allowed on the admin service.
    Admin(String),
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Worker(id) => write!(f, "worker {id:?}"),
            Self::Admin(name) => write!(f, "admin {name:?}"),
        }
    }
}

/// The credentials of an auth file: token digests and whom they name.
#[derive(Clone, Default)]
pub struct Credentials {
    /// By the digest's first 8 bytes: the whole digests and whom they name.
    by_digest: HashMap<u64, Vec<([u8; 32], Caller)>>,
    admins: usize,
    workers: usize,
}

impl fmt::Debug for Credentials {
    // Never the digests.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("admins", &self.admins).field("workers", &self.workers).finish()
    }
}

fn bucket(digest: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

fn digest(token: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Credentials {
    /// Parses an auth file's text: one credential per line,
    /// `admin <name> <token>` or `worker <server_id> <token>`, blank lines
    /// and `#` comments ignored. An identity may have several lines (one
    /// token per client, or an old and a new one while rotating).
    ///
    /// # Errors
    ///
    /// The first bad line, by number and without its token: an unknown
    /// kind, a missing or extra field, a server_id the orchestrator would
    /// refuse, a token shorter than [`MIN_TOKEN_LEN`], a token given to two
    /// identities.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut credentials = Self::default();
        let mut lines_of: HashMap<[u8; 32], usize> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // A field starting with `#` starts a trailing comment.
            let fields: Vec<&str> = line.split_whitespace().take_while(|f| !f.starts_with('#')).collect();
            let [kind, name, token] = fields[..] else {
                return Err(format!(
                    "line {n}: expected `admin <name> <token>` or `worker <server_id> <token>` ({} field(s) found)",
                    fields.len()
                ));
            };
            let caller = match kind {
                "worker" => {
                    crate::engine::validate_server_id(name).map_err(|e| format!("line {n}: server_id: {e}"))?;
                    credentials.workers += 1;
                    Caller::Worker(name.to_owned())
                }
                "admin" => {
                    credentials.admins += 1;
                    Caller::Admin(name.to_owned())
                }
                other => {
                    // Named only if it cannot be a token in the wrong field.
                    let shown = if other.len() <= 12 && other.bytes().all(|b| b.is_ascii_alphabetic()) {
                        format!(" {other:?}")
                    } else {
                        String::new()
                    };
                    return Err(format!(
                        "line {n}: unknown kind{shown} in the first field: expected `admin <name> <token>` or \
                         `worker <server_id> <token>`"
                    ));
                }
            };
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "line {n}: the token must be printable ASCII (a client sends it in an HTTP header)"
                ));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "line {n}: the token is shorter than {MIN_TOKEN_LEN} characters; use a random one, e.g. \
                     `head -c 32 /dev/urandom | base64`"
                ));
            }
            let d = digest(token.as_bytes());
            if let Some(previous) = lines_of.insert(d, n) {
                if credentials.lookup(token.as_bytes()) != Some(&caller) {
                    return Err(format!("line {n}: the same token as line {previous}, for another identity"));
                }
                continue;
            }
            credentials.by_digest.entry(bucket(&d)).or_default().push((d, caller));
        }
        Ok(credentials)
    }

    /// Reads and parses an auth file. The second value is a warning when
    /// the file is readable by group or others.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or [`parse`](Self::parse) refuses it; the
    /// message names the file.
    pub fn load(path: &Path) -> Result<(Self, Option<String>), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("auth file {}: {e}", path.display()))?;
        let credentials = Self::parse(&text).map_err(|e| format!("auth file {}: {e}", path.display()))?;
        if credentials.by_digest.is_empty() {
            return Err(format!(
                "auth file {}: no credentials (lines `admin <name> <token>` or `worker <server_id> <token>`)",
                path.display()
            ));
        }
        Ok((credentials, loose_permissions(path)))
    }

    /// Whom `token` names, if anyone.
    pub fn lookup(&self, token: &[u8]) -> Option<&Caller> {
        let d = digest(token);
        let candidates = self.by_digest.get(&bucket(&d))?;
        // Every candidate compared in full, in constant time.
        let mut found = None;
        for (candidate, caller) in candidates {
            if bool::from(candidate.ct_eq(&d)) {
                found = Some(caller);
            }
        }
        found
    }

    /// Admin lines.
    pub fn admins(&self) -> usize {
        self.admins
    }

    /// Worker lines.
    pub fn workers(&self) -> usize {
        self.workers
    }
}

#[cfg(unix)]
fn loose_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "auth file {} is accessible by group or others (mode {:o}): anyone on this machine who can read it can \
             act as any worker or admin in it; run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

#[cfg(not(unix))]
fn loose_permissions(_: &Path) -> Option<String> {
    None
}

/// What a client certificate's URI SANs name.
///
/// # Errors
///
/// Why the certificate names no single identity (for UNAUTHENTICATED).
pub fn certificate_identity(der: &[u8]) -> Result<Caller, &'static str> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| "the client certificate cannot be parsed")?;
    let san = cert.subject_alternative_name().map_err(|_| "the client certificate's subjectAltName is malformed")?;
    let mut found = None;
    for name in san.iter().flat_map(|san| san.value.general_names.iter()) {
        let GeneralName::URI(uri) = name else { continue };
        let caller = if let Some(id) = uri.strip_prefix(WORKER_URN) {
            let id = percent_encoding::percent_decode_str(id)
                .decode_utf8()
                .map_err(|_| "the worker URI SAN is not valid percent-encoded UTF-8")?;
            crate::engine::validate_server_id(&id).map_err(|_| "the worker URI SAN names an invalid server_id")?;
            Caller::Worker(id.into_owned())
        } else if let Some(name) = uri.strip_prefix(ADMIN_URN) {
            if name.is_empty() {
                return Err("the admin URI SAN has an empty name");
            }
            Caller::Admin(name.to_owned())
        } else {
            continue;
        };
        if found.is_some() {
            return Err("the client certificate names more than one identity");
        }
        found = Some(caller);
    }
    found.ok_or("the client certificate has no urn:orchestrator:worker: or urn:orchestrator:admin: URI SAN")
}

/// The server's credentials: the auth file's (reloadable) and whether
/// verified client certificates count.
#[derive(Debug)]
pub struct Authenticator {
    auth_file: Option<PathBuf>,
    tokens: RwLock<Arc<Credentials>>,
    certificates: bool,
    reflection_open: bool,
}

impl Authenticator {
    /// No authentication: every request is let through (the default on
    /// loopback).
    pub fn disabled() -> Self {
        Self::new(None, Credentials::default(), false)
    }

    /// Tokens from `auth_file` (already loaded as `tokens`), client
    /// certificates if `certificates` (the server has TLS client CAs).
    pub fn new(auth_file: Option<PathBuf>, tokens: Credentials, certificates: bool) -> Self {
        Self { auth_file, tokens: RwLock::new(Arc::new(tokens)), certificates, reflection_open: true }
    }

    /// Whether reflection is open to anyone (the default). The server
    /// switched off with `--reflection=false` does not serve it at all;
    /// then a call needs a credential like any unknown path and is answered
    /// UNIMPLEMENTED.
    #[must_use]
    pub fn reflection_open(mut self, open: bool) -> Self {
        self.reflection_open = open;
        self
    }

    /// Whether requests need a credential at all.
    pub fn enabled(&self) -> bool {
        self.auth_file.is_some() || self.certificates
    }

    /// Reads the auth file again. A file that cannot be read or parsed
    /// keeps the credentials in force.
    ///
    /// # Errors
    ///
    /// Why the file was refused (the old credentials stay).
    pub fn reload(&self) -> Result<Arc<Credentials>, String> {
        let Some(path) = &self.auth_file else {
            return Err("no --auth-file is configured".to_owned());
        };
        let (credentials, warning) = Credentials::load(path)?;
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        let credentials = Arc::new(credentials);
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&credentials);
        Ok(credentials)
    }

    fn tokens(&self) -> Arc<Credentials> {
        Arc::clone(&self.tokens.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The caller of a request, or the status refusing it.
    fn authenticate(&self, request: &http::Request<Body>) -> Result<Caller, Status> {
        if let Some(value) = request.headers().get(http::header::AUTHORIZATION)
            && self.auth_file.is_some()
        {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim())
                .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer <token>`"))?;
            return self
                .tokens()
                .lookup(token.as_bytes())
                .cloned()
                .ok_or_else(|| Status::unauthenticated("the bearer token is not valid"));
        }
        if self.certificates
            && let Some(tls) =
                request.extensions().get::<tonic::transport::server::TlsConnectInfo<crate::server::ConnInfo>>()
            && let Some(certs) = tls.peer_certs()
            && let Some(leaf) = certs.first()
        {
            // Parsed once per connection.
            let identity = tls.get_ref().state.peer.get_or_init(|| certificate_identity(leaf.as_ref()));
            return identity.clone().map_err(Status::unauthenticated);
        }
        Err(Status::unauthenticated(match (self.auth_file.is_some(), self.certificates) {
            (true, true) => "no credential: send `authorization: Bearer <token>` or a client certificate",
            (true, false) => "no credential: send `authorization: Bearer <token>`",
            _ => "no credential: connect with a client certificate issued by the orchestrator's client CA",
        }))
    }

    /// The decision for a request to the HTTP listener's `/api/*`: with
    /// authentication on, only an admin bearer token from the auth file
    /// (the HTTP listener has no TLS, so no client certificate).
    ///
    /// # Errors
    ///
    /// The HTTP status to answer (401: no or an unknown token; 403: a
    /// worker token, or no auth file to hold admin tokens) and why.
    pub fn authorize_http_admin(&self, authorization: Option<&[u8]>) -> Result<(), (u16, &'static str)> {
        if !self.enabled() {
            return Ok(());
        }
        if self.auth_file.is_none() {
            return Err((
                403,
                "this orchestrator authenticates by client certificate only; the HTTP API needs an admin token: \
                 add `admin <name> <token>` to an --auth-file",
            ));
        }
        let Some(value) = authorization else {
            return Err((401, "send `Authorization: Bearer <admin token>`"));
        };
        let token = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or((401, "the authorization header must be `Bearer <token>`"))?;
        match self.tokens().lookup(token.as_bytes()) {
            Some(Caller::Admin(_)) => Ok(()),
            Some(Caller::Worker(_)) => Err((403, "a worker token may not read the admin API; use an admin token")),
            None => Err((401, "the bearer token is not valid")),
        }
    }

    /// The decision for one request: let through (with the caller to put
    /// in its extensions, if any) or refuse.
    fn admit(&self, request: &http::Request<Body>) -> Result<Option<Caller>, Status> {
        if !self.enabled() {
            return Ok(None);
        }
        let path = request.uri().path();
        if path.starts_with("/grpc.health.v1.Health/") {
            return Ok(None);
        }
        if path.starts_with("/grpc.reflection.") && self.reflection_open {
            return Ok(None);
        }
        let caller = self.authenticate(request)?;
        let allowed = if path.starts_with("/orchestrator.v1.WorkerService/") {
            matches!(caller, Caller::Worker(_))
        } else if path.starts_with("/orchestrator.v1.AdminService/") {
            matches!(caller, Caller::Admin(_))
        } else {
            // Reflection (when closed) and unknown paths: any credential.
            true
        };
        if allowed {
            Ok(Some(caller))
        } else {
            Err(Status::permission_denied(match caller {
                Caller::Worker(_) => "a worker credential may call only orchestrator.v1.WorkerService",
                Caller::Admin(_) => "an admin credential may call only orchestrator.v1.AdminService",
            }))
        }
    }
}

/// Checks that the caller may act as `server_id` (worker service calls):
/// without authentication anyone may; with it, only the worker the
/// credential names. Called before the request is looked at otherwise, so
/// the answer is the same whether or not `server_id` exists.
///
/// # Errors
///
/// PERMISSION_DENIED for a worker credential naming another server_id.
#[allow(clippy::result_large_err)]
pub fn authorize_worker(extensions: &tonic::Extensions, server_id: &str) -> Result<(), Status> {
    match extensions.get::<Caller>() {
        None => Ok(()),
        Some(Caller::Worker(id)) if id == server_id => Ok(()),
        Some(Caller::Worker(id)) => {
            warn_limited(&format!("refused a call as another server_id from a credential for worker {id:?}"));
            Err(Status::permission_denied(format!(
                "this credential may act only as server_id {id:?}, the worker it was issued to"
            )))
        }
        Some(Caller::Admin(_)) => {
            Err(Status::permission_denied("an admin credential may call only orchestrator.v1.AdminService"))
        }
    }
}

/// One warning per second at most: a flood of refused calls must not
/// drown the log.
fn warn_limited(message: &str) {
    static LAST: AtomicU64 = AtomicU64::new(u64::MAX);
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let second = START.get_or_init(std::time::Instant::now).elapsed().as_secs();
    if LAST.swap(second, Ordering::Relaxed) == second {
        tracing::debug!("{message}");
    } else {
        tracing::warn!("{message}");
    }
}

/// The tower layer that authenticates every request (see the module
/// docs); cheap to clone.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer checking requests against `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, auth: Arc::clone(&self.auth) }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S> tower::Service<http::Request<Body>> for Auth<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        match self.auth.admit(&request) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                AuthFuture::Inner { future: self.inner.call(request) }
            }
            Err(status) => {
                let remote = crate::server::conn_info(request.extensions()).and_then(|c| c.remote);
                warn_limited(&format!(
                    "refused {} from {}: {:?}: {}",
                    request.uri().path(),
                    remote.map_or_else(|| "an unknown peer".to_owned(), |r| r.to_string()),
                    status.code(),
                    status.message()
                ));
                AuthFuture::Refused { response: Some(status.into_http()) }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Auth`]: the inner service's, or a refusal.
    #[project = AuthFutureProj]
    #[derive(Debug)]
    #[allow(missing_docs)]
    pub enum AuthFuture<F> {
        /// Let through.
        Inner { #[pin] future: F },
        /// Refused.
        Refused { response: Option<http::Response<Body>> },
    }
}

impl<F, E> Future for AuthFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = Result<http::Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthFutureProj::Inner { future } => future.poll(cx),
            AuthFutureProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("AuthFuture polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "tok-aaaaaaaaaaaaaaaa";
    const T2: &str = "tok-bbbbbbbbbbbbbbbb";

    #[test]
    fn the_file_maps_tokens_to_identities_and_rotation_keeps_both() {
        let c = Credentials::parse(&format!(
            "# ops\nadmin alice {T1}\n\nworker w-1 {T2}\nworker w-1 tok-cccccccccccccccc   # new one\n"
        ))
        .unwrap();
        assert_eq!(c.lookup(T1.as_bytes()), Some(&Caller::Admin("alice".into())));
        assert_eq!(c.lookup(T2.as_bytes()), Some(&Caller::Worker("w-1".into())));
        assert_eq!(c.lookup(b"tok-cccccccccccccccc"), Some(&Caller::Worker("w-1".into())));
        assert_eq!(c.lookup(b"tok-dddddddddddddddd"), None);
        assert_eq!(c.lookup(b""), None);
        assert_eq!((c.admins(), c.workers()), (1, 2));
    }

    #[test]
    fn bad_lines_are_named_without_their_token() {
        for (text, want) in [
            (format!("root x {T1}"), "line 1: unknown kind \"root\""),
            (format!("{T1} worker w1"), "line 1: unknown kind in the first field"),
            ("worker w1 tök-0123456789abcdef".to_owned(), "line 1: the token must be printable ASCII"),
            ("worker w-1 short".to_owned(), "line 1: the token is shorter than 16"),
            (format!("worker {} {T1}", "w 1"), "line 1: expected"),
            (format!("\nworker bad\u{7f}id {T1}"), "line 2: server_id:"),
            (format!("worker a {T1}\nadmin b {T1}"), "line 2: the same token as line 1, for another identity"),
        ] {
            let err = Credentials::parse(&text).unwrap_err();
            assert!(err.starts_with(want), "{text:?}: {err}");
            assert!(!err.contains("tok-") && !err.contains("short\""), "{err}");
        }
        assert!(Credentials::parse(&format!("worker a {T1}\nworker a {T1}")).is_ok(), "a repeated line is harmless");
    }

    #[test]
    fn debug_output_never_shows_a_digest() {
        let c = Credentials::parse(&format!("admin alice {T1}")).unwrap();
        assert_eq!(format!("{c:?}"), "Credentials { admins: 1, workers: 0 }");
    }
}
