//! What the benchmarks share: criterion's settings, with `BENCH_QUICK=1` for smoke runs.

use std::time::Duration;

use criterion::Criterion;

/// Criterion with the given warm-up, measurement time and sample count, or, with
/// `BENCH_QUICK=1`, short runs that only show that every benchmark works.
pub fn config(warm_up: Duration, measure: Duration, samples: usize) -> Criterion {
    let quick = std::env::var_os("BENCH_QUICK").is_some_and(|v| v == "1");
    let (warm_up, measure, samples) = if quick {
        (Duration::from_millis(150), Duration::from_millis(500), 10)
    } else {
        (warm_up, measure, samples)
    };
    Criterion::default()
        .warm_up_time(warm_up)
        .measurement_time(measure)
        .sample_size(samples)
}
