use bytes::{Bytes, BytesMut};

use crate::fastcgi::record::{self, *};

const ID: u16 = 1;

/// Feeds `wire` in pieces of `step` bytes, collecting every record.
fn decode_in_steps(wire: &[u8], step: usize) -> Result<Vec<Record>, RecordError> {
    let mut decoder = Decoder::new(ID);
    let mut buf = BytesMut::new();
    let mut records = Vec::new();
    for piece in wire.chunks(step) {
        buf.extend_from_slice(piece);
        while let Some(record) = decoder.decode(&mut buf)? {
            records.push(record);
        }
    }
    assert!(buf.is_empty(), "undecoded bytes left: {buf:?}");
    Ok(records)
}

fn end_request(buf: &mut BytesMut, app_status: u32, protocol_status: u8) {
    let mut body = app_status.to_be_bytes().to_vec();
    body.extend_from_slice(&[protocol_status, 0, 0, 0]);
    record::record(buf, FCGI_END_REQUEST, ID, &body);
}

/// A typical PHP-FPM answer: stderr, stdout in two records, both ends, END_REQUEST.
fn sample_response() -> BytesMut {
    let mut wire = BytesMut::new();
    record::record(&mut wire, FCGI_STDERR, ID, b"Primary script unknown");
    record::record(&mut wire, FCGI_STDOUT, ID, b"Status: 404 Not Found\r\n\r\n");
    record::record(&mut wire, FCGI_STDOUT, ID, b"File not found.\n");
    record::record(&mut wire, FCGI_STDOUT, ID, b"");
    record::record(&mut wire, FCGI_STDERR, ID, b"");
    end_request(&mut wire, 0, FCGI_REQUEST_COMPLETE);
    wire
}

fn sample_records() -> Vec<Record> {
    vec![
        Record::Stderr(Bytes::from_static(b"Primary script unknown")),
        Record::Stdout(Bytes::from_static(b"Status: 404 Not Found\r\n\r\n")),
        Record::Stdout(Bytes::from_static(b"File not found.\n")),
        Record::StdoutEnd,
        Record::StderrEnd,
        Record::EndRequest {
            app_status: 0,
            protocol_status: FCGI_REQUEST_COMPLETE,
        },
    ]
}

#[test]
fn records_are_padded_to_a_multiple_of_eight() {
    let mut buf = BytesMut::new();
    record::stdin(&mut buf, ID, b"x");
    assert_eq!(
        &buf[..],
        &[1, FCGI_STDIN, 0, 1, 0, 1, 7, 0, b'x', 0, 0, 0, 0, 0, 0, 0]
    );
    let mut aligned = BytesMut::new();
    record::stdin(&mut aligned, ID, b"12345678");
    assert_eq!(aligned.len(), 16, "no padding when already aligned");
    assert_eq!(aligned[6], 0);
}

#[test]
fn decoding_one_byte_at_a_time_matches_decoding_at_once() {
    let wire = sample_response();
    assert_eq!(
        decode_in_steps(&wire, wire.len()).unwrap(),
        sample_records()
    );
    assert_eq!(decode_in_steps(&wire, 1).unwrap(), sample_records());
    assert_eq!(decode_in_steps(&wire, 3).unwrap(), sample_records());
}

#[test]
fn record_is_returned_before_its_padding_arrives() {
    let mut wire = BytesMut::new();
    record::record(&mut wire, FCGI_STDOUT, ID, b"abc");
    let mut decoder = Decoder::new(ID);
    let mut buf = BytesMut::from(&wire[..FCGI_HEADER_LEN + 3]);
    let first = decoder.decode(&mut buf).unwrap();
    assert_eq!(first, Some(Record::Stdout(Bytes::from_static(b"abc"))));
    assert!(decoder.padding_pending());
    buf.extend_from_slice(&wire[FCGI_HEADER_LEN + 3..]);
    assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    assert!(buf.is_empty() && !decoder.padding_pending());
}

