//! The callback outbox under load and races: claims take every
//! workspace's deliveries in turn (fewest in flight first), a slow
//! receiver does not hold back the next claim, a sender whose lease
//! expired cannot overwrite the attempt that took over, and concurrent
//! rotations of the signing secret leave each one's secret signing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use conveyor_engine::store::callbacks::{self, Next};
use conveyor_engine::webhook::{Scheme, key_of};
use conveyor_tests::api::TestApi;
use conveyor_worker::callbacks::CallbackSender;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const LEASE: chrono::Duration = chrono::Duration::seconds(60);

/// A pending delivery of workspace `ws` to `url`, due since `age_secs`
/// seconds ago.
async fn delivery(pool: &PgPool, ws: &str, url: &str, age_secs: i64) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO callback_deliveries (id, workspace_id, url, event, payload, next_attempt_at, created_at)
         VALUES ($1, $2, $3, 'credential.needs_reconnect', '{}',
                 now() - make_interval(secs => $4), now() - make_interval(secs => $4))",
    )
    .bind(id)
    .bind(ws)
    .bind(url)
    .bind(age_secs as f64)
    .execute(pool)
    .await
    .expect("delivery");
    id
}

async fn status_of(pool: &PgPool, id: Uuid) -> (String, Option<chrono::DateTime<Utc>>) {
    sqlx::query_as("SELECT status, lease_expires_at FROM callback_deliveries WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("delivery")
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn claims_take_each_workspace_in_turn_fewest_in_flight_first(pool: PgPool) {
    let mut backlog = Vec::new();
    for age in 0..50 {
        backlog.push(delivery(&pool, "ws_big", "https://big.example.com/cb", 3600 - age).await);
    }
    let small = [
        delivery(&pool, "ws_small", "https://small.example.com/cb", 2).await,
        delivery(&pool, "ws_small", "https://small.example.com/cb", 1).await,
    ];
    let first = callbacks::claim(&pool, 3, LEASE).await.expect("claim");
    let ids: Vec<Uuid> = first.iter().map(|d| d.id).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&small[0]), "the newer workspace gets a turn");
    assert!(ids.contains(&backlog[0]) && ids.contains(&backlog[1]));
    // The big workspace has two in flight, the small one one: the next
    // single claim goes to the small one, although its row is the newest.
    let next = callbacks::claim(&pool, 1, LEASE).await.expect("claim");
    assert_eq!(next.iter().map(|d| d.id).collect::<Vec<_>>(), [small[1]]);
    let rest = callbacks::claim(&pool, 100, LEASE).await.expect("claim");
    assert_eq!(rest.len(), 48, "every other due row, each once");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn concurrent_claimers_never_share_a_delivery(pool: PgPool) {
    for n in 0..200 {
        let ws = format!("ws_{}", n % 5);
        delivery(&pool, &ws, "https://hooks.example.com/cb", n).await;
    }
    let mut claimers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let pool = pool.clone();
        claimers.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = callbacks::claim(&pool, 7, LEASE).await.expect("claim");
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|d| d.id));
            }
        });
    }
    let mut ids: Vec<Uuid> = claimers.join_all().await.into_iter().flatten().collect();
    assert_eq!(ids.len(), 200);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "no delivery was claimed twice");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_sender_whose_lease_expired_cannot_overwrite_the_next_attempt(pool: PgPool) {
    let id = delivery(&pool, "ws_cb", "https://hooks.example.com/cb", 1).await;
    let stale = callbacks::claim(&pool, 10, LEASE).await.expect("claim");
    assert_eq!(stale[0].attempts, 1);
    // The first sender stalls past its lease; another takes the delivery.
    sqlx::query("UPDATE callback_deliveries SET lease_expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .expect("expire");
    let live = callbacks::claim(&pool, 10, LEASE).await.expect("claim");
    assert_eq!(live[0].attempts, 2);
    let now = Utc::now();
    let retry = Next::RetryAt(now + chrono::Duration::seconds(5));
    // The stale sender's failure neither ends the live lease...
    let recorded = callbacks::finish_attempt(
        &pool,
        id,
        (1, now),
        (None, Some("timed out"), 10_000),
        retry,
    )
    .await
    .expect("stale");
    assert!(!recorded, "the stale attempt no longer holds the delivery");
    let (status, lease) = status_of(&pool, id).await;
    assert_eq!(status, "pending");
    assert!(lease.is_some_and(|l| l > now), "the live lease stands");
    // ...nor undoes its delivery.
    let delivered =
        callbacks::finish_attempt(&pool, id, (2, now), (Some(204), None, 5), Next::Delivered)
            .await
            .expect("live");
    assert!(delivered);
    let recorded = callbacks::finish_attempt(&pool, id, (1, now), (Some(500), None, 10_000), retry)
        .await
        .expect("stale");
    assert!(!recorded);
    assert_eq!(status_of(&pool, id).await, ("delivered".to_owned(), None));
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM callback_attempts")
        .fetch_one(&pool)
        .await
        .expect("attempts");
    assert_eq!(attempts, 2, "both attempts were made and are recorded");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_slow_receiver_does_not_hold_back_the_next_claim(pool: PgPool) {
    let api = TestApi::new(pool);
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(8)))
        .mount(&receiver)
        .await;
    Mock::given(method("POST"))
        .and(path("/fast"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&receiver)
        .await;
    let slow = delivery(&api.pool, "ws_slow", &format!("{}/slow", receiver.uri()), 1).await;
    let sender =
        CallbackSender::new(api.pool.clone(), Arc::clone(&api.keyring), true).expect("sender");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(sender.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(15);
    while status_of(&api.pool, slow).await.1.is_none() {
        assert!(Instant::now() < deadline, "the slow delivery is never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fast = delivery(&api.pool, "ws_fast", &format!("{}/fast", receiver.uri()), 0).await;
    while status_of(&api.pool, fast).await.0 != "delivered" {
        assert!(Instant::now() < deadline, "the fast delivery is never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status_of(&api.pool, slow).await.0,
        "pending",
        "sent while the slow one was still in flight"
    );
    shutdown.cancel();
    running.abort();
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn concurrent_rotations_each_leave_their_secret_signing(pool: PgPool) {
    let api = TestApi::new(pool);
    let ws = "ws_rotate";
    let key = |s: &str| key_of(Scheme::StandardWebhooks, s).expect("key");
    let rotate = || callbacks::rotate(&api.pool, &api.keyring, ws);
    for round in 0..5 {
        // Both read the secret they replace before either writes, unless
        // the rotations are serialized.
        let (first, second) = tokio::join!(rotate(), rotate());
        let mut returned = [key(&first.expect("rotate")), key(&second.expect("rotate"))];
        let mut keys = callbacks::signing_keys(&api.pool, &api.keyring, ws)
            .await
            .expect("keys");
        returned.sort();
        keys.sort();
        assert_eq!(
            keys, returned,
            "round {round}: one is current, the other previous"
        );
    }
}
