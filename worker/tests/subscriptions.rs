//! Event subscriptions end to end: a real `conveyor-worker` process runs a
//! workspace's executions and sends its events to a loopback receiver. A
//! subscription receives signed `execution.succeeded`,
//! `execution.failed` and `credential.needs_reconnect` events (the last
//! once, though two executions hit the revoked grant), the signatures
//! verify with the harness's own Standard Webhooks implementation, a
//! failing receiver is retried, a subscription gets only the types it
//! named, and another workspace's subscription gets nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use conveyor_engine::crypto::{Key, Keyring};
use conveyor_engine::oauth::CredentialKind;
use conveyor_engine::store::credentials::{self, NewCredential};
use conveyor_tests::api::TestApi;
use conveyor_tests::database_url;
use conveyor_tests::oauth_server::{CLIENT_ID, CLIENT_SECRET, OAuthServer};
use conveyor_tests::process::WorkerProcess;
use conveyor_tests::standard_webhooks::verifies;
use serde_json::{Value, json};
use sqlx::PgPool;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_conveyor-worker");
const WS: &str = "ws_events";
const SUBSCRIPTIONS: &str = "/api/v1/webhooks/subscriptions";

async fn subscribe(api: &TestApi, token: &str, url: String, events: Value) -> String {
    let reply = api
        .post(SUBSCRIPTIONS, token, json!({"url": url, "events": events}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.id()
}

async fn posts_to(receiver: &MockServer, at: &str) -> Vec<Request> {
    receiver
        .received_requests()
        .await
        .expect("recorded")
        .into_iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path() == at)
        .collect()
}

fn header(r: &Request, name: &str) -> String {
    r.headers[name].to_str().expect("header").to_owned()
}

/// An OAuth credential whose access token has expired and whose refresh
/// token the provider never issued: the next use gets `invalid_grant`.
async fn revoked_credential(pool: &PgPool, keyring: &Keyring, server: &OAuthServer) {
    let fields = BTreeMap::from([
        ("client_id".to_owned(), CLIENT_ID.to_owned()),
        ("client_secret".to_owned(), CLIENT_SECRET.to_owned()),
        (
            "refresh_token".to_owned(),
            "rt-the-provider-revoked".to_owned(),
        ),
        ("access_token".to_owned(), "expired-access-token".to_owned()),
    ]);
    let new = NewCredential {
        kind: CredentialKind::AuthorizationCode,
        fields: &fields,
        oauth: Some(json!({"token_url": format!("{}/token", server.uri)})),
        status: "connected",
        status_reason: None,
    };
    credentials::put_kind(pool, keyring, WS, "crm", &new)
        .await
        .expect("credential");
    sqlx::query(
        "UPDATE workspace_api_credentials SET access_token_expires_at = now() - interval '1 second'",
    )
    .execute(pool)
    .await
    .expect("expire");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_subscription_receives_signed_events_of_its_types_and_workspace_only(pool: PgPool) {
    let key = Key::generate();
    let key_text = key.to_base64();
    let keyring = Arc::new(Keyring::new(key, []));
    let api = TestApi::sealing_with(pool.clone(), Arc::clone(&keyring));
    let token = api.token(WS, "u");
    let other = api.token("ws_elsewhere", "u");
    let receiver = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/ok"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&receiver)
        .await;
    Mock::given(method("GET"))
        .and(path("/bad"))
        .respond_with(ResponseTemplate::new(400))
        .mount(&receiver)
        .await;
    // The first event delivery to /all fails; its retry must succeed.
    Mock::given(method("POST"))
        .and(path("/all"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&receiver)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(2)
        .mount(&receiver)
        .await;
    let oauth = OAuthServer::start().await;
    revoked_credential(&pool, &keyring, &oauth).await;

    let uri = receiver.uri();
    let all = subscribe(
        &api,
        &token,
        format!("{uri}/all"),
        json!([
            "execution.succeeded",
            "execution.failed",
            "credential.needs_reconnect"
        ]),
    )
    .await;
    let failures = subscribe(
        &api,
        &token,
        format!("{uri}/failed"),
        json!(["execution.failed"]),
    )
    .await;
    let foreign = subscribe(&api, &other, format!("{uri}/foreign"), json!(["*"])).await;

    let ok = api
        .create_connector(
            &token,
            json!({"name": "ok", "steps": [{"name": "s", "method": "GET", "url": format!("{uri}/ok")}]}),
        )
        .await;
    let bad = api
        .create_connector(
            &token,
            json!({"name": "bad", "steps": [{"name": "s", "method": "GET", "url": format!("{uri}/bad")}]}),
        )
        .await;
    let crm = api
        .create_connector(
            &token,
            json!({"name": "crm", "steps": [{"name": "s", "method": "GET", "url": format!("{uri}/ok"),
                   "auth": {"type": "oauth2", "credential": "crm"}}]}),
        )
        .await;
    let succeeded = api.execute(&token, &ok, json!({})).await;
    let failed = api.execute(&token, &bad, json!({})).await;
    let revoked = [
        api.execute(&token, &crm, json!({})).await,
        api.execute(&token, &crm, json!({})).await,
    ];

    let _worker = WorkerProcess::start(
        WORKER_BIN,
        &database_url(&pool),
        &key_text,
        "events-worker",
        &[],
    );
    for id in [&succeeded, &failed, &revoked[0], &revoked[1]] {
        api.wait_final(&token, id).await;
    }
    // Five events reach /all (one of them twice: the 503, then its retry
    // after the 5 s backoff); three reach /failed.
    let started = Instant::now();
    while posts_to(&receiver, "/all").await.len() < 6
        || posts_to(&receiver, "/failed").await.len() < 3
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "events not delivered: {:?}",
            receiver.received_requests().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give a stray extra delivery the time to show up before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let secret = api
        .get("/api/v1/webhooks/signing-secret", &token)
        .await
        .json["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    for r in posts_to(&receiver, "/all").await {
        assert!(
            verifies(
                &secret,
                &header(&r, "webhook-id"),
                &header(&r, "webhook-timestamp"),
                &r.body,
                &header(&r, "webhook-signature"),
            ),
            "the signature verifies"
        );
        let mut tampered = r.body.clone();
        tampered.push(b' ');
        assert!(!verifies(
            &secret,
            &header(&r, "webhook-id"),
            &header(&r, "webhook-timestamp"),
            &tampered,
            &header(&r, "webhook-signature"),
        ));
        let body: Value = serde_json::from_slice(&r.body).expect("json");
        by_id
            .entry(header(&r, "webhook-id"))
            .or_default()
            .push(body);
    }
    assert_eq!(by_id.len(), 5, "five events: {by_id:?}");
    assert_eq!(
        by_id.values().filter(|sent| sent.len() == 2).count(),
        1,
        "exactly one event was retried, with the same webhook-id"
    );
    let mut types: Vec<(String, String)> = by_id
        .values()
        .map(|sent| {
            let b = &sent[0];
            let about = b["data"]["id"]
                .as_str()
                .or(b["data"]["name"].as_str())
                .unwrap_or_default()
                .to_owned();
            (b["type"].as_str().unwrap_or_default().to_owned(), about)
        })
        .collect();
    types.sort();
    let mut expected = vec![
        ("credential.needs_reconnect".to_owned(), "crm".to_owned()),
        ("execution.failed".to_owned(), failed.clone()),
        ("execution.failed".to_owned(), revoked[0].clone()),
        ("execution.failed".to_owned(), revoked[1].clone()),
        ("execution.succeeded".to_owned(), succeeded.clone()),
    ];
    expected.sort();
    assert_eq!(types, expected);
    let reconnect = by_id
        .values()
        .map(|sent| &sent[0])
        .find(|b| b["type"] == "credential.needs_reconnect")
        .expect("needs_reconnect");
    assert_eq!(reconnect["data"]["status"], "needs_reconnect");
    assert!(!reconnect.to_string().contains("rt-the-provider-revoked"));

    let failed_types: Vec<String> = posts_to(&receiver, "/failed")
        .await
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).expect("json")["type"].to_string())
        .collect();
    assert_eq!(
        failed_types,
        vec!["\"execution.failed\""; 3],
        "only its type"
    );
    assert!(
        posts_to(&receiver, "/foreign").await.is_empty(),
        "another workspace's subscription hears nothing"
    );

    let listed = api
        .get(&format!("{SUBSCRIPTIONS}/{all}/deliveries"), &token)
        .await;
    assert_eq!(listed.items().len(), 5);
    let codes: Vec<Vec<Value>> = listed
        .items()
        .iter()
        .map(|d| {
            assert_eq!(d["status"], "delivered");
            d["attempts"]
                .as_array()
                .expect("attempts")
                .iter()
                .map(|a| a["status_code"].clone())
                .collect()
        })
        .collect();
    assert!(codes.contains(&vec![json!(503), json!(204)]), "{codes:?}");
    let failures_listed = api
        .get(&format!("{SUBSCRIPTIONS}/{failures}/deliveries"), &token)
        .await;
    assert_eq!(failures_listed.items().len(), 3);
    let foreign_listed = api
        .get(&format!("{SUBSCRIPTIONS}/{foreign}/deliveries"), &other)
        .await;
    assert!(foreign_listed.items().is_empty());
}