#[test]
fn large_padding_from_a_peer_is_skipped() {
    // Padding up to 255 bytes is legal even though we never send more than 7.
    let mut wire = vec![1, FCGI_STDOUT, 0, 1, 0, 2, 200, 0, b'o', b'k'];
    wire.extend_from_slice(&[0xAA; 200]);
    wire.extend_from_slice(&[1, FCGI_STDOUT, 0, 1, 0, 0, 0, 0]);
    let records = decode_in_steps(&wire, 7).unwrap();
    assert_eq!(
        records,
        vec![Record::Stdout(Bytes::from_static(b"ok")), Record::StdoutEnd]
    );
}

#[test]
fn repeated_empty_stream_records_are_skipped() {
    let mut wire = BytesMut::new();
    record::record(&mut wire, FCGI_STDOUT, ID, b"");
    record::record(&mut wire, FCGI_STDOUT, ID, b"");
    end_request(&mut wire, 0, 0);
    let records = decode_in_steps(&wire, 1).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0], Record::StdoutEnd);
}

#[test]
fn stdout_after_its_end_is_an_error() {
    let mut wire = BytesMut::new();
    record::record(&mut wire, FCGI_STDOUT, ID, b"");
    record::record(&mut wire, FCGI_STDOUT, ID, b"late");
    let error = decode_in_steps(&wire, wire.len()).unwrap_err();
    assert_eq!(error, RecordError::DataAfterStreamEnd(FCGI_STDOUT));
    assert_eq!(
        error.to_string(),
        "FastCGI STDOUT data after the end of that stream"
    );
}

#[test]
fn http_answer_is_reported_as_http_not_fastcgi() {
    let error = decode_in_steps(b"HTTP/1.1 400 Bad Request\r\n\r\n", 64).unwrap_err();
    assert_eq!(error, RecordError::BadVersion(72));
    assert_eq!(
        error.to_string(),
        "this port speaks HTTP, not FastCGI (version byte 72 = 'H')"
    );
}

#[test]
fn bad_version_is_detected_from_the_first_byte_alone() {
    let mut decoder = Decoder::new(ID);
    let mut buf = BytesMut::from(&b"H"[..]);
    assert_eq!(decoder.decode(&mut buf), Err(RecordError::BadVersion(b'H')));
    let mut tls = BytesMut::from(&[0x16, 3, 1][..]);
    let error = Decoder::new(ID).decode(&mut tls).unwrap_err();
    assert!(error.to_string().contains("speaks TLS"), "{error}");
    let mut other = BytesMut::from(&[2u8][..]);
    let error = Decoder::new(ID).decode(&mut other).unwrap_err();
    assert_eq!(
        error.to_string(),
        "unsupported FastCGI protocol version 2, expected 1"
    );
}

#[test]
fn record_for_another_request_id_is_an_error() {
    let mut wire = BytesMut::new();
    record::record(&mut wire, FCGI_STDOUT, 2, b"x");
    let error = decode_in_steps(&wire, wire.len()).unwrap_err();
    let expected = RecordError::UnexpectedRequestId {
        record_type: FCGI_STDOUT,
        expected: 1,
        got: 2,
    };
    assert_eq!(error, expected);
    let mut management = BytesMut::new();
    record::record(&mut management, FCGI_GET_VALUES_RESULT, ID, b"");
    assert!(matches!(
        decode_in_steps(&management, 8),
        Err(RecordError::UnexpectedRequestId { expected: 0, .. })
    ));
}

#[test]
fn record_types_outside_the_spec_are_invalid() {
    for bad in [0u8, 12, 255] {
        let wire = [1, bad, 0, 1, 0, 0, 0, 0];
        assert_eq!(
            decode_in_steps(&wire, 8),
            Err(RecordError::InvalidType(bad))
        );
    }
}

