//! TCP and UDP sockets on the current executor.
//!
//! INVARIANT: called from inside an executor thread only; a socket never leaves its thread.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};

/// A TCP listener on the current executor.
#[derive(Debug)]
pub struct TcpListener(glommio::net::TcpListener);

impl TcpListener {
    /// Listens on `addr` (port 0: any free port).
    ///
    /// # Errors
    /// Any error from `bind` or `listen`.
    pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
        glommio::net::TcpListener::bind(addr)
            .map(TcpListener)
            .map_err(io::Error::from)
    }

    /// The address it listens on.
    ///
    /// # Errors
    /// Any error from `getsockname`.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.local_addr().map_err(io::Error::from)
    }

    /// The next connection.
    ///
    /// # Errors
    /// Any error from `accept`.
    pub async fn accept(&self) -> io::Result<TcpStream> {
        self.0
            .accept()
            .await
            .map(|s| TcpStream(Inner::Plain(s)))
            .map_err(io::Error::from)
    }
}

/// A TCP connection on the current executor: plain, or speaking TLS once a
/// [`crate::tls::TlsAcceptor`] or [`crate::tls::TlsConnector`] did the handshake.
#[derive(Debug)]
pub struct TcpStream(Inner);

/// What a [`TcpStream`] reads and writes through.
enum Inner {
    Plain(glommio::net::TcpStream),
    TlsServer(Box<futures_rustls::server::TlsStream<glommio::net::TcpStream>>),
    TlsClient(Box<futures_rustls::client::TlsStream<glommio::net::TcpStream>>),
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inner::Plain(s) => s.fmt(f),
            Inner::TlsServer(s) => write!(f, "TLS server side of {:?}", s.get_ref().0),
            Inner::TlsClient(s) => write!(f, "TLS client side of {:?}", s.get_ref().0),
        }
    }
}

impl Inner {
    fn tcp(&self) -> &glommio::net::TcpStream {
        match self {
            Inner::Plain(s) => s,
            Inner::TlsServer(s) => s.get_ref().0,
            Inner::TlsClient(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Inner {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::TlsServer(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Inner::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Inner {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inner::TlsServer(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Inner::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::TlsServer(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Inner::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_close(cx),
            Inner::TlsServer(s) => Pin::new(s.as_mut()).poll_close(cx),
            Inner::TlsClient(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

impl TcpStream {
    /// Connects to `addr`, giving up after `timeout`; the connection has `TCP_NODELAY` set.
    ///
    /// # Errors
    /// `TimedOut`, or any error from `connect`.
    pub async fn connect(addr: std::net::SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let s = glommio::net::TcpStream::connect_timeout(addr, timeout)
            .await
            .map_err(io::Error::from)?;
        s.set_nodelay(true).map_err(io::Error::from)?;
        Ok(TcpStream(Inner::Plain(s)))
    }

    /// Connects to `addr` from the local address `from` (port chosen by the system), giving up
    /// after `timeout`: what a node does so that its peers see its connections come from its
    /// own address (a multi-homed host, a firewall, a test's fault-injecting proxy).
    ///
    /// # Errors
    /// `TimedOut`, or any error from `bind` or `connect`.
    pub async fn connect_from(
        from: std::net::IpAddr,
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let domain = if addr.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        socket.bind(&SockAddr::from(std::net::SocketAddr::new(from, 0)))?;
        match socket.connect(&SockAddr::from(addr)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(EINPROGRESS) => {
                // Wait for the handshake (on loopback and LANs it is usually done at once).
                let until = std::time::Instant::now() + timeout;
                let mut pause = Duration::from_micros(50);
                loop {
                    if let Some(e) = socket.take_error()? {
                        return Err(e);
                    }
                    if socket.peer_addr().is_ok() {
                        break;
                    }
                    if std::time::Instant::now() >= until {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "connection timed out",
                        ));
                    }
                    glommio::timer::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
            }
            Err(e) => return Err(e),
        }
        let s = glommio::net::TcpStream::from(socket);
        s.set_nodelay(true).map_err(io::Error::from)?;
        Ok(TcpStream(Inner::Plain(s)))
    }

    /// Sets `TCP_NODELAY` (no Nagle delay for small writes).
    ///
    /// # Errors
    /// Any error from `setsockopt`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.0.tcp().set_nodelay(on).map_err(io::Error::from)
    }

    /// Whether it speaks TLS.
    #[must_use]
    pub fn is_tls(&self) -> bool {
        !matches!(self.0, Inner::Plain(_))
    }

    /// The plain connection, for a TLS handshake on it.
    pub(crate) fn into_plain(self) -> io::Result<glommio::net::TcpStream> {
        match self.0 {
            Inner::Plain(s) => Ok(s),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the connection speaks TLS already",
            )),
        }
    }

    pub(crate) fn from_tls_server(
        s: futures_rustls::server::TlsStream<glommio::net::TcpStream>,
    ) -> TcpStream {
        TcpStream(Inner::TlsServer(Box::new(s)))
    }

    pub(crate) fn from_tls_client(
        s: futures_rustls::client::TlsStream<glommio::net::TcpStream>,
    ) -> TcpStream {
        TcpStream(Inner::TlsClient(Box::new(s)))
    }

    /// Reads what is available (at least one byte, or 0 at end of stream) into `buf`.
    ///
    /// # Errors
    /// Any read error.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        futures_lite::AsyncReadExt::read(&mut self.0, buf).await
    }

    /// Closes the writing direction (the peer reads end of stream); reading goes on.
    ///
    /// # Errors
    /// Any error from `shutdown`.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        match &mut self.0 {
            Inner::Plain(s) => s
                .shutdown(std::net::Shutdown::Write)
                .await
                .map_err(io::Error::from),
            // TLS's close_notify, then the socket's writing side.
            tls => futures_lite::AsyncWriteExt::close(tls).await,
        }
    }

    /// Splits the connection into halves that separate tasks of this executor can read and
    /// write at the same time.
    #[must_use]
    pub fn split(self) -> (TcpReader, TcpWriter) {
        let (r, w) = futures_lite::io::split(self.0);
        (TcpReader(r), TcpWriter(w))
    }

    /// Fills `buf` from the connection.
    ///
    /// # Errors
    /// `UnexpectedEof` if the peer closes first; any read error.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        futures_lite::AsyncReadExt::read_exact(&mut self.0, buf).await
    }

    /// Writes all of `buf` and flushes it.
    ///
    /// # Errors
    /// Any write error.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        futures_lite::AsyncWriteExt::write_all(&mut self.0, buf).await?;
        futures_lite::AsyncWriteExt::flush(&mut self.0).await
    }
}

/// A UDP socket on the current executor.
#[derive(Debug)]
pub struct UdpSocket(glommio::net::UdpSocket);

impl UdpSocket {
    /// Binds `addr`.
    ///
    /// # Errors
    /// Any error from `bind`.
    pub fn bind(addr: std::net::SocketAddr) -> io::Result<UdpSocket> {
        glommio::net::UdpSocket::bind(addr)
            .map(UdpSocket)
            .map_err(io::Error::from)
    }

