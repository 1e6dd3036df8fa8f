#![allow(dead_code)] // each app uses part of it
//! What every example app shares: listen on $PORT (HTTP/1.1 with upgrades, and h2c), stop on
//! SIGTERM.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub type Body = BoxBody<Bytes, std::io::Error>;

pub fn text(status: u16, body: impl Into<Bytes>) -> http::Response<Body> {
    let mut r = http::Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    r
}

/// `$PORT`, or `$LISTEN_PORT` where a sidecar cannot be given `PORT` (reserved by Knative).
pub fn port() -> u16 {
    std::env::var("LISTEN_PORT")
        .or_else(|_| std::env::var("PORT"))
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080)
}

pub fn serve<H, F>(name: &str, handler: H)
where
    H: Fn(http::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = http::Response<Body>> + Send + 'static,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async move {
        // Loopback on the host; every interface in a container's own network namespace (podman
        // sets `container` and writes /run/.containerenv), where the port is published.
        let in_container = std::env::var_os("container").is_some()
            || std::path::Path::new("/run/.containerenv").exists();
        let ip = if in_container {
            [0, 0, 0, 0]
        } else {
            [127, 0, 0, 1]
        };
        let addr = std::net::SocketAddr::from((ip, port()));
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{name}: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        };
        println!("{name} listening on {addr}");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let h = handler.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let f = h(req);
                            async move { Ok::<_, Infallible>(f.await) }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {
                    println!("{name}: SIGTERM, exiting");
                    return;
                }
            }
        }
    });
}

/// A query parameter's value.
pub fn query<'a>(req: &'a http::Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}
