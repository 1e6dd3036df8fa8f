//! A span per request, continuing the incoming W3C `traceparent` and exported over OTLP/HTTP
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Used by the queue-proxy and the activator, so a
//! request's trace reads: client → activator → queue-proxy → app.
//!
//! With tracing on, the next hop receives a `traceparent` naming our span as parent (same trace
//! id). With tracing off no span is made and headers pass untouched.

use std::time::Duration;

pub use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
pub use opentelemetry_sdk::trace::Span;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Traces {
    /// `endpoint` is the collector's base URL (`http://collector:4318`); spans go to
    /// `{endpoint}/v1/traces` as OTLP protobuf, batched on the Tokio runtime. `service` names
    /// the component; `resource` describes where it runs.
    pub fn new(endpoint: &str, service: &str, resource: Vec<KeyValue>) -> Result<Traces, String> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(5))
            .with_headers(Default::default())
            .build()
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint:?}: {e}"))?;
        let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::TokioCurrentThread,
        )
        .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_string())
            .with_attributes(resource)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer(format!("ebb-{service}"));
        Ok(Traces {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// Traces exported to `OTEL_EXPORTER_OTLP_ENDPOINT` when that is set (and not empty); None
    /// otherwise.
    pub fn from_env(service: &str, resource: Vec<KeyValue>) -> Result<Option<Traces>, String> {
        match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Ok(endpoint) if !endpoint.is_empty() => {
                Traces::new(&endpoint, service, resource).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Start the server span of a request, child of its `traceparent` if any. Returns the span
    /// and the trace headers the next hop must receive (pointing at the new span).
    pub fn start(
        &self,
        headers: &http::HeaderMap,
        method: &str,
        path: &str,
        attributes: Vec<KeyValue>,
    ) -> (Span, http::HeaderMap) {
        self.start_at(
            headers,
            method,
            path,
            attributes,
            std::time::SystemTime::now(),
        )
    }

    /// [`Traces::start`] for a request that arrived at `started` (e.g. before it waited for an
    /// instance, so that the span covers the wait).
    pub fn start_at(
        &self,
        headers: &http::HeaderMap,
        method: &str,
        path: &str,
        mut attributes: Vec<KeyValue>,
        started: std::time::SystemTime,
    ) -> (Span, http::HeaderMap) {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        attributes.push(KeyValue::new("http.request.method", method.to_string()));
        attributes.push(KeyValue::new("url.path", path.to_string()));
        let span = self
            .tracer
            .span_builder(format!(
                "{method} {}",
                HeaderExtractor(headers).get("host").unwrap_or("")
            ))
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .with_start_time(started)
            .start_with_context(&self.tracer, &parent);
        let cx =
            opentelemetry::Context::current().with_remote_span_context(span.span_context().clone());
        let mut out = http::HeaderMap::new();
        self.propagator
            .inject_context(&cx, &mut HeaderInjector(&mut out));
        (span, out)
    }

    /// Record the outcome and end the span.
    pub fn finish(mut span: Span, status: u16) {
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 || status == 0 {
            span.set_status(Status::error(format!("HTTP {status}")));
        }
        span.end();
    }

    /// Flush what is buffered (at exit).
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }

    /// Export what has ended so far, now.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}
