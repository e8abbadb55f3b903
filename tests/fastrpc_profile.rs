//! The fastrpc profile end to end over loopback TCP: batchrpc's `fastrpc::Client` against its
//! `fastrpc::Server` in every compression pair, with and without TLS; the per-call limits,
//! errors as values, timeouts with late answers, no-response calls, and handshake mismatches.
//! (`tests/fastrpc_interop.rs` checks both against the bytes of Go's implementation.)

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use batchrpc::fastrpc::{self, MAX_FIELD_LEN};
use batchrpc::wire::ProtocolError;
use batchrpc::{Compression, Error, RequestCtx};
use support::{run, wait_until};

const WAIT: Duration = Duration::from_secs(10);
const ALL: [Compression; 3] = [Compression::None, Compression::Flate, Compression::Snappy];

fn compressions() -> impl Iterator<Item = Compression> {
    ALL.into_iter().filter(|c| c.is_available())
}

/// The handler of Go's captured vectors: `re:<name>=<value>`; a few names do something else.
fn answer(
    _ctx: &RequestCtx,
    name: &[u8],
    value: &[u8],
    resp: &mut Vec<u8>,
) -> Result<(), batchrpc::HandlerError> {
    match name {
        b"fail" => return Err("refused by the handler".into()),
        b"huge" => resp.resize(MAX_FIELD_LEN as usize + 1, b'h'),
        b"slow" => std::thread::sleep(Duration::from_millis(300)),
        _ => {}
    }
    if resp.is_empty() {
        resp.extend_from_slice(b"re:");
        resp.extend_from_slice(name);
        resp.push(b'=');
        resp.extend_from_slice(value);
    }
    Ok(())
}

fn server(compression: Compression) -> fastrpc::Server {
    fastrpc::Server::builder()
        .workers(2)
        .compression(compression)
        .handler(answer)
        .bind("127.0.0.1:0")
        .unwrap()
}

fn client(server: &fastrpc::Server, compression: Compression) -> fastrpc::Client {
    fastrpc::Client::builder(server.local_addr())
        .compression(compression)
        .connect()
        .unwrap()
}

/// Calls of every shape on `client`, checked.
fn exercise(client: &fastrpc::Client, label: &str) {
    assert_eq!(
        &*client.call(b"foo", b"bar").unwrap(),
        b"re:foo=bar",
        "{label}"
    );
    assert_eq!(&*client.call(b"", b"").unwrap(), b"re:=", "{label}");
    let pending: Vec<_> = (0..200)
        .map(|i| client.call_async(b"c", i.to_string().as_bytes()).unwrap())
        .collect();
    for (i, p) in pending.into_iter().enumerate() {
        assert_eq!(
            *p.wait().unwrap(),
            *format!("re:c={i}").as_bytes(),
            "{label}"
        );
    }
    // The largest value a call may carry; its answer is 5 bytes larger, so it is refused.
    let max = vec![7u8; MAX_FIELD_LEN as usize];
    let answer = client
        .call(b"m", &max[..MAX_FIELD_LEN as usize - 5])
        .unwrap();
    assert_eq!(answer.len(), MAX_FIELD_LEN as usize, "{label}");
    client.send(b"n", b"w").unwrap();
    assert_eq!(client.stats().errors.failed_calls(), 0, "{label}");
}

#[test]
fn every_compression_pair_talks() {
    run(|| {
        for sc in compressions() {
            let server = server(sc);
            for cc in compressions() {
                let client = client(&server, cc);
                exercise(&client, &format!("client {cc}, server {sc}"));
                assert_eq!(client.stats().errors.stale_responses, 0);
            }
        }
    });
}

