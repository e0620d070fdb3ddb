//! Completion callbacks: the finalizing update creates the delivery, the
//! sender POSTs it to a real loopback receiver that fails twice and then
//! accepts, every attempt is recorded, and the signature verifies with a
//! reference implementation of the Standard Webhooks algorithm written
//! in the harness (`conveyor_tests::standard_webhooks`).

use std::sync::Arc;

use axum::http::StatusCode;
use conveyor_tests::api::TestApi;
use conveyor_tests::standard_webhooks::verifies;
use conveyor_tests::{test_worker_config, worker};
use conveyor_worker::callbacks::CallbackSender;
use serde_json::{Value, json};
use sqlx::PgPool;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Setup {
    api: TestApi,
    token: String,
    receiver: MockServer,
    execution: String,
}

/// A connector whose one step succeeds, run to its end with a callback to
/// the receiver's `/cb`.
async fn finished_execution(pool: PgPool, callback_path: &str) -> Setup {
    let api = TestApi::new(pool);
    let token = api.token("ws_cb", "u");
    let receiver = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/step"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&receiver)
        .await;
    let connector = api
        .create_connector(
            &token,
            json!({"name": "CB", "steps": [{"name": "s", "method": "GET", "url": format!("{}/step", receiver.uri())}]}),
        )
        .await;
    let started = api
        .post(
            &format!("/api/v1/connectors/{connector}/execute"),
            &token,
            json!({"input": {}, "callback_url": format!("{}{callback_path}", receiver.uri())}),
        )
        .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.text);
    let execution = started.id();
    let w = worker(&api.pool, &api.keyring, test_worker_config("cb-worker"));
    while w.run_next().await.expect("run").is_some() {}
    let done = api.wait_final(&token, &execution).await;
    assert_eq!(done.json["status"], "succeeded", "{}", done.text);
    Setup {
        api,
        token,
        receiver,
        execution,
    }
}

