//! Secrets stay out of responses and logs.

use std::sync::{Arc, Mutex, OnceLock};

use axum::http::{Method, StatusCode};
use conveyor_engine::store::access;
use serde_json::json;
use sqlx::PgPool;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{PLANTED, PLANTED_2, RunningWorker, api, assert_no_planted};

/// Everything logged by this process (the subscriber is global: tests run
/// in their own process under nextest, and planted values are unique).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

fn capture_logs() -> Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        // Everything, at every level, except the test's own stub server.
        let filter = tracing_subscriber::EnvFilter::new("trace,wiremock=off");
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(logs.clone())
            .with_ansi(false)
            .try_init()
            .expect("no other subscriber in this test binary");
        logs
    })
    .clone()
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn secrets_never_reach_responses_or_logs(pool: PgPool) {
    let logs = capture_logs();
    let api = api(pool.clone());
    let a = api.token("ws_a", "alice");
    let mut bodies: Vec<String> = Vec::new();

    // A careless third party that echoes the secret back everywhere.
    let stub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/echo"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-echo", PLANTED)
                .set_body_json(
                    json!({"echo": PLANTED, "id": "e-1", "note": format!("you sent {PLANTED}")}),
                ),
        )
        .mount(&stub)
        .await;
    Mock::given(method("GET"))
        .and(path("/deny"))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("www-authenticate", format!("Basic realm=\"{PLANTED_2}\""))
                .set_body_string(format!("password {PLANTED_2} refused for token {PLANTED}")),
        )
        .mount(&stub)
        .await;

    let put = api
        .put_credential(&a, "crm", json!({"token": PLANTED}))
        .await;
    bodies.push(put.text);
    let put = api
        .put_credential(
            &a,
            "legacy",
            json!({"username": "svc", "password": PLANTED_2}),
        )
        .await;
    bodies.push(put.text);
    // Replacing answers metadata too.
    let put = api
        .put_credential(&a, "crm", json!({"token": PLANTED}))
        .await;
    bodies.push(put.text);

    let base = stub.uri();
    let once =
        json!({"max_attempts": 1, "initial_delay_ms": 10, "max_delay_ms": 10, "multiplier": 1.0});
    let echo = api
        .create_connector(
            &a,
            json!({
                "name": "echo", "retry": once,
                "steps": [{"name": "send", "method": "POST", "url": format!("{base}/echo"),
                           "auth": {"type": "bearer", "credential": "crm"},
                           "headers": {"x-api-key": "<<credentials.crm.token>>"},
                           "query": {"key": "<<credentials.crm.token>>"},
                           "body": {"type": "json", "content": {"secret": "<<credentials.crm.token>>",
                                                                "pw": "<<credentials.legacy.password>>"}},
                           "extract": {"echo": "$.echo", "id": "$.id"}}],
                "output": {"echo": "<<steps.send.extract.echo>>", "id": "<<steps.send.extract.id>>"}
            }),
        )
        .await;
    let deny = api
        .create_connector(
            &a,
            json!({
                "name": "deny", "retry": once,
                "steps": [{"name": "login", "method": "GET",
                           "url": format!("{base}/deny?t=<<credentials.crm.token>>"),
                           "auth": {"type": "basic", "credential": "legacy"}}]
            }),
        )
        .await;

    let worker = RunningWorker::start(&pool, &api.keyring);
    let echoed = api.execute(&a, &echo, json!({})).await;
    let denied = api.execute(&a, &deny, json!({})).await;
    let echoed_final = api.wait_final(&a, &echoed).await;
    let denied_final = api.wait_final(&a, &denied).await;
    let rerun = api
        .post(&format!("/api/v1/executions/{denied}/rerun"), &a, json!({}))
        .await;
    assert_eq!(rerun.status, StatusCode::ACCEPTED, "{}", rerun.text);
    let rerun_final = api.wait_final(&a, &rerun.id()).await;
    worker.stop().await;

    assert_eq!(
        echoed_final.json["status"], "succeeded",
        "{}",
        echoed_final.text
    );
    assert_eq!(echoed_final.json["output"]["id"], "e-1");
    assert_eq!(
        denied_final.json["status"], "failed",
        "{}",
        denied_final.text
    );
    assert_eq!(rerun_final.json["status"], "failed", "{}", rerun_final.text);
    assert_eq!(
        stub.received_requests().await.expect("recording").len(),
        3,
        "the third party was called with the real values"
    );
    let received = stub.received_requests().await.expect("recording");
    let sent = received
        .iter()
        .find(|r| r.url.path() == "/echo")
        .expect("the echo step ran");
    assert!(String::from_utf8_lossy(&sent.body).contains(PLANTED));

    bodies.extend([
        echoed_final.text,
        denied_final.text,
        rerun.text,
        rerun_final.text,
    ]);
    for path in [
        format!("/api/v1/executions/{echoed}/events"),
        format!("/api/v1/executions/{denied}/events"),
        format!("/api/v1/executions/{echoed}/events?format=json"),
        format!("/api/v1/executions/{denied}/events?format=json"),
        "/api/v1/executions".to_owned(),
        "/api/v1/executions?status=failed".to_owned(),
        format!("/api/v1/connectors/{echo}"),
        format!("/api/v1/connectors/{deny}/executions"),
        format!("/api/v1/connectors/{deny}/stats"),
        "/api/v1/connectors".to_owned(),
        "/api/v1/credentials".to_owned(),
        "/api/v1/credentials/crm".to_owned(),
        "/api/v1/credentials/legacy".to_owned(),
        "/api/v1/audit".to_owned(),
    ] {
        let reply = api.get(&path, &a).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        bodies.push(reply.text);
    }
    access::add_admin(&pool, "root").await.expect("admin");
    let root = api.token("ws_ops", "root");
    for path in [
        "/api/v1/admin/executions",
        "/api/v1/admin/audit",
        "/api/v1/admin/stats",
        "/api/v1/admin/workspaces/ws_a/usage",
    ] {
        let reply = api.get(path, &root).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        bodies.push(reply.text);
    }
    // A rejected credential body does not echo its value either.
    let rejected = api
        .call(
            Method::PUT,
            "/api/v1/credentials/crm",
            Some(&a),
            Some(json!({"data": {"token": 1, PLANTED: "x"}})),
        )
        .await;
    assert_eq!(rejected.status, StatusCode::UNPROCESSABLE_ENTITY);
    bodies.push(rejected.text);

    for body in &bodies {
        assert_no_planted("a response", body);
    }

    // The logs were captured (requests, the worker's steps) and hold no secret.
    let logged = logs.text();
    assert!(
        logged.contains("request finished"),
        "no request logs captured"
    );
    assert!(logged.contains(&denied), "no execution logs captured");
    for (n, line) in logged.lines().enumerate() {
        assert_no_planted(&format!("log line {n}"), line);
    }
}
