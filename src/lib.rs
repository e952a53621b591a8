//! causeway: a reverse proxy whose every 502 and 504 is accurate, and whose log says why.
//!
//! # Layout: the path of one request
//!
//! 1. [`server`] accepts TCP or unix connections (optionally TLS) and serves HTTP/1.1 and
//!    HTTP/2 with hyper, enforcing the client limits (header timeout 408, header size 431).
//! 2. [`proxy`] is the hyper service: it assigns the request id, refuses loops, asks
//!    [`route`] for an upstream group, and lets [`headers`] rewrite the request.
//! 3. [`upstream`] sends it: retry → balance over healthy servers → pool checkout or
//!    connect (DNS via [`resolve`], TCP or unix, TLS) → exchange with per-phase timeouts.
//! 4. Every failure is an [`upstream::UpstreamError`] whose [`cause::Cause`] was decided by
//!    [`classify`] where it happened. [`respond`] turns it into status, `Proxy-Status` and an
//!    error page; [`log`] writes one access-log line per request when its body ends.
//!
//! [`config`] loads and validates the TOML; [`state`] compiles it into what requests use and
//! is swapped atomically on reload. [`metrics`] counts requests and failures where they
//! happen, and [`admin`] serves them with `/healthz` and `/upstreams`. [`diagnose`] probes
//! servers with the same connect steps and classifier. [`faults`] is a deliberately broken
//! upstream for tests and `causeway demo`.

// `UpstreamError` is deliberately rich (cause, server, detail, hint, source): it is built once
// per failed attempt, never on the success path, so its size costs nothing that matters.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod cause;
pub mod classify;
pub mod cli;
pub mod config;
pub mod demo;
pub mod diagnose;
pub mod fastcgi;
pub mod faults;
pub mod headers;
pub mod idle;
pub mod log;
pub mod metrics;
pub mod proxy;
pub mod resolve;
pub mod respond;
pub mod route;
pub mod server;
pub mod state;
pub mod upstream;
