//! The PEM helpers in a process where no rustls crypto provider was installed: a clear
//! configuration error, not a panic. (A test binary of its own: the provider is process-wide.)

#![cfg(feature = "tls")]

use batchrpc::Error;

#[test]
fn without_a_crypto_provider_the_helpers_say_how_to_install_one() {
    assert!(rustls::crypto::CryptoProvider::get_default().is_none());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let outcomes = [
        batchrpc::tls::server_config_from_pem_bytes(cert_pem.as_bytes(), key_pem.as_bytes(), None)
            .map(drop),
        batchrpc::tls::client_config_from_pem_bytes(cert_pem.as_bytes(), None).map(drop),
    ];
    for outcome in outcomes {
        match outcome {
            Err(Error::Config(text)) => {
                assert!(
                    text.contains("no rustls CryptoProvider installed"),
                    "{text}"
                );
                assert!(text.contains("install_default()"), "{text}");
            }
            other => panic!("expected a Config error, got {other:?}"),
        }
    }
}
