//! `frame::decode` walking arbitrary bytes under an arbitrary limit (the first four bytes):
//! no panic; each answer agrees with the header, payloads stay within the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| batchrpc_fuzz::frame_decode(data));
