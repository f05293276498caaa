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

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use orchestrator_proto::v1::admin_service_client::AdminServiceClient;
use orchestrator_proto::v1::{
    AddStreamsRequest, AddStreamsResponse, Assignment, DrainWorkerRequest, DrainWorkerResponse,
    GetClusterStatusRequest, GetClusterStatusResponse, ListAssignmentsRequest, ListStreamsRequest, ListWorkersRequest,
    ListWorkersResponse, PauseRebalancingRequest, RemoveStreamsRequest, RemoveStreamsResponse,
    ResumeRebalancingRequest, StreamInfo, StreamSpec, StreamState, WorkerState,
};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

/// Most ids sent in one AddStreams / RemoveStreams call (the server's list
/// limit).
const MAX_IDS_PER_CALL: usize = 10_000;
/// Most ids one `A-B` range may cover.
const MAX_IDS_PER_RANGE: u64 = 1_000_000;
/// Most ids one command may name, all arguments together.
const MAX_IDS_PER_COMMAND: usize = 1_000_000;
/// Up to this many ids, `streams add` / `streams remove` list them.
const LIST_IDS_UP_TO: usize = 20;
/// Largest response accepted (a page of 10,000 streams with long URLs is
/// bigger than tonic's 4 MiB default).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Connection options shared by every admin subcommand (`serve` ignores
/// them; they are listed under their own heading).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Admin commands (ignored by serve)")]
pub struct AdminArgs {
    /// Address of the orchestrator's gRPC endpoint.
    #[arg(long, global = true, env = "ORCHESTRATOR_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Print machine-readable JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on a call after this long (e.g. "5s", "500ms").
    #[arg(
        long,
        global = true,
        env = "ORCHESTRATOR_TIMEOUT",
        default_value = "5s",
        value_parser = humantime::parse_duration
    )]
    pub timeout: Duration,
}

/// The admin subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// Add, remove or list streams in the catalog.
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// List the workers the orchestrator knows: state (live, draining,
    /// expired, awaiting re-registration), streams held, capacity and last
    /// heartbeat. Prints once and exits.
    Workers,
    /// List current leases (who processes what, at which lease epoch).
    /// Prints once and exits.
    Assignments {
        /// Only this worker's leases.
        #[arg(long)]
        server_id: Option<String>,
    },
    /// Show cluster-wide figures: streams assigned and unassigned, workers
    /// by state, whether rebalancing is paused or held back. Prints once and
    /// exits.
    Status,
    /// Move every stream away from a worker and give it no new ones.
    ///
    /// Returns at once with the number of streams to move; they move over the
    /// worker's next heartbeats (watch them with `assignments --server-id
    /// ID`). The drain lasts while the worker's session does, even if it
    /// registers again, and ends when the worker deregisters (e.g. it is
    /// stopped cleanly) or its session expires. Draining a draining worker
    /// changes nothing.
    Drain {
        /// The worker to drain.
        server_id: String,
    },
    /// Pause or resume moves for balance (the setting is stored and
    /// survives restarts).
    #[command(subcommand)]
    Rebalancing(RebalancingCommand),
}

/// `streams …`: the stream catalog.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum StreamsCommand {
    /// Add streams to the catalog; streams already there are left unchanged.
    Add {
        /// Stream ids: N or an inclusive range A-B (e.g. `1 5-9 12`).
        #[arg(required = true, value_name = "ID|A-B", allow_negative_numbers = true)]
        ids: Vec<IdArg>,
        /// Name of the stream (only with exactly one stream id).
        #[arg(long)]
        name: Option<String>,
        /// Where workers read the stream from (only with exactly one stream id).
        #[arg(long)]
        source_url: Option<String>,
    },
    /// Remove streams from the catalog; their owners are told to stop.
    Remove {
        /// Stream ids: N or an inclusive range A-B (e.g. `1 5-9 12`).
        #[arg(required = true, value_name = "ID|A-B", allow_negative_numbers = true)]
        ids: Vec<IdArg>,
    },
    /// List every stream with its owner and state.
    List {
        /// Streams asked for per call (0 lets the server choose; at most 10000).
        #[arg(long, default_value_t = 1000)]
        page_size: u32,
    },
}

/// `rebalancing …`: pause or resume moves for balance.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum RebalancingCommand {
    /// Stop moving streams for balance until `rebalancing resume`.
    ///
    /// Coverage still wins: unassigned streams and the streams of expired
    /// workers are still placed, drains and removals still revoke. The pause
    /// lasts until resumed, across orchestrator restarts.
    Pause {
        /// Why, written to the orchestrator's log (at most 1024 bytes).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Move streams for balance again: the orchestrator revokes and grants
    /// over the next heartbeats until the load is balanced.
    Resume,
}

