//! Paginated steps run through the queue and the runner against loopback
//! stubs: a JSONPath cursor, a `Link` header and an offset counter page
//! through a list, fields accumulate, every page is a stored step row, a
//! failed page is retried by a later claim at that page, and `max_pages`
//! stops paging.

use std::time::Duration;

use conveyor_engine::state::ExecutionStatus;
use conveyor_tests::Harness;
use serde_json::{Value, json};
use sqlx::PgPool;
use wiremock::matchers::{method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

const WAIT: Duration = Duration::from_secs(20);

/// Mounts `GET /contacts` answering `body` where the `after` query
/// parameter is `after` (missing when `None`).
async fn cursor_page(stub: &MockServer, after: Option<&str>, body: Value) {
    let mock = Mock::given(method("GET")).and(path("/contacts"));
    let mock = match after {
        Some(a) => mock.and(query_param("after", a)),
        None => mock.and(query_param_is_missing("after")),
    };
    mock.respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(stub)
        .await;
}

/// `step name#attempt page` of every stored row.
async fn rows(h: &Harness, id: uuid::Uuid) -> Vec<String> {
    h.steps(id)
        .await
        .iter()
        .map(|s| {
            let page = s.page.map(|p| format!(" p{p}")).unwrap_or_default();
            format!("{}#{}{page} {}", s.step_name, s.attempt, s.outcome)
        })
        .collect()
}

/// The HubSpot-style cursor connector: list, then post every id.
fn cursor_connector(base: &str, max_pages: u32) -> Value {
    json!({
        "name": "List and sync",
        "retry": {"max_attempts": 3, "initial_delay_ms": 10, "max_delay_ms": 20},
        "steps": [
            {"name": "list", "method": "GET", "url": format!("{base}/contacts"),
             "query": {"limit": "2"},
             "paginate": {"next": {"type": "cursor", "path": "$.paging.next.after", "param": "after"},
                          "max_pages": max_pages},
             "extract": {"ids": "$.results[*].id", "total": "$.total"}},
            {"name": "sync", "method": "POST", "url": format!("{base}/sync"),
             "body": {"type": "json", "content": {"ids": "<<steps.list.extract.ids>>"}}}
        ],
        "output": {"ids": "<<steps.list.extract.ids>>", "paging": "<<steps.list.paging>>"}
    })
}

async fn three_cursor_pages(stub: &MockServer) {
    cursor_page(
        stub,
        None,
        json!({"results": [{"id": 1}, {"id": 2}], "total": 5, "paging": {"next": {"after": "c2"}}}),
    )
    .await;
    cursor_page(
        stub,
        Some("c2"),
        json!({"results": [{"id": 3}, {"id": 4}], "total": 5, "paging": {"next": {"after": "c3"}}}),
    )
    .await;
    cursor_page(
        stub,
        Some("c3"),
        json!({"results": [{"id": 5}], "total": 5}),
    )
    .await;
    Mock::given(method("POST"))
        .and(path("/sync"))
        .respond_with(ResponseTemplate::new(200))
        .mount(stub)
        .await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_cursor_pages_through_the_list_and_later_steps_see_every_item(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    three_cursor_pages(&stub).await;
    let c = h.connector(cursor_connector(&stub.uri(), 10)).await;
    let id = h.enqueue(c, json!({})).await;

    let e = h.run_until_final(id, WAIT).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    let output = e.output.expect("output");
    assert_eq!(output["ids"], json!([1, 2, 3, 4, 5]));
    assert_eq!(output["paging"], json!({"pages": 3, "complete": true}));
    assert_eq!(
        rows(&h, id).await,
        [
            "list#1 p1 succeeded",
            "list#1 p2 succeeded",
            "list#1 p3 succeeded",
            "sync#1 succeeded",
        ]
    );
    let received = stub.received_requests().await.expect("recording");
    let sync = received
        .iter()
        .find(|r| r.url.path() == "/sync")
        .expect("sync ran");
    let body: Value = serde_json::from_slice(&sync.body).expect("json body");
    assert_eq!(body, json!({"ids": [1, 2, 3, 4, 5]}));
    let listed: Vec<&str> = received
        .iter()
        .filter(|r| r.url.path() == "/contacts")
        .map(|r| r.url.query().unwrap_or_default())
        .collect();
    assert_eq!(listed, ["limit=2", "after=c2&limit=2", "after=c3&limit=2"]);
    let keys: std::collections::BTreeSet<String> = received
        .iter()
        .filter(|r| r.url.path() == "/contacts")
        .map(|r| format!("{:?}", r.headers.get("idempotency-key")))
        .collect();
    assert_eq!(keys.len(), 3, "each page has its own idempotency key");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn max_pages_stops_paging_and_says_the_list_is_incomplete(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    three_cursor_pages(&stub).await;
    let c = h.connector(cursor_connector(&stub.uri(), 2)).await;
    let id = h.enqueue(c, json!({})).await;

    let e = h.run_until_final(id, WAIT).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    let output = e.output.expect("output");
    assert_eq!(output["ids"], json!([1, 2, 3, 4]));
    assert_eq!(output["paging"], json!({"pages": 2, "complete": false}));
    let third = stub
        .received_requests()
        .await
        .expect("recording")
        .iter()
        .filter(|r| r.url.query().is_some_and(|q| q.contains("after=c3")))
        .count();
    assert_eq!(third, 0, "no third page past max_pages");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_failed_page_is_retried_at_that_page_by_a_later_claim(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    // Page 2 fails once; the retry is a new claim that must resume there.
    Mock::given(method("GET"))
        .and(path("/contacts"))
        .and(query_param("after", "c2"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&stub)
        .await;
    three_cursor_pages(&stub).await;
    let c = h.connector(cursor_connector(&stub.uri(), 10)).await;
    let id = h.enqueue(c, json!({})).await;

    let e = h.run_until_final(id, WAIT).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    assert_eq!(e.output.expect("output")["ids"], json!([1, 2, 3, 4, 5]));
    assert_eq!(
        rows(&h, id).await,
        [
            "list#1 p1 succeeded",
            "list#1 p2 retry_scheduled",
            "list#2 p2 succeeded",
            "list#1 p3 succeeded",
            "sync#1 succeeded",
        ]
    );
    let first_pages = stub
        .received_requests()
        .await
        .expect("recording")
        .iter()
        .filter(|r| r.url.path() == "/contacts" && r.url.query() == Some("limit=2"))
        .count();
    assert_eq!(first_pages, 1, "page 1 is not sent again");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_link_header_is_followed_on_the_origin_and_refused_off_it(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/items"))
        .and(query_param_is_missing("page"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header(
                    "link",
                    r#"</items?page=2>; rel="next", </items>; rel="first""#,
                )
                .set_body_json(json!([{"n": "a"}, {"n": "b"}])),
        )
        .mount(&stub)
        .await;
    Mock::given(method("GET"))
        .and(path("/items"))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"n": "c"}])))
        .mount(&stub)
        .await;
    Mock::given(method("GET"))
        .and(path("/away"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("link", r#"<http://192.0.2.1/steal>; rel="next""#)
                .set_body_json(json!([])),
        )
        .mount(&stub)
        .await;
    let list = |url: String| {
        json!({"name": "Link", "steps": [
            {"name": "list", "method": "GET", "url": url,
             "paginate": {"next": {"type": "link"}},
             "extract": {"names": "$[*].n"}}]})
    };
    let c = h.connector(list(format!("{}/items", stub.uri()))).await;
    let id = h.enqueue(c, json!({})).await;
    let e = h.run_until_final(id, WAIT).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    assert_eq!(
        e.output.expect("output")["list"]["names"],
        json!(["a", "b", "c"])
    );

    let c = h.connector(list(format!("{}/away", stub.uri()))).await;
    let id = h.enqueue(c, json!({})).await;
    let e = h.run_until_final(id, WAIT).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    let error = e.error.expect("error");
    assert_eq!(error["kind"], "paging", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("origin"),
        "{error}"
    );
    let strayed = stub
        .received_requests()
        .await
        .expect("recording")
        .iter()
        .filter(|r| r.url.path() == "/steal")
        .count();
    assert_eq!(strayed, 0);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn an_offset_counter_stops_at_a_short_page(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    for (offset, ids) in [
        ("0", json!([1, 2])),
        ("2", json!([3, 4])),
        ("4", json!([5])),
    ] {
        Mock::given(method("GET"))
            .and(path("/deals"))
            .and(query_param("start", offset))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": ids})))
            .mount(&stub)
            .await;
    }
    let c = h
        .connector(json!({"name": "Offset", "steps": [
            {"name": "deals", "method": "GET", "url": format!("{}/deals", stub.uri()),
             "query": {"limit": "2"},
             "paginate": {"next": {"type": "offset", "param": "start", "page_size": 2, "items": "$.data"}},
             "extract": {"ids": "$.data"}}]}))
        .await;
    let id = h.enqueue(c, json!({})).await;
    let e = h.run_until_final(id, WAIT).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    assert_eq!(
        e.output.expect("output")["deals"]["ids"],
        json!([1, 2, 3, 4, 5])
    );
    assert_eq!(h.steps(id).await.len(), 3, "three pages, no fourth request");
}
