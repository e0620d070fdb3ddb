//! The queue's guarantees: disjoint claims, fencing, poison cap,
//! cancellation, idempotent enqueue, graceful shutdown, deadlines.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use conveyor_engine::state::{ExecutionStatus, StepOutcome};
use conveyor_engine::store::executions::{self, CancelOutcome, StepRow, Transition};
use conveyor_engine::store::{connectors, history};
use conveyor_tests::{
    Harness, WS, enqueue, enqueue_new, new_execution, stored_step, test_worker_config, worker,
};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn one_step(url: String) -> serde_json::Value {
    json!({"name": "one", "steps": [{"name": "call", "method": "GET", "url": url}]})
}

/// A harness and a 1-step connector whose step these tests never send.
async fn never_sent(pool: PgPool) -> (Harness, (uuid::Uuid, i32)) {
    let h = Harness::new(pool);
    let c = h
        .connector(one_step("https://api.example.com/x".into()))
        .await;
    (h, c)
}

/// How many executions are stored.
async fn executions_stored(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM connector_executions")
        .fetch_one(pool)
        .await
        .expect("count")
}

fn lease() -> Duration {
    Duration::from_secs(30)
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn concurrent_claimers_never_share_a_row(pool: PgPool) {
    let (h, c) = never_sent(pool).await;
    for i in 0..200 {
        h.enqueue(c, json!({"i": i})).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        // Each claimer its own connection, as each worker process has.
        let claims = executions::ClaimPool::new(&h.pool);
        tasks.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let rows = executions::claim(&claims, &format!("w{w}"), 7, lease(), Utc::now())
                    .await
                    .expect("claim");
                if rows.is_empty() {
                    return mine;
                }
                mine.extend(rows.into_iter().map(|r| r.id));
            }
        });
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    while let Some(ids) = tasks.join_next().await {
        for id in ids.expect("task") {
            total += 1;
            assert!(seen.insert(id), "{id} was claimed twice");
        }
    }
    assert_eq!(total, 200);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn claims_follow_priority_then_run_at(pool: PgPool) {
    let (h, c) = never_sent(pool).await;
    let low = h.enqueue(c, json!({})).await;
    let high = enqueue_new(
        &h.pool,
        &executions::NewExecution {
            priority: 5,
            ..new_execution(c, json!({}))
        },
    )
    .await;
    let later = enqueue_new(
        &h.pool,
        &executions::NewExecution {
            priority: 9,
            run_at: Some(Utc::now() + Duration::from_secs(3600)),
            ..new_execution(c, json!({}))
        },
    )
    .await;
    let rows = executions::claim(
        &executions::ClaimPool::new(&h.pool),
        "w",
        10,
        lease(),
        Utc::now(),
    )
    .await
    .expect("claim");
    let order: Vec<_> = rows.iter().map(|r| r.id).collect();
    assert_eq!(
        order,
        [high, low],
        "delayed {later} must wait for its run_at"
    );
}

/// The node types of a plan and of every plan below it, each with the
/// relation it reads, if any.
fn plan_nodes(plan: &serde_json::Value, out: &mut Vec<(String, String)>) {
    let field = |k: &str| plan[k].as_str().unwrap_or_default().to_owned();
    out.push((field("Node Type"), field("Relation Name")));
    for child in plan["Plans"].as_array().into_iter().flatten() {
        plan_nodes(child, out);
    }
}

/// The plan `conn` makes for the claim statement, generic when `conn`
/// is set to force one.
async fn claim_plan(conn: &mut sqlx::PgConnection) -> Vec<(String, String)> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "PREPARE claim_plan(text, int8, timestamptz, interval, int8, uuid[]) AS {}",
        executions::CLAIM
    )))
    .execute(&mut *conn)
    .await
    .expect("prepare");
    explain_nodes(
        conn,
        "EXECUTE claim_plan('w', 64, now(), '30 seconds', 1000, '{}')".into(),
    )
    .await
}

/// The nodes of the plan `conn` has for `statement`.
async fn explain_nodes(conn: &mut sqlx::PgConnection, statement: String) -> Vec<(String, String)> {
    let (explained,): (serde_json::Value,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (FORMAT JSON) {statement}"
    )))
    .fetch_one(&mut *conn)
    .await
    .expect("explain");
    let mut nodes = Vec::new();
    plan_nodes(&explained[0]["Plan"], &mut nodes);
    nodes
}

/// A connection of `pool`'s with the default settings but a generic plan
/// for every prepared statement: the plan a planned-once connection
/// would keep had it not its own settings.
async fn default_generic_connection(pool: &PgPool) -> sqlx::PgConnection {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options())
        .await
        .expect("connect");
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut conn)
        .await
        .expect("set");
    conn
}

