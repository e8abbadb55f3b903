//! TLS over real loopback sockets, with certificates made by rcgen when the tests start: calls
//! in every compression pair, the TLS policy of the server (required, optional, off) against
//! TLS and plaintext clients, certificates that must be refused (another name, an unknown CA,
//! expired), mutual TLS, and the PEM helpers. Every failure must be reported on both sides,
//! within the handshake timeout, and leave the server's other connections alone.

#![cfg(feature = "tls")]

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use batchrpc::tls::{TlsError, TlsErrorKind};
use batchrpc::wire::handshake::HandshakeError;
use batchrpc::wire::ProtocolError;
use batchrpc::{Client, ClientBuilder, Compression, Error, RequestCtx, Server, ServerBuilder};
use support::{chain, random_bytes, run, wait_until};

const WAIT: Duration = Duration::from_secs(10);
/// The handshake timeout the failure tests set: every failure must be reported before it.
const HANDSHAKE: Duration = Duration::from_secs(2);
const ALL: [Compression; 3] = [Compression::None, Compression::Flate, Compression::Snappy];

fn compressions() -> impl Iterator<Item = Compression> {
    ALL.into_iter().filter(|c| c.is_available())
}

// ----- certificates ----------------------------------------------------------------------------

/// PEM files, written once per test run into a directory of their own (under `target/`).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}

fn new_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `name` signed by `ca`, valid now unless `expired`: (cert PEM, key PEM).
fn leaf(ca: &rcgen::Issuer<'_, rcgen::KeyPair>, name: &str, expired: bool) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The test PKI: a CA; for `localhost` a good, an expired certificate, and one for another
/// name, all signed by it; a client certificate it signed; and a second, unrelated CA with a
/// client certificate of its own.
fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Cargo's scratch directory for integration tests, inside `target/`.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tls-pki-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        let ca = new_ca("batchrpc test CA");
        let other = new_ca("an unrelated CA");
        write("ca.pem", &ca.pem());
        write("other-ca.pem", &other.pem());
        for (name, cn, issuer, expired) in [
            ("server", "localhost", &ca, false),
            ("expired", "localhost", &ca, true),
            ("wrong-name", "other.example", &ca, false),
            ("client", "client.localhost", &ca, false),
            ("other-client", "client.localhost", &other, false),
        ] {
            let (cert, key) = leaf(issuer, cn, expired);
            write(&format!("{name}.pem"), &cert);
            write(&format!("{name}-key.pem"), &key);
        }
        Pki { dir }
    })
}

/// A server config from the PEM files `<cert>.pem` and `<cert>-key.pem`; with `client_ca`,
/// mutual TLS against that CA file.
fn server_tls(cert: &str, client_ca: Option<&str>) -> Arc<rustls::ServerConfig> {
    let pki = pki();
    let ca = client_ca.map(|name| pki.path(name));
    batchrpc::tls::server_config_from_pem(
        &pki.path(&format!("{cert}.pem")),
        &pki.path(&format!("{cert}-key.pem")),
        ca.as_deref(),
    )
    .unwrap()
}

/// A client config trusting the CA file `ca`, with the identity `<client>.pem` if given.
fn client_tls(ca: &str, client: Option<&str>) -> Arc<rustls::ClientConfig> {
    let pki = pki();
    let (chain, key) = match client {
        Some(c) => (
            pki.path(&format!("{c}.pem")),
            pki.path(&format!("{c}-key.pem")),
        ),
        None => (PathBuf::new(), PathBuf::new()),
    };
    let identity = client.map(|_| (chain.as_path(), key.as_path()));
    batchrpc::tls::client_config_from_pem(&pki.path(ca), identity).unwrap()
}

// ----- servers and clients -----------------------------------------------------------------

/// An echo server that answers `whoami` with the subject certificate's length (0 without one).
fn server_builder(compression: Compression) -> ServerBuilder {
    Server::builder()
        .workers(2)
        .compression(compression)
        .handshake_timeout(HANDSHAKE)
        .handler(|ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
            if req == b"whoami" {
                let len = ctx.peer_certificates().map_or(0, |c| c[0].len());
                resp.extend_from_slice(len.to_string().as_bytes());
            } else {
                resp.extend_from_slice(req);
            }
            Ok(())
        })
}

fn tls_server(compression: Compression, config: Arc<rustls::ServerConfig>) -> Server {
    server_builder(compression)
        .tls(config)
        .bind("127.0.0.1:0")
        .unwrap()
}

