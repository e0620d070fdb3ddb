//! One tenant or one provider must not hurt another: values PostgreSQL
//! cannot store, group commits with one bad row, worker identities,
//! credential placement, and leases that can no longer be extended.

use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use conveyor_engine::http::{HttpConfig, StepClient};
use conveyor_engine::runner::{RunOutcome, Runner, RunnerConfig};
use conveyor_engine::state::{ExecutionStatus, StepOutcome};
use conveyor_engine::store::executions::{self, Commit, StepRow, Transition};
use conveyor_engine::store::group::commit_group;
use conveyor_engine::store::{self, Held};
use conveyor_tests::api::TestApi;
use conveyor_tests::{Harness, WS, test_worker_config};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_nul_in_a_response_is_stored_as_a_replacement_character(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/json"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            br#"{"note":"a\u0000b","k\u0000":1}"#.to_vec(),
            "application/json",
        ))
        .mount(&stub)
        .await;
    Mock::given(method("POST"))
        .and(path("/text"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(b"x\0y".to_vec(), "text/plain"))
        .mount(&stub)
        .await;
    let base = stub.uri();
    let c = h
        .connector(json!({"name": "nul", "steps": [
            {"name": "read", "method": "GET", "url": format!("{base}/json"),
             "extract": {"note": "$.note"}},
            {"name": "echo", "method": "POST", "url": format!("{base}/text"),
             "body": {"type": "json", "content": {"note": "<<steps.read.extract.note>>"}}}],
            "output": {"note": "<<steps.read.extract.note>>"}}))
        .await;
    let id = h.enqueue(c, json!({})).await;
    let e = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    assert_eq!(e.output, Some(json!({"note": "a\u{FFFD}b"})));
    let steps = h.steps(id).await;
    assert_eq!(steps.len(), 2);
    assert_eq!(
        steps[0].response_body,
        Some(json!({"note": "a\u{FFFD}b", "k\u{FFFD}": 1}))
    );
    assert_eq!(steps[0].extracted, Some(json!({"note": "a\u{FFFD}b"})));
    assert_eq!(steps[1].request["body"]["note"], "a\u{FFFD}b");
    assert_eq!(steps[1].response_body, Some(json!("x\u{FFFD}y")));
}

fn row(index: i32) -> StepRow {
    let now = Utc::now();
    StepRow {
        step_index: index,
        attempt: 1,
        page: None,
        item: None,
        step_name: "x".into(),
        outcome: StepOutcome::Succeeded,
        request: json!({"url": "https://api.example.com/x"}),
        response_status: Some(200),
        response_headers: None,
        response_body: Some(json!({"big": "body"})),
        extracted: None,
        error: None,
        worker_id: "worker-a".into(),
        started_at: now,
        finished_at: now,
        duration_ms: 1,
        request_bytes: 0,
        response_bytes: 0,
    }
}

