//! TLS inside the connection state machine: why a TLS session failed.
//!
//! When both hellos agree on TLS, [`super::conn::Conn`] runs a rustls connection between the
//! socket bytes and the (possibly compressed) stream of frames, in rustls's sans-IO style:
//! records read from the socket go in through `read_tls` and `process_new_packets`, plaintext
//! comes out of `reader()`, and each flushed batch goes in through one `writer()` write and out
//! of `write_tls` as records, into the connection's output. No socket is touched here.
//!
//! ```text
//! client                                         server
//!   hello (tls = 1)           ─────────────▶
//!                             ◀─────────────     hello (tls = 1)
//!   TLS handshake records     ◀────────────▶     TLS handshake records
//!   [inside TLS] hello again  ◀────────────▶     [inside TLS] hello again
//!   frames (compressed if so announced), inside TLS, both ways
//! ```
//!
//! Each side repeats its hello as the first bytes it writes inside TLS, once its own side of the
//! TLS handshake is complete, and goes [`Open`](super::conn::State::Open) only when the peer's
//! repeated hello has arrived and matches the plaintext one. That does two things:
//! - it authenticates the plaintext hello: an active attacker who rewrote it (to strip
//!   compression or change the frame limit) is caught ([`TlsErrorKind::HelloMismatch`]);
//! - it tells the client that the server accepted it: with TLS 1.3 the client finishes its
//!   handshake before the server has checked the client's certificate, so without this a
//!   client refused by a mutual-TLS server would believe it was connected until its first call
//!   failed. With it, `connect()` itself fails with the server's refusal.
//!
//! A TLS failure ([`super::ProtocolError::Tls`]) carries a [`TlsError`]: a coarse
//! [`TlsErrorKind`] to match on, and the text of rustls's error.

use std::fmt;
use std::sync::Arc;

/// What kind of TLS failure closed a connection. See [`TlsError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsErrorKind {
    /// The peer's certificate is not valid for the name this side expected (the client's
    /// `server_name`).
    NotValidForName,
    /// The peer's certificate chain does not lead to a trusted root (unknown CA).
    UnknownIssuer,
    /// The peer's certificate has expired, or is not valid yet.
    Expired,
    /// The peer's certificate is invalid for another reason (bad encoding, signature, usage,
    /// revoked, ...).
    BadCertificate,
    /// The peer presented no certificate where one is required (a mutual-TLS server facing a
    /// client without a client certificate).
    NoCertificate,
    /// The peer refused this side: it sent a fatal alert (for example because it does not
    /// trust this side's certificate, or requires one). The message names the alert.
    Refused,
    /// The hello repeated inside TLS differs from the plaintext one: the plaintext hello was
    /// altered in transit.
    HelloMismatch,
    /// TLS was agreed but this side has no TLS configuration (the `tls` cargo feature is off,
    /// or the connection was configured by hand without one).
    NotConfigured,
    /// Any other TLS failure: a protocol violation, a record that does not decrypt, no common
    /// protocol version or cipher suite, ...
    Protocol,
}

impl TlsErrorKind {
    fn describe(self) -> &'static str {
        match self {
            TlsErrorKind::NotValidForName => {
                "the peer's certificate is not valid for the expected name"
            }
            TlsErrorKind::UnknownIssuer => {
                "the peer's certificate is not signed by a trusted CA (unknown issuer)"
            }
            TlsErrorKind::Expired => "the peer's certificate has expired or is not valid yet",
            TlsErrorKind::BadCertificate => "the peer's certificate is invalid",
            TlsErrorKind::NoCertificate => {
                "the peer presented no certificate, and one is required (mutual TLS)"
            }
            TlsErrorKind::Refused => "the peer refused the TLS session",
            TlsErrorKind::HelloMismatch => {
                "the hello repeated inside TLS differs from the plaintext one (altered in transit)"
            }
            TlsErrorKind::NotConfigured => "TLS was agreed but this side has no TLS configuration",
            TlsErrorKind::Protocol => "TLS protocol error",
        }
    }
}

/// Why a TLS session failed: a [`TlsErrorKind`] and the detail (rustls's error text).
///
/// Cheap to clone (the text is shared) and comparable, like the rest of
/// [`super::ProtocolError`].
///
/// ```
/// use batchrpc::wire::tls::{TlsError, TlsErrorKind};
/// let e = TlsError::new(TlsErrorKind::Refused, "received fatal alert: UnknownCA");
/// assert_eq!(e.kind(), TlsErrorKind::Refused);
/// assert_eq!(
///     e.to_string(),
///     "the peer refused the TLS session: received fatal alert: UnknownCA"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    kind: TlsErrorKind,
    detail: Arc<str>,
}

impl TlsError {
    /// An error of `kind` with `detail`.
    pub fn new(kind: TlsErrorKind, detail: impl Into<Arc<str>>) -> TlsError {
        TlsError {
            kind,
            detail: detail.into(),
        }
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> TlsErrorKind {
        self.kind
    }

    /// The detail: rustls's own description of the error.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            f.write_str(self.kind.describe())
        } else {
            write!(f, "{}: {}", self.kind.describe(), self.detail)
        }
    }
}

impl std::error::Error for TlsError {}

#[cfg(feature = "tls")]
impl From<&rustls::Error> for TlsError {
    fn from(e: &rustls::Error) -> TlsError {
        use rustls::{CertificateError as C, Error as E};
        let kind = match e {
            E::InvalidCertificate(c) => match c {
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    TlsErrorKind::NotValidForName
                }
                C::UnknownIssuer => TlsErrorKind::UnknownIssuer,
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => TlsErrorKind::Expired,
                _ => TlsErrorKind::BadCertificate,
            },
            E::NoCertificatesPresented => TlsErrorKind::NoCertificate,
            E::AlertReceived(_) => TlsErrorKind::Refused,
            _ => TlsErrorKind::Protocol,
        };
        TlsError::new(kind, e.to_string())
    }
}

#[cfg(feature = "tls")]
impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> TlsError {
        TlsError::from(&e)
    }
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;
    use rustls::{AlertDescription, CertificateError, Error};

    #[test]
    fn rustls_errors_map_to_kinds() {
        let cases = [
            (
                Error::InvalidCertificate(CertificateError::NotValidForName),
                TlsErrorKind::NotValidForName,
            ),
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                TlsErrorKind::UnknownIssuer,
            ),
            (
                Error::InvalidCertificate(CertificateError::Expired),
                TlsErrorKind::Expired,
            ),
            (
                Error::InvalidCertificate(CertificateError::BadSignature),
                TlsErrorKind::BadCertificate,
            ),
            (Error::NoCertificatesPresented, TlsErrorKind::NoCertificate),
            (
                Error::AlertReceived(AlertDescription::UnknownCA),
                TlsErrorKind::Refused,
            ),
            (Error::DecryptError, TlsErrorKind::Protocol),
        ];
        for (e, kind) in cases {
            let t = TlsError::from(&e);
            assert_eq!(t.kind(), kind, "{e}");
            assert_eq!(t.detail(), e.to_string());
            assert!(t.to_string().ends_with(&e.to_string()));
        }
    }
}
