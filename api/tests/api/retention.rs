//! Retention per workspace: set through the admin API (operators only),
//! enforced by the retention pass the worker's loop runs, bounded by its
//! batch size, read back through the HTTP API; delivery logs (trigger
//! deliveries, schedule ticks, callback and event deliveries) pruned by
//! the same loop after `CONVEYOR_DELIVERY_RETENTION_DAYS`.

use axum::http::{Method, StatusCode};
use chrono::{Duration, Utc};
use conveyor_engine::state::AdminRole;
use conveyor_engine::store::{access, history};
use conveyor_tests::api::{Reply, TestApi};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

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

async fn rows(api: &TestApi, count_sql: &'static str) -> i64 {
    sqlx::query_scalar(count_sql)
        .fetch_one(&api.pool)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_worker_s_retention_loop_prunes_delivery_logs_past_their_days(pool: PgPool) {
    let api = TestApi::new(pool);
    let token = api.token("ws_logs", "u");
    let connector = api
        .create_connector(
            &token,
            json!({"name": "Logs", "steps": [{"name": "s", "method": "GET", "url": "https://api.example.com/x"}]}),
        )
        .await;
    let trigger = api
        .post(
            &format!("/api/v1/connectors/{connector}/triggers"),
            &token,
            json!({"verification": {"type": "none"}}),
        )
        .await
        .id();
    let schedule = api
        .post(
            &format!("/api/v1/connectors/{connector}/schedules"),
            &token,
            json!({"cron": "@yearly"}),
        )
        .await
        .id();
    // Each log gets a row past the 30 days, a recent one, and (outboxes and
    // ticks) an old row that is still pending or held, which must stay.
    sqlx::query(
        "INSERT INTO trigger_deliveries (id, workspace_id, trigger_id, received_at, status, outcome)
         VALUES (gen_random_uuid(), 'ws_logs', $1, now() - interval '40 days', 202, 'started'),
                (gen_random_uuid(), 'ws_logs', $1, now(), 202, 'started')",
    )
    .bind(&trigger)
    .execute(&api.pool)
    .await
    .expect("hook deliveries");
    sqlx::query(
        "INSERT INTO schedule_ticks (schedule_id, workspace_id, tick_at, outcome, recorded_at)
         VALUES ($1::uuid, 'ws_logs', now() - interval '40 days', 'started', now() - interval '40 days'),
                ($1::uuid, 'ws_logs', now() - interval '39 days', 'queued', now() - interval '39 days'),
                ($1::uuid, 'ws_logs', now(), 'skipped', now())",
    )
    .bind(&schedule)
    .execute(&api.pool)
    .await
    .expect("ticks");
    sqlx::query(
        "WITH d AS (
             INSERT INTO callback_deliveries
                 (id, workspace_id, url, event, status, next_attempt_at, created_at, finished_at)
             VALUES (gen_random_uuid(), 'ws_logs', 'https://e.example/cb', 'execution.failed', 'delivered',
                     now() - interval '40 days', now() - interval '40 days', now() - interval '40 days'),
                    (gen_random_uuid(), 'ws_logs', 'https://e.example/cb', 'execution.failed', 'pending',
                     now() - interval '40 days', now() - interval '40 days', NULL),
                    (gen_random_uuid(), 'ws_logs', 'https://e.example/cb', 'execution.failed', 'failed',
                     now(), now() - interval '1 day', now())
             RETURNING id)
         INSERT INTO callback_attempts (delivery_id, workspace_id, attempt, at, duration_ms)
         SELECT id, 'ws_logs', 1, now(), 5 FROM d",
    )
    .execute(&api.pool)
    .await
    .expect("callbacks");

    let stop = CancellationToken::new();
    let pruning = tokio::spawn(conveyor_worker::prune(
        api.pool.clone(),
        (None, Some(std::time::Duration::from_secs(30 * 86_400))),
        stop.clone(),
    ));
    let started = std::time::Instant::now();
    while rows(&api, "SELECT count(*) FROM trigger_deliveries").await > 1
        || rows(&api, "SELECT count(*) FROM schedule_ticks").await > 2
        || rows(&api, "SELECT count(*) FROM callback_deliveries").await > 2
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "not pruned"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop.cancel();
    pruning.await.expect("the loop stops");
    assert_eq!(
        rows(&api, "SELECT count(*) FROM trigger_deliveries").await,
        1
    );
    let ticks: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM schedule_ticks ORDER BY tick_at")
            .fetch_all(&api.pool)
            .await
            .expect("ticks");
    assert_eq!(ticks, ["queued", "skipped"], "the held tick stays");
    let left: Vec<String> =
        sqlx::query_scalar("SELECT status FROM callback_deliveries ORDER BY created_at")
            .fetch_all(&api.pool)
            .await
            .expect("callbacks");
    assert_eq!(left, ["pending", "failed"], "the pending one stays");
    assert_eq!(
        rows(&api, "SELECT count(*) FROM callback_attempts").await,
        2,
        "attempts go with them"
    );
}
