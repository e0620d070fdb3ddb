//! The connector language through the API and a real worker: conditions
//! and secret extracts refused at save time with their field path, a
//! skipped step in `GET /executions/{id}` and on the console page, and a
//! secret extract used by a later step but shown nowhere.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use wiremock::matchers::{header as has_header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{RunningWorker, api};

/// Handed out by the stub's login; must never appear in a response.
const SESSION: &str = "sess-PLANTED-9d41b7c2";

fn connector(base: &str, when: &str, output: Value) -> Value {
    json!({
        "name": "Session then maybe notify",
        "steps": [
            {"name": "login", "method": "POST", "url": format!("{base}/login"),
             "extract": {"session": {"path": "$.session", "secret": true}, "count": "$.count"}},
            {"name": "notify", "method": "POST", "url": format!("{base}/notify"), "when": when},
            {"name": "use", "method": "GET", "url": format!("{base}/use"),
             "headers": {"X-Session": "<<steps.login.extract.session>>",
                         "X-Notified": "<<steps.notify.status>>"},
             "extract": {"echo": "$.echo"}}
        ],
        "output": output
    })
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn bad_conditions_and_secret_outputs_are_refused_naming_the_field(pool: PgPool) {
    let api = api(pool);
    let token = api.token("ws_lang", "alice");
    let cases = [
        (
            connector("https://x.test", "<<steps.use.status == 200>>", json!(null)),
            "steps[1].when",
            "does not name an earlier step",
        ),
        (
            connector(
                "https://x.test",
                "<<credentials.crm.token == 'x'>>",
                json!(null),
            ),
            "steps[1].when",
            "may not use credentials",
        ),
        (
            connector(
                "https://x.test",
                "steps.login.extract.count == 0",
                json!(null),
            ),
            "steps[1].when",
            "exactly one",
        ),
        (
            connector(
                "https://x.test",
                "<<true>>",
                json!({"s": "<<steps.login.extract.session>>"}),
            ),
            "output.s",
            "secret extract",
        ),
    ];
    for (definition, field, message) in cases {
        let reply = api.post("/api/v1/connectors", &token, definition).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.text
        );
        let details = reply.json["error"]["details"].to_string();
        assert!(details.contains(field), "{field}: {}", reply.text);
        assert!(details.contains(message), "{message}: {}", reply.text);
    }
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_skipped_step_and_a_secret_extract_show_in_history_and_console(pool: PgPool) {
    let api = api(pool.clone());
    let token = api.token("ws_lang", "alice");
    let stub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/login"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"session": SESSION, "count": 0})),
        )
        .mount(&stub)
        .await;
    Mock::given(method("GET"))
        .and(path("/use"))
        .and(has_header("x-session", SESSION))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"echo": SESSION})))
        .mount(&stub)
        .await;
    let definition = connector(
        &stub.uri(),
        "<<steps.login.extract.count > 0>>",
        json!({"count": "<<steps.login.extract.count>>", "echo": "<<steps.use.extract.echo>>"}),
    );
    let connector = api.create_connector(&token, definition).await;
    let got = api
        .get(&format!("/api/v1/connectors/{connector}"), &token)
        .await;
    assert_eq!(
        got.json["definition"]["steps"][0]["extract"]["session"],
        json!({"path": "$.session", "secret": true}),
        "{}",
        got.text
    );
    let id = api.execute(&token, &connector, json!({})).await;
    let worker = RunningWorker::start(&pool, &api.keyring);
    let done = api.wait_final(&token, &id).await;
    worker.stop().await;

    let execution = &done.json;
    assert_eq!(execution["status"], "succeeded", "{}", done.text);
    assert_eq!(
        execution["output"],
        json!({"count": 0, "echo": "[REDACTED]"})
    );
    let steps = execution["steps"].as_array().expect("steps");
    let outcomes: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| {
            (
                s["step_name"].as_str().unwrap_or_default(),
                s["outcome"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("login", "succeeded"),
            ("notify", "skipped"),
            ("use", "succeeded")
        ]
    );
    assert!(steps[1]["response_status"].is_null(), "{}", steps[1]);
    assert_eq!(
        steps[0]["extracted"],
        json!({"session": "[REDACTED]", "count": 0})
    );
    assert_eq!(
        steps[0]["response_body"],
        json!({"session": "[REDACTED]", "count": 0})
    );
    assert_eq!(steps[2]["request"]["headers"]["x-session"], "[REDACTED]");
    assert!(
        steps[2]["request"]["headers"].get("x-notified").is_none(),
        "a skipped step's status is null, so the header is left out: {}",
        steps[2]
    );
    assert!(!done.text.contains(SESSION), "{}", done.text);
    assert!(
        stub.received_requests()
            .await
            .expect("recording")
            .iter()
            .all(|r| r.url.path() != "/notify")
    );

    let reply = crate::console::Browser::sign_in(&api, &token)
        .await
        .get(&format!("/console/executions/{id}"))
        .await;
    let (status, page) = (reply.status, reply.text);
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("skipped"), "{page}");
    assert!(page.contains("[REDACTED]"), "{page}");
    assert!(!page.contains(SESSION), "{page}");
}
