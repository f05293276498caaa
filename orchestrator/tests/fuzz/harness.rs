//! The request path under fuzzing, shared by `tests/fuzz.rs` (proptest) and
//! the `cargo fuzz` target in `orchestrator/fuzz/`.
//!
//! A [`Harness`] is a real [`Orchestrator`] on a real SQLite file (in
//! `/dev/shm` when there is one, so a commit costs no disk flush), driven
//! through the generated tonic clients over the generated servers
//! in-process: the request is encoded, decoded by the server's codec,
//! validated and applied to the engine exactly as over a socket, without
//! one. [`Harness::exercise`] sends one request and then checks:
//!
//! - the status code is one the contract allows for that RPC (never
//!   `INTERNAL` or `UNKNOWN`: those mean a bug or a storage failure, never
//!   bad input), and a session error carries its `ErrorInfo`;
//! - the answer keeps the contract (every presented lease decided, every
//!   requested stream in exactly one list, ...);
//! - a refused request, and any read-only RPC, changed nothing;
//! - the invariants the admin API can observe ([`Harness::check`]): one
//!   holder per stream, active leases within capacity, the listings and
//!   the cluster status agree, lease and worker epochs never go back, a
//!   lease epoch never names two owners, the catalog is exactly what
//!   `AddStreams` / `RemoveStreams` answered.
//!
//! The engine's own consistency checks (`check_caches`, run by every
//! placement round in debug builds) run on every call too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use orchestrator::engine::EngineConfig;
use orchestrator::service::{AdminApi, Orchestrator, ServiceConfig, WorkerApi};
use orchestrator::store::{SqliteStore, Store, StoreHandle, StoreRunner};
use orchestrator_proto::v1;
use orchestrator_proto::v1::admin_service_client::AdminServiceClient;
use orchestrator_proto::v1::admin_service_server::AdminServiceServer;
use orchestrator_proto::v1::worker_service_client::WorkerServiceClient;
use orchestrator_proto::v1::worker_service_server::WorkerServiceServer;
use prost::Message;
use tonic::{Code, Status};
use tonic_types::StatusExt;

type WorkerClient = WorkerServiceClient<WorkerServiceServer<WorkerApi>>;
type AdminClient = AdminServiceClient<AdminServiceServer<AdminApi>>;

/// Session timeout of [`config`]; [`HEARTBEAT`] and [`GRACE`] likewise.
pub(crate) const SESSION_TIMEOUT: u64 = 1_000;
/// See [`SESSION_TIMEOUT`].
pub(crate) const HEARTBEAT: u64 = 200;
/// See [`SESSION_TIMEOUT`].
pub(crate) const GRACE: u64 = 1_500;
/// The list limit of [`config`]: small, so that too long lists are cheap.
pub(crate) const MAX_LIST_LEN: usize = 16;
/// The `max_streams` limit of [`config`].
pub(crate) const MAX_STREAMS_LIMIT: u32 = 64;

// History: this fuzzing found six bugs, all fixed in issue 14, each kept as
// a regression case in `minimal_cases_found_so_far` (tests/fuzz.rs): a record
// sequence at i64::MAX overflowed the store's watermark loop (a panic of the
// store thread); a stream removed while leased came back after a restart;
// a worker presenting a stream at another epoch kept an active lease nobody
// processed; a removed stream's old name came back after a restart; a pause
// was lost by a restart of an empty database; a retried SyncLocalState
// reported a different stale count.

/// The engine configuration every fuzz case runs with.
pub(crate) fn config() -> EngineConfig {
    EngineConfig {
        session_timeout: SESSION_TIMEOUT,
        heartbeat_interval: HEARTBEAT,
        grace_period: GRACE,
        max_list_len: MAX_LIST_LEN,
        max_streams_limit: MAX_STREAMS_LIMIT,
        ..EngineConfig::default()
    }
}

/// A current-thread runtime with tokio's clock paused: the orchestrator's
/// clock is tokio's, so [`Harness::tick`] moves time without sleeping.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("tokio runtime")
}

