//! `handshake::decode` on arbitrary bytes: no panic; accepts exactly the hellos it encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| batchrpc_fuzz::handshake_decode(data));
