//! Routing: optional host match + longest path prefix → upstream group.
//!
//! Prefixes are plain string prefixes, as nginx's prefix `location`s are. A route with a host
//! beats a host-less route of the same length. No match is `no_route` (404), decided by the
//! caller.

use crate::config;

/// The compiled route table.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Sorted so the first match is the best: longer prefix first, host routes first.
    routes: Vec<config::Route>,
}

impl Table {
    /// Builds the table from the config's routes.
    pub fn new(routes: &[config::Route]) -> Table {
        let mut routes = routes.to_vec();
        routes.sort_by(|a, b| {
            b.path
                .len()
                .cmp(&a.path.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
        });
        Table { routes }
    }

    /// The upstream index for a request to `host` (any case, port allowed) and `path`.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let host = host.map(strip_port);
        self.routes
            .iter()
            .find(|route| {
                let host_ok = match (&route.host, host) {
                    (None, _) => true,
                    (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                    (Some(_), None) => false,
                };
                host_ok && path.starts_with(route.path.as_str())
            })
            .map(|route| route.upstream)
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, path: &str, upstream: usize) -> config::Route {
        config::Route {
            host: host.map(str::to_string),
            path: path.to_string(),
            upstream,
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let table = Table::new(&[
            route(None, "/", 0),
            route(None, "/api/", 1),
            route(None, "/api/v2/", 2),
        ]);
        assert_eq!(table.lookup(None, "/api/v2/users"), Some(2));
        assert_eq!(table.lookup(None, "/api/v1"), Some(1));
        assert_eq!(table.lookup(None, "/index.php"), Some(0));
    }

    #[test]
    fn host_routes_match_their_host_only() {
        let table = Table::new(&[route(Some("a.example"), "/", 1), route(None, "/", 0)]);
        assert_eq!(table.lookup(Some("A.example:8080"), "/x"), Some(1));
        assert_eq!(table.lookup(Some("b.example"), "/x"), Some(0));
        assert_eq!(table.lookup(None, "/x"), Some(0));
    }

    #[test]
    fn no_match_is_none() {
        let table = Table::new(&[route(None, "/api/", 0)]);
        assert_eq!(table.lookup(None, "/other"), None);
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("example.com:80"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
