//! A server and a client over TLS (rustls with the ring provider), in one process: with
//! certificates generated at start (rcgen), or loaded from PEM files given on the command
//! line. Shows the certificate each side sees, some calls, a batch of calls in flight, and the
//! failures a wrong setup produces.
//!
//! ```text
//! cargo run --release --example tls
//! cargo run --release --example tls -- --mtls --compression snappy
//! cargo run --release --example tls -- --cert server.pem --key server-key.pem --ca ca.pem \
//!     [--server-name localhost] [--client-ca ca.pem --client-cert client.pem --client-key client-key.pem]
//! ```
//!
//! With PEM files: `--cert` is the server's certificate chain, `--key` its private key, `--ca`
//! the CA certificates the client trusts; `--client-ca` turns on mutual TLS (client
//! certificates signed by that CA are required), `--client-cert`/`--client-key` are the
//! client's identity for it.
//!
//! About compression: compressing secrets together with data an attacker controls in one TLS
//! stream leaks the secrets through the compressed length (CRIME, BREACH). The default here is
//! no compression.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use batchrpc::{Client, Compression, Error, RequestCtx, Server};
use clap::{Parser, ValueEnum};

mod support;

/// batchrpc over TLS: a server and a client in one process.
#[derive(Parser, Debug)]
#[command(name = "tls")]
struct Args {
    /// The server's certificate chain (PEM). Without it, certificates are generated.
    #[arg(long, value_name = "PEM", requires_all = ["key", "ca"])]
    cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long, value_name = "PEM")]
    key: Option<PathBuf>,
    /// The CA certificates the client trusts (PEM).
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// The CA the server verifies client certificates against (PEM): mutual TLS.
    #[arg(long, value_name = "PEM", requires_all = ["client_cert", "client_key"])]
    client_ca: Option<PathBuf>,
    /// The client's certificate chain, for mutual TLS (PEM).
    #[arg(long, value_name = "PEM")]
    client_cert: Option<PathBuf>,
    /// The client's private key, for mutual TLS (PEM).
    #[arg(long, value_name = "PEM")]
    client_key: Option<PathBuf>,
    /// The name the server's certificate must be valid for.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// With generated certificates: mutual TLS, the client gets a certificate too.
    #[arg(long)]
    mtls: bool,
    /// Compression of both directions, inside TLS.
    #[arg(long, value_enum, default_value_t = Codec::None)]
    compression: Codec,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Codec {
    None,
    Flate,
    Snappy,
}

impl From<Codec> for Compression {
    fn from(c: Codec) -> Compression {
        match c {
            Codec::None => Compression::None,
            Codec::Flate => Compression::Flate,
            Codec::Snappy => Compression::Snappy,
        }
    }
}

/// The TLS configurations of both sides.
struct Configs {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    /// A client config without a client certificate, to show a mutual-TLS refusal.
    anonymous: Option<Arc<rustls::ClientConfig>>,
}

