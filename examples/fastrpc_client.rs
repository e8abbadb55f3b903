//! A fastrpc `tlv` client, wire-compatible with Go's `fastrpc.Server`: calls the server at
//! ADDR with a name and a value and prints the answers.
//!
//! ```text
//! cargo run --release --example fastrpc_server -- 127.0.0.1:7000 &
//! cargo run --release --example fastrpc_client -- 127.0.0.1:7000
//! cargo run --release --example fastrpc_client -- 127.0.0.1:7000 --name foo --value bar --count 3
//! cargo run --release --example fastrpc_client -- 127.0.0.1:7000 --compression flate --send
//! cargo run --release --example fastrpc_client -- 127.0.0.1:7000 --tls-ca ca.pem --server-name localhost
//! ```
//!
//! Go's defaults are an empty sniff header, version 0 and flate; each side picks its own
//! compression. `--send` makes no-response calls (Go's `SendNowait`, id 0). The exit status
//! is 1 if any call failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use batchrpc::{fastrpc, Compression};
use clap::Parser;

mod support;

#[derive(Parser)]
#[command(about = "Calls a fastrpc tlv server and prints the answers")]
struct Args {
    /// The server, `host:port`.
    addr: String,
    /// The call's name.
    #[arg(long, default_value = "foo")]
    name: String,
    /// The call's value.
    #[arg(long, default_value = "bar")]
    value: String,
    /// Calls to make, one after the other.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Make no-response calls (id 0) instead.
    #[arg(long)]
    send: bool,
    /// What the requests are compressed with: none, flate or snappy.
    #[arg(long, default_value = "none")]
    compression: Compression,
    /// Go's `SniffHeader`: must match the server's.
    #[arg(long, default_value = "")]
    sniff_header: String,
    /// Go's `ProtocolVersion`: must match the server's.
    #[arg(long, default_value_t = 0)]
    protocol_version: u8,
    /// Deadline of each call, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// PEM CA certificates to trust: connect with TLS.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// The name the server's certificate must be valid for.
    #[arg(long, default_value = "localhost")]
    server_name: String,
}

fn main() -> ExitCode {
    support::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let mut builder = fastrpc::Client::builder(args.addr.as_str())
        .compression(args.compression)
        .sniff_header(args.sniff_header.as_bytes())
        .protocol_version(args.protocol_version)
        .request_timeout(Duration::from_millis(args.timeout_ms));
    if let Some(ca) = &args.tls_ca {
        #[cfg(feature = "tls")]
        {
            // The application picks the crypto provider; batchrpc enables none.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = batchrpc::tls::client_config_from_pem(ca, None)?;
            builder = builder.tls(config, &args.server_name);
        }
        #[cfg(not(feature = "tls"))]
        return Err(format!("{ca:?}: this build has no TLS (cargo feature `tls`)").into());
    }
    let client = builder.connect()?;
    let (name, value) = (args.name.as_bytes(), args.value.as_bytes());
    let mut failed = 0;
    for _ in 0..args.count {
        if args.send {
            match client.send(name, value) {
                Ok(()) => println!("send {}={} -> sent", args.name, args.value),
                Err(e) => {
                    failed += 1;
                    let e = support::Chain(&e);
                    println!("send {}={} -> error: {e}", args.name, args.value);
                }
            }
            continue;
        }
        match client.call(name, value) {
            Ok(answer) => println!(
                "call {}={} -> {}",
                args.name,
                args.value,
                String::from_utf8_lossy(&answer)
            ),
            Err(e) => {
                failed += 1;
                let e = support::Chain(&e);
                println!("call {}={} -> error: {e}", args.name, args.value);
            }
        }
    }
    // A send completes once it is in a batch: wait for that, so that the figures below count
    // every send (closing would write them anyway).
    while client.pending_requests() > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let stats = client.stats();
    println!(
        "{} calls completed, {} failed; {} bytes written in {} writes, {} read",
        stats.calls,
        stats.errors.failed_calls(),
        stats.bytes_written,
        stats.write_calls,
        stats.bytes_read
    );
    client.close();
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
