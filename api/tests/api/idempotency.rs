//! Enqueueing through the API: what a single execute writes and answers,
//! idempotency keys (concurrent executes with one key make one
//! execution) and batches.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use conveyor_tests::api::{Reply, TestApi, WAIT};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::support::{api, simple_connector};

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn an_execute_answers_what_get_shows_and_writes_its_event_notify_and_audit_entry(
    pool: PgPool,
) {
    let (api, a, connector) = alice_with_connector(&pool).await;
    let mut listener = enqueue_listener(&pool).await;
    let execute = format!("/api/v1/connectors/{connector}/execute");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    for body in [
        json!({"input": {"n": 1}}),
        json!({"input": {"n": 2}, "idempotency_key": "k-all", "priority": 7, "run_at": later}),
    ] {
        let reply = api.post(&execute, &a, body.clone()).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
        let id = reply.id();
        tokio::time::timeout(WAIT, listener.recv())
            .await
            .expect("the execute notifies idle workers")
            .expect("received");
        // The answer is the execution as stored: GET shows the same, and
        // adds only its steps and why it waits.
        let mut shown = api.get(&format!("/api/v1/executions/{id}"), &a).await.json;
        let shown = shown.as_object_mut().expect("object");
        shown.remove("steps");
        shown.remove("waiting_for");
        assert_eq!(reply.json, json!(shown));
        assert_eq!(reply.json["status"], "queued");
        assert_eq!(reply.json["input"], body["input"]);
        assert_eq!(reply.json["connector_id"], json!(connector));
        assert_eq!(reply.json["started_by"], "user:alice");

        let (events, audited): (Vec<serde_json::Value>, Vec<(String, String, serde_json::Value)>) = (
            sqlx::query_scalar(
                "SELECT details FROM execution_events WHERE execution_id = $1::uuid AND kind = 'enqueued'",
            )
            .bind(&id)
            .fetch_all(&pool)
            .await
            .expect("events"),
            sqlx::query_as(
                "SELECT workspace_id, actor, details FROM audit_log
                 WHERE action = 'execution.start' AND object_type = 'execution' AND object_id = $1",
            )
            .bind(&id)
            .fetch_all(&pool)
            .await
            .expect("audit"),
        );
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            audited,
            [(
                "ws_a".to_owned(),
                "alice".to_owned(),
                json!({"connector_id": connector})
            )]
        );
        if body.get("priority").is_some() {
            assert_eq!(reply.json["priority"], 7);
            assert_eq!(reply.json["idempotency_key"], "k-all");
            assert_eq!(events[0]["priority"], 7);
            // The replay answers the same execution, 200, and writes nothing.
            let again = api.post(&execute, &a, body).await;
            assert_eq!(again.status, StatusCode::OK, "{}", again.text);
            assert_eq!(again.json, reply.json);
        }
    }
    let (executions, entries): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM connector_executions),
                (SELECT count(*) FROM audit_log WHERE action = 'execution.start')",
    )
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!((executions, entries), (2, 2));
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn two_concurrent_executes_with_the_same_key_make_one_execution(pool: PgPool) {
    let api = api(pool.clone());
    let a = api.token("ws_a", "alice");
    let b = api.token("ws_b", "bob");
    let connector = api
        .create_connector(&a, simple_connector("http://127.0.0.1:9"))
        .await;
    let execute = format!("/api/v1/connectors/{connector}/execute");

    let by_header = |key: &'static str| {
        let request = Request::builder()
            .method(Method::POST)
            .uri(&execute)
            .header("authorization", format!("Bearer {a}"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(json!({"input": {"n": 1}}).to_string()))
            .expect("request");
        api.send_request(request)
    };
    let by_body = |key: &'static str| {
        api.post(
            &execute,
            &a,
            json!({"input": {"n": 1}, "idempotency_key": key}),
        )
    };

    let (one, two) = tokio::join!(by_header("k-header"), by_header("k-header"));
    let (three, four) = tokio::join!(by_body("k-body"), by_body("k-body"));
    // The same key by header and by body is the same key.
    let (five, six) = tokio::join!(by_header("k-mixed"), by_body("k-mixed"));
    for (x, y) in [(&one, &two), (&three, &four), (&five, &six)] {
        let mut statuses = [x.status, y.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::ACCEPTED],
            "{} / {}",
            x.text,
            y.text
        );
        assert_eq!(x.id(), y.id(), "the same key names the same execution");
    }
    assert_ne!(one.id(), three.id());
    assert_ne!(three.id(), five.id());
    assert_eq!(one.json["idempotency_key"], "k-header");
    assert_eq!(three.json["idempotency_key"], "k-body");

    // Many at once still make one.
    let many = futures_util::future::join_all((0..8).map(|_| by_header("k-many"))).await;
    let ids: BTreeSet<String> = many.iter().map(Reply::id).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        many.iter()
            .filter(|r| r.status == StatusCode::ACCEPTED)
            .count(),
        1
    );

    let count = |key: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM connector_executions WHERE idempotency_key = $1",
            )
            .bind(key)
            .fetch_one(&pool)
            .await
            .expect("count")
        }
    };
    for key in ["k-header", "k-body", "k-mixed", "k-many"] {
        assert_eq!(count(key).await, 1, "{key}");
    }
    assert_eq!(api.get("/api/v1/executions", &a).await.items().len(), 4);

    // A key is the workspace's own: another workspace's key is unrelated.
    let other = api
        .create_connector(&b, simple_connector("http://127.0.0.1:9"))
        .await;
    let theirs = api
        .post(
            &format!("/api/v1/connectors/{other}/execute"),
            &b,
            json!({"idempotency_key": "k-header"}),
        )
        .await;
    assert_eq!(theirs.status, StatusCode::ACCEPTED, "{}", theirs.text);
    assert_ne!(theirs.id(), one.id());

    // A key reused for another input is a conflict, and the whole batch is
    // refused.
    let before = api.get("/api/v1/executions", &a).await.items().len();
    let reused = api
        .post(
            &format!("{execute}/batch"),
            &a,
            json!({"items": [{"input": {"n": 20}}, {"input": {"n": 99}, "idempotency_key": "k-body"}]}),
        )
        .await;
    assert_eq!(reused.status, StatusCode::CONFLICT, "{}", reused.text);
    assert_eq!(
        reused.json["error"]["details"]["path"],
        "items[1].idempotency_key"
    );
    assert_eq!(
        api.get("/api/v1/executions", &a).await.items().len(),
        before
    );
    let single = api
        .post(
            &execute,
            &a,
            json!({"input": {"n": 99}, "idempotency_key": "k-body"}),
        )
        .await;
    assert_eq!(single.status, StatusCode::CONFLICT, "{}", single.text);

    // A batch answers ids in item order; keyed items reuse executions.
    let batch = api
        .post(
            &format!("{execute}/batch"),
            &a,
            json!({"items": [
                {"input": {"n": 10}},
                {"input": {"n": 1}, "idempotency_key": "k-body"},
                {"input": {"n": 12}},
                {"input": {"n": 13}, "idempotency_key": "k-batch"},
                {"input": {"n": 13}, "idempotency_key": "k-batch"}
            ]}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::ACCEPTED, "{}", batch.text);
    let ids: Vec<String> = batch.json["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(ids[1], three.id(), "a key already used names its execution");
    assert_eq!(
        ids[3], ids[4],
        "a key repeated in the batch makes one execution"
    );
    for (id, n) in [(&ids[0], 10), (&ids[2], 12), (&ids[3], 13)] {
        let e = api.get(&format!("/api/v1/executions/{id}"), &a).await;
        assert_eq!(e.json["input"], json!({"n": n}), "{}", e.text);
        assert_eq!(e.json["connector_id"], json!(connector));
    }
    assert_eq!(api.get("/api/v1/executions", &a).await.items().len(), 7);
}

/// The ids of a batch's answer, in item order.
fn batch_ids(reply: &Reply) -> Vec<String> {
    reply.json["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect()
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_full_batch_enqueues_every_item_with_its_event_and_wakes_workers(pool: PgPool) {
    let (api, a, connector) = alice_with_connector(&pool).await;
    let mut listener = enqueue_listener(&pool).await;
    let mut items: Vec<_> = (0..1000).map(|n| json!({"input": {"n": n}})).collect();
    items[0] = json!({"input": {"n": 0}, "idempotency_key": "k-first"});
    // A repeated key with the same input names the earlier item's execution.
    items[500] = json!({"input": {"n": 0}, "idempotency_key": "k-first"});
    items[999] = json!({"input": {"n": 999}, "idempotency_key": "k-last"});
    let batch = api
        .post(
            &format!("/api/v1/connectors/{connector}/execute/batch"),
            &a,
            json!({"items": items}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::ACCEPTED, "{}", batch.text);
    let ids = batch_ids(&batch);
    assert_eq!(ids.len(), 1000);
    assert_eq!(ids[500], ids[0]);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 999);
    tokio::time::timeout(WAIT, listener.recv())
        .await
        .expect("the enqueue notifies idle workers")
        .expect("received");

    // Each execution holds its own item's input and has one `enqueued` event.
    let rows: Vec<(String, serde_json::Value, i64)> = sqlx::query_as(
        "SELECT e.id::text, e.input,
                (SELECT count(*) FROM execution_events v WHERE v.execution_id = e.id AND v.kind = 'enqueued')
         FROM connector_executions e WHERE e.workspace_id = 'ws_a'",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    assert_eq!(rows.len(), 999);
    let by_id: std::collections::BTreeMap<_, _> = rows
        .into_iter()
        .map(|(id, input, ev)| (id, (input, ev)))
        .collect();
    for (n, id) in ids.iter().enumerate().filter(|(n, _)| *n != 500) {
        let (input, events) = &by_id[id];
        assert_eq!(input["n"], json!(n), "item {n}");
        assert_eq!(*events, 1, "item {n}");
    }
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_key_reused_within_a_batch_for_another_input_refuses_the_batch(pool: PgPool) {
    let (api, a, connector) = alice_with_connector(&pool).await;
    let reused = api
        .post(
            &format!("/api/v1/connectors/{connector}/execute/batch"),
            &a,
            json!({"items": [
                {"input": {"n": 1}},
                {"input": {"n": 2}, "idempotency_key": "k"},
                {"input": {"n": 3}},
                {"input": {"n": 4}, "idempotency_key": "k"}
            ]}),
        )
        .await;
    assert_eq!(reused.status, StatusCode::CONFLICT, "{}", reused.text);
    assert_eq!(
        reused.json["error"]["details"]["path"],
        "items[3].idempotency_key"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM connector_executions")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 0, "nothing of the batch is enqueued");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn concurrent_batches_sharing_keys_in_opposite_orders_make_one_execution_per_key(
    pool: PgPool,
) {
    let (api, a, connector) = alice_with_connector(&pool).await;
    let path = format!("/api/v1/connectors/{connector}/execute/batch");
    let item = |n: usize| json!({"input": {"n": n}, "idempotency_key": format!("k-{n}")});
    let forward: Vec<_> = (0..1000).map(item).collect();
    let backward: Vec<_> = (0..1000).rev().map(item).collect();
    // Both insert the same keys at once; in item order they would wait for
    // each other's keys crosswise (a deadlock).
    let (one, two) = tokio::join!(
        api.post(&path, &a, json!({"items": forward})),
        api.post(&path, &a, json!({"items": backward})),
    );
    assert_eq!(one.status, StatusCode::ACCEPTED, "{}", one.text);
    assert_eq!(two.status, StatusCode::ACCEPTED, "{}", two.text);
    let mut reversed = batch_ids(&two);
    reversed.reverse();
    assert_eq!(batch_ids(&one), reversed, "each key names one execution");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM connector_executions")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 1000);
}

/// A listener on the channel an enqueue notifies idle workers on.
/// An API process keeps the connector its single executes start in a
/// cache, and the enqueue statement checks it: a version published
/// meanwhile (here through another API process) is what the next execute
/// runs and validates its input against, and a connector deleted
/// meanwhile answers 404 and writes nothing.
#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_single_execute_starts_the_latest_version_and_never_a_deleted_connector(pool: PgPool) {
    let (api, a, connector) = alice_with_connector(&pool).await;
    let other = crate::support::api(pool.clone());
    let execute = format!("/api/v1/connectors/{connector}/execute");
    let path = format!("/api/v1/connectors/{connector}");
    let first = api.post(&execute, &a, json!({"input": {}})).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    assert_eq!(first.json["connector_version"], 1);

    let mut v2 = simple_connector("http://127.0.0.1:9");
    v2["input_schema"] = json!({"type": "object", "required": ["n"]});
    let published = other.call(Method::PUT, &path, Some(&a), Some(v2)).await;
    assert_eq!(published.status, StatusCode::OK, "{}", published.text);

    let second = api.post(&execute, &a, json!({"input": {"n": 1}})).await;
    assert_eq!(second.status, StatusCode::ACCEPTED, "{}", second.text);
    assert_eq!(second.json["connector_version"], 2);
    let refused = api.post(&execute, &a, json!({"input": {}})).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    let keyed = json!({"input": {"n": 2}, "idempotency_key": "after-v2"});
    let third = api.post(&execute, &a, keyed.clone()).await;
    assert_eq!(third.status, StatusCode::ACCEPTED, "{}", third.text);
    let replay = api.post(&execute, &a, keyed).await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.text);
    assert_eq!(replay.id(), third.id());

    let deleted = other.call(Method::DELETE, &path, Some(&a), None).await;
    assert!(deleted.status.is_success(), "{}", deleted.text);
    let gone = api.post(&execute, &a, json!({"input": {"n": 3}})).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.text);
    let versions: Vec<i32> = sqlx::query_scalar(
        "SELECT connector_version FROM connector_executions ORDER BY created_at",
    )
    .fetch_all(&pool)
    .await
    .expect("executions");
    assert_eq!(versions, [1, 2, 2]);
}

/// An `Idempotency-Key` header is never passed over: UTF-8 beyond ASCII
/// is a key like any other, and bytes that are not UTF-8 are refused.
#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_non_ascii_idempotency_key_header_still_makes_one_execution(pool: PgPool) {
    let (api, a, connector) = alice_with_connector(&pool).await;
    let execute = format!("/api/v1/connectors/{connector}/execute");
    let send = |key: &'static [u8]| {
        let request = Request::builder()
            .method(Method::POST)
            .uri(&execute)
            .header("authorization", format!("Bearer {a}"))
            .header("content-type", "application/json")
            .header(
                "idempotency-key",
                axum::http::HeaderValue::from_bytes(key).expect("header"),
            )
            .body(Body::from(r#"{"input": {}}"#))
            .expect("request");
        api.send_request(request)
    };
    let first = send("clé-1".as_bytes()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    let again = send("clé-1".as_bytes()).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.id(), first.id());
    let stored: Option<String> =
        sqlx::query_scalar("SELECT idempotency_key FROM connector_executions WHERE id = $1::uuid")
            .bind(first.id())
            .fetch_one(&pool)
            .await
            .expect("key");
    assert_eq!(stored.as_deref(), Some("clé-1"));

    let refused = send(b"cl\xe9-2").await;
    refused.assert_refused("Idempotency-Key");
    assert_eq!(
        refused.json["error"]["details"]["errors"][0]["path"],
        "Idempotency-Key"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM connector_executions")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 1);
}

async fn enqueue_listener(pool: &PgPool) -> PgListener {
    let mut listener = PgListener::connect_with(pool).await.expect("listener");
    listener
        .listen(conveyor_engine::store::channels::EXECUTIONS_ENQUEUED)
        .await
        .expect("listen");
    listener
}

/// The API, a token of alice in `ws_a`, and a connector of hers that
/// sends nowhere reachable.
async fn alice_with_connector(pool: &PgPool) -> (TestApi, String, String) {
    let api = api(pool.clone());
    let a = api.token("ws_a", "alice");
    let connector = api
        .create_connector(&a, simple_connector("http://127.0.0.1:9"))
        .await;
    (api, a, connector)
}
