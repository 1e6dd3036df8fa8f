//! The response body as it streams back: enforces the idle timeout while streaming (as in
//! Knative, `timeoutSeconds` ends once the response has started: a response begun in time may
//! stream past it), and owns the request's guards, so that its concurrency slot and in-flight count are given
//! back the moment the response ends, fails or is abandoned by the client.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body that is only a short text (errors, probe answers).
pub fn text(s: impl Into<Bytes>) -> ProxyBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(s.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[derive(Debug, thiserror::Error)]
pub enum StreamTimeout {
    #[error("no bytes from the app for idleTimeoutSeconds")]
    Idle,
}

pin_project_lite::pin_project! {
    pub struct Tracked<B, G> {
        #[pin]
        inner: B,
        // The idle timer is armed only when the app makes us wait: most responses are complete
        // in the first poll, and registering timers per request is a measurable cost.
        idle: Option<(Duration, Option<Pin<Box<Sleep>>>)>,
        guard: Option<G>,
    }
}

impl<B, G> Tracked<B, G> {
    pub fn new(inner: B, idle: Option<Duration>, guard: G) -> Self {
        Tracked {
            inner,
            idle: idle.map(|d| (d, None)),
            guard: Some(guard),
        }
    }
}

impl<B, G> Body for Tracked<B, G>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some((_, sleep)) = this.idle.as_mut() {
                    // Re-armed the next time the app makes us wait.
                    *sleep = None;
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => {
                this.guard.take();
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(None) => {
                this.guard.take();
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if let Some((d, sleep)) = this.idle.as_mut() {
            let d = *d;
            let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
            if sleep.as_mut().poll(cx).is_ready() {
                this.guard.take();
                return Poll::Ready(Some(Err(Box::new(StreamTimeout::Idle))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