/// A claim connection plans the claim once and keeps that plan, so the
/// plan must suit a queue of any size: made on a queue analyzed nearly
/// empty, it still reaches every row through an index and joins in
/// nested loops, where the same statement planned with the default
/// settings scans the whole table (over a second a claim once thousands
/// of rows are queued).
#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_claim_connection_plans_the_claim_through_indexes_on_a_nearly_empty_queue(pool: PgPool) {
    let (h, c) = never_sent(pool).await;
    for i in 0..3 {
        h.enqueue(c, json!({"i": i})).await;
    }
    sqlx::query("ANALYZE connector_executions")
        .execute(&h.pool)
        .await
        .expect("analyze");
    let claims = executions::ClaimPool::new(&h.pool);
    let mut conn = claims.held().acquire().await.expect("acquire");
    let nodes = claim_plan(&mut conn).await;
    let reads: Vec<_> = nodes
        .iter()
        .filter(|(node, relation)| node.ends_with("Scan") && relation == "connector_executions")
        .collect();
    assert!(reads.len() >= 5, "the claim reads the queue: {nodes:?}");
    assert!(
        reads.iter().all(|(node, _)| node.starts_with("Index")),
        "every read of the queue goes through an index: {nodes:?}"
    );
    assert!(
        nodes
            .iter()
            .all(|(node, _)| node != "Hash Join" && node != "Merge Join"),
        "joins are nested loops: {nodes:?}"
    );
    // JIT would be decided once for that plan, from its estimate: a
    // queue analyzed large made every claim compile first (30 ms).
    let (jit,): (String,) = sqlx::query_as("SHOW jit")
        .fetch_one(&mut *conn)
        .await
        .expect("show jit");
    assert_eq!(jit, "off", "a claim connection never compiles the claim");
    let nodes = claim_plan(&mut default_generic_connection(&h.pool).await).await;
    assert!(
        nodes.contains(&("Seq Scan".to_owned(), "connector_executions".to_owned())),
        "with the default settings the same plan scans the queue: {nodes:?}"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_stale_worker_cannot_write_after_its_lease_was_taken_over(pool: PgPool) {
    let h = Harness::new(pool);
    let c = h
        .connector(json!({"name": "two", "steps": [
            {"name": "a", "method": "GET", "url": "https://api.example.com/a"},
            {"name": "b", "method": "GET", "url": "https://api.example.com/b"}]}))
        .await;
    let id = h.enqueue(c, json!({})).await;
    let t0 = Utc::now();
    let claims = executions::ClaimPool::new(&h.pool);
    let a = executions::claim(&claims, "worker-a", 1, lease(), t0)
        .await
        .expect("claim")
        .remove(0);
    // Worker A stalls past its lease; the rescuer requeues, B claims.
    let later = t0 + Duration::from_secs(31);
    h.lease_ran_out(id, Duration::from_secs(1)).await;
    let rescued = executions::rescue_expired(&h.pool, 5, lease(), later)
        .await
        .expect("rescue");
    assert_eq!(rescued.requeued, [id]);
    let b = executions::claim(&claims, "worker-b", 1, lease(), later)
        .await
        .expect("claim")
        .remove(0);
    assert!(b.fencing_token > a.fencing_token);

    let row = |worker: &str| StepRow {
        step_index: 0,
        attempt: 1,
        page: None,
        item: None,
        step_name: "a".into(),
        outcome: StepOutcome::Succeeded,
        request: json!({}),
        response_status: Some(200),
        response_headers: None,
        response_body: None,
        extracted: None,
        error: None,
        worker_id: worker.into(),
        started_at: later,
        finished_at: later,
        duration_ms: 1,
        request_bytes: 0,
        response_bytes: 0,
    };
    let stale = Transition::Continue {
        context: json!({"steps": {"a": {"stale": true}}}),
        next_step: 1,
        lease: lease(),
    };
    let written = executions::commit_step(
        &h.pool,
        id,
        a.fencing_token,
        &row("worker-a"),
        &stale,
        later,
    )
    .await
    .expect("commit");
    assert_eq!(written, None, "the stale commit must be refused");
    let fail = Transition::Fail {
        error: json!({"kind": "x"}),
    };
    assert_eq!(
        executions::commit_step(&h.pool, id, a.fencing_token, &row("worker-a"), &fail, later)
            .await
            .expect("commit"),
        None
    );
    assert_eq!(
        executions::heartbeat(&h.pool, id, a.fencing_token, lease())
            .await
            .expect("hb"),
        None
    );
    assert!(
        !executions::release(&h.pool, id, a.fencing_token, later)
            .await
            .expect("release")
    );
    assert!(
        !executions::finish(&h.pool, id, a.fencing_token, None, later)
            .await
            .expect("finish")
    );

    let e = h.execution(id).await;
    assert_eq!(e.status, ExecutionStatus::Running);
    assert_eq!(e.lease_owner.as_deref(), Some("worker-b"));
    assert_eq!(e.next_step, 0);
    assert_eq!(e.reclaims, 1);
    assert!(
        h.steps(id).await.is_empty(),
        "nothing of worker A was stored"
    );

    let fresh = Transition::Continue {
        context: json!({"steps": {"a": {"by": "b"}}}),
        next_step: 1,
        lease: lease(),
    };
    let written = executions::commit_step(
        &h.pool,
        id,
        b.fencing_token,
        &row("worker-b"),
        &fresh,
        later,
    )
    .await
    .expect("commit");
    assert_eq!(written, Some(ExecutionStatus::Running));
    assert_eq!(h.execution(id).await.next_step, 1);
}

/// How long the lease of `id` has left, by the database's clock.
async fn lease_left(h: &Harness, id: uuid::Uuid) -> Duration {
    let left: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM lease_expires_at - now())::float8
         FROM connector_executions WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&h.pool)
    .await
    .expect("lease");
    Duration::from_secs_f64(left.max(0.0))
}

