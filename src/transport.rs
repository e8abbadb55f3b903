//! Byte streams the reactor can poll: TCP (the default), Unix sockets, and custom sources.
//!
//! A custom transport is any [`mio::event::Source`] that reads and writes without blocking
//! ([`CustomStream`]), with a dialer on the client ([`crate::ClientBuilder::dialer`]) and a
//! [`CustomListener`] on the server ([`crate::ServerBuilder::listener`]). That is the seam for
//! in-process pipes, tunnels, or a handshake of your own.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use mio::event::Source;
use mio::{Interest, Registry, Token};

/// Where a server listens or a client connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix domain socket path.
    Unix(PathBuf),
    /// A custom transport, described by its name (dialed through the client's dialer).
    Custom(String),
}

impl Address {
    /// The TCP address, if this is one.
    pub fn as_tcp(&self) -> Option<SocketAddr> {
        match self {
            Address::Tcp(a) => Some(*a),
            _ => None,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => a.fmt(f),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Custom(name) => write!(f, "custom:{name}"),
        }
    }
}

/// Things that name an [`Address`]: `"host:port"`, `"unix:/path"`, a [`SocketAddr`], a
/// [`Path`], or an `Address`.
pub trait ToAddress {
    /// Resolves to an address (a host name resolves to its first address).
    fn to_address(&self) -> io::Result<Address>;
}

impl ToAddress for Address {
    fn to_address(&self) -> io::Result<Address> {
        Ok(self.clone())
    }
}

impl ToAddress for SocketAddr {
    fn to_address(&self) -> io::Result<Address> {
        Ok(Address::Tcp(*self))
    }
}

impl ToAddress for str {
    fn to_address(&self) -> io::Result<Address> {
        if let Some(path) = self.strip_prefix("unix:") {
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        self.to_socket_addrs()?
            .next()
            .map(Address::Tcp)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{self} resolves to no address"),
                )
            })
    }
}

impl ToAddress for String {
    fn to_address(&self) -> io::Result<Address> {
        self.as_str().to_address()
    }
}

impl ToAddress for Path {
    fn to_address(&self) -> io::Result<Address> {
        Ok(Address::Unix(self.to_path_buf()))
    }
}

impl ToAddress for PathBuf {
    fn to_address(&self) -> io::Result<Address> {
        Ok(Address::Unix(self.clone()))
    }
}

impl<T: ToAddress + ?Sized> ToAddress for &T {
    fn to_address(&self) -> io::Result<Address> {
        (**self).to_address()
    }
}

/// A non-blocking byte stream of a custom transport.
///
/// `read` and `write` must return [`io::ErrorKind::WouldBlock`] instead of blocking, and the
/// source must signal readiness edge-triggered, as mio's own sockets do.
pub trait CustomStream: Source + Read + Write + Send + 'static {
    /// The peer's address, for [`crate::RequestCtx`] and logs.
    fn peer_addr(&self) -> Address;
}

/// A listener of a custom transport.
pub trait CustomListener: Source + Send + 'static {
    /// Accepts one connection, or returns `WouldBlock` when none is waiting.
    fn accept(&mut self) -> io::Result<Box<dyn CustomStream>>;
    /// The address it listens on.
    fn local_addr(&self) -> Address;
}

/// A connected stream of any transport.
pub(crate) enum Stream {
    Tcp(mio::net::TcpStream),
    #[cfg(unix)]
    Unix(mio::net::UnixStream),
    Custom(Box<dyn CustomStream>),
}

