//! A loopback TCP proxy that a test can cut, to put one client behind a
//! network partition while everything else still reaches the server.
//!
//! [`TcpProxy::start`] listens on `127.0.0.1:0` and forwards every
//! connection to one upstream address. [`TcpProxy::cut`] breaks the path
//! the way a partition does ([`Cut::Blackhole`]: bytes vanish, clients see
//! timeouts) and [`TcpProxy::cut_with`] can reset connections instead
//! ([`Cut::Reset`]: clients see errors at once, as behind a rejecting
//! firewall). [`TcpProxy::restore`] heals the path: new connections are
//! forwarded again.
//!
//! ```no_run
//! use warmspare_testkit::{Cut, TcpProxy};
//!
//! # async fn t(upstream: std::net::SocketAddr) -> warmspare_testkit::Result<()> {
//! let proxy = TcpProxy::start(upstream).await?;
//! let endpoint = format!("http://{}", proxy.addr());
//! // ... point one client at `endpoint` ...
//! proxy.cut(); // that client's requests now time out
//! proxy.restore();
//! proxy.cut_with(Cut::Reset); // now they fail at once
//! # let _ = endpoint; Ok(()) }
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Error, Result};

/// How [`TcpProxy::cut_with`] breaks the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// A network partition: open connections stop carrying bytes in either
    /// direction but stay open; new connections are accepted (the TCP
    /// handshake completes) and then never answered. Clients see their own
    /// timeouts, never an error from the network.
    Blackhole,
    /// A rejecting firewall: open connections are reset, and new ones are
    /// reset right after they are accepted. Clients see
    /// `connection reset` at once.
    Reset,
}

/// The state of the path, shared with every connection task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    Down(Cut),
}

/// A loopback TCP proxy to one upstream address that the test can cut and
/// restore. Dropping it closes the listener and every connection.
///
/// A connection that a [`Cut::Blackhole`] silenced is closed when the
/// state of the path changes again ([`TcpProxy::restore`] or another
/// [`TcpProxy::cut_with`]): bytes that were in flight inside the proxy
/// are gone, so resuming it would corrupt the stream.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    link: Arc<watch::Sender<Link>>,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
}

/// Counts a connection as open for as long as it lives.
struct OpenGuard(Arc<Counters>);

impl OpenGuard {
    fn new(counters: &Arc<Counters>) -> Self {
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        counters.open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(Arc::clone(counters))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards every connection to
    /// `upstream`. Must be called inside a tokio runtime.
    pub async fn start(upstream: SocketAddr) -> Result<TcpProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|source| Error::Io {
                context: "bind the TCP proxy on 127.0.0.1".into(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Io {
            context: "read the TCP proxy's address".into(),
            source,
        })?;
        let (link, _) = watch::channel(Link::Up);
        let link = Arc::new(link);
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            Arc::clone(&link),
            Arc::clone(&counters),
        ));
        Ok(TcpProxy {
            addr,
            upstream,
            link,
            counters,
            accept,
        })
    }

    /// Where clients connect: `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where connections are forwarded.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Cuts the path like a network partition ([`Cut::Blackhole`]).
    pub fn cut(&self) {
        self.cut_with(Cut::Blackhole);
    }

    /// Cuts the path the given way. Cutting again the same way changes
    /// nothing.
    pub fn cut_with(&self, how: Cut) {
        self.set(Link::Down(how));
    }

    /// Heals the path: connections silenced by a blackhole are closed, new
    /// connections are forwarded again.
    pub fn restore(&self) {
        self.set(Link::Up);
    }

    /// How the path is cut now, if it is.
    pub fn is_cut(&self) -> Option<Cut> {
        match *self.link.borrow() {
            Link::Up => None,
            Link::Down(how) => Some(how),
        }
    }

    /// Connections accepted since the start, whatever happened to them.
    pub fn connections_accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now (forwarded or held silent by a blackhole).
    pub fn connections_open(&self) -> u64 {
        self.counters.open.load(Ordering::SeqCst)
    }

    fn set(&self, link: Link) {
        self.link.send_if_modified(|current| {
            let changed = *current != link;
            *current = link;
            changed
        });
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // connection task and so closes every socket.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    link: Arc<watch::Sender<Link>>,
    counters: Arc<Counters>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors or similar: try again shortly rather
            // than spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let guard = OpenGuard::new(&counters);
        let link = link.subscribe();
        connections.spawn(async move {
            serve(client, upstream, link).await;
            drop(guard);
        });
    }
}

/// Forwards one connection while the link is up, then applies the cut.
async fn serve(mut client: TcpStream, upstream: SocketAddr, mut link: watch::Receiver<Link>) {
    let state = *link.borrow_and_update();
    if let Link::Down(how) = state {
        return broken(how, client, None, link).await;
    }
    let connect = tokio::select! {
        connected = TcpStream::connect(upstream) => connected,
        down = wait_down(&mut link) => match down {
            Some(how) => return broken(how, client, None, link).await,
            None => return,
        },
    };
    let Ok(mut server) = connect else {
        // The upstream is down: the client sees its connection closed.
        return;
    };
    let down = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        down = wait_down(&mut link) => down,
    };
    if let Some(how) = down {
        broken(how, client, Some(server), link).await;
    }
}

/// Waits until the link goes down; `None` when the proxy was dropped.
async fn wait_down(link: &mut watch::Receiver<Link>) -> Option<Cut> {
    let state = link.wait_for(|l| *l != Link::Up).await.ok()?;
    match *state {
        Link::Down(how) => Some(how),
        Link::Up => None,
    }
}

