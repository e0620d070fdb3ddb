//! Rejected input changes nothing: malformed or non-JSON bodies, bad
//! pagination, unknown fields, invalid connectors, input against the
//! connector's schema, bad credential bodies and oversized bodies each get
//! a clear 4xx naming the field, and no row is written.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use conveyor_api::ApiConfig;
use conveyor_tests::api::TestApi;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::{PLANTED, api, assert_no_planted, config, row_counts, simple_connector};

/// A workspace with a typed connector and a credential, and the row
/// counts every rejected request must leave as they are.
struct Setup {
    pool: PgPool,
    api: TestApi,
    /// Workspace `ws_a`, which owns the connector.
    a: String,
    /// A workspace with nothing in it yet.
    fresh: String,
    connector: String,
    execute: String,
    before: BTreeMap<&'static str, i64>,
}

async fn setup(pool: PgPool) -> Setup {
    let api = api(pool.clone());
    let a = api.token("ws_a", "alice");
    let fresh = api.token("ws_fresh", "carol");
    let connector = api
        .create_connector(
            &a,
            json!({
                "name": "typed",
                "input_schema": {
                    "type": "object",
                    "required": ["email"],
                    "properties": {
                        "email": {"type": "string"},
                        "age": {"type": "integer", "minimum": 0},
                        "name": {"type": "string", "maxLength": 5}
                    },
                    "additionalProperties": false
                },
                "steps": [{"name": "ping", "method": "GET", "url": "http://127.0.0.1:9/ping"}]
            }),
        )
        .await;
    api.put_credential(&a, "crm", json!({"token": PLANTED}))
        .await;
    let execute = format!("/api/v1/connectors/{connector}/execute");
    let before = row_counts(&pool).await;
    Setup {
        pool,
        api,
        a,
        fresh,
        connector,
        execute,
        before,
    }
}

impl Setup {
    async fn assert_nothing_written(&self) {
        assert_eq!(
            row_counts(&self.pool).await,
            self.before,
            "a rejected request wrote something"
        );
    }
}

