//! A scripted FastCGI application on the far end of a `tokio::io::duplex`, plus helpers to
//! build answers and drive the client: the fake upstream of the client tests.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

use crate::fastcgi::client::{FastCgiBody, FastCgiError, FastCgiRequest};
use crate::fastcgi::params::Params;
use crate::fastcgi::record::{self, *};

pub const ID: u16 = 1;

/// Fails the test instead of hanging it.
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), future)
        .await
        .expect("test step took more than 5 s")
}

/// The application side of a duplex stream, scripted by each test.
pub struct App {
    pub io: DuplexStream,
    buf: BytesMut,
    decoder: Decoder,
}

/// What the application received before answering.
pub struct Received {
    pub flags: u8,
    pub params: Vec<(Bytes, Bytes)>,
}

impl App {
    pub fn new(io: DuplexStream) -> Self {
        App {
            io,
            buf: BytesMut::new(),
            decoder: Decoder::new(ID),
        }
    }

    /// The next record from the client; `None` at EOF.
    pub async fn record(&mut self) -> Option<Record> {
        loop {
            if let Some(record) = self.decoder.decode(&mut self.buf).expect("valid records") {
                return Some(record);
            }
            if self.io.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    /// The stream's next record, which must be of `record_type`; its content.
    pub async fn expect(&mut self, expected: u8) -> Bytes {
        match self.record().await {
            Some(Record::Other {
                record_type,
                content,
                ..
            }) if record_type == expected => content,
            other => panic!("expected a {} record, got {other:?}", type_name(expected)),
        }
    }

    /// BEGIN_REQUEST and the whole PARAMS stream.
    pub async fn read_head(&mut self) -> Received {
        let begin = self.expect(FCGI_BEGIN_REQUEST).await;
        assert_eq!(u16::from_be_bytes([begin[0], begin[1]]), FCGI_RESPONDER);
        let mut pairs = PairDecoder::default();
        let mut params = Vec::new();
        loop {
            let content = self.expect(FCGI_PARAMS).await;
            if content.is_empty() {
                assert!(pairs.is_empty(), "PARAMS ended inside a pair");
                break;
            }
            pairs.push(&content);
            params.extend(pairs.by_ref());
        }
        Received {
            flags: begin[2],
            params,
        }
    }

    /// The whole STDIN stream.
    pub async fn read_stdin(&mut self) -> Vec<u8> {
        let mut stdin = Vec::new();
        loop {
            let content = self.expect(FCGI_STDIN).await;
            if content.is_empty() {
                return stdin;
            }
            stdin.extend_from_slice(&content);
        }
    }

    pub async fn write(&mut self, wire: &[u8]) {
        self.io.write_all(wire).await.expect("client is reading");
    }
}

pub fn stdout(wire: &mut BytesMut, data: &[u8]) {
    record::record(wire, FCGI_STDOUT, ID, data);
}

pub fn stderr(wire: &mut BytesMut, data: &[u8]) {
    record::record(wire, FCGI_STDERR, ID, data);
}

pub fn end_request(wire: &mut BytesMut, app_status: u32, protocol_status: u8) {
    let mut body = app_status.to_be_bytes().to_vec();
    body.extend_from_slice(&[protocol_status, 0, 0, 0]);
    record::record(wire, FCGI_END_REQUEST, ID, &body);
}

/// A complete, clean answer: the CGI response on STDOUT, both stream ends, END_REQUEST.
pub fn answer(response: &[u8]) -> BytesMut {
    let mut wire = BytesMut::new();
    stdout(&mut wire, response);
    stdout(&mut wire, b"");
    stderr(&mut wire, b"");
    end_request(&mut wire, 0, FCGI_REQUEST_COMPLETE);
    wire
}

pub fn request<B>(body: B, content_length: u64) -> FastCgiRequest<B> {
    let mut params = Params::default();
    params.push("SCRIPT_FILENAME", "/var/www/html/index.php");
    params.push("REQUEST_METHOD", "POST");
    params.push("CONTENT_LENGTH", content_length.to_string());
    FastCgiRequest {
        params,
        body,
        content_length,
        max_head: 4096,
    }
}

pub fn no_body() -> FastCgiRequest<Empty<Bytes>> {
    request(Empty::new(), 0)
}

/// Reads the body to its end: the data received and how it ended.
pub async fn drain(mut body: FastCgiBody) -> (Vec<u8>, Result<(), FastCgiError>) {
    let mut data = Vec::new();
    while let Some(frame) = within(body.frame()).await {
        match frame {
            Ok(frame) => data.extend_from_slice(&frame.into_data().unwrap_or_default()),
            Err(error) => return (data, Err(error)),
        }
    }
    (data, Ok(()))
}

/// A stream that accepts every write and replays scripted reads, then fails: how a reset looks.
pub struct ScriptedIo {
    pub reads: Vec<io::Result<Vec<u8>>>,
}

impl AsyncRead for ScriptedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reads.is_empty() {
            return Poll::Ready(Ok(()));
        }
        match this.reads.remove(0) {
            Ok(data) => buf.put_slice(&data),
            Err(error) => return Poll::Ready(Err(error)),
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ScriptedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
