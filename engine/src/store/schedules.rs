//! Cron schedules and the scheduler pass that turns their ticks into
//! executions.
//!
//! Exactly one execution per tick, whatever the number of processes: a
//! pass locks the schedule rows that can act (`FOR UPDATE SKIP LOCKED`),
//! claims each tick by inserting its `(schedule_id, tick_at)` key into
//! `schedule_ticks`, enqueues, and moves `next_fire_at` on, all in one
//! transaction. A second process either skips the locked row or, after the
//! commit, no longer sees it as due; the key would refuse the tick anyway.
//!
//! Catch-up: a schedule whose ticks were missed (every process was down)
//! fires once, for the latest missed tick, then continues from now.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::Result;
use crate::connector::Connector;
use crate::schedule::CronSchedule;
use crate::start::Starter;
use crate::state::StartedBy;
use crate::store::executions::{self, NewExecution};

/// What a schedule does when a tick comes while its previous run is still
/// queued or running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Skip the tick (recorded as `skipped`).
    Skip,
    /// Start it anyway.
    Allow,
    /// Hold the latest such tick and start it when the previous run ends.
    QueueOne,
}

impl Overlap {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::Allow => "allow",
            Self::QueueOne => "queue_one",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "allow" => Self::Allow,
            "queue_one" => Self::QueueOne,
            _ => Self::Skip,
        }
    }
}

/// A stored schedule.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Schedule {
    /// Id.
    pub id: Uuid,
    /// The connector it starts (its latest version at each tick).
    pub connector_id: Uuid,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone it is read in.
    pub timezone: String,
    /// The input of every execution it starts.
    pub input: Value,
    /// The overlap policy.
    pub overlap: Overlap,
    /// No tick after this time.
    pub end_at: Option<DateTime<Utc>>,
    /// Paused schedules do not fire.
    pub paused: bool,
    /// The next tick (`null` once the schedule has ended).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// A tick held back by `queue_one` until the previous run ends.
    pub pending_tick_at: Option<DateTime<Utc>>,
    /// The execution its last started tick created.
    pub last_execution_id: Option<Uuid>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// What a schedule is made of (create, or the merged result of an update).
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    /// The cron expression (already parsed by the caller).
    pub cron: String,
    /// The IANA zone.
    pub timezone: String,
    /// The input.
    pub input: Value,
    /// The overlap policy.
    pub overlap: Overlap,
    /// Optional end.
    pub end_at: Option<DateTime<Utc>>,
}

/// One handled tick.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Tick {
    /// The tick's time.
    pub tick_at: DateTime<Utc>,
    /// `started`, `skipped` (overlap), `queued` (held by `queue_one`) or
    /// `failed` (the input no longer matches the connector).
    pub outcome: String,
    /// The execution it started.
    pub execution_id: Option<Uuid>,
    /// Why it failed.
    pub error: Option<String>,
    /// When a scheduler pass handled it.
    pub recorded_at: DateTime<Utc>,
}

