//! One request of either gRPC service through decode → validate → engine →
//! store, on a fresh orchestrator seeded with streams and two live workers
//! (`w0` and `w1`, session ids `0.1`): the first byte of the input picks the
//! RPC (modulo their number, in the order of `harness::RPCS`), the rest is
//! decoded as its request message; input that does not decode is skipped.
//! After the call the same checks as `tests/fuzz.rs` (status code allowed by
//! the contract, never INTERNAL or UNKNOWN; the answer; nothing changed by a
//! refused or read-only call; the invariants the admin API shows) and the
//! engine's own debug checks. A failed check panics: libFuzzer saves the
//! input in `artifacts/requests/`.
//!
//!     cargo +nightly fuzz run requests -- -max_total_time=600
//!     cargo +nightly fuzz run requests artifacts/requests/crash-…   # replay
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/fuzz/harness.rs"]
mod harness;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = harness::runtime();
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else { return };
    let Some(request) = harness::Req::decode(kind, bytes) else { return };
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let mut h = harness::Harness::start(harness::config()).await;
            h.seed().await;
            let _ = h.exercise(&request).await;
            h.finish();
        });
    });
});
