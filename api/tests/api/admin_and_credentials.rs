//! Credentials, API keys, the audit log and the admin views through the
//! HTTP API (in-process router, real PostgreSQL): secrets never come back,
//! keys work until revoked, admin routes are for admins, and the admin
//! statistics count what the queue holds.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use chrono::Utc;
use conveyor_engine::state::ExecutionStatus;
use conveyor_engine::store::executions::{self, Transition};
use conveyor_engine::store::{access, credentials};
use conveyor_tests::api::{Reply, TestApi};
use serde_json::{Value, json};
use sqlx::PgPool;

/// Planted in credentials; must never appear in a response.
const PLANTED: &str = "pl4nted-s3cret-9f2c1d";
const PLANTED_2: &str = "pl4nted-passw0rd-77ab";

fn assert_no_secret(reply: &Reply) {
    for planted in [PLANTED, PLANTED_2] {
        assert!(
            !reply.text.contains(planted),
            "a planted secret came back: {}",
            reply.text
        );
    }
}

fn actions(audit: &Value) -> Vec<String> {
    audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["action"].as_str().expect("action").to_owned())
        .collect()
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn credentials_round_trip_and_never_return_the_secret(pool: PgPool) {
    let api = TestApi::new(pool);
    let a = api.token("ws_a", "alice");
    let b = api.token("ws_b", "bob");
    let path = "/api/v1/credentials/crm";

    let created = api
        .call(
            Method::PUT,
            path,
            Some(&a),
            Some(json!({"data": {"token": PLANTED}})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_no_secret(&created);
    assert_eq!(created.json["name"], "crm");
    assert_eq!(created.json["auth_kind"], "bearer");
    assert_eq!(created.json["fields"], json!(["token"]));

    let replaced = api
        .call(
            Method::PUT,
            path,
            Some(&a),
            Some(json!({"data": {"username": "svc", "password": PLANTED_2}})),
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.text);
    assert_no_secret(&replaced);
    assert_eq!(replaced.json["auth_kind"], "basic");
    assert_eq!(replaced.json["fields"], json!(["password", "username"]));

    // Sealed, and a worker gets the new values back.
    let loaded = credentials::load(&api.pool, &api.keyring, "ws_a", &["crm".to_owned()])
        .await
        .expect("load");
    assert_eq!(loaded["crm"]["password"], PLANTED_2);

    let one = api.get(path, &a).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_no_secret(&one);
    assert_eq!(one.json["fields"], json!(["password", "username"]));
    let list = api.get("/api/v1/credentials", &a).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_no_secret(&list);
    assert_eq!(list.json["items"].as_array().expect("items").len(), 1);

    // Another workspace sees nothing and can touch nothing.
    assert_eq!(api.get(path, &b).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get("/api/v1/credentials", &b).await.json["items"],
        json!([])
    );
    let foreign = api.call(Method::DELETE, path, Some(&b), None).await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);

    let deleted = api.call(Method::DELETE, path, Some(&a), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(api.get(path, &a).await.status, StatusCode::NOT_FOUND);
    let again = api.call(Method::DELETE, path, Some(&a), None).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.json["error"]["code"], "not_found");

    // Every mutation is audited, by name, without the secret.
    let audit = api.get("/api/v1/audit", &a).await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.text);
    assert_no_secret(&audit);
    assert_eq!(
        actions(&audit.json),
        ["credential.delete", "credential.put", "credential.put"]
    );
    for entry in audit.json["items"].as_array().expect("items") {
        assert_eq!(entry["object_id"], "crm");
        assert_eq!(entry["actor"], "alice");
        assert_eq!(entry["workspace_id"], "ws_a");
    }
    assert_eq!(audit.json["items"][2]["details"]["created"], true);
    assert_eq!(audit.json["items"][1]["details"]["created"], false);
    let filtered = api.get("/api/v1/audit?action=credential.delete", &a).await;
    assert_eq!(actions(&filtered.json), ["credential.delete"]);
    // Workspace B's own log is empty: it never sees A's entries.
    assert_eq!(api.get("/api/v1/audit", &b).await.json["items"], json!([]));
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn bad_credential_bodies_are_422_naming_the_field(pool: PgPool) {
    let api = TestApi::new(pool);
    let a = api.token("ws_a", "alice");
    let cases = [
        ("crm", json!({"data": {"token": 5}}), "data.token"),
        ("crm", json!({"data": {"token": [PLANTED]}}), "data.token"),
        ("crm", json!({"data": {}}), "data"),
        ("crm", json!({"data": PLANTED}), "data"),
        ("crm", json!({"data": {"bad-name": PLANTED}}), "data"),
        (
            "crm",
            json!({"data": {"token": "x".repeat(8 * 1024 + 1)}}),
            "data.token",
        ),
        (
            "crm",
            json!({"data": {"token": PLANTED}, "extra": 1}),
            "extra",
        ),
        ("crm", json!({}), ""),
        ("-leading-dash", json!({"data": {"token": PLANTED}}), "name"),
    ];
    for (name, body, path) in cases {
        let reply = api
            .call(
                Method::PUT,
                &format!("/api/v1/credentials/{name}"),
                Some(&a),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            reply.text
        );
        assert_eq!(reply.json["error"]["code"], "validation_failed");
        assert_eq!(
            reply.json["error"]["details"]["errors"][0]["path"],
            json!(path),
            "{body}: {}",
            reply.text
        );
        assert_no_secret(&reply);
    }
    // Nothing was written, not even an audit row.
    assert_eq!(
        api.get("/api/v1/credentials", &a).await.json["items"],
        json!([])
    );
    assert_eq!(api.get("/api/v1/audit", &a).await.json["items"], json!([]));
    // An impossible name names nothing.
    let reply = api.get("/api/v1/credentials/-leading-dash", &a).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn api_keys_authenticate_until_revoked(pool: PgPool) {
    let api = TestApi::new(pool);
    let a = api.token("ws_a", "alice");
    let b = api.token("ws_b", "bob");

    let bad = api
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&a),
            Some(json!({"name": " "})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.json["error"]["details"]["errors"][0]["path"], "name");

    let created = api
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&a),
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let key = created.json["key"].as_str().expect("key").to_owned();
    let id = created.json["id"].as_str().expect("id").to_owned();
    assert!(key.starts_with("cvk_"));
    assert!(key.starts_with(created.json["prefix"].as_str().expect("prefix")));
    assert_eq!(created.json["created_by"], "alice");

    // The key works, in its own workspace.
    let put = api
        .call(
            Method::PUT,
            "/api/v1/credentials/by-key",
            Some(&key),
            Some(json!({"data": {"key": PLANTED}})),
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text);
    let listed = api.get("/api/v1/credentials", &key).await;
    assert_eq!(listed.json["items"][0]["name"], "by-key");

    // Listing shows metadata, never the key.
    let keys = api.get("/api/v1/api-keys", &a).await;
    assert_eq!(keys.status, StatusCode::OK);
    assert_eq!(keys.json["items"][0]["id"], json!(id));
    assert!(keys.json["items"][0].get("key").is_none());
    assert!(!keys.text.contains(&key));

    // A key cannot mint or revoke keys; another workspace cannot revoke it.
    let minted = api
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&key),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(minted.status, StatusCode::FORBIDDEN);
    let revoke_path = format!("/api/v1/api-keys/{id}");
    let by_key = api
        .call(Method::DELETE, &revoke_path, Some(&key), None)
        .await;
    assert_eq!(by_key.status, StatusCode::FORBIDDEN);
    let foreign = api.call(Method::DELETE, &revoke_path, Some(&b), None).await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);

    let revoked = api.call(Method::DELETE, &revoke_path, Some(&a), None).await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    let refused = api.get("/api/v1/credentials", &key).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.json["error"]["code"], "unauthorized");
    let twice = api.call(Method::DELETE, &revoke_path, Some(&a), None).await;
    assert_eq!(twice.status, StatusCode::NOT_FOUND);
    let keys = api.get("/api/v1/api-keys", &a).await;
    assert!(keys.json["items"][0]["revoked_at"].is_string());

    let audit = api.get("/api/v1/audit", &a).await;
    assert_no_secret(&audit);
    assert!(!audit.text.contains(&key));
    assert_eq!(
        actions(&audit.json),
        ["api_key.revoke", "credential.put", "api_key.create"]
    );
    assert_eq!(
        audit.json["items"][1]["actor"],
        json!(format!("api-key:{id}"))
    );
    assert_eq!(audit.json["items"][0]["object_id"], json!(id));
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn admin_routes_answer_403_to_everyone_else(pool: PgPool) {
    let api = TestApi::new(pool);
    let user = api.token("ws_a", "alice");
    let created = api
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&user),
            Some(json!({"name": "ci"})),
        )
        .await;
    let key = created.json["key"].as_str().expect("key").to_owned();
    access::add_admin(&api.pool, "root").await.expect("admin");
    let admin = api.token("ws_ops", "root");
    for path in [
        "/api/v1/admin/stats",
        "/api/v1/admin/workspaces/ws_a/usage",
        "/api/v1/admin/executions",
        "/api/v1/admin/audit",
    ] {
        for token in [&user, &key] {
            let reply = api.get(path, token).await;
            assert_eq!(
                reply.status,
                StatusCode::FORBIDDEN,
                "{path}: {}",
                reply.text
            );
            assert_eq!(reply.json["error"]["code"], "forbidden");
        }
        let anonymous = api.call(Method::GET, path, None, None).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(api.get(path, &admin).await.status, StatusCode::OK, "{path}");
    }
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn admins_see_queue_stats_usage_history_and_every_audit_log(pool: PgPool) {
    let api = TestApi::new(pool);
    let a = api.token("ws_a", "alice");
    let b = api.token("ws_b", "bob");
    access::add_admin(&api.pool, "root").await.expect("admin");
    let admin = api.token("ws_ops", "root");

    let definition = json!({"name": "Ping", "steps": [
        {"name": "ping", "method": "GET", "url": "https://api.example.com/ping"}]});
    let connector = api
        .call(
            Method::POST,
            "/api/v1/connectors",
            Some(&a),
            Some(definition.clone()),
        )
        .await;
    assert_eq!(connector.status, StatusCode::CREATED, "{}", connector.text);
    let connector_id = connector.json["id"].as_str().expect("id").to_owned();
    let execute = format!("/api/v1/connectors/{connector_id}/execute");
    for i in 0..3 {
        let reply = api
            .call(
                Method::POST,
                &execute,
                Some(&a),
                Some(json!({"input": {"n": i}})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    }
    let later = Utc::now() + chrono::Duration::hours(1);
    let scheduled = api
        .call(
            Method::POST,
            &execute,
            Some(&a),
            Some(json!({"input": {}, "run_at": later})),
        )
        .await;
    assert_eq!(scheduled.status, StatusCode::ACCEPTED);
    // Workspace B has one execution too.
    let other = api
        .call(
            Method::POST,
            "/api/v1/connectors",
            Some(&b),
            Some(definition),
        )
        .await;
    let other_id = other.json["id"].as_str().expect("id").to_owned();
    let reply = api
        .call(
            Method::POST,
            &format!("/api/v1/connectors/{other_id}/execute"),
            Some(&b),
            Some(json!({"input": {}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);

    // worker-a runs one to success; worker-b holds one running.
    let lease = Duration::from_secs(60);
    let claims = executions::ClaimPool::new(&api.pool);
    let claimed = executions::claim(&claims, "worker-a", 1, lease, Utc::now())
        .await
        .expect("claim");
    let done = executions::commit_step(
        &api.pool,
        claimed[0].id,
        claimed[0].fencing_token,
        &conveyor_tests::stored_step("worker-a"),
        &Transition::Succeed {
            context: json!({}),
            output: json!({"ok": true}),
        },
        Utc::now(),
    )
    .await
    .expect("commit");
    assert_eq!(done, Some(ExecutionStatus::Succeeded));
    let running = executions::claim(&claims, "worker-b", 1, lease, Utc::now())
        .await
        .expect("claim");
    assert_eq!(running.len(), 1);

    let stats = api.get("/api/v1/admin/stats", &admin).await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.text);
    assert_eq!(
        stats.json["by_status"],
        json!({"queued": 3, "running": 1, "succeeded": 1, "failed": 0, "cancelled": 0}),
        "{}",
        stats.text
    );
    assert_eq!(stats.json["queue_depth"], 2);
    assert_eq!(stats.json["scheduled"], 1);
    assert_eq!(stats.json["workers_last_minute"], 2);
    assert!(
        stats.json["oldest_ready_age_seconds"]
            .as_f64()
            .expect("age")
            >= 0.0
    );
    assert_eq!(stats.json["window_hours"], 24);
    let bad = api.get("/api/v1/admin/stats?window_hours=0", &admin).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // Usage of workspace A: per day (every day of the window) and per connector.
    let usage = api
        .get("/api/v1/admin/workspaces/ws_a/usage?days=7", &admin)
        .await;
    assert_eq!(usage.status, StatusCode::OK, "{}", usage.text);
    let days = usage.json["per_day"].as_array().expect("per_day");
    assert_eq!(days.len(), 7);
    assert_eq!(days[6]["day"], json!(Utc::now().date_naive()));
    assert_eq!(days[6]["total"], 4);
    assert_eq!(days[0]["total"], 0);
    assert_eq!(usage.json["total"], 4);
    let per_connector = &usage.json["per_connector"];
    assert_eq!(per_connector.as_array().expect("per_connector").len(), 1);
    assert_eq!(per_connector[0]["connector_id"], json!(connector_id));
    assert_eq!(per_connector[0]["name"], "Ping");
    assert_eq!(per_connector[0]["total"], 4);
    assert_eq!(per_connector[0]["succeeded"], 1);
    assert_eq!(per_connector[0]["failure_rate"], json!(0.0));
    let default_window = api.get("/api/v1/admin/workspaces/ws_a/usage", &admin).await;
    assert_eq!(
        default_window.json["per_day"]
            .as_array()
            .expect("days")
            .len(),
        30
    );
    for (path, status) in [
        (
            "/api/v1/admin/workspaces/ws_nobody/usage",
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/admin/workspaces/ws_a/usage?days=0",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/admin/workspaces/ws_a/usage?days=367",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        assert_eq!(api.get(path, &admin).await.status, status, "{path}");
    }

    // Cross-workspace history with the /executions filters.
    let all = api.get("/api/v1/admin/executions", &admin).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text);
    assert_eq!(all.json["items"].as_array().expect("items").len(), 5);
    let only_b = api
        .get("/api/v1/admin/executions?workspace_id=ws_b", &admin)
        .await;
    assert_eq!(only_b.json["items"].as_array().expect("items").len(), 1);
    assert_eq!(only_b.json["items"][0]["workspace_id"], "ws_b");
    let succeeded = api
        .get("/api/v1/admin/executions?status=succeeded", &admin)
        .await;
    assert_eq!(succeeded.json["items"].as_array().expect("items").len(), 1);
    let page = api.get("/api/v1/admin/executions?limit=3", &admin).await;
    let cursor = page.json["next_cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    let rest = api
        .get(
            &format!("/api/v1/admin/executions?limit=3&cursor={cursor}"),
            &admin,
        )
        .await;
    assert_eq!(rest.json["items"].as_array().expect("items").len(), 2);
    assert_eq!(rest.json["next_cursor"], Value::Null);
    let bad = api
        .get("/api/v1/admin/executions?status=nope", &admin)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // The audit log of every workspace, filtered and paged.
    let audit = api.get("/api/v1/admin/audit", &admin).await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.text);
    let workspaces: Vec<&str> = audit.json["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["workspace_id"].as_str().expect("workspace"))
        .collect();
    assert!(workspaces.contains(&"ws_a") && workspaces.contains(&"ws_b"));
    let only_b = api
        .get(
            "/api/v1/admin/audit?workspace_id=ws_b&action=connector.create",
            &admin,
        )
        .await;
    assert_eq!(actions(&only_b.json), ["connector.create"]);
    assert_eq!(only_b.json["items"][0]["actor"], "bob");
    let first = api.get("/api/v1/admin/audit?limit=1", &admin).await;
    let before = first.json["next_before_id"]
        .as_i64()
        .expect("next_before_id");
    let second = api
        .get(
            &format!("/api/v1/admin/audit?limit=1&before_id={before}"),
            &admin,
        )
        .await;
    assert!(second.json["items"][0]["id"].as_i64().expect("id") < before);
    let last = api
        .get(&format!("/api/v1/admin/audit?before_id={before}"), &admin)
        .await;
    assert_eq!(last.json["next_before_id"], Value::Null);
    let bad = api.get("/api/v1/admin/audit?limit=201", &admin).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let unknown = api.get("/api/v1/admin/audit?nope=1", &admin).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    // A workspace's own log never shows another's.
    let own = api.get("/api/v1/audit?workspace_id=ws_b", &a).await;
    assert_eq!(own.status, StatusCode::BAD_REQUEST);
    let own = api.get("/api/v1/audit", &a).await;
    assert!(
        own.json["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|e| e["workspace_id"] == "ws_a")
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_openapi_document_lists_these_routes(pool: PgPool) {
    let api = TestApi::new(pool);
    let doc = api
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(doc.status, StatusCode::OK);
    for (path, methods) in [
        ("/api/v1/credentials", &["get"][..]),
        ("/api/v1/credentials/{name}", &["get", "put", "delete"][..]),
        ("/api/v1/api-keys", &["get", "post"][..]),
        ("/api/v1/api-keys/{id}", &["delete"][..]),
        ("/api/v1/audit", &["get"][..]),
        ("/api/v1/admin/stats", &["get"][..]),
        ("/api/v1/admin/workspaces/{id}/usage", &["get"][..]),
        ("/api/v1/admin/executions", &["get"][..]),
        ("/api/v1/admin/executions/{id}", &["get"][..]),
        ("/api/v1/admin/executions/{id}/events", &["get"][..]),
        ("/api/v1/admin/executions/{id}/cancel", &["post"][..]),
        ("/api/v1/admin/executions/{id}/rerun", &["post"][..]),
        ("/api/v1/admin/admins", &["get"][..]),
        ("/api/v1/usage", &["get"][..]),
        ("/api/v1/admin/usage", &["get"][..]),
        ("/api/v1/admin/admins/{user_id}", &["put", "delete"][..]),
        ("/api/v1/admin/audit", &["get"][..]),
    ] {
        for method in methods {
            let op = &doc.json["paths"][path][method];
            assert!(op.is_object(), "{method} {path} is not documented");
            assert!(op["responses"].is_object(), "{method} {path}");
        }
    }
    let put = &doc.json["paths"]["/api/v1/credentials/{name}"]["put"];
    assert!(put["requestBody"].is_object());
}