/// Leases are set and judged by the database's clock, so workers' clocks
/// need not agree: a rescuer whose clock runs an hour ahead leaves a
/// renewed lease alone, and a holder whose clock runs an hour behind
/// still extends its lease by a full length when it commits a step. On
/// the workers' own clocks, that rescuer took over every healthy
/// execution, the holder's next heartbeat failed and the step in flight
/// was sent again.
#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn leases_hold_whatever_the_workers_clocks_say(pool: PgPool) {
    let (h, c) = never_sent(pool).await;
    let id = h.enqueue(c, json!({})).await;
    let hour = Duration::from_secs(3600);
    let (behind, ahead) = (Utc::now() - hour, Utc::now() + hour);
    let claims = executions::ClaimPool::new(&h.pool);
    let a = executions::claim(&claims, "worker-a", 1, lease(), Utc::now())
        .await
        .expect("claim")
        .remove(0);
    let left = lease_left(&h, id).await;
    assert!(
        left > lease() - Duration::from_secs(5) && left <= lease(),
        "a full lease from the database's now: {left:?} left"
    );
    let rescued = executions::rescue_expired(&h.pool, 5, lease(), ahead)
        .await
        .expect("rescue");
    assert_eq!(rescued, executions::Rescued::default());
    assert_eq!(
        executions::heartbeat(&h.pool, id, a.fencing_token, lease())
            .await
            .expect("heartbeat"),
        Some(false),
        "the holder keeps its lease"
    );
    let left = lease_left(&h, id).await;
    assert!(
        left > lease() - Duration::from_secs(5),
        "renewed: {left:?} left"
    );
    let next = Transition::Continue {
        context: json!({}),
        next_step: 1,
        lease: lease(),
    };
    let step = stored_step("worker-a");
    assert_eq!(
        executions::commit_step(&h.pool, id, a.fencing_token, &step, &next, behind)
            .await
            .expect("commit"),
        Some(ExecutionStatus::Running)
    );
    let left = lease_left(&h, id).await;
    assert!(
        left > lease() - Duration::from_secs(5),
        "extended by the commit: {left:?} left"
    );
    let e = h.execution(id).await;
    assert_eq!(e.lease_owner.as_deref(), Some("worker-a"));
    assert_eq!(e.reclaims, 0);
}