fn from_files(args: &Args) -> Result<Configs, Error> {
    let (cert, key, ca) = match (&args.cert, &args.key, &args.ca) {
        (Some(c), Some(k), Some(a)) => (c, k, a),
        _ => unreachable!("clap requires them together"),
    };
    let server = batchrpc::tls::server_config_from_pem(cert, key, args.client_ca.as_deref())?;
    let identity = match (&args.client_cert, &args.client_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    let client = batchrpc::tls::client_config_from_pem(ca, identity)?;
    let anonymous = match identity {
        Some(_) => Some(batchrpc::tls::client_config_from_pem(ca, None)?),
        None => None,
    };
    Ok(Configs {
        server,
        client,
        anonymous,
    })
}

/// A CA, a server certificate for `name` and (with `mtls`) a client certificate, all made now.
fn generated(name: &str, mtls: bool) -> Result<Configs, Box<dyn std::error::Error>> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "batchrpc example CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
    let leaf = |subject: &str| -> Result<(String, String), rcgen::Error> {
        let key = rcgen::KeyPair::generate()?;
        let cert =
            rcgen::CertificateParams::new(vec![subject.to_string()])?.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(name)?;
    let ca_pem = ca.pem();
    let client_ca = mtls.then_some(ca_pem.as_bytes());
    let server = batchrpc::tls::server_config_from_pem_bytes(
        server_cert.as_bytes(),
        server_key.as_bytes(),
        client_ca,
    )?;
    let (client, anonymous) = if mtls {
        let (cert, key) = leaf("example-client")?;
        let identity = Some((cert.as_bytes(), key.as_bytes()));
        (
            batchrpc::tls::client_config_from_pem_bytes(ca_pem.as_bytes(), identity)?,
            Some(batchrpc::tls::client_config_from_pem_bytes(
                ca_pem.as_bytes(),
                None,
            )?),
        )
    } else {
        (
            batchrpc::tls::client_config_from_pem_bytes(ca_pem.as_bytes(), None)?,
            None,
        )
    };
    Ok(Configs {
        server,
        client,
        anonymous,
    })
}

fn main() -> ExitCode {
    support::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // The application picks the crypto provider; batchrpc enables none.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let configs = if args.cert.is_some() {
        println!("certificates: from PEM files");
        from_files(&args)?
    } else {
        println!(
            "certificates: generated (a CA, a server certificate for {:?}{})",
            args.server_name,
            if args.mtls {
                ", a client certificate"
            } else {
                ""
            }
        );
        generated(&args.server_name, args.mtls)?
    };
    let compression = Compression::from(args.compression);

    let server = Server::builder()
        .compression(compression)
        .tls(configs.server.clone())
        .handler(|ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
            if req == b"who am I?" {
                let text = match ctx.peer_certificates() {
                    Some(chain) => format!("a client with a {}-byte certificate", chain[0].len()),
                    None => "a client without a certificate".to_string(),
                };
                resp.extend_from_slice(text.as_bytes());
            } else {
                resp.extend_from_slice(req);
            }
            Ok(())
        })
        .bind("127.0.0.1:0")?;
    println!("server listening on {} (TLS required)", server.local_addr());

    let client = Client::builder(server.local_addr())
        .compression(compression)
        .tls(configs.client.clone(), &args.server_name)
        .on_connect(|info| {
            let chain = info.peer_certificates().map_or(0, |c| c.len());
            println!(
                "client connected to {}: the server presented {chain} certificate(s)",
                info.peer_addr()
            );
            Ok(())
        })
        .connect()?;

    let resp = client.call(b"hello over TLS")?;
    println!(
        "call(hello over TLS)   -> {}",
        String::from_utf8_lossy(&resp)
    );
    let resp = client.call(b"who am I?")?;
    println!(
        "call(who am I?)        -> {}",
        String::from_utf8_lossy(&resp)
    );

    let started = Instant::now();
    let window: Vec<_> = (0..1000)
        .map(|i| client.call_async(format!("call {i}").as_bytes()))
        .collect::<Result<_, _>>()?;
    for p in window {
        p.wait()?;
    }
    println!("1000 calls in flight   -> done in {:?}", started.elapsed());
    let s = client.stats();
    println!(
        "client stats           -> {} calls, {} writes, {:.1} calls per write, {} bytes written",
        s.calls,
        s.write_calls,
        s.frames_per_write(),
        s.bytes_written
    );

    // What a wrong setup looks like: each fails at connect(), with the reason.
    println!();
    match Client::builder(server.local_addr()).connect() {
        Err(e) => println!("plaintext client       -> {}", support::Chain(&e)),
        Ok(_) => println!("plaintext client       -> unexpectedly connected"),
    }
    match Client::builder(server.local_addr())
        .tls(configs.client.clone(), "not-the-server.example")
        .connect()
    {
        Err(e) => println!("wrong server name      -> {}", support::Chain(&e)),
        Ok(_) => println!("wrong server name      -> unexpectedly connected"),
    }
    if let Some(anonymous) = configs.anonymous {
        match Client::builder(server.local_addr())
            .tls(anonymous, &args.server_name)
            .connect()
        {
            Err(e) => println!("no client certificate  -> {}", support::Chain(&e)),
            Ok(_) => println!("no client certificate  -> unexpectedly connected"),
        }
    }
    let ss = server.stats();
    println!(
        "server stats           -> {} accepted, {} refused in the handshake",
        ss.accepts, ss.accept_errors
    );
    Ok(())
}
