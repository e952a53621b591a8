//! The CGI head parser on STDOUT bytes from a hostile application: it must never panic,
//! feeding it in pieces must give the same head (or the same error) as feeding it at once (the
//! first input byte seeds the piece sizes), and a head it accepts must be usable as HTTP.
#![no_main]

use causeway::fastcgi::cgi::{CgiError, HeadParser};
use http::{HeaderMap, StatusCode};
use libfuzzer_sys::fuzz_target;

const MAX_HEAD: usize = 8192;

/// A parse outcome that can be compared: the head without its body start, or the error.
#[derive(Debug, PartialEq)]
enum Outcome {
    Head {
        status: StatusCode,
        headers: HeaderMap,
        body_start: Vec<u8>,
    },
    Error(CgiError),
    NeedMore,
}

fn outcome(result: Result<Option<causeway::fastcgi::CgiHead>, CgiError>) -> Outcome {
    match result {
        Ok(Some(head)) => Outcome::Head {
            status: head.status,
            headers: head.headers,
            body_start: head.body_start.to_vec(),
        },
        Ok(None) => Outcome::NeedMore,
        Err(e) => Outcome::Error(e),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stdout)) = data.split_first() else {
        return;
    };
    let whole = outcome(HeadParser::new(MAX_HEAD).feed(stdout));

    let mut parser = HeadParser::new(MAX_HEAD);
    let mut state = u32::from(seed);
    let mut fed = 0;
    let mut split = Outcome::NeedMore;
    while fed < stdout.len() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((state >> 16) as usize % 61 + 1).min(stdout.len() - fed);
        split = outcome(parser.feed(&stdout[fed..fed + n]));
        fed += n;
        if split != Outcome::NeedMore {
            break;
        }
    }
    if stdout.is_empty() {
        split = outcome(parser.feed(&[]));
    }

    match (&whole, &split) {
        (
            Outcome::Head {
                status,
                headers,
                body_start,
            },
            Outcome::Head {
                status: split_status,
                headers: split_headers,
                body_start: split_body,
            },
        ) => {
            assert_eq!(status, split_status);
            assert_eq!(headers, split_headers);
            // Fed at once, the body start is everything after the head; fed in pieces, only
            // what arrived with the blank line. The rest of the input follows it.
            assert!(body_start.starts_with(split_body));
            assert_eq!(body_start[split_body.len()..], stdout[fed..]);
            assert!(!status.is_informational(), "a 1xx final status: {status}");
            let head_len = stdout.len() - body_start.len();
            assert!(head_len <= MAX_HEAD, "accepted a {head_len}-byte head");
            assert!(!headers.contains_key("status"), "Status: is not forwarded");
        }
        (whole, split) => assert_eq!(whole, split, "parsing depends on how STDOUT was cut"),
    }
    if let Outcome::Error(e) = &whole {
        let message = e.to_string();
        // Quoted lines are escaped and bounded for logs.
        assert!(
            message.len() < 400,
            "error message of {} bytes",
            message.len()
        );
        assert!(
            message.chars().all(|c| !c.is_control()),
            "control character in {message:?}"
        );
    }
});