#[test]
fn a_name_or_value_above_the_limit_fails_that_call_alone() {
    run(|| {
        let server = server(Compression::None);
        let client = client(&server, Compression::None);
        let big = vec![0u8; MAX_FIELD_LEN as usize + 1];
        for (name, value) in [(&big[..], &b"v"[..]), (b"n", &big[..])] {
            match client.call(name, value) {
                Err(Error::TooLarge { len, max }) => {
                    assert_eq!((len, max), (big.len(), MAX_FIELD_LEN));
                }
                other => panic!("expected TooLarge, got {other:?}"),
            }
        }
        assert!(matches!(
            client.send(&big, b""),
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(client.stats().errors.too_large, 3);
        assert_eq!(&*client.call(b"after", b"").unwrap(), b"re:after=");
        assert_eq!(client.stats().dials, 1, "the connection stayed up");
    });
}

#[test]
fn errors_are_answered_as_values() {
    run(|| {
        let server = server(Compression::None);
        let client = client(&server, Compression::None);
        assert_eq!(
            &*client.call(b"fail", b"").unwrap(),
            b"refused by the handler"
        );
        let huge = client.call(b"huge", b"").unwrap();
        assert_eq!(
            String::from_utf8_lossy(&huge),
            format!(
                "response of {} bytes exceeds the frame limit of {MAX_FIELD_LEN}",
                MAX_FIELD_LEN + 1
            )
        );
        wait_until(WAIT, "the server to count both", || {
            server.stats().errors.server == 2
        });
        assert_eq!(client.stats().errors.failed_calls(), 0);
    });
}

#[test]
fn a_timed_out_call_keeps_its_id_until_the_late_answer_is_dropped() {
    run(|| {
        let server = server(Compression::None);
        let client = client(&server, Compression::None);
        let late = client.call_timeout(b"slow", b"", Duration::from_millis(50));
        assert!(matches!(late, Err(Error::Timeout)), "{late:?}");
        assert_eq!(client.pending_requests(), 1, "the id stays taken");
        assert_eq!(&*client.call(b"quick", b"").unwrap(), b"re:quick=");
        wait_until(WAIT, "the late answer", || {
            client.stats().errors.stale_responses == 1
        });
        assert_eq!(client.pending_requests(), 0);
        assert_eq!(client.stats().dials, 1);
    });
}

#[test]
fn sends_reach_the_handler_and_get_no_answer() {
    run(|| {
        let seen = Arc::new(AtomicU64::new(0));
        let counter = seen.clone();
        let server = fastrpc::Server::builder()
            .handler(
                move |_: &RequestCtx, name: &[u8], _: &[u8], resp: &mut Vec<u8>| {
                    if name == b"count" {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    resp.extend_from_slice(b"ignored");
                    Ok(())
                },
            )
            .bind("127.0.0.1:0")
            .unwrap();
        let client = client(&server, Compression::None);
        for _ in 0..100 {
            client.send(b"count", b"").unwrap();
        }
        wait_until(WAIT, "100 sends handled", || {
            seen.load(Ordering::Relaxed) == 100
        });
        // A call after them proves every answer the server wrote has been read.
        assert_eq!(&*client.call(b"x", b"").unwrap(), b"ignored");
        // (The reactor counts frames after it has completed their calls.)
        wait_until(WAIT, "the call's answer counted", || {
            client.stats().frames_read >= 1
        });
        let stats = client.stats();
        assert_eq!(
            (stats.errors.stale_responses, stats.frames_read),
            (0, 1),
            "no answer to a send"
        );
    });
}

#[test]
fn mismatched_sniff_or_version_fails_connect() {
    run(|| {
        let server = fastrpc::Server::builder()
            .sniff_header(b"abc")
            .protocol_version(7)
            .handler(answer)
            .bind("127.0.0.1:0")
            .unwrap();
        let good = fastrpc::Client::builder(server.local_addr())
            .sniff_header(b"abc")
            .protocol_version(7)
            .connect()
            .unwrap();
        assert_eq!(&*good.call(b"a", b"b").unwrap(), b"re:a=b");
        for (sniff, version) in [(&b"abd"[..], 7), (b"abc", 6), (b"", 7)] {
            let refused = fastrpc::Client::builder(server.local_addr())
                .sniff_header(sniff)
                .protocol_version(version)
                .handshake_timeout(Duration::from_secs(2))
                .connect();
            // The server reads the whole handshake block, finds the mismatch and closes
            // without answering: the client says that the handshake was refused, not that a
            // frame was cut.
            match refused {
                Err(Error::Protocol(ProtocolError::HandshakeClosed)) => {}
                other => panic!("{sniff:?} {version}: {other:?}"),
            }
        }
        wait_until(WAIT, "three refusals counted", || {
            server.stats().errors.protocol == 3
        });
    });
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use batchrpc::wire::handshake::HandshakeError;

    /// A server configuration for `localhost` and a client configuration trusting it.
    fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let server = batchrpc::tls::server_config_from_pem_bytes(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            None,
        )
        .unwrap();
        let client =
            batchrpc::tls::client_config_from_pem_bytes(cert.pem().as_bytes(), None).unwrap();
        (server, client)
    }

    #[test]
    fn every_compression_pair_talks_over_tls_and_plaintext_clients_are_served_too() {
        run(|| {
            let (server_config, client_config) = configs();
            for sc in compressions() {
                let server = fastrpc::Server::builder()
                    .workers(2)
                    .compression(sc)
                    .tls(server_config.clone())
                    .handler(answer)
                    .bind("127.0.0.1:0")
                    .unwrap();
                for cc in compressions() {
                    let client = fastrpc::Client::builder(server.local_addr())
                        .compression(cc)
                        .tls(client_config.clone(), "localhost")
                        .connect()
                        .unwrap();
                    exercise(&client, &format!("tls, client {cc}, server {sc}"));
                }
                // As with Go's TLSConfig, a plaintext client is still served.
                let plain = client(&server, Compression::None);
                assert_eq!(&*plain.call(b"p", b"q").unwrap(), b"re:p=q");
            }
        });
    }

    #[test]
    fn tls_refusals_reach_connect() {
        run(|| {
            let (server_config, client_config) = configs();
            // A server without TLS answers tls = 0 and closes.
            let plain_server = server(Compression::None);
            let refused = fastrpc::Client::builder(plain_server.local_addr())
                .tls(client_config, "localhost")
                .connect();
            match refused {
                Err(Error::Protocol(ProtocolError::Handshake(HandshakeError::TlsNotOffered))) => {}
                other => panic!("expected TlsNotOffered, got {other:?}"),
            }
            // Stricter than Go when asked to: plaintext clients refused.
            let strict = fastrpc::Server::builder()
                .tls(server_config)
                .tls_required(true)
                .handler(answer)
                .bind("127.0.0.1:0")
                .unwrap();
            let refused = fastrpc::Client::builder(strict.local_addr()).connect();
            match refused {
                Err(Error::Protocol(ProtocolError::Handshake(HandshakeError::TlsRequired))) => {}
                other => panic!("expected TlsRequired, got {other:?}"),
            }
        });
    }
}
