//! The compiled, swappable runtime state: config + route table + upstream groups.
//!
//! Built from a validated `Config` without binding anything; SIGHUP builds a new one and swaps
//! it in atomically (`ArcSwap`), so a request sees either the old state or the new one, never
//! half of each. A state that fails to build leaves the old one serving.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::resolve::{Resolver, ResolverSettings};
use crate::route;
use crate::upstream::{BoxError, Upstream};

/// Everything a request needs to be routed and sent.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub routes: route::Table,
    /// In config order: `config::Route::upstream` indexes into it.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Stops this state's active health checks when it is replaced or dropped.
    checks: CancellationToken,
}

impl Drop for State {
    fn drop(&mut self) {
        self.checks.cancel();
    }
}

impl State {
    /// Compiles `config`: resolver, TLS settings and pools for every upstream.
    pub fn build(config: Config) -> Result<State, BoxError> {
        let resolver = Resolver::new(&ResolverSettings {
            nameservers: config.resolver.nameservers.clone(),
            timeout: config.resolver.timeout,
            hosts_file: config.resolver.hosts_file,
        })?;
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                Upstream::new(u, resolver.clone(), config.server.workers)
                    .map(Arc::new)
                    .map_err(|e| -> BoxError { format!("upstream \"{}\": {e}", u.name).into() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let checks = CancellationToken::new();
        if tokio::runtime::Handle::try_current().is_ok() {
            for upstream in &upstreams {
                crate::upstream::health::spawn_active_checks(upstream, checks.clone());
            }
        }
        Ok(State {
            routes: route::Table::new(&config.routes),
            upstreams,
            config,
            checks,
        })
    }

    /// Closes idle connections past their expiry in every pool.
    pub fn sweep_pools(&self) {
        for upstream in &self.upstreams {
            for server in &upstream.servers {
                server.pool.sweep();
            }
        }
    }
}
