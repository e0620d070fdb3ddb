//! The connector language through the queue and the runner: `when`
//! conditions, omit on null, form fields in the bracket encoding, and
//! secret extracts surviving a durable retry.

use std::time::Duration;

use conveyor_engine::state::{ExecutionStatus, StepOutcome};
use conveyor_tests::Harness;
use serde_json::{Value, json};
use sqlx::PgPool;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The stub's received requests to `path`.
async fn requests_to(stub: &MockServer, to: &str) -> Vec<wiremock::Request> {
    stub.received_requests()
        .await
        .expect("recording")
        .into_iter()
        .filter(|r| r.url.path() == to)
        .collect()
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_false_condition_skips_the_step_and_null_values_are_left_out(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/find"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"count": 0})))
        .mount(&stub)
        .await;
    for p in ["/create", "/update", "/log"] {
        Mock::given(method("POST"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "new-1"})))
            .mount(&stub)
            .await;
    }
    let base = stub.uri();
    let c = h
        .connector(json!({
            "name": "Upsert",
            "steps": [
                {"name": "find", "method": "GET", "url": format!("{base}/find"),
                 "query": {"email": "<<input.email>>", "team": "<<input.team | default(omit)>>"},
                 "headers": {"X-Trace": "<<input.trace>>", "X-Fixed": "yes"},
                 "extract": {"count": "$.count"}},
                {"name": "create", "method": "POST", "url": format!("{base}/create"),
                 "when": "<<steps.find.extract.count == 0>>",
                 "body": {"type": "json", "content": {
                     "email": "<<input.email>>", "phone": "<<input.phone>>",
                     "profile": {"team": "<<input.team | default(omit)>>", "kept": null}}},
                 "extract": {"id": "$.id"}},
                {"name": "update", "method": "POST", "url": format!("{base}/update"),
                 "when": "<<steps.find.extract.count > 0 and input.email != ''>>",
                 "extract": {"id": "$.id"}},
                {"name": "log", "method": "POST", "url": format!("{base}/log"),
                 "body": {"type": "form", "content": {
                     "created": "<<steps.create.extract.id>>",
                     "updated": "<<steps.update.extract.id>>"}}}
            ],
            "output": {"created": "<<steps.create.extract.id>>",
                       "updated": "<<steps.update.extract.id>>",
                       "update_status": "<<steps.update.status>>"}
        }))
        .await;
    let id = h
        .enqueue(
            c,
            json!({"email": "ada@example.com", "phone": null, "trace": null}),
        )
        .await;
    let e = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    assert_eq!(
        e.output,
        Some(json!({"created": "new-1", "updated": null, "update_status": null}))
    );
    let steps = h.steps(id).await;
    let outcomes: Vec<(&str, StepOutcome)> = steps
        .iter()
        .map(|s| (s.step_name.as_str(), s.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("find", StepOutcome::Succeeded),
            ("create", StepOutcome::Succeeded),
            ("update", StepOutcome::Skipped),
            ("log", StepOutcome::Succeeded),
        ]
    );
    assert_eq!(steps[2].response_status, None);
    assert_eq!(steps[2].extracted, Some(json!({"id": null})));
    assert!(requests_to(&stub, "/update").await.is_empty());

    let find = &requests_to(&stub, "/find").await[0];
    assert_eq!(find.url.query(), Some("email=ada%40example.com"));
    assert!(find.headers.get("x-trace").is_none());
    assert_eq!(
        find.headers.get("x-fixed").and_then(|v| v.to_str().ok()),
        Some("yes")
    );
    let create = &requests_to(&stub, "/create").await[0];
    let body: Value = serde_json::from_slice(&create.body).expect("json");
    assert_eq!(
        body,
        json!({"email": "ada@example.com", "profile": {"kept": null}})
    );
    let log = &requests_to(&stub, "/log").await[0];
    assert_eq!(String::from_utf8_lossy(&log.body), "created=new-1");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_condition_that_is_not_a_boolean_fails_the_run_naming_the_step(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    let c = h
        .connector(json!({
            "name": "Bad condition",
            "steps": [{"name": "only", "method": "GET", "url": format!("{}/x", stub.uri()),
                       "when": "<<input.flag>>"}]
        }))
        .await;
    let id = h.enqueue(c, json!({"flag": "yes"})).await;
    let e = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    let error = e.error.expect("error");
    assert_eq!(error["kind"], "render");
    assert_eq!(error["step"], "only");
    assert_eq!(
        error["message"],
        "when: a condition must be true or false, not a string"
    );
    assert!(stub.received_requests().await.expect("rec").is_empty());
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_secret_extract_reaches_later_steps_across_a_retry_and_is_never_stored(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    let token = "sess_PLANTED_4f9a2c7e";
    Mock::given(method("POST"))
        .and(path("/login"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"session": token, "user": "ada", "echo": [token]})),
        )
        .mount(&stub)
        .await;
    // The first attempt of `use` fails: the run is rescheduled and resumed
    // from the stored (sealed) context.
    Mock::given(method("POST"))
        .and(path("/use"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&stub)
        .await;
    Mock::given(method("POST"))
        .and(path("/use"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"seen": token})))
        .mount(&stub)
        .await;
    let base = stub.uri();
    let c = h
        .connector(json!({
            "name": "Session",
            "retry": {"max_attempts": 3, "initial_delay_ms": 50, "max_delay_ms": 100, "multiplier": 2.0},
            "steps": [
                {"name": "login", "method": "POST", "url": format!("{base}/login"),
                 "extract": {"session": {"path": "$.session", "secret": true},
                             "user": "$.user", "all": "$"}},
                {"name": "use", "method": "POST", "url": format!("{base}/use"),
                 "when": "<<steps.login.extract.session is not none>>",
                 "query": {"s": "<<steps.login.extract.session>>"},
                 "headers": {"X-Session": "<<steps.login.extract.session>>"},
                 "body": {"type": "json", "content": {"session": "<<steps.login.extract.session>>",
                                                      "tagged": "s=<<steps.login.extract.session>>"}},
                 "extract": {"seen": "$.seen"}}
            ]
        }))
        .await;
    let id = h.enqueue(c, json!({})).await;
    let e = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);

    // Both attempts of `use` got the plain value.
    let uses = requests_to(&stub, "/use").await;
    assert_eq!(uses.len(), 2);
    for r in &uses {
        assert_eq!(
            r.headers.get("x-session").and_then(|v| v.to_str().ok()),
            Some(token)
        );
        let body: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(body["session"], token);
    }

    // Nothing stored holds it: steps, context, output, events.
    let steps = h.steps(id).await;
    let attempts: Vec<(&str, i32, StepOutcome)> = steps
        .iter()
        .map(|s| (s.step_name.as_str(), s.attempt, s.outcome))
        .collect();
    assert_eq!(
        attempts,
        [
            ("login", 1, StepOutcome::Succeeded),
            ("use", 1, StepOutcome::RetryScheduled),
            ("use", 2, StepOutcome::Succeeded),
        ]
    );
    assert_eq!(
        steps[0].extracted,
        Some(json!({"session": "[REDACTED]", "user": "ada",
                    "all": {"session": "[REDACTED]", "user": "ada", "echo": ["[REDACTED]"]}}))
    );
    assert_eq!(steps[2].extracted, Some(json!({"seen": "[REDACTED]"})));
    assert_eq!(steps[2].request["headers"]["x-session"], "[REDACTED]");
    assert_eq!(
        steps[2].request["body"],
        json!({"session": "[REDACTED]", "tagged": "s=[REDACTED]"})
    );
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT row_to_json(s)::text FROM execution_steps s WHERE execution_id = $1
         UNION ALL SELECT row_to_json(e)::text FROM connector_executions e WHERE id = $1
         UNION ALL SELECT row_to_json(v)::text FROM execution_events v WHERE execution_id = $1",
    )
    .bind(id)
    .fetch_all(&h.pool)
    .await
    .expect("stored rows");
    assert!(stored.len() >= 4, "{stored:?}");
    for row in &stored {
        assert!(!row.contains(token), "plain secret stored: {row}");
    }
    let context: Value =
        sqlx::query_scalar("SELECT context FROM connector_executions WHERE id = $1")
            .bind(id)
            .fetch_one(&h.pool)
            .await
            .expect("context");
    assert!(
        context["steps"]["login"]["extract"]["session"]["$sealed"]["ciphertext"].is_string(),
        "{context}"
    );
    // The default output (every step's extracts) shows it redacted.
    assert_eq!(e.output.expect("output")["login"]["session"], "[REDACTED]");
}