fn client_builder(server: &Server, compression: Compression) -> ClientBuilder {
    Client::builder(server.local_addr())
        .compression(compression)
        .handshake_timeout(HANDSHAKE)
}

fn tls_client(server: &Server, compression: Compression) -> Client {
    client_builder(server, compression)
        .tls(client_tls("ca.pem", None), "localhost")
        .connect()
        .expect("TLS client connects")
}

/// A client calling `server` in a loop on its own thread until dropped: the good neighbour
/// that each failure must leave alone.
struct Neighbour {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<(), Error>>>,
}

impl Neighbour {
    fn start(client: Client) -> Neighbour {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let (stop2, calls2) = (stop.clone(), calls.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let req = n.to_le_bytes();
                let resp = client.call_timeout(&req, Duration::from_secs(5))?;
                assert_eq!(&*resp, &req);
                calls2.fetch_add(1, Ordering::Relaxed);
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        });
        let neighbour = Neighbour {
            stop,
            calls,
            thread: Some(thread),
        };
        neighbour.wait_for_calls(1);
        neighbour
    }

    fn wait_for_calls(&self, more: u64) {
        let target = self.calls.load(Ordering::Relaxed) + more;
        wait_until(WAIT, "the neighbour's calls", || {
            self.calls.load(Ordering::Relaxed) >= target
        });
    }

    /// Checks that the neighbour is still being served, then stops it.
    fn finish(mut self) {
        self.wait_for_calls(3);
        self.stop.store(true, Ordering::Relaxed);
        let outcome = self.thread.take().unwrap().join().unwrap();
        outcome.expect("the neighbour's calls all succeed");
    }
}

/// `err` is `Protocol(Tls(e))` with `e.kind() == kind`; returns `e`.
fn tls_error(err: &Error, kind: TlsErrorKind) -> TlsError {
    match err {
        Error::Protocol(ProtocolError::Tls(e)) if e.kind() == kind => e.clone(),
        other => panic!("expected a TLS error of kind {kind:?}, got {other:?} ({other})"),
    }
}

/// Connects with `builder`, expecting a failure within the handshake timeout.
fn connect_fails(builder: ClientBuilder) -> Error {
    let started = Instant::now();
    let err = builder.connect().expect_err("the connection must fail");
    let took = started.elapsed();
    assert!(
        took < HANDSHAKE,
        "failed after {took:?}, not within {HANDSHAKE:?}: {err}"
    );
    err
}

/// Waits until the server has counted `n` failed handshakes (accept errors and protocol
/// errors both). At least `n`: a refused client may redial once more in the moment between
/// `connect()` learning the failure and the client being dropped, and fail the same way.
fn wait_server_failures(server: &Server, n: u64) {
    wait_until(WAIT, "the server to count the failed handshakes", || {
        let s = server.stats();
        s.accept_errors >= n && s.errors.protocol >= n
    });
}

// ----- success ---------------------------------------------------------------------------------

#[test]
fn calls_over_tls_in_every_compression_pair() {
    run(|| {
        let big = random_bytes(7, 300_000);
        for sc in compressions() {
            let server = tls_server(sc, server_tls("server", None));
            for cc in compressions() {
                let client = client_builder(&server, cc)
                    .tls(client_tls("ca.pem", None), "localhost")
                    .conns(2)
                    .connect()
                    .unwrap();
                assert_eq!(&*client.call(b"foobar").unwrap(), b"foobar");
                assert_eq!(&*client.call(&big).unwrap(), &big[..], "{cc} -> {sc}");
                assert_eq!(
                    &*client.call(b"whoami").unwrap(),
                    b"0",
                    "no client certificate"
                );
                client.send(b"fire and forget").unwrap();
                // Many calls in flight, from several threads: batches inside TLS records.
                std::thread::scope(|s| {
                    for t in 0..4u64 {
                        let client = &client;
                        s.spawn(move || {
                            let pending: Vec<_> = (0..250u64)
                                .map(|i| {
                                    let req = (t * 1000 + i).to_le_bytes();
                                    (req, client.call_async(&req).unwrap())
                                })
                                .collect();
                            for (req, p) in pending {
                                assert_eq!(&*p.wait().unwrap(), &req);
                            }
                        });
                    }
                });
                let cs = client.stats();
                assert_eq!(cs.errors, Default::default(), "{cc} -> {sc}");
                assert!(
                    cs.frames_per_write() > 1.0,
                    "batched: {}",
                    cs.frames_per_write()
                );
            }
            let ss = server.stats();
            assert_eq!((ss.accept_errors, ss.errors.protocol), (0, 0), "{sc}");
        }
    });
}

