//! A fastrpc-profile `Conn`, server or client, fed a valid handshake block then arbitrary
//! bytes (see `batchrpc_fuzz::conn_fastrpc`): no panic, bounded memory, only valid frames
//! delivered, and in plain mode exactly what the codec's decoders find.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| batchrpc_fuzz::conn_fastrpc(data));