#[test]
fn short_end_request_body_is_an_error() {
    let mut wire = BytesMut::new();
    record::record(&mut wire, FCGI_END_REQUEST, ID, &[0, 0, 0]);
    let error = decode_in_steps(&wire, 1).unwrap_err();
    assert_eq!(
        error,
        RecordError::BodyTooShort {
            record_type: FCGI_END_REQUEST,
            len: 3
        }
    );
    assert_eq!(
        error.to_string(),
        "FastCGI END_REQUEST record body is 3 bytes, needs 8"
    );
}

#[test]
fn end_request_carries_app_and_protocol_status() {
    let mut wire = BytesMut::new();
    end_request(&mut wire, 0x0102_0304, FCGI_OVERLOADED);
    let records = decode_in_steps(&wire, 5).unwrap();
    assert_eq!(
        records,
        vec![Record::EndRequest {
            app_status: 0x0102_0304,
            protocol_status: FCGI_OVERLOADED
        }]
    );
}

#[test]
fn unknown_type_names_the_type_it_did_not_understand() {
    let mut wire = BytesMut::new();
    record::record(&mut wire, FCGI_UNKNOWN_TYPE, 0, &[42, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        decode_in_steps(&wire, 1).unwrap(),
        vec![Record::UnknownType(42)]
    );
}

#[test]
fn begin_request_encodes_role_and_keep_conn() {
    let mut keep = BytesMut::new();
    record::begin_request(&mut keep, 7, FCGI_RESPONDER, true);
    assert_eq!(
        &keep[..],
        &[
            1,
            FCGI_BEGIN_REQUEST,
            0,
            7,
            0,
            8,
            0,
            0,
            0,
            1,
            FCGI_KEEP_CONN,
            0,
            0,
            0,
            0,
            0
        ]
    );
    let mut close = BytesMut::new();
    record::begin_request(&mut close, 7, FCGI_RESPONDER, false);
    assert_eq!(close[10], 0);
}

#[test]
fn lengths_from_128_use_four_bytes_with_the_top_bit() {
    let mut short = BytesMut::new();
    record::put_pair(&mut short, b"N", &[b'v'; 127]).unwrap();
    assert_eq!(&short[..2], &[1, 127]);
    let mut long = BytesMut::new();
    let value = vec![b'v'; 300];
    record::put_pair(&mut long, b"NAME", &value).unwrap();
    assert_eq!(&long[..5], &[4, 0x80, 0, 0x01, 0x2c]);
    let mut pairs = PairDecoder::default();
    pairs.push(&long);
    let (name, decoded) = pairs.next().unwrap();
    assert_eq!((&name[..], &decoded[..]), (&b"NAME"[..], &value[..]));
    assert!(pairs.is_empty());
    for len in [128usize, 200, 255] {
        let mut edge = BytesMut::new();
        record::put_pair(&mut edge, &vec![b'n'; len], b"v").unwrap();
        assert_eq!(
            &edge[..6],
            &[0x80, 0, 0, len as u8, 1, b'n'],
            "length {len}"
        );
        let mut pairs = PairDecoder::default();
        pairs.push(&edge);
        let (name, value) = pairs.next().unwrap();
        assert_eq!((name.len(), &value[..]), (len, &b"v"[..]));
    }
}

#[test]
fn pair_split_across_params_records_decodes_whole() {
    // 70,000 bytes of value cannot fit one record: the pair must span two.
    let big = vec![b'x'; 70_000];
    let pairs: Vec<(&[u8], &[u8])> = vec![(b"A", b"1"), (b"BIG", &big), (b"Z", b"")];
    let mut wire = BytesMut::new();
    record::params(&mut wire, ID, pairs.clone()).unwrap();
    let records = decode_in_steps(&wire, 1000).unwrap();
    assert_eq!(records.len(), 3, "two data records and the empty one");
    let mut decoder = PairDecoder::default();
    let mut decoded = Vec::new();
    for record in &records {
        let Record::Other {
            record_type,
            content,
            ..
        } = record
        else {
            panic!("expected PARAMS, got {record:?}");
        };
        assert_eq!(*record_type, FCGI_PARAMS);
        assert!(content.len() <= FCGI_MAX_CONTENT_LEN);
        decoder.push(content);
        decoded.extend(decoder.by_ref());
    }
    let Record::Other { content, .. } = &records[2] else {
        panic!("expected the empty PARAMS record");
    };
    assert!(content.is_empty());
    assert!(decoder.is_empty());
    let expected: Vec<(Bytes, Bytes)> = pairs
        .iter()
        .map(|(n, v)| (Bytes::copy_from_slice(n), Bytes::copy_from_slice(v)))
        .collect();
    assert_eq!(decoded, expected);
}

#[test]
fn stdin_longer_than_a_record_is_split_and_reassembles() {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut wire = BytesMut::new();
    record::stdin(&mut wire, ID, &data);
    record::stdin_end(&mut wire, ID);
    let mut joined = Vec::new();
    let records = decode_in_steps(&wire, 4096).unwrap();
    for record in &records {
        if let Record::Other { content, .. } = record {
            assert!(content.len() <= FCGI_MAX_CONTENT_LEN);
            joined.extend_from_slice(content);
        }
    }
    assert_eq!(
        records.len(),
        5,
        "four data records of at most 0xfff8, then the end"
    );
    assert_eq!(joined, data);
}

#[test]
fn empty_stdin_writes_no_record() {
    let mut wire = BytesMut::new();
    record::stdin(&mut wire, ID, b"");
    assert!(wire.is_empty(), "an empty record would end the stream");
}

#[test]
fn get_values_result_pairs_split_across_records_decode() {
    let mut encoded = BytesMut::new();
    record::put_pair(&mut encoded, b"FCGI_MPXS_CONNS", b"0").unwrap();
    record::put_pair(&mut encoded, b"FCGI_MAX_CONNS", b"5").unwrap();
    let mut wire = BytesMut::new();
    record::record(&mut wire, FCGI_GET_VALUES_RESULT, 0, &encoded[..20]);
    record::record(&mut wire, FCGI_GET_VALUES_RESULT, 0, &encoded[20..]);
    let records = decode_in_steps(&wire, 1).unwrap();
    let pair = |n: &'static [u8], v: &'static [u8]| (Bytes::from_static(n), Bytes::from_static(v));
    assert_eq!(
        records,
        vec![
            Record::GetValuesResult(vec![pair(b"FCGI_MPXS_CONNS", b"0")]),
            Record::GetValuesResult(vec![pair(b"FCGI_MAX_CONNS", b"5")]),
        ]
    );
}

#[test]
fn get_values_asks_with_empty_values_on_the_management_id() {
    let mut wire = BytesMut::new();
    record::get_values(&mut wire, &["FCGI_MAX_CONNS", "FCGI_MPXS_CONNS"]).unwrap();
    assert_eq!((wire[1], wire[2], wire[3]), (FCGI_GET_VALUES, 0, 0));
    let mut decoder = Decoder::new(ID);
    let Some(Record::Other { content, .. }) = decoder.decode(&mut wire).unwrap() else {
        panic!("GET_VALUES decodes as Other");
    };
    let mut pairs = PairDecoder::default();
    pairs.push(&content);
    let names: Vec<Bytes> = pairs
        .map(|(name, value)| {
            assert!(value.is_empty());
            name
        })
        .collect();
    assert_eq!(names, vec!["FCGI_MAX_CONNS", "FCGI_MPXS_CONNS"]);
}

#[test]
fn abort_request_is_an_empty_record_for_the_request() {
    let mut wire = BytesMut::new();
    record::abort_request(&mut wire, ID);
    assert_eq!(&wire[..], &[1, FCGI_ABORT_REQUEST, 0, 1, 0, 0, 0, 0]);
}
