//! A server `Conn` fed a valid hello then arbitrary bytes, with the compression, read size and
//! mode chosen by the first byte (see `batchrpc_fuzz::conn_server`): no panic, bounded memory,
//! only valid requests delivered, and in plain mode exactly the frames of the plain stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| batchrpc_fuzz::conn_server(data));
