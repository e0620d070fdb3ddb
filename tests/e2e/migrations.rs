//! Migrations that move data: applied to a database holding rows written
//! by the schema before them.

use conveyor_tests::{Harness, WS};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// The migration that gives the child logs their `workspace_id`.
const KEY_CHILD_LOGS: i64 = 20_261_203_100_000;

/// Applies the embedded migrations whose version is in `versions`, in
/// order.
async fn migrate(pool: &PgPool, versions: impl std::ops::RangeBounds<i64>) {
    for m in conveyor_engine::MIGRATOR
        .iter()
        .filter(|m| versions.contains(&m.version))
    {
        sqlx::raw_sql(m.sql.clone())
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("migration {}: {e}", m.version));
    }
}

#[sqlx::test(migrations = false)]
async fn child_logs_take_their_parent_s_workspace(pool: PgPool) {
    migrate(&pool, ..KEY_CHILD_LOGS).await;
    let h = Harness::new(pool.clone());
    let connector = h
        .connector(json!({"name": "c", "steps": [
            {"name": "s", "method": "GET", "url": "https://api.example.com/x"}]}))
        .await;
    let execution = h.enqueue(connector, json!({})).await;
    let (schedule, trigger, delivery) = (Uuid::now_v7(), "ab".repeat(16), Uuid::now_v7());
    let rows = [
        "INSERT INTO connector_schedules
             (id, workspace_id, connector_id, cron, timezone, input, overlap, created_at, updated_at)
         VALUES ($1, $4, $5, '@daily', 'UTC', '{}', 'skip', now(), now())",
        "INSERT INTO schedule_ticks (schedule_id, tick_at, outcome, recorded_at)
         VALUES ($1, now(), 'skipped', now())",
        "INSERT INTO webhook_triggers (id, workspace_id, connector_id, scheme, settings, created_at)
         VALUES ($2, $4, $5, 'none', '{}', now())",
        "INSERT INTO trigger_deliveries (id, trigger_id, received_at, status, outcome)
         VALUES (gen_random_uuid(), $2, now(), 202, 'started')",
        "INSERT INTO callback_deliveries (id, workspace_id, url, event, next_attempt_at, created_at)
         VALUES ($3, $4, 'https://e.example/cb', 'execution.failed', now(), now())",
        "INSERT INTO callback_attempts (delivery_id, attempt, at, duration_ms)
         VALUES ($3, 1, now(), 5)",
        // A watcher of this execution, and one of an execution since deleted.
        "INSERT INTO execution_watchers (execution_id, watcher, expires_at)
         VALUES ($6, gen_random_uuid(), now() + interval '1 minute'),
                (gen_random_uuid(), gen_random_uuid(), now() + interval '1 minute')",
    ];
    for sql in rows {
        sqlx::query(sql)
            .bind(schedule)
            .bind(&trigger)
            .bind(delivery)
            .bind(WS)
            .bind(connector.0)
            .bind(execution)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    migrate(&pool, KEY_CHILD_LOGS..=KEY_CHILD_LOGS).await;

    for table in [
        "schedule_ticks",
        "trigger_deliveries",
        "callback_attempts",
        "execution_watchers",
    ] {
        let workspaces: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT workspace_id FROM {table}"
        )))
        .fetch_all(&pool)
        .await
        .unwrap_or_else(|e| panic!("{table}: {e}"));
        assert_eq!(workspaces, [WS], "{table}");
        let nullable: String = sqlx::query_scalar(
            "SELECT is_nullable FROM information_schema.columns
             WHERE table_name = $1 AND column_name = 'workspace_id'",
        )
        .bind(table)
        .fetch_one(&pool)
        .await
        .expect("column");
        assert_eq!(nullable, "NO", "{table}.workspace_id");
    }
}
