//! Knative's helloworld: answers with a greeting naming the revision that served it.

mod common;

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "World".into());
    let revision = std::env::var("K_REVISION").unwrap_or_default();
    let body = format!("Hello {target}! ({revision})\n");
    common::serve("hello", move |_req| {
        let body = body.clone();
        async move { common::text(200, body) }
    });
}
