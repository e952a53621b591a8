//! The `causeway` binary: parse the command line and hand over to `causeway::cli`.

use std::process::ExitCode;

use clap::Parser;

/// jemalloc: a proxied request makes ~25 short-lived allocations (hyper's heads, buffers and
/// channels, the upstream request), and glibc's malloc spent ~17 % of causeway's user-space
/// instructions on them; jemalloc's per-thread caches cut the whole request by ~10 %
/// (callgrind, BENCHMARKS.md). Idle memory stays within the target (10,000 idle keep-alive
/// connections: 75.6 MiB).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // One crypto provider for the whole process (ring), installed before any TLS config is
    // built; configs also name it explicitly, so this only guards library defaults.
    let _ = rustls::crypto::ring::default_provider().install_default();
    causeway::cli::main(causeway::cli::Cli::parse())
}