/// The ids one claim of `limit` rows by a worker whose clock says `now`
/// takes.
async fn claimed_ids(claims: &executions::ClaimPool, now: DateTime<Utc>) -> Vec<uuid::Uuid> {
    executions::claim(claims, "w", 1, lease(), now)
        .await
        .expect("claim")
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// Due times are judged by the database's clock, and every `run_at`
/// meaning "now" or "after a delay" is written from it: an execution an
/// API an hour ahead enqueued, or a worker an hour ahead released or
/// rescued, is due at once for a worker an hour behind; a retry an hour
/// away, scheduled by a worker an hour behind, is not due for one an
/// hour ahead. On the processes' own clocks, each of these waited an
/// hour or ran an hour early.
#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn due_times_hold_whatever_the_clocks_of_the_api_and_workers_say(pool: PgPool) {
    let (h, c) = never_sent(pool).await;
    let hour = Duration::from_secs(3600);
    let (behind, ahead) = (Utc::now() - hour, Utc::now() + hour);
    let claims = executions::ClaimPool::new(&h.pool);
    let mut conn = h.pool.acquire().await.expect("connection");
    let id = executions::enqueue(&mut conn, &new_execution(c, json!({})), ahead)
        .await
        .expect("enqueue")
        .id;
    let token = executions::claim(&claims, "w", 1, lease(), behind)
        .await
        .expect("claim")
        .first()
        .map(|c| c.fencing_token)
        .expect("due at once");

    let retry = Transition::Retry {
        delay: hour,
        attempt: 2,
        throttled: false,
        context: None,
    };
    let step = stored_step("w");
    assert_eq!(
        executions::commit_step(&h.pool, id, token, &step, &retry, behind)
            .await
            .expect("commit"),
        Some(ExecutionStatus::Queued)
    );
    assert!(claimed_ids(&claims, ahead).await.is_empty(), "an hour away");
    let (wait,): (f64,) = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM run_at - now())::float8 FROM connector_executions WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&h.pool)
    .await
    .expect("run_at");
    assert!((3590.0..=3600.0).contains(&wait), "due in {wait} s");

    let other = h.enqueue(c, json!({})).await;
    let running = executions::claim(&claims, "w", 1, lease(), ahead)
        .await
        .expect("claim")
        .remove(0);
    assert_eq!(running.id, other);
    assert!(
        executions::release(&h.pool, other, running.fencing_token, ahead)
            .await
            .expect("release")
    );
    assert_eq!(claimed_ids(&claims, behind).await, [other], "released");
    h.lease_ran_out(other, Duration::from_secs(1)).await;
    let rescued = executions::rescue_expired(&h.pool, 5, lease(), ahead)
        .await
        .expect("rescue");
    assert_eq!(rescued.requeued, [other]);
    assert_eq!(claimed_ids(&claims, behind).await, [other], "rescued");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn an_execution_that_keeps_losing_its_lease_is_failed_as_poisoned(pool: PgPool) {
    let (h, c) = never_sent(pool).await;
    let id = h.enqueue(c, json!({})).await;
    let mut now = Utc::now();
    for round in 1..=3 {
        let claimed = executions::claim(&executions::ClaimPool::new(&h.pool), "w", 1, lease(), now)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1, "round {round}");
        now += Duration::from_secs(60);
        h.lease_ran_out(id, Duration::from_secs(1)).await;
        let rescued = executions::rescue_expired(&h.pool, 2, lease(), now)
            .await
            .expect("rescue");
        if round < 3 {
            assert_eq!(rescued.requeued, [id], "round {round}");
        } else {
            assert_eq!(rescued.poisoned, [id]);
        }
    }
    let e = h.execution(id).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert_eq!(
        e.error.as_ref().map(|e| e["kind"].clone()),
        Some(json!("poisoned"))
    );
    assert!(e.lease_owner.is_none());
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn cancelling_a_queued_execution_ends_it_and_it_never_runs(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    let c = h.connector(one_step(format!("{}/x", stub.uri()))).await;
    let id = h.enqueue(c, json!({})).await;
    let outcome = executions::cancel(&h.pool, WS, id, Utc::now())
        .await
        .expect("cancel");
    assert_eq!(outcome, CancelOutcome::Cancelled);
    assert!(h.worker.run_next().await.expect("run").is_none());
    assert_eq!(h.execution(id).await.status, ExecutionStatus::Cancelled);
    assert!(stub.received_requests().await.expect("rec").is_empty());
    let again = executions::cancel(&h.pool, WS, id, Utc::now())
        .await
        .expect("cancel");
    assert_eq!(
        again,
        CancelOutcome::AlreadyFinished(ExecutionStatus::Cancelled)
    );
    let other = executions::cancel(&h.pool, "ws_other", id, Utc::now())
        .await
        .expect("cancel");
    assert_eq!(other, CancelOutcome::NotFound);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn cancelling_a_running_execution_stops_it_before_the_next_step(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(2500)))
        .mount(&stub)
        .await;
    let c = h
        .connector(json!({"name": "two", "steps": [
            {"name": "slow", "method": "GET", "url": format!("{}/slow", stub.uri())},
            {"name": "never", "method": "GET", "url": format!("{}/never", stub.uri())}]}))
        .await;
    let id = h.enqueue(c, json!({})).await;
    let pool = h.pool.clone();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        executions::cancel(&pool, WS, id, Utc::now())
            .await
            .expect("cancel")
    });
    let e = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(canceller.await.expect("task"), CancelOutcome::Requested);
    assert_eq!(e.status, ExecutionStatus::Cancelled);
    let received = stub.received_requests().await.expect("rec");
    assert!(
        received.iter().all(|r| r.url.path() != "/never"),
        "the next step ran"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn enqueue_with_the_same_idempotency_key_returns_the_first_execution(pool: PgPool) {
    let (h, c) = never_sent(pool).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let pool = h.pool.clone();
        tasks.spawn(async move { enqueue(&pool, c, json!({}), Some("order-1")).await });
    }
    let mut ids = HashSet::new();
    while let Some(id) = tasks.join_next().await {
        ids.insert(id.expect("task"));
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(executions_stored(&h.pool).await, 1);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_run_past_its_deadline_fails_with_a_timeout_error(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(1500)))
        .mount(&stub)
        .await;
    let c = h
        .connector(json!({"name": "slow", "timeout_ms": 400,
            "retry": {"max_attempts": 3, "initial_delay_ms": 50, "max_delay_ms": 100},
            "steps": [{"name": "slow", "method": "GET", "url": format!("{}/slow", stub.uri())}]}))
        .await;
    let id = h.enqueue(c, json!({})).await;
    let e = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    let error = e.error.expect("error");
    assert_eq!(error["kind"], json!("timeout"), "{error}");
    assert!(
        error["message"].as_str().unwrap_or("").contains("deadline"),
        "{error}"
    );
    let elapsed = e.finished_at.expect("finished") - e.started_at.expect("started");
    assert!(
        elapsed < chrono::Duration::milliseconds(1400),
        "the step was not cut at the deadline"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn shutdown_lets_the_step_in_flight_finish_and_releases_the_rest(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/first"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(800)))
        .mount(&stub)
        .await;
    let c = h
        .connector(json!({"name": "two", "steps": [
            {"name": "first", "method": "GET", "url": format!("{}/first", stub.uri())},
            {"name": "second", "method": "GET", "url": format!("{}/second", stub.uri())}]}))
        .await;
    let id = h.enqueue(c, json!({})).await;
    let shutdown = CancellationToken::new();
    let w = worker(&h.pool, &h.keyring, test_worker_config("worker-s"));
    let running = tokio::spawn(w.run(shutdown.clone()));
    // Wait until the first step is in flight, then ask for shutdown.
    let started = std::time::Instant::now();
    while stub.received_requests().await.expect("rec").is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("worker stops within the grace period")
        .expect("worker task");
    let e = h.execution(id).await;
    assert_eq!(
        e.status,
        ExecutionStatus::Queued,
        "released for another worker"
    );
    assert!(e.lease_owner.is_none());
    assert_eq!(e.next_step, 1, "the step in flight finished and was stored");
    let steps = h.steps(id).await;
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].outcome, StepOutcome::Succeeded);
    let received = stub.received_requests().await.expect("rec");
    assert_eq!(received.len(), 1, "the second step did not start");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn retention_prunes_finished_executions_with_their_steps_and_events(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&stub)
        .await;
    let c = h.connector(one_step(format!("{}/x", stub.uri()))).await;
    let done = h.enqueue(c, json!({})).await;
    assert_eq!(
        h.run_until_final(done, Duration::from_secs(20))
            .await
            .status,
        ExecutionStatus::Succeeded
    );
    let waiting = enqueue_new(
        &h.pool,
        &executions::NewExecution {
            run_at: Some(Utc::now() + Duration::from_secs(3600)),
            ..new_execution(c, json!({}))
        },
    )
    .await;
    let history = conveyor_engine::store::history::prune_finished;
    assert_eq!(
        history(
            &h.pool,
            Utc::now(),
            Utc::now() - Duration::from_secs(60),
            10
        )
        .await
        .expect("prune"),
        0,
        "too recent"
    );
    assert_eq!(
        history(&h.pool, Utc::now(), Utc::now() + Duration::from_secs(1), 10)
            .await
            .expect("prune"),
        1
    );
    let steps: i64 = sqlx::query_scalar("SELECT count(*) FROM execution_steps")
        .fetch_one(&h.pool)
        .await
        .expect("count");
    assert_eq!(steps, 0);
    let events: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT DISTINCT execution_id FROM execution_events")
            .fetch_all(&h.pool)
            .await
            .expect("events");
    assert_eq!(
        events,
        [waiting],
        "only the unfinished execution's events remain"
    );
    assert_eq!(executions_stored(&h.pool).await, 1);
    assert_eq!(h.execution(waiting).await.status, ExecutionStatus::Queued);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_lease_that_ran_out_before_the_rescuer_could_vouch_is_not_counted(pool: PgPool) {
    let (h, c) = never_sent(pool).await;
    let id = h.enqueue(c, json!({})).await;
    let claims = executions::ClaimPool::new(&h.pool);
    executions::claim(&claims, "w", 1, lease(), Utc::now())
        .await
        .expect("claim");
    // The lease ran out 5 s ago, and the rescuer came back (or the
    // database did) 4 s ago: even with a cap of 0, the execution is
    // requeued, uncounted.
    h.lease_ran_out(id, Duration::from_secs(5)).await;
    let rescued = executions::rescue_expired(&h.pool, 0, Duration::from_secs(4), Utc::now())
        .await
        .expect("rescue");
    assert_eq!(rescued.requeued, [id]);
    assert_eq!(rescued.uncounted, [id]);
    assert_eq!(h.execution(id).await.reclaims, 0);
    // The rescuer vouches for the whole lease: counted, and past cap 0.
    executions::claim(&claims, "w", 1, lease(), Utc::now())
        .await
        .expect("claim");
    h.lease_ran_out(id, Duration::from_secs(1)).await;
    let rescued = executions::rescue_expired(&h.pool, 0, lease(), Utc::now())
        .await
        .expect("rescue");
    assert_eq!(rescued.poisoned, [id]);
    assert_eq!(h.execution(id).await.reclaims, 1);
}

/// Grouped single executes: one statement enqueues every item with its
/// `enqueued` event and its own `execution.start` audit entry; an item
/// whose key is taken (by a stored execution, or by an earlier item of
/// the group) writes nothing and answers `None`. When the statement is
/// refused, each item is enqueued alone, so only the bad item fails.
#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn grouped_executes_answer_each_item_and_a_refused_item_fails_alone(pool: PgPool) {
    let (h, c) = never_sent(pool).await;
    let enqueues = executions::EnqueuePool::new(&h.pool);
    let stored = enqueue(&h.pool, c, json!({"n": 0}), Some("taken")).await;
    let item = |n: i64, key: Option<&str>| executions::Execute {
        new: executions::NewExecution {
            idempotency_key: key.map(str::to_owned),
            ..new_execution(c, json!({ "n": n }))
        },
        actor: format!("user-{n}"),
        request_id: Some(format!("req-{n}")),
    };
    let group = [
        item(1, Some("k1")),
        item(2, None),
        item(3, Some("k1")),
        item(4, Some("taken")),
        item(5, None),
    ];
    let answers = executions::enqueue_executes(&enqueues, &group, Utc::now())
        .await
        .expect("group");
    let created: Vec<bool> = answers.iter().map(Option::is_some).collect();
    assert_eq!(created, [true, true, false, false, true]);
    for (view, execute) in answers
        .iter()
        .zip(&group)
        .filter_map(|(a, e)| Some((a.as_ref()?, e)))
    {
        assert_eq!(view.input, execute.new.input, "each item gets its own view");
        assert_eq!(view.status, ExecutionStatus::Queued);
        let (actor, request_id, details): (String, Option<String>, serde_json::Value) =
            sqlx::query_as(
                "SELECT actor, request_id, details FROM audit_log
             WHERE action = 'execution.start' AND object_type = 'execution' AND object_id = $1",
            )
            .bind(view.id.to_string())
            .fetch_one(&h.pool)
            .await
            .expect("one audit entry per execution");
        assert_eq!(actor, execute.actor);
        assert_eq!(request_id, execute.request_id);
        assert_eq!(details, json!({"connector_id": c.0}));
        let events: Vec<String> = sqlx::query_scalar(
            "SELECT kind FROM execution_events WHERE execution_id = $1 ORDER BY id",
        )
        .bind(view.id)
        .fetch_all(&h.pool)
        .await
        .expect("events");
        assert_eq!(events, ["enqueued"]);
    }
    let (rows, audits): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM connector_executions),
                (SELECT count(*) FROM audit_log WHERE action = 'execution.start')",
    )
    .fetch_one(&h.pool)
    .await
    .expect("counts");
    assert_eq!(
        (rows, audits),
        (4, 3),
        "the conflicting items wrote nothing"
    );
    let k1: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM connector_executions WHERE idempotency_key = 'k1'")
            .fetch_one(&h.pool)
            .await
            .expect("k1");
    assert_eq!(
        Some(k1),
        answers[0].as_ref().map(|v| v.id),
        "the first item holds the key"
    );
    assert_ne!(k1, stored);

    // PostgreSQL refuses U+0000 in jsonb: that item's statement fails, and
    // alone it fails only itself.
    let mut bad = item(7, None);
    bad.new.input = json!({"text": "a\u{0}b"});
    let group = [item(6, None), bad, item(8, Some("taken"))];
    assert!(
        executions::enqueue_executes(&enqueues, &group, Utc::now())
            .await
            .is_err(),
        "the group statement is refused as a whole"
    );
    let answers = executions::enqueue_each_alone(&enqueues, &group, Utc::now()).await;
    assert!(matches!(answers[0], Ok(Some(ref v)) if v.input == json!({"n": 6})));
    assert!(answers[1].is_err(), "the bad item fails");
    assert!(
        matches!(answers[2], Ok(None)),
        "a taken key still answers None"
    );
    assert_eq!(
        executions_stored(&h.pool).await,
        5,
        "only the good new item was added"
    );

    // The statement enqueues only at the connector's live version: once a
    // newer one is published, an item of the older writes nothing, and
    // once the connector is deleted, nothing at all.
    let definition =
        serde_json::from_value(one_step("https://api.example.com/y".into())).expect("definition");
    let newer = connectors::update(&h.pool, WS, c.0, &definition)
        .await
        .expect("update")
        .expect("a new version");
    let at_newer = executions::Execute {
        new: executions::NewExecution {
            connector_version: newer,
            ..item(10, None).new
        },
        ..item(10, None)
    };
    let answers = executions::enqueue_executes(&enqueues, &[item(9, None), at_newer], Utc::now())
        .await
        .expect("group");
    let created: Vec<bool> = answers.iter().map(Option::is_some).collect();
    assert_eq!(created, [false, true], "only the live version is enqueued");
    assert!(connectors::delete(&h.pool, WS, c.0).await.expect("delete"));
    let answers = executions::enqueue_each_alone(
        &enqueues,
        &[executions::Execute {
            new: executions::NewExecution {
                connector_version: newer,
                ..item(11, None).new
            },
            ..item(11, None)
        }],
        Utc::now(),
    )
    .await;
    assert!(
        matches!(answers[..], [Ok(None)]),
        "a deleted connector's item writes nothing"
    );
    assert_eq!(executions_stored(&h.pool).await, 6);

    // A lost connection is every item's failure: each is answered as a
    // connection error (503 at the API), none tried again alone.
    assert_eq!(conveyor_tests::end_sessions(&h.pool, "enqueue").await, 1);
    let answers = executions::enqueue_each_alone(&enqueues, &group, Utc::now()).await;
    assert_eq!(answers.len(), 3);
    for answer in answers {
        let e = answer.expect_err("the pool is closed");
        assert!(
            matches!(
                e,
                conveyor_engine::Error::Group {
                    connection: true,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.is_connection());
    }
}

/// The plan `conn` has for the prepared statement `name`, a grouped
/// enqueue of one item of connector `c`, generic when `conn` forces one.
async fn enqueue_plan(
    conn: &mut sqlx::PgConnection,
    name: &str,
    c: (uuid::Uuid, i32),
) -> Vec<(String, String)> {
    let statement = format!(
        "EXECUTE {name}(ARRAY[gen_random_uuid()], ARRAY['{WS}'], ARRAY['{}'::uuid], ARRAY[{}],
             ARRAY['{{}}'::jsonb], ARRAY[NULL::text], ARRAY[0::int2], ARRAY[NULL::timestamptz],
             ARRAY[NULL::uuid], ARRAY[NULL::jsonb], ARRAY['user:u'], ARRAY[NULL::text], ARRAY['u'],
             ARRAY[NULL::text], now())",
        c.0, c.1
    );
    explain_nodes(conn, statement).await
}

