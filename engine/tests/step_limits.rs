//! The step client's memory and CPU bounds against real loopback servers:
//! the parsed size of a response body, the rendered size of a request, and
//! parsing and extraction kept off the async threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use conveyor_engine::connector::Step;
use conveyor_engine::http::{HttpConfig, Retry, StepClient, StepErrorKind, StepResult};
use conveyor_engine::redact::Credentials;
use serde_json::{Value, json};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

const TIMEOUT: Duration = Duration::from_secs(60);

fn step(mut value: Value) -> Step {
    value["name"] = json!("call");
    serde_json::from_value(value).expect("valid step")
}

async fn run(config: HttpConfig, step: &Step, input: Value) -> StepResult {
    let context = json!({"input": input, "steps": {}, "settings": {}});
    let client = StepClient::new(HttpConfig {
        allow_private_networks: true,
        ..config
    })
    .expect("client");
    client
        .run(step, &context, &Credentials::new(), "key", TIMEOUT)
        .await
}

async fn serving(body: String) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
        .mount(&server)
        .await;
    server
}

fn error_of(result: &StepResult) -> (StepErrorKind, Retry) {
    let e = result.error.as_ref().expect("the step failed");
    (e.kind, e.retry)
}

#[tokio::test]
async fn a_body_whose_parsed_form_is_too_large_fails_the_step_unparsed() {
    // 200 KB of bytes, but 100,000 values: several MB once parsed.
    let body = format!("[{}0]", "0,".repeat(99_999));
    let server = serving(body.clone()).await;
    let step = step(json!({
        "method": "GET",
        "url": server.uri(),
        "extract": {"first": "$[0]"},
    }));
    let config = HttpConfig {
        max_parsed_body_bytes: 1024 * 1024,
        max_stored_body_bytes: 16,
        ..HttpConfig::default()
    };

    let result = run(config.clone(), &step, json!({})).await;

    assert_eq!(
        error_of(&result),
        (StepErrorKind::ParsedBodyTooLarge, Retry::Fatal)
    );
    let response = result.response.as_ref().expect("the response is recorded");
    assert_eq!(response.status, 200);
    assert_eq!(response.body["original_size"], json!(body.len()));
    assert_eq!(response.body["preview"], json!(&body[..16]));
    assert!(result.extracted.is_empty());

    let roomy = HttpConfig {
        max_parsed_body_bytes: 16 * 1024 * 1024,
        ..config
    };
    let result = run(roomy, &step, json!({})).await;
    assert!(result.error.is_none(), "{:?}", result.error);
    assert_eq!(result.extracted["first"], json!(0));
}

#[tokio::test]
async fn a_request_rendered_past_its_cap_is_not_sent() {
    let server = serving("{}".to_owned()).await;
    let step = step(json!({
        "method": "POST",
        "url": server.uri(),
        "body": {"type": "json", "content": {"a": "<<input.s>>", "b": "<<input.s>>"}},
    }));
    let input = json!({"s": "x".repeat(600 * 1024)});
    let config = HttpConfig {
        max_request_bytes: 1024 * 1024,
        ..HttpConfig::default()
    };

    let result = run(config.clone(), &step, input.clone()).await;

    assert_eq!(error_of(&result), (StepErrorKind::Render, Retry::Fatal));
    let message = &result.error.as_ref().expect("error").message;
    assert!(message.contains("exceeds 1048576 bytes"), "{message}");
    assert!(result.response.is_none());
    let sent = server.received_requests().await.expect("recording on");
    assert!(sent.is_empty(), "nothing may be sent");

    let roomy = HttpConfig {
        max_request_bytes: 2 * 1024 * 1024,
        ..config
    };
    let result = run(roomy, &step, input).await;
    assert!(result.error.is_none(), "{:?}", result.error);
}

/// The lease heartbeat runs beside the step on the same runtime: while a
/// large body is parsed and queried, a task on a single-threaded runtime
/// keeps getting turns. Were the work done on the runtime's thread, the
/// longest gap between turns would be about the whole parse.
#[test]
fn parsing_and_extraction_leave_the_runtime_free() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let item = r#"{"id":1,"tags":["a","b"],"nested":{"k":[1,2,3]}},"#;
        let body = format!("[{}{{}}]", item.repeat(8 * 1024 * 1024 / item.len()));
        let server = serving(body).await;
        let step = step(json!({
            "method": "GET",
            "url": server.uri(),
            "extract": {"everything": "$..*"},
        }));
        let config = HttpConfig {
            max_response_bytes: 16 * 1024 * 1024,
            max_parsed_body_bytes: 1024 * 1024 * 1024,
            ..HttpConfig::default()
        };

        let done = Arc::new(AtomicBool::new(false));
        let ticker = tokio::spawn({
            let done = done.clone();
            async move {
                let mut longest = Duration::ZERO;
                let mut last = Instant::now();
                while !done.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    longest = longest.max(last.elapsed());
                    last = Instant::now();
                }
                longest
            }
        });
        let started = Instant::now();
        let result = run(config, &step, json!({})).await;
        let took = started.elapsed();
        done.store(true, Ordering::Relaxed);
        let longest_gap = ticker.await.expect("ticker");

        // `$..*` selects far too much: the step fails after the whole walk.
        assert_eq!(error_of(&result).0, StepErrorKind::Extract);
        assert!(
            longest_gap * 4 < took,
            "the runtime stalled for {longest_gap:?} of a {took:?} step"
        );
    });
}
