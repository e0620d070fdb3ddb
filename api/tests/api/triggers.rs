//! Inbound webhook triggers end to end through the router: creation and
//! its validation, then deliveries to `/hooks/{id}` signed per provider
//! (valid, tampered, stale, missing), mapping failures, deduplication by
//! the provider's delivery id, Slack's URL handshake, and the recorded
//! deliveries.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use conveyor_engine::webhook::{hmac_sha256, to_hex};
use conveyor_tests::api::{Reply, TestApi};
use serde_json::{Value, json};
use sqlx::PgPool;

const CONNECTOR: &str = r#"{"name": "Hooked",
    "input_schema": {"type": "object", "required": ["repo"], "properties": {"repo": {"type": "string"}, "n": {"type": "integer"}}},
    "steps": [{"name": "p", "method": "GET", "url": "https://api.example.com/p"}]}"#;

async fn setup(pool: PgPool) -> (TestApi, String, String) {
    let api = TestApi::new(pool);
    let token = api.token("ws_hooks", "u");
    let connector = api
        .create_connector(&token, serde_json::from_str(CONNECTOR).expect("json"))
        .await;
    (api, token, connector)
}

async fn trigger(api: &TestApi, token: &str, connector: &str, body: Value) -> Reply {
    api.post(
        &format!("/api/v1/connectors/{connector}/triggers"),
        token,
        body,
    )
    .await
}

/// Posts `body` to `url` with `headers`, no bearer token.
async fn deliver(api: &TestApi, url: &str, headers: &[(&str, String)], body: &[u8]) -> Reply {
    let mut request = Request::builder().method(Method::POST).uri(url);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    api.send_request(request.body(Body::from(body.to_vec())).expect("request"))
        .await
}

async fn executions(api: &TestApi) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM connector_executions")
        .fetch_one(&api.pool)
        .await
        .expect("count")
}