/// A request with a raw body and an optional content type.
fn raw(
    uri: &str,
    verb: Method,
    token: &str,
    content_type: Option<&str>,
    body: String,
) -> Request<Body> {
    let mut request = Request::builder()
        .method(verb)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"));
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    request.body(Body::from(body)).expect("request")
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn malformed_json_is_400_wherever_a_body_is_read(pool: PgPool) {
    let s = setup(pool).await;
    let execute = s.execute.clone();
    let api = &s.api;
    for token in [s.a.as_str(), s.fresh.as_str()] {
        // Malformed JSON: 400, wherever a body is read.
        for (verb, uri) in [
            (Method::POST, "/api/v1/connectors".to_owned()),
            (Method::POST, execute.clone()),
            (Method::PUT, "/api/v1/credentials/crm".to_owned()),
            (Method::POST, "/api/v1/api-keys".to_owned()),
        ] {
            for malformed in ["{not json", "{\"", "", "{]", "nul"] {
                let reply = api
                    .send_request(raw(
                        &uri,
                        verb.clone(),
                        token,
                        Some("application/json"),
                        malformed.to_owned(),
                    ))
                    .await;
                assert_eq!(
                    reply.status,
                    StatusCode::BAD_REQUEST,
                    "{verb} {uri} {malformed:?}: {}",
                    reply.text
                );
                assert_eq!(
                    reply.json["error"]["code"], "malformed_json",
                    "{}",
                    reply.text
                );
            }
        }
    }
    s.assert_nothing_written().await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_body_that_is_not_json_is_415(pool: PgPool) {
    let s = setup(pool).await;
    let api = &s.api;
    for token in [s.a.as_str(), s.fresh.as_str()] {
        // Not JSON at all: 415.
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let reply = api
                .send_request(raw(
                    "/api/v1/connectors",
                    Method::POST,
                    token,
                    content_type,
                    simple_connector("http://x").to_string(),
                ))
                .await;
            assert_eq!(
                reply.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content_type:?}: {}",
                reply.text
            );
            assert_eq!(reply.json["error"]["code"], "unsupported_media_type");
        }
    }
    s.assert_nothing_written().await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn bad_pagination_is_400(pool: PgPool) {
    let s = setup(pool).await;
    let api = &s.api;
    for token in [s.a.as_str(), s.fresh.as_str()] {
        // Bad pagination: 400.
        for query in [
            "cursor=garbage",
            "cursor=bm9waXBl",
            "limit=0",
            "limit=201",
            "limit=ten",
            "status=exploded",
            "created_after=yesterday",
            "bogus=1",
        ] {
            let reply = api.get(&format!("/api/v1/executions?{query}"), token).await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{query}: {}",
                reply.text
            );
            assert_eq!(reply.json["error"]["code"], "bad_request", "{query}");
        }
    }
    s.assert_nothing_written().await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn unknown_fields_are_422_naming_the_field(pool: PgPool) {
    let s = setup(pool).await;
    let (api, a, execute) = (&s.api, &s.a, &s.execute);
    // Unknown fields: 422 naming the field.
    let reply = api
        .post(execute, a, json!({"input": {"email": "e"}, "priorty": 5}))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(reply.json["error"]["code"], "validation_failed");
    assert!(
        reply.json["error"]["message"]
            .as_str()
            .expect("message")
            .contains("priorty"),
        "{}",
        reply.text
    );
    assert!(
        reply.json["error"]["details"]["errors"][0]["message"]
            .as_str()
            .expect("message")
            .contains("priorty")
    );
    let reply = api
        .post(
            &format!("{execute}/batch"),
            a,
            json!({"items": [{"input": {"email": "e"}, "inptu": {}}]}),
        )
        .await;
    reply.assert_refused("inptu");
    assert!(reply.text.contains("items[0]"), "{}", reply.text);
    let reply = api
        .post("/api/v1/api-keys", a, json!({"name": "x", "scope": "all"}))
        .await;
    reply.assert_refused("scope");

    s.assert_nothing_written().await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn invalid_connectors_are_422_with_the_path_of_each_problem(pool: PgPool) {
    let s = setup(pool).await;
    let (api, a, fresh, connector) = (&s.api, &s.a, &s.fresh, &s.connector);
    // Invalid connectors: 422 with the path of each problem.
    let invalid = json!({"name": "bad", "steps": [
        {"name": "one", "method": "GET", "url": "ftp://example.com/x"},
        {"name": "Two!", "method": "GET", "url": "https://example.com/<<steps.nope.extract.id>>"}
    ]});
    let reply = api.post("/api/v1/connectors", a, invalid.clone()).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(reply.json["error"]["code"], "validation_failed");
    let paths: BTreeSet<&str> = reply.json["error"]["details"]["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["path"].as_str().expect("path"))
        .collect();
    for expected in ["steps[0].url", "steps[1].name", "steps[1].url"] {
        assert!(
            paths.contains(expected),
            "{expected} missing from {paths:?}"
        );
    }
    let reply = api
        .post(
            "/api/v1/connectors",
            a,
            json!({"name": "shape", "steps": [
                {"name": "s", "method": "GET", "url": "https://x.example", "retries": 3}]}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(
        reply.json["error"]["details"]["errors"][0]["path"], "steps[0].retries",
        "{}",
        reply.text
    );
    assert!(reply.text.contains("retries"));
    let reply = api
        .call(
            Method::PUT,
            &format!("/api/v1/connectors/{connector}"),
            Some(a),
            Some(invalid.clone()),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    let reply = api.post("/api/v1/connectors", fresh, invalid).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );

    s.assert_nothing_written().await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn input_against_the_schema_is_422_listing_each_violation(pool: PgPool) {
    let s = setup(pool).await;
    let (api, a, execute) = (&s.api, &s.a, &s.execute);
    // Input against the connector's input_schema: 422 listing each violation.
    let reply = api
        .post(
            execute,
            a,
            json!({"input": {"age": -1, "name": "far too long", "extra": true}}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(reply.json["error"]["code"], "validation_failed");
    let errors = reply.json["error"]["details"]["errors"]
        .as_array()
        .expect("errors");
    assert_eq!(
        errors.len(),
        4,
        "required email, age, name, extra: {}",
        reply.text
    );
    for (needle, at) in [
        ("email", "input"),
        ("-1", "age"),
        ("far too long", "name"),
        ("extra", "input"),
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e["message"].as_str().unwrap_or("").contains(needle)
                    && e["path"].as_str().unwrap_or("").starts_with("input")
                    && e["path"].as_str().unwrap_or("").contains(at)),
            "no violation about {needle} at {at}: {}",
            reply.text
        );
    }
    let reply = api
        .post(
            &format!("{execute}/batch"),
            a,
            json!({"items": [
                {"input": {"email": "ok@example.com"}}, {"input": {"email": 5}}, {"input": {}},
                {"input": [1]}, {"input": {"email": "ok@example.com"}, "idempotency_key": ""}]}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    let errors = reply.json["error"]["details"]["errors"]
        .as_array()
        .expect("errors");
    assert_eq!(errors.len(), 4, "{}", reply.text);
    assert_eq!(errors[2]["path"], "items[3].input", "{}", reply.text);
    assert_eq!(
        errors[3]["path"], "items[4].idempotency_key",
        "{}",
        reply.text
    );
    assert!(
        errors[0]["path"]
            .as_str()
            .expect("path")
            .starts_with("items[1].input"),
        "{}",
        reply.text
    );
    assert!(
        errors[1]["path"]
            .as_str()
            .expect("path")
            .starts_with("items[2].input"),
        "{}",
        reply.text
    );
    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({"input": {"email": "e"}}))
        .collect();
    let reply = api
        .post(&format!("{execute}/batch"), a, json!({ "items": too_many }))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    let reply = api
        .post(&format!("{execute}/batch"), a, json!({ "items": [] }))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );

    s.assert_nothing_written().await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn bad_credential_bodies_name_the_field_never_the_value(pool: PgPool) {
    let s = setup(pool).await;
    let (api, a) = (&s.api, &s.a);
    // Bad credential bodies: 422 naming the field, never quoting the value.
    let reply = api
        .call(
            Method::PUT,
            "/api/v1/credentials/crm",
            Some(a),
            Some(json!({"data": {"token": [PLANTED]}})),
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
        "data.token"
    );
    assert_no_planted("a credential error", &reply.text);

    s.assert_nothing_written().await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn bodies_over_the_limit_are_413(pool: PgPool) {
    let s = setup(pool.clone()).await;
    let small = TestApi::with_keyring(
        pool,
        s.api.keyring.clone(),
        ApiConfig {
            max_request_bytes: 2048,
            ..config()
        },
    );
    let (a, execute, connector) = (&s.a, &s.execute, &s.connector);
    // Over the body limit: 413.
    let big = json!({"name": "big", "description": "x".repeat(4096),
                     "steps": [{"name": "ping", "method": "GET", "url": "http://127.0.0.1:9/ping"}]});
    for (verb, uri, body) in [
        (Method::POST, "/api/v1/connectors".to_owned(), big.clone()),
        (Method::PUT, format!("/api/v1/connectors/{connector}"), big),
        (
            Method::POST,
            execute.clone(),
            json!({"input": {"email": "y".repeat(4096)}}),
        ),
        (
            Method::PUT,
            "/api/v1/credentials/crm".to_owned(),
            json!({"data": {"token": "z".repeat(4096)}}),
        ),
    ] {
        let reply = small.call(verb.clone(), &uri, Some(a), Some(body)).await;
        assert_eq!(
            reply.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{verb} {uri}: {}",
            reply.text
        );
        assert_eq!(reply.json["error"]["code"], "payload_too_large");
    }
    // The same limit passes a small body.
    let fine = small.get("/api/v1/connectors", a).await;
    assert_eq!(fine.status, StatusCode::OK);

    s.assert_nothing_written().await;
}

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