macro_rules! requests {
    ($($rpc:ident($request:ty, $response:ty) => $client:ident.$method:ident, $mutates:expr;)*) => {
        /// One request of either service.
        #[derive(Debug, Clone, PartialEq)]
        pub(crate) enum Req {
            $($rpc($request),)*
        }

        /// The answer to a [`Req`].
        #[derive(Debug, Clone, PartialEq)]
        pub(crate) enum Resp {
            $($rpc($response),)*
        }

        /// Every RPC, in the order [`Req::decode`] numbers them.
        pub(crate) const RPCS: &[&str] = &[$(stringify!($rpc)),*];

        impl Req {
            /// Decodes `bytes` as the request of RPC number `kind` (modulo
            /// the number of RPCs); `None` if protobuf decoding fails.
            pub(crate) fn decode(kind: u8, bytes: &[u8]) -> Option<Self> {
                let decoders: &[fn(&[u8]) -> Option<Req>] =
                    &[$(|b| <$request>::decode(b).ok().map(Req::$rpc)),*];
                decoders[usize::from(kind) % decoders.len()](bytes)
            }

            /// The RPC's name.
            pub(crate) fn rpc(&self) -> &'static str {
                match self {
                    $(Req::$rpc(_) => stringify!($rpc),)*
                }
            }

            /// The request's protobuf encoding.
            pub(crate) fn encode(&self) -> Vec<u8> {
                match self {
                    $(Req::$rpc(r) => r.encode_to_vec(),)*
                }
            }

            /// Whether the RPC may change state (all but the List/Get ones).
            pub(crate) fn mutates(&self) -> bool {
                match self {
                    $(Req::$rpc(_) => $mutates,)*
                }
            }
        }

        impl Harness {
            async fn send(&mut self, request: &Req) -> Result<Resp, Status> {
                match request {
                    $(Req::$rpc(r) => self.$client.$method(r.clone()).await.map(|a| Resp::$rpc(a.into_inner())),)*
                }
            }
        }
    };
}

requests! {
    Register(v1::RegisterRequest, v1::RegisterResponse) => worker.register, true;
    Heartbeat(v1::HeartbeatRequest, v1::HeartbeatResponse) => worker.heartbeat, true;
    RequestStreams(v1::RequestStreamsRequest, v1::RequestStreamsResponse) => worker.request_streams, true;
    ReleaseStreams(v1::ReleaseStreamsRequest, v1::ReleaseStreamsResponse) => worker.release_streams, true;
    SyncLocalState(v1::SyncLocalStateRequest, v1::SyncLocalStateResponse) => worker.sync_local_state, true;
    Deregister(v1::DeregisterRequest, v1::DeregisterResponse) => worker.deregister, true;
    AddStreams(v1::AddStreamsRequest, v1::AddStreamsResponse) => admin.add_streams, true;
    RemoveStreams(v1::RemoveStreamsRequest, v1::RemoveStreamsResponse) => admin.remove_streams, true;
    ListStreams(v1::ListStreamsRequest, v1::ListStreamsResponse) => admin.list_streams, false;
    ListWorkers(v1::ListWorkersRequest, v1::ListWorkersResponse) => admin.list_workers, false;
    ListAssignments(v1::ListAssignmentsRequest, v1::ListAssignmentsResponse) => admin.list_assignments, false;
    GetClusterStatus(v1::GetClusterStatusRequest, v1::GetClusterStatusResponse) => admin.get_cluster_status, false;
    DrainWorker(v1::DrainWorkerRequest, v1::DrainWorkerResponse) => admin.drain_worker, true;
    PauseRebalancing(v1::PauseRebalancingRequest, v1::PauseRebalancingResponse) => admin.pause_rebalancing, true;
    ResumeRebalancing(v1::ResumeRebalancingRequest, v1::ResumeRebalancingResponse) => admin.resume_rebalancing, true;
}

/// What the admin API shows: compared before and after a call that must
/// change nothing, and across a restart.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    /// Every catalog stream (all pages).
    pub(crate) streams: Vec<v1::StreamInfo>,
    /// Every known worker.
    pub(crate) workers: Vec<v1::WorkerInfo>,
    /// Every current lease of a live worker (all pages).
    pub(crate) assignments: Vec<v1::Assignment>,
    /// The cluster status, without `server_time`.
    pub(crate) status: v1::GetClusterStatusResponse,
}

