//! `for_each` steps run through the queue and the runner against loopback
//! stubs: each item is sent with its value and position, the fields are
//! collected in item order, every item is a stored step row with its own
//! Idempotency-Key, a failed item is retried by a later claim at that item
//! (the items before it are not sent again), an item that fails after its
//! retries fails the step (or, with `on_error: continue`, leaves a null in
//! the collected fields while the others keep theirs), items over
//! `max_items` fail it unsent, and with `concurrency` each item still takes
//! its own concurrency slot and rate-limit send.

use std::collections::BTreeSet;
use std::time::Duration;

use conveyor_engine::state::ExecutionStatus;
use conveyor_tests::Harness;
use conveyor_tests::overlap::Overlap;
use serde_json::{Value, json};
use sqlx::PgPool;
use wiremock::matchers::{body_json, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const WAIT: Duration = Duration::from_secs(20);

/// `step#attempt iN outcome` of every stored row.
async fn rows(h: &Harness, id: uuid::Uuid) -> Vec<String> {
    h.steps(id)
        .await
        .iter()
        .map(|s| {
            let item = s.item.map(|i| format!(" i{i}")).unwrap_or_default();
            format!("{}#{}{item} {}", s.step_name, s.attempt, s.outcome)
        })
        .collect()
}

/// The JSON body of a request.
fn body(r: &Request) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

/// Lists contacts, tags each one, then posts a summary of the tags.
fn connector(base: &str, max_items: u32) -> Value {
    json!({
        "name": "Tag every contact",
        "retry": {"max_attempts": 2, "initial_delay_ms": 10, "max_delay_ms": 20},
        "steps": [
            {"name": "list", "method": "GET", "url": format!("{base}/contacts"),
             "extract": {"contacts": "$.results"}},
            {"name": "tag", "method": "POST", "url": format!("{base}/contacts/<<item.id>>/tags"),
             "for_each": {"items": "<<steps.list.extract.contacts>>", "max_items": max_items},
             "body": {"type": "json", "content": {"email": "<<item.email>>", "position": "<<index>>"}},
             "extract": {"tag": "$.tag", "note": "$.note"}},
            {"name": "report", "method": "POST", "url": format!("{base}/report"),
             "body": {"type": "json", "content": {"tags": "<<steps.tag.extract.tag>>"}}}
        ],
        "output": {"tags": "<<steps.tag.extract.tag>>", "notes": "<<steps.tag.extract.note>>",
                   "summary": "<<steps.tag.for_each>>"}
    })
}

/// Item 2 (`c2`) fails with a 500 every time.
async fn fail_c2(stub: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/contacts/c2/tags"))
        .respond_with(ResponseTemplate::new(500))
        .mount(stub)
        .await;
}

/// Three contacts; contact `c<k>` is tagged `t<k>`, and only `c2` has a
/// note.
async fn stub_three(stub: &MockServer) {
    let contacts: Vec<Value> = (1..=3)
        .map(|k| json!({"id": format!("c{k}"), "email": format!("u{k}@example.com")}))
        .collect();
    Mock::given(method("GET"))
        .and(path("/contacts"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"results": contacts})))
        .mount(stub)
        .await;
    for k in 1..=3 {
        let mut answer = json!({"tag": format!("t{k}")});
        if k == 2 {
            answer["note"] = json!("vip");
        }
        Mock::given(method("POST"))
            .and(path(format!("/contacts/c{k}/tags")))
            .respond_with(ResponseTemplate::new(200).set_body_json(answer))
            .mount(stub)
            .await;
    }
    Mock::given(method("POST"))
        .and(path("/report"))
        .and(body_json(json!({"tags": ["t1", "t2", "t3"]})))
        .respond_with(ResponseTemplate::new(200))
        .mount(stub)
        .await;
}