/// One stream-id argument: a single id `N` or an inclusive range `A-B`,
/// with `1 <= A <= B` and at most 1,000,000 ids in a range.
///
/// Parsed from the command line through [`FromStr`]; build one in code with
/// `"5-9".parse::<IdArg>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdArg {
    first: i64,
    last: i64,
}

impl IdArg {
    /// The first id covered.
    pub fn first(&self) -> i64 {
        self.first
    }

    /// The last id covered (equal to [`first`](Self::first) for a single id).
    pub fn last(&self) -> i64 {
        self.last
    }

    /// How many ids the argument covers (at least 1).
    pub fn len(&self) -> u64 {
        self.last.abs_diff(self.first) + 1
    }

    /// Always false: an argument covers at least one id.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for IdArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last { write!(f, "{}", self.first) } else { write!(f, "{}-{}", self.first, self.last) }
    }
}

impl FromStr for IdArg {
    type Err = AdminError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let one = |part: &str| -> Result<i64, AdminError> {
            let id: i64 = part.trim().parse().map_err(|e| {
                AdminError::Usage(format!(
                    "invalid stream id {text:?}: {e} (expected a stream id N >= 1 or an inclusive range A-B)"
                ))
            })?;
            if id < 1 {
                return Err(AdminError::Usage(format!("invalid stream id {text:?}: stream ids start at 1")));
            }
            Ok(id)
        };
        if text.starts_with('-') {
            return Err(AdminError::Usage(format!("invalid stream id {text:?}: stream ids start at 1")));
        }
        let Some((a, b)) = text.split_once('-') else {
            let id = one(text)?;
            return Ok(IdArg { first: id, last: id });
        };
        let (first, last) = (one(a)?, one(b)?);
        if first > last {
            return Err(AdminError::Usage(format!(
                "invalid stream id range {text:?}: the start {first} is greater than the end {last}"
            )));
        }
        let arg = IdArg { first, last };
        if arg.len() > MAX_IDS_PER_RANGE {
            return Err(AdminError::Usage(format!(
                "invalid stream id range {text:?}: it covers {} ids, at most {MAX_IDS_PER_RANGE} per range",
                arg.len()
            )));
        }
        Ok(arg)
    }
}

/// Expands id arguments into the list of stream ids, in order, each id once
/// (the first occurrence wins).
///
/// Fails with [`AdminError::Usage`] when the arguments name more than
/// 1,000,000 distinct ids or none at all.
pub fn parse_ids(args: &[IdArg]) -> Result<Vec<i64>, AdminError> {
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    for arg in args {
        for id in arg.first..=arg.last {
            if seen.insert(id) {
                ids.push(id);
                if ids.len() > MAX_IDS_PER_COMMAND {
                    return Err(AdminError::Usage(format!(
                        "too many stream ids: more than {MAX_IDS_PER_COMMAND} in one command; split it into several"
                    )));
                }
            }
        }
    }
    if ids.is_empty() {
        return Err(AdminError::Usage("no stream ids given: name at least one stream id N or range A-B".to_owned()));
    }
    Ok(ids)
}

/// Why an admin command failed. Each message is one line that says what to
/// fix.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `--addr` is not a usable gRPC address.
    #[error("invalid --addr {addr}: {why} (expected e.g. http://127.0.0.1:50051)")]
    InvalidAddr {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        why: String,
    },
    /// No connection could be made to the orchestrator.
    #[error("cannot reach the orchestrator at {addr}: {cause}; is `orchestrator serve` running there?")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// The root cause, e.g. "Connection refused (os error 111)".
        cause: String,
    },
    /// The orchestrator answered a call with an error status.
    #[error("{rpc} failed: {:?}: {}", .status.code(), one_line(.status.message()))]
    Rpc {
        /// The address called.
        addr: String,
        /// The RPC's name, e.g. "AddStreams".
        rpc: &'static str,
        /// The status returned (boxed: it is large).
        status: Box<tonic::Status>,
    },
    /// The command line is not valid; the message names the argument.
    #[error("{0}")]
    Usage(String),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Io(#[from] std::io::Error),
}

impl AdminError {
    /// The address the command tried to reach, when a connection was
    /// involved.
    pub fn address(&self) -> Option<&str> {
        match self {
            Self::InvalidAddr { addr, .. } | Self::Unreachable { addr, .. } | Self::Rpc { addr, .. } => Some(addr),
            Self::Usage(_) | Self::Io(_) => None,
        }
    }

    /// The process exit code for this error: 2 for a usage error (a bad
    /// argument, as clap uses for its own), 1 when the command failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::InvalidAddr { .. } => 2,
            Self::Unreachable { .. } | Self::Rpc { .. } | Self::Io(_) => 1,
        }
    }

    /// The error as `--json` prints it: `{"error": message}`, plus `address`
    /// when a connection was involved and `code` (the gRPC status name, e.g.
    /// `NOT_FOUND`) when the server answered with an error.
    pub fn to_json(&self) -> Value {
        let mut doc = json!({ "error": self.to_string() });
        if let Some(addr) = self.address() {
            doc["address"] = json!(addr);
        }
        if let Self::Rpc { status, .. } = self {
            doc["code"] = json!(code_name(status.code()));
        }
        doc
    }
}