impl Stream {
    /// Starts a non-blocking connect; completion shows as writability.
    pub(crate) fn dial(addr: &Address) -> io::Result<Stream> {
        match addr {
            Address::Tcp(a) => {
                let s = mio::net::TcpStream::connect(*a)?;
                Ok(Stream::Tcp(s))
            }
            #[cfg(unix)]
            Address::Unix(p) => Ok(Stream::Unix(mio::net::UnixStream::connect(p)?)),
            #[cfg(not(unix))]
            Address::Unix(_) => Err(io::Error::new(io::ErrorKind::Unsupported, "unix sockets")),
            Address::Custom(name) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("custom address {name} needs a dialer"),
            )),
        }
    }

    /// Whether a connect has completed, failed (its error), or is still under way (`Ok(false)`).
    pub(crate) fn connect_state(&self) -> io::Result<bool> {
        match self {
            Stream::Tcp(s) => {
                if let Some(e) = s.take_error()? {
                    return Err(e);
                }
                match s.peer_addr() {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                    Err(e) => Err(e),
                }
            }
            #[cfg(unix)]
            Stream::Unix(s) => {
                if let Some(e) = s.take_error()? {
                    return Err(e);
                }
                Ok(true)
            }
            Stream::Custom(_) => Ok(true),
        }
    }

    /// Sets TCP_NODELAY where it applies.
    pub(crate) fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(true),
            _ => Ok(()),
        }
    }

    pub(crate) fn peer_addr(&self) -> Address {
        match self {
            Stream::Tcp(s) => s
                .peer_addr()
                .map(Address::Tcp)
                .unwrap_or(Address::Custom("?".into())),
            #[cfg(unix)]
            Stream::Unix(s) => match s
                .peer_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf))
            {
                Some(p) => Address::Unix(p),
                None => Address::Unix(PathBuf::new()),
            },
            Stream::Custom(s) => s.peer_addr(),
        }
    }

    /// Whether a read that returned less than asked for means the socket is drained, with
    /// more data certain to raise a new readiness event (true for TCP and Unix sockets under
    /// epoll and kqueue; a custom stream promises only "read until would-block").
    pub(crate) fn edge_after_short_read(&self) -> bool {
        !matches!(self, Stream::Custom(_))
    }

    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.read(buf),
            Stream::Custom(s) => s.read(buf),
        }
    }

    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.write(buf),
            Stream::Custom(s) => s.write(buf),
        }
    }

    pub(crate) fn source(&mut self) -> &mut dyn Source {
        match self {
            Stream::Tcp(s) => s,
            #[cfg(unix)]
            Stream::Unix(s) => s,
            Stream::Custom(s) => &mut **s,
        }
    }
}

/// A listening socket of any transport.
pub(crate) enum Listener {
    Tcp(mio::net::TcpListener),
    #[cfg(unix)]
    Unix(mio::net::UnixListener, PathBuf),
    Custom(Box<dyn CustomListener>),
}

impl Listener {
    pub(crate) fn bind(addr: &Address) -> io::Result<Listener> {
        match addr {
            Address::Tcp(a) => Ok(Listener::Tcp(mio::net::TcpListener::bind(*a)?)),
            #[cfg(unix)]
            Address::Unix(p) => Ok(Listener::Unix(mio::net::UnixListener::bind(p)?, p.clone())),
            #[cfg(not(unix))]
            Address::Unix(_) => Err(io::Error::new(io::ErrorKind::Unsupported, "unix sockets")),
            Address::Custom(name) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("custom address {name} needs a listener"),
            )),
        }
    }

    pub(crate) fn local_addr(&self) -> Address {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(Address::Tcp)
                .unwrap_or(Address::Custom("?".into())),
            #[cfg(unix)]
            Listener::Unix(_, p) => Address::Unix(p.clone()),
            Listener::Custom(l) => l.local_addr(),
        }
    }

    pub(crate) fn accept(&mut self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            #[cfg(unix)]
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Custom(l) => l.accept().map(Stream::Custom),
        }
    }

    pub(crate) fn source(&mut self) -> &mut dyn Source {
        match self {
            Listener::Tcp(l) => l,
            #[cfg(unix)]
            Listener::Unix(l, _) => l,
            Listener::Custom(l) => &mut **l,
        }
    }

    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(self.source(), token, Interest::READABLE)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}
