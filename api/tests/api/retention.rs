//! Retention per workspace: set through the admin API (operators only),
//! enforced by the retention pass the worker's loop runs, bounded by its
//! batch size, read back through the HTTP API.

use axum::http::{Method, StatusCode};
use chrono::{Duration, Utc};
use conveyor_engine::state::AdminRole;
use conveyor_engine::store::{access, history};
use conveyor_tests::api::{Reply, TestApi};
use serde_json::{Value, json};
use sqlx::PgPool;

async fn put(api: &TestApi, ws: &str, body: Value, token: &str) -> Reply {
    let path = format!("/api/v1/admin/workspaces/{ws}/retention");
    api.call(Method::PUT, &path, Some(token), Some(body)).await
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn each_workspace_keeps_history_for_its_plan_or_custom_days(pool: PgPool) {
    let api = TestApi::new(pool);
    access::set_admin_role(&api.pool, "ops", AdminRole::Operator)
        .await
        .expect("admin");
    access::set_admin_role(&api.pool, "vic", AdminRole::Viewer)
        .await
        .expect("admin");
    let operator = api.token("ws_ops", "ops");
    let viewer = api.token("ws_ops", "vic");
    for (ws, body, days) in [
        ("ws_free", json!({"plan": "free"}), json!(90)),
        ("ws_pro", json!({"plan": "pro"}), json!(365)),
        (
            "ws_custom",
            json!({"plan": "custom", "retention_days": 7}),
            json!(7),
        ),
        ("ws_default", json!({"plan": null}), json!(null)),
    ] {
        let reply = put(&api, ws, body, &operator).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.json["retention_days"], days);
    }
    let refused = put(&api, "ws_free", json!({"plan": "pro"}), &viewer).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    for (body, field) in [
        (json!({"plan": "gold"}), "plan"),
        (json!({"plan": "custom"}), "retention_days"),
        (
            json!({"plan": "custom", "retention_days": 0}),
            "retention_days",
        ),
        (
            json!({"plan": "free", "retention_days": 10}),
            "retention_days",
        ),
    ] {
        let reply = put(&api, "ws_free", body, &operator).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.text
        );
        assert_eq!(reply.json["error"]["details"]["errors"][0]["path"], field);
    }

    // Each workspace has executions finished 10, 100 and 400 days ago.
    let mut tokens = Vec::new();
    for ws in ["ws_free", "ws_pro", "ws_custom", "ws_default"] {
        let token = api.token(ws, "u");
        let connector = api
            .create_connector(
                &token,
                json!({"name": "P", "steps": [{"name": "p", "method": "GET", "url": "https://api.example.com/p"}]}),
            )
            .await;
        for age in [10, 100, 400] {
            let id = api.execute(&token, &connector, json!({"age": age})).await;
            sqlx::query(
                "UPDATE connector_executions SET status = 'succeeded', finished_at = now() - make_interval(days => $1)
                 WHERE id = $2::uuid",
            )
            .bind(age)
            .bind(&id)
            .execute(&api.pool)
            .await
            .expect("age it");
        }
        tokens.push((ws, token));
    }

    // The global default is 30 days; batches of 2 until nothing is left.
    let now = Utc::now();
    let mut passes = 0;
    while history::prune_finished(&api.pool, now, now - Duration::days(30), 2)
        .await
        .expect("prune")
        > 0
    {
        passes += 1;
    }
    assert_eq!(passes, 4, "8 doomed rows in batches of at most 2");
    for ((ws, token), kept) in tokens
        .iter()
        .zip([&[10][..], &[10, 100][..], &[][..], &[10][..]])
    {
        let listed = api.get("/api/v1/executions", token).await;
        let mut ages: Vec<i64> = listed
            .items()
            .iter()
            .map(|e| e["input"]["age"].as_i64().expect("age"))
            .collect();
        ages.sort_unstable();
        assert_eq!(ages, kept, "{ws}");
    }
}