/// `n` executions of a one-step connector, enqueued in order and then
/// all claimed by one worker: their ids in enqueue order, the claimed
/// rows, and the time of the claim.
async fn claimed_one_step_executions(
    h: &Harness,
    n: i64,
) -> (
    Vec<uuid::Uuid>,
    Vec<executions::Claimed>,
    chrono::DateTime<Utc>,
) {
    let c = h
        .connector(json!({"name": "one", "steps": [
            {"name": "x", "method": "GET", "url": "https://api.example.com/x"}]}))
        .await;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(h.enqueue(c, json!({ "n": i })).await);
    }
    let now = Utc::now();
    let claimed = executions::claim(
        &executions::ClaimPool::new(&h.pool),
        "worker-a",
        n,
        Duration::from_secs(30),
        now,
    )
    .await
    .expect("claim");
    assert_eq!(claimed.len(), ids.len());
    (ids, claimed, now)
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_row_postgres_refuses_fails_only_its_own_execution_in_a_group_commit(pool: PgPool) {
    let h = Harness::new(pool);
    let (ids, claimed, now) = claimed_one_step_executions(&h, 3).await;
    let commits: Vec<Commit> = claimed
        .iter()
        .map(|e| Commit {
            id: e.id,
            token: e.fencing_token,
            // A negative index breaks a CHECK constraint: PostgreSQL
            // refuses that row, and with it the one group statement.
            step: row(if e.id == ids[1] { -1 } else { 0 }),
            transition: Transition::Succeed {
                context: json!({"steps": {}}),
                output: json!({"ok": "\u{0}"}),
            },
        })
        .collect();
    let order: Vec<_> = claimed.iter().map(|e| e.id).collect();
    let held = Held::new(h.pool.clone());
    let results = commit_group(&held, commits, now).await;
    assert_eq!(results.len(), 3);
    for (id, result) in order.iter().zip(&results) {
        if *id == ids[1] {
            let err = result.as_ref().expect_err("the bad row fails");
            assert!(err.contains("execution_steps_index_non_negative"), "{err}");
        } else {
            assert_eq!(
                *result.as_ref().expect("committed"),
                Some(ExecutionStatus::Succeeded)
            );
        }
    }
    for id in [ids[0], ids[2]] {
        let e = h.execution(id).await;
        assert_eq!(e.status, ExecutionStatus::Succeeded);
        assert_eq!(e.output, Some(json!({"ok": "\u{FFFD}"})));
        assert_eq!(h.steps(id).await.len(), 1);
    }
    let bad = h.execution(ids[1]).await;
    assert_eq!(
        bad.status,
        ExecutionStatus::Running,
        "nothing was written for the bad one"
    );
    assert!(h.steps(ids[1]).await.is_empty());
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_api_refuses_a_nul_character_naming_the_field(pool: PgPool) {
    let api = TestApi::new(pool);
    let token = api.token("ws_nul", "alice");
    let connector = api
        .create_connector(
            &token,
            json!({"name": "n", "steps": [
                {"name": "x", "method": "GET", "url": "https://api.example.com/x"}]}),
        )
        .await;
    let reply = api
        .post(
            &format!("/api/v1/connectors/{connector}/execute"),
            &token,
            json!({"input": {"a": ["ok", "x\u{0}"]}}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(
        reply.json["error"]["details"]["errors"][0]["path"],
        "input.a[1]"
    );
    let reply = api
        .post(
            "/api/v1/connectors",
            &token,
            json!({"name": "bad\u{0}name", "steps": []}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(reply.json["error"]["details"]["errors"][0]["path"], "name");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn tenants_never_see_worker_host_names_or_process_ids(pool: PgPool) {
    let h = Harness::with_config(pool.clone(), test_worker_config("host-7.internal-pid-4242"));
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&stub)
        .await;
    let c = h
        .connector(json!({"name": "w", "steps": [
            {"name": "x", "method": "GET", "url": format!("{}/x", stub.uri())}]}))
        .await;
    let id = h.enqueue(c, json!({})).await;
    assert_eq!(
        h.run_until_final(id, Duration::from_secs(20)).await.status,
        ExecutionStatus::Succeeded
    );
    assert_eq!(h.steps(id).await[0].worker_id, "host-7.internal-pid-4242");

    let api = TestApi::new(pool);
    let token = api.token(WS, "alice");
    let one = api.get(&format!("/api/v1/executions/{id}"), &token).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    assert_eq!(one.json["steps"].as_array().map(Vec::len), Some(1));
    let list = api.get("/api/v1/executions", &token).await;
    let events = api
        .get(&format!("/api/v1/executions/{id}/events"), &token)
        .await;
    assert!(events.text.contains("claimed"), "{}", events.text);
    for reply in [&one, &list, &events] {
        assert!(!reply.text.contains("host-7"), "{}", reply.text);
        assert!(!reply.text.contains("pid-4242"), "{}", reply.text);
    }
    assert!(one.json.get("lease_owner").is_none());
    assert!(one.json["steps"][0].get("worker_id").is_none());
}

#[test]
fn credentials_and_untrusted_hosts_are_refused_where_they_do_not_belong() {
    let step = |extra: serde_json::Value| {
        let mut s = json!({"name": "x", "method": "POST", "url": "https://api.example.com/x"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            s[k] = v.clone();
        }
        json!({"name": "c", "steps": [s]})
    };
    let refused = [
        (
            {
                let mut c = step(json!({}));
                c["retry"] = json!({"max_delay_ms": u64::MAX, "initial_delay_ms": 1});
                c
            },
            "retry.max_delay_ms",
        ),
        (
            step(json!({"url": "https://api.example.com<<input.p>>"})),
            "steps[0].url",
        ),
        (
            step(json!({"url": "https://<<input.host>>/x"})),
            "steps[0].url",
        ),
        (step(json!({"url": "<<input.base>>/x"})), "steps[0].url"),
        (
            step(json!({"url": "https://<<credentials.c.user>>@api.example.com/x"})),
            "steps[0].url",
        ),
        (
            step(json!({"headers": {"X-Key": "Bearer <<credentials.c.token ~ ''>>"}})),
            "steps[0].headers.X-Key",
        ),
        (
            step(json!({"headers": {"X-Key": "<<'>>' ~ credentials.c.token | reverse>>"}})),
            "steps[0].headers.X-Key",
        ),
        (
            step(json!({"query": {"k": "<<credentials.c.token | reverse>>"}})),
            "steps[0].query.k",
        ),
        (
            step(
                json!({"body": {"type": "json", "content": {"a": "<<credentials.c.token[1:]>>"}}}),
            ),
            "steps[0].body.content.a",
        ),
        (
            step(json!({"body": {"type": "json", "content": {"<<credentials.c.token>>": 1}}})),
            "steps[0].body.content.<<credentials.c.token>>",
        ),
        (
            step(
                json!({"body": {"type": "form", "content": {"n": "<<credentials.c.pin | int>>"}}}),
            ),
            "steps[0].body.content.n",
        ),
        (
            step(
                json!({"body": {"type": "raw", "content_type": "text/plain", "content": "key=<<credentials.c.token | upper>>"}}),
            ),
            "steps[0].body.content",
        ),
        (
            {
                let mut c = step(json!({}));
                c["output"] = json!({"t": "<<credentials.c.token>>"});
                c
            },
            "output.t",
        ),
    ];
    for (definition, path) in refused {
        let errors = conveyor_engine::connector::parse_and_validate(&definition)
            .expect_err(&definition.to_string())
            .0;
        assert!(
            errors.iter().any(|e| e.path == path),
            "{definition}: {errors:?}"
        );
    }
    let accepted = [
        step(json!({"url": "<<settings.base_url>>/x/<<input.id>>", "query": {"q": "<<input.q>>"}})),
        step(json!({"url": "<<credentials.hook.url>>"})),
        step(
            json!({"url": "https://api.example.com/bot<<credentials.c.token>>/send",
                    "headers": {"Authorization": "Bearer <<credentials.c.token>>"},
                    "body": {"type": "raw", "content_type": "text/plain", "content": "key=<<credentials.c.token>>"}}),
        ),
        step(
            json!({"headers": {"X-Key": "<<credentials.c.token>>"}, "query": {"k": "<<credentials.c.key>>"},
                    "body": {"type": "json", "content": {"a": "<<credentials.c.token>>", "b": "<<input.b | upper>>"}}}),
        ),
    ];
    for definition in accepted {
        conveyor_engine::connector::parse_and_validate(&definition)
            .unwrap_or_else(|e| panic!("{definition}: {e}"));
    }
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_stored_definition_breaking_the_placement_rules_is_refused_at_send_time(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&stub)
        .await;
    // Saved before the rules existed: stored without validation.
    let connector: conveyor_engine::connector::Connector = serde_json::from_value(json!({
        "name": "old", "steps": [{"name": "x", "method": "GET",
            "url": format!("{}<<input.p>>", stub.uri())}]}))
    .expect("shape");
    let c = conveyor_tests::connector_create(&h.pool, &connector).await;
    let id = h.enqueue(c, json!({"p": "/x"})).await;
    let e = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    let steps = h.steps(id).await;
    let error = steps[0].error.as_ref().expect("step error");
    assert_eq!(error["kind"], "credential", "{error}");
    assert!(
        error["message"].as_str().unwrap_or("").contains("step.url"),
        "{error}"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_step_whose_lease_cannot_be_extended_is_aborted_before_the_lease_passes(pool: PgPool) {
    let h = Harness::new(pool.clone());
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(20)))
        .mount(&stub)
        .await;
    let c = h
        .connector(json!({"name": "slow", "steps": [
            {"name": "x", "method": "GET", "url": format!("{}/x", stub.uri())}]}))
        .await;
    h.enqueue(c, json!({})).await;
    let lease = Duration::from_secs(3);
    let claimed = executions::claim(
        &executions::ClaimPool::new(&pool),
        "worker-a",
        1,
        lease,
        Utc::now(),
    )
    .await
    .expect("claim")
    .remove(0);
    let client = StepClient::new(HttpConfig {
        allow_private_networks: true,
        ..HttpConfig::default()
    })
    .expect("client");
    let (runner, committer) = Runner::new(
        pool.clone(),
        client,
        h.keyring.clone(),
        RunnerConfig {
            worker_id: "worker-a".into(),
            lease,
            ..RunnerConfig::default()
        },
    );
    tokio::spawn(committer.run());
    let started = std::time::Instant::now();
    let run = tokio::spawn(async move { runner.run(claimed, &CancellationToken::new()).await });
    while stub
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the step was never sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The database goes away: every heartbeat fails from now on.
    pool.close().await;
    let outcome = tokio::time::timeout(Duration::from_secs(8), run)
        .await
        .expect("aborted long before the 20 s response")
        .expect("task")
        .expect("no database error: it stopped on its own");
    assert_eq!(outcome, RunOutcome::LeaseLost);
    assert!(
        started.elapsed() < lease,
        "stopped within the lease, after {:?}",
        started.elapsed()
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_workspace_cannot_hold_more_event_streams_than_its_cap(pool: PgPool) {
    use tower::ServiceExt;
    let api = TestApi::with_config(
        pool,
        conveyor_api::ApiConfig {
            max_streams_per_workspace: 1,
            ..conveyor_api::ApiConfig::default()
        },
    );
    let token = api.token("ws_streams", "alice");
    let other = api.token("ws_other", "bob");
    let connector = api
        .create_connector(
            &token,
            json!({"name": "s", "steps": [
                {"name": "x", "method": "GET", "url": "https://api.example.com/x"}]}),
        )
        .await;
    // Queued, never run here: its stream stays open.
    let id = api.execute(&token, &connector, json!({})).await;
    let other_connector = api
        .create_connector(
            &other,
            json!({"name": "s", "steps": [
                {"name": "x", "method": "GET", "url": "https://api.example.com/x"}]}),
        )
        .await;
    let other_id = api.execute(&other, &other_connector, json!({})).await;
    let open = |token: &str, id: &str| {
        axum::http::Request::builder()
            .uri(format!("/api/v1/executions/{id}/events"))
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::empty())
            .expect("request")
    };
    let first = api
        .router
        .clone()
        .oneshot(open(&token, &id))
        .await
        .expect("response");
    assert_eq!(first.status(), StatusCode::OK);
    let second = api
        .router
        .clone()
        .oneshot(open(&token, &id))
        .await
        .expect("response");
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    let elsewhere = api
        .router
        .clone()
        .oneshot(open(&other, &other_id))
        .await
        .expect("response");
    assert_eq!(
        elsewhere.status(),
        StatusCode::OK,
        "other workspaces are not affected"
    );
    drop(first);
    let again = api
        .router
        .clone()
        .oneshot(open(&token, &id))
        .await
        .expect("response");
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "a closed stream frees its slot"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_database_error_reading_the_definition_never_fails_the_execution(pool: PgPool) {
    let h = Harness::new(pool.clone());
    let c = h
        .connector(json!({"name": "d", "steps": [
            {"name": "x", "method": "GET", "url": "https://api.example.com/x"}]}))
        .await;
    let id = h.enqueue(c, json!({})).await;
    // The definition query fails (as it does while the database restarts
    // or the pool times out); finishing the execution would still work.
    sqlx::query("ALTER TABLE connector_versions RENAME TO connector_versions_away")
        .execute(&pool)
        .await
        .expect("rename");
    let outcome = h.worker.run_next().await;
    assert!(
        outcome.is_err(),
        "the database error is the run's: {outcome:?}"
    );
    sqlx::query("ALTER TABLE connector_versions_away RENAME TO connector_versions")
        .execute(&pool)
        .await
        .expect("rename back");
    let e = h.execution(id).await;
    assert_eq!(
        e.status,
        ExecutionStatus::Running,
        "not failed: {:?}",
        e.error
    );
    assert_eq!(e.error, None);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn another_workspace_cannot_watch_an_execution(pool: PgPool) {
    let h = Harness::new(pool.clone());
    let connector = h
        .connector(json!({"name": "c", "steps": [
            {"name": "s", "method": "GET", "url": "https://api.example.com/x"}]}))
        .await;
    let id = h.enqueue(connector, json!({})).await;
    let until = Utc::now() + chrono::Duration::minutes(1);
    let watchers = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT workspace_id FROM execution_watchers WHERE execution_id = $1",
        )
        .bind(id)
        .fetch_all(&pool)
        .await
        .expect("watchers")
    };

    conveyor_engine::store::history::watch(&pool, "ws_other", id, uuid::Uuid::now_v7(), until)
        .await
        .expect("watch");
    assert!(
        watchers().await.is_empty(),
        "a watch from another workspace makes its changes notify"
    );
    conveyor_engine::store::history::watch(&pool, WS, id, uuid::Uuid::now_v7(), until)
        .await
        .expect("watch");
    assert_eq!(watchers().await, [WS]);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_group_commit_on_a_lost_session_fails_every_commit_and_the_next_one_reconnects(
    pool: PgPool,
) {
    let h = Harness::new(pool);
    let (ids, claimed, now) = claimed_one_step_executions(&h, 2).await;
    let commits = || -> Vec<Commit> {
        claimed
            .iter()
            .map(|e| Commit {
                id: e.id,
                token: e.fencing_token,
                step: row(0),
                transition: Transition::Succeed {
                    context: json!({"steps": {}}),
                    output: json!({"ok": true}),
                },
            })
            .collect()
    };
    let held = Held::new(store::own_connection(&h.pool, "commits"));
    let conn = held.acquire().await.expect("connect");
    conn.finish(None);
    assert_eq!(conveyor_tests::end_sessions(&h.pool, "commits").await, 1);
    // PostgreSQL ending the session is no row's fault: every commit gets
    // its error, none is tried again alone on the dead connection.
    let results = commit_group(&held, commits(), now).await;
    assert_eq!(results.len(), 2);
    for result in &results {
        let err = result.as_ref().expect_err("the session is gone");
        assert!(err.contains("terminating connection"), "{err}");
    }
    for id in ids {
        assert_eq!(h.execution(id).await.status, ExecutionStatus::Running);
    }
    // The broken connection was given back: the next group gets a new one.
    let results = commit_group(&held, commits(), now).await;
    for result in results {
        assert_eq!(result.expect("committed"), Some(ExecutionStatus::Succeeded));
    }
}
