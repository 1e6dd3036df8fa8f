//! A span per request, continuing the incoming W3C `traceparent` and exported over OTLP/HTTP
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! With tracing on, the app receives a `traceparent` naming the queue-proxy's span as parent
//! (same trace id), so its own spans nest under ours. With tracing off, headers pass untouched
//! and no span is made.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};

use crate::config::Config;

#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    attributes: Vec<KeyValue>,
}

impl Traces {
    /// `endpoint` is the collector's base URL (`http://collector:4318`); spans go to
    /// `{endpoint}/v1/traces` as OTLP protobuf.
    pub fn new(endpoint: &str, cfg: &Config) -> Result<Traces, String> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(5))
            .with_headers(Default::default())
            .build()
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint:?}: {e}"))?;
        // Batching on the Tokio runtime: the exporter's HTTP client is async.
        let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::TokioCurrentThread,
        )
        .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("queue-proxy")
            .with_attributes([
                KeyValue::new("k8s.namespace.name", cfg.namespace.clone()),
                KeyValue::new("k8s.pod.name", cfg.pod.clone()),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("ebb-queue-proxy");
        let attributes = vec![
            KeyValue::new("knative.service", cfg.service.clone()),
            KeyValue::new("knative.configuration", cfg.configuration.clone()),
            KeyValue::new("knative.revision", cfg.revision.clone()),
        ];
        Ok(Traces {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            attributes,
        })
    }

    /// Start the server span of a request, child of its `traceparent` if any, and point the
    /// request's `traceparent` at the new span.
    pub fn start(&self, headers: &mut http::HeaderMap, method: &str, path: &str) -> Span {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let mut attrs = self.attributes.clone();
        attrs.push(KeyValue::new("http.request.method", method.to_string()));
        attrs.push(KeyValue::new("url.path", path.to_string()));
        let span = self
            .tracer
            .span_builder(format!(
                "{method} {}",
                HeaderExtractor(headers).get("host").unwrap_or("")
            ))
            .with_kind(SpanKind::Server)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &parent);
        let cx =
            opentelemetry::Context::current().with_remote_span_context(span.span_context().clone());
        self.propagator
            .inject_context(&cx, &mut HeaderInjector(headers));
        span
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
}
