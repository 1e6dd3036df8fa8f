//! Idle connections to instances, kept for the plain path's next requests.
//!
//! Taken newest first (the one most likely still open, and the fewest kept warm). A pooled
//! connection the instance has closed meanwhile is found when a request on it gets no answer
//! at all, and that request is sent again on a fresh connection (`plain`); between requests,
//! [`Pool::sweep`] drops connections the instance closed or that stayed idle too long, so an
//! instance that went away leaves no descriptors behind.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// A connection idle this long is closed by the next sweep.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often idle connections are checked.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Idle connections kept per instance at most (the oldest go first).
const MAX_IDLE_PER_INSTANCE: usize = 256;

#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>>,
}

impl Pool {
    /// The most recently used idle connection to `addr`.
    pub fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get_mut(&addr)?.pop().map(|(s, _)| s)
    }

    /// Keep a connection whose last response ended cleanly.
    pub fn put(&self, addr: SocketAddr, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let conns = idle.entry(addr).or_default();
        if conns.len() >= MAX_IDLE_PER_INSTANCE {
            conns.remove(0);
        }
        conns.push((stream, Instant::now()));
    }

    /// Idle connections to `addr`.
    pub fn idle(&self, addr: SocketAddr) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get(&addr).map_or(0, Vec::len)
    }

    /// Close connections idle since before `now - IDLE_TIMEOUT`, and those the instance closed
    /// or wrote to out of turn. The check reads only sockets the runtime saw an event on: an
    /// idle connection with nothing new costs no syscall.
    pub fn sweep(&self, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, conns| {
            conns.retain(|(stream, since)| {
                let mut probe = [0u8; 1];
                now.duration_since(*since) < IDLE_TIMEOUT
                    && matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            });
            !conns.is_empty()
        });
    }

    /// Sweep every [`SWEEP_EVERY`] for as long as the pool exists.
    pub fn keep_swept(pool: &Arc<Pool>) {
        let pool: Weak<Pool> = Arc::downgrade(pool);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match pool.upgrade() {
                    Some(p) => p.sweep(Instant::now()),
                    None => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair(listener: &tokio::net::TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let client = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (server, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
        (client, server)
    }

    #[tokio::test]
    async fn newest_first_and_closed_or_stale_connections_are_swept() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let pool = Pool::default();
        let (a, a_server) = pair(&listener).await;
        let (b, _b_server) = pair(&listener).await;
        let (c, mut c_server) = pair(&listener).await;
        let b_port = b.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
        pool.put(addr, a);
        pool.put(addr, b);
        pool.put(addr, c);
        // The instance closes one and writes out of turn on another.
        drop(a_server);
        c_server
            .write_all(b"x")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.sweep(Instant::now());
        assert_eq!(pool.idle(addr), 1);
        let kept = pool.take(addr).unwrap_or_else(|| panic!("one left"));
        assert_eq!(
            kept.local_addr().unwrap_or_else(|e| panic!("{e}")).port(),
            b_port
        );
        pool.put(addr, kept);
        // The most recently put comes out first.
        let (d, _d_server) = pair(&listener).await;
        let d_port = d.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
        pool.put(addr, d);
        let newest = pool.take(addr).unwrap_or_else(|| panic!("two idle"));
        assert_eq!(
            newest.local_addr().unwrap_or_else(|e| panic!("{e}")).port(),
            d_port
        );
        pool.put(addr, newest);
        pool.sweep(Instant::now() + IDLE_TIMEOUT);
        assert_eq!(pool.idle(addr), 0, "idle past the timeout");
        assert!(pool.take(addr).is_none());
    }
}