/// An orchestrator under fuzzing, with what the checks remember between
/// calls.
pub(crate) struct Harness {
    dir: tempfile::TempDir,
    config: EngineConfig,
    orchestrator: Orchestrator,
    store_thread: Option<JoinHandle<()>>,
    worker: WorkerClient,
    admin: AdminClient,
    /// The catalog as `AddStreams` / `RemoveStreams` answered it.
    catalog: BTreeSet<i64>,
    /// Highest lease epoch seen per stream.
    stream_epochs: BTreeMap<i64, u64>,
    /// The owner each (stream, lease epoch) was seen with.
    lease_owners: BTreeMap<(i64, u64), String>,
    /// Highest worker epoch seen per worker.
    worker_epochs: BTreeMap<String, u64>,
    /// The latest session `Register` returned, per server id.
    sessions: BTreeMap<String, v1::SessionRef>,
    /// The leases each live worker holds, as of the last check.
    held: BTreeMap<String, Vec<v1::Lease>>,
    /// Per worker, the streams its latest `Register` (and the
    /// `SyncLocalState`s since) presented at an epoch answered
    /// `STALE_EPOCH`.
    stale_presented: BTreeMap<String, BTreeSet<i64>>,
    /// The request ids of the admin side's executed mutating calls, as the
    /// engine remembers them (the last [`REMEMBERED_REQUESTS`]): a call
    /// with one of these ids is a replay, answered from memory and applied
    /// again to nothing.
    admin_memory: std::collections::VecDeque<String>,
    /// Streams `RemoveStreams` removed at some point.
    removed_once: BTreeSet<i64>,
    /// What `GetClusterStatus.rebalancing_paused` must be after the call
    /// just answered (a pause or resume that was executed, not replayed).
    expect_paused: Option<bool>,
}

/// How many answers the engine remembers per worker and for the admin
/// side (`engine/memory.rs`).
const REMEMBERED_REQUESTS: usize = 64;

fn open(dir: &Path, config: &EngineConfig) -> (Orchestrator, JoinHandle<()>) {
    let mut store = SqliteStore::open(&dir.join("orchestrator.db")).expect("open the database");
    let loaded = store.load().expect("load the database");
    let (handle, runner) = StoreHandle::spawn(store, loaded.acknowledged_through.clone()).expect("store thread");
    let StoreRunner::Thread(thread) = runner else { unreachable!("spawn starts a thread") };
    (Orchestrator::new(ServiceConfig::new(config.clone()), loaded, handle), thread)
}

fn tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new().prefix("orchestrator-fuzz-").to_owned();
    if shm.is_dir()
        && let Ok(dir) = builder.tempdir_in(shm)
    {
        return dir;
    }
    builder.tempdir().expect("temp dir")
}

fn is_session_rpc(request: &Req) -> bool {
    matches!(
        request,
        Req::Heartbeat(_)
            | Req::RequestStreams(_)
            | Req::ReleaseStreams(_)
            | Req::SyncLocalState(_)
            | Req::Deregister(_)
    )
}

fn session_of(request: &Req) -> Option<&v1::SessionRef> {
    match request {
        Req::Heartbeat(r) => r.session.as_ref(),
        Req::RequestStreams(r) => r.session.as_ref(),
        Req::ReleaseStreams(r) => r.session.as_ref(),
        Req::SyncLocalState(r) => r.session.as_ref(),
        Req::Deregister(r) => r.session.as_ref(),
        _ => None,
    }
}

/// `parts` (the answer's lists) split `all` (the request's list): every
/// element in exactly one part, each part in request order.
fn partitions<T: PartialEq + std::fmt::Debug>(all: &[T], parts: &[&[T]], what: &str) {
    let mut next = vec![0; parts.len()];
    for item in all {
        let hit = parts.iter().enumerate().find(|(p, part)| part.get(next[*p]) == Some(item));
        let Some((p, _)) = hit else { panic!("{what}: {item:?} of the request is in no list of {parts:?}") };
        next[p] += 1;
    }
    for (p, part) in parts.iter().enumerate() {
        assert_eq!(next[p], part.len(), "{what}: an answer list has entries the request did not have: {parts:?}");
    }
}

fn stale_epoch_streams(decisions: &[v1::LeaseDecision]) -> BTreeSet<i64> {
    decisions
        .iter()
        .filter(|d| d.reason == v1::RevokeReason::StaleEpoch as i32)
        .filter_map(|d| d.lease.map(|l| l.stream_id))
        .collect()
}