/// The connection that enqueues grouped single executes plans their
/// statement once: a generic plan at every call, never one planned for
/// the call (0.4 ms of server time each). That plan, made on a nearly
/// empty `connectors` table, still reads it through an index, where the
/// same generic plan made with the default settings scans the table.
#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_enqueue_connection_plans_the_group_statement_once_through_an_index(pool: PgPool) {
    let (h, c) = never_sent(pool).await;
    sqlx::query("ANALYZE connectors")
        .execute(&h.pool)
        .await
        .expect("analyze");
    let enqueues = executions::EnqueuePool::new(&h.pool);
    for n in 0..3 {
        let execute = executions::Execute {
            new: new_execution(c, json!({ "n": n })),
            actor: "user-1".into(),
            request_id: None,
        };
        let answers = executions::enqueue_executes(&enqueues, &[execute], Utc::now())
            .await
            .expect("enqueue");
        assert!(answers[0].is_some(), "enqueued");
    }
    assert_eq!(executions_stored(&h.pool).await, 3);
    let mut conn = enqueues.held().acquire().await.expect("acquire");
    let (name, statement, types, generic, custom): (String, String, String, i64, i64) =
        sqlx::query_as(
            "SELECT name, statement, array_to_string(parameter_types, ','), generic_plans, custom_plans
             FROM pg_prepared_statements
             WHERE starts_with(statement, 'WITH x AS') AND statement LIKE '%INSERT INTO connector_executions%'",
        )
        .fetch_one(&mut *conn)
        .await
        .expect("the group statement is prepared on the enqueue connection");
    assert_eq!((generic, custom), (3, 0), "one plan, used at every call");
    let nodes = enqueue_plan(&mut conn, &name, c).await;
    let reads: Vec<_> = nodes
        .iter()
        .filter(|(node, relation)| node.ends_with("Scan") && relation == "connectors")
        .collect();
    assert!(
        !reads.is_empty() && reads.iter().all(|(node, _)| node.starts_with("Index")),
        "the connector is read through an index: {nodes:?}"
    );
    let (jit,): (String,) = sqlx::query_as("SHOW jit")
        .fetch_one(&mut *conn)
        .await
        .expect("show jit");
    assert_eq!(jit, "off", "the enqueue connection never compiles its plan");
    let mut plain = default_generic_connection(&h.pool).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "PREPARE default_enqueue({types}) AS {statement}"
    )))
    .execute(&mut plain)
    .await
    .expect("prepare");
    let nodes = enqueue_plan(&mut plain, "default_enqueue", c).await;
    assert!(
        nodes.contains(&("Seq Scan".to_owned(), "connectors".to_owned())),
        "with the default settings the same plan scans the connectors: {nodes:?}"
    );
}

