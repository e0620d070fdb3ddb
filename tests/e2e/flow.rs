//! Flow control in one process: provider signals park without spending
//! attempts, rate-limit and concurrency parks explain themselves, and a
//! crashed holder's concurrency slot frees with its lease.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use conveyor_engine::flow::WaitReason;
use conveyor_engine::runner::RunOutcome;
use conveyor_engine::state::{ExecutionStatus, StepOutcome};
use conveyor_engine::store::executions;
use conveyor_engine::store::flow;
use conveyor_tests::{Harness, WS};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_429_with_an_http_date_retry_after_is_respected_and_costs_no_attempt(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    // Whole seconds: an HTTP date has no fraction.
    let until = chrono::DateTime::from_timestamp(Utc::now().timestamp() + 3, 0).expect("time");
    let date = until.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", date.as_str()))
        .up_to_n_times(2)
        .mount(&stub)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&stub)
        .await;
    // One attempt only: a charged 429 would fail the run.
    let c = h
        .connector(json!({"name": "limited",
            "retry": {"max_attempts": 1},
            "steps": [{"name": "get", "method": "GET", "url": format!("{}/x", stub.uri()),
                       "rate_limit": {"key": "stub", "limit": 1000, "per_ms": 1000}}]}))
        .await;
    let id = h.enqueue(c, json!({})).await;
    let e = h.run_until_final(id, Duration::from_secs(30)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    let steps = h.steps(id).await;
    let outcomes: Vec<(i32, StepOutcome, Option<i32>)> = steps
        .iter()
        .map(|s| (s.attempt, s.outcome, s.response_status))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, StepOutcome::RetryScheduled, Some(429)),
            (2, StepOutcome::RetryScheduled, Some(429)),
            (3, StepOutcome::Succeeded, Some(200)),
        ]
    );
    assert!(
        steps[2].started_at >= until,
        "sent at {} before the provider's {until}",
        steps[2].started_at
    );
    // The provider's wait was pushed onto the key for every execution.
    let tat = tat(&h.pool, &format!("{WS}:stub")).await;
    assert!(tat >= until, "tat {tat} before {until}");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_full_rate_limit_parks_the_execution_and_says_why(pool: PgPool) {
    let h = Harness::new(pool);
    let (stub, second) = one_sent_one_parked(
        &h,
        json!({"key": "hub:<<settings.portal>>", "limit": 1, "per_ms": 2000}),
    )
    .await;
    let parked = h.execution(second).await;
    assert_eq!(parked.status, ExecutionStatus::Queued);
    assert_eq!(parked.step_attempt, 1, "parking costs no attempt");
    let waiting = parked.waiting_for(Utc::now()).expect("queued");
    assert_eq!(waiting.reason, WaitReason::RateLimit);
    assert_eq!(waiting.key.as_deref(), Some("hub:p1"));
    let until = waiting.until.expect("until");
    assert!(until > Utc::now() + chrono::Duration::milliseconds(1500));
    // Its slot is kept for it, the lead after its wake.
    let slot = reservation(&h.pool, second).await.expect("a kept slot");
    assert_eq!(
        slot - until,
        chrono::Duration::from_std(conveyor_engine::flow::LEAD).expect("lead")
    );
    let done = h.run_until_final(second, Duration::from_secs(20)).await;
    assert_eq!(done.status, ExecutionStatus::Succeeded);
    let steps = h.steps(second).await;
    assert_eq!(steps.len(), 1, "one stored attempt: the park sent nothing");
    assert!(
        steps[0].started_at >= slot,
        "sent at {} before its slot {slot}",
        steps[0].started_at
    );
    assert_eq!(
        reservation(&h.pool, second).await,
        None,
        "the slot was used"
    );
    assert_eq!(stub.received_requests().await.expect("rec").len(), 2);
}

