//! The operator commands: `orchestrator <command>` calls a running
//! orchestrator's `AdminService` over gRPC and prints the answer.
//!
//! Every command takes the connection options of [`AdminArgs`]: `--addr`
//! (or `ORCHESTRATOR_ADDR`, default `http://127.0.0.1:50051`), `--timeout`
//! (or `ORCHESTRATOR_TIMEOUT`, default `5s`, for the connection and for each
//! call) and `--json` (one pretty-printed JSON document instead of a table;
//! field names are the proto fields, enums lower-case strings, timestamps
//! RFC 3339).
//!
//! Every command prints once and exits: 0 on success, 1 when the command
//! failed (unreachable server, an error status), 2 for a usage error (a bad
//! argument, `--addr` included). With
//! `--json` a failure is JSON too, on stdout: `{"error": "<message>",
//! "address": "<url tried>", "code": "<gRPC status>"}` (`address` only when a
//! connection was involved, `code` only when the server answered with an
//! error); see [`AdminError::to_json`].
//!
//! ```text
//! # the stream catalog; ids are N or an inclusive range A-B
//! orchestrator streams add 1 5-9 12
//! orchestrator streams add 42 --name "camera 42" --source-url rtmp://cams/42
//! orchestrator streams remove 5-9
//! orchestrator streams list --page-size 500
//!
//! # who is there and who processes what
//! orchestrator workers
//! orchestrator assignments --server-id worker-a
//! orchestrator status --json
//!
//! # operations
//! orchestrator drain worker-a
//! orchestrator rebalancing pause --reason "maintenance window"
//! orchestrator rebalancing resume
//! ```
//!
//! Mutating commands send a fresh `request_id` per call, and `streams add` /
//! `streams remove` split long id lists into calls of at most 10,000 ids (the
//! server's list limit), sent in order; the printed result merges them. Such
//! a command is safe to run again after a failure: ids already handled are
//! reported as already present / not found.
//!
//! [`run`] does the work and writes to any [`std::io::Write`]; the rendering
//! is done by pure functions so it can be tested without a server.

mod args;
mod connect;
mod error;
mod render;

use std::time::SystemTime;

use orchestrator_proto::v1::{
    AddStreamsRequest, AddStreamsResponse, DrainWorkerRequest, GetClusterStatusRequest, ListAssignmentsRequest,
    ListStreamsRequest, ListWorkersRequest, ListWorkersResponse, PauseRebalancingRequest, RemoveStreamsRequest,
    RemoveStreamsResponse, ResumeRebalancingRequest, StreamSpec,
};

pub(crate) use args::{AdminArgs, AdminCommand};
use args::{RebalancingCommand, StreamsCommand, parse_ids};
use connect::{connect, rpc_error};
pub(crate) use error::AdminError;
use render::{
    render_add, render_assignments, render_drain, render_rebalancing, render_remove, render_status, render_streams,
    render_workers,
};

/// Most ids sent in one AddStreams / RemoveStreams call (the server's list
/// limit).
const MAX_IDS_PER_CALL: usize = 10_000;

/// Runs one admin command against the orchestrator, writing the result to
/// `out`.
///
/// Arguments are checked before connecting. Connecting and each call give up
/// after `args.timeout`.
pub(crate) async fn run(
    args: &AdminArgs,
    command: AdminCommand,
    out: &mut dyn std::io::Write,
) -> Result<(), AdminError> {
    if let AdminCommand::Status { watch: Some(every) } = command {
        return watch_status(args, every, out).await;
    }
    let text = execute(args, command).await?;
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `status --watch`: a reading every `every` until ctrl-c. On a terminal
/// each reading replaces the last; otherwise readings are appended (with
/// `--json`, one compact document per line). A failed reading is shown in
/// its place and the watch goes on (the orchestrator may be restarting).
async fn watch_status(
    args: &AdminArgs,
    every: std::time::Duration,
    out: &mut dyn std::io::Write,
) -> Result<(), AdminError> {
    if every < std::time::Duration::from_millis(100) {
        return Err(AdminError::Usage("--watch: the interval must be at least 100ms".into()));
    }
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout()) && !args.json;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = ticks.tick() => {}
        }
        // ctrl-c ends the watch at once, a reading in progress too.
        let reading = tokio::select! {
            _ = &mut stop => return Ok(()),
            r = execute(args, AdminCommand::Status { watch: None }) => r,
        };
        let text = match (reading, args.json) {
            (Ok(text), true) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(doc) => format!("{doc}\n"),
                Err(_) => text,
            },
            (Ok(text), false) => text,
            (Err(e), true) => format!("{}\n", e.to_json()),
            (Err(e), false) => format!("error: {e}\n"),
        };
        if terminal {
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            write!(out, "\x1b[H\x1b[2J{} every {every:?} ({now}; ctrl-c to stop)\n\n{text}", args.addr)?;
        } else if args.json {
            out.write_all(text.as_bytes())?;
        } else {
            writeln!(out, "{text}")?;
        }
        out.flush()?;
    }
}

