//! The worker client against an orchestrator with TLS and bearer tokens
//! (in-process, real gRPC over 127.0.0.1:0, a test CA from
//! `fixtures::certs`): it works with its credentials, and when the
//! orchestrator refuses them (a revoked token) the worker goes to local
//! mode at once, says why in its health, and stops by its local-mode limit
//! counted from the last call that succeeded.

use std::time::Duration;

use fixtures::{client_builder, eventually};
use orchestrator::server::{Security, ServerConfig, TlsFiles};
use worker_client::{ClientTls, Mode};

const ADMIN: &str = "adm-0123456789abcdef";
const TOKEN: &str = "w1t-0123456789abcdef";

#[tokio::test]
async fn a_revoked_token_sends_the_worker_to_local_mode_and_its_limit_holds() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fixtures::certs::generate(&dir.path().join("pki"), "test CA", &[], &[]).unwrap();
    let auth = dir.path().join("auth");
    std::fs::write(&auth, format!("admin ops {ADMIN}\nworker w1 {TOKEN}\n")).unwrap();
    let server = orchestrator::server::OrchestratorServer::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: dir.path().join("o.db"),
        engine: fixtures::engine_config(),
        drain_timeout: Duration::from_millis(100),
        security: Security {
            tls: Some(TlsFiles { cert: pki.server_cert.clone(), key: pki.server_key.clone(), client_ca: None }),
            auth_file: Some(auth.clone()),
            reflection: true,
        },
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let authenticator = server.authenticator();
    let port = server.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let url = format!("https://localhost:{port}");

    // The catalog, added with the admin token over TLS.
    {
        use orchestrator_proto::v1;
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pki.ca_pem()));
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut admin = v1::admin_service_client::AdminServiceClient::new(channel);
        let mut request = tonic::Request::new(v1::AddStreamsRequest {
            streams: (1..=3).map(|id| v1::StreamSpec { stream_id: id, ..Default::default() }).collect(),
            request_id: "add".into(),
        });
        request.metadata_mut().insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
        admin.add_streams(request).await.unwrap();
    }

    // Without a token the client is refused: local mode, with the reason.
    let refused = client_builder(&url, "w1", &dir.path().join("w0.db"))
        .tls(ClientTls::new(pki.ca_pem(), None))
        .build()
        .await
        .unwrap();
    assert!(!refused.register().await.unwrap());
    let health = refused.health_check().await;
    assert_eq!(health.mode, Mode::Local);
    let reason = health.local_mode_reason.clone().unwrap_or_default();
    assert!(reason.contains("Unauthenticated") && reason.contains("credentials"), "{reason}");
    assert_eq!(health.last_orchestrator_contact, None, "a refusal is not a contact");
    refused.shutdown().await;

    // With it: registers and gets the streams, over TLS.
    let limit = Duration::from_millis(800);
    let client = client_builder(&url, "w1", &dir.path().join("w1.db"))
        .tls(ClientTls::new(pki.ca_pem(), None))
        .auth_token(TOKEN)
        .max_streams(3)
        .local_mode_limit(limit)
        .build()
        .await
        .unwrap();
    assert!(!format!("{:?}", client.config()).contains(TOKEN), "the token is not in the config's Debug");
    client.start().await.unwrap();
    eventually!(Duration::from_secs(10), client.leases().borrow().len() == 3);
    assert_eq!(client.health_check().await.mode, Mode::Normal);

    // Revoked: the next heartbeat is refused; local mode at once.
    std::fs::write(&auth, format!("admin ops {ADMIN}\n")).unwrap();
    authenticator.reload().unwrap();
    let revoked_at = std::time::Instant::now();
    eventually!(Duration::from_secs(5), client.health_check().await.mode != Mode::Normal);
    let health = client.health_check().await;
    let reason = health.local_mode_reason.clone().unwrap_or_default();
    assert!(reason.contains("refused this worker's credentials"), "{health:?}");
    assert!(!reason.contains(TOKEN));
    // It keeps processing within its limit, then stops: the limit counts
    // from the last successful call, not from the refusals.
    eventually!(Duration::from_secs(10), client.health_check().await.mode == Mode::Halted);
    assert!(revoked_at.elapsed() <= fixtures::patient(limit + Duration::from_secs(2)));
    assert_eq!(client.health_check().await.assigned_streams, 0);
    assert!(!client.can_process_stream(1));
    client.shutdown().await;
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}

#[tokio::test]
async fn tls_settings_are_checked_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fixtures::certs::generate(&dir.path().join("pki"), "test CA", &[], &[]).unwrap();
    let tls = || ClientTls::new(pki.ca_pem(), None);
    let e = client_builder("http://127.0.0.1:1", "w1", &dir.path().join("a.db")).tls(tls()).build().await.unwrap_err();
    assert!(e.to_string().contains("https://"), "{e}");
    let e = client_builder("https://127.0.0.1:1", "w1", &dir.path().join("b.db")).build().await.unwrap_err();
    assert!(e.to_string().contains("no TLS is configured"), "{e}");
    let e = client_builder("https://127.0.0.1:1", "w1", &dir.path().join("c.db"))
        .tls(tls())
        .auth_token("has space")
        .build()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("auth_token"), "{e}");
    let e = ClientTls::from_files(dir.path().join("missing.pem"), None::<(&str, &str)>).unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
}