/// A one-step connector that posts `form` to the stub's `/form`.
fn form_connector(base: &str, form: Value) -> Value {
    json!({
        "name": "Form",
        "steps": [{"name": "post", "method": "POST", "url": format!("{base}/form"),
                   "body": {"type": "form", "content": form}}]
    })
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn form_fields_holding_objects_and_arrays_are_sent_in_brackets(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/form"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "cus_1"})))
        .mount(&stub)
        .await;
    let c = h
        .connector(form_connector(
            &stub.uri(),
            json!({
                "customer": "<<input.customer>>",
                "items": "<<input.items>>",
                "metadata": "<<input.metadata | default(omit)>>",
                "metadata[source]": "conveyor",
                "note": "<<input.note>>",
                "expand": "<<input.expand | default(omit)>>",
            }),
        ))
        .await;
    let id = h
        .enqueue(
            c,
            json!({
                "customer": "cus_1",
                "items": [{"quantity": 2, "price": "p_1"}, null,
                          {"price": "p_2", "tax_rates": ["txr_1"], "discounts": []}],
                "metadata": {"zone": "é/1", "plan": "pro & annual", "seats": 5,
                             "vip": true, "cleared": null},
                "note": null,
            }),
        )
        .await;
    let e = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);

    let sent = &requests_to(&stub, "/form").await[0];
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(&sent.body)
        .into_owned()
        .collect();
    let want = [
        ("customer", "cus_1"),
        ("items[0][price]", "p_1"),
        ("items[0][quantity]", "2"),
        ("items[2][discounts]", ""),
        ("items[2][price]", "p_2"),
        ("items[2][tax_rates][0]", "txr_1"),
        ("metadata[plan]", "pro & annual"),
        ("metadata[seats]", "5"),
        ("metadata[vip]", "true"),
        ("metadata[zone]", "é/1"),
        ("metadata[source]", "conveyor"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(fields, want);
    let stored = h.steps(id).await;
    assert_eq!(
        stored[0].request["body"],
        json!(String::from_utf8_lossy(&sent.body))
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_form_value_nested_too_deep_fails_the_step_unsent(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    let c = h
        .connector(form_connector(
            &stub.uri(),
            json!({"data": "<<input.data>>"}),
        ))
        .await;
    let id = h
        .enqueue(
            c,
            json!({"data": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}),
        )
        .await;
    let e = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    let error = e.error.expect("error");
    assert_eq!(error["kind"], "form_encoding");
    assert_eq!(error["step"], "post");
    assert_eq!(
        error["message"],
        "body.content.data: the value nests deeper than 5 levels of brackets"
    );
    assert!(stub.received_requests().await.expect("rec").is_empty());
}
