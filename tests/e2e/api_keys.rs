//! API keys with scopes and expiry, through the in-process API.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use conveyor_tests::api::{Reply, TestApi};
use serde_json::json;
use sqlx::PgPool;

async fn key(api: &TestApi, user: &str, body: serde_json::Value) -> Reply {
    api.post("/api/v1/api-keys", user, body).await
}

/// `GET /connectors` with `token` until it is refused (401) or `within`
/// has passed; the last reply.
async fn refused_within(api: &TestApi, token: &str, within: Duration) -> Reply {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let reply = api.get("/api/v1/connectors", token).await;
        if reply.status != StatusCode::OK || tokio::time::Instant::now() >= deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An API whose key cache keeps keys for an hour: whatever refuses a kept
/// key within a test's few seconds is an invalidation, not its age.
fn api_keeping_keys(pool: PgPool, secs: u64) -> TestApi {
    TestApi::with_config(
        pool,
        conveyor_api::ApiConfig {
            api_key_cache: Duration::from_secs(secs),
            metrics_token: Some(METRICS_TOKEN.to_owned().into()),
            ..conveyor_api::ApiConfig::default()
        },
    )
}

/// The bearer token of `/metrics` on these tests' API.
const METRICS_TOKEN: &str = "api-keys-metrics-token";

/// Sets the stored digest of every key of the database to `digest`
/// without firing the triggers (so without a notification): the key
/// stops matching in the database while the API is not told.
async fn swap_digests_unheard(pool: &PgPool, digest: &str) {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .expect("replica");
    sqlx::query("UPDATE workspace_api_keys SET key_hash = decode($1, 'hex')")
        .bind(digest)
        .execute(&mut *tx)
        .await
        .expect("swap");
    tx.commit().await.expect("commit");
}

/// A new key of every scope, made by `user` through the API.
async fn new_key(api: &TestApi, user: &str, name: &str) -> String {
    let created = key(api, user, json!({ "name": name })).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    created.json["key"].as_str().expect("key").to_owned()
}

/// The stored digest of the database's one key, in hex.
async fn stored_digest(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT encode(key_hash, 'hex') FROM workspace_api_keys")
        .fetch_one(pool)
        .await
        .expect("digest")
}

/// Uses `token`, which must work, then swaps its stored digest away
/// unheard (and leaves it so): whether the API still serves the key.
async fn served_unmatched(api: &TestApi, pool: &PgPool, token: &str) -> bool {
    let used = api.get("/api/v1/connectors", token).await;
    assert_eq!(used.status, StatusCode::OK, "{}", used.text);
    swap_digests_unheard(pool, "00").await;
    api.get("/api/v1/connectors", token).await.status == StatusCode::OK
}

/// Makes `token` a key the API serves from its cache alone: it keeps
/// working while its digest in the database no longer matches (which is
/// left so). The API's listener connects in the background and the cache
/// keeps keys only once it listens, so this tries until one is kept.
/// Returns the key's real digest.
async fn kept_and_unmatched(api: &TestApi, pool: &PgPool, token: &str) -> String {
    let digest = stored_digest(pool).await;
    for _ in 0..250 {
        if served_unmatched(api, pool, token).await {
            return digest;
        }
        swap_digests_unheard(pool, &digest).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the API never kept the key");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_kept_key_is_served_without_the_database_and_none_is_kept_at_zero(pool: PgPool) {
    let api = api_keeping_keys(pool.clone(), 3600);
    let user = api.token("ws_keys", "alice");
    let token = new_key(&api, &user, "kept").await;
    kept_and_unmatched(&api, &pool, &token).await;
    let reply = api.get("/api/v1/connectors", &token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    // The metrics tell the lookups served from the cache from those that
    // asked the database.
    let metrics = api.get("/metrics", METRICS_TOKEN).await.text;
    for source in ["cache", "database"] {
        let line = format!("conveyor_api_key_lookups_total{{source=\"{source}\"}} ");
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in {metrics}"))
            .parse()
            .expect("count");
        assert!(count >= 1, "{source}: {count}");
    }

    // With the cache off, the same swap refuses the key at once, however
    // long the listener has been up.
    sqlx::query("DELETE FROM workspace_api_keys")
        .execute(&pool)
        .await
        .expect("delete");
    let api = api_keeping_keys(pool.clone(), 0);
    let token = new_key(&api, &user, "unkept").await;
    let digest = stored_digest(&pool).await;
    for _ in 0..20 {
        assert!(!served_unmatched(&api, &pool, &token).await);
        swap_digests_unheard(&pool, &digest).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_kept_key_revoked_elsewhere_is_refused_once_the_database_says_so(pool: PgPool) {
    let api = api_keeping_keys(pool.clone(), 3600);
    let user = api.token("ws_keys", "alice");
    // Another API process revokes the key, or changes its scopes: this
    // one hears the database's notification, not its own route.
    for (name, change, refusal) in [
        (
            "revoked",
            "UPDATE workspace_api_keys SET revoked_at = now()",
            StatusCode::UNAUTHORIZED,
        ),
        (
            "rescoped",
            "UPDATE workspace_api_keys SET scopes = '{execute}'",
            StatusCode::FORBIDDEN,
        ),
    ] {
        sqlx::query("DELETE FROM workspace_api_keys")
            .execute(&pool)
            .await
            .expect("delete");
        let token = new_key(&api, &user, name).await;
        let digest = kept_and_unmatched(&api, &pool, &token).await;
        swap_digests_unheard(&pool, &digest).await;
        sqlx::query(change).execute(&pool).await.expect(name);
        let reply = refused_within(&api, &token, Duration::from_secs(5)).await;
        assert_eq!(reply.status, refusal, "{name}: {}", reply.text);
    }
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_key_revoked_through_this_process_is_refused_at_once(pool: PgPool) {
    let api = api_keeping_keys(pool.clone(), 3600);
    let user = api.token("ws_keys", "alice");
    let token = new_key(&api, &user, "kept").await;
    kept_and_unmatched(&api, &pool, &token).await;
    // No notification will come: only the route itself can drop the key.
    sqlx::query("ALTER TABLE workspace_api_keys DISABLE TRIGGER workspace_api_keys_changed")
        .execute(&pool)
        .await
        .expect("disable");
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM workspace_api_keys")
        .fetch_one(&pool)
        .await
        .expect("id");
    let revoked = api
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            Some(&user),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.text);
    let reply = api.get("/api/v1/connectors", &token).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_lost_listening_connection_empties_the_key_cache(pool: PgPool) {
    let api = api_keeping_keys(pool.clone(), 3600);
    let user = api.token("ws_keys", "alice");
    let token = new_key(&api, &user, "kept").await;
    kept_and_unmatched(&api, &pool, &token).await;
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND query LIKE '%LISTEN%conveyor_api_keys%'",
    )
    .fetch_all(&pool)
    .await
    .expect("terminate");
    assert_eq!(ended, [true]);
    // Whatever happened while it was gone is unknown: the key is looked
    // up again, and the database no longer knows its digest.
    let reply = refused_within(&api, &token, Duration::from_secs(5)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn key_changes_are_notified_by_id_and_uses_are_not(pool: PgPool) {
    let api = TestApi::new(pool.clone());
    let user = api.token("ws_keys", "alice");
    new_key(&api, &user, "a").await;
    new_key(&api, &user, "b").await;
    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM workspace_api_keys ORDER BY name")
            .fetch_all(&pool)
            .await
            .expect("ids");
    let (a, b) = (ids[0], ids[1]);
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .expect("connect");
    listener
        .listen(conveyor_engine::store::channels::API_KEYS)
        .await
        .expect("listen");
    // Notifications arrive in commit order: a use of `a` notified would
    // come before the change of `b`.
    for (change, id, notified) in [
        (
            "UPDATE workspace_api_keys SET last_used_at = now() WHERE id = $1",
            a,
            false,
        ),
        (
            "UPDATE workspace_api_keys SET name = 'renamed' WHERE id = $1",
            a,
            false,
        ),
        (
            "UPDATE workspace_api_keys SET expires_at = now() + interval '1 day' WHERE id = $1",
            a,
            true,
        ),
        (
            "UPDATE workspace_api_keys SET revoked_at = now() WHERE id = $1",
            b,
            true,
        ),
        ("DELETE FROM workspace_api_keys WHERE id = $1", a, true),
    ] {
        sqlx::query(change)
            .bind(id)
            .execute(&pool)
            .await
            .expect("change");
        if notified {
            let n = listener.recv().await.expect("notification");
            assert_eq!(n.payload(), id.to_string(), "{change}");
        }
    }
    sqlx::query("TRUNCATE workspace_api_keys CASCADE")
        .execute(&pool)
        .await
        .expect("truncate");
    assert_eq!(listener.recv().await.expect("notification").payload(), "*");
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
    // A change made in the database reaches the API's key cache by
    // notification, a moment after its commit.
    let reply = refused_within(&api, &token, Duration::from_secs(5)).await;
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
