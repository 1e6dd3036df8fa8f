//! Becomes ready after a delay: listens only after `READY_DELAY_MS` (default 2000) milliseconds.

mod common;

fn main() {
    let delay: u64 = std::env::var("READY_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    std::thread::sleep(std::time::Duration::from_millis(delay));
    let body = format!("ready after {delay} ms\n");
    common::serve("slowstart", move |_req| {
        let body = body.clone();
        async move { common::text(200, body) }
    });
}