#[test]
fn a_tls_only_server_refuses_plaintext_clients_on_both_sides() {
    run(|| {
        for c in compressions() {
            let server = tls_server(c, server_tls("server", None));
            let neighbour = Neighbour::start(tls_client(&server, c));
            let err = connect_fails(client_builder(&server, c));
            assert!(
                matches!(
                    err,
                    Error::Protocol(ProtocolError::Handshake(HandshakeError::TlsRequired))
                ),
                "{err:?}"
            );
            assert!(chain(&err).contains("requires TLS"), "{err:?}");
            wait_server_failures(&server, 1);
            neighbour.finish();
        }
    });
}

#[test]
fn an_optional_tls_server_serves_tls_and_plaintext_clients() {
    run(|| {
        for c in compressions() {
            let server = server_builder(c)
                .tls(server_tls("server", None))
                .tls_required(false)
                .bind("127.0.0.1:0")
                .unwrap();
            let encrypted = tls_client(&server, c);
            let plain = client_builder(&server, c).connect().unwrap();
            for client in [&encrypted, &plain] {
                assert_eq!(&*client.call(b"hello").unwrap(), b"hello", "{c}");
            }
            let ss = server.stats();
            assert_eq!((ss.accept_errors, ss.errors.protocol), (0, 0));
            assert_eq!(ss.open_connections, 2);
        }
    });
}

#[test]
fn a_tls_client_against_a_plaintext_server_learns_tls_is_not_offered() {
    run(|| {
        for c in compressions() {
            let server = server_builder(c).bind("127.0.0.1:0").unwrap();
            let neighbour = Neighbour::start(client_builder(&server, c).connect().unwrap());
            let err = connect_fails(
                client_builder(&server, c).tls(client_tls("ca.pem", None), "localhost"),
            );
            assert!(
                matches!(
                    err,
                    Error::Protocol(ProtocolError::Handshake(HandshakeError::TlsNotOffered))
                ),
                "{err:?}"
            );
            wait_server_failures(&server, 1);
            neighbour.finish();
        }
    });
}

// ----- certificates the client refuses -------------------------------------------------------

/// A server presenting `cert` must be refused by a client trusting `ca` with `kind` (and a
/// message containing `text`), and the server must count the failure (it receives the
/// client's alert). The server also takes plaintext clients, so that a neighbour on the same
/// server can show it keeps working: no TLS client could, with that certificate.
fn client_refuses_the_server_certificate(cert: &str, ca: &str, kind: TlsErrorKind, text: &str) {
    for c in compressions() {
        let server = server_builder(c)
            .tls(server_tls(cert, None))
            .tls_required(false)
            .bind("127.0.0.1:0")
            .unwrap();
        let neighbour = Neighbour::start(client_builder(&server, c).connect().unwrap());
        let err = connect_fails(client_builder(&server, c).tls(client_tls(ca, None), "localhost"));
        let e = tls_error(&err, kind);
        let text_of_all = chain(&err);
        assert!(text_of_all.contains(text), "{c}: {text_of_all}");
        assert!(!e.detail().is_empty());
        assert!(
            text_of_all.starts_with("protocol error: tls failed: "),
            "{text_of_all}"
        );
        assert_eq!(err.to_string(), "protocol error");
        wait_server_failures(&server, 1);
        neighbour.finish();
    }
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    run(|| {
        client_refuses_the_server_certificate(
            "wrong-name",
            "ca.pem",
            TlsErrorKind::NotValidForName,
            "not valid for",
        )
    });
}

#[test]
fn a_certificate_from_an_unknown_ca_is_refused() {
    run(|| {
        client_refuses_the_server_certificate(
            "server",
            "other-ca.pem",
            TlsErrorKind::UnknownIssuer,
            "unknown issuer",
        )
    });
}

#[test]
fn an_expired_certificate_is_refused() {
    run(|| {
        client_refuses_the_server_certificate("expired", "ca.pem", TlsErrorKind::Expired, "expired")
    });
}

/// The failing handshakes above must not disturb other connections of the same server: here
/// the neighbour and the refused clients share one server.
#[test]
fn refused_clients_leave_the_servers_other_connections_alone() {
    run(|| {
        for c in compressions() {
            let server = tls_server(c, server_tls("server", None));
            let neighbour = Neighbour::start(tls_client(&server, c));
            let refused = [
                client_builder(&server, c).tls(client_tls("other-ca.pem", None), "localhost"),
                client_builder(&server, c).tls(client_tls("ca.pem", None), "elsewhere.example"),
                client_builder(&server, c),
            ];
            for (i, builder) in refused.into_iter().enumerate() {
                let err = connect_fails(builder);
                assert!(matches!(err, Error::Protocol(_)), "{err:?}");
                wait_server_failures(&server, i as u64 + 1);
                neighbour.wait_for_calls(2);
            }
            wait_until(WAIT, "only the neighbour's connection open", || {
                server.stats().open_connections == 1
            });
            neighbour.finish();
        }
    });
}

