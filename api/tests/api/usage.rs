//! Usage metering through the HTTP API (in-process router, real
//! PostgreSQL): a workspace sees its own usage per day and never another's;
//! admins see every workspace's; windows are checked.

use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use conveyor_engine::state::StepOutcome;
use conveyor_engine::store::access;
use conveyor_engine::store::executions::{self, StepRow, Transition};
use conveyor_tests::api::TestApi;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

fn ping() -> Value {
    json!({"name": "Ping", "steps": [
        {"name": "ping", "method": "GET", "url": "https://api.example.com/ping"}]})
}

fn attempt(attempt: i32, outcome: StepOutcome) -> StepRow {
    StepRow {
        attempt,
        outcome,
        response_status: Some(503),
        request_bytes: 100,
        response_bytes: 1000,
        ..conveyor_tests::stored_step("w")
    }
}

/// Commits `step` with `transition` for the claimed row of `id`.
async fn commit(
    api: &TestApi,
    claimed: &[executions::Claimed],
    id: &str,
    step: &StepRow,
    transition: Transition,
) {
    let id: Uuid = id.parse().expect("uuid");
    let row = claimed.iter().find(|r| r.id == id).expect("claimed");
    executions::commit_step(
        &api.pool,
        row.id,
        row.fencing_token,
        step,
        &transition,
        Utc::now(),
    )
    .await
    .expect("commit");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn usage_counts_each_workspace_per_day_and_only_admins_see_all(pool: PgPool) {
    let api = TestApi::new(pool);
    let a = api.token("ws_a", "alice");
    let b = api.token("ws_b", "bob");
    access::add_admin(&api.pool, "root").await.expect("admin");
    let admin = api.token("ws_ops", "root");
    let ca = api.create_connector(&a, ping()).await;
    let cb = api.create_connector(&b, ping()).await;
    let succeeds = api.execute(&a, &ca, json!({})).await;
    let cancelled = api.execute(&a, &ca, json!({})).await;
    let stays_running = api.execute(&a, &ca, json!({})).await;
    let fails = api.execute(&b, &cb, json!({})).await;
    let reply = api
        .post(
            &format!("/api/v1/executions/{cancelled}/cancel"),
            &a,
            json!({}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);

    // A succeeds in one attempt; B fails on its second (one retry).
    let lease = Duration::from_secs(60);
    let claims = executions::ClaimPool::new(&api.pool);
    let claimed = executions::claim(&claims, "w", 10, lease, Utc::now())
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    let done = Transition::Succeed {
        context: json!({}),
        output: json!({}),
    };
    commit(
        &api,
        &claimed,
        &succeeds,
        &attempt(1, StepOutcome::Succeeded),
        done,
    )
    .await;
    let retry = Transition::Retry {
        delay: Duration::ZERO,
        attempt: 2,
        throttled: false,
        context: None,
    };
    commit(
        &api,
        &claimed,
        &fails,
        &attempt(1, StepOutcome::RetryScheduled),
        retry,
    )
    .await;
    // Flow control held B back twice before a send (its `parked` events).
    for _ in 0..2 {
        sqlx::query(
            "INSERT INTO execution_events (execution_id, workspace_id, at, kind, details)
             VALUES ($1, 'ws_b', now(), 'parked', '{}')",
        )
        .bind(fails.parse::<Uuid>().expect("uuid"))
        .execute(&api.pool)
        .await
        .expect("event");
    }
    let again = executions::claim(&claims, "w", 10, lease, Utc::now())
        .await
        .expect("claim");
    let fail = Transition::Fail {
        error: json!({"message": "503"}),
    };
    commit(&api, &again, &fails, &attempt(2, StepOutcome::Failed), fail).await;
    assert!(!stays_running.is_empty());

    let today = Utc::now().date_naive();
    let mine = api.get("/api/v1/usage", &a).await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.text);
    let days = mine.json["days"].as_array().expect("days");
    assert_eq!(days.len(), 30, "every day of the default window");
    assert_eq!(days[29]["day"], json!(today));
    let expected_a = json!({"started": 3, "succeeded": 1, "failed": 0, "cancelled": 1, "steps": 1, "retries": 0, "rate_limited": 0, "parked": 0, "bytes_out": 100, "bytes_in": 1000});
    assert_eq!(mine.json["totals"], expected_a);
    assert_eq!(days[29]["started"], 3);
    assert_eq!(days[0]["started"], 0);
    // B's retry and failure never show in A's figures, nor A's in B's.
    let theirs = api
        .get(&format!("/api/v1/usage?from={today}&to={today}"), &b)
        .await;
    let expected_b = json!({"started": 1, "succeeded": 0, "failed": 1, "cancelled": 0, "steps": 2, "retries": 1, "rate_limited": 1, "parked": 2, "bytes_out": 200, "bytes_in": 2000});
    assert_eq!(theirs.json["totals"], expected_b, "{}", theirs.text);
    assert_eq!(theirs.json["workspace_id"], "ws_b");
    let past = api
        .get("/api/v1/usage?from=2020-01-01&to=2020-01-31", &a)
        .await;
    assert_eq!(past.json["days"].as_array().expect("days").len(), 31);
    assert_eq!(past.json["totals"]["started"], 0);

    let all = api.get("/api/v1/admin/usage", &admin).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text);
    let rows: Vec<(&Value, &Value)> = all
        .items()
        .iter()
        .map(|r| (&r["workspace_id"], &r["started"]))
        .collect();
    assert_eq!(
        rows,
        [(&json!("ws_a"), &json!(3)), (&json!("ws_b"), &json!(1))]
    );
    assert_eq!(all.json["totals"]["steps"], 3);
    let one = api
        .get("/api/v1/admin/usage?workspace_id=ws_b", &admin)
        .await;
    assert_eq!(one.items().len(), 1);
    assert_eq!(one.json["totals"], expected_b);

    assert_eq!(
        api.get("/api/v1/admin/usage", &a).await.status,
        StatusCode::FORBIDDEN
    );
    for bad in [
        "/api/v1/usage?from=2026-02-02&to=2026-02-01",
        "/api/v1/usage?from=2024-01-01&to=2025-01-01",
        "/api/v1/usage?from=yesterday",
        "/api/v1/usage?workspace_id=ws_b",
    ] {
        let reply = api.get(bad, &a).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            reply.text
        );
    }
    let span = api
        .get("/api/v1/usage?from=2024-01-02&to=2025-01-01", &a)
        .await;
    assert_eq!(
        span.status,
        StatusCode::OK,
        "366 days is the longest window"
    );
}
