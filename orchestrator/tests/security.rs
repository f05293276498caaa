//! Authentication and authorization through real gRPC over 127.0.0.1:0:
//! bearer tokens from an auth file, TLS, and mTLS identities from client
//! certificates made by a test CA (`fixtures::certs`). No credential or an
//! unknown one is UNAUTHENTICATED, a credential out of its role is
//! PERMISSION_DENIED, a worker acts only as itself, and a refused call
//! changes nothing.

use std::path::Path;
use std::sync::Arc;

use fixtures::InProcess;
use fixtures::certs::{self, TestPki};
use orchestrator::server::{Security, ServerConfig, TlsFiles};
use orchestrator_proto::v1;
use orchestrator_proto::v1::admin_service_client::AdminServiceClient;
use orchestrator_proto::v1::worker_service_client::WorkerServiceClient;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_client::HealthClient;

const ADMIN: &str = "adm-0123456789abcdef";
const W1: &str = "w1t-0123456789abcdef";
const W2: &str = "w2t-0123456789abcdef";

fn auth_file(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("auth");
    std::fs::write(&path, text).unwrap();
    path
}

async fn start(dir: &Path, security: Security) -> InProcess {
    InProcess::start_with(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: dir.join("orchestrator.db"),
        engine: fixtures::engine_config(),
        drain_timeout: std::time::Duration::from_millis(100),
        security,
        ..ServerConfig::default()
    })
    .await
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(t) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    request
}

fn register(server_id: &str) -> v1::RegisterRequest {
    v1::RegisterRequest {
        server_id: server_id.into(),
        max_streams: 5,
        request_id: format!("r-{:016x}", fastrand::u64(..)),
        ..Default::default()
    }
}

fn heartbeat(session: &v1::SessionRef) -> v1::HeartbeatRequest {
    v1::HeartbeatRequest { session: Some(session.clone()), ..Default::default() }
}

async fn plain(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

async fn serving(channel: Channel) -> bool {
    let answer = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: "orchestrator.v1.WorkerService".into() })
        .await
        .unwrap()
        .into_inner();
    answer.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
}

/// The workers the admin API lists: (server_id, worker_epoch).
async fn workers(admin: &mut AdminServiceClient<Channel>, token: Option<&str>) -> Vec<(String, u64)> {
    let listed = admin.list_workers(with_token(v1::ListWorkersRequest::default(), token)).await.unwrap().into_inner();
    listed.workers.into_iter().map(|w| (w.server_id, w.worker_epoch)).collect()
}