/// Two executions of a one-step connector limited by `rate_limit` (its
/// settings have `portal: p1`): the first is sent, the second parked.
/// Returns the stub and the parked execution.
async fn one_sent_one_parked(h: &Harness, rate_limit: serde_json::Value) -> (MockServer, Uuid) {
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&stub)
        .await;
    let c = h
        .connector(json!({"name": "slow",
            "settings": {"portal": "p1"},
            "steps": [{"name": "get", "method": "GET", "url": format!("{}/x", stub.uri()),
                       "rate_limit": rate_limit}]}))
        .await;
    let first = h.enqueue(c, json!({})).await;
    let second = h.enqueue(c, json!({})).await;
    assert_eq!(
        h.worker.run_next().await.expect("run"),
        Some(RunOutcome::Succeeded)
    );
    assert_eq!(
        h.worker.run_next().await.expect("run"),
        Some(RunOutcome::Parked)
    );
    assert_eq!(h.execution(first).await.status, ExecutionStatus::Succeeded);
    (stub, second)
}

/// A connector whose step these tests never send: they drive its
/// executions' flow-control rows directly.
async fn never_sent(h: &Harness) -> (Uuid, i32) {
    h.connector(json!({"name": "c",
        "steps": [{"name": "get", "method": "GET", "url": "http://127.0.0.1:9/x"}]}))
        .await
}

/// Enqueues `n` executions of a connector never sent; their ids in
/// enqueue order.
async fn enqueue_new(h: &Harness, n: i64) -> Vec<Uuid> {
    let c = never_sent(h).await;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(h.enqueue(c, json!({})).await);
    }
    ids
}

/// Enqueues `n` executions of a connector never sent and claims them all
/// as worker `w` for `lease`, at a now exact to the microsecond (as
/// stored): that now, their ids in enqueue order, and their fencing
/// tokens.
async fn claim_new(
    h: &Harness,
    n: i64,
    lease: Duration,
) -> (chrono::DateTime<Utc>, Vec<Uuid>, HashMap<Uuid, i64>) {
    let ids = enqueue_new(h, n).await;
    let now = Utc::now().trunc_subsecs(6);
    let claimed = executions::claim(&executions::ClaimPool::new(&h.pool), "w", n, lease, now)
        .await
        .expect("claim");
    let tokens = claimed.iter().map(|x| (x.id, x.fencing_token)).collect();
    (now, ids, tokens)
}

/// Reserves one send of `id` on `key`.
async fn take(
    pool: &PgPool,
    key: &str,
    id: Uuid,
    pace: conveyor_engine::flow::Pace,
    now: chrono::DateTime<Utc>,
) -> conveyor_engine::Result<flow::Reserved> {
    let taken = flow::take_group(
        pool,
        &[flow::Take {
            key: key.to_owned(),
            id,
            pace,
            count: 1,
        }],
        now,
    )
    .await?;
    Ok(taken[0])
}

/// The TAT of rate-limit `key`.
async fn tat(pool: &PgPool, key: &str) -> chrono::DateTime<Utc> {
    sqlx::query_scalar("SELECT tat FROM flow_rate_limits WHERE key = $1")
        .bind(key)
        .fetch_one(pool)
        .await
        .expect("the key's row")
}