    /// The address it is bound to.
    ///
    /// # Errors
    /// Any error from `getsockname`.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.local_addr().map_err(io::Error::from)
    }

    /// Sends one datagram.
    ///
    /// # Errors
    /// Any error from `sendto`.
    pub async fn send_to(&self, buf: &[u8], to: std::net::SocketAddr) -> io::Result<usize> {
        self.0.send_to(buf, to).await.map_err(io::Error::from)
    }

    /// Receives one datagram into `buf` (a longer one is cut to `buf`'s size).
    ///
    /// # Errors
    /// Any error from `recvfrom`.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, std::net::SocketAddr)> {
        self.0.recv_from(buf).await.map_err(io::Error::from)
    }
}

/// The reading half of a [`TcpStream`].
#[derive(Debug)]
pub struct TcpReader(futures_lite::io::ReadHalf<Inner>);

impl TcpReader {
    /// Reads what is available (at least one byte, or 0 at end of stream) into `buf`.
    ///
    /// # Errors
    /// Any read error.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        futures_lite::AsyncReadExt::read(&mut self.0, buf).await
    }

    /// Fills `buf` from the connection.
    ///
    /// # Errors
    /// `UnexpectedEof` if the peer closes first; any read error.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        futures_lite::AsyncReadExt::read_exact(&mut self.0, buf).await
    }
}

/// The writing half of a [`TcpStream`].
#[derive(Debug)]
pub struct TcpWriter(futures_lite::io::WriteHalf<Inner>);

impl TcpWriter {
    /// Writes all of `buf` and flushes it.
    ///
    /// # Errors
    /// Any write error.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        futures_lite::AsyncWriteExt::write_all(&mut self.0, buf).await?;
        futures_lite::AsyncWriteExt::flush(&mut self.0).await
    }

    /// Closes the writing direction (the peer reads end of stream).
    ///
    /// # Errors
    /// Any error from `shutdown`.
    pub async fn close(&mut self) -> io::Result<()> {
        futures_lite::AsyncWriteExt::close(&mut self.0).await
    }
}

/// `EINPROGRESS` on Linux: a non-blocking connect under way.
const EINPROGRESS: i32 = 115;
