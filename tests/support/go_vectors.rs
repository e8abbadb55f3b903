//! The bytes captured from Go's fastrpc talking to itself (`tests/data/fastrpc/`, described in
//! the README there), loaded and decompressed for the fastrpc tests.

use batchrpc::wire::compress::{Compression, Decoder};

/// Where the captures are, inside the crate (they ship with it, so its tests run anywhere).
pub const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fastrpc/");

/// One direction of a scenario: `NAME.c2s.hex` or `NAME.s2c.hex`, hex-decoded.
pub fn load(name: &str, dir: &str) -> Vec<u8> {
    let path = format!("{VECTORS}{name}.{dir}.hex");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'\n').collect();
    assert_eq!(hex.len() % 2, 0, "{path}: odd number of hex digits");
    hex.chunks(2)
        .map(|pair| {
            let digit = |d: u8| match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                _ => panic!("{path}: not a lowercase hex digit: {d:#04x}"),
            };
            digit(pair[0]) << 4 | digit(pair[1])
        })
        .collect()
}

/// Feeds `wire` to `decoder` and appends everything it yields to `plain`; all of `wire` must
/// be taken.
pub fn decode_into(decoder: &mut Decoder, wire: &[u8], plain: &mut Vec<u8>) {
    let (mut input, mut out) = (wire, [0u8; 4096]);
    loop {
        let (consumed, produced) = decoder.decode(input, &mut out).expect("decompress");
        input = &input[consumed..];
        plain.extend_from_slice(&out[..produced]);
        if (consumed, produced) == (0, 0) && decoder.pending_output() == 0 {
            break;
        }
    }
    assert!(input.is_empty(), "{} undecoded bytes left", input.len());
}

/// Decompresses a whole direction's stream (as received, after the handshake).
pub fn decompress(compression: Compression, wire: &[u8]) -> Vec<u8> {
    let mut decoder = Decoder::new(compression).unwrap();
    let mut plain = Vec::new();
    decode_into(&mut decoder, wire, &mut plain);
    plain
}