// ----- mutual TLS ------------------------------------------------------------------------------

#[test]
fn mutual_tls_accepts_the_right_client_certificate_and_shows_it_to_handlers() {
    run(|| {
        for c in compressions() {
            let server = tls_server(c, server_tls("server", Some("ca.pem")));
            let seen = Arc::new(std::sync::Mutex::new(None));
            let seen2 = seen.clone();
            let client = client_builder(&server, c)
                .tls(client_tls("ca.pem", Some("client")), "localhost")
                .on_connect(move |info| {
                    let certs = info.peer_certificates().ok_or("no server certificate")?;
                    *seen2.lock().unwrap() = Some(certs[0].len());
                    Ok(())
                })
                .connect()
                .unwrap();
            assert_eq!(&*client.call(b"ping").unwrap(), b"ping");
            let client_cert = pem_der_len(&pki().read("client.pem"));
            let whoami = client.call(b"whoami").unwrap();
            assert_eq!(&*whoami, client_cert.to_string().as_bytes(), "{c}");
            let server_cert = pem_der_len(&pki().read("server.pem"));
            assert_eq!(*seen.lock().unwrap(), Some(server_cert));
        }
    });
}

/// The DER length of the first certificate in `pem`.
fn pem_der_len(pem: &[u8]) -> usize {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .next()
        .unwrap()
        .unwrap()
        .len()
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate_and_the_client_learns_at_connect() {
    run(|| {
        for c in compressions() {
            let server = tls_server(c, server_tls("server", Some("ca.pem")));
            let neighbour = Neighbour::start(
                client_builder(&server, c)
                    .tls(client_tls("ca.pem", Some("client")), "localhost")
                    .connect()
                    .unwrap(),
            );
            let err = connect_fails(
                client_builder(&server, c).tls(client_tls("ca.pem", None), "localhost"),
            );
            let e = tls_error(&err, TlsErrorKind::Refused);
            assert!(e.detail().contains("CertificateRequired"), "{e}");
            wait_server_failures(&server, 1);
            neighbour.finish();
        }
    });
}

#[test]
fn mutual_tls_refuses_a_client_certificate_from_another_ca() {
    run(|| {
        for c in compressions() {
            let server = tls_server(c, server_tls("server", Some("ca.pem")));
            let neighbour = Neighbour::start(
                client_builder(&server, c)
                    .tls(client_tls("ca.pem", Some("client")), "localhost")
                    .connect()
                    .unwrap(),
            );
            let err = connect_fails(
                client_builder(&server, c)
                    .tls(client_tls("ca.pem", Some("other-client")), "localhost"),
            );
            let e = tls_error(&err, TlsErrorKind::Refused);
            assert!(e.detail().contains("UnknownCA"), "{e}");
            wait_server_failures(&server, 1);
            neighbour.finish();
        }
    });
}

// ----- timeouts and odd peers ------------------------------------------------------------------

#[test]
fn a_peer_that_stalls_in_the_tls_handshake_times_out_on_both_ends() {
    run(|| {
        // Server side: a peer that asks for TLS in its hello, then says nothing.
        let timeout = Duration::from_millis(300);
        let server = server_builder(Compression::None)
            .tls(server_tls("server", None))
            .handshake_timeout(timeout)
            .bind("127.0.0.1:0")
            .unwrap();
        let mut raw = TcpStream::connect(server.local_addr().as_tcp().unwrap()).unwrap();
        raw.write_all(b"BRPC\x01\x00\x01\x00\x00\x00\x04").unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut answer = [0u8; 11];
        raw.read_exact(&mut answer).unwrap();
        assert_eq!(
            &answer, b"BRPC\x01\x00\x01\x00\x00\x00\x04",
            "the server agrees to TLS"
        );
        let started = Instant::now();
        let mut rest = [0u8; 16];
        assert!(matches!(raw.read(&mut rest), Ok(0) | Err(_)), "then closes");
        assert!(started.elapsed() < timeout + Duration::from_secs(1));
        wait_server_failures(&server, 1);

        // Client side: a server that agrees to TLS and then never answers the ClientHello.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut hello = [0u8; 11];
            s.read_exact(&mut hello).unwrap();
            s.write_all(b"BRPC\x01\x00\x01\x00\x00\x00\x04").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut sink = [0u8; 4096];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        });
        let started = Instant::now();
        let err = Client::builder(addr)
            .handshake_timeout(timeout)
            .tls(client_tls("ca.pem", None), "localhost")
            .connect()
            .expect_err("the TLS handshake never completes");
        let took = started.elapsed();
        assert!(
            took >= timeout && took < timeout + Duration::from_secs(1),
            "{took:?}"
        );
        assert!(
            matches!(
                err,
                Error::Protocol(ProtocolError::Handshake(HandshakeError::Timeout))
            ),
            "{err:?}"
        );
        fake.join().unwrap();
    });
}