/// The slot kept for `id` by a park, if any.
async fn reservation(pool: &PgPool, id: Uuid) -> Option<chrono::DateTime<Utc>> {
    sqlx::query_scalar("SELECT slot FROM flow_rate_reservations WHERE execution_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .expect("reservation")
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_kept_slot_missed_by_more_than_the_tolerance_is_never_used(pool: PgPool) {
    let h = Harness::new(pool);
    let (stub, second) =
        one_sent_one_parked(&h, json!({"key": "k", "limit": 1, "per_ms": 1000})).await;
    let slot = reservation(&h.pool, second).await.expect("a kept slot");
    // Claimed 200 ms after its slot (a tolerance of 50 ms at 1 a second):
    // sending now could put two sends in one second. It takes the key's
    // next slot instead and parks again.
    let late = (slot + chrono::Duration::milliseconds(200) - Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(late).await;
    assert_eq!(
        h.worker.run_next().await.expect("run"),
        Some(RunOutcome::Parked)
    );
    let next = reservation(&h.pool, second).await.expect("a new slot");
    assert_eq!(next - slot, chrono::Duration::milliseconds(1_050));
    assert_eq!(stub.received_requests().await.expect("rec").len(), 1);
    let done = h.run_until_final(second, Duration::from_secs(20)).await;
    assert_eq!(done.status, ExecutionStatus::Succeeded);
    assert!(h.steps(second).await[0].started_at >= next);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_crashed_holders_concurrency_slot_frees_when_its_lease_expires(pool: PgPool) {
    let h = Harness::new(pool);
    let (now, ids, tokens) = claim_new(&h, 2, Duration::from_secs(1)).await;
    let (a, b) = (ids[0], ids[1]);
    let token = |id| tokens[&id];
    let key = format!("{WS}:k");
    assert!(
        flow::acquire(&h.pool, &key, 1, a, token(a), 0, now)
            .await
            .expect("a")
    );
    assert!(
        !flow::acquire(&h.pool, &key, 1, b, token(b), 0, now)
            .await
            .expect("b")
    );
    // Items of one execution in flight at once each hold a slot of their own.
    let items = format!("{WS}:items");
    for item in [1, 2] {
        assert!(
            flow::acquire(&h.pool, &items, 2, b, token(b), item, now)
                .await
                .expect("b's item")
        );
    }
    assert!(
        !flow::acquire(&h.pool, &items, 2, b, token(b), 3, now)
            .await
            .expect("b's item 3"),
        "b's items 1 and 2 hold both slots of a limit of 2"
    );
    flow::release(&h.pool, &items, (b, 1))
        .await
        .expect("release b's item 1");
    assert!(
        flow::acquire(&h.pool, &items, 2, b, token(b), 3, now)
            .await
            .expect("b's item 3 again")
    );
    // `a`'s worker vanished: once its lease passed, the slot no longer counts.
    h.lease_ran_out(a, Duration::from_secs(1)).await;
    let later = now + chrono::Duration::seconds(2);
    assert!(
        flow::acquire(&h.pool, &key, 1, b, token(b), 0, later)
            .await
            .expect("b later")
    );
    // A release wakes the execution parked longest on the key.
    let park = flow::Park {
        id: a,
        token: token(a),
        run_at: later + chrono::Duration::seconds(60),
        reason: WaitReason::Concurrency,
        key: key.clone(),
    };
    assert_eq!(
        flow::park_group(&h.pool, &[park], later)
            .await
            .expect("park"),
        [true]
    );
    let mut listener = sqlx::postgres::PgListener::connect_with(&h.pool)
        .await
        .expect("listener");
    listener
        .listen(conveyor_engine::store::channels::EXECUTIONS_ENQUEUED)
        .await
        .expect("listen");
    flow::release(&h.pool, &key, (b, 0)).await.expect("release");
    // Idle workers hear of it at once, as of an enqueue.
    tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a wake-up notification")
        .expect("notification");
    // Due now by the database's clock, which claims judge it by.
    let woken = h.execution(a).await;
    let db_now: chrono::DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&h.pool)
        .await
        .expect("now");
    assert!(woken.run_at <= db_now, "due at {}", woken.run_at);
    assert_eq!(
        woken
            .waiting_for(woken.run_at - chrono::Duration::seconds(1))
            .map(|w| w.reason),
        Some(WaitReason::Concurrency)
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn claims_take_turns_across_workspaces_and_respect_the_running_cap(pool: PgPool) {
    let h = Harness::new(pool);
    let definition = json!({"name": "c",
        "steps": [{"name": "get", "method": "GET", "url": "http://127.0.0.1:9/x"}]});
    let busy = h.connector(definition.clone()).await;
    // A deep backlog at the highest priority...
    for _ in 0..50 {
        let new = executions::NewExecution {
            priority: 100,
            ..conveyor_tests::new_execution(busy, json!({}))
        };
        conveyor_tests::enqueue_new(&h.pool, &new).await;
    }
    // ...and, later, one execution of another workspace at the lowest.
    let other = "ws_other";
    conveyor_engine::store::ensure_workspace(&h.pool, other)
        .await
        .expect("workspace");
    let parsed = conveyor_engine::connector::parse_and_validate(&definition).expect("valid");
    let quiet = conveyor_engine::store::connectors::create(&h.pool, other, &parsed)
        .await
        .expect("connector");
    let lone = conveyor_tests::enqueue_new(
        &h.pool,
        &executions::NewExecution {
            workspace_id: other.to_owned(),
            priority: -100,
            ..conveyor_tests::new_execution(quiet, json!({}))
        },
    )
    .await;
    let lease = Duration::from_secs(30);
    let claims = executions::ClaimPool::new(&h.pool);
    let first = executions::claim_capped(&claims, "w", (4, &[]), lease, 3, Utc::now())
        .await
        .expect("claim");
    assert_eq!(first.len(), 4);
    assert!(
        first.iter().any(|c| c.id == lone),
        "the other workspace's execution is in the first batch"
    );
    // The busy workspace runs 3, its cap: a claim gives it nothing more.
    let second = executions::claim_capped(&claims, "w", (4, &[]), lease, 3, Utc::now())
        .await
        .expect("claim");
    assert!(second.is_empty(), "claimed {} past the cap", second.len());
    let third = executions::claim_capped(&claims, "w", (4, &[]), lease, 5, Utc::now())
        .await
        .expect("claim");
    assert_eq!(third.len(), 2, "a higher cap lets two more run");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn woken_executions_are_claimed_ahead_of_an_older_backlog_within_the_cap(pool: PgPool) {
    let h = Harness::new(pool);
    let c = never_sent(&h).await;
    let lease = Duration::from_secs(30);
    let claims = executions::ClaimPool::new(&h.pool);
    let claim = |limit: i64, woken: Vec<Uuid>, cap: i64| {
        let claims = claims.clone();
        async move {
            executions::claim_capped(&claims, "w", (limit, &woken), lease, cap, Utc::now())
                .await
                .expect("claim")
                .into_iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        }
    };
    // Three executions run and park on a rate limit: `soon` and `third`
    // due in 200 ms, `later` in an hour.
    let mut parked = Vec::new();
    for wait in [200, 3_600_000, 200] {
        let id = h.enqueue(c, json!({})).await;
        let claimed = executions::claim_capped(&claims, "w", (1, &[]), lease, 100, Utc::now())
            .await
            .expect("claim");
        assert_eq!(claimed[0].id, id);
        let now = Utc::now();
        let until = now + chrono::Duration::milliseconds(wait);
        let token = claimed[0].fencing_token;
        let park = flow::Park {
            id,
            token,
            run_at: until,
            reason: WaitReason::RateLimit,
            key: format!("{WS}:k"),
        };
        assert_eq!(
            flow::park_group(&h.pool, &[park], now).await.expect("park"),
            [true]
        );
        parked.push(id);
    }
    let (soon, later, third) = (parked[0], parked[1], parked[2]);
    // A backlog enqueued before they are due, so ahead of them in the
    // round.
    let mut backlog = Vec::new();
    for _ in 0..5 {
        backlog.push(h.enqueue(c, json!({})).await);
    }
    tokio::time::sleep(Duration::from_millis(210)).await;
    // Without its wake, `soon` waits behind the backlog.
    let plain = claim(1, Vec::new(), 100).await;
    assert!(backlog.contains(&plain[0]), "{plain:?}");
    // Woken, it comes first; `later` is not due and is not claimed.
    assert_eq!(claim(1, vec![later, soon], 100).await, [soon]);
    // Two of the workspace's executions run: at a cap of 2 a woken one
    // waits too; at 3 it runs.
    assert!(claim(1, vec![third], 2).await.is_empty());
    assert_eq!(claim(1, vec![third], 3).await, [third]);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_missed_slot_moves_to_now_only_while_no_slot_after_it_is_taken(pool: PgPool) {
    let h = Harness::new(pool);
    let c = never_sent(&h).await;
    let (a, b) = (h.enqueue(c, json!({})).await, h.enqueue(c, json!({})).await);
    let key = format!("{WS}:k");
    let pace = conveyor_engine::flow::pace(10, 1_000);
    // An hour ahead, so that the server's clock, which a take and a
    // reanchor also read, is always behind the times given.
    let t0 = (Utc::now() + chrono::Duration::hours(1)).trunc_subsecs(6);
    // A fresh key: the slot is now.
    let taken = take(&h.pool, &key, a, pace, t0).await.expect("take");
    assert!(!taken.kept);
    let slot = taken.slot;
    assert_eq!(slot, t0);
    let ms = |n| slot + chrono::Duration::milliseconds(n);
    // Nobody took a slot after it: it moves to the late sender's now.
    assert_eq!(
        flow::reanchor(&h.pool, &key, slot, pace, ms(30))
            .await
            .expect("reanchor"),
        Some(ms(30))
    );
    assert_eq!(tat(&h.pool, &key).await, ms(135));
    // Once another send has its slot after it, it stays where it was.
    let next = take(&h.pool, &key, b, pace, ms(40)).await.expect("take");
    assert_eq!(next.slot, ms(135));
    assert_eq!(
        flow::reanchor(&h.pool, &key, ms(30), pace, ms(50))
            .await
            .expect("reanchor"),
        None
    );
    assert_eq!(tat(&h.pool, &key).await, ms(240));
    // Once that slot has passed too, the key is idle: the missed slot
    // still does not move, and a fresh take gets now.
    assert_eq!(
        flow::reanchor(&h.pool, &key, ms(30), pace, ms(300))
            .await
            .expect("reanchor"),
        None
    );
    let fresh = take(&h.pool, &key, a, pace, ms(300)).await.expect("take");
    assert_eq!(fresh.slot, ms(300));
    assert_eq!(tat(&h.pool, &key).await, ms(405));

    // "Now" is never behind the server's clock: a worker whose clock is
    // an hour slow moves its missed slot to the server's now.
    let other = format!("{WS}:other");
    let before = take(&h.pool, &other, a, pace, Utc::now())
        .await
        .expect("take");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let slow = Utc::now() - chrono::Duration::hours(1);
    let moved = flow::reanchor(&h.pool, &other, before.slot, pace, slow)
        .await
        .expect("reanchor")
        .expect("moved");
    assert!(
        moved >= before.slot + chrono::Duration::milliseconds(5),
        "{moved} after {}",
        before.slot
    );
    assert_eq!(
        tat(&h.pool, &other).await,
        moved + chrono::Duration::microseconds(pace.step_us)
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn parks_share_a_statement_and_answer_each_in_its_order(pool: PgPool) {
    let h = Harness::new(pool);
    let (now, ids, tokens) = claim_new(&h, 3, Duration::from_secs(30)).await;
    let token = |id| tokens[&id];
    let (rate, lost, cancelled) = (ids[0], ids[1], ids[2]);
    sqlx::query("UPDATE connector_executions SET cancel_requested_at = $2 WHERE id = $1")
        .bind(cancelled)
        .bind(now)
        .execute(&h.pool)
        .await
        .expect("cancel");
    let park = |id, token, secs, reason, key: &str| flow::Park {
        id,
        token,
        run_at: now + chrono::Duration::seconds(secs),
        reason,
        key: format!("{WS}:{key}"),
    };
    let parks = [
        park(cancelled, token(cancelled), 7, WaitReason::RateLimit, "r"),
        // A lease taken over since: nothing of it changes.
        park(lost, token(lost) + 1, 8, WaitReason::Concurrency, "c"),
        park(rate, token(rate), 9, WaitReason::Concurrency, "c"),
    ];
    assert_eq!(
        flow::park_group(&h.pool, &parks, now).await.expect("park"),
        [true, false, true]
    );

    let parked = h.execution(rate).await;
    assert_eq!(parked.status, ExecutionStatus::Queued);
    assert_eq!(parked.run_at, now + chrono::Duration::seconds(9));
    assert_eq!(parked.lease_owner, None);
    assert_eq!(
        parked.waiting_for(now).map(|w| (w.reason, w.key)),
        Some((WaitReason::Concurrency, Some("c".to_owned())))
    );
    let still = h.execution(lost).await;
    assert_eq!(still.status, ExecutionStatus::Running);
    assert_eq!(still.lease_owner.as_deref(), Some("w"));
    assert_eq!(
        h.execution(cancelled).await.status,
        ExecutionStatus::Cancelled
    );

    type Event = (Uuid, String, String, chrono::DateTime<Utc>, i32);
    let events: Vec<Event> = sqlx::query_as(
        "SELECT execution_id, kind, details->>'reason', (details->>'run_at')::timestamptz,
                (details->>'next_step')::int4
         FROM execution_events WHERE kind IN ('parked', 'cancelled') ORDER BY execution_id",
    )
    .fetch_all(&h.pool)
    .await
    .expect("events");
    let at = |secs| now + chrono::Duration::seconds(secs);
    let mut expected = vec![
        (rate, "parked".into(), "concurrency".into(), at(9), 0),
        (cancelled, "cancelled".into(), "rate_limit".into(), at(7), 0),
    ];
    expected.sort_by_key(|e| e.0);
    assert_eq!(events, expected);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_provider_push_back_drops_the_slots_kept_before_it(pool: PgPool) {
    let h = Harness::new(pool);
    let c = never_sent(&h).await;
    let (a, b) = (h.enqueue(c, json!({})).await, h.enqueue(c, json!({})).await);
    let key = format!("{WS}:k");
    let pace = conveyor_engine::flow::pace(1, 10_000);
    let now = Utc::now();
    assert!(!take(&h.pool, &key, a, pace, now).await.expect("a").kept);
    let kept = take(&h.pool, &key, b, pace, now).await.expect("b");
    assert!(kept.kept, "ten seconds ahead: kept for b");
    assert_eq!(reservation(&h.pool, b).await, Some(kept.slot));
    // A push-back that ends before the kept slot leaves it alone.
    let early = now + chrono::Duration::seconds(1);
    flow::push_back(&h.pool, &key, early, now)
        .await
        .expect("push back");
    assert_eq!(reservation(&h.pool, b).await, Some(kept.slot));
    // One past it drops it: b takes a new slot after the provider's time.
    let until = kept.slot + chrono::Duration::seconds(30);
    flow::push_back(&h.pool, &key, until, now)
        .await
        .expect("push back");
    assert_eq!(reservation(&h.pool, b).await, None);
    let again = take(&h.pool, &key, b, pace, now).await.expect("b again");
    assert!(again.slot >= until, "{} before {until}", again.slot);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn grouped_takes_get_consecutive_slots_per_key_in_their_order(pool: PgPool) {
    let h = Harness::new(pool);
    let ids = enqueue_new(&h, 36).await;
    let (k, other) = (format!("{WS}:k"), format!("{WS}:other"));
    // One a second: slots 1,050 ms apart (the 50 ms guard), each kept but
    // the first.
    let slow = conveyor_engine::flow::pace(1, 1_000);
    let fast = conveyor_engine::flow::pace(100, 1_000);
    let t = |key: &str, id: Uuid, pace| flow::Take {
        key: key.to_owned(),
        id,
        pace,
        count: 1,
    };
    let (a, b, d, e) = (ids[0], ids[1], ids[2], ids[3]);
    let now = Utc::now();
    let slots = flow::take_group(
        &h.pool,
        &[
            t(&k, a, slow),
            t(&k, b, slow),
            t(&other, e, fast),
            // The same execution and key again (for-each items): after
            // the others, in a statement of its own.
            t(&k, a, slow),
            t(&k, d, slow),
        ],
        now,
    )
    .await
    .expect("take");
    let s = slots[0].slot;
    let ms = |n| s + chrono::Duration::milliseconds(n);
    assert!(s >= now && s < now + chrono::Duration::seconds(5), "{s}");
    let got: Vec<_> = slots.iter().map(|r| (r.slot, r.kept)).collect();
    assert_eq!(got[0], (s, false));
    assert_eq!(got[1], (ms(1_050), true));
    assert!(!got[2].1, "another key starts at now");
    assert!(got[2].0 >= now && got[2].0 < ms(1_050), "{:?}", got[2]);
    assert_eq!(got[3], (ms(3_150), true));
    assert_eq!(got[4], (ms(2_100), true));
    for (id, slot) in [(a, ms(3_150)), (b, ms(1_050)), (d, ms(2_100))] {
        assert_eq!(reservation(&h.pool, id).await, Some(slot));
    }
    assert_eq!(reservation(&h.pool, e).await, None);
    // A kept slot is used again, not a new one, beside a fresh take.
    let again = flow::take_group(&h.pool, &[t(&k, ids[4], slow), t(&k, b, slow)], now)
        .await
        .expect("again");
    assert_eq!(again[0].slot, ms(4_200));
    assert_eq!(again[1].slot, ms(1_050));
    // Concurrent groups of one key never share or skip a slot.
    let fresh: Vec<Uuid> = ids[5..].to_vec();
    let mut groups = tokio::task::JoinSet::new();
    for chunk in fresh.chunks(8) {
        let pool = h.pool.clone();
        let takes: Vec<_> = chunk.iter().map(|&id| t(&k, id, slow)).collect();
        groups.spawn(async move { flow::take_group(&pool, &takes, Utc::now()).await });
    }
    let mut all = Vec::new();
    while let Some(group) = groups.join_next().await {
        all.extend(
            group
                .expect("join")
                .expect("take")
                .into_iter()
                .map(|r| r.slot),
        );
    }
    all.sort();
    let expected: Vec<_> = (0..fresh.len())
        .map(|i| ms(5_250 + 1_050 * i64::try_from(i).expect("i")))
        .collect();
    assert_eq!(all, expected);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_block_moves_the_key_past_all_its_slots_and_a_kept_slot_is_used_alone(pool: PgPool) {
    let h = Harness::new(pool);
    let ids = enqueue_new(&h, 3).await;
    let (a, b, d) = (ids[0], ids[1], ids[2]);
    let k = format!("{WS}:k");
    // One a second: slots 1,050 ms apart.
    let slow = conveyor_engine::flow::pace(1, 1_000);
    let t = |id, count| flow::Take {
        key: k.clone(),
        id,
        pace: slow,
        count,
    };
    let now = Utc::now();
    let slots = flow::take_group(&h.pool, &[t(a, 3), t(b, 1)], now)
        .await
        .expect("take");
    let s = slots[0].slot;
    let ms = |n| s + chrono::Duration::milliseconds(n);
    assert!(s >= now && s < now + chrono::Duration::seconds(5), "{s}");
    let got: Vec<_> = slots.iter().map(|r| (r.slot, r.kept, r.fresh)).collect();
    // a's block is its slot and the two after it; b's comes after those.
    assert_eq!(got, [(s, false, true), (ms(3_150), true, true)]);
    assert_eq!(reservation(&h.pool, a).await, None);
    assert_eq!(reservation(&h.pool, b).await, Some(ms(3_150)));
    // b's kept slot is used as it is, one slot whatever the count; d's
    // comes after b's.
    let again = flow::take_group(&h.pool, &[t(b, 3), t(d, 1)], now)
        .await
        .expect("again");
    let got: Vec<_> = again.iter().map(|r| (r.slot, r.kept, r.fresh)).collect();
    assert_eq!(got, [(ms(3_150), true, false), (ms(4_200), true, true)]);
    assert_eq!(tat(&h.pool, &k).await, ms(5_250));
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn workspaces_whose_ids_and_keys_share_colons_keep_their_own_budgets(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&stub)
        .await;
    // `ws_test` with key `eu:hubspot` and `ws_test:eu` with key `hubspot`:
    // one send a minute each, one budget each.
    let other = format!("{WS}:eu");
    let limited = |key: &str| {
        json!({"name": "limited",
            "steps": [{"name": "get", "method": "GET", "url": format!("{}/x", stub.uri()),
                       "rate_limit": {"key": key, "limit": 1, "per_ms": 60_000}}]})
    };
    let mine = h
        .enqueue(h.connector(limited("eu:hubspot")).await, json!({}))
        .await;
    let theirs_connector = conveyor_engine::connector::parse_and_validate(&limited("hubspot"))
        .expect("valid connector");
    let theirs_connector =
        conveyor_engine::store::connectors::create(&h.pool, &other, &theirs_connector)
            .await
            .expect("create connector");
    let theirs = conveyor_tests::enqueue_new(
        &h.pool,
        &conveyor_engine::store::executions::NewExecution {
            workspace_id: other.clone(),
            ..conveyor_tests::new_execution(theirs_connector, json!({}))
        },
    )
    .await;
    let e = h.run_until_final(mine, Duration::from_secs(10)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    // The other workspace's execution is sent at once, not parked for a
    // minute behind the first.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let e = loop {
        h.worker.run_next().await.expect("run_next");
        let e = conveyor_engine::store::history::get(&h.pool, &other, theirs)
            .await
            .expect("get")
            .expect("execution exists");
        if e.status.is_final() || tokio::time::Instant::now() > deadline {
            break e;
        }
    };
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.waiting_key);
    assert_eq!(stub.received_requests().await.expect("rec").len(), 2);
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM flow_rate_limits ORDER BY key")
        .fetch_all(&h.pool)
        .await
        .expect("keys");
    assert_eq!(keys, ["ws_test%3Aeu:hubspot", "ws_test:eu:hubspot"]);
}
