//! Migrations that move data: applied to a database holding rows written
//! by the schema before them.

use conveyor_tests::{Harness, WS};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// The migration that gives the child logs their `workspace_id`.
const KEY_CHILD_LOGS: i64 = 20_261_203_100_000;
/// The migration after which a template's review status describes its
/// newest version and other workspaces see its approved version.
const KEEP_APPROVED_LISTED: i64 = 20_261_205_100_000;

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

#[sqlx::test(migrations = false)]
async fn a_rejected_approved_version_stays_withdrawn(pool: PgPool) {
    migrate(&pool, ..KEEP_APPROVED_LISTED).await;
    // As the review before it left them: an approved template an admin
    // rejected, one whose next version was rejected, one whose next
    // version awaits review.
    sqlx::raw_sql(
        "INSERT INTO connector_templates
             (slug, name, category, provider, official, review_status, latest_version, approved_version)
         VALUES ('community-withdrawn', 'W', 'developer-tools', 'w', false, 'rejected', '1.0.0', '1.0.0'),
                ('community-next-rejected', 'R', 'developer-tools', 'r', false, 'rejected', '1.1.0', '1.0.0'),
                ('community-next-pending', 'P', 'developer-tools', 'p', false, 'pending', '1.1.0', '1.0.0');
         INSERT INTO connector_template_versions (slug, version, definition)
         SELECT slug, version, '{}' FROM connector_templates, (VALUES ('1.0.0'), ('1.1.0')) v (version)
         WHERE version <= latest_version;",
    )
    .execute(&pool)
    .await
    .expect("templates");

    migrate(&pool, KEEP_APPROVED_LISTED..=KEEP_APPROVED_LISTED).await;

    let approved: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT slug, approved_version FROM connector_templates ORDER BY slug")
            .fetch_all(&pool)
            .await
            .expect("templates");
    assert_eq!(
        approved,
        [
            (
                "community-next-pending".to_owned(),
                Some("1.0.0".to_owned())
            ),
            (
                "community-next-rejected".to_owned(),
                Some("1.0.0".to_owned())
            ),
            ("community-withdrawn".to_owned(), None),
        ]
    );
}
