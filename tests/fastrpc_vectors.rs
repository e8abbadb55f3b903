//! Replays the golden vectors captured from Go's fastrpc + tlv (`tests/data/fastrpc/`) through
//! the sans-IO codecs of `batchrpc::wire::fastrpc`, and checks that our encoders produce the
//! same frames.

mod support;

use batchrpc::wire::compress::{Compression, Encoder};
use batchrpc::wire::fastrpc::{
    decode_hello, decode_request, decode_response, encode_hello, encode_request, encode_response,
    from_fastrpc_byte, to_fastrpc_byte, FastrpcFrameError, FastrpcHello, FastrpcHelloError,
    FastrpcSettings, Field, IdAllocator, MAX_FIELD_LEN,
};
use proptest::prelude::*;
use support::go_vectors::{decompress, load};

type Request = (u32, Vec<u8>, Vec<u8>);
type Response = (u32, Vec<u8>);

/// Every request in a decompressed client stream, which must end on a frame boundary.
fn requests(mut plain: &[u8]) -> Vec<Request> {
    let mut all = Vec::new();
    while !plain.is_empty() {
        let (req, n) = decode_request(plain)
            .unwrap()
            .expect("stream ends inside a request");
        all.push((req.id, req.name.to_vec(), req.value.to_vec()));
        plain = &plain[n..];
    }
    all
}

/// Every response in a decompressed server stream, which must end on a frame boundary.
fn responses(mut plain: &[u8]) -> Vec<Response> {
    let mut all = Vec::new();
    while !plain.is_empty() {
        let (resp, n) = decode_response(plain)
            .unwrap()
            .expect("stream ends inside a response");
        all.push((resp.id, resp.value.to_vec()));
        plain = &plain[n..];
    }
    all
}

/// The 1000-byte value of the "big" call: byte k = k % 251.
fn big() -> Vec<u8> {
    (0..1000u32).map(|k| (k % 251) as u8).collect()
}

/// The calls of scenarios 01 to 04, with Go's ids.
fn sequence_requests() -> Vec<Request> {
    vec![
        (1, b"foo".to_vec(), b"bar".to_vec()),
        (2, b"x".to_vec(), b"yy".to_vec()),
        (0, b"n".to_vec(), b"w".to_vec()),
        (3, Vec::new(), Vec::new()),
        (4, b"big".to_vec(), big()),
    ]
}

/// The responses of scenarios 01 to 04: `re:<name>=<value>` for every call but id 0.
fn sequence_responses() -> Vec<Response> {
    sequence_requests()
        .into_iter()
        .filter(|(id, _, _)| *id != 0)
        .map(|(id, name, value)| (id, [&b"re:"[..], &name[..], &b"="[..], &value[..]].concat()))
        .collect()
}

/// Parses the hello at the start of `wire` under `settings`, checks it against the expected
/// compression and TLS flag and against `encode_hello`, and returns the stream after it.
fn hello<'a>(
    settings: &FastrpcSettings,
    wire: &'a [u8],
    compression: Compression,
    tls: bool,
) -> &'a [u8] {
    let got = decode_hello(settings, wire).unwrap().unwrap();
    assert_eq!(
        got,
        FastrpcHello {
            compression: to_fastrpc_byte(compression),
            tls
        }
    );
    assert_eq!(got.compression(), Some(compression));
    let len = settings.hello_len();
    let mut ours = Vec::new();
    encode_hello(settings, compression, tls, &mut ours);
    assert_eq!(ours, wire[..len], "encode_hello differs from Go's block");
    &wire[len..]
}

/// Scenarios 01 to 04: the five-call sequence with the given compression per direction.
fn replay_sequence(name: &str, client: Compression, server: Compression) {
    if !client.is_available() || !server.is_available() {
        return;
    }
    let settings = FastrpcSettings::default();
    let c2s = load(name, "c2s");
    let s2c = load(name, "s2c");
    let c2s_plain = decompress(client, hello(&settings, &c2s, client, false));
    let s2c_plain = decompress(server, hello(&settings, &s2c, server, false));
    assert_eq!(requests(&c2s_plain), sequence_requests(), "{name} requests");
    assert_eq!(
        responses(&s2c_plain),
        sequence_responses(),
        "{name} responses"
    );
    // Every scenario carries the same frames: byte for byte those of 01-none.
    assert_eq!(c2s_plain, load("01-none", "c2s")[3..], "{name} c2s");
    assert_eq!(s2c_plain, load("01-none", "s2c")[3..], "{name} s2c");
}

