//! The `causeway` binary: parse the command line and hand over to `causeway::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // One crypto provider for the whole process (ring), installed before any TLS config is
    // built; configs also name it explicitly, so this only guards library defaults.
    let _ = rustls::crypto::ring::default_provider().install_default();
    causeway::cli::main(causeway::cli::Cli::parse())
}
