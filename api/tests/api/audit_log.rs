//! The audit log's filters and export through the HTTP API (in-process
//! router, real PostgreSQL): by actor, action, target and time, keyset
//! pages, NDJSON export, and never another workspace's rows.

use axum::http::StatusCode;
use chrono::Utc;
use conveyor_engine::store::access;
use conveyor_tests::api::TestApi;
use serde_json::{Value, json};
use sqlx::PgPool;

fn ping() -> Value {
    json!({"name": "Ping", "steps": [
        {"name": "ping", "method": "GET", "url": "https://api.example.com/ping"}]})
}

fn ids(items: &[Value]) -> Vec<i64> {
    items
        .iter()
        .map(|e| e["id"].as_i64().expect("id"))
        .collect()
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_audit_log_filters_pages_and_exports_only_the_callers_rows(pool: PgPool) {
    let api = TestApi::new(pool);
    let a = api.token("ws_a", "alice");
    let carol = api.token("ws_a", "carol");
    let b = api.token("ws_b", "bob");
    access::add_admin(&api.pool, "root").await.expect("admin");
    let admin = api.token("ws_ops", "root");
    let connector = api.create_connector(&a, ping()).await;
    let before = Utc::now();
    let first = api.execute(&a, &connector, json!({})).await;
    let second = api.execute(&carol, &connector, json!({})).await;
    let other = api.create_connector(&b, ping()).await;
    api.execute(&b, &other, json!({})).await;

    let by_target = api
        .get(
            &format!("/api/v1/audit?object_type=execution&object_id={first}"),
            &a,
        )
        .await;
    assert_eq!(by_target.status, StatusCode::OK, "{}", by_target.text);
    assert_eq!(by_target.items().len(), 1);
    assert_eq!(by_target.items()[0]["actor"], "alice");
    let by_actor = api.get("/api/v1/audit?actor=carol", &a).await;
    assert_eq!(by_actor.items().len(), 1);
    assert_eq!(by_actor.items()[0]["object_id"], json!(second));
    let since = before.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let since = since.replace('+', "%2B");
    let recent = api
        .get(
            &format!("/api/v1/audit?since={since}&action=execution.start"),
            &a,
        )
        .await;
    assert_eq!(recent.items().len(), 2, "{}", recent.text);
    let older = api.get(&format!("/api/v1/audit?until={since}"), &a).await;
    let actions: Vec<&Value> = older.items().iter().map(|e| &e["action"]).collect();
    assert_eq!(actions, [&json!("connector.create")]);

    // Keyset pages cover the log exactly once, newest first.
    let all = api.get("/api/v1/audit", &a).await;
    assert_eq!(all.items().len(), 3);
    let mut paged = Vec::new();
    let mut path = "/api/v1/audit?limit=2".to_owned();
    loop {
        let page = api.get(&path, &a).await;
        paged.extend(ids(page.items()));
        match page.json["next_before_id"].as_i64() {
            Some(next) => path = format!("/api/v1/audit?limit=2&before_id={next}"),
            None => break,
        }
    }
    assert_eq!(paged, ids(all.items()));

    // NDJSON: every matching row, one a line, the same as the JSON pages.
    let export = api.get("/api/v1/audit?format=ndjson", &a).await;
    assert_eq!(export.status, StatusCode::OK);
    assert_eq!(export.headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = export
        .text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(&lines, all.items());
    assert!(lines.iter().all(|e| e["workspace_id"] == "ws_a"));
    let theirs = api.get("/api/v1/audit?format=ndjson", &b).await;
    assert_eq!(theirs.text.lines().count(), 2);
    assert!(!theirs.text.contains("ws_a"), "{}", theirs.text);
    let admin_export = api
        .get(
            "/api/v1/admin/audit?format=ndjson&workspace_id=ws_b",
            &admin,
        )
        .await;
    assert_eq!(admin_export.text, theirs.text);

    for bad in [
        "/api/v1/audit?format=csv",
        "/api/v1/audit?since=yesterday",
        "/api/v1/audit?limit=0",
        "/api/v1/audit?format=ndjson&limit=-1",
        "/api/v1/audit?format=ndjson&limit=201",
    ] {
        assert_eq!(
            api.get(bad, &a).await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let refused = api
        .get("/api/v1/admin/audit?format=ndjson&limit=-190722", &admin)
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    assert!(refused.text.contains("limit"), "{}", refused.text);
}