#[test]
fn vector_01_none() {
    replay_sequence("01-none", Compression::None, Compression::None);
}

#[test]
fn vector_02_flate() {
    replay_sequence("02-flate", Compression::Flate, Compression::Flate);
}

#[test]
fn vector_03_snappy() {
    replay_sequence("03-snappy", Compression::Snappy, Compression::Snappy);
}

#[test]
fn vector_04_flate_to_snappy() {
    replay_sequence(
        "04-flate-to-snappy",
        Compression::Flate,
        Compression::Snappy,
    );
}

#[test]
fn vector_05_sniff_version() {
    let settings = FastrpcSettings::new(&b"abc"[..], 7);
    let c2s = load("05-sniff-version", "c2s");
    let s2c = load("05-sniff-version", "s2c");
    assert_eq!(c2s[..6], *b"abc\x07\x01\x00");
    let reqs = requests(hello(&settings, &c2s, Compression::None, false));
    let resps = responses(hello(&settings, &s2c, Compression::None, false));
    assert_eq!(reqs, [(1, b"a".to_vec(), b"b".to_vec())]);
    assert_eq!(resps, [(1, b"re:a=b".to_vec())]);
    // Under Go's default settings the same block is refused at its first byte.
    assert_eq!(
        decode_hello(&FastrpcSettings::default(), &c2s),
        Err(FastrpcHelloError::VersionMismatch {
            got: b'a',
            expected: 0
        })
    );
}

#[test]
fn vector_06_concurrent_none() {
    let settings = FastrpcSettings::default();
    let c2s = load("06-concurrent-none", "c2s");
    let s2c = load("06-concurrent-none", "s2c");
    let reqs = requests(hello(&settings, &c2s, Compression::None, false));
    let resps = responses(hello(&settings, &s2c, Compression::None, false));
    assert_eq!((reqs.len(), resps.len()), (50, 50));

    // Requests: ids 1..=50 in wire order, name "c", values "0".."49" each once.
    let ids: Vec<u32> = reqs.iter().map(|r| r.0).collect();
    assert_eq!(ids, (1..=50).collect::<Vec<u32>>());
    assert!(reqs.iter().all(|r| r.1 == b"c"));
    let mut values: Vec<u32> = reqs
        .iter()
        .map(|r| std::str::from_utf8(&r.2).unwrap().parse().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..50).collect::<Vec<u32>>());

    // Responses: each id once, each value answering the request with that id, not in order.
    let mut resp_ids: Vec<u32> = resps.iter().map(|r| r.0).collect();
    assert_ne!(resp_ids, ids, "the capture has out-of-order responses");
    resp_ids.sort_unstable();
    assert_eq!(resp_ids, ids);
    for (id, value) in &resps {
        let req = &reqs[*id as usize - 1];
        assert_eq!(
            *value,
            [&b"re:c="[..], &req.2[..]].concat(),
            "response {id}"
        );
    }
}

#[test]
fn vector_07a_bad_sniff() {
    let server = FastrpcSettings::new(&b"abc"[..], 0);
    let client = FastrpcSettings::new(&b"xyz"[..], 0);
    let c2s = load("07a-bad-sniff", "c2s");
    assert_eq!(
        decode_hello(&server, &c2s),
        Err(FastrpcHelloError::SniffMismatch {
            at: 0,
            got: b'x',
            expected: b'a'
        })
    );
    // Refused from the first byte alone, as Go refuses after reading its sniff length.
    assert_eq!(
        decode_hello(&server, &c2s[..1]),
        decode_hello(&server, &c2s)
    );
    hello(&client, &c2s, Compression::None, false);
    assert_eq!(c2s.len(), client.hello_len());
    assert!(
        load("07a-bad-sniff", "s2c").is_empty(),
        "server answers nothing"
    );
}

#[test]
fn vector_07b_bad_version() {
    let server = FastrpcSettings::default();
    let client = FastrpcSettings::new(&[][..], 1);
    let c2s = load("07b-bad-version", "c2s");
    assert_eq!(c2s, [1, 1, 0]);
    assert_eq!(
        decode_hello(&server, &c2s),
        Err(FastrpcHelloError::VersionMismatch {
            got: 1,
            expected: 0
        })
    );
    assert_eq!(
        decode_hello(&server, &c2s[..1]),
        decode_hello(&server, &c2s)
    );
    hello(&client, &c2s, Compression::None, false);
    assert!(
        load("07b-bad-version", "s2c").is_empty(),
        "server answers nothing"
    );
}

