//! The snappy `Decoder` on arbitrary bytes (optionally behind a valid stream identifier), cut
//! into pieces and given a room chosen by the first byte: no panic; never claims more input or
//! room than it had; holds at most one chunk.
#![no_main]

use batchrpc::Compression;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| batchrpc_fuzz::decompress(Compression::Snappy, data));
