//! The HTTP API's contract (issue "HTTP API", section "Tests"), against a
//! real PostgreSQL per test: an end-to-end run through HTTP only (a real
//! listener on port 0, a real worker, a wiremock third party, SSE), the
//! workspace isolation matrix, authentication, malformed JSON (the rest of
//! rejected input is in `bad_input`), idempotency, secrets kept out of
//! responses and logs, pagination, and the OpenAPI document.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine as _;
use conveyor_api::ApiConfig;
use conveyor_api::auth::{Authenticator, Claims};
use conveyor_engine::crypto::Keyring;
use conveyor_engine::store::access;
use conveyor_tests::api::{JWT_SECRET, Reply, TestApi, WAIT};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Planted as a credential value; must never appear in a response or log.
pub(crate) const PLANTED: &str = "pl4nted-tok3n-5c81e0d2";
/// A second planted value (a password).
const PLANTED_2: &str = "pl4nted-passw0rd-a7f3b9";

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Test settings: no rate limit (these tests are about other things).
pub(crate) fn config() -> ApiConfig {
    ApiConfig {
        rate_limit_per_sec: 0,
        ..ApiConfig::default()
    }
}

/// The API over a test database, with `config()`.
pub(crate) fn api(pool: PgPool) -> TestApi {
    TestApi::with_config(pool, config())
}

/// A real worker running in the background until stopped.
struct RunningWorker {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    fn start(pool: &PgPool, keyring: &Arc<Keyring>) -> Self {
        let worker = conveyor_tests::worker(pool, keyring, conveyor_tests::test_worker_config("w"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker.run(stop.clone()));
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the worker stops")
            .expect("the worker task ends cleanly");
    }
}

/// The API served on a real loopback listener (port 0).
struct Served {
    base: String,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    async fn start(router: axum::Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        });
        Self { base, task }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client of a [`Served`] API that keeps every body it receives.
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    seen: Vec<String>,
}

impl Client {
    async fn call(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("send");
        let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
        let text = response.text().await.expect("text");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        self.seen.push(text);
        (status, json)
    }

    /// Follows `GET /executions/{id}/events` until the server ends the
    /// stream; returns the raw text. `started` runs once the first event
    /// has arrived (the stream has read the execution's state).
    async fn follow(&mut self, id: &str, started: impl FnOnce()) -> String {
        let mut response = self
            .http
            .get(format!("{}/api/v1/executions/{id}/events", self.base))
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("events");
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let mut bytes = Vec::new();
        let mut started = Some(started);
        tokio::time::timeout(WAIT, async {
            while let Some(chunk) = response.chunk().await.expect("chunk") {
                bytes.extend_from_slice(&chunk);
                // The first event is out: the stream has read the state.
                if let Some(started) = started.take() {
                    started();
                }
            }
        })
        .await
        .expect("the stream ends after the final status");
        let text = String::from_utf8(bytes).expect("utf-8");
        self.seen.push(text.clone());
        text
    }
}

/// `(event name, data)` of each event of an SSE text; comments skipped.
fn sse_events(text: &str) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut name = "message".to_owned();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event:") {
                n.trim().clone_into(&mut name);
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        if !data.is_empty() {
            let value = serde_json::from_str(&data).unwrap_or(Value::String(data));
            events.push((name, value));
        }
    }
    events
}

pub(crate) fn assert_no_planted(what: &str, text: &str) {
    for planted in [PLANTED, PLANTED_2] {
        assert!(
            !text.contains(planted),
            "a planted secret appears in {what}: {text}"
        );
    }
}

/// Row counts of every table a request could write.
pub(crate) async fn row_counts(pool: &PgPool) -> BTreeMap<&'static str, i64> {
    const COUNTS: [(&str, &str); 9] = [
        ("workspaces", "SELECT count(*) FROM workspaces"),
        ("connectors", "SELECT count(*) FROM connectors"),
        (
            "connector_versions",
            "SELECT count(*) FROM connector_versions",
        ),
        (
            "connector_executions",
            "SELECT count(*) FROM connector_executions",
        ),
        ("execution_steps", "SELECT count(*) FROM execution_steps"),
        ("execution_events", "SELECT count(*) FROM execution_events"),
        (
            "workspace_api_credentials",
            "SELECT count(*) FROM workspace_api_credentials",
        ),
        (
            "workspace_api_keys",
            "SELECT count(*) FROM workspace_api_keys",
        ),
        ("audit_log", "SELECT count(*) FROM audit_log"),
    ];
    let mut counts = BTreeMap::new();
    for (table, sql) in COUNTS {
        let n: i64 = sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .expect("count");
        counts.insert(table, n);
    }
    counts
}

/// A one-step connector against `base` (which need not answer).
pub(crate) fn simple_connector(base: &str) -> Value {
    json!({"name": "ping", "steps": [{"name": "ping", "method": "GET", "url": format!("{base}/ping")}]})
}

