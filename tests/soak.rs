//! The soak engine of `examples/soak.rs`, for 10 seconds inside `cargo test`: clients and a
//! server under random load through the fault proxy (splits, delays, stalls, resets,
//! half-closes, the server side killed or cut mid-batch, graceful restarts). Every call must
//! complete exactly once with its own answer; nothing lost, duplicated, misdelivered or
//! executed twice; the service recovers once the faults stop.
//!
//! The long run (60 s by default) is the example: `cargo run --release --example soak`.

// The example includes the fault proxy itself (`soak::proxy`), and so does `support`: the
// same file twice in this test crate, which is harmless.
#![allow(clippy::duplicate_mod)]

mod support;

#[path = "../examples/soak.rs"]
#[allow(dead_code)]
mod soak;

use std::time::Duration;

#[test]
fn ten_second_soak_loses_nothing() {
    // Fixed by default so that CI runs are comparable; BATCHRPC_SOAK_SEED replays another.
    let seed = std::env::var("BATCHRPC_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_240_601);
    let cfg = soak::SoakConfig {
        duration: Duration::from_secs(10),
        seed,
        clients: 3,
        callers_per_client: 2,
        // Debug builds compress slowly: smaller payloads than the example's 512 KiB.
        max_payload: 128 << 10,
        progress: false,
    };
    // 10 s of load, then at most a call deadline (3 s) for the callers to come back, 20 final
    // calls per client and the settling of canceled calls.
    let report = support::bounded(Duration::from_secs(40), move || soak::run_soak(&cfg));
    println!("{report}");
    assert_eq!(report.lost, 0, "lost calls\n{report}");
    assert_eq!(report.duplicated, 0, "duplicated answers\n{report}");
    assert_eq!(report.misdelivered, 0, "misdelivered answers\n{report}");
    assert_eq!(report.executed_twice, 0, "requests run twice\n{report}");
    assert!(report.anomalies.is_empty(), "{report}");
    assert_eq!(report.completed(), report.made, "{report}");
    assert_eq!(report.final_calls.0, report.final_calls.1, "{report}");
    assert!(report.ok > 0, "{report}");
    assert!(report.faults.values().sum::<u64>() > 0, "{report}");
    assert!(report.passed());
}