fn check_decision(d: &v1::LeaseDecision, presented: Option<&v1::Lease>, what: &str) {
    if let Some(p) = presented {
        assert_eq!(d.lease.as_ref(), Some(p), "{what}: a decision is about another lease than presented");
    }
    let kind = v1::LeaseDecisionKind::try_from(d.kind);
    let reason = v1::RevokeReason::try_from(d.reason);
    match kind {
        Ok(v1::LeaseDecisionKind::Keep) => {
            assert_eq!(reason, Ok(v1::RevokeReason::Unspecified), "{what}: KEEP with a reason: {d:?}");
        }
        Ok(v1::LeaseDecisionKind::Revoke) => {
            assert!(
                matches!(reason, Ok(r) if r != v1::RevokeReason::Unspecified),
                "{what}: REVOKE without reason: {d:?}"
            );
        }
        _ => panic!("{what}: decision kind {} is not KEEP or REVOKE", d.kind),
    }
}

impl Harness {
    /// A fresh orchestrator on an empty database.
    pub(crate) async fn start(config: EngineConfig) -> Self {
        let dir = tempdir();
        let (orchestrator, store_thread) = open(dir.path(), &config);
        Self {
            dir,
            config,
            worker: WorkerServiceClient::new(orchestrator.worker_service()),
            admin: AdminServiceClient::new(orchestrator.admin_service()),
            orchestrator,
            store_thread: Some(store_thread),
            catalog: BTreeSet::new(),
            stream_epochs: BTreeMap::new(),
            lease_owners: BTreeMap::new(),
            worker_epochs: BTreeMap::new(),
            sessions: BTreeMap::new(),
            held: BTreeMap::new(),
            stale_presented: BTreeMap::new(),
            admin_memory: std::collections::VecDeque::new(),
            expect_paused: None,
            removed_once: BTreeSet::new(),
        }
    }

    /// Some state for requests to meet: streams 1..=6, workers `w0` (4
    /// streams) and `w1` (2) registered and holding streams (session ids
    /// `0.1`, worker epoch 1), one grant of each unacknowledged. The calls
    /// are checked only for their answers; the invariants once at the end.
    pub(crate) async fn seed(&mut self) {
        let streams =
            (1..=6).map(|id| v1::StreamSpec { stream_id: id, name: format!("s{id}"), source_url: String::new() });
        let add = v1::AddStreamsRequest { streams: streams.collect(), request_id: "seed-add".into() };
        self.seed_call(Req::AddStreams(add)).await;
        for (id, max) in [("w0", 4), ("w1", 2)] {
            let register = v1::RegisterRequest {
                server_id: id.into(),
                max_streams: max,
                request_id: format!("seed-register-{id}"),
                held_leases: vec![],
                client_version: "fuzz/1".into(),
            };
            let Resp::Register(r) = self.seed_call(Req::Register(register)).await else { unreachable!() };
            let beat = v1::HeartbeatRequest { session: r.session, processing_count: 0, acknowledged: vec![] };
            let Resp::Heartbeat(first) = self.seed_call(Req::Heartbeat(beat.clone())).await else { unreachable!() };
            // Acknowledge all but the last grant.
            let acknowledged = first.assign[..first.assign.len().saturating_sub(1)].to_vec();
            self.seed_call(Req::Heartbeat(v1::HeartbeatRequest { acknowledged, ..beat })).await;
        }
        self.check().await;
    }

    async fn seed_call(&mut self, request: Req) -> Resp {
        match self.send(&request).await {
            Ok(answer) => {
                self.check_answer(&request, &answer, request.rpc());
                answer
            }
            Err(status) => panic!("seed call {} refused: {status:?}", request.rpc()),
        }
    }

    /// The latest session of `server_id` (from a `Register` answer).
    pub(crate) fn session(&self, server_id: &str) -> Option<&v1::SessionRef> {
        self.sessions.get(server_id)
    }

    /// The leases `server_id` holds (if live), as of the last check.
    pub(crate) fn held(&self, server_id: &str) -> &[v1::Lease] {
        self.held.get(server_id).map_or(&[], Vec::as_slice)
    }

    /// Sends one request and checks the answer, the state and the
    /// invariants (see the module documentation). Panics on a violation.
    pub(crate) async fn exercise(&mut self, request: &Req) -> Result<Resp, Status> {
        let before = self.snapshot().await;
        let answer = self.send(request).await;
        let what = format!("{} {request:?}", request.rpc());
        match &answer {
            Ok(a) => self.check_answer(request, a, &what),
            Err(status) => self.check_refusal(request, status, &what),
        }
        let after = self.check().await;
        if answer.is_err() || !request.mutates() {
            assert_eq!(before, after, "{what} answered {answer:?} but changed the state");
        }
        if let Some(paused) = self.expect_paused.take() {
            assert_eq!(after.status.rebalancing_paused, paused, "{what}: rebalancing_paused afterwards");
        }
        answer
    }

