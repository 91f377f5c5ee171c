//! The listeners' accept loop. Each connection is served by hyper's HTTP/1.1 under its listener's
//! [`ConnectionLimits`]:
//! - a request head must arrive whole within the header read timeout, counted from the connection or from
//!   the next request's first byte, and hold at most `max_header_bytes` (431 above);
//! - a kept-alive connection with no request in flight is closed after the idle timeout;
//! - at most `max_connections` are open. At the cap a new connection takes the place of the one idle
//!   longest (nginx reuses idle keep-alive connections the same way), so clients that hold connections
//!   without sending requests cannot keep others out; while every connection is serving a request, the
//!   new one, and those behind it in the kernel's backlog, wait for one to end.
//!
//! Only HTTP/1.1 is served, so HTTP/2's stream limits do not arise. A connection's requests are counted
//! from the service's call to the end of its response body, its bytes at its socket; a watchdog per
//! connection holds both against the deadlines. On shutdown, idle connections close at once and busy ones
//! after their answer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt as _;

use crate::accounting::connections::{Closed, ConnectionCounts};
use crate::config::ConnectionLimits;

/// No head is being read.
const NO_HEAD: u64 = u64::MAX;
/// hyper's smallest read buffer.
const MIN_BUFFER: usize = 8192;
/// After an accept error other than a client's (out of descriptors, say), the loop waits this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `stop` turns true, then lets the connections finish their
/// answers. `no_delay` sets TCP_NODELAY on each connection (streamed answers are many small writes).
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    counts: ConnectionCounts,
    no_delay: bool,
    mut stop: watch::Receiver<bool>,
) {
    let table = Arc::new(Table::new(limits, counts));
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) if is_client_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = stopping(&mut stop) => break,
        };
        if no_delay && let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let Some((id, conn)) = table.admit(&mut stop).await else {
            break;
        };
        tokio::spawn(connection(
            tcp,
            id,
            conn,
            router.clone(),
            table.clone(),
            stop.clone(),
        ));
    }
    drop(listener);
    table.drained().await;
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Errors of one client's connection, not of the listener.
fn is_client_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

