//! Accept loops that back off. `accept` fails when the process is out of descriptors (EMFILE,
//! ENFILE) or the kernel of buffers, and the pending connection stays in the backlog: retrying
//! at once fails again at once, and a loop doing so takes a whole core while nothing gets
//! better. So each consecutive failure waits twice as long as the last, from 10 ms up to 1 s.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

const FIRST_WAIT: Duration = Duration::from_millis(10);
const MAX_WAIT: Duration = Duration::from_secs(1);

/// The next result of `accept` that is not an error, waiting between failures.
pub async fn next<T, F, Fut>(mut accept: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let mut wait = FIRST_WAIT;
    loop {
        match accept().await {
            Ok(t) => return t,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "accept failed");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_WAIT);
            }
        }
    }
}

/// The next connection on `listener`, backing off on errors.
pub async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    next(|| listener.accept()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_doubling_up_to_a_second() {
        let start = tokio::time::Instant::now();
        let mut failures = 9;
        let got = next(|| {
            let fail = failures > 0;
            failures -= 1;
            async move {
                if fail {
                    Err(io::Error::from_raw_os_error(24)) // EMFILE
                } else {
                    Ok(7)
                }
            }
        })
        .await;
        assert_eq!(got, 7);
        // 10 + 20 + 40 + 80 + 160 + 320 + 640 + 1000 + 1000 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(3270));
    }
}