    /// Sends `request` again (a client retry with the same `request_id`)
    /// after it was answered `first`: the same answer, and nothing changes.
    /// `Heartbeat` has no `request_id` and is only checked like any call.
    pub(crate) async fn retry(&mut self, request: &Req, first: &Result<Resp, Status>) {
        let before = self.snapshot().await;
        let again = self.exercise(request).await;
        if matches!(request, Req::Heartbeat(_)) || !request.mutates() {
            return;
        }
        let what = format!("retried {} {request:?}", request.rpc());
        match (first, &again) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{what}: another answer"),
            (Err(a), Err(b)) => assert_eq!(a.code(), b.code(), "{what}: {a:?} then {b:?}"),
            (a, b) => panic!("{what}: {a:?} then {b:?}"),
        }
        let after = self.snapshot().await;
        assert_eq!(before, after, "{what}: the retry changed the state");
    }

    fn check_refusal(&self, request: &Req, status: &Status, what: &str) {
        let allowed: &[Code] = match request {
            Req::Register(_) | Req::AddStreams(_) | Req::RemoveStreams(_) => &[Code::InvalidArgument],
            Req::PauseRebalancing(_) | Req::ResumeRebalancing(_) => &[Code::InvalidArgument],
            Req::ListStreams(_) | Req::ListAssignments(_) => &[Code::InvalidArgument],
            Req::ListWorkers(_) | Req::GetClusterStatus(_) => &[],
            Req::DrainWorker(_) => &[Code::InvalidArgument, Code::NotFound],
            _ => &[Code::InvalidArgument, Code::FailedPrecondition],
        };
        assert!(
            allowed.contains(&status.code()),
            "{what}: answered {:?} ({}), the contract allows only {allowed:?}",
            status.code(),
            status.message()
        );
        if status.code() == Code::FailedPrecondition {
            assert!(is_session_rpc(request));
            let info = status.get_error_details().error_info().cloned();
            let Some(info) = info else { panic!("{what}: FAILED_PRECONDITION without ErrorInfo: {status:?}") };
            assert!(orchestrator_proto::reason::is_session_reason(&info.reason), "{what}: reason {info:?}");
            assert_eq!(info.domain, orchestrator_proto::ERROR_DOMAIN, "{what}");
            let server_id = session_of(request).map(|s| s.server_id.as_str());
            assert_eq!(
                info.metadata.get(orchestrator_proto::METADATA_SERVER_ID).map(String::as_str),
                server_id,
                "{what}: ErrorInfo metadata"
            );
        }
    }

    /// Whether an admin call answered OK was a replay of an earlier one
    /// (same request id, still remembered); remembers it if not.
    fn admin_replay(&mut self, request_id: &str) -> bool {
        if self.admin_memory.iter().any(|id| id == request_id) {
            return true;
        }
        if self.admin_memory.len() == REMEMBERED_REQUESTS {
            self.admin_memory.pop_front();
        }
        self.admin_memory.push_back(request_id.to_owned());
        false
    }

    fn check_answer(&mut self, request: &Req, answer: &Resp, what: &str) {
        let replay = match request {
            Req::AddStreams(q) => self.admin_replay(&q.request_id),
            Req::RemoveStreams(q) => self.admin_replay(&q.request_id),
            Req::DrainWorker(q) => self.admin_replay(&q.request_id),
            Req::PauseRebalancing(q) => self.admin_replay(&q.request_id),
            Req::ResumeRebalancing(q) => self.admin_replay(&q.request_id),
            _ => false,
        };
        match (request, answer) {
            (Req::Register(q), Resp::Register(a)) => {
                let Some(session) = &a.session else { panic!("{what}: no session") };
                assert_eq!(session.server_id, q.server_id, "{what}");
                assert!(session.worker_epoch >= 1, "{what}: worker_epoch 0");
                assert!((1..=128).contains(&session.session_id.len()), "{what}: session_id {:?}", session.session_id);
                assert_eq!(a.held_lease_decisions.len(), q.held_leases.len(), "{what}: one decision per lease");
                for (d, l) in a.held_lease_decisions.iter().zip(&q.held_leases) {
                    check_decision(d, Some(l), what);
                }
                assert!(a.heartbeat_interval.is_some() && a.session_timeout.is_some(), "{what}");
                let stale = stale_epoch_streams(&a.held_lease_decisions);
                self.stale_presented.insert(q.server_id.clone(), stale);
                let newer = self.sessions.get(&q.server_id).is_none_or(|s| s.worker_epoch <= session.worker_epoch);
                if newer {
                    self.sessions.insert(q.server_id.clone(), session.clone());
                }
            }
            (Req::Heartbeat(_), Resp::Heartbeat(a)) => {
                assert!(a.assign.iter().all(|l| l.stream_id > 0 && l.lease_epoch >= 1), "{what}: {a:?}");
                for d in &a.revoke {
                    check_decision(d, None, what);
                    assert_eq!(d.kind, v1::LeaseDecisionKind::Revoke as i32, "{what}");
                }
                assert!(a.next_heartbeat_interval.is_some(), "{what}");
            }
            (Req::RequestStreams(q), Resp::RequestStreams(a)) => {
                assert!(a.granted.len() <= q.count as usize, "{what}: more than asked: {a:?}");
                assert!(a.granted.iter().all(|l| l.stream_id > 0 && l.lease_epoch >= 1), "{what}: {a:?}");
            }
            (Req::ReleaseStreams(q), Resp::ReleaseStreams(a)) => {
                partitions(&q.leases, &[a.released.as_slice(), a.not_held.as_slice()], what);
            }
            (Req::SyncLocalState(q), Resp::SyncLocalState(a)) => {
                if let Some(session) = &q.session {
                    let stale = stale_epoch_streams(&a.decisions);
                    self.stale_presented.entry(session.server_id.clone()).or_default().extend(stale);
                }
                assert_eq!(a.decisions.len(), q.held_leases.len(), "{what}: one decision per lease");
                for (d, l) in a.decisions.iter().zip(&q.held_leases) {
                    check_decision(d, Some(l), what);
                }
                assert!(a.stale_records as usize <= q.records.len(), "{what}: {a:?}");
            }
            (Req::AddStreams(q), Resp::AddStreams(a)) => {
                let ids: Vec<i64> = q.streams.iter().map(|s| s.stream_id).collect();
                partitions(&ids, &[a.added.as_slice(), a.already_present.as_slice()], what);
                if !replay {
                    self.catalog.extend(&a.added);
                }
            }
            (Req::RemoveStreams(q), Resp::RemoveStreams(a)) => {
                partitions(&q.stream_ids, &[a.removed.as_slice(), a.not_found.as_slice()], what);
                for id in a.removed.iter().filter(|_| !replay) {
                    self.catalog.remove(id);
                    self.removed_once.insert(*id);
                }
            }
            (Req::ListStreams(q), Resp::ListStreams(a)) => {
                let size = if q.page_size == 0 { 1_000 } else { q.page_size.min(10_000) };
                assert!(a.streams.len() <= size as usize, "{what}: page larger than asked");
            }
            (Req::ListAssignments(q), Resp::ListAssignments(a)) => {
                let size = if q.page_size == 0 { 1_000 } else { q.page_size.min(10_000) };
                assert!(a.assignments.len() <= size as usize, "{what}: page larger than asked");
                if !q.server_id.is_empty() {
                    assert!(a.assignments.iter().all(|x| x.server_id == q.server_id), "{what}: another worker's");
                }
            }
            (Req::PauseRebalancing(_), Resp::PauseRebalancing(a)) => {
                assert!(a.paused, "{what}");
                self.expect_paused = (!replay).then_some(true);
            }
            (Req::ResumeRebalancing(_), Resp::ResumeRebalancing(a)) => {
                assert!(!a.paused, "{what}");
                self.expect_paused = (!replay).then_some(false);
            }
            (Req::Deregister(_) | Req::ListWorkers(_) | Req::GetClusterStatus(_) | Req::DrainWorker(_), _) => {}
            (q, a) => panic!("{}: answered as another RPC: {a:?}", q.rpc()),
        }
    }

    /// Everything the admin API shows (every page).
    pub(crate) async fn snapshot(&mut self) -> Snapshot {
        let mut streams = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self.admin.list_streams(v1::ListStreamsRequest { page_size: 0, page_token }).await;
            let page = page.expect("ListStreams").into_inner();
            streams.extend(page.streams);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let mut assignments = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = v1::ListAssignmentsRequest { server_id: String::new(), page_size: 0, page_token };
            let page = self.admin.list_assignments(request).await.expect("ListAssignments").into_inner();
            assignments.extend(page.assignments);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let workers =
            self.admin.list_workers(v1::ListWorkersRequest::default()).await.expect("ListWorkers").into_inner().workers;
        let mut status =
            self.admin.get_cluster_status(v1::GetClusterStatusRequest {}).await.expect("status").into_inner();
        status.server_time = None;
        Snapshot { streams, workers, assignments, status }
    }

    /// Checks the invariants the admin API can observe; returns what it saw.
    pub(crate) async fn check(&mut self) -> Snapshot {
        use v1::StreamState::{Assigned, Revoking, Unassigned};
        let s = self.snapshot().await;

        // The catalog: ascending, positive, exactly what the admin calls answered.
        let ids: Vec<i64> = s.streams.iter().map(|x| x.spec.as_ref().map_or(0, |spec| spec.stream_id)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ListStreams not strictly ascending: {ids:?}");
        assert!(ids.iter().all(|&id| id > 0), "a stream id <= 0 in the catalog: {ids:?}");
        assert_eq!(ids.iter().copied().collect::<BTreeSet<_>>(), self.catalog, "the catalog is not what was answered");

        // Workers: never forgotten, epochs never go back.
        let workers: BTreeMap<&str, &v1::WorkerInfo> = s.workers.iter().map(|w| (w.server_id.as_str(), w)).collect();
        assert_eq!(workers.len(), s.workers.len(), "a worker listed twice");
        for (id, epoch) in &self.worker_epochs {
            let w = workers.get(id.as_str()).unwrap_or_else(|| panic!("worker {id} disappeared"));
            assert!(w.worker_epoch >= *epoch, "worker epoch of {id} went back from {epoch} to {}", w.worker_epoch);
        }
        for w in &s.workers {
            self.worker_epochs.insert(w.server_id.clone(), w.worker_epoch);
        }
        // Holders: live workers and, during the grace period after a
        // restart, workers awaiting re-registration (the contract counts
        // their streams as ASSIGNED).
        let live = |id: &str| {
            workers.get(id).is_some_and(|w| {
                matches!(
                    v1::WorkerState::try_from(w.state),
                    Ok(v1::WorkerState::Live | v1::WorkerState::Draining | v1::WorkerState::AwaitingReregistration)
                )
            })
        };

        // Assignments: one holder per stream, live holders, epochs >= 1.
        let mut by_stream: BTreeMap<i64, &v1::Assignment> = BTreeMap::new();
        let mut active: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        let mut held: BTreeMap<String, Vec<v1::Lease>> = BTreeMap::new();
        for a in &s.assignments {
            let lease = a.lease.unwrap_or_else(|| panic!("an assignment without lease: {a:?}"));
            assert!(lease.lease_epoch >= 1, "lease epoch 0 assigned: {a:?}");
            assert!(live(&a.server_id), "an assignment of a worker that is not live: {a:?}");
            assert!(by_stream.insert(lease.stream_id, a).is_none(), "stream {} held twice", lease.stream_id);
            match v1::StreamState::try_from(a.state) {
                Ok(Assigned) => active.entry(a.server_id.as_str()).or_default().push(lease.stream_id),
                Ok(Revoking) => {}
                _ => panic!("assignment state {}: {a:?}", a.state),
            }
            held.entry(a.server_id.clone()).or_default().push(lease);
        }

        // Capacity: a live worker's active leases within its max_streams;
        // its assigned_streams counts its leases (revoking included).
        for w in &s.workers {
            if live(&w.server_id) {
                let streams = active.get(w.server_id.as_str()).map_or(&[][..], Vec::as_slice);
                let n = streams.len();
                assert!(
                    n <= w.max_streams as usize,
                    "{} holds {n} active leases > max_streams {} (active: {streams:?})",
                    w.server_id,
                    w.max_streams
                );
                let all = held.get(&w.server_id).map_or(0, Vec::len);
                assert_eq!(w.assigned_streams as usize, all, "assigned_streams of {}", w.server_id);
            }
        }

        // ListStreams agrees with ListAssignments.
        let mut placed = 0u64;
        for x in &s.streams {
            let id = x.spec.as_ref().map_or(0, |spec| spec.stream_id);
            match v1::StreamState::try_from(x.state) {
                Ok(Unassigned) => {
                    assert!(x.owner_server_id.is_empty(), "an unassigned stream with an owner: {x:?}");
                }
                Ok(state @ (Assigned | Revoking)) => {
                    placed += 1;
                    let a = by_stream.get(&id).unwrap_or_else(|| panic!("stream {id} {state:?} but not listed"));
                    assert_eq!(a.server_id, x.owner_server_id, "owner of stream {id}");
                    assert_eq!(a.lease.map(|l| l.lease_epoch), Some(x.lease_epoch), "epoch of stream {id}");
                    assert_eq!(a.state, x.state, "state of stream {id}");
                }
                _ => panic!("stream state {}: {x:?}", x.state),
            }
        }

        // Epochs: never back per stream; one owner per (stream, epoch).
        let shown = s.streams.iter().filter_map(|x| Some((x.spec.as_ref()?.stream_id, x.lease_epoch, None)));
        let leased = s.assignments.iter().filter_map(|a| Some((a.lease?.stream_id, a.lease?.lease_epoch, Some(a))));
        for (id, epoch, assignment) in shown.chain(leased).filter(|(_, e, _)| *e > 0) {
            let max = self.stream_epochs.entry(id).or_default();
            assert!(epoch >= *max, "lease epoch of stream {id} went back from {max} to {epoch}");
            *max = epoch;
            if let Some(a) = assignment {
                let owner = self.lease_owners.entry((id, epoch)).or_insert_with(|| a.server_id.clone());
                assert_eq!(*owner, a.server_id, "lease ({id}, {epoch}) named two owners");
            }
        }

        // The status agrees with the listings.
        let st = &s.status;
        assert_eq!(st.total_streams, s.streams.len() as u64, "total_streams: {st:?}");
        assert_eq!(st.assigned_streams, placed, "assigned_streams: {st:?}");
        assert_eq!(st.unassigned_streams, st.total_streams - placed, "unassigned_streams: {st:?}");
        let live_workers = s
            .workers
            .iter()
            .filter(|w| {
                matches!(v1::WorkerState::try_from(w.state), Ok(v1::WorkerState::Live | v1::WorkerState::Draining))
            })
            .count();
        assert_eq!(st.live_workers as usize, live_workers, "live_workers: {st:?}");
        let capacity: u64 = s
            .workers
            .iter()
            .filter(|w| w.state == v1::WorkerState::Live as i32)
            .map(|w| u64::from(w.max_streams))
            .sum();
        assert_eq!(st.total_capacity, capacity, "total_capacity: {st:?}");
        assert_eq!(st.in_grace_period, st.grace_ends_at.is_some(), "grace: {st:?}");

        self.held = held;
        s
    }

    /// Lets `ms` milliseconds pass (tokio's paused clock) and runs the
    /// ticker's event: expiries, the brake, the end of grace, placements.
    pub(crate) async fn tick(&mut self, ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
        if let Err(status) = self.orchestrator.tick().await {
            panic!("tick after {ms} ms failed: {status:?}");
        }
        self.check().await;
    }

    /// Stops the orchestrator (flushing the store) and starts a new one on
    /// the same database: everything answered before is still there.
    pub(crate) async fn restart(&mut self) {
        let before = self.check().await;
        self.stop();
        // The engine's memory of request ids is not durable.
        self.admin_memory.clear();
        let (orchestrator, store_thread) = open(self.dir.path(), &self.config);
        self.worker = WorkerServiceClient::new(orchestrator.worker_service());
        self.admin = AdminServiceClient::new(orchestrator.admin_service());
        self.orchestrator = orchestrator;
        self.store_thread = Some(store_thread);
        let after = self.check().await;
        let catalog = |s: &Snapshot| -> Vec<(Option<v1::StreamSpec>, u64)> {
            s.streams.iter().map(|x| (x.spec.clone(), x.lease_epoch)).collect()
        };
        assert_eq!(catalog(&before), catalog(&after), "the catalog or a lease epoch changed across a restart");
        let workers = |s: &Snapshot| -> Vec<(String, u64, u32)> {
            s.workers.iter().map(|w| (w.server_id.clone(), w.worker_epoch, w.max_streams)).collect()
        };
        assert_eq!(workers(&before), workers(&after), "workers changed across a restart");
        assert_eq!(before.status.rebalancing_paused, after.status.rebalancing_paused, "paused across a restart");
    }

    fn stop(&mut self) {
        self.orchestrator.close_store();
        if let Some(thread) = self.store_thread.take() {
            assert!(thread.join().is_ok(), "the store thread panicked");
        }
    }

    /// Stops the orchestrator; panics if its store thread died.
    pub(crate) fn finish(mut self) {
        self.stop();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.orchestrator.close_store();
        if let Some(thread) = self.store_thread.take() {
            let _ = thread.join();
        }
    }
}