async fn execute(args: &AdminArgs, command: AdminCommand) -> Result<String, AdminError> {
    let json = args.json;
    let addr = args.addr.as_str();
    match command {
        AdminCommand::Streams(StreamsCommand::Add { ids, name, source_url }) => {
            let ids = parse_ids(&ids)?;
            if (name.is_some() || source_url.is_some()) && ids.len() != 1 {
                return Err(AdminError::Usage(format!(
                    "--name and --source-url describe one stream: give exactly one stream id (got {})",
                    ids.len()
                )));
            }
            let name = name.unwrap_or_default();
            let source_url = source_url.unwrap_or_default();
            let mut client = connect(args).await?;
            let mut merged = AddStreamsResponse::default();
            for chunk in ids.chunks(MAX_IDS_PER_CALL) {
                let request = AddStreamsRequest {
                    streams: chunk
                        .iter()
                        .map(|&stream_id| StreamSpec { stream_id, name: name.clone(), source_url: source_url.clone() })
                        .collect(),
                    request_id: request_id(),
                };
                let resp = client.add_streams(request).await.map_err(rpc_error(addr, "AddStreams"))?.into_inner();
                merged.added.extend(resp.added);
                merged.already_present.extend(resp.already_present);
            }
            Ok(render_add(&merged, json))
        }
        AdminCommand::Streams(StreamsCommand::Remove { ids }) => {
            let ids = parse_ids(&ids)?;
            let mut client = connect(args).await?;
            let mut merged = RemoveStreamsResponse::default();
            for chunk in ids.chunks(MAX_IDS_PER_CALL) {
                let request = RemoveStreamsRequest { stream_ids: chunk.to_vec(), request_id: request_id() };
                let resp = client.remove_streams(request).await.map_err(rpc_error(addr, "RemoveStreams"))?.into_inner();
                merged.removed.extend(resp.removed);
                merged.not_found.extend(resp.not_found);
            }
            Ok(render_remove(&merged, json))
        }
        AdminCommand::Streams(StreamsCommand::List { page_size }) => {
            let client = connect(args).await?;
            let streams = all_pages(|page_token| {
                let request = ListStreamsRequest { page_size, page_token };
                let mut client = client.clone();
                async move {
                    let resp = client.list_streams(request).await.map_err(rpc_error(addr, "ListStreams"))?.into_inner();
                    Ok((resp.streams, resp.next_page_token))
                }
            })
            .await?;
            Ok(render_streams(&streams, json))
        }
        AdminCommand::Workers => {
            let client = connect(args).await?;
            let workers = all_pages(|page_token| {
                let mut client = client.clone();
                async move {
                    let resp = client
                        .list_workers(ListWorkersRequest { page_size: 0, page_token })
                        .await
                        .map_err(rpc_error(addr, "ListWorkers"))?
                        .into_inner();
                    Ok((resp.workers, resp.next_page_token))
                }
            })
            .await?;
            let all = ListWorkersResponse { workers, next_page_token: String::new() };
            Ok(render_workers(&all, SystemTime::now(), json))
        }
        AdminCommand::Assignments { server_id } => {
            let client = connect(args).await?;
            let server_id = server_id.unwrap_or_default();
            let assignments = all_pages(|page_token| {
                let request = ListAssignmentsRequest { server_id: server_id.clone(), page_size: 0, page_token };
                let mut client = client.clone();
                async move {
                    let resp = client
                        .list_assignments(request)
                        .await
                        .map_err(rpc_error(addr, "ListAssignments"))?
                        .into_inner();
                    Ok((resp.assignments, resp.next_page_token))
                }
            })
            .await?;
            Ok(render_assignments(&assignments, json))
        }
        AdminCommand::Status { .. } => {
            let mut client = connect(args).await?;
            let resp = client
                .get_cluster_status(GetClusterStatusRequest {})
                .await
                .map_err(rpc_error(addr, "GetClusterStatus"))?
                .into_inner();
            Ok(render_status(&resp, json))
        }
        AdminCommand::Drain { server_id } => {
            let mut client = connect(args).await?;
            let resp = client
                .drain_worker(DrainWorkerRequest { server_id: server_id.clone(), request_id: request_id() })
                .await
                .map_err(rpc_error(addr, "DrainWorker"))?
                .into_inner();
            Ok(render_drain(&server_id, &resp, json))
        }
        AdminCommand::Rebalancing(RebalancingCommand::Pause { reason }) => {
            let mut client = connect(args).await?;
            let resp = client
                .pause_rebalancing(PauseRebalancingRequest { reason, request_id: request_id() })
                .await
                .map_err(rpc_error(addr, "PauseRebalancing"))?
                .into_inner();
            Ok(render_rebalancing(resp.paused, json))
        }
        AdminCommand::Rebalancing(RebalancingCommand::Resume) => {
            let mut client = connect(args).await?;
            let resp = client
                .resume_rebalancing(ResumeRebalancingRequest { request_id: request_id() })
                .await
                .map_err(rpc_error(addr, "ResumeRebalancing"))?
                .into_inner();
            Ok(render_rebalancing(resp.paused, json))
        }
    }
}

