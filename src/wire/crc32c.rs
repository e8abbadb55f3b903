//! CRC-32C (Castagnoli), the checksum of the snappy framing format.
//!
//! Software only (no `unsafe`, hence no SSE4.2 `crc32` instruction): slicing-by-16 over sixteen
//! 256-entry tables (16 KiB) built at compile time. The reflected polynomial is `0x82F63B78`,
//! the initial value and the final XOR are `0xFFFF_FFFF`, as in RFC 3720 and the snappy
//! framing format.

// The lead declares this module unconditionally; only snappy uses it.
#![cfg_attr(not(feature = "snappy"), allow(dead_code))]

/// The reflected Castagnoli polynomial.
const POLY: u32 = 0x82F6_3B78;

/// Bytes folded in per step of the main loop.
const SLICES: usize = 16;

/// `TABLES[0]` is the classic byte-at-a-time table. `TABLES[k][b]` is the CRC contribution of
/// byte `b` followed by `k` zero bytes, so that sixteen lookups fold in sixteen bytes.
static TABLES: [[u32; 256]; SLICES] = make_tables();

const fn make_tables() -> [[u32; 256]; SLICES] {
    let mut t = [[0u32; 256]; SLICES];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        t[0][i] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < SLICES {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

/// The CRC-32C of `data`.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    let mut blocks = data.chunks_exact(SLICES);
    for block in &mut blocks {
        let mut b = [0u8; SLICES];
        b.copy_from_slice(block);
        let head = crc.to_le_bytes();
        for (x, h) in b.iter_mut().zip(head) {
            *x ^= h;
        }
        crc = 0;
        for (k, &x) in b.iter().enumerate() {
            crc ^= TABLES[SLICES - 1 - k][usize::from(x)];
        }
    }
    for &x in blocks.remainder() {
        crc = (crc >> 8) ^ TABLES[0][usize::from(crc as u8 ^ x)];
    }
    !crc
}

/// The snappy framing format's masked checksum: rotate right by 15, add a constant, so that
/// the CRC of data that itself contains CRCs is not degenerate.
pub(crate) fn masked(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-at-a-time reference.
    fn reference(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &x in data {
            crc ^= u32::from(x);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn known_values() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
    }

    #[test]
    fn matches_bitwise_reference_at_every_length_and_offset() {
        let mut x = 0x9E37_79B9u32;
        let data: Vec<u8> = (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for start in 0..SLICES {
            for end in start..data.len() {
                assert_eq!(crc32c(&data[start..end]), reference(&data[start..end]));
            }
        }
    }

    #[test]
    fn masked_matches_go_snappy_vector() {
        // 03-snappy, client to server, first data chunk: masked CRC bytes fd 0b 78 69.
        let batch = b"\x01\x00\x00\x00\x03\x00\x00\x00foo\x03\x00\x00\x00bar";
        assert_eq!(
            masked(crc32c(batch)),
            u32::from_le_bytes([0xfd, 0x0b, 0x78, 0x69])
        );
        assert_eq!(masked(0), 0xa282_ead8);
    }
}