/// Seconds since the epoch.
fn now_secs() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).expect("after 1970")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sign(header: &Header, claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret.as_bytes()))
        .expect("sign")
}

// ---------------------------------------------------------------------------
// 1. End to end through HTTP only
// ---------------------------------------------------------------------------

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_connector_runs_end_to_end_through_http_only(pool: PgPool) {
    let api = api(pool.clone());
    let served = Served::start(api.router.clone()).await;
    let mut client = Client {
        http: reqwest::Client::new(),
        base: served.base.clone(),
        token: api.token("ws_e2e", "alice"),
        seen: Vec::new(),
    };

    // The third party answers only with the credential's bearer token.
    let stub = MockServer::start().await;
    let bearer = format!("Bearer {PLANTED}");
    Mock::given(method("POST"))
        .and(path("/contacts"))
        .and(header("authorization", bearer.as_str()))
        .and(body_json(json!({"email": "ada@example.com"})))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "c-42"})))
        .mount(&stub)
        .await;
    Mock::given(method("GET"))
        .and(path("/contacts/c-42"))
        .and(header("authorization", bearer.as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "c-42", "properties": {"name": "Ada Lovelace"}})),
        )
        .mount(&stub)
        .await;
    Mock::given(method("POST"))
        .and(path("/notes"))
        .and(header("authorization", bearer.as_str()))
        .and(body_json(
            json!({"contact": "c-42", "text": "Welcome, Ada Lovelace"}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"note_id": 7})))
        .mount(&stub)
        .await;

    let (status, credential) = client
        .call(
            reqwest::Method::PUT,
            "/api/v1/credentials/crm",
            Some(json!({"data": {"token": PLANTED}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{credential}");
    assert_eq!(credential["auth_kind"], "bearer");

    let base = stub.uri();
    let auth = json!({"type": "bearer", "credential": "crm"});
    let (status, created) = client
        .call(
            reqwest::Method::POST,
            "/api/v1/connectors",
            Some(json!({
                "name": "CRM onboarding",
                "input_schema": {"type": "object", "required": ["email"],
                                 "properties": {"email": {"type": "string"}}},
                "steps": [
                    {"name": "create", "method": "POST", "url": format!("{base}/contacts"), "auth": auth,
                     "body": {"type": "json", "content": {"email": "<<input.email>>"}},
                     "extract": {"id": "$.id"}},
                    {"name": "read", "method": "GET",
                     "url": format!("{base}/contacts/<<steps.create.extract.id>>"), "auth": auth,
                     "extract": {"name": {"path": "$.properties.name", "required": true}}},
                    {"name": "note", "method": "POST", "url": format!("{base}/notes"), "auth": auth,
                     "body": {"type": "json", "content": {
                         "contact": "<<steps.create.extract.id>>",
                         "text": "Welcome, <<steps.read.extract.name>>"}},
                     "extract": {"note_id": "$.note_id"}}
                ],
                "output": {"contact_id": "<<steps.create.extract.id>>",
                           "name": "<<steps.read.extract.name>>",
                           "note_id": "<<steps.note.extract.note_id>>"}
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["version"], 1);
    let connector = created["id"].as_str().expect("id").to_owned();

    let (status, queued) = client
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/connectors/{connector}/execute"),
            Some(json!({"input": {"email": "ada@example.com"}})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    assert_eq!(queued["status"], "queued");
    let id = queued["id"].as_str().expect("id").to_owned();

    // Subscribe first, then start the worker: the stream sees it live.
    let mut worker = None;
    let stream = client
        .follow(&id, || {
            worker = Some(RunningWorker::start(&pool, &api.keyring))
        })
        .await;
    worker.expect("started").stop().await;

    let events = sse_events(&stream);
    let statuses: Vec<&str> = events
        .iter()
        .filter(|(name, _)| name == "status")
        .map(|(_, data)| data["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses.first(), Some(&"queued"), "{stream}");
    assert_eq!(statuses.last(), Some(&"succeeded"), "{stream}");
    let (last_name, last) = events.last().expect("events");
    assert_eq!(last_name, "status", "the stream ends with the final status");
    assert_eq!(
        last["output"],
        json!({"contact_id": "c-42", "name": "Ada Lovelace", "note_id": 7})
    );
    let finished_steps = events
        .iter()
        .filter(|(name, _)| name == "step_finished")
        .count();
    assert_eq!(finished_steps, 3, "every step result is streamed: {stream}");
    let kinds: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        kinds.iter().rev().nth(1),
        Some(&"finished"),
        "the stored `finished` event precedes the final status: {stream}"
    );

    let (status, execution) = client
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/executions/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(execution["status"], "succeeded", "{execution}");
    assert_eq!(execution["input"], json!({"email": "ada@example.com"}));
    assert_eq!(
        execution["output"],
        json!({"contact_id": "c-42", "name": "Ada Lovelace", "note_id": 7})
    );
    assert!(execution["error"].is_null());
    let steps = execution["steps"].as_array().expect("steps");
    let seen: Vec<(&str, i64, &str)> = steps
        .iter()
        .map(|s| {
            (
                s["step_name"].as_str().expect("name"),
                s["attempt"].as_i64().expect("attempt"),
                s["outcome"].as_str().expect("outcome"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("create", 1, "succeeded"),
            ("read", 1, "succeeded"),
            ("note", 1, "succeeded")
        ]
    );
    let expected = [
        (
            "POST",
            format!("{base}/contacts"),
            201,
            json!({"id": "c-42"}),
            json!({"id": "c-42"}),
        ),
        (
            "GET",
            format!("{base}/contacts/c-42"),
            200,
            json!({"id": "c-42", "properties": {"name": "Ada Lovelace"}}),
            json!({"name": "Ada Lovelace"}),
        ),
        (
            "POST",
            format!("{base}/notes"),
            200,
            json!({"note_id": 7}),
            json!({"note_id": 7}),
        ),
    ];
    for (step, (verb, url, code, body, extracted)) in steps.iter().zip(expected) {
        assert_eq!(step["request"]["method"], verb, "{step}");
        assert_eq!(step["request"]["url"], json!(url), "{step}");
        assert_eq!(
            step["request"]["headers"]["authorization"], "[REDACTED]",
            "{step}"
        );
        assert_eq!(step["response_status"], code, "{step}");
        assert_eq!(step["response_body"], body, "{step}");
        assert_eq!(step["extracted"], extracted, "{step}");
        assert!(step["duration_ms"].is_number(), "{step}");
        assert!(step["error"].is_null(), "{step}");
    }

    // The history lists it, and the third party got the real token.
    let (_, listed) = client
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/connectors/{connector}/executions"),
            None,
        )
        .await;
    assert_eq!(listed["items"][0]["id"], json!(id));
    let received = stub.received_requests().await.expect("recording");
    assert_eq!(received.len(), 3);

    for text in &client.seen {
        assert_no_planted("a response or the event stream", text);
    }
}

// ---------------------------------------------------------------------------
// 2. Workspace isolation
// ---------------------------------------------------------------------------

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn workspace_b_gets_404_for_everything_of_workspace_a(pool: PgPool) {
    let api = api(pool);
    let a = api.token("ws_a", "alice");
    let b = api.token("ws_b", "bob");
    let definition = simple_connector("http://127.0.0.1:9");

    let connector = api.create_connector(&a, definition.clone()).await;
    let execution = api.execute(&a, &connector, json!({})).await;
    api.put_credential(&a, "crm", json!({"token": PLANTED}))
        .await;
    let key = api
        .post("/api/v1/api-keys", &a, json!({"name": "a-ci"}))
        .await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.text);
    let (key_id, a_key) = (key.id(), key.json["key"].as_str().expect("key").to_owned());
    let b_key = api
        .post("/api/v1/api-keys", &b, json!({"name": "b-ci"}))
        .await;
    let b_key = b_key.json["key"].as_str().expect("key").to_owned();
    let before = row_counts(&api.pool).await;
    let a_connector = api
        .get(&format!("/api/v1/connectors/{connector}"), &a)
        .await;

    let exec_body = json!({"input": {}});
    let batch_body = json!({"items": [{"input": {}}]});
    // (method, path of A's object, path of nothing, body)
    let missing = Uuid::now_v7();
    let matrix: Vec<(Method, String, String, Option<Value>)> = vec![
        (
            Method::GET,
            format!("/api/v1/connectors/{connector}"),
            format!("/api/v1/connectors/{missing}"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/connectors/{connector}?version=1"),
            format!("/api/v1/connectors/{missing}?version=1"),
            None,
        ),
        (
            Method::PUT,
            format!("/api/v1/connectors/{connector}"),
            format!("/api/v1/connectors/{missing}"),
            Some(definition.clone()),
        ),
        (
            Method::DELETE,
            format!("/api/v1/connectors/{connector}"),
            format!("/api/v1/connectors/{missing}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/connectors/{connector}/execute"),
            format!("/api/v1/connectors/{missing}/execute"),
            Some(exec_body.clone()),
        ),
        (
            Method::POST,
            format!("/api/v1/connectors/{connector}/execute/batch"),
            format!("/api/v1/connectors/{missing}/execute/batch"),
            Some(batch_body.clone()),
        ),
        (
            Method::GET,
            format!("/api/v1/connectors/{connector}/stats"),
            format!("/api/v1/connectors/{missing}/stats"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/connectors/{connector}/executions"),
            format!("/api/v1/connectors/{missing}/executions"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/connectors/{connector}/upgrade"),
            format!("/api/v1/connectors/{missing}/upgrade"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/executions/{execution}"),
            format!("/api/v1/executions/{missing}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/executions/{execution}/cancel"),
            format!("/api/v1/executions/{missing}/cancel"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/executions/{execution}/rerun"),
            format!("/api/v1/executions/{missing}/rerun"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/executions/{execution}/events"),
            format!("/api/v1/executions/{missing}/events"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/executions/{execution}/events?format=json"),
            format!("/api/v1/executions/{missing}/events?format=json"),
            None,
        ),
        (
            Method::GET,
            "/api/v1/credentials/crm".to_owned(),
            "/api/v1/credentials/nope".to_owned(),
            None,
        ),
        (
            Method::DELETE,
            "/api/v1/credentials/crm".to_owned(),
            "/api/v1/credentials/nope".to_owned(),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/v1/api-keys/{key_id}"),
            format!("/api/v1/api-keys/{missing}"),
            None,
        ),
    ];
    for token in [b.as_str(), b_key.as_str()] {
        for (verb, theirs, nothing, body) in &matrix {
            if token == b_key && theirs.starts_with("/api/v1/api-keys") {
                continue; // keys are managed by users only (403 first)
            }
            let reply = api
                .call(verb.clone(), theirs, Some(token), body.clone())
                .await;
            assert_eq!(
                reply.status,
                StatusCode::NOT_FOUND,
                "{verb} {theirs}: {}",
                reply.text
            );
            assert_eq!(reply.json["error"]["code"], "not_found", "{verb} {theirs}");
            // Exactly as if it did not exist.
            let absent = api
                .call(verb.clone(), nothing, Some(token), body.clone())
                .await;
            assert_eq!(absent.status, StatusCode::NOT_FOUND, "{verb} {nothing}");
            assert_eq!(reply.json, absent.json, "{verb} {theirs} vs {nothing}");
        }
    }

    // B's listings never show A's objects.
    for token in [b.as_str(), b_key.as_str()] {
        for list in [
            "/api/v1/connectors".to_owned(),
            "/api/v1/executions".to_owned(),
            format!("/api/v1/executions?connector_id={connector}"),
            "/api/v1/credentials".to_owned(),
            "/api/v1/api-keys".to_owned(),
            "/api/v1/audit".to_owned(),
        ] {
            let reply = api.get(&list, token).await;
            assert_eq!(reply.status, StatusCode::OK, "{list}: {}", reply.text);
            for theirs in [
                &connector, &execution, &key_id, "ws_a", "alice", "\"crm\"", "a-ci",
            ] {
                assert!(
                    !reply.text.contains(theirs),
                    "{list} shows {theirs}: {}",
                    reply.text
                );
            }
            assert_no_planted(&list, &reply.text);
        }
    }
    for empty in [
        "/api/v1/connectors",
        "/api/v1/executions",
        "/api/v1/credentials",
        "/api/v1/audit",
    ] {
        let reply = api.get(empty, &b).await;
        let items = reply.items();
        let foreign = items
            .iter()
            .filter(|i| i["action"] != "api_key.create")
            .count();
        assert_eq!(foreign, 0, "{empty}: {}", reply.text);
    }

    // Nothing of A changed, and nothing was written.
    assert_eq!(row_counts(&api.pool).await, before);
    let after = api
        .get(&format!("/api/v1/connectors/{connector}"), &a)
        .await;
    assert_eq!(after.json, a_connector.json);
    assert!(after.json["deleted_at"].is_null());
    let still = api
        .get(&format!("/api/v1/executions/{execution}"), &a)
        .await;
    assert_eq!(still.json["status"], "queued");
    assert_eq!(
        api.get("/api/v1/credentials/crm", &a).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.get("/api/v1/connectors", &a_key).await.status,
        StatusCode::OK
    );
    assert_eq!(api.get("/api/v1/executions", &a).await.items().len(), 1);

    // A's own listings do show them.
    let listed = api.get("/api/v1/connectors", &a).await;
    assert_eq!(listed.items().len(), 1);
    assert!(listed.text.contains(&connector));
}

// ---------------------------------------------------------------------------
// 3. Authentication
// ---------------------------------------------------------------------------

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn bad_tokens_are_401(pool: PgPool) {
    let api = api(pool);
    let good = api.token("ws_a", "alice");
    assert_eq!(
        api.get("/api/v1/connectors", &good).await.status,
        StatusCode::OK
    );

    let now = now_secs();
    let claims = |exp: u64| json!({"sub": "alice", "workspace_id": "ws_a", "exp": exp, "iat": now});
    let hs256 = Header::new(Algorithm::HS256);
    let other_secret = Authenticator::new("a-different-secret-of-at-least-32-bytes!")
        .expect("secret")
        .mint("ws_a", "alice", Duration::from_secs(600))
        .expect("token");
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(now + 600).to_string().as_bytes())
    );
    let mut tampered = good.clone();
    let end = tampered.len();
    tampered.replace_range(end - 4.., "AAAA");
    let swapped_claims = {
        // A valid header and signature over other claims.
        let parts: Vec<&str> = good.split('.').collect();
        let forged = b64(
            json!({"sub": "alice", "workspace_id": "ws_b", "exp": now + 600})
                .to_string()
                .as_bytes(),
        );
        format!("{}.{forged}.{}", parts[0], parts[2])
    };

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing header", None),
        (
            "basic scheme",
            Some("Basic YWxpY2U6cGFzc3dvcmQ=".to_owned()),
        ),
        ("bearer without token", Some("Bearer ".to_owned())),
        ("token without scheme", Some(good.clone())),
        ("malformed token", Some("Bearer not-a-jwt".to_owned())),
        ("three garbage parts", Some("Bearer a.b.c".to_owned())),
        ("wrong signature", Some(format!("Bearer {other_secret}"))),
        ("tampered signature", Some(format!("Bearer {tampered}"))),
        (
            "claims swapped under a valid signature",
            Some(format!("Bearer {swapped_claims}")),
        ),
        (
            "expired an hour ago",
            Some(format!(
                "Bearer {}",
                sign(&hs256, &claims(now - 3600), JWT_SECRET)
            )),
        ),
        (
            "expired beyond the leeway",
            Some(format!(
                "Bearer {}",
                sign(&hs256, &claims(now - 120), JWT_SECRET)
            )),
        ),
        (
            "not valid before an hour from now",
            Some(format!(
                "Bearer {}",
                sign(
                    &hs256,
                    &json!({"sub": "alice", "workspace_id": "ws_a", "exp": now + 7200, "nbf": now + 3600}),
                    JWT_SECRET
                )
            )),
        ),
        ("alg none", Some(format!("Bearer {unsigned}"))),
        (
            "HS512",
            Some(format!(
                "Bearer {}",
                sign(
                    &Header::new(Algorithm::HS512),
                    &claims(now + 600),
                    JWT_SECRET
                )
            )),
        ),
        (
            "HS384",
            Some(format!(
                "Bearer {}",
                sign(
                    &Header::new(Algorithm::HS384),
                    &claims(now + 600),
                    JWT_SECRET
                )
            )),
        ),
        (
            "no exp",
            Some(format!(
                "Bearer {}",
                sign(
                    &hs256,
                    &json!({"sub": "alice", "workspace_id": "ws_a"}),
                    JWT_SECRET
                )
            )),
        ),
        (
            "no workspace",
            Some(format!(
                "Bearer {}",
                sign(
                    &hs256,
                    &json!({"sub": "alice", "exp": now + 600}),
                    JWT_SECRET
                )
            )),
        ),
        (
            "no subject",
            Some(format!(
                "Bearer {}",
                sign(
                    &hs256,
                    &json!({"workspace_id": "ws_a", "exp": now + 600}),
                    JWT_SECRET
                )
            )),
        ),
        (
            "empty workspace",
            Some(format!(
                "Bearer {}",
                sign(
                    &hs256,
                    &json!({"sub": "alice", "workspace_id": "", "exp": now + 600}),
                    JWT_SECRET
                )
            )),
        ),
        (
            "unknown API key",
            Some("Bearer cvk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned()),
        ),
    ];
    for (why, authorization) in &cases {
        for path in [
            "/api/v1/connectors",
            "/api/v1/executions",
            "/api/v1/admin/stats",
        ] {
            let mut request = Request::builder().uri(path);
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let reply = api
                .send_request(request.body(Body::empty()).expect("request"))
                .await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{why} on {path}: {}",
                reply.text
            );
            assert_eq!(
                reply.json["error"]["code"], "unauthorized",
                "{why}: {}",
                reply.text
            );
            assert!(reply.json["error"]["message"].is_string(), "{why}");
        }
    }

    // Within the documented leeway a just-expired token still works.
    let leeway = sign(&hs256, &claims(now - 5), JWT_SECRET);
    assert_eq!(
        api.get("/api/v1/connectors", &leeway).await.status,
        StatusCode::OK
    );
    // The same claims through the claims type the CLI signs.
    let typed = jsonwebtoken::encode(
        &hs256,
        &Claims {
            sub: "alice".into(),
            workspace_id: "ws_a".into(),
            exp: now + 60,
            iat: None,
            nbf: None,
        },
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("sign");
    assert_eq!(
        api.get("/api/v1/connectors", &typed).await.status,
        StatusCode::OK
    );

    // An API key works until revoked, then is 401.
    let created = api
        .post("/api/v1/api-keys", &good, json!({"name": "ci"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let key = created.json["key"].as_str().expect("key").to_owned();
    assert_eq!(
        api.get("/api/v1/connectors", &key).await.status,
        StatusCode::OK
    );
    let revoked = api
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{}", created.id()),
            Some(&good),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.text);
    let refused = api.get("/api/v1/connectors", &key).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.text);
    assert_eq!(refused.json["error"]["code"], "unauthorized");
    assert!(!refused.text.contains(&key));

    // Authenticated but not an admin: 403 on every admin route.
    access::add_admin(&api.pool, "root").await.expect("admin");
    let root = api.token("ws_ops", "root");
    for path in [
        "/api/v1/admin/stats",
        "/api/v1/admin/executions",
        "/api/v1/admin/audit",
        "/api/v1/admin/workspaces/ws_a/usage",
    ] {
        let reply = api.get(path, &good).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            reply.text
        );
        assert_eq!(reply.json["error"]["code"], "forbidden");
        assert_eq!(api.get(path, &root).await.status, StatusCode::OK, "{path}");
    }
}

// ---------------------------------------------------------------------------
// 4. Rejected input
// ---------------------------------------------------------------------------

/// Malformed JSON is 400 even when the part before the syntax error already
/// has the wrong shape (an unknown field, a wrong type): the body is not
/// JSON, so nothing about its fields can be said.
#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn malformed_json_is_400_whatever_comes_before_the_error(pool: PgPool) {
    let api = api(pool.clone());
    let a = api.token("ws_a", "alice");
    let connector = api
        .create_connector(&a, simple_connector("http://127.0.0.1:9"))
        .await;
    let before = row_counts(&pool).await;
    for (uri, body) in [
        (
            format!("/api/v1/connectors/{connector}/execute"),
            r#"{"name": "x", "#,
        ),
        (
            format!("/api/v1/connectors/{connector}/execute"),
            r#"{"priority": "high", "#,
        ),
        (format!("/api/v1/connectors/{connector}/execute"), "[1, 2"),
        (
            format!("/api/v1/connectors/{connector}/execute/batch"),
            r#"{"items": 5, "#,
        ),
        ("/api/v1/credentials/crm".to_owned(), r#"{"token": "x", "#),
        ("/api/v1/api-keys".to_owned(), r#"{"name": 5, "#),
    ] {
        let verb = if uri.contains("credentials") {
            Method::PUT
        } else {
            Method::POST
        };
        let request = Request::builder()
            .method(verb)
            .uri(&uri)
            .header("authorization", format!("Bearer {a}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request");
        let reply = api.send_request(request).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{uri} {body:?}: {}",
            reply.text
        );
        assert_eq!(
            reply.json["error"]["code"], "malformed_json",
            "{}",
            reply.text
        );
    }
    assert_eq!(row_counts(&pool).await, before);
}

// ---------------------------------------------------------------------------
// 5. Idempotency and batches
// ---------------------------------------------------------------------------

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn two_concurrent_executes_with_the_same_key_make_one_execution(pool: PgPool) {
    let api = api(pool.clone());
    let a = api.token("ws_a", "alice");
    let b = api.token("ws_b", "bob");
    let connector = api
        .create_connector(&a, simple_connector("http://127.0.0.1:9"))
        .await;
    let execute = format!("/api/v1/connectors/{connector}/execute");

    let by_header = |key: &'static str| {
        let request = Request::builder()
            .method(Method::POST)
            .uri(&execute)
            .header("authorization", format!("Bearer {a}"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(json!({"input": {"n": 1}}).to_string()))
            .expect("request");
        api.send_request(request)
    };
    let by_body = |key: &'static str| {
        api.post(
            &execute,
            &a,
            json!({"input": {"n": 1}, "idempotency_key": key}),
        )
    };

    let (one, two) = tokio::join!(by_header("k-header"), by_header("k-header"));
    let (three, four) = tokio::join!(by_body("k-body"), by_body("k-body"));
    // The same key by header and by body is the same key.
    let (five, six) = tokio::join!(by_header("k-mixed"), by_body("k-mixed"));
    for (x, y) in [(&one, &two), (&three, &four), (&five, &six)] {
        let mut statuses = [x.status, y.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::ACCEPTED],
            "{} / {}",
            x.text,
            y.text
        );
        assert_eq!(x.id(), y.id(), "the same key names the same execution");
    }
    assert_ne!(one.id(), three.id());
    assert_ne!(three.id(), five.id());
    assert_eq!(one.json["idempotency_key"], "k-header");
    assert_eq!(three.json["idempotency_key"], "k-body");

    // Many at once still make one.
    let many = futures_util::future::join_all((0..8).map(|_| by_header("k-many"))).await;
    let ids: BTreeSet<String> = many.iter().map(Reply::id).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        many.iter()
            .filter(|r| r.status == StatusCode::ACCEPTED)
            .count(),
        1
    );

    let count = |key: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM connector_executions WHERE idempotency_key = $1",
            )
            .bind(key)
            .fetch_one(&pool)
            .await
            .expect("count")
        }
    };
    for key in ["k-header", "k-body", "k-mixed", "k-many"] {
        assert_eq!(count(key).await, 1, "{key}");
    }
    assert_eq!(api.get("/api/v1/executions", &a).await.items().len(), 4);

    // A key is the workspace's own: another workspace's key is unrelated.
    let other = api
        .create_connector(&b, simple_connector("http://127.0.0.1:9"))
        .await;
    let theirs = api
        .post(
            &format!("/api/v1/connectors/{other}/execute"),
            &b,
            json!({"idempotency_key": "k-header"}),
        )
        .await;
    assert_eq!(theirs.status, StatusCode::ACCEPTED, "{}", theirs.text);
    assert_ne!(theirs.id(), one.id());

    // A key reused for another input is a conflict, and the whole batch is
    // refused.
    let before = api.get("/api/v1/executions", &a).await.items().len();
    let reused = api
        .post(
            &format!("{execute}/batch"),
            &a,
            json!({"items": [{"input": {"n": 20}}, {"input": {"n": 99}, "idempotency_key": "k-body"}]}),
        )
        .await;
    assert_eq!(reused.status, StatusCode::CONFLICT, "{}", reused.text);
    assert_eq!(
        reused.json["error"]["details"]["path"],
        "items[1].idempotency_key"
    );
    assert_eq!(
        api.get("/api/v1/executions", &a).await.items().len(),
        before
    );
    let single = api
        .post(
            &execute,
            &a,
            json!({"input": {"n": 99}, "idempotency_key": "k-body"}),
        )
        .await;
    assert_eq!(single.status, StatusCode::CONFLICT, "{}", single.text);

    // A batch answers ids in item order; keyed items reuse executions.
    let batch = api
        .post(
            &format!("{execute}/batch"),
            &a,
            json!({"items": [
                {"input": {"n": 10}},
                {"input": {"n": 1}, "idempotency_key": "k-body"},
                {"input": {"n": 12}},
                {"input": {"n": 13}, "idempotency_key": "k-batch"},
                {"input": {"n": 13}, "idempotency_key": "k-batch"}
            ]}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::ACCEPTED, "{}", batch.text);
    let ids: Vec<String> = batch.json["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(ids[1], three.id(), "a key already used names its execution");
    assert_eq!(
        ids[3], ids[4],
        "a key repeated in the batch makes one execution"
    );
    for (id, n) in [(&ids[0], 10), (&ids[2], 12), (&ids[3], 13)] {
        let e = api.get(&format!("/api/v1/executions/{id}"), &a).await;
        assert_eq!(e.json["input"], json!({"n": n}), "{}", e.text);
        assert_eq!(e.json["connector_id"], json!(connector));
    }
    assert_eq!(api.get("/api/v1/executions", &a).await.items().len(), 7);
}

// ---------------------------------------------------------------------------
// 6. Secrets stay out of responses and logs
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 7. Pagination
// ---------------------------------------------------------------------------

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn executions_page_newest_first_through_next_cursor(pool: PgPool) {
    let api = api(pool);
    let a = api.token("ws_a", "alice");
    let connector = api
        .create_connector(&a, simple_connector("http://127.0.0.1:9"))
        .await;
    let other = api
        .create_connector(&a, simple_connector("http://127.0.0.1:9"))
        .await;
    let mut created = Vec::new();
    for n in 0..5 {
        created.push(api.execute(&a, &connector, json!({"n": n})).await);
    }
    let unrelated = api.execute(&a, &other, json!({})).await;

    let page_through = |first: String| {
        let api = &api;
        let a = &a;
        async move {
            let mut seen = Vec::new();
            let mut pages = Vec::new();
            let mut next = Some(first);
            while let Some(path) = next.take() {
                let reply = api.get(&path, a).await;
                assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
                pages.push(reply.items().len());
                seen.extend(
                    reply
                        .items()
                        .iter()
                        .map(|e| e["id"].as_str().expect("id").to_owned()),
                );
                assert!(pages.len() <= 10, "pagination does not end");
                if let Some(cursor) = reply.json["next_cursor"].as_str() {
                    let base = path.split("&cursor=").next().expect("base");
                    next = Some(format!("{base}&cursor={cursor}"));
                } else {
                    assert!(reply.json["next_cursor"].is_null(), "{}", reply.text);
                }
            }
            (seen, pages)
        }
    };

    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    let (seen, pages) = page_through(format!(
        "/api/v1/executions?limit=2&connector_id={connector}"
    ))
    .await;
    assert_eq!(pages, [2, 2, 1]);
    assert_eq!(seen, newest_first);
    let (seen, pages) =
        page_through(format!("/api/v1/connectors/{connector}/executions?limit=2")).await;
    assert_eq!(pages, [2, 2, 1]);
    assert_eq!(seen, newest_first);

    // Unfiltered: all six, newest first, each once.
    let (seen, pages) = page_through("/api/v1/executions?limit=2".to_owned()).await;
    assert_eq!(pages, [2, 2, 2]);
    let mut expected = vec![unrelated];
    expected.extend(newest_first.iter().cloned());
    assert_eq!(seen, expected);

    // A page exactly as large as what is left has no next page.
    let all = api
        .get(
            &format!("/api/v1/executions?limit=5&connector_id={connector}"),
            &a,
        )
        .await;
    assert_eq!(all.items().len(), 5);
    assert!(all.json["next_cursor"].is_null(), "{}", all.text);
}

// ---------------------------------------------------------------------------
// The OpenAPI document and the reference page
// ---------------------------------------------------------------------------

/// Every route the issue requires, with its methods.
const REQUIRED_ROUTES: &[(&str, &[&str])] = &[
    ("/api/v1/connectors", &["get", "post"]),
    ("/api/v1/connectors/{id}", &["get", "put", "delete"]),
    ("/api/v1/connectors/{id}/execute", &["post"]),
    ("/api/v1/connectors/{id}/execute/batch", &["post"]),
    ("/api/v1/connectors/{id}/stats", &["get"]),
    ("/api/v1/connectors/{id}/executions", &["get"]),
    ("/api/v1/executions", &["get"]),
    ("/api/v1/executions/{id}", &["get"]),
    ("/api/v1/executions/{id}/cancel", &["post"]),
    ("/api/v1/executions/{id}/rerun", &["post"]),
    ("/api/v1/executions/{id}/events", &["get"]),
    ("/api/v1/credentials", &["get"]),
    ("/api/v1/credentials/{name}", &["get", "put", "delete"]),
    ("/api/v1/api-keys", &["get", "post"]),
    ("/api/v1/api-keys/{id}", &["delete"]),
    ("/api/v1/audit", &["get"]),
    ("/api/v1/admin/stats", &["get"]),
    ("/api/v1/admin/workspaces/{id}/usage", &["get"]),
    ("/api/v1/admin/executions", &["get"]),
    ("/api/v1/admin/audit", &["get"]),
];

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_openapi_document_covers_every_route_and_docs_render(pool: PgPool) {
    let api = api(pool);
    let doc = api
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.text);
    assert!(
        doc.json["openapi"]
            .as_str()
            .expect("openapi version")
            .starts_with("3.")
    );
    assert!(doc.json["info"]["title"].is_string());
    assert!(
        doc.json["components"]["securitySchemes"]["bearer"].is_object(),
        "{}",
        doc.text
    );
    let paths = doc.json["paths"].as_object().expect("paths");

    for (route, methods) in REQUIRED_ROUTES {
        let item = paths
            .get(*route)
            .unwrap_or_else(|| panic!("{route} is not documented; documented: {:?}", paths.keys()));
        for m in *methods {
            let op = &item[*m];
            assert!(op.is_object(), "{m} {route} is not documented");
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{m} {route} has no responses"
            );
            assert!(op["tags"].is_array(), "{m} {route} has no tag");
        }
    }

    // Every documented operation is served, and answers 401 without a
    // token (each is under /api/v1 and authenticated), except the OAuth
    // callback, which the provider calls with a single-use state instead:
    // without a valid one it stores nothing and answers 400.
    let mut operations = 0;
    for (route, item) in paths {
        assert!(route.starts_with("/api/v1/"), "{route}");
        let concrete = route
            .replace("{id}", &Uuid::now_v7().to_string())
            .replace("{name}", "crm")
            .replace("{slug}", "some-template");
        for (m, op) in item.as_object().expect("path item") {
            let Ok(verb) = Method::from_bytes(m.to_uppercase().as_bytes()) else {
                continue;
            };
            if !op.is_object() || !matches!(m.as_str(), "get" | "post" | "put" | "delete" | "patch")
            {
                continue;
            }
            operations += 1;
            let reply = api.call(verb.clone(), &concrete, None, None).await;
            let expected = if route == "/api/v1/oauth/callback" {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNAUTHORIZED
            };
            assert_eq!(reply.status, expected, "{verb} {concrete}: {}", reply.text);
            // Path parameters are documented.
            for param in ["id", "name", "slug"] {
                if route.contains(&format!("{{{param}}}")) {
                    let documented = op["parameters"].as_array().is_some_and(|ps| {
                        ps.iter().any(|p| p["name"] == param && p["in"] == "path")
                    });
                    assert!(documented, "{m} {route} does not document its {param}");
                }
            }
        }
    }
    let required: usize = REQUIRED_ROUTES.iter().map(|(_, m)| m.len()).sum();
    assert!(operations >= required);

    // The human-readable reference names the routes.
    let page = api.call(Method::GET, "/docs", None, None).await;
    assert_eq!(page.status, StatusCode::OK);
    let content_type = page
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(page.text.contains("/api/v1/connectors"));
    for (route, _) in REQUIRED_ROUTES {
        assert!(page.text.contains(route), "/docs does not mention {route}");
    }

    // Ops routes answer without a token; every response carries a request id.
    for path in ["/healthz", "/readyz"] {
        let reply = api.call(Method::GET, path, None, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        assert!(reply.headers.contains_key("x-request-id"), "{path}");
    }
    let echoed = api
        .send_request(
            Request::builder()
                .uri("/api/v1/connectors")
                .header("x-request-id", "req-123")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(echoed.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        echoed
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-123")
    );
}