/// The canonical name of a gRPC status code, e.g. `DEADLINE_EXCEEDED`.
fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut name = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

fn one_line(s: &str) -> String {
    if s.is_empty() {
        return "(no message)".to_owned();
    }
    s.replace(['\r', '\n'], " ")
}

/// Runs one admin command against the orchestrator, writing the result to
/// `out`.
///
/// Arguments are checked before connecting. Connecting and each call give up
/// after `args.timeout`.
pub async fn run(args: &AdminArgs, command: AdminCommand, out: &mut dyn std::io::Write) -> Result<(), AdminError> {
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
            let resp =
                client.list_workers(ListWorkersRequest {}).await.map_err(rpc_error(addr, "ListWorkers"))?.into_inner();
            Ok(render_workers(&resp, SystemTime::now(), json))
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

fn rpc_error(addr: &str, rpc: &'static str) -> impl Fn(tonic::Status) -> AdminError {
    move |status| AdminError::Rpc { addr: addr.to_owned(), rpc, status: Box::new(status) }
}

/// Connects to `args.addr` within `args.timeout`.
async fn connect(args: &AdminArgs) -> Result<AdminServiceClient<Channel>, AdminError> {
    let addr = args.addr.as_str();
    let invalid = |why: String| AdminError::InvalidAddr { addr: addr.to_owned(), why };
    let lower = addr.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(invalid("https is not supported (this build has no TLS); use http://".to_owned()));
    }
    if !lower.starts_with("http://") {
        return Err(invalid("the address must start with http://".to_owned()));
    }
    let endpoint = Endpoint::from_shared(addr.to_owned())
        .map_err(|e| invalid(error_chain(&e)))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    let channel = match tokio::time::timeout(args.timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => {
            return Err(AdminError::Unreachable { addr: addr.to_owned(), cause: root_cause(&e) });
        }
        Err(_) => {
            return Err(AdminError::Unreachable {
                addr: addr.to_owned(),
                cause: format!("no connection within {}", humantime::format_duration(args.timeout)),
            });
        }
    };
    Ok(AdminServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES))
}

/// The messages of an error and its sources, joined by ": ".
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![one_line(&err.to_string())];
    let mut source = err.source();
    while let Some(e) = source {
        let text = one_line(&e.to_string());
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// The message of the innermost error of the source chain.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    one_line(&last.to_string())
}

// ---------------------------------------------------------------------------
// Rendering: pure functions from responses to the text printed.
// ---------------------------------------------------------------------------

/// JSON documents are pretty-printed and end with a newline.
fn json_doc(value: &Value) -> String {
    format!("{value:#}\n")
}

/// Aligned columns under a header; `empty` is printed when there are no rows.
fn table(header: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count());
            out.extend(std::iter::repeat_n(' ', pad));
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    if rows.is_empty() {
        text.push_str(empty);
        text.push('\n');
    }
    text
}

/// A table cell: control characters (which would break the layout) become
/// `?`, an empty value `-`.
fn cell(s: &str) -> String {
    if s.is_empty() {
        return "-".to_owned();
    }
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

fn worker_state_name(value: i32) -> String {
    match WorkerState::try_from(value) {
        Ok(state) => enum_name(state.as_str_name(), "WORKER_STATE_"),
        Err(_) => format!("unknown({value})"),
    }
}

fn stream_state_name(value: i32) -> String {
    match StreamState::try_from(value) {
        Ok(state) => enum_name(state.as_str_name(), "STREAM_STATE_"),
        Err(_) => format!("unknown({value})"),
    }
}

fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_ascii_lowercase()
}

