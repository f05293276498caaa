//! The orchestrator against hostile and careless peers, through real
//! sockets: raw HTTP/2 (the `h2` crate) and raw protobuf bytes where typed
//! messages cannot express the probe, tonic clients where they can.
//!
//! - one connection parking streams that never send their message (or never
//!   end their body) cannot starve anyone, and the server advertises
//!   MAX_CONCURRENT_STREAMS;
//! - malformed bytes get INVALID_ARGUMENT, oversized messages
//!   RESOURCE_EXHAUSTED, never INTERNAL;
//! - idle connections and connections whose peer stopped answering PINGs are
//!   closed;
//! - running out of file descriptors backs off instead of spinning (the real
//!   binary under a small `ulimit -n`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fixtures::{InProcess, LoggedProcess, engine_config, patient};
use orchestrator::server::ServerConfig;
use orchestrator_proto::v1;
use orchestrator_proto::v1::admin_service_client::AdminServiceClient;
use orchestrator_proto::v1::worker_service_client::WorkerServiceClient;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

fn config(db: &Path) -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        database: db.to_path_buf(),
        engine: engine_config(),
        drain_timeout: Duration::from_millis(100),
        max_concurrent_requests: 4,
        max_streams_per_connection: 16,
        ..ServerConfig::default()
    }
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

/// A raw HTTP/2 connection.
async fn h2(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// A gRPC frame: uncompressed, big-endian length, the bytes.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut f = vec![0];
    f.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    f.extend_from_slice(message);
    f
}

/// Opens a gRPC call on `path` and sends `body` (ending the stream if
/// `end`); returns the response future and the send half.
fn open(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
    body: Vec<u8>,
    end: bool,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = send.send_request(request, false).unwrap();
    if !body.is_empty() || end {
        stream.send_data(Bytes::from(body), end).unwrap();
    }
    (response, stream)
}

/// The gRPC status of a response: from its headers (trailers-only) or its
/// trailers.
async fn status_of(response: h2::client::ResponseFuture) -> tonic::Status {
    let response = response.await.expect("a response");
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers").expect("trailers present");
    tonic::Status::from_header_map(&trailers).expect("grpc-status in the trailers")
}

async fn call(addr: SocketAddr, path: &str, body: Vec<u8>) -> tonic::Status {
    let mut send = h2(addr).await.ready().await.unwrap();
    let (response, _stream) = open(&mut send, addr, path, body, true);
    status_of(response).await
}

/// Reads the server's first SETTINGS frame after the client preface and
/// returns its SETTINGS_MAX_CONCURRENT_STREAMS.
async fn advertised_max_concurrent_streams(addr: SocketAddr) -> Option<u32> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut header = [0u8; 9];
    tcp.read_exact(&mut header).await.unwrap();
    assert_eq!(header[3], 4, "the server's first frame is SETTINGS");
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0; len];
    tcp.read_exact(&mut payload).await.unwrap();
    payload
        .chunks(6)
        .find(|p| u16::from_be_bytes([p[0], p[1]]) == 3)
        .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
}

