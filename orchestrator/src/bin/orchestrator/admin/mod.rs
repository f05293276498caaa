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
    let text = execute(args, command).await?;
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
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
            let mut client = connect(args).await?;
            let mut streams = Vec::new();
            let mut page_token = String::new();
            loop {
                let resp = client
                    .list_streams(ListStreamsRequest { page_size, page_token: page_token.clone() })
                    .await
                    .map_err(rpc_error(addr, "ListStreams"))?
                    .into_inner();
                streams.extend(resp.streams);
                if resp.next_page_token.is_empty() || resp.next_page_token == page_token {
                    break;
                }
                page_token = resp.next_page_token;
            }
            Ok(render_streams(&streams, json))
        }
        AdminCommand::Workers => {
            let mut client = connect(args).await?;
            let mut all = ListWorkersResponse::default();
            let mut page_token = String::new();
            loop {
                let resp = client
                    .list_workers(ListWorkersRequest { page_size: 0, page_token: page_token.clone() })
                    .await
                    .map_err(rpc_error(addr, "ListWorkers"))?
                    .into_inner();
                all.workers.extend(resp.workers);
                if resp.next_page_token.is_empty() || resp.next_page_token == page_token {
                    break;
                }
                page_token = resp.next_page_token;
            }
            Ok(render_workers(&all, SystemTime::now(), json))
        }
        AdminCommand::Assignments { server_id } => {
            let mut client = connect(args).await?;
            let mut assignments = Vec::new();
            let mut page_token = String::new();
            loop {
                let resp = client
                    .list_assignments(ListAssignmentsRequest {
                        server_id: server_id.clone().unwrap_or_default(),
                        page_size: 0,
                        page_token: page_token.clone(),
                    })
                    .await
                    .map_err(rpc_error(addr, "ListAssignments"))?
                    .into_inner();
                assignments.extend(resp.assignments);
                if resp.next_page_token.is_empty() || resp.next_page_token == page_token {
                    break;
                }
                page_token = resp.next_page_token;
            }
            Ok(render_assignments(&assignments, json))
        }
        AdminCommand::Status => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn args(addr: &str) -> AdminArgs {
        AdminArgs { addr: addr.to_owned(), json: false, timeout: Duration::from_millis(200) }
    }

    #[tokio::test]
    async fn unreachable_address() {
        let mut out = Vec::new();
        let err = run(&args("http://127.0.0.1:1"), AdminCommand::Status, &mut out).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, AdminError::Unreachable { .. }), "{err:?}");
        assert!(msg.starts_with("cannot reach the orchestrator at http://127.0.0.1:1: "), "{msg}");
        assert!(msg.ends_with("is `orchestrator serve` running there?"), "{msg}");
        assert!(!msg.contains('\n'));
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn invalid_addresses() {
        for addr in ["not a url", "127.0.0.1:50051", "https://example.com", "http://"] {
            let err = run(&args(addr), AdminCommand::Workers, &mut Vec::new()).await.unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, AdminError::InvalidAddr { .. }), "{addr}: {err:?}");
            assert!(msg.starts_with(&format!("invalid --addr {addr}: ")), "{msg}");
            assert!(msg.ends_with("(expected e.g. http://127.0.0.1:50051)"), "{msg}");
        }
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