#[test]
fn vector_07c_tls_refused() {
    let settings = FastrpcSettings::default();
    let c2s = load("07c-tls-refused", "c2s");
    let s2c = load("07c-tls-refused", "s2c");
    // The server accepts the client's block, which asks for TLS ...
    assert_eq!(
        decode_hello(&settings, &c2s),
        Ok(Some(FastrpcHello {
            compression: 1,
            tls: true
        }))
    );
    assert!(hello(&settings, &c2s, Compression::None, true).is_empty());
    // ... and, without TLS, answers tls = 0 and nothing else.
    assert_eq!(s2c, [0, 1, 0]);
    assert!(hello(&settings, &s2c, Compression::None, false).is_empty());
}

/// Our encoders, with Go's ids from the allocator, rebuild the uncompressed streams of 01-none.
fn encode_sequence() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut ids = IdAllocator::new();
    let (mut req_batches, mut resp_batches) = (Vec::new(), Vec::new());
    for (go_id, name, value) in sequence_requests() {
        let id = if go_id == 0 { 0 } else { ids.next(|_| false) };
        assert_eq!(id, go_id);
        let mut batch = Vec::new();
        encode_request(&mut batch, id, &name, &value).unwrap();
        req_batches.push(batch);
    }
    for (id, value) in sequence_responses() {
        let mut batch = Vec::new();
        encode_response(&mut batch, id, &value).unwrap();
        resp_batches.push(batch);
    }
    (req_batches, resp_batches)
}

#[test]
fn encoders_reproduce_01_none() {
    let (reqs, resps) = encode_sequence();
    let mut c2s = Vec::new();
    encode_hello(
        &FastrpcSettings::default(),
        Compression::None,
        false,
        &mut c2s,
    );
    let mut s2c = c2s.clone();
    c2s.extend(reqs.concat());
    s2c.extend(resps.concat());
    assert_eq!(c2s, load("01-none", "c2s"));
    assert_eq!(s2c, load("01-none", "s2c"));
}

#[test]
fn encoders_reproduce_05_sniff_version() {
    let settings = FastrpcSettings::new(&b"abc"[..], 7);
    let mut c2s = Vec::new();
    encode_hello(&settings, Compression::None, false, &mut c2s);
    let mut s2c = c2s.clone();
    encode_request(&mut c2s, 1, b"a", b"b").unwrap();
    encode_response(&mut s2c, 1, b"re:a=b").unwrap();
    assert_eq!(c2s, load("05-sniff-version", "c2s"));
    assert_eq!(s2c, load("05-sniff-version", "s2c"));
}

#[test]
fn our_compressed_batches_decode_to_the_same_frames() {
    let (reqs, resps) = encode_sequence();
    for compression in [Compression::None, Compression::Flate, Compression::Snappy] {
        if !compression.is_available() {
            continue;
        }
        // Go writes level 6; any level must decode.
        let mut c2s = Vec::new();
        let mut s2c = Vec::new();
        let mut req_encoder = Encoder::new(compression, 6).unwrap();
        let mut resp_encoder = Encoder::new(compression, 1).unwrap();
        for batch in &reqs {
            req_encoder.encode(batch, &mut c2s);
            if compression == Compression::Flate {
                assert!(c2s.ends_with(&[0, 0, 0xff, 0xff]), "sync flush per batch");
            }
        }
        for batch in &resps {
            resp_encoder.encode(batch, &mut s2c);
        }
        if compression == Compression::Snappy {
            assert!(c2s.starts_with(b"\xff\x06\x00\x00sNaPpY"));
        }
        assert_eq!(
            requests(&decompress(compression, &c2s)),
            sequence_requests(),
            "{compression}"
        );
        assert_eq!(
            responses(&decompress(compression, &s2c)),
            sequence_responses(),
            "{compression}"
        );
    }
}

