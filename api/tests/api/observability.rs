//! Observability end to end: traces exported over OTLP/HTTP by a real
//! `conveyor-api` and a separate `conveyor-worker` process into an
//! in-process receiver; `/metrics`; the event log for late subscribers; and
//! an unreachable collector that must not hurt executions.
//!
//! The worker binary is the one built beside `conveyor-api` (run the whole
//! workspace, as `scripts/test` does, so it exists).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use conveyor_engine::state::ExecutionStatus;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::{Value, json};
use sqlx::PgPool;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const JWT_SECRET: &str = "observability-tests-secret-0123456789abcdef";
const PLANTED: &str = "sk_live_PLANTED_otel_secret_42";

/// Kills its processes when dropped.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn worker_binary() -> PathBuf {
    let api = PathBuf::from(env!("CARGO_BIN_EXE_conveyor-api"));
    let worker = api.with_file_name("conveyor-worker");
    assert!(
        worker.exists(),
        "{} is missing: build the workspace (cargo build --workspace) first",
        worker.display()
    );
    worker
}

/// An OTLP/HTTP receiver keeping every request body.
async fn receiver() -> (String, Arc<Mutex<Vec<Bytes>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().expect("lock").push(body);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), bodies)
}

/// Starts `conveyor-api` and one `conveyor-worker` against `pool`'s
/// database, exporting to `otlp`; returns the API's base URL.
/// With `worker_log`, the worker writes JSON log lines at INFO there.
fn start(
    pool: &PgPool,
    otlp: &str,
    key: &conveyor_engine::crypto::Key,
    worker_log: Option<&std::path::Path>,
) -> (Processes, String) {
    let url = conveyor_tests::database_url(pool);
    let key = key.to_base64();
    let port = conveyor_tests::free_port();
    let common = |cmd: &mut Command, service: &str| {
        cmd.env("DATABASE_URL", &url)
            .env("CONVEYOR_ENCRYPTION_KEY", &key)
            .env("CONVEYOR_JWT_SECRET", JWT_SECRET)
            .env("CONVEYOR_ALLOW_PRIVATE_NETWORKS", "true")
            .env("CONVEYOR_POLL_INTERVAL_MS", "100")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
            .env("OTEL_SERVICE_NAME", service)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    let mut api = Command::new(env!("CARGO_BIN_EXE_conveyor-api"));
    api.arg("serve")
        .env("CONVEYOR_LISTEN", format!("127.0.0.1:{port}"));
    common(&mut api, "conveyor-api");
    let mut worker = Command::new(worker_binary());
    worker.env("CONVEYOR_AUTO_MIGRATE", "false");
    common(&mut worker, "conveyor-worker");
    if let Some(path) = worker_log {
        let file = std::fs::File::create(path).expect("log file");
        worker
            .env("CONVEYOR_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stderr(file);
    }
    let mut procs = Processes(vec![api.spawn().expect("api")]);
    procs.0.push(worker.spawn().expect("worker"));
    (procs, format!("http://127.0.0.1:{port}"))
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the API never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a credential and a 2-step connector calling `stub`, executes it
/// with a `traceparent` of our own, and waits for success.
async fn run_two_steps(
    http: &reqwest::Client,
    base: &str,
    stub: &str,
    token: &str,
) -> (String, String) {
    let auth = format!("Bearer {token}");
    let r = http
        .post(format!("{base}/api/v1/connectors"))
        .header("authorization", &auth)
        .json(&json!({"name": "traced", "steps": [
            {"name": "first", "method": "POST", "url": format!("{stub}/first?api_key=<<credentials.crm.token>>"),
             "auth": {"type": "bearer", "credential": "crm"}, "extract": {"id": "$.id"}},
            {"name": "second", "method": "GET", "url": format!("{stub}/second/<<steps.first.extract.id>>")}]}))
        .send()
        .await
        .expect("connector");
    assert_eq!(r.status(), 201);
    let connector: Value = r.json().await.expect("json");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = http
        .post(format!(
            "{base}/api/v1/connectors/{}/execute",
            connector["id"].as_str().expect("id")
        ))
        .header("authorization", &auth)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"input": {}}))
        .send()
        .await
        .expect("execute");
    assert_eq!(r.status(), 202);
    let execution: Value = r.json().await.expect("json");
    let id = execution["id"].as_str().expect("id").to_owned();
    let started = Instant::now();
    loop {
        let e: Value = http
            .get(format!("{base}/api/v1/executions/{id}"))
            .header("authorization", &auth)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if e["status"] == json!("succeeded") {
            break;
        }
        assert!(
            !matches!(e["status"].as_str(), Some("failed" | "cancelled")),
            "{e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still {}",
            e["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (id, trace_id.to_owned())
}

/// Stores the credential the connector uses, sealed with the processes' key.
async fn plant_credential(pool: &PgPool, key: &conveyor_engine::crypto::Key) {
    let keyring = conveyor_engine::crypto::Keyring::new(key.clone(), []);
    let fields = std::collections::BTreeMap::from([("token".to_owned(), PLANTED.to_owned())]);
    conveyor_engine::store::credentials::put(pool, &keyring, "ws_otel", "crm", &fields)
        .await
        .expect("credential");
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            AnyValue::BoolValue(b) => Some(b.to_string()),
            AnyValue::DoubleValue(d) => Some(d.to_string()),
            _ => None,
        })
}

fn decode(bodies: &[Bytes]) -> Vec<Span> {
    bodies
        .iter()
        .flat_map(|b| {
            ExportTraceServiceRequest::decode(b.as_ref())
                .expect("OTLP protobuf")
                .resource_spans
        })
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .collect()
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn one_trace_runs_from_the_api_request_to_the_last_step(pool: PgPool) {
    let stub = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "c-7"})))
        .mount(&stub)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&stub)
        .await;
    let (otlp, bodies) = receiver().await;
    let key = conveyor_engine::crypto::Key::generate();
    plant_credential(&pool, &key).await;
    let log_path =
        std::env::temp_dir().join(format!("conveyor-worker-{}.log", uuid::Uuid::now_v7()));
    let (_procs, base) = start(&pool, &otlp, &key, Some(&log_path));
    let http = reqwest::Client::new();
    wait_ready(&http, &base).await;
    let auth = conveyor_api::auth::Authenticator::new(JWT_SECRET).expect("secret");
    let token = auth
        .mint("ws_otel", "u1", Duration::from_secs(600))
        .expect("token");
    let (execution_id, trace_id) = run_two_steps(&http, &base, &stub.uri(), &token).await;

    // Wait until the execution and both step spans have been exported.
    let started = Instant::now();
    let spans = loop {
        let spans = decode(&bodies.lock().expect("lock"));
        let api_done = spans
            .iter()
            .any(|s| attr(s, "http.route").as_deref() == Some("/api/v1/connectors/{id}/execute"));
        if api_done
            && spans.iter().filter(|s| s.name == "step").count() >= 2
            && spans.iter().any(|s| s.name == "execution")
        {
            break spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "spans never arrived: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let api_span = spans
        .iter()
        .find(|s| attr(s, "http.route").as_deref() == Some("/api/v1/connectors/{id}/execute"))
        .expect("the API request span");
    assert_eq!(api_span.name, "POST /api/v1/connectors/{id}/execute");
    assert_eq!(
        hex(&api_span.trace_id),
        trace_id,
        "the API continues the caller's trace"
    );
    assert_eq!(
        attr(api_span, "http.route").as_deref(),
        Some("/api/v1/connectors/{id}/execute")
    );
    assert_eq!(
        attr(api_span, "http.response.status_code").as_deref(),
        Some("202")
    );
    let execution = spans
        .iter()
        .find(|s| s.name == "execution")
        .expect("execution span");
    assert_eq!(
        hex(&execution.trace_id),
        trace_id,
        "one trace from request to last step"
    );
    assert_eq!(
        execution.parent_span_id, api_span.span_id,
        "the API span is the execution's parent"
    );
    assert_eq!(
        attr(execution, "execution.id").as_deref(),
        Some(execution_id.as_str())
    );
    assert!(attr(execution, "connector.id").is_some() && attr(execution, "workspace.id").is_some());
    let steps: Vec<&Span> = spans.iter().filter(|s| s.name == "step").collect();
    for step in &steps {
        assert_eq!(
            step.parent_span_id, execution.span_id,
            "steps are children of the execution"
        );
        assert_eq!(
            attr(step, "http.response.status_code").as_deref(),
            Some("200")
        );
        assert!(attr(step, "http.request.method").is_some());
        let url = attr(step, "url.full").expect("url.full");
        assert!(!url.contains("c-7") || url.contains("/second/"), "{url}");
    }
    let first = steps
        .iter()
        .find(|s| attr(s, "step.name").as_deref() == Some("first"))
        .expect("first step");
    assert!(
        attr(first, "url.full")
            .expect("url")
            .ends_with("api_key=REDACTED")
    );
    // Outbound requests carried the trace on.
    let received = stub.received_requests().await.expect("recording");
    for r in &received {
        let tp = r
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(tp.contains(&trace_id), "outbound traceparent `{tp}`");
    }
    // JSON log lines inside the execution span carry its trace and fields.
    let log = std::fs::read_to_string(&log_path).expect("worker log");
    let _ = std::fs::remove_file(&log_path);
    let traced: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["trace_id"] == json!(trace_id))
        .collect();
    assert!(
        traced
            .iter()
            .any(|l| l["span_fields"]["execution.id"] == json!(execution_id)
                && l["span_id"].is_string()),
        "no JSON log line carries the trace: {log}"
    );
    assert!(!log.contains(PLANTED), "a secret reached the logs");
    let all: Vec<u8> = bodies
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|b| b.to_vec())
        .collect();
    assert!(
        !all.windows(PLANTED.len()).any(|w| w == PLANTED.as_bytes()),
        "a secret reached the exported spans"
    );
    // Each process's sessions say which process, and which of its
    // connections, they are.
    let sessions: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT application_name FROM pg_stat_activity
         WHERE datname = current_database() AND application_name <> '' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("sessions");
    assert_eq!(
        sessions,
        [
            "conveyor-api",
            "conveyor-api enqueue",
            "conveyor-api readiness",
            "conveyor-worker",
            "conveyor-worker claims",
            "conveyor-worker commits"
        ]
    );

    // A batch is one request, one span: every item carries its context.
    let connector: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM connectors WHERE workspace_id = 'ws_otel'")
            .fetch_one(&pool)
            .await
            .expect("connector");
    let batch_trace = "0af7651916cd43dd8448eb211c80319c";
    let r = http
        .post(format!(
            "{base}/api/v1/connectors/{connector}/execute/batch"
        ))
        .header("authorization", format!("Bearer {token}"))
        .header(
            "traceparent",
            format!("00-{batch_trace}-b7ad6b7169203331-01"),
        )
        .json(&json!({"items": [{"input": {}}, {"input": {}}, {"input": {}}]}))
        .send()
        .await
        .expect("batch");
    assert_eq!(r.status(), 202);
    let ids: Vec<uuid::Uuid> =
        serde_json::from_value(r.json::<Value>().await.expect("json")["ids"].clone()).expect("ids");
    let carried: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT trace_context->>'traceparent' FROM connector_executions WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .await
    .expect("trace contexts");
    assert_eq!(carried.len(), 3);
    let first = carried[0].clone().expect("a trace context");
    assert!(first.contains(batch_trace), "{first}");
    assert!(
        carried.iter().all(|c| c.as_deref() == Some(first.as_str())),
        "{carried:?}"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn an_unreachable_collector_does_not_hurt_executions(pool: PgPool) {
    let stub = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "x"})))
        .mount(&stub)
        .await;
    let closed = format!("http://127.0.0.1:{}", conveyor_tests::free_port());
    let key = conveyor_engine::crypto::Key::generate();
    plant_credential(&pool, &key).await;
    let (_procs, base) = start(&pool, &closed, &key, None);
    let http = reqwest::Client::new();
    wait_ready(&http, &base).await;
    let auth = conveyor_api::auth::Authenticator::new(JWT_SECRET).expect("secret");
    let token = auth
        .mint("ws_otel", "u1", Duration::from_secs(600))
        .expect("token");
    let started = Instant::now();
    let (id, _) = run_two_steps(&http, &base, &stub.uri(), &token).await;
    assert!(!id.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// The in-process API plus a real in-process worker over one database.
struct InProcess {
    api: conveyor_tests::api::TestApi,
    token: String,
    harness: conveyor_tests::Harness,
}

impl InProcess {
    fn new(pool: PgPool) -> Self {
        let harness = conveyor_tests::Harness::new(pool.clone());
        let api = conveyor_tests::api::TestApi::with_keyring(
            pool,
            harness.keyring.clone(),
            conveyor_api::ApiConfig {
                metrics_token: Some(crate::metrics::TOKEN.into()),
                ..conveyor_api::ApiConfig::default()
            },
        );
        let token = api.token(conveyor_tests::WS, "u1");
        Self {
            api,
            token,
            harness,
        }
    }

    async fn connector(&self, definition: Value) -> String {
        self.api.create_connector(&self.token, definition).await
    }

    async fn execute(&self, connector: &str) -> uuid::Uuid {
        self.api
            .execute(&self.token, connector, json!({}))
            .await
            .parse()
            .expect("uuid")
    }
}

/// Parses the Prometheus text exposition format strictly: every line is a
/// comment (`# HELP`/`# TYPE`), blank, or `name{labels} value`.
pub(crate) fn parse_exposition(
    text: &str,
) -> Vec<(String, std::collections::BTreeMap<String, String>, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "bad comment line: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), std::collections::BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let mut labels = std::collections::BTreeMap::new();
                for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in: {line}"));
                    labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {name}"
        );
        samples.push((name, labels, value));
    }
    samples
}

