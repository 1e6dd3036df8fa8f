//! A write-coalescing wrapper for downstream connections.
//!
//! Pingora sizes a connection's write buffer only when its own listener accepts it (the setter
//! is crate-private); a stream built from a `TcpStream`, as our accept loop does, writes every
//! piece straight to the socket. A response then leaves as two packets — headers, then body —
//! costing a syscall and a client wake-up each. This wrapper keeps small writes until pingora
//! flushes (it does at the end of headers-only responses, after each body write it wants out,
//! and before waiting on the client), as pingora's own buffered streams behave.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Pingora's own default write buffer: one TCP segment.
pub const WRITE_BUFFER: usize = 1460;

#[derive(Debug)]
pub struct Buffered {
    inner: L4Stream,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to the socket during a flush in progress.
    written: usize,
}

impl Buffered {
    pub fn new(inner: L4Stream) -> Buffered {
        Buffered {
            inner,
            buf: Vec::new(),
            written: 0,
        }
    }

    /// Put bytes already read back in front of what the socket has.
    pub fn rewind(&mut self, data: &[u8]) {
        self.inner.rewind(data);
    }

    /// Write out what is buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Buffered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Buffered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.buf.len() + data.len() > WRITE_BUFFER {
            ready!(this.poll_drain(cx))?;
        }
        if data.len() >= WRITE_BUFFER {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Buffered {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for Buffered {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Buffered {}

#[async_trait]
impl Peek for Buffered {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl GetTimingDigest for Buffered {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Buffered {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Buffered {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn small_writes_leave_together_on_flush() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let client = tokio::spawn(tokio::net::TcpStream::connect(addr));
        let (server, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
        let mut peer = client
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut b = Buffered::new(server.into());
        b.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        b.write_all(b"hello")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 128];
        let early = tokio::time::timeout(Duration::from_millis(50), peer.read(&mut buf)).await;
        assert!(early.is_err(), "nothing leaves before the flush");
        b.flush().await.unwrap_or_else(|e| panic!("{e}"));
        let n = peer.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            &buf[..n],
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            "one read: one segment"
        );
        // Large writes go straight through.
        let big = vec![b'x'; 3 * WRITE_BUFFER];
        b.write_all(&big).await.unwrap_or_else(|e| panic!("{e}"));
        let mut got = vec![0u8; big.len()];
        peer.read_exact(&mut got)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, big);
    }
}