/// A fresh idempotency key for one mutating call.
fn request_id() -> String {
    format!("cli-{:016x}", fastrand::u64(..))
}

/// Every item of a paginated list: calls `page` with each page token (empty
/// first) until the server returns no next token (or the same one again).
async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>, AdminError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), AdminError>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (mut got, next) = page(token.clone()).await?;
        items.append(&mut got);
        if next.is_empty() || next == token {
            return Ok(items);
        }
        token = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn args(addr: &str) -> AdminArgs {
        AdminArgs {
            addr: addr.to_owned(),
            json: false,
            timeout: Duration::from_millis(200),
            token: None,
            tls_ca: None,
            client_cert: None,
            client_key: None,
        }
    }

    #[tokio::test]
    async fn unreachable_address() {
        let mut out = Vec::new();
        let err = run(&args("http://127.0.0.1:1"), AdminCommand::Status { watch: None }, &mut out).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, AdminError::Unreachable { .. }), "{err:?}");
        assert!(msg.starts_with("cannot reach the orchestrator at http://127.0.0.1:1: "), "{msg}");
        assert!(msg.ends_with("is `orchestrator serve` running there?"), "{msg}");
        assert!(!msg.contains('\n'));
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn invalid_addresses() {
        for addr in ["not a url", "127.0.0.1:50051", "ftp://example.com", "http://"] {
            let err = run(&args(addr), AdminCommand::Workers, &mut Vec::new()).await.unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, AdminError::InvalidAddr { .. }), "{addr}: {err:?}");
            assert!(msg.starts_with(&format!("invalid --addr {addr}: ")), "{msg}");
            assert!(msg.ends_with("(expected e.g. http://127.0.0.1:50051)"), "{msg}");
        }
    }

    #[tokio::test]
    async fn tls_options_must_match_the_scheme() {
        let err = run(&args("https://example.com"), AdminCommand::Workers, &mut Vec::new()).await.unwrap_err();
        assert!(matches!(err, AdminError::Usage(_)) && err.to_string().contains("--tls-ca"), "{err:?}");
        let mut with_ca = args("http://127.0.0.1:1");
        with_ca.tls_ca = Some("ca.pem".into());
        let err = run(&with_ca, AdminCommand::Workers, &mut Vec::new()).await.unwrap_err();
        assert!(err.to_string().contains("use an https:// address"), "{err:?}");
        let mut token = args("http://127.0.0.1:1");
        token.token = Some(args::Secret("has space".into()));
        let err = run(&token, AdminCommand::Workers, &mut Vec::new()).await.unwrap_err();
        assert!(err.to_string().contains("--token") && !err.to_string().contains("has space"), "{err:?}");
        assert!(!format!("{token:?}").contains("has space"), "the token is not in Debug output");
    }

    #[tokio::test]
    async fn usage_errors_come_before_connecting() {
        // The address is unreachable: a usage error proves nothing was tried.
        let command = AdminCommand::Streams(StreamsCommand::Add {
            ids: vec!["1-3".parse().unwrap()],
            name: Some("cam".into()),
            source_url: None,
        });
        let err = run(&args("http://127.0.0.1:1"), command, &mut Vec::new()).await.unwrap_err();
        assert_eq!(err.to_string(), "--name and --source-url describe one stream: give exactly one stream id (got 3)");
    }
}
