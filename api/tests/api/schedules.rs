//! Cron schedules through the API (create, read, update, pause, resume,
//! delete, field-naming validation), and the scheduler pass stepped with
//! chosen clocks: overlap policies, catch-up, and what each execution says
//! started it.

use axum::http::{Method, StatusCode};
use chrono::{DateTime, Duration, Utc};
use conveyor_engine::start::Starter;
use conveyor_engine::store::schedules;
use conveyor_tests::api::TestApi;
use serde_json::{Value, json};
use sqlx::PgPool;

const CONNECTOR: &str = r#"{"name": "Ping", "input_schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
    "steps": [{"name": "p", "method": "GET", "url": "https://api.example.com/p"}]}"#;

async fn setup(pool: PgPool) -> (TestApi, String, String) {
    let api = TestApi::new(pool);
    let token = api.token("ws_sched", "u");
    let connector = api
        .create_connector(&token, serde_json::from_str(CONNECTOR).expect("json"))
        .await;
    (api, token, connector)
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .with_timezone(&Utc)
}

/// Runs one scheduler pass as if the clock said `now`.
async fn pass(api: &TestApi, starter: &Starter, now: DateTime<Utc>) -> usize {
    schedules::fire_due(&api.pool, starter, now, 100)
        .await
        .expect("pass")
}

