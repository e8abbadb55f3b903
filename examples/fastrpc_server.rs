//! A fastrpc `tlv` server, wire-compatible with Go's `fastrpc.Client`: it answers every call
//! with the value `re:<name>=<value>` (the handler of the captured Go vectors).
//!
//! ```text
//! cargo run --release --example fastrpc_server -- 127.0.0.1:7000
//! cargo run --release --example fastrpc_server -- 127.0.0.1:7000 --compression snappy --for 30s
//! cargo run --release --example fastrpc_server -- 127.0.0.1:7000 --sniff-header abc --protocol-version 7
//! cargo run --release --example fastrpc_server -- 127.0.0.1:7000 --tls-cert cert.pem --tls-key key.pem
//! ```
//!
//! Go's defaults are an empty sniff header, version 0 and flate (`CompressType` 0); each side
//! picks its own compression, so the client need not match `--compression`. With a TLS
//! certificate, clients that ask for TLS get it and plaintext clients are still served, as
//! with Go's `TLSConfig`. It runs until interrupted, or for `--for`, then prints its counters.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use batchrpc::{fastrpc, Compression, RequestCtx};
use clap::Parser;

mod support;

#[derive(Parser)]
#[command(about = "A fastrpc tlv server answering re:<name>=<value>")]
struct Args {
    /// Address to listen on, `host:port`.
    addr: String,
    /// What the responses are compressed with: none, flate or snappy.
    #[arg(long, default_value = "none")]
    compression: Compression,
    /// Go's `SniffHeader`: bytes every client must send first.
    #[arg(long, default_value = "")]
    sniff_header: String,
    /// Go's `ProtocolVersion`.
    #[arg(long, default_value_t = 0)]
    protocol_version: u8,
    /// PEM certificate chain: serve TLS to the clients that ask for it.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Stop after this long (`30s`, `500ms`, `2m`, or plain seconds); default: run until
    /// interrupted.
    #[arg(long = "for", value_parser = support::parse_duration)]
    run_for: Option<Duration>,
    /// Print nothing per call.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    support::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let quiet = args.quiet;
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let mut builder = fastrpc::Server::builder()
        .compression(args.compression)
        .sniff_header(args.sniff_header.as_bytes())
        .protocol_version(args.protocol_version)
        .handler(
            move |_ctx: &RequestCtx, name: &[u8], value: &[u8], resp: &mut Vec<u8>| {
                if !quiet {
                    println!(
                        "call name={:?} value={:?}",
                        String::from_utf8_lossy(name),
                        String::from_utf8_lossy(&value[..value.len().min(64)])
                    );
                }
                resp.extend_from_slice(b"re:");
                resp.extend_from_slice(name);
                resp.push(b'=');
                resp.extend_from_slice(value);
                Ok(())
            },
        );
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        #[cfg(feature = "tls")]
        {
            // The application picks the crypto provider; batchrpc enables none.
            let _ = rustls::crypto::ring::default_provider().install_default();
            builder = builder.tls(batchrpc::tls::server_config_from_pem(cert, key, None)?);
        }
        #[cfg(not(feature = "tls"))]
        return Err(
            format!("{cert:?}, {key:?}: this build has no TLS (cargo feature `tls`)").into(),
        );
    }
    let server = builder.bind(args.addr.as_str())?;
    println!(
        "fastrpc server on {} (compression {}, sniff {:?}, version {}, tls {})",
        server.local_addr(),
        args.compression,
        args.sniff_header,
        args.protocol_version,
        if args.tls_cert.is_some() {
            "offered"
        } else {
            "off"
        },
    );
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if args.run_for.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    server.shutdown();
    let stats = server.stats();
    println!(
        "served {} calls on {} connections ({} handler errors, {} connections closed for protocol errors)",
        stats.calls, stats.accepts, stats.errors.server, stats.errors.protocol
    );
    Ok(())
}
