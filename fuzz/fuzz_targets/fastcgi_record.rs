//! The FastCGI record decoder on bytes from a hostile application: it must never panic, and
//! cutting the stream at arbitrary places must not change what it decodes (the first byte of
//! the input seeds the split sizes). Name-value pairs (PairDecoder) get the same split check
//! and an encode/decode round trip.
#![no_main]

use bytes::BytesMut;
use causeway::fastcgi::record::{self, Decoder, PairDecoder, Record, RecordError};
use libfuzzer_sys::fuzz_target;

/// Everything a decoder produced, ending with its error if it failed.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    records: Vec<Record>,
    error: Option<RecordError>,
}

/// Decoded name-value pairs and whether undecoded bytes were left over (1) or not (0).
type Pairs = (Vec<(Vec<u8>, Vec<u8>)>, usize);

/// Split sizes 1..=97 from a small LCG, so every input explores its own cut points.
struct Splits(u32);

impl Splits {
    fn next(&mut self) -> usize {
        self.0 = self.0.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (self.0 >> 16) as usize % 97 + 1
    }
}

fn decode_whole(stream: &[u8]) -> Decoded {
    let mut decoder = Decoder::new(1);
    let mut buf = BytesMut::from(stream);
    let mut records = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(record)) => records.push(record),
            Ok(None) => {
                return Decoded {
                    records,
                    error: None,
                }
            }
            Err(e) => {
                return Decoded {
                    records,
                    error: Some(e),
                }
            }
        }
    }
}

fn decode_split(stream: &[u8], seed: u8) -> Decoded {
    let mut decoder = Decoder::new(1);
    let mut splits = Splits(u32::from(seed));
    let mut buf = BytesMut::new();
    let mut records = Vec::new();
    let mut rest = stream;
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => break,
                Err(e) => {
                    return Decoded {
                        records,
                        error: Some(e),
                    }
                }
            }
        }
        if rest.is_empty() {
            return Decoded {
                records,
                error: None,
            };
        }
        let n = splits.next().min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

fn pairs_whole(content: &[u8]) -> Pairs {
    let mut pairs = PairDecoder::default();
    pairs.push(content);
    let decoded: Vec<_> = pairs
        .by_ref()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    (decoded, usize::from(!pairs.is_empty()))
}

fn pairs_split(content: &[u8], seed: u8) -> Pairs {
    let mut pairs = PairDecoder::default();
    let mut splits = Splits(u32::from(seed) ^ 0x5a5a);
    let mut decoded = Vec::new();
    let mut rest = content;
    while !rest.is_empty() {
        let n = splits.next().min(rest.len());
        pairs.push(&rest[..n]);
        rest = &rest[n..];
        decoded.extend(pairs.by_ref().map(|(n, v)| (n.to_vec(), v.to_vec())));
    }
    (decoded, usize::from(!pairs.is_empty()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };

    // Records: whole and cut into pieces decode the same.
    let whole = decode_whole(stream);
    let split = decode_split(stream, seed);
    assert_eq!(whole, split, "decoding depends on how the stream was cut");
    for record in &whole.records {
        match record {
            Record::Stdout(data) | Record::Stderr(data) => assert!(!data.is_empty()),
            Record::Other { content, .. } => assert!(content.len() <= record::FCGI_MAX_CONTENT_LEN),
            _ => {}
        }
    }
    if let Some(error) = &whole.error {
        // Error messages end up in logs: they must render.
        let _ = error.to_string();
    }

    // Pairs: whole and cut into pieces decode the same.
    let (pairs, leftover) = pairs_whole(stream);
    assert_eq!((pairs.clone(), leftover), pairs_split(stream, seed));

    // Round trip: what decoded re-encodes to bytes that decode to the same pairs, also as a
    // PARAMS stream of records.
    let mut encoded = BytesMut::new();
    for (name, value) in &pairs {
        record::put_pair(&mut encoded, name, value).expect("decoded lengths fit 31 bits");
    }
    assert_eq!(pairs_whole(&encoded), (pairs.clone(), 0));
    let mut params = BytesMut::new();
    record::params(
        &mut params,
        1,
        pairs.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
    )
    .expect("decoded lengths fit 31 bits");
    let mut decoder = Decoder::new(1);
    let mut content = Vec::new();
    let mut ended = false;
    while let Some(record) = decoder.decode(&mut params).expect("our own records decode") {
        match record {
            Record::Other {
                record_type: record::FCGI_PARAMS,
                request_id: 1,
                content: piece,
            } => {
                assert!(!ended, "PARAMS after its empty record");
                ended = piece.is_empty();
                content.extend_from_slice(&piece);
            }
            other => panic!("unexpected record from params(): {other:?}"),
        }
    }
    assert!(ended && params.is_empty());
    assert_eq!(pairs_whole(&content), (pairs, 0));
});
