//! `causeway diagnose`: probe every server of every (or one) upstream step by step — resolve,
//! connect, TLS, one request — and say which step fails, with its cause and a fix hint.
//!
//! The steps are the proxy's own: `upstream::connect::Connector` (split into its public
//! steps), `exchange`, and `classify`, so a cause named here is the cause the proxy would log.
//! `probe` runs the steps for one server, `facts` gathers what explains a failure (socket
//! owner and mode, the certificates presented), `report` prints the checklist or JSON.
//! Servers are probed concurrently; each step is bounded by the configured timeouts.

mod facts;
mod probe;
mod report;

#[cfg(test)]
mod tests;

use std::time::Duration;

use crate::cause::Cause;
use crate::config::Config;
use crate::state::State;

pub use report::{render_json, render_text};

/// The four steps, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepName {
    Resolve,
    Connect,
    Tls,
    Request,
}

impl StepName {
    /// The name printed and used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::Resolve => "resolve",
            StepName::Connect => "connect",
            StepName::Tls => "tls",
            StepName::Request => "request",
        }
    }
}

/// How one step went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepStatus {
    Ok,
    Failed,
    /// Does not apply to this server (no DNS for an IP address, no TLS for `http`).
    Skipped,
    /// An earlier step failed.
    NotRun,
}

impl StepStatus {
    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Ok => "ok",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::NotRun => "not_run",
        }
    }
}

/// One line of the checklist.
#[derive(Clone, Debug)]
pub struct Step {
    pub name: StepName,
    pub status: StepStatus,
    /// How long the step took, when it ran.
    pub elapsed: Option<Duration>,
    /// What was found, or for a failure the detail sentence.
    pub summary: String,
    /// Further lines: addresses, socket owner and mode, certificates.
    pub facts: Vec<String>,
}

/// Why a server failed: the first failing step's cause, detail and fix hint.
#[derive(Clone, Debug)]
pub struct Failure {
    pub step: StepName,
    /// `None` only when the server answered but not as `health.check` expects: that is the
    /// server's own answer, not a proxy failure.
    pub cause: Option<Cause>,
    pub detail: String,
    pub hint: Option<String>,
}

/// The checklist of one server.
#[derive(Clone, Debug)]
pub struct ServerReport {
    pub server: String,
    pub steps: Vec<Step>,
    pub failure: Option<Failure>,
}

impl ServerReport {
    /// Whether every step that applies passed.
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// The checklists of one upstream's servers, in config order.
#[derive(Clone, Debug)]
pub struct UpstreamReport {
    pub name: String,
    pub protocol: &'static str,
    pub servers: Vec<ServerReport>,
}

/// Everything `diagnose` found.
#[derive(Clone, Debug)]
pub struct Report {
    pub config: String,
    pub upstreams: Vec<UpstreamReport>,
}

impl Report {
    /// Whether every server passed (the exit status).
    pub fn ok(&self) -> bool {
        self.servers().all(ServerReport::ok)
    }

    /// Every server of every upstream.
    pub fn servers(&self) -> impl Iterator<Item = &ServerReport> {
        self.upstreams.iter().flat_map(|u| u.servers.iter())
    }
}

/// Probes the servers of `only` (or of every upstream) in `config`.
///
/// # Errors
/// `only` names no upstream, or the upstreams cannot be built (a TLS CA file that does not
/// load): a sentence for the operator.
pub async fn run(config: Config, only: Option<&str>) -> Result<Report, String> {
    if let Some(name) = only {
        if !config.upstreams.iter().any(|u| u.name == name) {
            let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
            return Err(format!(
                "no upstream named \"{name}\"; defined upstreams: {}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
    }
    let source = config.source.display().to_string();
    let state = State::build(config).map_err(|e| e.to_string())?;
    let upstreams: Vec<_> = state
        .upstreams
        .iter()
        .filter(|u| only.is_none_or(|name| &*u.name == name))
        .collect();
    // Every server at once: the whole run takes as long as the slowest server, not the sum.
    let probes = upstreams.iter().flat_map(|upstream| {
        upstream
            .servers
            .iter()
            .map(move |server| probe::server(upstream, server))
    });
    let mut results = futures_util::future::join_all(probes).await.into_iter();
    let upstreams = upstreams
        .iter()
        .map(|upstream| UpstreamReport {
            name: upstream.name.to_string(),
            protocol: crate::admin::protocol_name(upstream.config.protocol),
            servers: results.by_ref().take(upstream.servers.len()).collect(),
        })
        .collect();
    Ok(Report {
        config: source,
        upstreams,
    })
}
