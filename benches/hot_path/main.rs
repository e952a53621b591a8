//! Criterion micro-benchmarks for the per-request hot path, calling causeway's public API.
//!
//! Pure steps (no IO) live in `steps.rs`: routing, header rewriting, the classifier,
//! Proxy-Status serialization and the FastCGI codec. The success path lives in `success.rs`:
//! the classification bookkeeping a successful request pays, alone and against a baseline
//! without it, then whole requests over loopback with and without causeway in between.
//! `cargo bench --bench hot_path` takes about two and a half minutes; add `-- --quick` while
//! iterating, or a filter such as `-- success_bookkeeping`.
//!
//! Benches build with the dev-dependencies' features, so tokio has `test-util` here: its
//! `Instant::now()` checks for a paused clock first, which the release binary does not.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

mod fixtures;
mod steps;
mod success;

/// Short runs: the figures are ns to µs, and the whole bench should stay near two minutes on
/// a shared 2-core machine.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = steps;
    config = config();
    targets = steps::routing, steps::headers, steps::classifier, steps::proxy_status,
        steps::fastcgi
}

criterion_group! {
    name = success;
    config = config();
    targets = success::bookkeeping, success::upstream_hop, success::end_to_end
}

criterion_main!(steps, success);