fn tag_requests(received: &[Request]) -> Vec<(String, Value)> {
    received
        .iter()
        .filter(|r| r.url.path().ends_with("/tags"))
        .map(|r| (r.url.path().to_owned(), body(r)))
        .collect()
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn each_item_is_sent_once_with_its_value_and_the_fields_are_collected(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    stub_three(&stub).await;
    let c = h.connector(connector(&stub.uri(), 10)).await;
    let id = h.enqueue(c, json!({})).await;

    let e = h.run_until_final(id, WAIT).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    let output = e.output.expect("output");
    assert_eq!(output["tags"], json!(["t1", "t2", "t3"]));
    assert_eq!(output["notes"], json!([null, "vip", null]));
    assert_eq!(output["summary"], json!({"items": 3, "failed": []}));
    assert_eq!(
        rows(&h, id).await,
        [
            "list#1 succeeded",
            "tag#1 i1 succeeded",
            "tag#1 i2 succeeded",
            "tag#1 i3 succeeded",
            "report#1 succeeded",
        ]
    );
    let received = stub.received_requests().await.expect("recording");
    let sent: Vec<(String, Value)> = (1..=3)
        .map(|k| {
            (
                format!("/contacts/c{k}/tags"),
                json!({"email": format!("u{k}@example.com"), "position": k - 1}),
            )
        })
        .collect();
    assert_eq!(tag_requests(&received), sent);
    let keys: BTreeSet<String> = received
        .iter()
        .filter(|r| r.url.path().ends_with("/tags"))
        .filter_map(|r| r.headers.get("idempotency-key"))
        .map(|k| k.to_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(keys.len(), 3, "each item has its own idempotency key");
    let reported = received
        .iter()
        .filter(|r| r.url.path() == "/report")
        .count();
    assert_eq!(reported, 1, "the later step sees every tag");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_failed_item_is_retried_at_that_item_without_resending_earlier_ones(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    // Item 2 fails once; the retry is a new claim that must resume there.
    Mock::given(method("POST"))
        .and(path("/contacts/c2/tags"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&stub)
        .await;
    stub_three(&stub).await;
    let c = h.connector(connector(&stub.uri(), 10)).await;
    let id = h.enqueue(c, json!({})).await;

    let e = h.run_until_final(id, WAIT).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    assert_eq!(e.output.expect("output")["tags"], json!(["t1", "t2", "t3"]));
    assert_eq!(
        rows(&h, id).await,
        [
            "list#1 succeeded",
            "tag#1 i1 succeeded",
            "tag#1 i2 retry_scheduled",
            "tag#2 i2 succeeded",
            "tag#1 i3 succeeded",
            "report#1 succeeded",
        ]
    );
    let received = stub.received_requests().await.expect("recording");
    let paths: Vec<String> = tag_requests(&received)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        paths,
        [
            "/contacts/c1/tags",
            "/contacts/c2/tags",
            "/contacts/c2/tags",
            "/contacts/c3/tags"
        ],
        "item 1 is not sent again"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn an_item_failing_after_its_retries_fails_the_step_and_stops_the_loop(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    fail_c2(&stub).await;
    stub_three(&stub).await;
    let c = h.connector(connector(&stub.uri(), 10)).await;
    let id = h.enqueue(c, json!({})).await;

    let e = h.run_until_final(id, WAIT).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    let error = e.error.expect("error");
    assert_eq!(error["step"], "tag", "{error}");
    assert_eq!(
        rows(&h, id).await,
        [
            "list#1 succeeded",
            "tag#1 i1 succeeded",
            "tag#1 i2 retry_scheduled",
            "tag#2 i2 failed",
        ]
    );
    let received = stub.received_requests().await.expect("recording");
    let third = tag_requests(&received)
        .iter()
        .filter(|(p, _)| p == "/contacts/c3/tags")
        .count();
    assert_eq!(third, 0, "no item after the failed one is sent");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn more_items_than_max_items_fail_the_step_before_any_is_sent(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    stub_three(&stub).await;
    let c = h.connector(connector(&stub.uri(), 2)).await;
    let id = h.enqueue(c, json!({})).await;

    let e = h.run_until_final(id, WAIT).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    let error = e.error.expect("error");
    assert_eq!(error["kind"], "for_each", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("3 items, over max_items (2)"),
        "{error}"
    );
    let received = stub.received_requests().await.expect("recording");
    assert_eq!(tag_requests(&received), Vec::new(), "no item is sent");
    assert_eq!(
        rows(&h, id).await,
        ["list#1 succeeded", "tag#1 failed"],
        "the refusal is a stored step row"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn no_items_send_nothing_and_collect_empty_arrays(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/contacts"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"results": []})))
        .mount(&stub)
        .await;
    Mock::given(method("POST"))
        .and(path("/report"))
        .and(body_json(json!({"tags": []})))
        .respond_with(ResponseTemplate::new(200))
        .mount(&stub)
        .await;
    let c = h.connector(connector(&stub.uri(), 10)).await;
    let id = h.enqueue(c, json!({})).await;

    let e = h.run_until_final(id, WAIT).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    let output = e.output.expect("output");
    assert_eq!(output["tags"], json!([]));
    assert_eq!(output["summary"], json!({"items": 0, "failed": []}));
    let received = stub.received_requests().await.expect("recording");
    assert_eq!(tag_requests(&received), Vec::new());
    assert_eq!(received.len(), 2, "list and report only");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn on_error_continue_keeps_the_fields_of_the_items_that_succeeded(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    fail_c2(&stub).await;
    Mock::given(method("POST"))
        .and(path("/report"))
        .and(body_json(json!({"tags": ["t1", null, "t3"]})))
        .respond_with(ResponseTemplate::new(200))
        .mount(&stub)
        .await;
    stub_three(&stub).await;
    let mut definition = connector(&stub.uri(), 10);
    definition["steps"][1]["on_error"] = json!("continue");
    let c = h.connector(definition).await;
    let id = h.enqueue(c, json!({})).await;

    let e = h.run_until_final(id, WAIT).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    let output = e.output.expect("output");
    assert_eq!(output["tags"], json!(["t1", null, "t3"]));
    assert_eq!(output["notes"], json!([null, null, null]));
    assert_eq!(output["summary"], json!({"items": 3, "failed": [1]}));
    let entry: Value = sqlx::query_scalar(
        "SELECT context->'steps'->'tag' FROM connector_executions WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&h.pool)
    .await
    .expect("context");
    assert_eq!(entry["error"]["step"], "tag", "{entry}");
    assert_eq!(
        entry["error"]["status"], 500,
        "the first failed item's error: {entry}"
    );
    assert_eq!(
        rows(&h, id).await,
        [
            "list#1 succeeded",
            "tag#1 i1 succeeded",
            "tag#1 i2 retry_scheduled",
            "tag#2 i2 continued",
            "tag#1 i3 succeeded",
            "report#1 succeeded",
        ],
        "the item after the failed one is still sent"
    );
    let steps = h.steps(id).await;
    let failed = steps
        .iter()
        .find(|s| s.item == Some(2) && s.attempt == 2)
        .expect("item 2's last row");
    assert_eq!(failed.response_status, Some(500));
    let last = steps
        .iter()
        .rfind(|s| s.step_name == "tag")
        .expect("a tag row");
    assert_eq!(
        last.extracted.clone(),
        Some(json!({"tag": ["t1", null, "t3"], "note": [null, null, null]})),
        "the last item's row holds the collected fields"
    );
}

/// Posts each item `k` of `input.ids` to `/items` as `{"id": k}`,
/// `concurrency` at once, with the step's `flow` fields.
fn parallel(base: &str, concurrency: u32, flow: Value) -> Value {
    let mut step = json!({"name": "send", "method": "POST", "url": format!("{base}/items"),
        "for_each": {"items": "<<input.ids>>", "concurrency": concurrency},
        "body": {"type": "json", "content": {"id": "<<item>>"}},
        "extract": {"n": "$.n"}});
    for (k, v) in flow.as_object().expect("object") {
        step[k] = v.clone();
    }
    json!({"name": "parallel", "steps": [step], "output": {"n": "<<steps.send.extract.n>>"}})
}

/// Answers item `k` with `{"n": k * 10}` after `hold`.
fn tens(hold: Duration) -> Overlap {
    Overlap::new(move |r| {
        let k = body(r)["id"].as_u64().unwrap_or(0);
        let answer = ResponseTemplate::new(200).set_body_json(json!({"n": k * 10}));
        (answer, hold)
    })
}

async fn parked_events(h: &Harness, id: uuid::Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM execution_events WHERE execution_id = $1 AND kind = 'parked'",
    )
    .bind(id)
    .fetch_one(&h.pool)
    .await
    .expect("events")
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_concurrency_key_bounds_the_items_in_flight_of_one_execution(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    let recorder = tens(Duration::from_millis(300));
    Mock::given(method("POST"))
        .respond_with(recorder.clone())
        .mount(&stub)
        .await;
    let key = json!({"concurrency": {"key": "workspace", "limit": 2}});
    let c = h.connector(parallel(&stub.uri(), 4, key)).await;
    let ids: Vec<u64> = (1..=8).collect();
    let id = h.enqueue(c, json!({"ids": ids})).await;

    let e = h.run_until_final(id, WAIT).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    let tens: Vec<u64> = (1..=8).map(|k| k * 10).collect();
    assert_eq!(e.output.expect("output")["n"], json!(tens));
    assert_eq!(recorder.count(), 8, "each item is sent once");
    assert_eq!(
        recorder.peak(),
        2,
        "each item in flight holds a slot of the key"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn each_item_takes_a_rate_limit_send_and_a_parked_loop_keeps_its_finished_items(
    pool: PgPool,
) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    let recorder = tens(Duration::ZERO);
    Mock::given(method("POST"))
        .respond_with(recorder.clone())
        .mount(&stub)
        .await;
    let limit = json!({"rate_limit": {"key": "stub", "limit": 2, "per_ms": 1000}});
    let c = h.connector(parallel(&stub.uri(), 3, limit)).await;
    let ids: Vec<u64> = (1..=6).collect();
    let id = h.enqueue(c, json!({"ids": ids})).await;

    let e = h.run_until_final(id, WAIT).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    assert_eq!(
        e.output.expect("output")["n"],
        json!([10, 20, 30, 40, 50, 60])
    );
    assert_eq!(recorder.count(), 6, "no finished item is sent again");
    // Sends are granted at least 500 ms apart; 50 ms less than a second
    // allows for their arrival at the stub to jitter. Without a send per
    // item, three items would arrive within milliseconds.
    let busiest = recorder.busiest(Duration::from_millis(950));
    assert!(busiest <= 2, "{busiest} items sent within a second");
    assert!(parked_events(&h, id).await > 0, "the loop was parked");
    let items: Vec<String> = rows(&h, id).await;
    let want: Vec<String> = (1..=6).map(|k| format!("send#1 i{k} succeeded")).collect();
    assert_eq!(items, want);
}
