//! API keys with scopes and expiry, through the in-process API.

use axum::http::{Method, StatusCode};
use conveyor_tests::api::{Reply, TestApi};
use serde_json::json;
use sqlx::PgPool;

async fn key(api: &TestApi, user: &str, body: serde_json::Value) -> Reply {
    api.post("/api/v1/api-keys", user, body).await
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn an_api_key_may_do_only_what_its_scopes_allow(pool: PgPool) {
    let api = TestApi::new(pool);
    let user = api.token("ws_keys", "alice");
    let connector = api
        .create_connector(
            &user,
            json!({"name": "k", "steps": [
                {"name": "x", "method": "GET", "url": "https://api.example.com/x"}]}),
        )
        .await;
    let Reply {
        status, json: all, ..
    } = key(&api, &user, json!({"name": "all"})).await;
    assert_eq!(status, StatusCode::CREATED, "{all}");
    assert_eq!(all["scopes"], json!(["read", "execute", "manage"]));
    assert_eq!(all["expires_at"], json!(null));
    let reader = key(&api, &user, json!({"name": "r", "scopes": ["read"]}))
        .await
        .json;
    let runner = key(
        &api,
        &user,
        json!({"name": "x", "scopes": ["execute", "read", "execute"]}),
    )
    .await
    .json;
    assert_eq!(runner["scopes"], json!(["read", "execute"]));
    let reader = reader["key"].as_str().expect("key").to_owned();
    let runner = runner["key"].as_str().expect("key").to_owned();
    let all = all["key"].as_str().expect("key").to_owned();

    let execute = format!("/api/v1/connectors/{connector}/execute");
    let create = json!({"name": "new", "steps": [
        {"name": "x", "method": "GET", "url": "https://api.example.com/x"}]});
    let cases = [
        (
            &reader,
            Method::GET,
            "/api/v1/connectors".to_owned(),
            None,
            StatusCode::OK,
        ),
        (
            &reader,
            Method::POST,
            execute.clone(),
            Some(json!({"input": {}})),
            StatusCode::FORBIDDEN,
        ),
        (
            &reader,
            Method::POST,
            "/api/v1/connectors".to_owned(),
            Some(create.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            &reader,
            Method::GET,
            "/api/v1/audit".to_owned(),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            &runner,
            Method::POST,
            execute.clone(),
            Some(json!({"input": {}})),
            StatusCode::ACCEPTED,
        ),
        (
            &runner,
            Method::POST,
            "/api/v1/connectors".to_owned(),
            Some(create.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            &all,
            Method::POST,
            "/api/v1/connectors".to_owned(),
            Some(create),
            StatusCode::CREATED,
        ),
        (
            &all,
            Method::GET,
            "/api/v1/audit".to_owned(),
            None,
            StatusCode::OK,
        ),
    ];
    for (token, method, path, body, want) in cases {
        let Reply {
            status,
            json: reply,
            ..
        } = api.call(method.clone(), &path, Some(token), body).await;
        assert_eq!(status, want, "{method} {path}: {reply}");
        if want == StatusCode::FORBIDDEN {
            assert!(
                reply["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("scope"),
                "{reply}"
            );
        }
    }
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn expired_keys_are_refused_and_bad_settings_name_their_field(pool: PgPool) {
    let api = TestApi::new(pool.clone());
    let user = api.token("ws_keys", "alice");
    let soon = chrono::Utc::now() + chrono::Duration::hours(1);
    let Reply {
        status,
        json: created,
        ..
    } = key(&api, &user, json!({"name": "soon", "expires_at": soon})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(created["expires_at"].is_string());
    let token = created["key"].as_str().expect("key").to_owned();
    assert_eq!(
        api.get("/api/v1/connectors", &token).await.status,
        StatusCode::OK
    );
    sqlx::query("UPDATE workspace_api_keys SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .expect("expire");
    let reply = api.get("/api/v1/connectors", &token).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    assert!(reply.text.contains("expired"), "{}", reply.text);

    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    for (body, path) in [
        (json!({"name": "p", "expires_at": past}), "expires_at"),
        (
            json!({"name": "s", "scopes": ["read", "admin"]}),
            "scopes[1]",
        ),
        (json!({"name": "e", "scopes": []}), "scopes"),
    ] {
        let Reply {
            status,
            json: reply,
            ..
        } = key(&api, &user, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
        assert_eq!(
            reply["error"]["details"]["errors"][0]["path"], path,
            "{reply}"
        );
    }
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_flood_of_invalid_keys_is_held_off_before_the_database(pool: PgPool) {
    let api = TestApi::with_config(
        pool.clone(),
        conveyor_api::ApiConfig {
            rate_limit_per_sec: 1,
            ..conveyor_api::ApiConfig::default()
        },
    );
    let user = api.token("ws_keys", "alice");
    let created = key(&api, &user, json!({"name": "good"})).await.json;
    let good = created["key"].as_str().expect("key").to_owned();
    assert_eq!(
        api.get("/api/v1/connectors", &good).await.status,
        StatusCode::OK
    );
    let statuses: Vec<StatusCode> = {
        let mut out = Vec::new();
        for i in 0..4 {
            out.push(
                api.get("/api/v1/connectors", &format!("cvk_forged{i}"))
                    .await
                    .status,
            );
        }
        out
    };
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // The refusal names the cause. Refilling over time, and the pass kept
    // by keys that authenticated recently, are checked with an injected
    // clock in `ratelimit`'s own tests (no real-time wait here).
    let held = api.get("/api/v1/connectors", "cvk_forged_again").await;
    assert_eq!(held.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(held.text.contains("invalid API keys"), "{}", held.text);
}