struct Row {
    id: Uuid,
    connector_id: Uuid,
    cron: String,
    timezone: String,
    input: Value,
    overlap: String,
    end_at: Option<DateTime<Utc>>,
    paused: bool,
    next_fire_at: Option<DateTime<Utc>>,
    pending_tick_at: Option<DateTime<Utc>>,
    last_execution_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Row> for Schedule {
    fn from(r: Row) -> Self {
        Self {
            id: r.id,
            connector_id: r.connector_id,
            cron: r.cron,
            timezone: r.timezone,
            input: r.input,
            overlap: Overlap::parse(&r.overlap),
            end_at: r.end_at,
            paused: r.paused,
            next_fire_at: r.next_fire_at,
            pending_tick_at: r.pending_tick_at,
            last_execution_id: r.last_execution_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Creates a schedule whose first tick is `next_fire_at`.
///
/// # Errors
///
/// Database errors.
pub async fn create(
    pool: &PgPool,
    workspace_id: &str,
    connector_id: Uuid,
    spec: &ScheduleSpec,
    next_fire_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Schedule> {
    let row = sqlx::query_as!(
        Row,
        "INSERT INTO connector_schedules
             (id, workspace_id, connector_id, cron, timezone, input, overlap, end_at, next_fire_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
         RETURNING id, connector_id, cron, timezone, input, overlap, end_at, paused, next_fire_at,
                   pending_tick_at, last_execution_id, created_at, updated_at",
        Uuid::now_v7(),
        workspace_id,
        connector_id,
        spec.cron,
        spec.timezone,
        spec.input,
        spec.overlap.as_str(),
        spec.end_at,
        next_fire_at,
        now
    )
    .fetch_one(pool)
    .await?;
    Ok(row.into())
}

/// Reads a schedule of the workspace.
///
/// # Errors
///
/// Database errors.
pub async fn get(pool: &PgPool, workspace_id: &str, id: Uuid) -> Result<Option<Schedule>> {
    let row = sqlx::query_as!(
        Row,
        "SELECT id, connector_id, cron, timezone, input, overlap, end_at, paused, next_fire_at,
                pending_tick_at, last_execution_id, created_at, updated_at
         FROM connector_schedules WHERE id = $1 AND workspace_id = $2",
        id,
        workspace_id
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Into::into))
}

/// The schedules of one connector, oldest first.
///
/// # Errors
///
/// Database errors.
pub async fn list(pool: &PgPool, workspace_id: &str, connector_id: Uuid) -> Result<Vec<Schedule>> {
    let rows = sqlx::query_as!(
        Row,
        "SELECT id, connector_id, cron, timezone, input, overlap, end_at, paused, next_fire_at,
                pending_tick_at, last_execution_id, created_at, updated_at
         FROM connector_schedules WHERE workspace_id = $1 AND connector_id = $2
         ORDER BY created_at, id",
        workspace_id,
        connector_id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Replaces a schedule's definition; `paused` when given pauses or
/// resumes it. `None` when there is no such schedule.
///
/// The stored next tick stands, due or not, while the expression and its
/// zone stay the same (an edit, a pause, or a resume of a schedule that
/// was not paused), unless the new `end_at` comes before it: a tick that
/// came due just before the edit still fires at the next pass. A new
/// expression or zone, a resume of a paused schedule, or a schedule that
/// had no next tick takes `next_fire_at` (the first tick after now): the
/// ticks missed while paused are not replayed. Decided on the row as it
/// is when written, so a scheduler pass that fired the tick meanwhile is
/// not undone.
///
/// # Errors
///
/// Database errors.
pub async fn update(
    pool: &PgPool,
    workspace_id: &str,
    id: Uuid,
    spec: &ScheduleSpec,
    paused: Option<bool>,
    next_fire_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Option<Schedule>> {
    let row = sqlx::query_as!(
        Row,
        "UPDATE connector_schedules SET
             cron = $3, timezone = $4, input = $5, overlap = $6, end_at = $7,
             paused = COALESCE($8, paused),
             next_fire_at = CASE
                 WHEN cron = $3 AND timezone = $4 AND next_fire_at IS NOT NULL
                      AND NOT (paused AND $8 IS FALSE)
                     THEN CASE WHEN $7::timestamptz IS NULL OR next_fire_at <= $7
                               THEN next_fire_at END
                 ELSE $9 END,
             updated_at = $10
         WHERE id = $1 AND workspace_id = $2
         RETURNING id, connector_id, cron, timezone, input, overlap, end_at, paused, next_fire_at,
                   pending_tick_at, last_execution_id, created_at, updated_at",
        id,
        workspace_id,
        spec.cron,
        spec.timezone,
        spec.input,
        spec.overlap.as_str(),
        spec.end_at,
        paused,
        next_fire_at,
        now
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Into::into))
}

/// Deletes a schedule and its tick records; whether it existed.
///
/// # Errors
///
/// Database errors.
pub async fn delete(pool: &PgPool, workspace_id: &str, id: Uuid) -> Result<bool> {
    let done = sqlx::query!(
        "DELETE FROM connector_schedules WHERE id = $1 AND workspace_id = $2",
        id,
        workspace_id
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The schedule's most recent `limit` ticks, newest first.
///
/// # Errors
///
/// Database errors.
pub async fn ticks(pool: &PgPool, schedule_id: Uuid, limit: i64) -> Result<Vec<Tick>> {
    Ok(sqlx::query_as!(
        Tick,
        "SELECT tick_at, outcome, execution_id, error, recorded_at FROM schedule_ticks
         WHERE schedule_id = $1 ORDER BY tick_at DESC LIMIT $2",
        schedule_id,
        limit
    )
    .fetch_all(pool)
    .await?)
}

/// A due schedule as a pass locks it, with what firing needs.
struct Due {
    id: Uuid,
    workspace_id: String,
    connector_id: Uuid,
    cron: String,
    timezone: String,
    input: Value,
    overlap: String,
    end_at: Option<DateTime<Utc>>,
    next_fire_at: Option<DateTime<Utc>>,
    pending_tick_at: Option<DateTime<Utc>>,
    last_execution_id: Option<Uuid>,
    previous_active: bool,
    latest_version: i32,
    definition: Value,
    connector_deleted: bool,
}

/// Fires the ticks due at `now` of up to `limit` schedules in one
/// transaction; returns how many executions it started.
///
/// Only schedules that can act are taken: a due tick, or a tick held by
/// `queue_one` whose previous run has ended. A held tick whose previous
/// run is still active changes nothing, so however many of those there
/// are, they never fill a pass and keep others waiting. Workspaces take
/// turns: each one's longest-waiting schedule, then each one's second,
/// and so on, so one workspace's many ticks due at once do not delay
/// another's.
///
/// # Errors
///
/// Database errors; nothing of the pass is kept then.
pub async fn fire_due(
    pool: &PgPool,
    starter: &Starter,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<usize> {
    let mut tx = pool.begin().await?;
    // Every held tick whose previous run is active costs the pass a probe
    // of that execution; with thousands of them, the plan's estimate
    // passes `jit_above_cost` and compiling it took longer than running
    // it (60 ms against 125 to 170 with 20,000 held ticks).
    sqlx::query_scalar!("SELECT set_config('jit', 'off', true)")
        .fetch_one(&mut *tx)
        .await?;
    // `can_act` is repeated on the locked row: a concurrent pass may have
    // handled it since this statement's snapshot, and the lock re-reads
    // only the row's own conditions.
    let due = sqlx::query_as!(
        Due,
        r#"WITH can_act AS (
               SELECT s.id, s.workspace_id,
                      LEAST(CASE WHEN s.next_fire_at <= $1 THEN s.next_fire_at END,
                            s.pending_tick_at) AS waiting_since
               FROM connector_schedules s
               WHERE NOT s.paused
                 AND (s.next_fire_at <= $1
                      OR (s.pending_tick_at IS NOT NULL
                          AND (SELECT e.status IN ('queued', 'running') FROM connector_executions e
                               WHERE e.id = s.last_execution_id) IS NOT TRUE))
           ), turns AS (
               SELECT id, waiting_since,
                      row_number() OVER (PARTITION BY workspace_id ORDER BY waiting_since, id) AS turn
               FROM can_act
           )
           SELECT s.id, s.workspace_id, s.connector_id, s.cron, s.timezone, s.input, s.overlap,
                  s.end_at, s.next_fire_at, s.pending_tick_at, s.last_execution_id,
                  EXISTS (SELECT 1 FROM connector_executions e
                          WHERE e.id = s.last_execution_id AND e.status IN ('queued', 'running'))
                      AS "previous_active!",
                  c.latest_version, v.definition, (c.deleted_at IS NOT NULL) AS "connector_deleted!"
           FROM turns t
           JOIN connector_schedules s ON s.id = t.id
           JOIN connectors c ON c.id = s.connector_id
           JOIN connector_versions v ON v.connector_id = c.id AND v.version = c.latest_version
           WHERE NOT s.paused
             AND (s.next_fire_at <= $1
                  OR (s.pending_tick_at IS NOT NULL
                      AND (SELECT e.status IN ('queued', 'running') FROM connector_executions e
                           WHERE e.id = s.last_execution_id) IS NOT TRUE))
           ORDER BY t.turn, t.waiting_since, t.id
           LIMIT $2
           FOR UPDATE OF s SKIP LOCKED"#,
        now,
        limit
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut started = 0;
    for d in due {
        started += fire(&mut tx, starter, d, now).await?;
    }
    tx.commit().await?;
    Ok(started)
}

/// Handles one locked schedule: its held-back tick, then its due tick.
async fn fire(
    tx: &mut PgConnection,
    starter: &Starter,
    mut d: Due,
    now: DateTime<Utc>,
) -> Result<usize> {
    let overlap = Overlap::parse(&d.overlap);
    let before = (d.next_fire_at, d.pending_tick_at, d.last_execution_id);
    let mut started = 0;
    if let Some(pending) = d.pending_tick_at.filter(|_| !d.previous_active) {
        if let Some(id) = start_tick(tx, starter, &d, pending, now).await? {
            d.last_execution_id = Some(id);
            d.previous_active = true;
            started += 1;
        }
        d.pending_tick_at = None;
    }
    let Ok(calc) = CronSchedule::parse(&d.cron, &d.timezone) else {
        // Saved expressions were parsed at save time; a zone that a newer
        // tz database dropped ends the schedule rather than stalling it.
        d.next_fire_at = None;
        return save(tx, &d, before, now).await.map(|()| started);
    };
    if let Some(next) = d.next_fire_at.filter(|t| *t <= now) {
        let bound = d.end_at.map_or(now, |end| end.min(now));
        let tick = calc
            .latest_at_or_before(bound)
            .filter(|t| *t >= next)
            .unwrap_or(next);
        if d.end_at.is_none_or(|end| tick <= end) && claim_tick(tx, d.id, tick, now).await? {
            if overlap != Overlap::Allow && d.previous_active {
                if overlap == Overlap::QueueOne {
                    if let Some(old) = d.pending_tick_at.replace(tick) {
                        set_tick(tx, d.id, old, "skipped", None, None).await?;
                    }
                    set_tick(tx, d.id, tick, "queued", None, None).await?;
                } else {
                    set_tick(tx, d.id, tick, "skipped", None, None).await?;
                }
            } else if let Some(id) = start_tick(tx, starter, &d, tick, now).await? {
                d.last_execution_id = Some(id);
                started += 1;
            }
        }
        d.next_fire_at = calc
            .next_after(tick.max(now))
            .filter(|t| d.end_at.is_none_or(|end| *t <= end));
    }
    save(tx, &d, before, now).await?;
    Ok(started)
}

/// Enqueues the execution of `tick` (input checked against the connector's
/// latest version) and records the tick; the execution id, or `None` when
/// the tick failed.
async fn start_tick(
    tx: &mut PgConnection,
    starter: &Starter,
    d: &Due,
    tick: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Option<Uuid>> {
    let checked = if d.connector_deleted {
        Err("the connector was deleted".to_owned())
    } else {
        serde_json::from_value::<Connector>(d.definition.clone())
            .map_err(|e| format!("the connector definition is unreadable: {e}"))
            .and_then(|c| {
                starter
                    .check_input(d.connector_id, d.latest_version, &c, &d.input, "input")
                    .map_err(|errors| {
                        let first = errors.first().map(|e| format!("{}: {}", e.path, e.message));
                        format!(
                            "the input does not match the connector's input_schema: {}",
                            first.unwrap_or_default()
                        )
                    })
            })
    };
    if let Err(error) = checked {
        set_tick(tx, d.id, tick, "failed", None, Some(&error)).await?;
        return Ok(None);
    }
    let new = NewExecution {
        workspace_id: d.workspace_id.clone(),
        connector_id: d.connector_id,
        connector_version: d.latest_version,
        input: d.input.clone(),
        idempotency_key: None,
        priority: 0,
        run_at: None,
        rerun_of: None,
        trace_context: None,
        started_by: StartedBy::Schedule(d.id),
        callback_url: None,
    };
    let enqueued = executions::enqueue(tx, &new, now).await?;
    // A held-back tick already has its row; a fresh one was just claimed.
    set_tick(tx, d.id, tick, "started", Some(enqueued.id), None).await?;
    Ok(Some(enqueued.id))
}

/// Claims `tick` of `schedule_id`: false when another pass already did.
async fn claim_tick(
    tx: &mut PgConnection,
    schedule_id: Uuid,
    tick: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let claimed = sqlx::query_scalar!(
        "INSERT INTO schedule_ticks (schedule_id, workspace_id, tick_at, outcome, recorded_at)
         SELECT id, workspace_id, $2, 'skipped', $3 FROM connector_schedules WHERE id = $1
         ON CONFLICT (schedule_id, tick_at) DO NOTHING
         RETURNING tick_at",
        schedule_id,
        tick,
        now
    )
    .fetch_optional(&mut *tx)
    .await?;
    Ok(claimed.is_some())
}

async fn set_tick(
    tx: &mut PgConnection,
    schedule_id: Uuid,
    tick: DateTime<Utc>,
    outcome: &str,
    execution_id: Option<Uuid>,
    error: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        "UPDATE schedule_ticks SET outcome = $3, execution_id = $4, error = $5
         WHERE schedule_id = $1 AND tick_at = $2",
        schedule_id,
        tick,
        outcome,
        execution_id,
        error
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What a pass may change on a schedule: `next_fire_at`,
/// `pending_tick_at`, `last_execution_id`.
type Moved = (Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<Uuid>);

/// Writes what the pass changed on `d`, if anything (`before` is what it
/// read).
async fn save(tx: &mut PgConnection, d: &Due, before: Moved, now: DateTime<Utc>) -> Result<()> {
    if (d.next_fire_at, d.pending_tick_at, d.last_execution_id) == before {
        return Ok(());
    }
    sqlx::query!(
        "UPDATE connector_schedules SET next_fire_at = $2, pending_tick_at = $3,
             last_execution_id = $4, updated_at = $5
         WHERE id = $1",
        d.id,
        d.next_fire_at,
        d.pending_tick_at,
        d.last_execution_id,
        now
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The database's clock. Scheduler passes compare ticks with it rather
/// than with their own process's clock, so that processes whose clocks
/// disagree still agree on what is due: one whose clock runs ahead would
/// otherwise fire ticks early.
///
/// # Errors
///
/// Database errors.
pub async fn database_now(pool: &PgPool) -> Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar!(r#"SELECT now() AS "now!""#)
        .fetch_one(pool)
        .await?)
}

/// How long until the next scheduler pass has work, by the database's
/// clock: until the earliest `next_fire_at` of an active schedule, zero
/// when one is due (`None`: none is scheduled).
///
/// # Errors
///
/// Database errors.
pub async fn until_next_tick(pool: &PgPool) -> Result<Option<std::time::Duration>> {
    let seconds = sqlx::query_scalar!(
        "SELECT extract(epoch FROM min(next_fire_at) - clock_timestamp())::float8
         FROM connector_schedules WHERE NOT paused AND next_fire_at IS NOT NULL"
    )
    .fetch_one(pool)
    .await?;
    Ok(seconds.map(|s| {
        std::time::Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(std::time::Duration::MAX)
    }))
}