async fn connection(
    tcp: TcpStream,
    id: u64,
    conn: Arc<Conn>,
    router: Router,
    table: Arc<Table>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = table.limits;
    let io = TokioIo::new(Watched {
        tcp,
        conn: conn.clone(),
    });
    let serving_conn = conn.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = serving_conn.enter();
        let answer = router.clone().oneshot(request.map(Body::new));
        async move {
            let response = match answer.await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(response.map(|body| Counted { body, _busy: busy }))
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(MIN_BUFFER));
    let serving = http.serve_connection(io, service);
    tokio::pin!(serving);
    let mut draining = false;
    loop {
        tokio::select! {
            ended = serving.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            why = conn.expired(&limits) => {
                tracing::debug!(reason = ?why, "closing a connection");
                table.counts.closed(why);
                break;
            }
            () = stopping(&mut stop), if !draining => {
                serving.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
    table.remove(id);
}

/// The open connections of one listener.
struct Table {
    limits: ConnectionLimits,
    counts: ConnectionCounts,
    epoch: Instant,
    open: Mutex<Open>,
    /// A connection ended.
    ended: Notify,
}

#[derive(Default)]
struct Open {
    conns: HashMap<u64, Arc<Conn>>,
    /// Connections not told to close.
    live: usize,
    next_id: u64,
}

impl Table {
    fn new(limits: ConnectionLimits, counts: ConnectionCounts) -> Self {
        counts.capped_at(limits.max_connections);
        Self {
            limits,
            counts,
            epoch: Instant::now(),
            open: Mutex::new(Open::default()),
            ended: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for a new connection: free, or the one of the connection idle longest; with every
    /// connection busy, waits for one to end. None once `stop` turns true.
    async fn admit(&self, stop: &mut watch::Receiver<bool>) -> Option<(u64, Arc<Conn>)> {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if let Some(admitted) = self.try_admit() {
                return Some(admitted);
            }
            tokio::select! {
                () = ended => {}
                () = stopping(stop) => return None,
            }
        }
    }

    fn try_admit(&self) -> Option<(u64, Arc<Conn>)> {
        let mut open = self.lock();
        if open.live >= self.limits.max_connections {
            let idle = open
                .conns
                .values()
                .filter(|c| c.busy.load(Ordering::Acquire) == 0 && !c.evicted.load(Ordering::Acquire))
                .min_by_key(|c| c.idle_since.load(Ordering::Acquire))?;
            idle.evicted.store(true, Ordering::Release);
            idle.wake.notify_one();
            open.live -= 1;
        }
        let conn = Arc::new(Conn::new(self.epoch));
        let id = open.next_id;
        open.next_id += 1;
        open.conns.insert(id, conn.clone());
        open.live += 1;
        self.counts.opened();
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        let mut open = self.lock();
        if let Some(conn) = open.conns.remove(&id) {
            if !conn.evicted.load(Ordering::Acquire) {
                open.live -= 1;
            }
            self.counts.ended();
        }
        drop(open);
        self.ended.notify_waiters();
    }

    /// Every connection has ended.
    async fn drained(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.lock().conns.is_empty() {
                return;
            }
            ended.await;
        }
    }
}

/// One connection's state, shared by its socket, its service and its watchdog. Times are milliseconds
/// since the listener's epoch.
struct Conn {
    epoch: Instant,
    /// Requests whose answer has not been written to its end.
    busy: AtomicUsize,
    /// When the connection last had no request in flight (or was accepted).
    idle_since: AtomicU64,
    /// When the head being read began, or [`NO_HEAD`].
    head_since: AtomicU64,
    evicted: AtomicBool,
    /// The watchdog looks again: a head began, or the connection was evicted.
    wake: Notify,
}

impl Conn {
    /// A new connection owes its first head from now.
    fn new(epoch: Instant) -> Self {
        let now = millis(epoch.elapsed());
        Self {
            epoch,
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            head_since: AtomicU64::new(now),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// Bytes arrived: with no request in flight they begin a head, which now has a deadline.
    fn read_some(&self) {
        if self.busy.load(Ordering::Acquire) == 0 && self.head_since.load(Ordering::Acquire) == NO_HEAD {
            self.head_since.store(self.now(), Ordering::Release);
            self.wake.notify_one();
        }
    }

    fn enter(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// When the connection is to be closed, and why; None while a request is in flight.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(u64, Closed)> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_since.load(Ordering::Acquire);
        Some(if head == NO_HEAD {
            let idle = self.idle_since.load(Ordering::Acquire);
            (
                idle.saturating_add(millis(limits.idle_timeout)),
                Closed::IdleTimeout,
            )
        } else {
            (
                head.saturating_add(millis(limits.header_read_timeout)),
                Closed::HeaderTimeout,
            )
        })
    }

    /// Resolves when the connection is to be closed.
    async fn expired(&self, limits: &ConnectionLimits) -> Closed {
        loop {
            if self.evicted.load(Ordering::Acquire) {
                return Closed::Evicted;
            }
            let now = self.now();
            let wait = match self.deadline(limits) {
                Some((at, why)) if at <= now => return why,
                Some((at, _)) => at - now,
                // A request in flight: its answer's end restarts the idle clock; look again by then.
                None => millis(limits.idle_timeout),
            };
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                () = self.wake.notified() => {}
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A request in flight on its connection, until its answer's body is dropped (written or abandoned).
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        let c = &self.0;
        c.idle_since.store(c.now(), Ordering::Release);
        c.head_since.store(NO_HEAD, Ordering::Release);
        c.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted until it ends.
struct Counted {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket, telling its connection when bytes arrive.
struct Watched {
    tcp: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.read_some();
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
