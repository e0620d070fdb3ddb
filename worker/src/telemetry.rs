//! Logs, traces and metrics for both binaries.
//!
//! - Logs: `tracing` with `RUST_LOG` filtering, text or JSON lines
//!   (`CONVEYOR_LOG_FORMAT`); JSON lines inside a span carry `trace_id` and
//!   `span_id` when tracing is on.
//! - Traces: bridged to OpenTelemetry and exported over OTLP/HTTP
//!   (protobuf) only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. `OTEL_SERVICE_NAME`,
//!   `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` are honoured. The
//!   batch processor exports from its own thread, so a collector that is
//!   down never slows or fails an execution (spans are dropped instead).
//! - Metrics: a Prometheus recorder; [`metrics_handle`] renders the text
//!   format.

use std::fmt;
use std::net::SocketAddr;
use std::sync::OnceLock;

use anyhow::Context as _;
use axum::serve::{Listener, ListenerExt as _};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Map, Value};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::settings::LogFormat;

/// Keeps the trace exporter alive; flushes pending spans when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|v| !v.trim().is_empty()))
}

/// Installs logging and, when configured, trace export. Call it before
/// starting the async runtime: the exporter's HTTP client is a blocking one
/// that lives on the batch processor's own thread.
///
/// # Errors
///
/// An invalid OTLP configuration.
pub fn init(default_service: &str, format: LogFormat) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = if otlp_configured() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .context("configuring the OTLP span exporter")?;
        let service = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| default_service.to_owned());
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .build();
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        )
    } else {
        None
    };
    // `RUST_LOG` filters the log lines only: spans are exported at INFO
    // whatever the log level, so a quiet process still traces.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("conveyor"))
            .with_filter(LevelFilter::INFO)
    });
    let registry = tracing_subscriber::registry().with(otel);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonWithTrace)
                    .with_filter(filter),
            )
            .init(),
    }
    Ok(Telemetry { provider })
}

/// One JSON object per line: time, level, target, the event's fields, the
/// enclosing spans' fields, and the OpenTelemetry `trace_id`/`span_id`.
struct JsonWithTrace;

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339()),
        );
        line.insert(
            "level".into(),
            Value::String(event.metadata().level().to_string()),
        );
        line.insert(
            "target".into(),
            Value::String(event.metadata().target().to_owned()),
        );
        let mut fields = FieldMap(Map::new());
        event.record(&mut fields);
        line.extend(fields.0);
        if let Some(scope) = ctx.event_scope() {
            let mut spans = Map::new();
            for span in scope.from_root() {
                if let Some(formatted) = span.extensions().get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) =
                        serde_json::from_str::<Value>(formatted.as_str())
                {
                    spans.extend(map);
                }
                line.insert("span".into(), Value::String(span.name().to_owned()));
            }
            if !spans.is_empty() {
                line.insert("span_fields".into(), Value::Object(spans));
            }
        }
        let cx = tracing::Span::current().context();
        let span_ref = cx.span();
        let sc = span_ref.span_context();
        if sc.is_valid() {
            line.insert("trace_id".into(), Value::String(sc.trace_id().to_string()));
            line.insert("span_id".into(), Value::String(sc.span_id().to_string()));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

struct FieldMap(Map<String, Value>);

impl tracing::field::Visit for FieldMap {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

/// Histogram buckets (seconds) for durations: 1 ms to 60 s, with 7.5 ms
/// so that a p95 near a 10 ms objective reads as more than "at most 10".
const DURATION_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
];
/// Buckets for claim and group-commit batch sizes.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns the
/// handle that renders the exposition text.
///
/// # Errors
///
/// Another global recorder is already installed.
pub fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = METRICS.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &DURATION_BUCKETS)
        .context("histogram buckets")?
        .set_buckets_for_metric(
            Matcher::Full("conveyor_claim_batch_size".into()),
            &BATCH_BUCKETS,
        )
        .context("histogram buckets")?
        .set_buckets_for_metric(
            Matcher::Full("conveyor_group_commit_size".into()),
            &BATCH_BUCKETS,
        )
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    let _ = METRICS.set(handle.clone());
    Ok(METRICS.get().cloned().unwrap_or(handle))
}

/// `GET /metrics` (Prometheus text format) and nothing else, unauthenticated:
/// for an address only the scraper can reach.
pub fn metrics_router(handle: PrometheusHandle) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    )
}

/// The listener an HTTP server of Conveyor's is served on: `addr` bound,
/// and `TCP_NODELAY` set on every connection it accepts. Without it a
/// response written in pieces (each event of a server-sent-event stream)
/// waits, piece after piece, for the client to acknowledge the last one,
/// which a client delaying its acknowledgements holds back for up to
/// 40 ms (200 ms on Windows).
///
/// # Errors
///
/// `addr` cannot be bound.
pub async fn bind_http(
    addr: SocketAddr,
) -> std::io::Result<impl Listener<Io = tokio::net::TcpStream, Addr = SocketAddr>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(listener.tap_io(|connection: &mut tokio::net::TcpStream| {
        if let Err(e) = connection.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY on an accepted connection");
        }
    }))
}

/// Serves [`metrics_router`] on `addr` until `shutdown`: for workers and
/// the API (`CONVEYOR_METRICS_LISTEN`).
///
/// # Errors
///
/// The address cannot be bound.
pub async fn serve_metrics(
    addr: SocketAddr,
    handle: PrometheusHandle,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let listener = bind_http(addr)
        .await
        .with_context(|| format!("binding CONVEYOR_METRICS_LISTEN {addr}"))?;
    tracing::info!(address = %addr, "serving metrics at /metrics");
    axum::serve(listener, metrics_router(handle))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving metrics")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        let mut listener = bind_http(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, peer) = listener.accept().await;
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(accepted.nodelay().unwrap());
    }
}