/// The `SystemTime` of a protobuf timestamp, if it is one `humantime` can
/// print (1970 to 9999).
fn system_time(ts: &prost_types::Timestamp) -> Option<SystemTime> {
    const YEAR_10000: i64 = 253_402_300_800;
    if !(0..YEAR_10000).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// RFC 3339 text of a timestamp, or a plain description if out of range.
fn rfc3339(ts: &prost_types::Timestamp) -> String {
    match system_time(ts) {
        Some(t) => humantime::format_rfc3339(t).to_string(),
        None => format!("out-of-range timestamp (seconds {}, nanos {})", ts.seconds, ts.nanos),
    }
}

fn json_time(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.map_or(Value::Null, |ts| Value::String(rfc3339(ts)))
}

/// "3s ago" (or "in 3s" for a time ahead of `now`), to the second.
fn ago(then: SystemTime, now: SystemTime) -> String {
    let whole = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
    match now.duration_since(then) {
        Ok(d) => format!("{} ago", whole(d)),
        Err(e) => format!("in {}", whole(e.duration())),
    }
}

/// `workers`: a table, or `{"workers": [...]}`.
fn render_workers(resp: &ListWorkersResponse, now: SystemTime, json: bool) -> String {
    if json {
        let workers: Vec<Value> = resp
            .workers
            .iter()
            .map(|w| {
                json!({
                    "server_id": w.server_id,
                    "worker_epoch": w.worker_epoch,
                    "state": worker_state_name(w.state),
                    "max_streams": w.max_streams,
                    "assigned_streams": w.assigned_streams,
                    "last_heartbeat": json_time(w.last_heartbeat.as_ref()),
                    "client_version": w.client_version,
                })
            })
            .collect();
        return json_doc(&json!({ "workers": workers }));
    }
    let rows: Vec<Vec<String>> = resp
        .workers
        .iter()
        .map(|w| {
            let heartbeat = match w.last_heartbeat.as_ref() {
                None => "-".to_owned(),
                Some(ts) => system_time(ts).map_or_else(|| rfc3339(ts), |t| ago(t, now)),
            };
            vec![
                cell(&w.server_id),
                worker_state_name(w.state),
                w.worker_epoch.to_string(),
                format!("{}/{}", w.assigned_streams, w.max_streams),
                heartbeat,
                cell(&w.client_version),
            ]
        })
        .collect();
    table(&["SERVER_ID", "STATE", "EPOCH", "STREAMS/MAX", "LAST_HEARTBEAT", "VERSION"], &rows, "(no workers)")
}

/// `assignments`: a table, or `{"assignments": [...]}`.
fn render_assignments(assignments: &[Assignment], json: bool) -> String {
    if json {
        let list: Vec<Value> = assignments
            .iter()
            .map(|a| {
                json!({
                    "server_id": a.server_id,
                    "lease": a.lease.as_ref().map(|l| json!({
                        "stream_id": l.stream_id,
                        "lease_epoch": l.lease_epoch,
                    })),
                    "state": stream_state_name(a.state),
                })
            })
            .collect();
        return json_doc(&json!({ "assignments": list }));
    }
    let rows: Vec<Vec<String>> = assignments
        .iter()
        .map(|a| {
            let (stream, epoch) = a.lease.as_ref().map_or_else(
                || ("-".to_owned(), "-".to_owned()),
                |l| (l.stream_id.to_string(), l.lease_epoch.to_string()),
            );
            vec![stream, cell(&a.server_id), epoch, stream_state_name(a.state)]
        })
        .collect();
    table(&["STREAM", "SERVER_ID", "EPOCH", "STATE"], &rows, "(no assignments)")
}

/// `streams list`: a table, or `{"streams": [...]}`.
fn render_streams(streams: &[StreamInfo], json: bool) -> String {
    if json {
        let list: Vec<Value> = streams
            .iter()
            .map(|s| {
                json!({
                    "spec": s.spec.as_ref().map(|spec| json!({
                        "stream_id": spec.stream_id,
                        "name": spec.name,
                        "source_url": spec.source_url,
                    })),
                    "owner_server_id": s.owner_server_id,
                    "lease_epoch": s.lease_epoch,
                    "state": stream_state_name(s.state),
                })
            })
            .collect();
        return json_doc(&json!({ "streams": list }));
    }
    let rows: Vec<Vec<String>> = streams
        .iter()
        .map(|s| {
            let (id, name) = s.spec.as_ref().map_or_else(
                || ("-".to_owned(), "-".to_owned()),
                |spec| (spec.stream_id.to_string(), cell(&spec.name)),
            );
            vec![id, name, cell(&s.owner_server_id), s.lease_epoch.to_string(), stream_state_name(s.state)]
        })
        .collect();
    table(&["STREAM", "NAME", "OWNER", "EPOCH", "STATE"], &rows, "(no streams)")
}

/// `status`: `key: value` lines, or one JSON object with the proto fields.
fn render_status(resp: &GetClusterStatusResponse, json: bool) -> String {
    if json {
        return json_doc(&json!({
            "live_workers": resp.live_workers,
            "total_streams": resp.total_streams,
            "assigned_streams": resp.assigned_streams,
            "unassigned_streams": resp.unassigned_streams,
            "total_capacity": resp.total_capacity,
            "rebalancing_paused": resp.rebalancing_paused,
            "mass_failure_brake_engaged": resp.mass_failure_brake_engaged,
            "in_grace_period": resp.in_grace_period,
            "grace_ends_at": json_time(resp.grace_ends_at.as_ref()),
            "server_time": json_time(resp.server_time.as_ref()),
        }));
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let grace = match (resp.in_grace_period, resp.grace_ends_at.as_ref()) {
        (false, _) => "no".to_owned(),
        (true, Some(ts)) => format!("until {}", rfc3339(ts)),
        (true, None) => "yes".to_owned(),
    };
    let lines: [(&str, String); 9] = [
        ("live workers", resp.live_workers.to_string()),
        ("streams total", resp.total_streams.to_string()),
        ("streams assigned", resp.assigned_streams.to_string()),
        ("streams unassigned", resp.unassigned_streams.to_string()),
        ("capacity", resp.total_capacity.to_string()),
        ("rebalancing paused", yes_no(resp.rebalancing_paused).to_owned()),
        ("mass-failure brake", if resp.mass_failure_brake_engaged { "on" } else { "off" }.to_owned()),
        ("grace period", grace),
        ("server time", resp.server_time.as_ref().map_or_else(|| "-".to_owned(), rfc3339)),
    ];
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    lines.iter().map(|(key, value)| format!("{:<width$} {value}\n", format!("{key}:"))).collect()
}

/// "1, 2, 3" when there are few ids, else `None`.
fn few_ids(ids: &[i64]) -> Option<String> {
    (!ids.is_empty() && ids.len() <= LIST_IDS_UP_TO)
        .then(|| ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", "))
}

/// `streams add`: "added N stream(s); M already present" (with the ids when
/// few), or `{"added": [...], "already_present": [...]}`.
fn render_add(resp: &AddStreamsResponse, json: bool) -> String {
    if json {
        return json_doc(&json!({
            "added": resp.added,
            "already_present": resp.already_present,
        }));
    }
    let mut text = format!("added {} stream(s); {} already present\n", resp.added.len(), resp.already_present.len());
    if let Some(ids) = few_ids(&resp.added) {
        text.push_str(&format!("added: {ids}\n"));
    }
    if let Some(ids) = few_ids(&resp.already_present) {
        text.push_str(&format!("already present: {ids}\n"));
    }
    text
}

/// `streams remove`: "removed N stream(s); M not found" (with the ids when
/// few), or `{"removed": [...], "not_found": [...]}`.
fn render_remove(resp: &RemoveStreamsResponse, json: bool) -> String {
    if json {
        return json_doc(&json!({
            "removed": resp.removed,
            "not_found": resp.not_found,
        }));
    }
    let mut text = format!("removed {} stream(s); {} not found\n", resp.removed.len(), resp.not_found.len());
    if let Some(ids) = few_ids(&resp.removed) {
        text.push_str(&format!("removed: {ids}\n"));
    }
    if let Some(ids) = few_ids(&resp.not_found) {
        text.push_str(&format!("not found: {ids}\n"));
    }
    text
}

/// `drain`: "draining {id}: {n} stream(s) to move", or
/// `{"server_id": ..., "streams_to_move": n}`.
fn render_drain(server_id: &str, resp: &DrainWorkerResponse, json: bool) -> String {
    if json {
        return json_doc(&json!({
            "server_id": server_id,
            "streams_to_move": resp.streams_to_move,
        }));
    }
    format!("draining {}: {} stream(s) to move\n", cell(server_id), resp.streams_to_move)
}

/// `rebalancing pause|resume`: "rebalancing paused" / "rebalancing resumed",
/// or `{"paused": bool}`.
fn render_rebalancing(paused: bool, json: bool) -> String {
    if json {
        return json_doc(&json!({ "paused": paused }));
    }
    if paused { "rebalancing paused\n".to_owned() } else { "rebalancing resumed\n".to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use orchestrator_proto::v1::{Lease, WorkerInfo};
    use prost_types::Timestamp;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: AdminCommand,
    }

    fn ids(args: &[&str]) -> Result<Vec<i64>, AdminError> {
        let parsed = args.iter().map(|a| a.parse::<IdArg>()).collect::<Result<Vec<_>, _>>()?;
        parse_ids(&parsed)
    }

    fn usage(arg: &str) -> String {
        match arg.parse::<IdArg>() {
            Err(AdminError::Usage(msg)) => msg,
            other => panic!("{arg:?} should be a usage error, got {other:?}"),
        }
    }

    fn ts(seconds: i64) -> Timestamp {
        Timestamp { seconds, nanos: 0 }
    }

    fn parse_json(text: &str) -> Value {
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn clap_parses_ids_and_options() {
        let cli = Cli::try_parse_from(["orchestrator", "streams", "add", "1", "5-9", "12"]).expect("parses");
        let AdminCommand::Streams(StreamsCommand::Add { ids, name, .. }) = cli.command else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!(parse_ids(&ids).unwrap(), vec![1, 5, 6, 7, 8, 9, 12]);
        assert_eq!(name, None);

        let cli = Cli::try_parse_from([
            "orchestrator",
            "--json",
            "--timeout",
            "500ms",
            "streams",
            "add",
            "7",
            "--name",
            "cam",
        ])
        .expect("parses");
        assert!(cli.admin.json);
        assert_eq!(cli.admin.timeout, Duration::from_millis(500));

        // Global options also after the subcommand; negative ids reach our parser.
        let cli = Cli::try_parse_from(["orchestrator", "workers", "--addr", "http://h:1"]).expect("parses");
        assert_eq!(cli.admin.addr, "http://h:1");
        let err = Cli::try_parse_from(["orchestrator", "streams", "remove", "-3"]).unwrap_err();
        assert!(err.to_string().contains("stream ids start at 1"), "{err}");
        assert!(Cli::try_parse_from(["orchestrator", "streams", "add"]).is_err());
    }

    #[test]
    fn ids_single_ranges_and_dedupe() {
        assert_eq!(ids(&["5"]).unwrap(), vec![5]);
        assert_eq!(ids(&["3-5"]).unwrap(), vec![3, 4, 5]);
        assert_eq!(ids(&["7-7"]).unwrap(), vec![7]);
        assert_eq!(ids(&["9", "1-3", "2", "9", "3-4"]).unwrap(), vec![9, 1, 2, 3, 4]);
        assert_eq!(ids(&[" 12 "]).unwrap(), vec![12]);
        let arg: IdArg = "5-9".parse().unwrap();
        assert_eq!((arg.first(), arg.last(), arg.len()), (5, 9, 5));
        assert_eq!(arg.to_string(), "5-9");
        assert_eq!("4".parse::<IdArg>().unwrap().to_string(), "4");
    }

    #[test]
    fn ids_errors() {
        assert!(usage("0").contains("start at 1"));
        assert!(usage("-3").contains("start at 1"));
        assert!(usage("0-4").contains("start at 1"));
        let msg = usage("9-2");
        assert!(msg.contains("\"9-2\"") && msg.contains("greater than"), "{msg}");
        let msg = usage("abc");
        assert!(msg.contains("\"abc\"") && msg.contains("range A-B"), "{msg}");
        assert!(usage("").contains("invalid stream id"));
        assert!(usage("1-").contains("invalid stream id"));
        assert!(usage("99999999999999999999").contains("too large"));
        let msg = usage("1-1000001");
        assert!(msg.contains("1000001 ids") && msg.contains("at most 1000000"), "{msg}");
        assert_eq!(ids(&["1-1000000"]).unwrap().len(), 1_000_000);

        let err = ids(&["1-1000000", "2000000"]).unwrap_err();
        assert!(err.to_string().starts_with("too many stream ids"), "{err}");
        let err = parse_ids(&[]).unwrap_err();
        assert!(err.to_string().starts_with("no stream ids"), "{err}");
    }

    fn workers() -> ListWorkersResponse {
        ListWorkersResponse {
            workers: vec![
                WorkerInfo {
                    server_id: "worker-a".into(),
                    worker_epoch: 3,
                    state: WorkerState::Live as i32,
                    max_streams: 100,
                    assigned_streams: 42,
                    last_heartbeat: Some(ts(1_700_000_000)),
                    client_version: "svc/1.2".into(),
                },
                WorkerInfo {
                    server_id: "w-b".into(),
                    worker_epoch: 0,
                    state: WorkerState::AwaitingReregistration as i32,
                    max_streams: 5,
                    assigned_streams: 0,
                    last_heartbeat: None,
                    client_version: String::new(),
                },
                WorkerInfo { server_id: "w-c".into(), state: 99, ..Default::default() },
            ],
        }
    }

    #[test]
    fn workers_table() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_003);
        let text = render_workers(&workers(), now, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "SERVER_ID  STATE                    EPOCH  STREAMS/MAX  LAST_HEARTBEAT  VERSION");
        assert_eq!(lines[1], "worker-a   live                     3      42/100       3s ago          svc/1.2");
        assert_eq!(lines[2], "w-b        awaiting_reregistration  0      0/5          -               -");
        assert!(lines[3].starts_with("w-c        unknown(99)"), "{}", lines[3]);
        assert_eq!(lines.len(), 4);

        let empty = render_workers(&ListWorkersResponse::default(), now, false);
        assert_eq!(empty, "SERVER_ID  STATE  EPOCH  STREAMS/MAX  LAST_HEARTBEAT  VERSION\n(no workers)\n");
    }

    #[test]
    fn workers_json() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_003);
        let v = parse_json(&render_workers(&workers(), now, true));
        let w = &v["workers"];
        assert_eq!(w.as_array().unwrap().len(), 3);
        assert_eq!(w[0]["server_id"], "worker-a");
        assert_eq!(w[0]["worker_epoch"], 3);
        assert_eq!(w[0]["state"], "live");
        assert_eq!(w[0]["max_streams"], 100);
        assert_eq!(w[0]["assigned_streams"], 42);
        assert_eq!(w[0]["last_heartbeat"], "2023-11-14T22:13:20Z");
        assert_eq!(w[0]["client_version"], "svc/1.2");
        assert_eq!(w[1]["state"], "awaiting_reregistration");
        assert!(w[1]["last_heartbeat"].is_null());
        let empty = parse_json(&render_workers(&ListWorkersResponse::default(), now, true));
        assert_eq!(empty["workers"], json!([]));
    }

    #[test]
    fn relative_times() {
        let t = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(ago(t, t), "0s ago");
        assert_eq!(ago(t, t + Duration::from_millis(3900)), "3s ago");
        assert_eq!(ago(t, t + Duration::from_secs(3723)), "1h 2m 3s ago");
        assert_eq!(ago(t + Duration::from_secs(2), t), "in 2s");
        // Out-of-range timestamps never panic.
        assert!(rfc3339(&ts(-1)).starts_with("out-of-range"));
        assert!(rfc3339(&ts(i64::MAX)).starts_with("out-of-range"));
        let ts = Timestamp { seconds: 0, nanos: 5_000_000 };
        assert_eq!(rfc3339(&ts), "1970-01-01T00:00:00.005000000Z");
    }

    fn assignments() -> Vec<Assignment> {
        vec![
            Assignment {
                server_id: "worker-a".into(),
                lease: Some(Lease { stream_id: 7, lease_epoch: 12 }),
                state: StreamState::Assigned as i32,
            },
            Assignment {
                server_id: "worker-b".into(),
                lease: Some(Lease { stream_id: 1001, lease_epoch: 3 }),
                state: StreamState::Revoking as i32,
            },
        ]
    }

    #[test]
    fn assignments_table_and_json() {
        let text = render_assignments(&assignments(), false);
        assert_eq!(
            text,
            "STREAM  SERVER_ID  EPOCH  STATE\n\
             7       worker-a   12     assigned\n\
             1001    worker-b   3      revoking\n"
        );
        assert_eq!(render_assignments(&[], false), "STREAM  SERVER_ID  EPOCH  STATE\n(no assignments)\n");
        let v = parse_json(&render_assignments(&assignments(), true));
        let a = &v["assignments"];
        assert_eq!(a[0]["server_id"], "worker-a");
        assert_eq!(a[0]["lease"]["stream_id"], 7);
        assert_eq!(a[0]["lease"]["lease_epoch"], 12);
        assert_eq!(a[0]["state"], "assigned");
        assert_eq!(a[1]["state"], "revoking");
    }

    fn streams() -> Vec<StreamInfo> {
        vec![
            StreamInfo {
                spec: Some(StreamSpec { stream_id: 1, name: "camera one".into(), source_url: "rtmp://cams/1".into() }),
                owner_server_id: "worker-a".into(),
                lease_epoch: 4,
                state: StreamState::Assigned as i32,
            },
            StreamInfo {
                spec: Some(StreamSpec { stream_id: 22, name: String::new(), source_url: String::new() }),
                owner_server_id: String::new(),
                lease_epoch: 0,
                state: StreamState::Unassigned as i32,
            },
        ]
    }

    #[test]
    fn streams_table_and_json() {
        let text = render_streams(&streams(), false);
        assert_eq!(
            text,
            "STREAM  NAME        OWNER     EPOCH  STATE\n\
             1       camera one  worker-a  4      assigned\n\
             22      -           -         0      unassigned\n"
        );
        assert_eq!(render_streams(&[], false), "STREAM  NAME  OWNER  EPOCH  STATE\n(no streams)\n");
        let v = parse_json(&render_streams(&streams(), true));
        let s = &v["streams"];
        assert_eq!(s[0]["spec"]["stream_id"], 1);
        assert_eq!(s[0]["spec"]["name"], "camera one");
        assert_eq!(s[0]["spec"]["source_url"], "rtmp://cams/1");
        assert_eq!(s[0]["owner_server_id"], "worker-a");
        assert_eq!(s[0]["lease_epoch"], 4);
        assert_eq!(s[0]["state"], "assigned");
        assert_eq!(s[1]["owner_server_id"], "");
        assert_eq!(s[1]["state"], "unassigned");
    }

    #[test]
    fn table_cells_cannot_break_the_layout() {
        let mut s = streams();
        s[0].spec.as_mut().unwrap().name = "evil\nname\t".into();
        let text = render_streams(&s, false);
        assert_eq!(text.lines().count(), 3);
        assert!(text.contains("evil?name?"));
    }

    fn status(grace: bool) -> GetClusterStatusResponse {
        GetClusterStatusResponse {
            live_workers: 3,
            total_streams: 120,
            assigned_streams: 100,
            unassigned_streams: 20,
            rebalancing_paused: true,
            mass_failure_brake_engaged: false,
            in_grace_period: grace,
            grace_ends_at: grace.then(|| ts(1_700_000_060)),
            server_time: Some(ts(1_700_000_000)),
            total_capacity: 300,
        }
    }

    #[test]
    fn status_table() {
        let text = render_status(&status(true), false);
        assert_eq!(
            text,
            "live workers:       3\n\
             streams total:      120\n\
             streams assigned:   100\n\
             streams unassigned: 20\n\
             capacity:           300\n\
             rebalancing paused: yes\n\
             mass-failure brake: off\n\
             grace period:       until 2023-11-14T22:14:20Z\n\
             server time:        2023-11-14T22:13:20Z\n"
        );
        let text = render_status(&status(false), false);
        assert!(text.contains("grace period:       no\n"), "{text}");
        let text = render_status(&GetClusterStatusResponse::default(), false);
        assert!(text.contains("rebalancing paused: no\n"), "{text}");
        assert!(text.contains("server time:        -\n"), "{text}");
    }

    #[test]
    fn status_json() {
        let v = parse_json(&render_status(&status(true), true));
        assert_eq!(v["live_workers"], 3);
        assert_eq!(v["total_streams"], 120);
        assert_eq!(v["assigned_streams"], 100);
        assert_eq!(v["unassigned_streams"], 20);
        assert_eq!(v["total_capacity"], 300);
        assert_eq!(v["rebalancing_paused"], true);
        assert_eq!(v["mass_failure_brake_engaged"], false);
        assert_eq!(v["in_grace_period"], true);
        assert_eq!(v["grace_ends_at"], "2023-11-14T22:14:20Z");
        assert_eq!(v["server_time"], "2023-11-14T22:13:20Z");
        let v = parse_json(&render_status(&status(false), true));
        assert!(v["grace_ends_at"].is_null());
    }

    #[test]
    fn add_and_remove() {
        let resp = AddStreamsResponse { added: vec![1, 5, 6], already_present: vec![7] };
        assert_eq!(
            render_add(&resp, false),
            "added 3 stream(s); 1 already present\nadded: 1, 5, 6\nalready present: 7\n"
        );
        let many = AddStreamsResponse { added: (1..=21).collect(), already_present: vec![] };
        assert_eq!(render_add(&many, false), "added 21 stream(s); 0 already present\n");
        let v = parse_json(&render_add(&resp, true));
        assert_eq!(v["added"], json!([1, 5, 6]));
        assert_eq!(v["already_present"], json!([7]));

        let resp = RemoveStreamsResponse { removed: vec![2], not_found: vec![3, 4] };
        assert_eq!(render_remove(&resp, false), "removed 1 stream(s); 2 not found\nremoved: 2\nnot found: 3, 4\n");
        let v = parse_json(&render_remove(&resp, true));
        assert_eq!(v["removed"], json!([2]));
        assert_eq!(v["not_found"], json!([3, 4]));
    }

    #[test]
    fn drain_and_rebalancing() {
        let resp = DrainWorkerResponse { streams_to_move: 17 };
        assert_eq!(render_drain("worker-a", &resp, false), "draining worker-a: 17 stream(s) to move\n");
        let v = parse_json(&render_drain("worker-a", &resp, true));
        assert_eq!(v["server_id"], "worker-a");
        assert_eq!(v["streams_to_move"], 17);

        assert_eq!(render_rebalancing(true, false), "rebalancing paused\n");
        assert_eq!(render_rebalancing(false, false), "rebalancing resumed\n");
        assert_eq!(parse_json(&render_rebalancing(true, true))["paused"], true);
        assert_eq!(parse_json(&render_rebalancing(false, true))["paused"], false);
    }

    #[test]
    fn rpc_error_is_one_line() {
        let err = rpc_error("http://h:1", "AddStreams")(tonic::Status::invalid_argument("stream_id 0\nmust be > 0"));
        assert_eq!(err.to_string(), "AddStreams failed: InvalidArgument: stream_id 0 must be > 0");
    }

    #[test]
    fn errors_as_json_name_the_address_and_the_code() {
        let err = rpc_error("http://h:1", "DrainWorker")(tonic::Status::not_found("server_id nobody: unknown"));
        assert_eq!(
            err.to_json(),
            json!({
                "error": "DrainWorker failed: NotFound: server_id nobody: unknown",
                "address": "http://h:1",
                "code": "NOT_FOUND",
            })
        );
        assert_eq!(err.exit_code(), 1);
        let err = AdminError::Unreachable { addr: "http://h:1".into(), cause: "refused".into() };
        assert_eq!(err.to_json()["address"], "http://h:1");
        assert_eq!(err.to_json().as_object().map(|o| o.len()), Some(2), "no code without an answer");
        let err = AdminError::Usage("too many stream ids".into());
        assert_eq!(err.to_json(), json!({ "error": "too many stream ids" }), "no address without a connection");
        assert_eq!(err.exit_code(), 2);
        assert_eq!(code_name(tonic::Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
    }

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
