//! Stage: listener. The two listeners, per-connection TLS handshake and peer identity, HTTP/1.1 and
//! HTTP/2 connections (each request handed to `pipeline::run`), requests hyper refuses before
//! the pipeline sees them, and graceful shutdown.
//!
//! `serve` takes already-bound listeners, so tests bind `127.0.0.1:0` and read the port back.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use crate::broker::Broker;
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{Exchange, Operation, Reply, Side};
use crate::identity::PeerIdentity;
use crate::listener::Opening;

/// Both accept loops of one broker, on listeners that outlive it (the supervisor swaps brokers).
pub(crate) struct Accepting {
    stop: watch::Sender<bool>,
    loops: [tokio::task::JoinHandle<()>; 2],
    graceful: Arc<GracefulShutdown>,
}

impl Accepting {
    /// Start accepting on both listeners for `broker`.
    pub(crate) fn start(broker: &Arc<Broker>, agency: &Arc<TcpListener>, admin: &Arc<TcpListener>) -> Self {
        let graceful = Arc::new(GracefulShutdown::new());
        let (stop, stop_rx) = watch::channel(false);
        let in_flight = Arc::new(crate::admission::InFlight::new(
            broker.config.limits.max_concurrent_per_agency,
        ));
        let loops = [
            tokio::spawn(accept_loop(
                Side::Agency,
                agency.clone(),
                broker.clone(),
                graceful.clone(),
                stop_rx.clone(),
                in_flight.clone(),
            )),
            tokio::spawn(accept_loop(
                Side::Admin,
                admin.clone(),
                broker.clone(),
                graceful.clone(),
                stop_rx,
                in_flight,
            )),
        ];
        Self {
            stop,
            loops,
            graceful,
        }
    }

    /// Stop accepting (the listeners stay bound: new connections wait in the backlog) and let
    /// in-flight requests finish, up to `grace`.
    pub(crate) async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        for handle in self.loops {
            let _ = handle.await;
        }
        match Arc::try_unwrap(self.graceful) {
            Ok(graceful) => {
                if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
                    tracing::warn!("grace period over; closing the remaining connections");
                }
            }
            Err(_) => tracing::warn!("connection tracker still shared; skipping the graceful wait"),
        }
    }
}

/// The HTTP/1.1 and HTTP/2 settings of both listeners (and of the benchmark's baseline, so that it differs
/// from the broker only by the pipeline).
pub fn http_builder(limits: &crate::config::LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Duration::from_secs(30));
    builder
}

async fn accept_loop(
    side: Side,
    listener: Arc<TcpListener>,
    broker: Arc<Broker>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
    in_flight: Arc<crate::admission::InFlight>,
) {
    let permits = Arc::new(Semaphore::new(broker.config.limits.max_connections));
    let builder = http_builder(&broker.config.limits);
    // With ALPN the protocol is known: skip hyper-util's preface sniffing, which has no timeout (a
    // client that connects and sends nothing would hold its connection slot for ever). The header read
    // timeout then runs from the first moment.
    let builders = Arc::new(ProtocolBuilders {
        h1: builder.clone().http1_only(),
        h2: builder.clone().http2_only(),
        sniff: builder,
    });
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            permit = permits.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
        };
        let (mut tcp, remote) = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let broker = broker.clone();
        let builders = builders.clone();
        let watcher = graceful.watcher();
        let in_flight = in_flight.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                let acceptor = tokio_rustls::TlsAcceptor::from(match side {
                    Side::Agency => broker.tls.current(),
                    Side::Admin => broker.tls.admin(),
                });
                let handshake = Duration::from_millis(broker.config.limits.handshake_timeout_ms);
                let started = std::time::Instant::now();
                match crate::listener::sniff_opening(&mut tcp, handshake).await {
                    Opening::Handshake => {}
                    Opening::AnsweredPlaintext => {
                        broker.metrics.count_handshake_failure(side, "plaintext_http");
                        return;
                    }
                    Opening::Silent => {
                        broker.metrics.count_handshake_failure(side, "timeout");
                        tracing::info!("TLS handshake timed out");
                        return;
                    }
                }
                let handshake = handshake.saturating_sub(started.elapsed());
                let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp).into_fallible()).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err((e, tcp))) => {
                        let reason = crate::metrics::handshake_failure_reason(&e);
                        broker.metrics.count_handshake_failure(side, reason);
                        let hint = crate::listener::handshake_hint(reason);
                        tracing::info!(error = %e, reason, hint, "TLS handshake refused");
                        crate::listener::close_after_refusal(tcp, reason).await;
                        return;
                    }
                    Err(_) => {
                        broker.metrics.count_handshake_failure(side, "timeout");
                        tracing::info!("TLS handshake timed out");
                        return;
                    }
                };
                broker.metrics.observe_since(crate::metrics::Stage::Tls, started);
                let _open = broker.metrics.connection_opened(side);
                let peer = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    Some(der) => match broker.identities.identify(der) {
                        Ok(peer) => peer,
                        Err(e) => {
                            tracing::warn!(error = %e, "unreadable client certificate");
                            return;
                        }
                    },
                    // The verifier makes client certificates mandatory; this is unreachable in practice.
                    None => return,
                };
                tracing::debug!(subject = %peer.subject, fingerprint = %peer.fingerprint_sha256, "connected");
                if side == Side::Agency && broker.registry.by_fingerprint(&peer.fingerprint_sha256).is_none()
                {
                    crate::listener::log_unbound_certificate(&peer);
                }
                let pending = Arc::new(AtomicU64::new(0));
                let service = hyper::service::service_fn({
                    let (broker, peer, pending) = (broker.clone(), peer.clone(), pending.clone());
                    move |req| {
                        let broker = broker.clone();
                        let peer = peer.clone();
                        let in_flight = in_flight.clone();
                        let pending = pending.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                crate::pipeline::run(side, broker, peer, in_flight, pending, req).await,
                            )
                        }
                    }
                });
                let io = CountingIo {
                    inner: tls,
                    read: pending.clone(),
                };
                let builder = match io.inner.get_ref().1.alpn_protocol() {
                    Some(b"h2") => &builders.h2,
                    Some(b"http/1.1") => &builders.h1,
                    _ => &builders.sniff,
                };
                let conn = builder.serve_connection(TokioIo::new(io), service);
                if let Err(e) = watcher.watch(conn).await {
                    let partial = pending.load(Ordering::Relaxed) > 0;
                    match connection_event(&*e, partial) {
                        Some((code, message)) => {
                            record_connection_event(&broker, side, peer, code, message).await
                        }
                        None => tracing::debug!(error = %e, "connection ended with an error"),
                    }
                }
            }
            .instrument(tracing::info_span!("conn", side = ?side, %remote)),
        );
    }
}