/// A connection on a cut path: reset at once, or held silent until the
/// link changes again (then reset if the new cut says so, else closed).
async fn broken(
    how: Cut,
    client: TcpStream,
    server: Option<TcpStream>,
    mut link: watch::Receiver<Link>,
) {
    let how = match how {
        Cut::Reset => Cut::Reset,
        Cut::Blackhole => {
            // Nothing is read or written: the kernel buffers fill up and
            // the client's own timeouts fire, as in a partition.
            let _ = link.changed().await;
            match *link.borrow() {
                Link::Down(Cut::Reset) => Cut::Reset,
                _ => Cut::Blackhole,
            }
        }
    };
    if how == Cut::Reset {
        // SO_LINGER 0: close() sends RST instead of FIN.
        let _ = client.set_zero_linger();
    }
    drop(server);
    drop(client);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// An echo server that counts the connections it accepted.
    async fn echo() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, accepted)
    }

    /// Writes `msg` and reads the echo back.
    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut buf = vec![0; msg.len()];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    }

    /// What a read sees within `limit`: `None` when nothing happened.
    async fn read_within(s: &mut TcpStream, limit: Duration) -> Option<std::io::Result<usize>> {
        let mut buf = [0u8; 64];
        tokio::time::timeout(limit, s.read(&mut buf)).await.ok()
    }

    /// How long a test waits to conclude that nothing arrives. Only an
    /// upper bound on the test's run time: a blackhole never answers.
    const SILENCE: Duration = Duration::from_millis(300);
    /// How long a test waits for something that must happen.
    const PATIENCE: Duration = Duration::from_secs(10);

    async fn wait_until(mut f: impl FnMut() -> bool) {
        tokio::time::timeout(PATIENCE, async {
            while !f() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("condition never held");
    }

    #[tokio::test]
    async fn forwards_both_ways() {
        let (upstream, accepted) = echo().await;
        let proxy = TcpProxy::start(upstream).await.unwrap();
        assert_eq!(proxy.upstream(), upstream);
        assert_ne!(proxy.addr(), upstream);
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut a, b"hello").await.unwrap(), b"hello");
        assert_eq!(round_trip(&mut b, b"world").await.unwrap(), b"world");
        assert_eq!(proxy.connections_accepted(), 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(proxy.is_cut(), None);
        drop(a);
        wait_until(|| proxy.connections_open() == 1).await;
    }

    #[tokio::test]
    async fn blackhole_silences_open_and_new_connections() {
        let (upstream, accepted) = echo().await;
        let proxy = TcpProxy::start(upstream).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut open, b"before").await.unwrap(), b"before");

        proxy.cut();
        assert_eq!(proxy.is_cut(), Some(Cut::Blackhole));
        // The open connection carries nothing any more, and is not closed.
        open.write_all(b"lost").await.unwrap();
        assert!(read_within(&mut open, SILENCE).await.is_none());
        // A new connection opens (as a SYN to a partitioned host would not,
        // but the client's timeout fires either way) and never reaches the
        // upstream.
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        new.write_all(b"hello?").await.unwrap();
        assert!(read_within(&mut new, SILENCE).await.is_none());
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        wait_until(|| proxy.connections_open() == 2).await;
        // Cutting again the same way changes nothing.
        proxy.cut();
        assert!(read_within(&mut new, SILENCE).await.is_none());

        // Healing closes the silenced connections and forwards new ones.
        proxy.restore();
        assert_eq!(proxy.is_cut(), None);
        for s in [&mut open, &mut new] {
            let seen = read_within(s, PATIENCE).await.expect("closed on restore");
            assert!(matches!(seen, Ok(0) | Err(_)), "{seen:?}");
        }
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut again, b"after").await.unwrap(), b"after");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        wait_until(|| proxy.connections_open() == 1).await;
    }

    #[tokio::test]
    async fn reset_fails_open_and_new_connections_at_once() {
        let (upstream, accepted) = echo().await;
        let proxy = TcpProxy::start(upstream).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut open, b"x").await.unwrap(), b"x");

        proxy.cut_with(Cut::Reset);
        let seen = read_within(&mut open, PATIENCE).await.expect("reset");
        assert_eq!(
            seen.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionReset
        );
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        let seen = read_within(&mut new, PATIENCE).await.expect("reset");
        assert_eq!(
            seen.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionReset
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        proxy.restore();
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut again, b"y").await.unwrap(), b"y");
    }

    #[tokio::test]
    async fn a_blackhole_turned_into_a_reset_resets_the_silenced_connections() {
        let (upstream, _) = echo().await;
        let proxy = TcpProxy::start(upstream).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut open, b"x").await.unwrap(), b"x");
        proxy.cut();
        assert!(read_within(&mut open, SILENCE).await.is_none());
        proxy.cut_with(Cut::Reset);
        let seen = read_within(&mut open, PATIENCE).await.expect("reset");
        assert_eq!(
            seen.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionReset
        );
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_everything() {
        let (upstream, _) = echo().await;
        let proxy = TcpProxy::start(upstream).await.unwrap();
        let addr = proxy.addr();
        let mut open = TcpStream::connect(addr).await.unwrap();
        assert_eq!(round_trip(&mut open, b"x").await.unwrap(), b"x");
        drop(proxy);
        let seen = read_within(&mut open, PATIENCE).await.expect("closed");
        assert!(matches!(seen, Ok(0) | Err(_)), "{seen:?}");
    }

    #[tokio::test]
    async fn an_unreachable_upstream_closes_the_client() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let proxy = TcpProxy::start(closed).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let seen = read_within(&mut s, PATIENCE).await.expect("closed");
        assert!(matches!(seen, Ok(0) | Err(_)), "{seen:?}");
    }
}
