//! Unit tests of the FastCGI modules, one file per module; the client's run against an
//! in-memory fake application on `tokio::io::duplex`.

mod app;
mod cgi;
mod client;
mod client_failures;
mod params;
mod record;
