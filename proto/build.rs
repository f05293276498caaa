//! Compiles the `.proto` files with `protox` (pure Rust, no `protoc` needed),
//! writes the encoded `FileDescriptorSet` for `FILE_DESCRIPTOR_SET` (server
//! reflection, descriptor tests) and generates the messages, clients and
//! servers with `tonic-prost-build`.

// Cargo reads its directives from the build script's standard output.
#![allow(clippy::print_stdout)]

use std::env;
use std::error::Error;
use std::fs;
use std::path::PathBuf;

use prost::Message as _;

/// The contract's files, relative to the crate directory, which is also the
/// include root (so imports read `orchestrator/v1/common.proto`).
const PROTO_FILES: [&str; 3] =
    ["orchestrator/v1/common.proto", "orchestrator/v1/worker.proto", "orchestrator/v1/admin.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=orchestrator");

    // `protox::compile` keeps source info (the comments become doc comments
    // and stay in the descriptor set) and includes the imported well-known
    // types, so the set is self-contained for reflection.
    let fds = protox::compile(PROTO_FILES, ["."]).map_err(|e| format!("compiling the .proto files: {e:?}"))?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("orchestrator_v1_descriptor.bin"), fds.encode_to_vec())?;

    // `codec::ProtoCodec`: a request that does not decode is INVALID_ARGUMENT,
    // not tonic's INTERNAL (the contract: bad input never gets INTERNAL).
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::ProtoCodec")
        .compile_fds(fds)?;
    Ok(())
}
