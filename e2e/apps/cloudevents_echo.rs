//! Receives a CloudEvent (binary or structured mode) and replies with an event in binary mode:
//! type `{type}.reply`, source `urn:ebb:cloudevents-echo`, the same data, `inreplyto` = the id.

mod common;

use cloudevents::binding::http::to_event;
use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
use http_body_util::BodyExt;

fn main() {
    common::serve("cloudevents-echo", |req| async move {
        let headers = req.headers().clone();
        let Ok(body) = req.into_body().collect().await else {
            return common::text(400, "unreadable body\n");
        };
        let event = match to_event(&headers, body.to_bytes().to_vec()) {
            Ok(e) => e,
            Err(e) => return common::text(400, format!("not a CloudEvent: {e}\n")),
        };
        let mut reply = EventBuilderV10::new()
            .id(format!("{}-reply", event.id()))
            .source("urn:ebb:cloudevents-echo")
            .ty(format!("{}.reply", event.ty()))
            .extension("inreplyto", event.id());
        if let (Some(ct), Some(data)) = (event.datacontenttype(), event.data()) {
            reply = reply.data(ct.to_string(), data.clone());
        }
        let reply = match reply.build() {
            Ok(r) => r,
            Err(e) => return common::text(500, format!("cannot build the reply: {e}\n")),
        };
        let Ok(out) = http::Request::<Option<Vec<u8>>>::try_from(reply) else {
            return common::text(500, "cannot encode the reply\n");
        };
        let mut resp = common::text(200, out.body().clone().unwrap_or_default());
        for (k, v) in out.headers() {
            resp.headers_mut().insert(k, v.clone());
        }
        resp
    });
}
