//! TLS configuration helpers (cargo feature `tls`).
//!
//! batchrpc takes rustls configurations as they are ([`crate::ServerBuilder::tls`],
//! [`crate::ClientBuilder::tls`]); the functions here build the common ones from PEM: a
//! certificate chain and its private key for a server, the CA certificates a client trusts,
//! and for mutual TLS the CA a server verifies client certificates against and the client's
//! own certificate and key.
//!
//! # Crypto provider
//! The library enables no rustls crypto provider: the application chooses one (ring builds
//! with a C compiler alone; aws-lc-rs needs cmake) and installs it as the process default
//! before building configurations, for example with rustls's `ring` feature:
//!
//! ```no_run
//! # fn main() -> Result<(), batchrpc::Error> {
//! use std::path::Path;
//! use batchrpc::{Client, Server};
//!
//! let _ = rustls::crypto::ring::default_provider().install_default();
//!
//! let server_tls = batchrpc::tls::server_config_from_pem(
//!     Path::new("server-chain.pem"),
//!     Path::new("server-key.pem"),
//!     None, // or Some(Path::new("client-ca.pem")) for mutual TLS
//! )?;
//! let server = Server::builder()
//!     .tls(server_tls)
//!     .handler(|_: &batchrpc::RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
//!         resp.extend_from_slice(req);
//!         Ok(())
//!     })
//!     .bind("127.0.0.1:0")?;
//!
//! let client_tls = batchrpc::tls::client_config_from_pem(Path::new("ca.pem"), None)?;
//! let client = Client::builder(server.local_addr())
//!     .tls(client_tls, "localhost")
//!     .connect()?;
//! assert_eq!(&*client.call(b"over TLS")?, b"over TLS");
//! # Ok(()) }
//! ```
//!
//! Without a process default these functions fail with [`Error::Config`] saying so, rather
//! than panic. To use a provider without installing it, build the rustls configuration
//! yourself (`ServerConfig::builder_with_provider`).
//!
//! # Compression and TLS
//! Compressing secrets together with data an attacker controls in one TLS stream leaks the
//! secrets through the compressed length (the CRIME and BREACH attacks). Turn compression off
//! on connections that carry both.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use crate::wire::tls::{TlsError, TlsErrorKind};

/// The rustls crate this build uses, so that configurations built by hand are of the same
/// version as the one the builders take.
pub use rustls;

use crate::{Error, Result};

/// A server configuration from PEM files: `cert_chain` (the server's certificate first, then
/// any intermediates), its private `key` (PKCS#8, PKCS#1 or SEC1), and optionally a
/// `client_ca`: then the server requires mutual TLS, every client must present a certificate
/// signed by one of the CA certificates in that file.
///
/// Fails with [`Error::Config`] naming the file and the problem, or saying that no rustls
/// crypto provider is installed (see the [module docs](self)).
pub fn server_config_from_pem(
    cert_chain: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>> {
    let client_ca = match client_ca {
        Some(path) => Some(roots(&read(path)?, &path.display().to_string())?),
        None => None,
    };
    server_config(
        certificates(&read(cert_chain)?, &cert_chain.display().to_string())?,
        private_key(&read(key)?, &key.display().to_string())?,
        client_ca,
    )
}

/// [`server_config_from_pem`] with the PEM text in memory.
pub fn server_config_from_pem_bytes(
    cert_chain: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> Result<Arc<ServerConfig>> {
    server_config(
        certificates(cert_chain, "the server certificate chain")?,
        private_key(key, "the server private key")?,
        client_ca
            .map(|pem| roots(pem, "the client CA certificates"))
            .transpose()?,
    )
}

/// A client configuration from PEM files: `ca` holds the CA certificates the client trusts
/// to sign the server's certificate; `client_identity`, for servers that require mutual TLS,
/// is the client's certificate chain file and private key file.
///
/// Fails with [`Error::Config`] naming the file and the problem, or saying that no rustls
/// crypto provider is installed (see the [module docs](self)).
pub fn client_config_from_pem(
    ca: &Path,
    client_identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>> {
    let trusted = roots(&read(ca)?, &ca.display().to_string())?;
    let identity = match client_identity {
        Some((chain, key)) => Some((
            certificates(&read(chain)?, &chain.display().to_string())?,
            private_key(&read(key)?, &key.display().to_string())?,
        )),
        None => None,
    };
    client_config(trusted, identity)
}

/// [`client_config_from_pem`] with the PEM text in memory.
pub fn client_config_from_pem_bytes(
    ca: &[u8],
    client_identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>> {
    let trusted = roots(ca, "the CA certificates")?;
    let identity = match client_identity {
        Some((chain, key)) => Some((
            certificates(chain, "the client certificate chain")?,
            private_key(key, "the client private key")?,
        )),
        None => None,
    };
    client_config(trusted, identity)
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<RootCertStore>,
) -> Result<Arc<ServerConfig>> {
    let provider = provider()?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error("the crypto provider", e))?;
    let builder = match client_ca {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| config_error("the client CA certificates", e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| config_error("the server certificate and key", e))?;
    Ok(Arc::new(config))
}

fn client_config(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider()?)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error("the crypto provider", e))?
        .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| config_error("the client certificate and key", e))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The process's default crypto provider, or a configuration error that says how to set one.
fn provider() -> Result<Arc<CryptoProvider>> {
    CryptoProvider::get_default().cloned().ok_or_else(|| {
        Error::Config(
            "no rustls CryptoProvider installed: call e.g. \
             rustls::crypto::ring::default_provider().install_default()"
                .into(),
        )
    })
}

fn config_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("{what}: {e}"))
}

/// A file's bytes.
fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(what, e))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("{what}: no certificate found")));
    }
    Ok(certs)
}

fn private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            Error::Config(format!("{what}: no private key found"))
        }
        e => config_error(what, e),
    })
}

fn roots(pem: &[u8], what: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem, what)? {
        roots.add(cert).map_err(|e| config_error(what, e))?;
    }
    Ok(roots)
}