/// When the execution `id` was first claimed, waiting for it.
async fn claimed_at(h: &Harness, id: uuid::Uuid) -> DateTime<Utc> {
    let started = std::time::Instant::now();
    loop {
        if let Some(at) = h.execution(id).await.started_at {
            return at;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{id} never claimed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A stub whose `/slow` answers after `slow` and every other GET after
/// `others`.
async fn slow_stub(slow: Duration, others: Duration) -> MockServer {
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(slow))
        .mount(&stub)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(others))
        .mount(&stub)
        .await;
    stub
}

/// A worker with `cooldown` runs execution A, whose step takes 4 s; B is
/// enqueued once A is claimed, C once A is over. Returns how long after
/// A's claim B's came, and how long C waited for its own.
async fn claims_around_a_slow_step(pool: PgPool, cooldown: Duration) -> (Duration, Duration) {
    let h = Harness::new(pool);
    let stub = slow_stub(Duration::from_secs(4), Duration::ZERO).await;
    let slow = h.connector(one_step(format!("{}/slow", stub.uri()))).await;
    let fast = h.connector(one_step(format!("{}/fast", stub.uri()))).await;
    let mut config = test_worker_config("worker-cooldown");
    config.claim_cooldown = cooldown;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker(&h.pool, &h.keyring, config).run(shutdown.clone()));

    let a = h.enqueue(slow, json!({})).await;
    let a_claimed = claimed_at(&h, a).await;
    let b = h.enqueue(fast, json!({})).await;
    let b_claimed = claimed_at(&h, b).await;
    h.wait_final(b, Duration::from_secs(20)).await;
    h.wait_final(a, Duration::from_secs(20)).await;
    let c = h.enqueue(fast, json!({})).await;
    let c_claimed = claimed_at(&h, c).await;
    let c_created = h.execution(c).await.created_at;
    shutdown.cancel();
    running.await.expect("worker task");
    (
        (b_claimed - a_claimed).to_std().expect("B after A"),
        (c_claimed - c_created)
            .to_std()
            .expect("C after its enqueue"),
    )
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_busy_worker_spaces_its_claims_by_the_cooldown_and_an_idle_one_claims_at_once(
    pool: PgPool,
) {
    let (b_after_a, c_waited) = claims_around_a_slow_step(pool, Duration::from_secs(3)).await;
    // A was in flight: B waited out the 3 s since A's claim.
    assert!(
        b_after_a >= Duration::from_secs(3),
        "B claimed {b_after_a:?} after A"
    );
    // C came 1 s after B's claim, but nothing was in flight any more.
    assert!(c_waited < Duration::from_secs(1), "C waited {c_waited:?}");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn without_a_cooldown_a_busy_worker_claims_as_work_arrives(pool: PgPool) {
    let (b_after_a, _) = claims_around_a_slow_step(pool, Duration::ZERO).await;
    assert!(
        b_after_a < Duration::from_secs(2),
        "B claimed {b_after_a:?} after A"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn claiming_a_parked_execution_back_neither_skips_nor_restarts_the_cooldown(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = slow_stub(Duration::from_secs(12), Duration::ZERO).await;
    let slow = h.connector(one_step(format!("{}/slow", stub.uri()))).await;
    // One send per 3 s: of the two paced executions, the second parks
    // and this worker claims it back by itself at its slot.
    let paced = h
        .connector(
            json!({"name": "paced", "steps": [{"name": "call", "method": "GET",
            "url": format!("{}/paced", stub.uri()),
            "rate_limit": {"key": "paced", "limit": 1, "per_ms": 3000}}]}),
        )
        .await;
    let fast = h.connector(one_step(format!("{}/fast", stub.uri()))).await;
    let a = h.enqueue(slow, json!({})).await;
    let paced_ids = [
        h.enqueue(paced, json!({})).await,
        h.enqueue(paced, json!({})).await,
    ];
    let mut config = test_worker_config("worker-parked-cooldown");
    config.claim_cooldown = Duration::from_secs(6);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker(&h.pool, &h.keyring, config).run(shutdown.clone()));
    for id in paced_ids {
        let e = h.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(e.status, ExecutionStatus::Succeeded);
    }
    let parked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM execution_events WHERE kind = 'parked' AND execution_id = ANY($1)",
    )
    .bind(&paced_ids[..])
    .fetch_one(&h.pool)
    .await
    .expect("parked events");
    assert_eq!(parked, 1, "the second paced execution parked once");
    let a_claimed = claimed_at(&h, a).await;
    // A is still in flight: B waits for the cooldown of the claim that
    // took A, which claiming the parked one back at 3 s did not end
    // early nor start over (that would put B's claim 9 s after A's).
    let b = h.enqueue(fast, json!({})).await;
    let b_after_a = (claimed_at(&h, b).await - a_claimed)
        .to_std()
        .expect("B after A");
    assert!(
        b_after_a >= Duration::from_secs(6) && b_after_a < Duration::from_millis(8_500),
        "B claimed {b_after_a:?} after A"
    );
    h.wait_final(a, Duration::from_secs(20)).await;
    shutdown.cancel();
    running.await.expect("worker task");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_worker_draining_a_backlog_claims_again_at_once_whatever_its_cooldown(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = slow_stub(Duration::from_secs(6), Duration::from_millis(50)).await;
    // The slow execution is claimed first and stays in flight, so the
    // worker is never idle while the 40 others drain through 7 slots.
    let slow = h
        .enqueue(
            h.connector(one_step(format!("{}/slow", stub.uri()))).await,
            json!({}),
        )
        .await;
    let c = h.connector(one_step(format!("{}/step", stub.uri()))).await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(h.enqueue(c, json!({})).await);
    }
    let mut config = test_worker_config("worker-backlog");
    config.claim_cooldown = Duration::from_secs(30);
    let shutdown = CancellationToken::new();
    let started = std::time::Instant::now();
    let running = tokio::spawn(worker(&h.pool, &h.keyring, config).run(shutdown.clone()));
    for id in ids {
        let e = h.wait_final(id, Duration::from_secs(15)).await;
        assert_eq!(e.status, ExecutionStatus::Succeeded);
    }
    let drained = started.elapsed();
    assert!(
        drained < Duration::from_secs(5),
        "the backlog took {drained:?}: a claim waited for the slow execution"
    );
    assert_eq!(
        h.wait_final(slow, Duration::from_secs(15)).await.status,
        ExecutionStatus::Succeeded
    );
    shutdown.cancel();
    running.await.expect("worker task");
}

/// Enqueues a never-sent execution due at `run_at`.
async fn queued_at(h: &Harness, c: (uuid::Uuid, i32), run_at: DateTime<Utc>) {
    let new = executions::NewExecution {
        run_at: Some(run_at),
        ..new_execution(c, json!({}))
    };
    enqueue_new(&h.pool, &new).await;
}

const GAUGE_EVERY: Duration = Duration::from_secs(5);

fn assert_gauge(got: (i64, f64), depth: i64, oldest: f64) {
    assert_eq!(got.0, depth, "depth in {got:?}");
    assert!(
        (got.1 - oldest).abs() < 1e-3,
        "oldest age in {got:?}, want {oldest}"
    );
}

/// Reads the queue gauges at `now` and checks them.
async fn assert_gauge_at(pool: &PgPool, now: DateTime<Utc>, depth: i64, oldest: f64) {
    let got = history::queue_depth(pool, now, GAUGE_EVERY)
        .await
        .expect("gauge");
    assert_gauge(got, depth, oldest);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_queue_gauge_is_counted_once_per_interval_for_every_reader(pool: PgPool) {
    let (h, c) = never_sent(pool).await;
    let t0 = Utc::now();
    let secs = chrono::Duration::seconds;
    assert_gauge_at(&h.pool, t0, 0, 0.0).await;
    for run_at in [t0 - secs(60), t0 - secs(30), t0 + secs(3600)] {
        queued_at(&h, c, run_at).await;
    }
    // Within the interval every reader gets the stored count (still none),
    // whatever was enqueued since.
    let within = t0 + secs(4);
    assert_gauge_at(&h.pool, within, 0, 0.0).await;
    // Due: counted again; only ready rows, the oldest aged at `now`.
    let due = t0 + secs(5);
    assert_gauge_at(&h.pool, due, 2, 65.0).await;
    queued_at(&h, c, t0 - secs(90)).await;
    // Read back: the stored count, the oldest's age growing with `now`.
    let later = due + secs(1);
    assert_gauge_at(&h.pool, later, 2, 66.0).await;
    let (measured, next): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("SELECT measured_at, next_at FROM queue_gauge")
            .fetch_one(&h.pool)
            .await
            .expect("gauge row");
    assert_eq!(measured, due.trunc_subsecs(6));
    assert!(
        next - measured >= secs(5),
        "next count at {next}, measured at {measured}"
    );
    assert_gauge_at(&h.pool, due + secs(5), 3, 100.0).await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_reader_never_waits_for_a_count_another_process_is_running(pool: PgPool) {
    let (h, c) = never_sent(pool).await;
    let t0 = Utc::now();
    queued_at(&h, c, t0 - chrono::Duration::seconds(10)).await;
    assert_gauge_at(&h.pool, t0, 1, 10.0).await;
    queued_at(&h, c, t0).await;
    // Another process holds the row while it counts.
    let mut refresher = h.pool.begin().await.expect("begin");
    sqlx::query("SELECT id FROM queue_gauge FOR UPDATE")
        .execute(&mut *refresher)
        .await
        .expect("lock");
    let due = t0 + chrono::Duration::seconds(60);
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        history::queue_depth(&h.pool, due, GAUGE_EVERY),
    )
    .await
    .expect("the reader waited for the refresher")
    .expect("gauge");
    assert_gauge(read, 1, 70.0);
    refresher.rollback().await.expect("rollback");
    assert_gauge_at(&h.pool, due, 2, 70.0).await;
}