/// The schedule's ticks, oldest first: (tick, outcome, execution id).
async fn ticks(api: &TestApi, token: &str, id: &str) -> Vec<(DateTime<Utc>, String, Value)> {
    let reply = api.get(&format!("/api/v1/schedules/{id}"), token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let mut out: Vec<_> = reply.json["recent_ticks"]
        .as_array()
        .expect("recent_ticks")
        .iter()
        .map(|t| {
            (
                time(&t["tick_at"]),
                t["outcome"].as_str().unwrap_or("").to_owned(),
                t["execution_id"].clone(),
            )
        })
        .collect();
    out.reverse();
    out
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_schedule_is_created_read_updated_paused_resumed_and_deleted(pool: PgPool) {
    let (api, token, connector) = setup(pool).await;
    let path = format!("/api/v1/connectors/{connector}/schedules");
    let created = api
        .post(
            &path,
            &token,
            json!({"cron": "*/2 * * * * *", "timezone": "Europe/Paris", "input": {"n": 1}, "overlap": "skip"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.id();
    let times: Vec<DateTime<Utc>> = created.json["next_fire_times"]
        .as_array()
        .expect("next_fire_times")
        .iter()
        .map(time)
        .collect();
    assert_eq!(times.len(), 5);
    assert!(times[0] > Utc::now() - Duration::seconds(1));
    for w in times.windows(2) {
        assert_eq!(w[1] - w[0], Duration::seconds(2), "{times:?}");
    }

    let listed = api.get(&path, &token).await;
    assert_eq!(listed.items().len(), 1);
    assert_eq!(listed.items()[0]["id"], json!(id));

    let patched = api
        .call(
            Method::PATCH,
            &format!("/api/v1/schedules/{id}"),
            Some(&token),
            Some(json!({"cron": "@daily", "timezone": "Asia/Tokyo", "overlap": "queue_one"})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.json["overlap"], "queue_one");
    let next = time(&patched.json["next_fire_times"][0]);
    assert_eq!(
        next.format("%H:%M:%S").to_string(),
        "15:00:00",
        "midnight in Tokyo"
    );

    let paused = api
        .post(&format!("/api/v1/schedules/{id}/pause"), &token, json!({}))
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text);
    assert_eq!(paused.json["paused"], true);
    assert_eq!(paused.json["next_fire_times"], json!([]));
    let resumed = api
        .post(&format!("/api/v1/schedules/{id}/resume"), &token, json!({}))
        .await;
    assert_eq!(resumed.json["paused"], false);
    assert_eq!(time(&resumed.json["next_fire_times"][0]), next);

    let other = api.token("ws_other", "u");
    let hidden = api.get(&format!("/api/v1/schedules/{id}"), &other).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
    let deleted = api
        .call(
            Method::DELETE,
            &format!("/api/v1/schedules/{id}"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NOT_FOUND);
    let deleted = api
        .call(
            Method::DELETE,
            &format!("/api/v1/schedules/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = api.get(&format!("/api/v1/schedules/{id}"), &token).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn invalid_schedules_are_refused_naming_the_field(pool: PgPool) {
    let (api, token, connector) = setup(pool).await;
    let path = format!("/api/v1/connectors/{connector}/schedules");
    for (body, field) in [
        (json!({"cron": "* * *"}), "cron"),
        (json!({"cron": "99 * * * *"}), "cron"),
        (json!({"cron": "@fortnightly"}), "cron"),
        (
            json!({"cron": "* * * * *", "timezone": "Europe/Atlantis"}),
            "timezone",
        ),
        (
            json!({"cron": "* * * * *", "overlap": "sometimes"}),
            "overlap",
        ),
        (
            json!({"cron": "* * * * *", "input": {"n": "one"}}),
            "input.n",
        ),
        (json!({"cron": "* * * * *", "input": [1]}), "input"),
        (
            json!({"cron": "* * * * *", "end_at": "2001-01-01T00:00:00Z"}),
            "end_at",
        ),
        (json!({"timezone": "UTC"}), "cron"),
    ] {
        let reply = api.post(&path, &token, body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            reply.text
        );
        let paths: Vec<&str> = reply.json["error"]["details"]["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["path"].as_str())
            .collect();
        // A missing field is named by the message (serde reports it at
        // the object holding it).
        let message = reply.json["error"]["message"].as_str().unwrap_or("");
        assert!(
            paths.iter().any(|p| p.starts_with(field)) || message.contains(&format!("`{field}`")),
            "{body}: {paths:?} {message}"
        );
    }
    let unknown = api
        .post(
            "/api/v1/connectors/0193a4a8-7c1e-7d2a-9b51-2f4f0b1c9e77/schedules",
            &token,
            json!({"cron": "* * * * *"}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

/// Creates an hourly schedule with `overlap`; its id and first tick.
async fn hourly(
    api: &TestApi,
    token: &str,
    connector: &str,
    overlap: &str,
) -> (String, DateTime<Utc>) {
    let created = api
        .post(
            &format!("/api/v1/connectors/{connector}/schedules"),
            token,
            json!({"cron": "0 * * * *", "input": {"n": 7}, "overlap": overlap}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    (created.id(), time(&created.json["next_fire_times"][0]))
}

async fn finish_all(api: &TestApi) {
    sqlx::query("UPDATE connector_executions SET status = 'succeeded', finished_at = now()")
        .execute(&api.pool)
        .await
        .expect("finish");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn skip_drops_a_tick_while_the_previous_run_is_active(pool: PgPool) {
    let (api, token, connector) = setup(pool).await;
    let starter = Starter::new();
    let (id, t0) = hourly(&api, &token, &connector, "skip").await;
    let hour = Duration::hours(1);
    let second = Duration::seconds(1);
    assert_eq!(pass(&api, &starter, t0 - second).await, 0, "not due yet");
    assert_eq!(pass(&api, &starter, t0 + second).await, 1);
    assert_eq!(
        pass(&api, &starter, t0 + second).await,
        0,
        "a tick fires once"
    );
    assert_eq!(pass(&api, &starter, t0 + hour + second).await, 0, "skipped");
    finish_all(&api).await;
    assert_eq!(pass(&api, &starter, t0 + hour * 2 + second).await, 1);
    let outcomes: Vec<(DateTime<Utc>, String)> = ticks(&api, &token, &id)
        .await
        .into_iter()
        .map(|(t, o, _)| (t, o))
        .collect();
    assert_eq!(
        outcomes,
        [
            (t0, "started".to_owned()),
            (t0 + hour, "skipped".to_owned()),
            (t0 + hour * 2, "started".to_owned()),
        ]
    );
    let execution = &ticks(&api, &token, &id).await[0].2;
    let shown = api
        .get(
            &format!("/api/v1/executions/{}", execution.as_str().expect("id")),
            &token,
        )
        .await;
    assert_eq!(shown.json["started_by"], json!(format!("schedule:{id}")));
    assert_eq!(shown.json["input"], json!({"n": 7}));
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn queue_one_holds_the_latest_tick_until_the_previous_run_ends(pool: PgPool) {
    let (api, token, connector) = setup(pool).await;
    let starter = Starter::new();
    let (id, t0) = hourly(&api, &token, &connector, "queue_one").await;
    let hour = Duration::hours(1);
    let second = Duration::seconds(1);
    assert_eq!(pass(&api, &starter, t0 + second).await, 1);
    assert_eq!(pass(&api, &starter, t0 + hour + second).await, 0);
    assert_eq!(pass(&api, &starter, t0 + hour * 2 + second).await, 0);
    let outcomes: Vec<String> = ticks(&api, &token, &id)
        .await
        .into_iter()
        .map(|t| t.1)
        .collect();
    assert_eq!(
        outcomes,
        ["started", "skipped", "queued"],
        "only the latest waits"
    );
    finish_all(&api).await;
    assert_eq!(pass(&api, &starter, t0 + hour * 2 + second * 2).await, 1);
    let last = ticks(&api, &token, &id).await.pop().expect("a tick");
    assert_eq!((last.0, last.1.as_str()), (t0 + hour * 2, "started"));
    assert!(last.2.is_string());
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn allow_overlaps_and_missed_ticks_fire_once_for_the_latest(pool: PgPool) {
    let (api, token, connector) = setup(pool).await;
    let starter = Starter::new();
    let (id, t0) = hourly(&api, &token, &connector, "allow").await;
    let hour = Duration::hours(1);
    let second = Duration::seconds(1);
    assert_eq!(pass(&api, &starter, t0 + second).await, 1);
    assert_eq!(
        pass(&api, &starter, t0 + hour + second).await,
        1,
        "overlap allowed"
    );
    // Every process was down for five hours: one catch-up run, for the
    // latest missed tick.
    assert_eq!(
        pass(&api, &starter, t0 + hour * 6 + Duration::minutes(30)).await,
        1
    );
    assert_eq!(
        pass(&api, &starter, t0 + hour * 6 + Duration::minutes(31)).await,
        0
    );
    let at: Vec<DateTime<Utc>> = ticks(&api, &token, &id)
        .await
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(at, [t0, t0 + hour, t0 + hour * 6]);
    let next: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT next_fire_at FROM connector_schedules")
            .fetch_one(&api.pool)
            .await
            .expect("next");
    assert_eq!(next, Some(t0 + hour * 7));
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_tick_whose_input_no_longer_matches_fails_visibly_and_starts_nothing(pool: PgPool) {
    let (api, token, connector) = setup(pool).await;
    let starter = Starter::new();
    let (id, t0) = hourly(&api, &token, &connector, "allow").await;
    let mut definition: Value = serde_json::from_str(CONNECTOR).expect("json");
    definition["input_schema"]["properties"]["n"] = json!({"type": "string"});
    let updated = api
        .call(
            Method::PUT,
            &format!("/api/v1/connectors/{connector}"),
            Some(&token),
            Some(definition),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    assert_eq!(pass(&api, &starter, t0 + Duration::seconds(1)).await, 0);
    let reply = api.get(&format!("/api/v1/schedules/{id}"), &token).await;
    let tick = &reply.json["recent_ticks"][0];
    assert_eq!(tick["outcome"], "failed");
    assert!(
        tick["error"]
            .as_str()
            .is_some_and(|e| e.contains("input.n")),
        "{tick}"
    );
    let executions: i64 = sqlx::query_scalar("SELECT count(*) FROM connector_executions")
        .fetch_one(&api.pool)
        .await
        .expect("count");
    assert_eq!(executions, 0);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_cron_padded_with_spaces_is_stored_trimmed(pool: PgPool) {
    let (api, token, connector) = setup(pool).await;
    let padded = format!("0 9 * * *{}", " ".repeat(200));
    let created = api
        .post(
            &format!("/api/v1/connectors/{connector}/schedules"),
            &token,
            json!({"cron": padded}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.json["cron"], "0 9 * * *");
    let id = created.id();
    let patched = api
        .call(
            Method::PATCH,
            &format!("/api/v1/schedules/{id}"),
            Some(&token),
            Some(json!({"cron": format!("  @hourly{}", " ".repeat(300))})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.json["cron"], "@hourly");
    let long = format!("0 9 * * {}", "1,".repeat(100));
    let refused = api
        .post(
            &format!("/api/v1/connectors/{connector}/schedules"),
            &token,
            json!({"cron": long}),
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    assert_eq!(
        refused.json["error"]["details"]["errors"][0]["path"],
        "cron"
    );
}

/// Creates a schedule from `body`; its id and first tick.
async fn schedule(
    api: &TestApi,
    token: &str,
    connector: &str,
    body: Value,
) -> (String, DateTime<Utc>) {
    let created = api
        .post(
            &format!("/api/v1/connectors/{connector}/schedules"),
            token,
            body,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    (created.id(), time(&created.json["next_fire_times"][0]))
}

/// How many executions each workspace has: `(workspace, count)`, by name.
async fn executions_by_workspace(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT workspace_id, count(*) FROM connector_executions GROUP BY 1 ORDER BY 1")
        .fetch_all(pool)
        .await
        .expect("executions")
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn held_ticks_that_cannot_start_do_not_crowd_out_one_that_can(pool: PgPool) {
    let (api, token, connector) = setup(pool).await;
    let other = api.token("ws_other", "u");
    let other_connector = api
        .create_connector(&other, serde_json::from_str(CONNECTOR).expect("json"))
        .await;
    let starter = Starter::new();
    let hour = Duration::hours(1);
    let second = Duration::seconds(1);
    let body = json!({"cron": "0 * * * *", "input": {"n": 1}, "overlap": "queue_one"});
    let mut t0 = None;
    for _ in 0..3 {
        t0 = Some(schedule(&api, &token, &connector, body.clone()).await.1);
    }
    let t0 = t0.expect("a first tick");
    // The other workspace's schedule ends after its second tick, so that
    // tick, once held, is all it has left (`next_fire_at` null).
    let mut ending = body.clone();
    ending["end_at"] = json!(t0 + hour + Duration::minutes(30));
    let (ended, _) = schedule(&api, &other, &other_connector, ending).await;
    assert_eq!(pass(&api, &starter, t0 + second).await, 4);
    assert_eq!(
        pass(&api, &starter, t0 + hour + second).await,
        0,
        "all held"
    );
    sqlx::query(
        "UPDATE connector_executions SET status = 'succeeded', finished_at = now()
         WHERE workspace_id = 'ws_other'",
    )
    .execute(&api.pool)
    .await
    .expect("finish");
    let before: Vec<(String, DateTime<Utc>)> =
        sqlx::query_as("SELECT id::text, updated_at FROM connector_schedules ORDER BY id")
            .fetch_all(&api.pool)
            .await
            .expect("schedules");
    // A pass with room for three: the three held ticks whose previous run
    // is still active can do nothing, so the one that can start is taken.
    let started = schedules::fire_due(&api.pool, &starter, t0 + hour + second * 2, 3)
        .await
        .expect("pass");
    assert_eq!(started, 1);
    let last = ticks(&api, &other, &ended).await.pop().expect("a tick");
    assert_eq!((last.0, last.1.as_str()), (t0 + hour, "started"));
    let after: Vec<(String, DateTime<Utc>)> =
        sqlx::query_as("SELECT id::text, updated_at FROM connector_schedules ORDER BY id")
            .fetch_all(&api.pool)
            .await
            .expect("schedules");
    let unchanged = before.iter().filter(|b| after.contains(b)).count();
    assert_eq!(
        unchanged, 3,
        "schedules with nothing to do are not rewritten"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_pass_takes_every_workspace_s_due_ticks_in_turn(pool: PgPool) {
    let (api, token, connector) = setup(pool).await;
    let other = api.token("ws_other", "u");
    let other_connector = api
        .create_connector(&other, serde_json::from_str(CONNECTOR).expect("json"))
        .await;
    let starter = Starter::new();
    // Three hourly schedules at :00:00 in one workspace, one at :00:05 in
    // another: a pass with room for two takes one of each.
    for _ in 0..3 {
        schedule(&api, &token, &connector, json!({"cron": "0 0 * * * *"})).await;
    }
    let (_, later) = schedule(
        &api,
        &other,
        &other_connector,
        json!({"cron": "5 0 * * * *"}),
    )
    .await;
    let started = schedules::fire_due(&api.pool, &starter, later + Duration::seconds(1), 2)
        .await
        .expect("pass");
    assert_eq!(started, 2);
    assert_eq!(
        executions_by_workspace(&api.pool).await,
        [("ws_other".to_owned(), 1), ("ws_sched".to_owned(), 1)]
    );
    assert_eq!(pass(&api, &starter, later + Duration::seconds(2)).await, 2);
}

/// The stored `next_fire_at` of schedule `id`.
async fn next_fire_at(pool: &PgPool, id: &str) -> Option<DateTime<Utc>> {
    sqlx::query_scalar("SELECT next_fire_at FROM connector_schedules WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("schedule")
}

/// Makes `tick` the schedule's due tick, as if the scheduler had not yet
/// passed since it came.
async fn due_at(pool: &PgPool, id: &str, tick: DateTime<Utc>) {
    sqlx::query("UPDATE connector_schedules SET next_fire_at = $2 WHERE id = $1::uuid")
        .bind(id)
        .bind(tick)
        .execute(pool)
        .await
        .expect("due");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn an_edit_keeps_a_due_tick_and_a_resume_continues_from_now(pool: PgPool) {
    let (api, token, connector) = setup(pool).await;
    let starter = Starter::new();
    let (id, t0) = hourly(&api, &token, &connector, "allow").await;
    let hour = Duration::hours(1);
    let at = format!("/api/v1/schedules/{id}");
    let patch = |body: Value| api.call(Method::PATCH, &at, Some(&token), Some(body));
    let due = t0 - hour;
    due_at(&api.pool, &id, due).await;
    for body in [
        json!({"input": {"n": 8}}),
        json!({"overlap": "skip"}),
        json!({"end_at": t0 + hour * 5}),
        json!({"timezone": "UTC", "paused": false}),
    ] {
        let reply = patch(body.clone()).await;
        assert_eq!(reply.status, StatusCode::OK, "{body}: {}", reply.text);
        assert_eq!(time(&reply.json["next_fire_at"]), due, "{body}");
    }
    let resumed = api.post(&format!("{at}/resume"), &token, json!({})).await;
    assert_eq!(
        time(&resumed.json["next_fire_at"]),
        due,
        "it was not paused"
    );
    assert_eq!(
        pass(&api, &starter, Utc::now()).await,
        1,
        "the due tick fires"
    );
    let fired = ticks(&api, &token, &id).await;
    assert_eq!((fired[0].0, fired[0].1.as_str()), (due, "started"));
    let shown = api
        .get(
            &format!("/api/v1/executions/{}", fired[0].2.as_str().expect("id")),
            &token,
        )
        .await;
    assert_eq!(shown.json["input"], json!({"n": 8}), "with the new input");

    // Paused, nothing fires, and an edit keeps the due tick; the resume
    // continues from now without replaying it.
    due_at(&api.pool, &id, due - hour).await;
    let paused = api.post(&format!("{at}/pause"), &token, json!({})).await;
    assert_eq!(time(&paused.json["next_fire_at"]), due - hour);
    assert_eq!(pass(&api, &starter, Utc::now()).await, 0);
    let edited = patch(json!({"input": {"n": 9}})).await;
    assert_eq!(time(&edited.json["next_fire_at"]), due - hour);
    let resumed = api.post(&format!("{at}/resume"), &token, json!({})).await;
    assert_eq!(time(&resumed.json["next_fire_at"]), t0);
    assert_eq!(pass(&api, &starter, Utc::now()).await, 0);

    // A new expression starts from now.
    due_at(&api.pool, &id, due - hour).await;
    let changed = patch(json!({"cron": "0 */2 * * *"})).await;
    assert!(time(&changed.json["next_fire_at"]) > Utc::now());
    let next = time(&changed.json["next_fire_at"]);
    assert_eq!(next_fire_at(&api.pool, &id).await, Some(next));
    // An end before the next tick ends the schedule.
    let ended = patch(json!({"end_at": next - Duration::seconds(1)})).await;
    assert_eq!(ended.status, StatusCode::OK, "{}", ended.text);
    assert_eq!(ended.json["next_fire_at"], Value::Null);
}
