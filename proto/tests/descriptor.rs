//! Checks the compiled contract itself: the services and RPCs it names, and
//! that every element of package `orchestrator.v1` keeps its documentation.

use std::collections::BTreeSet;

use orchestrator_proto::{FILE_DESCRIPTOR_SET, PACKAGE, SERVICE_NAMES};
use prost::Message as _;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet};

// Field numbers of `google/protobuf/descriptor.proto`, as used in
// `SourceCodeInfo.Location.path`.
const FILE_MESSAGE_TYPE: i32 = 4;
const FILE_ENUM_TYPE: i32 = 5;
const FILE_SERVICE: i32 = 6;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED_TYPE: i32 = 3;
const MESSAGE_ENUM_TYPE: i32 = 4;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

const WORKER_RPCS: &[&str] =
    &["Register", "Heartbeat", "RequestStreams", "ReleaseStreams", "SyncLocalState", "Deregister"];
const ADMIN_RPCS: &[&str] = &[
    "AddStreams",
    "RemoveStreams",
    "ListStreams",
    "ListWorkers",
    "ListAssignments",
    "GetClusterStatus",
    "DrainWorker",
    "PauseRebalancing",
    "ResumeRebalancing",
];

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes")
}

fn contract_files() -> Vec<FileDescriptorProto> {
    let files: Vec<_> = descriptor_set().file.into_iter().filter(|f| f.package() == PACKAGE).collect();
    let names: BTreeSet<_> = files.iter().map(|f| f.name().to_owned()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "orchestrator/v1/admin.proto".to_owned(),
            "orchestrator/v1/common.proto".to_owned(),
            "orchestrator/v1/worker.proto".to_owned(),
        ])
    );
    files
}

#[test]
fn names_both_services_with_exactly_their_rpcs() {
    let mut services = Vec::new();
    for file in contract_files() {
        for service in &file.service {
            let full_name = format!("{}.{}", file.package(), service.name());
            let rpcs: Vec<_> = service.method.iter().map(|m| m.name().to_owned()).collect();
            // Request/response naming convention: XRequest / XResponse.
            for method in &service.method {
                assert_eq!(method.input_type(), format!(".orchestrator.v1.{}Request", method.name()));
                assert_eq!(method.output_type(), format!(".orchestrator.v1.{}Response", method.name()));
                assert!(!method.client_streaming() && !method.server_streaming(), "{} is unary", method.name());
            }
            services.push((full_name, rpcs));
        }
    }
    services.sort();
    assert_eq!(
        services,
        vec![
            ("orchestrator.v1.AdminService".to_owned(), ADMIN_RPCS.iter().map(|s| s.to_string()).collect()),
            ("orchestrator.v1.WorkerService".to_owned(), WORKER_RPCS.iter().map(|s| s.to_string()).collect()),
        ]
    );

    let mut listed: Vec<_> = SERVICE_NAMES.to_vec();
    listed.sort_unstable();
    let described: Vec<_> = services.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(listed, described);
}

#[test]
fn enums_start_with_unspecified_and_use_prefixed_names() {
    fn check(e: &EnumDescriptorProto) {
        let prefix: String = e
            .name()
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
                sep.into_iter().chain(std::iter::once(c.to_ascii_uppercase()))
            })
            .collect();
        let first = e.value.first().expect("enum has values");
        assert_eq!((first.name(), first.number()), (format!("{prefix}_UNSPECIFIED").as_str(), 0));
        for value in &e.value {
            assert!(value.name().starts_with(&format!("{prefix}_")), "{} in {}", value.name(), e.name());
        }
    }
    fn walk(m: &DescriptorProto) {
        m.enum_type.iter().for_each(check);
        m.nested_type.iter().for_each(walk);
    }
    for file in contract_files() {
        file.enum_type.iter().for_each(check);
        file.message_type.iter().for_each(walk);
    }
}

/// Collects the source path and full name of every documented element of a
/// message: the message itself, its fields, nested messages and enums.
fn message_paths(m: &DescriptorProto, path: Vec<i32>, scope: &str, out: &mut Vec<(Vec<i32>, String)>) {
    let name = format!("{scope}.{}", m.name());
    for (i, field) in m.field.iter().enumerate() {
        out.push((child(&path, MESSAGE_FIELD, i), format!("{name}.{}", field.name())));
    }
    for (i, nested) in m.nested_type.iter().enumerate() {
        message_paths(nested, child(&path, MESSAGE_NESTED_TYPE, i), &name, out);
    }
    for (i, e) in m.enum_type.iter().enumerate() {
        enum_paths(e, child(&path, MESSAGE_ENUM_TYPE, i), &name, out);
    }
    out.push((path, name));
}

fn enum_paths(e: &EnumDescriptorProto, path: Vec<i32>, scope: &str, out: &mut Vec<(Vec<i32>, String)>) {
    let name = format!("{scope}.{}", e.name());
    for (i, value) in e.value.iter().enumerate() {
        out.push((child(&path, ENUM_VALUE, i), format!("{name}.{}", value.name())));
    }
    out.push((path, name));
}

fn child(path: &[i32], field: i32, index: usize) -> Vec<i32> {
    let mut p = path.to_vec();
    p.extend([field, i32::try_from(index).expect("small index")]);
    p
}

#[test]
fn every_element_has_a_leading_comment() {
    let mut checked = 0;
    for file in contract_files() {
        let info = file.source_code_info.as_ref().unwrap_or_else(|| panic!("{} keeps its source info", file.name()));
        let documented: BTreeSet<&[i32]> = info
            .location
            .iter()
            .filter(|l| l.leading_comments.as_deref().is_some_and(|c| !c.trim().is_empty()))
            .map(|l| l.path.as_slice())
            .collect();

        let mut paths = Vec::new();
        for (i, m) in file.message_type.iter().enumerate() {
            message_paths(m, vec![FILE_MESSAGE_TYPE, i32::try_from(i).unwrap()], file.package(), &mut paths);
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            enum_paths(e, vec![FILE_ENUM_TYPE, i32::try_from(i).unwrap()], file.package(), &mut paths);
        }
        for (i, s) in file.service.iter().enumerate() {
            let path = vec![FILE_SERVICE, i32::try_from(i).unwrap()];
            let name = format!("{}.{}", file.package(), s.name());
            for (j, method) in s.method.iter().enumerate() {
                paths.push((child(&path, SERVICE_METHOD, j), format!("{name}.{}", method.name())));
            }
            paths.push((path, name));
        }

        let missing: Vec<_> =
            paths.iter().filter(|(path, _)| !documented.contains(path.as_slice())).map(|(_, name)| name).collect();
        assert!(missing.is_empty(), "{}: elements without a leading comment: {missing:?}", file.name());
        checked += paths.len();
    }
    // Guards against a walk that silently finds nothing.
    assert!(checked > 150, "only {checked} elements checked");
}

#[test]
fn every_rpc_documents_its_status_codes() {
    for file in contract_files() {
        let info = file.source_code_info.as_ref().expect("source info");
        for (i, s) in file.service.iter().enumerate() {
            for (j, method) in s.method.iter().enumerate() {
                let path = [FILE_SERVICE, i32::try_from(i).unwrap(), SERVICE_METHOD, i32::try_from(j).unwrap()];
                let comment = info
                    .location
                    .iter()
                    .find(|l| l.path == path)
                    .and_then(|l| l.leading_comments.as_deref())
                    .unwrap_or_default();
                assert!(comment.contains("Status codes"), "{} lacks its status codes", method.name());
                assert!(comment.contains("OK"), "{} lacks OK", method.name());
            }
        }
    }
}
