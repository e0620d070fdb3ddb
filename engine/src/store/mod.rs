//! All SQL. Every query is scoped by workspace, and every write to a
//! running execution is fenced by its token: zero rows affected means the
//! lease was lost and the caller must stop.

pub mod access;
pub mod admin;
pub mod callbacks;
pub mod channels;
mod claim;
pub mod connectors;
pub mod console;
pub mod credentials;
mod enqueue;
pub mod executions;
pub mod flow;
pub mod group;
mod held;
pub mod history;
pub mod members;
pub mod oauth;
pub mod schedules;
pub mod subscriptions;
pub mod template_lists;
pub mod templates;
pub mod triggers;
pub mod usage;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgExecutor, PgPool};

pub use held::{Held, HeldConnection, IDLE_TEST, session_survives};

use crate::Result;

/// `options` with the pool's test of a connection it hands out (a round
/// trip) only for one idle for [`IDLE_TEST`] or longer: the pool tests
/// every connection it takes back, so one back for less than that
/// answered just now. sqlx tests at every hand-out by default, which made
/// each statement sent through a pool three round trips (see [`Held`]).
#[must_use]
pub fn tested_when_idle(options: PgPoolOptions) -> PgPoolOptions {
    options
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_TEST {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// A lazily connecting pool of one connection to `pool`'s database, with
/// `pool`'s acquire timeout, its `application_name` followed by
/// `purpose` (`conveyor-worker claims`: `pg_stat_activity` tells the
/// session from the pool's others), set up by `options`.
fn one_connection(
    pool: &PgPool,
    purpose: &str,
    options: impl FnOnce(PgPoolOptions) -> PgPoolOptions,
) -> PgPool {
    let connect = pool.connect_options();
    let name = match connect.get_application_name() {
        Some(name) => format!("{name} {purpose}"),
        None => purpose.to_owned(),
    };
    options(tested_when_idle(
        PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(pool.options().get_acquire_timeout()),
    ))
    .connect_lazy_with((*connect).clone().application_name(&name))
}

/// A connection of its own to `pool`'s database ([`one_connection`]),
/// for work that must not wait behind the pool's: the API's readiness
/// probe, which reports whether the database answers, not whether this
/// process has a connection free.
#[must_use]
pub fn own_connection(pool: &PgPool, purpose: &str) -> PgPool {
    one_connection(pool, purpose, |options| options)
}

/// A connection of its own to `pool`'s database ([`one_connection`]),
/// kept between statements ([`Held`]), whose session has the planner
/// `settings`: for a statement that one task sends one at a time and
/// that is planned once per connection
/// (`plan_cache_mode=force_generic_plan`), so its plan must not depend on
/// the statistics it was made with. The settings are made by a statement
/// once connected, rather than as startup options, which connection
/// poolers and proxies in front of PostgreSQL may refuse.
fn planned_once(
    pool: &PgPool,
    purpose: &str,
    settings: &'static [(&'static str, &'static str)],
) -> Held {
    Held::new(one_connection(pool, purpose, |options| {
        options.after_connect(move |conn, _| {
            Box::pin(async move {
                let (names, values): (Vec<&str>, Vec<&str>) = settings.iter().copied().unzip();
                sqlx::query(
                    "SELECT set_config(n, v, false) FROM unnest($1::text[], $2::text[]) AS s(n, v)",
                )
                .bind(names)
                .bind(values)
                .execute(conn)
                .await
                .map(drop)
            })
        })
    }))
}

/// Creates the workspace row on first use. Workspace ids are the calling
/// product's own opaque strings; no sign-up is needed.
///
/// # Errors
///
/// Database errors, including an id longer than 128 characters.
pub async fn ensure_workspace<'e>(db: impl PgExecutor<'e>, workspace_id: &str) -> Result<()> {
    sqlx::query!(
        "INSERT INTO workspaces (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
        workspace_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Whether every migration this build embeds is applied (for readiness).
///
/// # Errors
///
/// Database errors (including an unreachable database).
pub async fn schema_ready(pool: &sqlx::PgPool) -> Result<bool> {
    let known: Vec<i64> = crate::MIGRATOR.iter().map(|m| m.version).collect();
    // `_sqlx_migrations` belongs to sqlx's migrator and is absent before the
    // first migration, so this one query is not checked at compile time.
    let applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM _sqlx_migrations WHERE success AND version = ANY($1)",
    )
    .bind(&known)
    .fetch_one(pool)
    .await
    .or_else(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(0),
        _ => Err(e),
    })?;
    Ok(usize::try_from(applied).is_ok_and(|n| n == known.len()))
}
