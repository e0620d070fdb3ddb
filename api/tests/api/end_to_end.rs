//! A connector run end to end through HTTP only: a real listener on port 0, a
//! real worker, a wiremock third party and the SSE event stream.

use axum::http::StatusCode;
use chrono::Utc;
use conveyor_engine::store::executions;
use conveyor_tests::api::WAIT;
use serde_json::{Value, json};
use sqlx::PgPool;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{PLANTED, RunningWorker, api, assert_no_planted};

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

/// The status each stored event leaves the execution in, for the kinds
/// the stream test below writes.
fn status_after(kind: &str) -> &'static str {
    match kind {
        "enqueued" | "released" => "queued",
        "claimed" => "running",
        "cancelled" => "cancelled",
        other => panic!("unexpected event {other}"),
    }
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_event_stream_never_sends_a_status_older_than_an_event_before_it(pool: PgPool) {
    let api = api(pool.clone());
    let served = Served::start(api.router.clone()).await;
    let mut client = Client {
        http: reqwest::Client::new(),
        base: served.base.clone(),
        token: api.token("ws_churn", "alice"),
        seen: Vec::new(),
    };
    let (status, created) = client
        .call(
            reqwest::Method::POST,
            "/api/v1/connectors",
            Some(json!({"name": "churn",
                "steps": [{"name": "get", "method": "GET", "url": "http://127.0.0.1:9/x"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, queued) = client
        .call(
            reqwest::Method::POST,
            &format!(
                "/api/v1/connectors/{}/execute",
                created["id"].as_str().expect("id")
            ),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    let id = queued["id"].as_str().expect("id").to_owned();
    let execution: uuid::Uuid = id.parse().expect("uuid");

    // While the stream follows it, the execution goes back and forth
    // between queued and running as fast as the database allows (each
    // change writes its event in the same statement), then is cancelled.
    let mut churn = None;
    let stream = client
        .follow(&id, || {
            churn = Some(tokio::spawn(async move {
                let claims = executions::ClaimPool::new(&pool);
                let lease = std::time::Duration::from_secs(60);
                for _ in 0..150 {
                    let claimed = executions::claim(&claims, "w", 1, lease, Utc::now())
                        .await
                        .expect("claim");
                    let token = claimed.first().expect("claimed").fencing_token;
                    let released = executions::release(&pool, execution, token, Utc::now())
                        .await
                        .expect("release");
                    assert!(released);
                }
                executions::cancel(&pool, "ws_churn", execution, Utc::now())
                    .await
                    .expect("cancel");
            }));
        })
        .await;
    churn.expect("started").await.expect("churn");

    // Every status sent is the one the last event sent before it left.
    let mut implied = None;
    let mut statuses = 0;
    for (name, data) in sse_events(&stream) {
        if name == "status" {
            statuses += 1;
            assert_eq!(data["status"].as_str(), implied, "{stream}");
        } else {
            implied = Some(status_after(&name));
        }
    }
    assert_eq!(implied, Some("cancelled"), "{stream}");
    assert!(statuses >= 2, "{stream}");
}