fn sample(
    samples: &[(String, std::collections::BTreeMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn metrics_count_a_retry_and_a_failure(pool: PgPool) {
    let app = InProcess::new(pool);
    let stub = MockServer::start().await;
    Mock::given(wiremock::matchers::path("/flaky"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&stub)
        .await;
    Mock::given(wiremock::matchers::path("/flaky"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&stub)
        .await;
    Mock::given(wiremock::matchers::path("/broken"))
        .respond_with(ResponseTemplate::new(400))
        .mount(&stub)
        .await;
    let flaky = app
        .connector(json!({"name": "flaky", "retry": {"max_attempts": 2, "initial_delay_ms": 10, "max_delay_ms": 10},
            "steps": [{"name": "call", "method": "GET", "url": format!("{}/flaky", stub.uri())}]}))
        .await;
    let broken = app
        .connector(json!({"name": "broken",
            "steps": [{"name": "call", "method": "GET", "url": format!("{}/broken", stub.uri())}]}))
        .await;
    let a = app.execute(&flaky).await;
    let b = app.execute(&broken).await;
    assert_eq!(
        app.harness
            .run_until_final(a, Duration::from_secs(20))
            .await
            .status,
        ExecutionStatus::Succeeded
    );
    assert_eq!(
        app.harness
            .run_until_final(b, Duration::from_secs(20))
            .await
            .status,
        ExecutionStatus::Failed
    );

    let metrics = app.api.get("/metrics", crate::metrics::TOKEN).await;
    assert_eq!(metrics.status.as_u16(), 200, "{}", metrics.text);
    let samples = parse_exposition(&metrics.text);
    let f = flaky.as_str();
    let x = broken.as_str();
    assert_eq!(
        sample(
            &samples,
            "conveyor_executions_finished_total",
            &[("connector", f), ("status", "succeeded")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            "conveyor_executions_finished_total",
            &[("connector", x), ("status", "failed")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            "conveyor_retries_scheduled_total",
            &[("connector", f), ("step", "call")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            "conveyor_steps_total",
            &[("connector", f), ("outcome", "retry_scheduled")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            "conveyor_steps_total",
            &[("connector", f), ("outcome", "succeeded")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            "conveyor_steps_total",
            &[("connector", x), ("outcome", "failed")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            "conveyor_step_duration_seconds_count",
            &[("connector", f), ("step", "call")]
        ),
        2.0
    );
    assert!(
        sample(
            &samples,
            "conveyor_outbound_responses_total",
            &[("class", "5xx")]
        ) >= 1.0
    );
    assert!(
        sample(
            &samples,
            "conveyor_outbound_responses_total",
            &[("class", "4xx")]
        ) >= 1.0
    );
    assert!(sample(&samples, "conveyor_executions_enqueued_total", &[]) >= 2.0);
    let route = "/api/v1/connectors/{id}/execute";
    assert!(
        sample(
            &samples,
            "conveyor_http_request_duration_seconds_count",
            &[("route", route), ("status", "2xx")]
        ) >= 2.0
    );
    assert!(
        samples.iter().all(|(_, l, _)| !l
            .values()
            .any(|v| v.contains(&a.to_string()) || v.contains(&b.to_string()))),
        "execution ids must never be label values"
    );
    assert!(
        !samples.iter().any(|(_, l, _)| l.contains_key("workspace")),
        "workspace labels are off by default"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_late_subscriber_receives_the_whole_event_history(pool: PgPool) {
    let app = InProcess::new(pool);
    let stub = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&stub)
        .await;
    let connector = app
        .connector(json!({"name": "two", "steps": [
            {"name": "a", "method": "GET", "url": format!("{}/a", stub.uri())},
            {"name": "b", "method": "GET", "url": format!("{}/b", stub.uri())}]}))
        .await;
    let id = app.execute(&connector).await;
    assert_eq!(
        app.harness
            .run_until_final(id, Duration::from_secs(20))
            .await
            .status,
        ExecutionStatus::Succeeded
    );

    let expected = [
        "enqueued",
        "claimed",
        "step_started",
        "step_finished",
        "step_started",
        "step_finished",
        "finished",
    ];
    let events = format!("/api/v1/executions/{id}/events");
    let stored = app
        .api
        .get(&format!("{events}?format=json"), &app.token)
        .await;
    assert_eq!(stored.status.as_u16(), 200, "{}", stored.text);
    let kinds: Vec<&str> = stored.json["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, expected);

    // The stream replays the same history, then the final status, and ends.
    let reply = app.api.get(&events, &app.token).await;
    assert_eq!(reply.status.as_u16(), 200);
    let stream = reply.text;
    let names: Vec<&str> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    let mut replay: Vec<&str> = expected.to_vec();
    replay.push("status");
    assert_eq!(names, replay, "{stream}");
    assert!(stream.contains("\"status\":\"succeeded\""), "{stream}");
}