#[test]
fn tls_runs_on_a_reactor_driven_by_hand() {
    run(|| {
        let mut reactor = batchrpc::Reactor::new().unwrap();
        let server = server_builder(Compression::Snappy)
            .workers(0)
            .tls(server_tls("server", Some("ca.pem")))
            .bind_on(&mut reactor, "127.0.0.1:0")
            .unwrap();
        let client = Client::builder(server.local_addr())
            .compression(Compression::Snappy)
            .tls(client_tls("ca.pem", Some("client")), "localhost")
            .connect_on(&mut reactor)
            .unwrap();
        let pending: Vec<_> = (0..100u32)
            .map(|i| client.call_async(&i.to_le_bytes()).unwrap())
            .collect();
        let deadline = Instant::now() + WAIT;
        while !pending.iter().all(|p| p.is_done()) {
            assert!(Instant::now() < deadline, "calls did not complete");
            reactor.poll_once(Some(Duration::from_millis(10))).unwrap();
        }
        for (i, p) in pending.into_iter().enumerate() {
            assert_eq!(&*p.wait().unwrap(), &(i as u32).to_le_bytes());
        }
    });
}

// ----- configuration ---------------------------------------------------------------------------

#[test]
fn an_invalid_server_name_is_a_configuration_error() {
    run(|| {
        let server = tls_server(Compression::None, server_tls("server", None));
        let err = client_builder(&server, Compression::None)
            .tls(client_tls("ca.pem", None), "not a name!")
            .connect()
            .expect_err("invalid name");
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert!(err.to_string().contains("not a name!"), "{err}");
    });
}

#[test]
fn pem_helpers_take_files_or_bytes_and_say_what_is_wrong() {
    let pki = pki();
    let p = |name: &str| pki.path(name);
    // Bytes and files give working configs alike.
    let server = batchrpc::tls::server_config_from_pem_bytes(
        &pki.read("server.pem"),
        &pki.read("server-key.pem"),
        Some(&pki.read("ca.pem")),
    )
    .unwrap();
    let client = batchrpc::tls::client_config_from_pem_bytes(
        &pki.read("ca.pem"),
        Some((&pki.read("client.pem"), &pki.read("client-key.pem"))),
    )
    .unwrap();
    run(move || {
        let server = tls_server(Compression::None, server);
        let client = Client::builder(server.local_addr())
            .tls(client, "localhost")
            .connect()
            .unwrap();
        assert_eq!(&*client.call(b"bytes").unwrap(), b"bytes");
    });

    let config_err = |r: Result<(), Error>, want: &str| match r {
        Err(Error::Config(text)) => assert!(text.contains(want), "{text:?} lacks {want:?}"),
        other => panic!("expected a Config error, got {other:?}"),
    };
    let missing = p("no-such-file.pem");
    config_err(
        batchrpc::tls::server_config_from_pem(&missing, &p("server-key.pem"), None).map(drop),
        "no-such-file.pem",
    );
    config_err(
        batchrpc::tls::client_config_from_pem(&missing, None).map(drop),
        "cannot read",
    );
    // A key where the certificates should be, and the reverse.
    config_err(
        batchrpc::tls::server_config_from_pem(&p("server-key.pem"), &p("server-key.pem"), None)
            .map(drop),
        "no certificate found",
    );
    config_err(
        batchrpc::tls::server_config_from_pem(&p("server.pem"), &p("server.pem"), None).map(drop),
        "no private key found",
    );
    // A key that does not match the certificate.
    config_err(
        batchrpc::tls::server_config_from_pem(&p("server.pem"), &p("client-key.pem"), None)
            .map(drop),
        "server certificate and key",
    );
    config_err(
        batchrpc::tls::client_config_from_pem_bytes(b"garbage", None).map(drop),
        "the CA certificates",
    );
}
