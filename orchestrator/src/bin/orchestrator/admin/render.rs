//! Rendering: pure functions from responses to the text printed, a table
//! or one pretty-printed JSON document.

use std::time::{Duration, SystemTime};

use orchestrator_proto::v1::{
    AddStreamsResponse, Assignment, DrainWorkerResponse, GetClusterStatusResponse, ListWorkersResponse,
    RemoveStreamsResponse, StreamInfo, StreamState, WorkerState,
};
use serde_json::{Value, json};

/// Up to this many ids, `streams add` / `streams remove` list them.
const LIST_IDS_UP_TO: usize = 20;

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
    SystemTime::try_from(*ts).ok()
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
pub(super) fn render_workers(resp: &ListWorkersResponse, now: SystemTime, json: bool) -> String {
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
pub(super) fn render_assignments(assignments: &[Assignment], json: bool) -> String {
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
pub(super) fn render_streams(streams: &[StreamInfo], json: bool) -> String {
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
pub(super) fn render_status(resp: &GetClusterStatusResponse, json: bool) -> String {
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
pub(super) fn render_add(resp: &AddStreamsResponse, json: bool) -> String {
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
pub(super) fn render_remove(resp: &RemoveStreamsResponse, json: bool) -> String {
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
pub(super) fn render_drain(server_id: &str, resp: &DrainWorkerResponse, json: bool) -> String {
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
pub(super) fn render_rebalancing(paused: bool, json: bool) -> String {
    if json {
        return json_doc(&json!({ "paused": paused }));
    }
    if paused { "rebalancing paused\n".to_owned() } else { "rebalancing resumed\n".to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_proto::v1::{Lease, StreamSpec, WorkerInfo};
    use prost_types::Timestamp;
    use std::time::UNIX_EPOCH;

    fn ts(seconds: i64) -> Timestamp {
        Timestamp { seconds, nanos: 0 }
    }

    fn parse_json(text: &str) -> Value {
        serde_json::from_str(text).expect("valid JSON")
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
            next_page_token: String::new(),
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
}
