//! FastCGI to PHP-FPM, spoken by causeway itself so that every failure keeps its cause:
//! `params` builds the CGI environment (and refuses unsafe script paths), `record` is the
//! FastCGI 1.0 codec, `cgi` parses the CGI response head, and `client` runs one request over a
//! connected stream, reporting to an `exchange`. Connecting, pooling and timeouts belong to `upstream`, which wraps these.
//! Everything here is IO-generic and tested in memory.

pub mod cgi;
pub mod client;
pub mod exchange;
pub mod params;
pub mod record;

#[cfg(test)]
mod tests;

pub use cgi::{CgiError, CgiHead, HeadParser};
pub use client::{send, FastCgiBody, FastCgiError, FastCgiRequest, Phase};
pub use exchange::{Exchange, StderrLog};
pub use params::{FastCgiSettings, Params, RequestMeta, ScriptPathError};
pub use record::{Decoder, Record, RecordError};
