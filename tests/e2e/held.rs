//! Connections kept between statements ([`Held`]) and pools that test a
//! connection they hand out only after it sat idle: a lost session costs
//! at most the statement that finds it, and one lost while idle costs
//! none.

use std::time::Duration;

use conveyor_engine::Error;
use conveyor_engine::store::{self, Held, IDLE_TEST};
use conveyor_tests::end_sessions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};

async fn backend(conn: &mut PgConnection) -> Result<i32, Error> {
    Ok(sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await?)
}

/// The backend pid of `held`'s connection, or the statement's error; the
/// connection is kept or given back as [`Held`] decides.
async fn held_backend(held: &Held) -> Result<i32, Error> {
    let mut conn = held.acquire().await?;
    let pid = backend(&mut conn).await;
    conn.finish(pid.as_ref().err());
    pid
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_held_connection_stays_out_of_its_pool_until_it_breaks(pool: PgPool) {
    let held = Held::new(store::own_connection(&pool, "held"));
    let first = held_backend(&held).await.expect("first statement");
    assert_eq!(
        (held.pool().size(), held.pool().num_idle()),
        (1, 0),
        "kept out of its pool between statements"
    );
    // PostgreSQL refusing a statement leaves the session sound: kept.
    let mut conn = held.acquire().await.expect("acquire");
    let refused: Result<i32, Error> = sqlx::query_scalar("SELECT 1 / 0")
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::from);
    assert!(
        matches!(&refused, Err(Error::Database(sqlx::Error::Database(_)))),
        "{refused:?}"
    );
    conn.finish(refused.as_ref().err());
    assert_eq!(held.pool().num_idle(), 0, "kept after a refused statement");
    assert_eq!(held_backend(&held).await.expect("same session"), first);

    // A session lost between two statements close together fails the
    // next one (the pool's own test would have cost a round trip every
    // time), and only that one: the broken connection goes back to its
    // pool, which closes it, and the statement after runs on a new one.
    assert_eq!(end_sessions(&pool, "held").await, 1);
    let lost = held_backend(&held).await;
    assert!(
        matches!(&lost, Err(e) if e.is_connection()),
        "the statement that finds the session gone fails: {lost:?}"
    );
    let second = held_backend(&held).await.expect("a fresh connection");
    assert_ne!(second, first);

    // One lost while idle is tested before its next statement, and
    // replaced without a failure.
    assert_eq!(end_sessions(&pool, "held").await, 1);
    tokio::time::sleep(IDLE_TEST + Duration::from_millis(100)).await;
    let third = held_backend(&held).await.expect("tested and replaced");
    assert_ne!(third, second);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_held_connection_dropped_mid_use_goes_back_to_its_pool(pool: PgPool) {
    let held = Held::new(store::own_connection(&pool, "held"));
    let pid = held_backend(&held).await.expect("first statement");
    {
        let mut conn = held.acquire().await.expect("acquire");
        backend(&mut conn).await.expect("statement");
        // Dropped without `finish`: an error returned early, or the
        // caller cancelled mid-statement.
    }
    tokio::time::timeout(Duration::from_secs(5), async {
        while held.pool().num_idle() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("back in its pool, tested");
    assert_eq!(
        held_backend(&held).await.expect("taken again"),
        pid,
        "the pool tested the session and handed it out again"
    );
    assert_eq!(held.pool().num_idle(), 0);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_pool_tests_a_connection_it_hands_out_after_it_sat_idle(pool: PgPool) {
    let tested = store::tested_when_idle(PgPoolOptions::new().max_connections(1))
        .connect_lazy_with(
            (*pool.connect_options())
                .clone()
                .application_name("idle-tested"),
        );
    let mut conn = tested.acquire().await.expect("acquire");
    let first = backend(&mut conn).await.expect("first statement");
    drop(conn);
    assert_eq!(end_sessions(&pool, "idle-tested").await, 1);
    tokio::time::sleep(IDLE_TEST + Duration::from_millis(100)).await;
    let mut conn = tested.acquire().await.expect("tested and replaced");
    let second = backend(&mut conn).await.expect("runs on a live session");
    assert_ne!(second, first);
}