#[tokio::test]
async fn tokens_authenticate_and_a_worker_acts_only_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    let file = auth_file(dir.path(), &format!("# test\nadmin ops {ADMIN}\nworker w1 {W1}\nworker w2 {W2}\n"));
    let mut o = start(dir.path(), Security { auth_file: Some(file), ..Security::default() }).await;
    let channel = plain(o.addr).await;
    let mut worker = WorkerServiceClient::new(channel.clone());
    let mut admin = AdminServiceClient::new(channel.clone());

    // Health is open.
    assert!(serving(channel.clone()).await);

    // No credential, an unknown one, a malformed header: UNAUTHENTICATED.
    for token in [None, Some("not-a-known-token-at-all")] {
        let e = worker.register(with_token(register("w1"), token)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let e = admin.list_workers(with_token(v1::ListWorkersRequest::default(), token)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let e = admin
            .drain_worker(with_token(v1::DrainWorkerRequest { server_id: "w1".into(), ..Default::default() }, token))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    // The header: the scheme in any case, spaces around the token; nothing
    // else.
    let raw = |value: String| {
        let mut request = tonic::Request::new(v1::ListWorkersRequest::default());
        request.metadata_mut().insert("authorization", value.parse().unwrap());
        request
    };
    for accepted in [format!("bearer {ADMIN}"), format!("BEARER   {ADMIN}  "), format!("Bearer {ADMIN}")] {
        assert!(admin.list_workers(raw(accepted.clone())).await.is_ok(), "{accepted:?}");
    }
    for refused in [format!("Basic {ADMIN}"), "Bearer".to_owned(), "Bearer ".to_owned(), ADMIN.to_owned()] {
        let e = admin.list_workers(raw(refused.clone())).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{refused:?}");
        assert!(!e.message().contains(ADMIN), "the token is not echoed: {e:?}");
    }

    // Out of role: PERMISSION_DENIED.
    let e = worker.register(with_token(register("w1"), Some(ADMIN))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = admin.list_workers(with_token(v1::ListWorkersRequest::default(), Some(W1))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = admin.pause_rebalancing(with_token(v1::PauseRebalancingRequest::default(), Some(W1))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // w1 registers as itself.
    let session =
        worker.register(with_token(register("w1"), Some(W1))).await.unwrap().into_inner().session.expect("a session");
    assert_eq!(workers(&mut admin, Some(ADMIN)).await, vec![("w1".to_owned(), 1)]);

    // w2 cannot register as w1 (which would fence it), nor as a server_id
    // nobody uses: the same answer, so it tells nothing about who exists.
    let taken = worker.register(with_token(register("w1"), Some(W2))).await.unwrap_err();
    let free = worker.register(with_token(register("ghost"), Some(W2))).await.unwrap_err();
    assert_eq!(taken.code(), Code::PermissionDenied);
    assert_eq!((free.code(), free.message()), (taken.code(), taken.message()), "no hint whether w1 exists");
    assert!(!taken.message().contains(W2) && !taken.message().contains(W1), "{taken:?}");
    // Nor use w1's session.
    let e = worker.heartbeat(with_token(heartbeat(&session), Some(W2))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = worker
        .deregister(with_token(
            v1::DeregisterRequest { session: Some(session.clone()), request_id: "d-1".into() },
            Some(W2),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Every other worker RPC naming w1's session: refused the same way.
    admin
        .add_streams(with_token(
            v1::AddStreamsRequest {
                streams: (1..=2).map(|id| v1::StreamSpec { stream_id: id, ..Default::default() }).collect(),
                request_id: "add".into(),
            },
            Some(ADMIN),
        ))
        .await
        .unwrap();
    let held = worker
        .request_streams(with_token(
            v1::RequestStreamsRequest { session: Some(session.clone()), count: 1, request_id: "q-1".into() },
            Some(W1),
        ))
        .await
        .unwrap()
        .into_inner()
        .granted;
    assert_eq!(held.len(), 1);
    let steal = worker
        .request_streams(with_token(
            v1::RequestStreamsRequest { session: Some(session.clone()), count: 1, request_id: "q-2".into() },
            Some(W2),
        ))
        .await
        .unwrap_err();
    let release = worker
        .release_streams(with_token(
            v1::ReleaseStreamsRequest {
                session: Some(session.clone()),
                leases: held.clone(),
                request_id: "r-1".into(),
            },
            Some(W2),
        ))
        .await
        .unwrap_err();
    let sync = worker
        .sync_local_state(with_token(
            v1::SyncLocalStateRequest {
                session: Some(session.clone()),
                held_leases: vec![],
                records: vec![v1::ProcessingRecord {
                    stream_id: held[0].stream_id,
                    lease_epoch: held[0].lease_epoch,
                    sequence: 1,
                    ..Default::default()
                }],
                request_id: "s-1".into(),
                ..Default::default()
            },
            Some(W2),
        ))
        .await
        .unwrap_err();
    for e in [steal, release, sync] {
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    let owners = admin
        .list_assignments(with_token(v1::ListAssignmentsRequest::default(), Some(ADMIN)))
        .await
        .unwrap()
        .into_inner()
        .assignments;
    // (The orchestrator places the other stream on w1 by itself.) Every
    // stream is still w1's first lease of it: nothing was released.
    assert!(!owners.is_empty());
    for a in &owners {
        assert_eq!((a.server_id.as_str(), a.lease.map(|l| l.lease_epoch)), ("w1", Some(1)), "{owners:?}");
    }
    assert_eq!(o.records("w1"), vec![], "no record was stored under w1's name");

    // Nothing changed: w1 is still on its first session, which still works.
    assert_eq!(workers(&mut admin, Some(ADMIN)).await, vec![("w1".to_owned(), 1)]);
    worker.heartbeat(with_token(heartbeat(&session), Some(W1))).await.expect("w1's session is not fenced");

    // Reflection is open by default.
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection is open")
        .into_inner();
    assert!(answers.message().await.unwrap().is_some());
    o.stop().await;
}

#[tokio::test]
async fn a_reload_swaps_the_credentials_and_a_bad_file_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let file = auth_file(dir.path(), &format!("admin ops {ADMIN}\n"));
    let server = orchestrator::server::OrchestratorServer::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: dir.path().join("orchestrator.db"),
        security: Security { auth_file: Some(file.clone()), ..Security::default() },
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let auth: Arc<orchestrator::auth::Authenticator> = server.authenticator();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let mut admin = AdminServiceClient::new(plain(addr).await);
    assert!(admin.list_workers(with_token(v1::ListWorkersRequest::default(), Some(ADMIN))).await.is_ok());

    // Rotated: the new token works, the old one no longer does.
    std::fs::write(&file, format!("admin ops {W2}\n")).unwrap();
    auth.reload().unwrap();
    assert!(admin.list_workers(with_token(v1::ListWorkersRequest::default(), Some(W2))).await.is_ok());
    let e = admin.list_workers(with_token(v1::ListWorkersRequest::default(), Some(ADMIN))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // A broken file is refused (naming the line, not the token) and the
    // credentials in force stay.
    std::fs::write(&file, format!("admin ops {W1}\nworker\n")).unwrap();
    let why = auth.reload().unwrap_err();
    assert!(why.contains("line 2") && !why.contains(W1), "{why}");
    assert!(admin.list_workers(with_token(v1::ListWorkersRequest::default(), Some(W2))).await.is_ok());
    assert!(admin.list_workers(with_token(v1::ListWorkersRequest::default(), Some(W1))).await.is_err());
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}

fn pki(dir: &Path) -> (TestPki, TestPki) {
    let ours = certs::generate(&dir.join("pki"), "test CA", &["w1", "w/2%"], &["ops"]).unwrap();
    let foreign = certs::generate(&dir.join("foreign"), "foreign CA", &["w1"], &["ops"]).unwrap();
    (ours, foreign)
}

fn mtls(pki: &TestPki) -> Security {
    Security {
        tls: Some(TlsFiles {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: Some(pki.ca.clone()),
        }),
        ..Security::default()
    }
}

/// A TLS channel trusting `ca`, presenting `client`'s certificate if any.
async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &TestPki,
    client: Option<(&TestPki, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.ca_pem())).domain_name("localhost");
    if let Some((pki, name)) = client {
        let (cert, key) = pki.client_pem(name);
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls)?.connect().await
}

/// Whether a health check on `channel` (if it connected) is answered at
/// all: false when the connection or the call fails.
async fn answers_health(channel: Result<Channel, tonic::transport::Error>) -> bool {
    let Ok(channel) = channel else { return false };
    HealthClient::new(channel).check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_ok()
}

#[tokio::test]
async fn client_certificates_name_the_caller_by_their_uri_san() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, foreign) = pki(dir.path());
    let mut o = start(dir.path(), mtls(&ours)).await;

    // Without a certificate: TLS works, health answers, nothing else does.
    let anonymous = tls_channel(o.addr, &ours, None).await.unwrap();
    assert!(serving(anonymous.clone()).await);
    let e = WorkerServiceClient::new(anonymous.clone()).register(register("w1")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // w1's certificate registers w1 only.
    let mut w1 = WorkerServiceClient::new(tls_channel(o.addr, &ours, Some((&ours, "worker-w1"))).await.unwrap());
    w1.register(register("w1")).await.expect("w1 registers as itself");
    let e = w1.register(register("w/2%")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // A percent-encoded SAN decodes to the server_id it names.
    let mut w2 = WorkerServiceClient::new(tls_channel(o.addr, &ours, Some((&ours, "worker-w%2F2%25"))).await.unwrap());
    w2.register(register("w/2%")).await.expect("urn:orchestrator:worker:w%2F2%25 is w/2%");
    assert_eq!(w2.register(register("w1")).await.unwrap_err().code(), Code::PermissionDenied);

    // The admin certificate administers and cannot register.
    let admin_channel = tls_channel(o.addr, &ours, Some((&ours, "admin-ops"))).await.unwrap();
    let mut admin = AdminServiceClient::new(admin_channel.clone());
    let listed = workers(&mut admin, None).await;
    let mut ids: Vec<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["w/2%", "w1"]);
    let e = WorkerServiceClient::new(admin_channel).register(register("w1")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = AdminServiceClient::new(tls_channel(o.addr, &ours, Some((&ours, "worker-w1"))).await.unwrap())
        .list_workers(v1::ListWorkersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // A certificate from another CA: the handshake fails, so even the open
    // health service does not answer.
    assert!(!answers_health(tls_channel(o.addr, &ours, Some((&foreign, "worker-w1"))).await).await);
    // Plaintext to the TLS port: no answer, health included.
    assert!(!answers_health(Endpoint::from_shared(format!("http://{}", o.addr)).unwrap().connect().await).await);
    // A client that does not trust the server's CA refuses it.
    assert!(tls_channel(o.addr, &foreign, None).await.is_err(), "the server's certificate is verified");

    // The refused calls changed nothing: same workers, same sessions.
    assert_eq!(workers(&mut admin, None).await, listed);
    o.stop().await;
}

#[tokio::test]
async fn tokens_and_certificates_work_together_and_reflection_can_be_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, _) = pki(dir.path());
    let file = auth_file(dir.path(), &format!("admin ops {ADMIN}\nworker w9 {W1}\n"));
    let mut security = mtls(&ours);
    security.auth_file = Some(file);
    security.reflection = false;
    let mut o = start(dir.path(), security).await;

    // A token over a TLS connection without a client certificate.
    let anonymous = tls_channel(o.addr, &ours, None).await.unwrap();
    WorkerServiceClient::new(anonymous.clone())
        .register(with_token(register("w9"), Some(W1)))
        .await
        .expect("w9 by token");
    // The token decides when both are presented: w1's certificate with w9's
    // token acts as w9.
    let both = tls_channel(o.addr, &ours, Some((&ours, "worker-w1"))).await.unwrap();
    let e = WorkerServiceClient::new(both.clone()).register(with_token(register("w1"), Some(W1))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    WorkerServiceClient::new(both).register(register("w1")).await.expect("the certificate alone is w1");

    // Reflection switched off: not served at all.
    let mut reflection = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(anonymous);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let refused = match reflection.server_reflection_info(with_token(tokio_stream::iter([request]), Some(ADMIN))).await
    {
        Err(e) => e.code(),
        Ok(answer) => answer.into_inner().message().await.unwrap_err().code(),
    };
    assert_eq!(refused, Code::Unimplemented);
    o.stop().await;
}

#[tokio::test]
async fn bad_tls_and_auth_files_stop_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, _) = pki(dir.path());
    let bind = |security: Security| {
        orchestrator::server::OrchestratorServer::bind(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database: dir.path().join("orchestrator.db"),
            security,
            ..ServerConfig::default()
        })
    };
    let missing = Security {
        tls: Some(TlsFiles { cert: dir.path().join("nope.pem"), key: ours.server_key.clone(), client_ca: None }),
        ..Security::default()
    };
    let e = bind(missing).await.unwrap_err().to_string();
    assert!(e.contains("--tls-cert") && e.contains("nope.pem"), "{e}");
    let swapped = Security {
        tls: Some(TlsFiles { cert: ours.server_cert.clone(), key: ours.ca.clone(), client_ca: None }),
        ..Security::default()
    };
    let e = bind(swapped).await.unwrap_err().to_string();
    assert!(e.contains("--tls-key"), "{e}");
    let empty = auth_file(dir.path(), "# nothing yet\n");
    let e = bind(Security { auth_file: Some(empty), ..Security::default() }).await.unwrap_err().to_string();
    assert!(e.contains("no credentials"), "{e}");
}

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

#[test]
fn an_unprotected_public_listener_is_refused_naming_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--database"])
        .arg(&db)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for flag in ["--auth-file", "--tls-cert", "--tls-key", "--insecure"] {
        assert!(stderr.contains(flag), "names {flag}: {stderr}");
    }
    assert!(!db.exists(), "refused before anything was created");
}

#[tokio::test]
async fn the_binary_reloads_on_sighup_warns_about_a_readable_file_and_never_logs_a_token() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = auth_file(dir.path(), &format!("admin ops {ADMIN}\nworker w1 {W1}\n"));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    // 0.0.0.0 with an auth file: protected, so it starts.
    let mut command = std::process::Command::new(BIN);
    command
        .args([
            "serve",
            "--http-listen",
            "off",
            "--listen",
            "0.0.0.0:0",
            "--auth-file",
            file.to_str().unwrap(),
            "--database",
        ])
        .arg(dir.path().join("o.db"))
        .env("RUST_LOG", "info");
    let (process, port) = fixtures::LoggedProcess::spawn(command, |line| {
        fixtures::orchestrator::logged_addr(line, "orchestrator serving").map(|a| a.port())
    });
    let mut o = fixtures::OrchestratorProcess { process, addr: ([127, 0, 0, 1], port).into() };
    let startup = o.process.startup.join("\n");
    assert!(startup.contains("accessible by group or others") && startup.contains("chmod 600"), "{startup}");
    let addr = o.addr;
    let mut admin = AdminServiceClient::new(plain(addr).await);
    let mut worker = WorkerServiceClient::new(plain(addr).await);
    assert!(admin.list_workers(with_token(v1::ListWorkersRequest::default(), Some(ADMIN))).await.is_ok());
    let _ = worker.register(with_token(register("w1"), Some(W2))).await.unwrap_err();
    worker.register(with_token(register("w1"), Some(W1))).await.unwrap();

    // Rotate: W2 replaces ADMIN; SIGHUP.
    std::fs::write(&file, format!("admin ops {W2}\nworker w1 {W1}\n")).unwrap();
    let hup = |pid: u32| {
        let status = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
        assert!(status.success());
    };
    let pid = o.process.child().id();
    hup(pid);
    // Every line logged, to look for tokens at the end.
    let seen = std::cell::RefCell::new(o.process.startup.clone());
    let watch = |want: &str| {
        let found = o.process.wait_log(std::time::Duration::from_secs(10), |l| {
            seen.borrow_mut().push(l.to_owned());
            l.contains(want)
        });
        found.unwrap_or_else(|lines| panic!("no {want:?} in {lines:#?}"))
    };
    watch("SIGHUP: auth file read again");
    assert!(admin.list_workers(with_token(v1::ListWorkersRequest::default(), Some(W2))).await.is_ok());
    let e = admin.list_workers(with_token(v1::ListWorkersRequest::default(), Some(ADMIN))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // A broken file: logged, and the credentials in force stay.
    std::fs::write(&file, format!("admin ops {ADMIN}\nadmin\n")).unwrap();
    hup(pid);
    let kept = watch("previous credentials stay");
    assert!(kept.contains("line 2"), "{kept}");
    assert!(admin.list_workers(with_token(v1::ListWorkersRequest::default(), Some(W2))).await.is_ok());

    // Everything it logged, tokens nowhere.
    let _ = AdminServiceClient::new(plain(addr).await).list_workers(v1::ListWorkersRequest::default()).await;
    let rest = o.process.wait_log(std::time::Duration::from_millis(300), |_| false).unwrap_err();
    let log = format!("{}\n{}", seen.borrow().join("\n"), rest.join("\n"));
    assert!(log.contains("refused"), "refusals are logged: {log}");
    for token in [ADMIN, W1, W2] {
        assert!(!log.contains(token), "a token in the log: {log}");
    }
    o.kill();
}