#[tokio::test]
async fn streams_that_never_send_their_message_starve_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = patient(Duration::from_secs(3));
    let mut server =
        InProcess::start_with(ServerConfig { request_receive_timeout: timeout, ..config(&dir.path().join("o.db")) })
            .await;
    let addr = server.addr;
    assert_eq!(advertised_max_concurrent_streams(addr).await, Some(16));

    // One connection parks 16 calls, four times the worker permits: half
    // send HEADERS and no message, half a whole message but never the end
    // of the body.
    let mut send = h2(addr).await;
    let mut parked = Vec::new();
    let message = frame(&v1::HeartbeatRequest::default().encode_to_vec());
    for i in 0..16 {
        send = send.ready().await.unwrap();
        let body = if i % 2 == 0 { Vec::new() } else { message.clone() };
        parked.push(open(&mut send, addr, "/orchestrator.v1.WorkerService/Heartbeat", body, false));
    }
    let started = Instant::now();

    // Meanwhile everyone else is served: health, a worker, an admin read.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(addr).await);
    let check = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(check.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let mut worker = WorkerServiceClient::new(channel(addr).await);
    let registered = worker
        .register(v1::RegisterRequest {
            server_id: "w1".into(),
            max_streams: 5,
            request_id: "r1".into(),
            held_leases: vec![],
            client_version: String::new(),
        })
        .await;
    assert!(registered.is_ok(), "{registered:?}");
    let mut admin = AdminServiceClient::new(channel(addr).await);
    assert!(admin.get_cluster_status(v1::GetClusterStatusRequest {}).await.is_ok());
    assert!(started.elapsed() < timeout, "the checks ran while the calls were parked");

    // The parked calls end with DEADLINE_EXCEEDED.
    for (response, _stream) in parked {
        let status = status_of(response).await;
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().contains("--request-receive-timeout"), "{status:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_bytes_get_invalid_argument_and_oversized_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = InProcess::start_with(config(&dir.path().join("o.db"))).await;
    let addr = server.addr;
    const REGISTER: &str = "/orchestrator.v1.WorkerService/Register";

    // server_id (field 1, length-delimited) holding bytes that are not UTF-8.
    let status = call(addr, REGISTER, frame(&[0x0a, 0x02, 0xff, 0xfe])).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("RegisterRequest.server_id"), "{status:?}");
    // server_id sent as a varint: a wrong wire type.
    let status = call(addr, REGISTER, frame(&[0x08, 0x01])).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("wire type"), "{status:?}");
    // A field cut short inside the message.
    let status = call(addr, REGISTER, frame(&[0x0a, 0x10, b'a'])).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // The body ends inside the message.
    let mut truncated = frame(&v1::RegisterRequest { server_id: "w".into(), ..Default::default() }.encode_to_vec());
    truncated.truncate(truncated.len() - 1);
    let status = call(addr, REGISTER, truncated).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("truncated"), "{status:?}");
    // No message at all.
    let status = call(addr, "/orchestrator.v1.AdminService/GetClusterStatus", Vec::new()).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("no message"), "{status:?}");

    // An 8 MiB message is refused from its header, before it is read.
    let mut send = h2(addr).await.ready().await.unwrap();
    let mut header = vec![0];
    header.extend_from_slice(&(8u32 << 20).to_be_bytes());
    header.extend_from_slice(&[0; 1024]);
    let (response, _stream) = open(&mut send, addr, "/orchestrator.v1.AdminService/AddStreams", header, false);
    let status = status_of(response).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-message-bytes"), "{status:?}");

    // The same through a typed client that sends the whole message.
    let mut admin = AdminServiceClient::new(channel(addr).await);
    let streams = (1..=20_000)
        .map(|id| v1::StreamSpec { stream_id: id, name: "n".repeat(250), source_url: String::new() })
        .collect();
    let err = admin.add_streams(v1::AddStreamsRequest { streams, request_id: "big".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let status = admin.get_cluster_status(v1::GetClusterStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.total_streams, 0, "nothing of the refused requests got in");
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let idle = Duration::from_millis(300);
    let mut server =
        InProcess::start_with(ServerConfig { idle_timeout: Some(idle), ..config(&dir.path().join("o.db")) }).await;
    let addr = server.addr;

    // A connection that does nothing after the handshake is closed.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (_send, connection) = h2::client::handshake(tcp).await.unwrap();
    let closed = tokio::time::timeout(patient(Duration::from_secs(10)), connection).await;
    assert!(closed.is_ok(), "the idle connection was not closed");

    // A connection with a call every 100 ms outlives several idle timeouts.
    let mut admin = AdminServiceClient::new(channel(addr).await);
    let started = Instant::now();
    while started.elapsed() < idle * 4 {
        admin.get_cluster_status(v1::GetClusterStatusRequest {}).await.expect("the busy connection stays usable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = InProcess::start_with(ServerConfig {
        idle_timeout: None,
        keepalive_interval: Some(Duration::from_millis(200)),
        keepalive_timeout: Duration::from_millis(200),
        ..config(&dir.path().join("o.db"))
    })
    .await;
    // A raw client: the preface and SETTINGS, then it reads but never
    // answers anything (no SETTINGS ack, no PING ack).
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(patient(Duration::from_secs(10)), tcp.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "the server kept a connection whose peer never answered its PINGs");
    assert!(sink.windows(4).any(|w| w[3] == 6), "the server sent a PING frame");
    server.stop().await;
}

/// The real binary with 64 file descriptors: more connections than that
/// make accept fail with EMFILE. The server backs off (little CPU), says so
/// once, and accepts again when descriptors are free.
#[test]
fn out_of_file_descriptors_the_server_backs_off_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_orchestrator");
    let mut command = Command::new("sh");
    command
        .args([
            "-c",
            "ulimit -n 64 && exec \"$0\" \"$@\"",
            bin,
            "serve",
            "--http-listen",
            "off",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--database")
        .arg(dir.path().join("o.db"))
        .env("RUST_LOG", "info");
    let (mut process, addr) =
        LoggedProcess::spawn(command, |line| fixtures::orchestrator::logged_addr(line, "orchestrator serving"));
    let pid = process.child().id();
    let connections: Vec<std::net::TcpStream> =
        (0..100).filter_map(|_| std::net::TcpStream::connect(addr).ok()).collect();
    assert!(connections.len() > 64, "the backlog took the connections");
    process
        .wait_log(Duration::from_secs(10), |l| l.contains("cannot accept connections: out of resources"))
        .expect("the server says it is out of file descriptors");

    // CPU time over one second while starved: backing off, not spinning.
    let cpu_ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks() - before;
    // A spinning accept loop burns a whole core: ~100 ticks per second.
    assert!(used < 30, "the server used {used} CPU ticks in one second while out of file descriptors");

    drop(connections);
    process
        .wait_log(Duration::from_secs(10), |l| l.contains("accepting connections again"))
        .expect("the server accepts again once descriptors are free");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut admin = AdminServiceClient::new(channel(addr).await);
        admin.get_cluster_status(v1::GetClusterStatusRequest {}).await.expect("served again");
    });
}