#[test]
fn compression_bytes_of_the_vectors_map_both_ways() {
    for (name, client, server) in [
        ("01-none", 1, 1),
        ("02-flate", 0, 0),
        ("03-snappy", 2, 2),
        ("04-flate-to-snappy", 0, 2),
    ] {
        assert_eq!(load(name, "c2s")[1], client, "{name}");
        assert_eq!(load(name, "s2c")[1], server, "{name}");
        for b in [client, server] {
            assert_eq!(to_fastrpc_byte(from_fastrpc_byte(b).unwrap()), b);
        }
    }
    assert_eq!(from_fastrpc_byte(3), None);
}

#[test]
fn decoders_are_incremental_over_the_01_none_streams() {
    // Feed the streams one byte at a time: nothing is decoded early, everything at its end.
    let c2s = load("01-none", "c2s");
    let mut got = Vec::new();
    let mut start = 3;
    for end in 4..=c2s.len() {
        if let Some((req, n)) = decode_request(&c2s[start..end]).unwrap() {
            assert_eq!(start + n, end, "decoded before the frame was whole");
            got.push((req.id, req.name.to_vec(), req.value.to_vec()));
            start = end;
        }
    }
    assert_eq!(got, sequence_requests());

    let s2c = load("01-none", "s2c");
    let mut got = Vec::new();
    let mut start = 3;
    for end in 4..=s2c.len() {
        if let Some((resp, n)) = decode_response(&s2c[start..end]).unwrap() {
            assert_eq!(start + n, end, "decoded before the frame was whole");
            got.push((resp.id, resp.value.to_vec()));
            start = end;
        }
    }
    assert_eq!(got, sequence_responses());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes never panic the decoders, and what they accept lies inside the input.
    #[test]
    fn decoders_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..64),
                            sniff in proptest::collection::vec(any::<u8>(), 0..4),
                            version in any::<u8>()) {
        if let Ok(Some((req, n))) = decode_request(&buf) {
            prop_assert_eq!(n, 12 + req.name.len() + req.value.len());
            prop_assert!(n <= buf.len());
        }
        if let Ok(Some((resp, n))) = decode_response(&buf) {
            prop_assert_eq!(n, 8 + resp.value.len());
            prop_assert!(n <= buf.len());
        }
        let settings = FastrpcSettings::new(sniff, version);
        if let Ok(Some(_)) = decode_hello(&settings, &buf) {
            prop_assert!(buf.len() >= settings.hello_len());
            prop_assert_eq!(&buf[..settings.sniff.len()], &settings.sniff[..]);
        }
    }

    /// Length fields: at most 1 MiB is waited for, above is refused from the field alone.
    #[test]
    fn length_fields_are_checked_before_the_bytes(id in any::<u32>(), len in any::<u32>()) {
        let mut buf = id.to_le_bytes().to_vec();
        buf.extend_from_slice(&len.to_le_bytes());
        let want = if len > MAX_FIELD_LEN {
            Err(FastrpcFrameError::TooLong { field: Field::Name, len })
        } else {
            Ok(None)
        };
        prop_assert_eq!(decode_request(&buf), want);
        let want = if len > MAX_FIELD_LEN {
            Err(FastrpcFrameError::TooLong { field: Field::Value, len })
        } else if len == 0 {
            Ok(Some((batchrpc::wire::fastrpc::FastrpcResponse { id, value: &[][..] }, 8)))
        } else {
            Ok(None)
        };
        prop_assert_eq!(decode_response(&buf), want);
    }

    /// Whatever the id, name and value, encode then decode gives them back, cut anywhere.
    #[test]
    fn frames_round_trip(id in any::<u32>(),
                         name in proptest::collection::vec(any::<u8>(), 0..40),
                         value in proptest::collection::vec(any::<u8>(), 0..40),
                         cut in any::<prop::sample::Index>()) {
        let mut buf = Vec::new();
        encode_request(&mut buf, id, &name, &value).unwrap();
        let (req, n) = decode_request(&buf).unwrap().unwrap();
        prop_assert_eq!((req.id, req.name, req.value, n), (id, &name[..], &value[..], buf.len()));
        prop_assert_eq!(decode_request(&buf[..cut.index(buf.len())]), Ok(None));

        let mut buf = Vec::new();
        encode_response(&mut buf, id, &value).unwrap();
        let (resp, n) = decode_response(&buf).unwrap().unwrap();
        prop_assert_eq!((resp.id, resp.value, n), (id, &value[..], buf.len()));
        prop_assert_eq!(decode_response(&buf[..cut.index(buf.len())]), Ok(None));
    }
}