async fn callbacks(s: &Setup) -> Value {
    let reply = s
        .api
        .get(
            &format!("/api/v1/executions/{}/callbacks", s.execution),
            &s.token,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.json["items"].clone()
}

/// Makes every pending callback due now (instead of waiting its backoff).
async fn make_due(pool: &PgPool) {
    sqlx::query("UPDATE callback_deliveries SET next_attempt_at = now() WHERE status = 'pending'")
        .execute(pool)
        .await
        .expect("due");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_failing_receiver_is_retried_until_it_accepts_and_the_signature_verifies(pool: PgPool) {
    let s = finished_execution(pool, "/cb").await;
    Mock::given(method("POST"))
        .and(path("/cb"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&s.receiver)
        .await;
    Mock::given(method("POST"))
        .and(path("/cb"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(2)
        .mount(&s.receiver)
        .await;
    let sender =
        CallbackSender::new(s.api.pool.clone(), Arc::clone(&s.api.keyring), true).expect("sender");
    assert_eq!(sender.run_once().await.expect("first"), 1);
    let after_one = callbacks(&s).await;
    assert_eq!(after_one[0]["status"], "pending");
    assert_eq!(
        sender.run_once().await.expect("not yet due"),
        0,
        "backoff is durable"
    );
    for _ in 0..2 {
        make_due(&s.api.pool).await;
        assert_eq!(sender.run_once().await.expect("retry"), 1);
    }

    let items = callbacks(&s).await;
    assert_eq!(items.as_array().map(Vec::len), Some(1));
    let cb = &items[0];
    assert_eq!(cb["status"], "delivered");
    assert_eq!(cb["event"], "execution.succeeded");
    let codes: Vec<&Value> = cb["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| &a["status_code"])
        .collect();
    assert_eq!(codes, [&json!(503), &json!(503), &json!(204)]);

    let secret = s
        .api
        .get("/api/v1/webhooks/signing-secret", &s.token)
        .await
        .json["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    let posts: Vec<_> = s
        .receiver
        .received_requests()
        .await
        .expect("recorded")
        .into_iter()
        .filter(|r| r.url.path() == "/cb")
        .collect();
    assert_eq!(posts.len(), 3);
    let ids: Vec<String> = posts
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().expect("id").to_owned())
        .collect();
    assert!(
        ids.iter().all(|id| id == &ids[0]),
        "one message id across retries: {ids:?}"
    );
    for r in &posts {
        let header = |n: &str| r.headers[n].to_str().expect("header").to_owned();
        assert!(
            verifies(
                &secret,
                &header("webhook-id"),
                &header("webhook-timestamp"),
                &r.body,
                &header("webhook-signature")
            ),
            "signature does not verify"
        );
        let mut tampered = r.body.clone();
        tampered.push(b' ');
        assert!(!verifies(
            &secret,
            &header("webhook-id"),
            &header("webhook-timestamp"),
            &tampered,
            &header("webhook-signature")
        ));
        let body: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(body["type"], "execution.succeeded");
        assert_eq!(body["data"]["id"], json!(s.execution));
        assert_eq!(body["data"]["status"], "succeeded");
    }
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn during_a_rotation_both_secrets_sign(pool: PgPool) {
    let s = finished_execution(pool, "/cb").await;
    Mock::given(method("POST"))
        .and(path("/cb"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&s.receiver)
        .await;
    let old = s
        .api
        .get("/api/v1/webhooks/signing-secret", &s.token)
        .await
        .json["secret"]
        .clone();
    let rotated = s
        .api
        .post(
            "/api/v1/webhooks/signing-secret/rotate",
            &s.token,
            json!({}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let new = rotated.json["secret"].clone();
    assert_ne!(old, new);
    let sender =
        CallbackSender::new(s.api.pool.clone(), Arc::clone(&s.api.keyring), true).expect("sender");
    assert_eq!(sender.run_once().await.expect("send"), 1);
    let post = s
        .receiver
        .received_requests()
        .await
        .expect("recorded")
        .into_iter()
        .find(|r| r.url.path() == "/cb")
        .expect("a callback");
    let header = |n: &str| post.headers[n].to_str().expect("header").to_owned();
    assert_eq!(header("webhook-signature").split(' ').count(), 2);
    for secret in [&old, &new] {
        assert!(verifies(
            secret.as_str().expect("secret"),
            &header("webhook-id"),
            &header("webhook-timestamp"),
            &post.body,
            &header("webhook-signature")
        ));
    }
    let key = api_key(&s).await;
    let refused = s.api.get("/api/v1/webhooks/signing-secret", &key).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

async fn api_key(s: &Setup) -> String {
    let created = s
        .api
        .post("/api/v1/api-keys", &s.token, json!({"name": "k"}))
        .await;
    created.json["key"].as_str().expect("key").to_owned()
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn loopback_callbacks_are_refused_by_the_address_policy_and_retried_later(pool: PgPool) {
    let s = finished_execution(pool, "/cb").await;
    let guarded =
        CallbackSender::new(s.api.pool.clone(), Arc::clone(&s.api.keyring), false).expect("sender");
    assert_eq!(guarded.run_once().await.expect("attempt"), 1);
    let cb = &callbacks(&s).await[0];
    assert_eq!(cb["status"], "pending");
    let error = cb["attempts"][0]["error"].as_str().unwrap_or("");
    assert!(
        error.contains("private") || error.contains("loopback"),
        "{error}"
    );
    assert!(
        s.receiver
            .received_requests()
            .await
            .expect("recorded")
            .iter()
            .all(|r| r.url.path() != "/cb")
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn without_a_callback_url_nothing_is_queued_and_bad_urls_are_refused(pool: PgPool) {
    let api = TestApi::new(pool);
    let token = api.token("ws_cb", "u");
    let connector = api
        .create_connector(
            &token,
            json!({"name": "Plain", "steps": [{"name": "s", "method": "GET", "url": "https://api.example.com/p"}]}),
        )
        .await;
    let execution = api.execute(&token, &connector, json!({})).await;
    let cancelled = api
        .post(
            &format!("/api/v1/executions/{execution}/cancel"),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(cancelled.json["status"], "cancelled", "{}", cancelled.text);
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM callback_deliveries")
        .fetch_one(&api.pool)
        .await
        .expect("count");
    assert_eq!(queued, 0);
    for url in [
        "ftp://example.com/x",
        "not a url",
        "https://u:p@example.com/",
        // The URL parser reads these as https URLs; stored as written,
        // they would break the stored URL's check (a 500).
        "HTTPS://example.com/cb",
        " https://example.com/cb",
    ] {
        let reply = api
            .post(
                &format!("/api/v1/connectors/{connector}/execute"),
                &token,
                json!({"callback_url": url}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{url}");
        assert_eq!(
            reply.json["error"]["details"]["errors"][0]["path"],
            "callback_url"
        );
    }
    let upper = api
        .post(
            "/api/v1/connectors",
            &token,
            json!({"name": "Upper", "callback_url": "HTTPS://hooks.example.com/done",
                   "steps": [{"name": "s", "method": "GET", "url": "https://api.example.com/p"}]}),
        )
        .await;
    assert_eq!(
        upper.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        upper.text
    );
    assert_eq!(
        upper.json["error"]["details"]["errors"][0]["path"],
        "callback_url"
    );
    // A connector-level default applies to executions without their own.
    let with_default = api
        .create_connector(
            &token,
            json!({"name": "Defaulted", "callback_url": "https://hooks.example.com/done",
                   "steps": [{"name": "s", "method": "GET", "url": "https://api.example.com/p"}]}),
        )
        .await;
    let execution = api.execute(&token, &with_default, json!({})).await;
    api.post(
        &format!("/api/v1/executions/{execution}/cancel"),
        &token,
        json!({}),
    )
    .await;
    let url: String = sqlx::query_scalar("SELECT url FROM callback_deliveries")
        .fetch_one(&api.pool)
        .await
        .expect("one callback");
    assert_eq!(url, "https://hooks.example.com/done");
}
