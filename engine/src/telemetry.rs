//! W3C trace-context propagation across the queue: the API stores the
//! context of the request that enqueued an execution; the worker's
//! execution span continues it, even in another process, after a retry
//! delay or a crash; outbound step requests carry `traceparent` so a third
//! party's traces can join.
//!
//! The binaries install the W3C propagator and the OpenTelemetry
//! subscriber; without them these functions do nothing.

use std::collections::HashMap;

use opentelemetry::trace::TraceContextExt as _;
use serde_json::Value;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The current span's trace context as a JSON object (`traceparent`,
/// optionally `tracestate`), or `None` when there is no valid context.
pub fn current_context() -> Option<Value> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    (!carrier.is_empty()).then(|| serde_json::to_value(carrier).unwrap_or(Value::Null))
}

/// The `traceparent` header value for the current span, if any.
pub fn current_traceparent() -> Option<String> {
    match current_context()? {
        Value::Object(mut map) => match map.remove("traceparent") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// Makes `span` a child of the context in `carrier` (header name → value;
/// a no-op when it holds no valid context).
pub fn set_parent(span: &tracing::Span, carrier: &HashMap<String, String>) {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(carrier));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Makes `span` a child of a context stored by [`current_context`].
pub fn continue_trace(span: &tracing::Span, stored: Option<&Value>) {
    if let Some(Value::Object(map)) = stored {
        let carrier: HashMap<String, String> = map
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
            .collect();
        set_parent(span, &carrier);
    }
}