fn github_headers(secret: &str, body: &[u8], delivery: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".to_owned()),
        (
            "X-Hub-Signature-256",
            format!(
                "sha256={}",
                to_hex(&hmac_sha256(secret.as_bytes(), &[body]))
            ),
        ),
        ("X-GitHub-Delivery", delivery.to_owned()),
    ]
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_trigger_is_created_without_ever_showing_its_secret_and_bad_ones_name_the_field(
    pool: PgPool,
) {
    let (api, token, connector) = setup(pool).await;
    let secret = "It's a Secret to Everybody";
    let created = trigger(
        &api,
        &token,
        &connector,
        json!({"verification": {"type": "github", "secret": secret}, "input": {"repo": "$.body.repository"}}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.id();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(created.json["url"], json!(format!("/hooks/{id}")));
    assert_eq!(created.json["verification"], json!({"type": "github"}));
    for reply in [
        created,
        api.get(&format!("/api/v1/triggers/{id}"), &token).await,
        api.get(&format!("/api/v1/connectors/{connector}/triggers"), &token)
            .await,
    ] {
        assert!(reply.status.is_success(), "{}", reply.text);
        assert!(
            !reply.text.contains("Secret to Everybody"),
            "{}",
            reply.text
        );
    }
    let stored: Vec<u8> = sqlx::query_scalar("SELECT ciphertext FROM webhook_triggers")
        .fetch_one(&api.pool)
        .await
        .expect("sealed");
    assert!(!String::from_utf8_lossy(&stored).contains("Secret"));

    for (body, field) in [
        (
            json!({"verification": {"type": "github"}}),
            "verification.secret",
        ),
        (
            json!({"verification": {"type": "none", "secret": "x"}}),
            "verification.secret",
        ),
        (
            json!({"verification": {"type": "hmac_sha256", "secret": "x"}}),
            "verification.header",
        ),
        (
            json!({"verification": {"type": "github", "secret": "x", "header": ""}}),
            "verification.header",
        ),
        (
            json!({"verification": {"type": "standard_webhooks", "secret": "whsec_???"}}),
            "verification.secret",
        ),
        (
            json!({"verification": {"type": "stripe", "secret": "x", "tolerance_secs": 0}}),
            "verification.tolerance_secs",
        ),
        (
            json!({"verification": {"type": "carrier_pigeon", "secret": "x"}}),
            "verification.type",
        ),
        (
            json!({"verification": {"type": "none"}, "input": {"repo": "$.body[?"}}),
            "input.repo",
        ),
        (
            json!({"verification": {"type": "none"}, "input": {"repo": "<<input.x>>"}}),
            "input.repo",
        ),
    ] {
        let reply = trigger(&api, &token, &connector, body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            reply.text
        );
        let paths: Vec<&str> = reply.json["error"]["details"]["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["path"].as_str())
            .collect();
        assert!(paths.contains(&field), "{body}: {paths:?}");
    }

    let other = api.token("ws_elsewhere", "u");
    let hidden = api
        .get(&format!("/api/v1/triggers/{id}/deliveries"), &other)
        .await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_github_delivery_starts_one_execution_however_often_it_is_retried(pool: PgPool) {
    let (api, token, connector) = setup(pool).await;
    let secret = "gh-secret";
    let created = trigger(
        &api,
        &token,
        &connector,
        json!({"verification": {"type": "github", "secret": secret},
               "input": {"repo": "$.body.repository.full_name", "n": "$.body.number"}}),
    )
    .await;
    let id = created.id();
    let url = format!("/hooks/{id}");
    let body = br#"{"repository": {"full_name": "octo/hello"}, "number": 7}"#;

    let first = deliver(&api, &url, &github_headers(secret, body, "d-1"), body).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    assert_eq!(first.json["duplicate"], false);
    let execution = first.json["execution_id"].as_str().expect("id").to_owned();
    let again = deliver(&api, &url, &github_headers(secret, body, "d-1"), body).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.json["duplicate"], true);
    assert_eq!(again.json["execution_id"], json!(execution));
    assert_eq!(executions(&api).await, 1);
    let shown = api
        .get(&format!("/api/v1/executions/{execution}"), &token)
        .await;
    assert_eq!(shown.json["started_by"], json!(format!("trigger:{id}")));
    assert_eq!(shown.json["input"], json!({"repo": "octo/hello", "n": 7}));

    // Tampered, unsigned, wrongly keyed: 401 and nothing started.
    let mut tampered = github_headers(secret, body, "d-2");
    tampered[1].1 = github_headers(secret, b"{}", "d-2")[1].1.clone();
    let unsigned: Vec<_> = github_headers(secret, body, "d-3")
        .into_iter()
        .filter(|(n, _)| *n != "X-Hub-Signature-256")
        .collect();
    for headers in [
        tampered,
        unsigned,
        github_headers("not-the-secret", body, "d-4"),
    ] {
        let reply = deliver(&api, &url, &headers, body).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    }
    // Verified, but the mapping or the input schema refuses it: 422.
    let no_repo = br#"{"number": 1}"#;
    let reply = deliver(&api, &url, &github_headers(secret, no_repo, "d-5"), no_repo).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(
        reply.json["error"]["details"]["errors"][0]["path"],
        "input.repo"
    );
    let wrong_type = br#"{"repository": {"full_name": "a/b"}, "number": "seven"}"#;
    let reply = deliver(
        &api,
        &url,
        &github_headers(secret, wrong_type, "d-6"),
        wrong_type,
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(
        reply.json["error"]["details"]["errors"][0]["path"],
        "input.n"
    );
    assert_eq!(executions(&api).await, 1);

    let listed = api
        .get(&format!("/api/v1/triggers/{id}/deliveries"), &token)
        .await;
    let seen: Vec<(i64, &str)> = listed
        .items()
        .iter()
        .rev()
        .map(|d| {
            (
                d["status"].as_i64().unwrap_or(0),
                d["outcome"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (202, "started"),
            (202, "duplicate"),
            (401, "unverified"),
            (401, "unverified"),
            (401, "unverified"),
            (422, "unmapped"),
            (422, "unmapped"),
        ]
    );
    assert_eq!(listed.items()[6]["delivery_id"], "d-1");

    let unknown = deliver(&api, "/hooks/00000000000000000000000000000000", &[], b"{}").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let deleted = api
        .call(
            Method::DELETE,
            &format!("/api/v1/triggers/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = deliver(&api, &url, &github_headers(secret, body, "d-7"), body).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn slack_handshakes_are_answered_and_stale_requests_refused(pool: PgPool) {
    let (api, token, connector) = setup(pool).await;
    let secret = "slack-signing-secret";
    let id = trigger(
        &api,
        &token,
        &connector,
        json!({"verification": {"type": "slack", "secret": secret},
               "input": {"repo": "<<body.team_id>>/<<body.command>>"}}),
    )
    .await
    .id();
    let url = format!("/hooks/{id}");
    let sign = |ts: i64, body: &[u8]| {
        let t = ts.to_string();
        vec![
            ("X-Slack-Request-Timestamp", t.clone()),
            (
                "X-Slack-Signature",
                format!(
                    "v0={}",
                    to_hex(&hmac_sha256(
                        secret.as_bytes(),
                        &[b"v0:", t.as_bytes(), b":", body]
                    ))
                ),
            ),
        ]
    };
    let now = Utc::now().timestamp();
    let challenge = br#"{"type": "url_verification", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "token": "t"}"#;
    let mut headers = sign(now, challenge);
    headers.push(("content-type", "application/json".to_owned()));
    let reply = deliver(&api, &url, &headers, challenge).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        reply.json,
        json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
    );
    let unsigned = deliver(
        &api,
        &url,
        &[("content-type", "application/json".to_owned())],
        challenge,
    )
    .await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);

    // A slash command arrives as a form.
    let form = b"team_id=T1&command=%2Fdeploy&text=now";
    let mut headers = sign(now, form);
    headers.push((
        "content-type",
        "application/x-www-form-urlencoded".to_owned(),
    ));
    let reply = deliver(&api, &url, &headers, form).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let execution = reply.json["execution_id"].as_str().expect("id").to_owned();
    let shown = api
        .get(&format!("/api/v1/executions/{execution}"), &token)
        .await;
    assert_eq!(shown.json["input"], json!({"repo": "T1//deploy"}));

    let mut stale = sign(now - 600, form);
    stale.push((
        "content-type",
        "application/x-www-form-urlencoded".to_owned(),
    ));
    let reply = deliver(&api, &url, &stale, form).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.text.contains("timestamp"), "{}", reply.text);
    assert_eq!(executions(&api).await, 1);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn standard_webhooks_and_stripe_dedupe_by_their_own_ids(pool: PgPool) {
    let (api, token, connector) = setup(pool).await;
    let key = b"0123456789abcdef0123456789abcdef";
    let whsec = format!("whsec_{}", STANDARD.encode(key));
    let sw = trigger(
        &api,
        &token,
        &connector,
        json!({"verification": {"type": "standard_webhooks", "secret": whsec}}),
    )
    .await
    .id();
    let body = br#"{"repo": "from-standard"}"#;
    let now = Utc::now().timestamp();
    let signed = |msg: &str, ts: i64| {
        let t = ts.to_string();
        let sig = STANDARD.encode(hmac_sha256(
            key,
            &[msg.as_bytes(), b".", t.as_bytes(), b".", body],
        ));
        vec![
            ("content-type", "application/json".to_owned()),
            ("webhook-id", msg.to_owned()),
            ("webhook-timestamp", t),
            ("webhook-signature", format!("v1,{sig}")),
        ]
    };
    let url = format!("/hooks/{sw}");
    assert_eq!(
        deliver(&api, &url, &signed("msg_1", now), body)
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let again = deliver(&api, &url, &signed("msg_1", now + 5), body).await;
    assert_eq!(again.json["duplicate"], true, "{}", again.text);
    let stale = deliver(&api, &url, &signed("msg_2", now - 3600), body).await;
    assert_eq!(stale.status, StatusCode::UNAUTHORIZED);

    let stripe_secret = "whsec_stripe";
    let st = trigger(
        &api,
        &token,
        &connector,
        json!({"verification": {"type": "stripe", "secret": stripe_secret},
               "input": {"repo": "$.body.data.object.customer"}}),
    )
    .await
    .id();
    let event =
        br#"{"id": "evt_42", "type": "invoice.paid", "data": {"object": {"customer": "cus_9"}}}"#;
    let t = now.to_string();
    let sig = to_hex(&hmac_sha256(
        stripe_secret.as_bytes(),
        &[t.as_bytes(), b".", event],
    ));
    let headers = vec![
        ("content-type", "application/json".to_owned()),
        ("Stripe-Signature", format!("t={t},v1={sig}")),
    ];
    let url = format!("/hooks/{st}");
    let first = deliver(&api, &url, &headers, event).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    let retry = deliver(&api, &url, &headers, event).await;
    assert_eq!(retry.json["duplicate"], true);
    assert_eq!(executions(&api).await, 2);
    let deliveries = api
        .get(&format!("/api/v1/triggers/{st}/deliveries"), &token)
        .await;
    assert_eq!(deliveries.items()[0]["delivery_id"], "evt_42");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_shared_header_secret_never_reaches_the_input(pool: PgPool) {
    let (api, token, connector) = setup(pool).await;
    let id = trigger(
        &api,
        &token,
        &connector,
        json!({"verification": {"type": "header", "secret": "hunter22", "header": "X-Hook-Token"},
               "input": {"repo": "<<query.repo>>"}}),
    )
    .await
    .id();
    let url = format!("/hooks/{id}?repo=q%2Fr");
    let ok = deliver(&api, &url, &[("X-Hook-Token", "hunter22".to_owned())], b"").await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.text);
    let wrong = deliver(&api, &url, &[("X-Hook-Token", "hunter2".to_owned())], b"").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    // A mapping cannot read the secret header back into the input.
    let leaky = trigger(
        &api,
        &token,
        &connector,
        json!({"verification": {"type": "header", "secret": "hunter22", "header": "X-Hook-Token"},
               "input": {"repo": "$.headers['x-hook-token']"}}),
    )
    .await
    .id();
    let reply = deliver(
        &api,
        &format!("/hooks/{leaky}"),
        &[("X-Hook-Token", "hunter22".to_owned())],
        b"",
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert!(!reply.text.contains("hunter22"));
    let inputs: Vec<Value> = sqlx::query_scalar("SELECT input FROM connector_executions")
        .fetch_all(&api.pool)
        .await
        .expect("inputs");
    assert_eq!(inputs, [json!({"repo": "q/r"})]);
}

/// A verified delivery holding the NUL character is refused as the JSON
/// API refuses one (422 naming the field), not sent to PostgreSQL, which
/// cannot store it; a delivery the database fails on is recorded without
/// the database's words.
#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_delivery_holding_nul_is_422_naming_the_field_and_failures_are_recorded_plainly(
    pool: PgPool,
) {
    let (api, token, connector) = setup(pool).await;
    let id = trigger(
        &api,
        &token,
        &connector,
        json!({"verification": {"type": "none"}}),
    )
    .await
    .id();
    let url = format!("/hooks/{id}");
    let json_body = [("content-type", "application/json".to_owned())];
    let nul = br#"{"repo": "a\u0000b"}"#;
    let reply = deliver(&api, &url, &json_body, nul).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(
        reply.json["error"]["details"]["errors"][0]["path"],
        "body.repo"
    );
    let form = [(
        "content-type",
        "application/x-www-form-urlencoded".to_owned(),
    )];
    let reply = deliver(&api, &format!("{url}?from=%00"), &form, b"repo=a").await;
    assert_eq!(
        reply.json["error"]["details"]["errors"][0]["path"], "query.from",
        "{}",
        reply.text
    );
    assert_eq!(executions(&api).await, 0);

    // The database refuses every new execution from here on.
    sqlx::query(
        "ALTER TABLE connector_executions ADD CONSTRAINT refuse_all CHECK (false) NOT VALID",
    )
    .execute(&api.pool)
    .await
    .expect("constraint");
    let reply = deliver(&api, &url, &json_body, br#"{"repo": "a/b"}"#).await;
    assert_eq!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        reply.text
    );
    let listed = api
        .get(&format!("/api/v1/triggers/{id}/deliveries"), &token)
        .await;
    let items = listed.items();
    assert_eq!(items.len(), 3, "{}", listed.text);
    assert_eq!(items[0]["status"], 500);
    let error = items[0]["error"].as_str().unwrap_or("");
    assert!(
        !error.contains("refuse_all") && !error.contains("constraint"),
        "{error}"
    );
    assert!(
        items[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("query.from")),
        "{}",
        listed.text
    );
}

/// A provider's delivery id is read as the UTF-8 it is, so a retried
/// delivery with a non-ASCII id is still a duplicate.
#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_non_ascii_delivery_id_still_deduplicates(pool: PgPool) {
    let (api, token, connector) = setup(pool).await;
    let secret = "gh-secret";
    let id = trigger(
        &api,
        &token,
        &connector,
        json!({"verification": {"type": "github", "secret": secret},
               "input": {"repo": "$.body.repo"}}),
    )
    .await
    .id();
    let url = format!("/hooks/{id}");
    let body = br#"{"repo": "octo/hello"}"#;
    let first = deliver(
        &api,
        &url,
        &github_headers(secret, body, "lívraison-1"),
        body,
    )
    .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    let again = deliver(
        &api,
        &url,
        &github_headers(secret, body, "lívraison-1"),
        body,
    )
    .await;
    assert_eq!(again.json["duplicate"], true, "{}", again.text);
    assert_eq!(again.json["execution_id"], first.json["execution_id"]);
    assert_eq!(executions(&api).await, 1);
}

/// What the router refuses before the delivery is read (an id that is not
/// UTF-8, a body over the limit) is answered in the API's error shape.
#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn malformed_ids_and_oversized_deliveries_answer_the_error_shape(pool: PgPool) {
    let small = TestApi::with_config(
        pool,
        conveyor_api::ApiConfig {
            max_request_bytes: 1024,
            ..conveyor_api::ApiConfig::default()
        },
    );
    let token = small.token("ws_hooks", "u");
    let connector = small
        .create_connector(&token, serde_json::from_str(CONNECTOR).expect("json"))
        .await;
    let id = trigger(
        &small,
        &token,
        &connector,
        json!({"verification": {"type": "none"}}),
    )
    .await
    .id();
    for url in ["/hooks/%FF", "/hooks/%00"] {
        let reply = deliver(&small, url, &[], b"{}").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{url}: {}", reply.text);
        assert_eq!(reply.json["error"]["code"], "not_found", "{url}");
    }
    let big = format!(r#"{{"repo": "{}"}}"#, "x".repeat(4096));
    let reply = deliver(
        &small,
        &format!("/hooks/{id}"),
        &[("content-type", "application/json".to_owned())],
        big.as_bytes(),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    assert_eq!(reply.json["error"]["code"], "payload_too_large");
    assert_eq!(executions(&small).await, 0);
}
