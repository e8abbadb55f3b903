//! The flate `Decoder` on arbitrary bytes, cut into pieces and given a room chosen by the
//! first byte: no panic; never claims more input or room than it had.
#![no_main]

use batchrpc::Compression;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| batchrpc_fuzz::decompress(Compression::Flate, data));