/// Connection builders per negotiated protocol.
struct ProtocolBuilders {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    sniff: auto::Builder<TokioExecutor>,
}

/// The decrypted stream, counting bytes read since the last request was consumed, so that a header
/// timeout on a half-sent request (slowloris) can be told from an idle keep-alive connection closing.
struct CountingIo<T> {
    inner: T,
    read: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for CountingIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before) as u64;
        self.read.fetch_add(n, Ordering::Relaxed);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountingIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request hyper refused before our service saw it (it answers 431 or 400 itself, or closes on a
/// header timeout): the status hyper sent, our stable code and a message. `None` for ordinary endings
/// (client went away, idle keep-alive timed out with no request begun).
fn connection_event(
    err: &(dyn std::error::Error + 'static),
    partial_request: bool,
) -> Option<(ErrorCode, &'static str)> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            // hyper answers an over-long request line 414 itself and tells it apart only in its message.
            if h.is_parse_too_large() && h.to_string().contains("URI too long") {
                return Some((ErrorCode::UriTooLong, "request URI over the size limit"));
            }
            if h.is_parse_too_large() {
                return Some((ErrorCode::HeadersTooLarge, "request headers over the size limit"));
            }
            if h.is_parse() {
                return Some((
                    ErrorCode::MalformedRequest,
                    "malformed or ambiguous HTTP request (e.g. conflicting Content-Length/Transfer-Encoding)",
                ));
            }
            if h.is_timeout() && partial_request {
                return Some((
                    ErrorCode::HeaderTimeout,
                    "request headers arrived too slowly; connection closed",
                ));
            }
            return None;
        }
        source = e.source();
    }
    None
}

/// Put a connection-level refusal on the audit trail, with the peer that caused it.
async fn record_connection_event(
    broker: &Broker,
    side: Side,
    peer: Arc<PeerIdentity>,
    code: ErrorCode,
    message: &'static str,
) {
    let agency = broker
        .registry
        .by_fingerprint(&peer.fingerprint_sha256)
        .map(|a| a.code);
    tracing::warn!(status = code.status().as_u16(), %code, agency = agency.as_deref().unwrap_or("-"), fingerprint = %peer.fingerprint_sha256, "connection refused by the HTTP layer");
    let mut exchange = Exchange::new(side, peer, "-".into(), broker.catalogue());
    exchange.agency = if side == Side::Admin { None } else { agency };
    exchange.channel = "connection".into();
    exchange.operation = Some(Operation::Connection(code));
    exchange.body_sha256 = broker.audit.body_hash(b"");
    let reply = Reply::error(&ApiError::new(code, message), &exchange.request_id);
    let _ = crate::pipeline::audit(broker, side, &exchange, reply).await;
}
