//! The step client against real loopback servers (wiremock): bodies,
//! auth, status classification, extraction, redaction, the private-network
//! policy, URL and header escaping, idempotency keys and body limits.

use std::net::TcpListener;
use std::time::Duration;

use conveyor_engine::connector::Step;
use conveyor_engine::http::{HttpConfig, Retry, StepClient, StepErrorKind, StepResult};
use conveyor_engine::redact::{Credentials, REDACTED};
use serde_json::{Value, json};
use wiremock::matchers::{any, body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "exec_1:call:1";
const TIMEOUT: Duration = Duration::from_secs(10);
const SECRET: &str = "sk_live_PLANTED_SECRET_123";

fn step(mut value: Value) -> Step {
    if value.get("name").is_none() {
        value["name"] = json!("call");
    }
    serde_json::from_value(value).expect("valid step")
}

fn creds(entries: &[(&str, &str, &str)]) -> Credentials {
    let mut out = Credentials::new();
    for (name, field, value) in entries {
        out.entry((*name).to_owned())
            .or_default()
            .insert((*field).to_owned(), (*value).to_owned());
    }
    out
}

fn loopback() -> HttpConfig {
    HttpConfig {
        allow_private_networks: true,
        ..HttpConfig::default()
    }
}

async fn run_with(
    config: HttpConfig,
    step: &Step,
    input: Value,
    credentials: &Credentials,
    timeout: Duration,
) -> StepResult {
    let context = json!({
        "input": input,
        "steps": {},
        "execution": {"id": "exec_1", "attempt": 1},
        "connector": {"id": "conn_1"},
        "workspace": {"id": "ws_1"},
        "settings": {"region": "eu"},
    });
    let client = StepClient::new(config).expect("client");
    client.run(step, &context, credentials, KEY, timeout).await
}

async fn run(step: &Step, input: Value, credentials: &Credentials) -> StepResult {
    run_with(loopback(), step, input, credentials, TIMEOUT).await
}

async fn server_ok() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&server)
        .await;
    server
}

async fn only_request(server: &MockServer) -> Request {
    let mut requests = server.received_requests().await.expect("recording on");
    assert_eq!(requests.len(), 1, "exactly one request expected");
    requests.remove(0)
}

async fn request_count(server: &MockServer) -> usize {
    server
        .received_requests()
        .await
        .expect("recording on")
        .len()
}

fn header_of<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers
        .get(name)
        .map(|v| v.to_str().expect("ascii"))
}

fn error_of(result: &StepResult) -> (StepErrorKind, Retry) {
    let error = result
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("expected an error, got {result:?}"));
    (error.kind, error.retry)
}

fn assert_ok(result: &StepResult) {
    assert!(
        result.error.is_none(),
        "unexpected error: {:?}",
        result.error
    );
}

#[tokio::test]
async fn json_body_keeps_input_types() {
    let server = MockServer::start().await;
    let expected = json!({
        "count": 42,
        "ratio": 1.5,
        "active": true,
        "cleared": null,
        "profile": {"tags": ["a", "b"], "age": 36},
        "greeting": "hi Ada (42)",
        "literal": "no placeholder",
    });
    Mock::given(method("POST"))
        .and(path("/contacts"))
        .and(header("content-type", "application/json"))
        .and(body_json(&expected))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&server)
        .await;
    let step = step(json!({
        "method": "POST",
        "url": format!("{}/contacts", server.uri()),
        "body": {"type": "json", "content": {
            "count": "<<input.count>>",
            "ratio": "<<input.ratio>>",
            "active": "<<input.active>>",
            // A placeholder rendering null is left out; a literal null is sent.
            "nothing": "<<input.nothing>>",
            "cleared": null,
            "profile": "<<input.profile>>",
            "greeting": "hi <<input.name>> (<<input.count>>)",
            "literal": "no placeholder",
        }},
    }));
    let input = json!({
        "count": 42,
        "ratio": 1.5,
        "active": true,
        "nothing": null,
        "profile": {"tags": ["a", "b"], "age": 36},
        "name": "Ada",
    });

    let result = run(&step, input, &Credentials::new()).await;

    assert_ok(&result);
    let sent: Value = only_request(&server).await.body_json().expect("json body");
    assert_eq!(sent, expected);
    assert_eq!(result.request["body"], expected);
    assert_eq!(
        result.request["headers"]["content-type"],
        json!("application/json")
    );
    assert_eq!(result.response.as_ref().map(|r| r.status), Some(201));
}

#[tokio::test]
async fn text_bodies_are_encoded_for_their_content_type() {
    struct Case {
        name: &'static str,
        body: Value,
        content_type: &'static str,
        sent: &'static str,
    }
    let cases = [
        Case {
            name: "form values are url-encoded",
            body: json!({"type": "form", "content": {
                "note": "<<input.text>>",
                "plain": "x",
            }}),
            content_type: "application/x-www-form-urlencoded",
            sent: "note=a+b%26c&plain=x",
        },
        Case {
            name: "xml values are xml-escaped, literal markup is not",
            body: json!({"type": "xml", "content": "<user><name><<input.xml>></name></user>"}),
            content_type: "application/xml",
            sent: "<user><name>&lt;b&gt;&amp;&quot;</name></user>",
        },
        Case {
            name: "raw bodies are sent as rendered with their content type",
            body: json!({
                "type": "raw",
                "content": "id;name\n1;<<input.text>>",
                "content_type": "text/csv; charset=utf-8",
            }),
            content_type: "text/csv; charset=utf-8",
            sent: "id;name\n1;a b&c",
        },
    ];
    for case in cases {
        let server = server_ok().await;
        let step = step(json!({
            "method": "POST",
            "url": format!("{}/in", server.uri()),
            "body": case.body,
        }));

        let result = run(
            &step,
            json!({"text": "a b&c", "xml": "<b>&\""}),
            &Credentials::new(),
        )
        .await;

        assert_ok(&result);
        let request = only_request(&server).await;
        assert_eq!(
            String::from_utf8(request.body.clone()).expect("utf-8"),
            case.sent,
            "{}",
            case.name
        );
        assert_eq!(
            header_of(&request, "content-type"),
            Some(case.content_type),
            "{}",
            case.name
        );
        assert_eq!(result.request["body"], json!(case.sent), "{}", case.name);
    }
}

#[tokio::test]
async fn auth_puts_the_credential_where_the_step_says() {
    enum Sent {
        Header(&'static str, &'static str),
        Query(&'static str, &'static str),
    }
    let cases = [
        (
            json!({"type": "bearer", "credential": "crm"}),
            creds(&[("crm", "token", "tok_1")]),
            Sent::Header("authorization", "Bearer tok_1"),
        ),
        (
            json!({"type": "basic", "credential": "crm"}),
            creds(&[("crm", "username", "user"), ("crm", "password", "pass")]),
            Sent::Header("authorization", "Basic dXNlcjpwYXNz"),
        ),
        (
            json!({"type": "api_key", "credential": "crm", "in": "header", "name": "X-Api-Key"}),
            creds(&[("crm", "key", "key_1")]),
            Sent::Header("x-api-key", "key_1"),
        ),
        (
            json!({"type": "api_key", "credential": "crm", "in": "query", "name": "api_key"}),
            creds(&[("crm", "key", "key_1")]),
            Sent::Query("api_key", "key_1"),
        ),
    ];
    for (auth, credentials, sent) in cases {
        let server = server_ok().await;
        let step = step(json!({
            "method": "GET",
            "url": format!("{}/me", server.uri()),
            "query": {"page": "1"},
            "auth": auth,
        }));

        let result = run(&step, json!({}), &credentials).await;

        assert_ok(&result);
        let request = only_request(&server).await;
        match sent {
            Sent::Header(name, value) => {
                assert_eq!(header_of(&request, name), Some(value), "{auth}");
                assert_eq!(result.request["headers"][name], json!(REDACTED), "{auth}");
            }
            Sent::Query(name, value) => {
                let pairs: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
                assert_eq!(
                    pairs,
                    vec![
                        ("page".to_owned(), "1".to_owned()),
                        (name.to_owned(), value.to_owned())
                    ],
                    "{auth}"
                );
                assert!(header_of(&request, "authorization").is_none());
            }
        }
    }
}

#[tokio::test]
async fn missing_credential_or_field_fails_fatally_before_sending() {
    let cases = [
        (
            json!({"type": "bearer", "credential": "crm"}),
            Credentials::new(),
            "`crm` does not exist",
        ),
        (
            json!({"type": "bearer", "credential": "crm"}),
            creds(&[("crm", "key", "k")]),
            "no field `token`",
        ),
        (
            json!({"type": "basic", "credential": "crm"}),
            creds(&[("crm", "username", "user")]),
            "no field `password`",
        ),
        (
            json!({"type": "api_key", "credential": "crm", "in": "header", "name": "X-Key"}),
            creds(&[("other", "key", "k")]),
            "`crm` does not exist",
        ),
        (
            json!({"type": "api_key", "credential": "crm", "in": "query", "name": "key"}),
            creds(&[("crm", "token", "k")]),
            "no field `key`",
        ),
    ];
    for (auth, credentials, message) in cases {
        let server = server_ok().await;
        let step = step(json!({
            "method": "GET",
            "url": format!("{}/me", server.uri()),
            "auth": auth,
        }));

        let result = run(&step, json!({}), &credentials).await;

        assert_eq!(
            error_of(&result),
            (StepErrorKind::Credential, Retry::Fatal),
            "{auth}"
        );
        let error = result.error.as_ref().expect("error");
        assert!(error.message.contains(message), "{auth}: {}", error.message);
        assert!(result.response.is_none());
        assert_eq!(request_count(&server).await, 0, "{auth}: nothing is sent");
    }
}

#[tokio::test]
async fn status_is_classified_by_expect_and_retryability() {
    const OK: Option<Retry> = None;
    const FATAL: Option<Retry> = Some(Retry::Fatal);
    const RETRY: Option<Retry> = Some(Retry::Retryable);
    // (status, Retry-After, expect, outcome: None = success). A 302 without
    // Location is not followed: it is the answer.
    let cases = [
        (200, None, &[][..], OK),
        (204, None, &[], OK),
        (299, None, &[], OK),
        (404, None, &[404], OK),
        (200, None, &[404], FATAL),
        (302, None, &[], FATAL),
        (400, None, &[], FATAL),
        (503, None, &[], RETRY),
        (408, None, &[], RETRY),
        (429, None, &[], RETRY),
        (
            429,
            Some("2"),
            &[],
            Some(Retry::RetryAfter(Duration::from_secs(2))),
        ),
        (
            503,
            Some("7"),
            &[],
            Some(Retry::RetryAfter(Duration::from_secs(7))),
        ),
    ];
    for (status, retry_after, expect, outcome) in cases {
        let server = MockServer::start().await;
        let mut response = ResponseTemplate::new(status).set_body_json(json!({"status": status}));
        if let Some(value) = retry_after {
            response = response.insert_header("Retry-After", value);
        }
        Mock::given(any())
            .respond_with(response)
            .mount(&server)
            .await;
        let step = step(json!({
            "method": "GET",
            "url": format!("{}/x", server.uri()),
            "expect": expect,
        }));

        let result = run(&step, json!({}), &Credentials::new()).await;

        let case = format!("{status} expect {expect:?}");
        assert_eq!(
            result.response.as_ref().map(|r| r.status),
            Some(status),
            "{case}"
        );
        match outcome {
            None => assert_ok(&result),
            Some(retry) => {
                assert_eq!(
                    error_of(&result),
                    (StepErrorKind::HttpStatus, retry),
                    "{case}"
                );
                let message = &result.error.as_ref().expect("error").message;
                assert!(message.contains(&status.to_string()), "{case}: {message}");
                assert!(result.extracted.is_empty());
            }
        }
    }
}

#[tokio::test]
async fn slow_response_times_out_as_retryable() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let step = step(json!({"method": "GET", "url": format!("{}/slow", server.uri())}));

    let started = std::time::Instant::now();
    let result = run_with(
        loopback(),
        &step,
        json!({}),
        &Credentials::new(),
        Duration::from_millis(200),
    )
    .await;

    assert_eq!(
        error_of(&result),
        (StepErrorKind::Timeout, Retry::Retryable)
    );
    assert!(result.response.is_none());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout passed to run() bounds the attempt"
    );
}

#[tokio::test]
async fn refused_connection_is_a_retryable_connect_error() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let step = step(json!({"method": "GET", "url": format!("http://127.0.0.1:{port}/")}));

    let result = run(&step, json!({}), &Credentials::new()).await;

    assert_eq!(
        error_of(&result),
        (StepErrorKind::Connect, Retry::Retryable)
    );
    assert!(result.response.is_none());
    assert_eq!(
        result.request["url"],
        json!(format!("http://127.0.0.1:{port}/"))
    );
}

#[tokio::test]
async fn extraction_yields_values_for_singular_paths_and_lists_otherwise() {
    let server = MockServer::start().await;
    let body = json!({
        "user": {"id": 7, "name": "Ada", "deleted": null},
        "items": [{"sku": "a"}, {"sku": "b"}],
    });
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_json(&body))
        .mount(&server)
        .await;
    let step = step(json!({
        "method": "GET",
        "url": format!("{}/user", server.uri()),
        "extract": {
            "id": {"path": "$.user.id", "required": true},
            "name": "$['user']['name']",
            "deleted": {"path": "$.user.deleted", "required": true},
            "absent": "$.user.email",
            "skus": "$.items[*].sku",
            "first_sku": "$.items[0].sku",
            "no_match": "$.items[?@.sku == 'z']",
        },
    }));

    let result = run(&step, json!({}), &Credentials::new()).await;

    assert_ok(&result);
    let expected = json!({
        "id": 7,
        "name": "Ada",
        "deleted": null,
        "absent": null,
        "skus": ["a", "b"],
        "first_sku": "a",
        "no_match": [],
    });
    assert_eq!(Value::Object(result.extracted.clone()), expected);
    let entry = result.context_entry();
    assert_eq!(entry["extract"], expected);
    assert_eq!(entry["status"], json!(200));
    assert_eq!(entry["body"], body);
    assert_eq!(entry["headers"]["content-type"], json!("application/json"));
}

#[tokio::test]
async fn missing_required_field_fails_extraction_fatally() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"user": {"id": 7}})))
        .mount(&server)
        .await;
    let step = step(json!({
        "method": "GET",
        "url": format!("{}/user", server.uri()),
        "extract": {
            "id": "$.user.id",
            "email": {"path": "$.user.email", "required": true},
        },
    }));

    let result = run(&step, json!({}), &Credentials::new()).await;

    assert_eq!(error_of(&result), (StepErrorKind::Extract, Retry::Fatal));
    let message = &result.error.as_ref().expect("error").message;
    assert!(
        message.contains("email") && message.contains("$.user.email"),
        "{message}"
    );
    assert!(result.extracted.is_empty());
    assert_eq!(result.context_entry()["extract"], json!({}));
    assert_eq!(
        result.response.as_ref().map(|r| r.body.clone()),
        Some(json!({"user": {"id": 7}}))
    );
}

#[tokio::test]
async fn secrets_are_redacted_from_the_result_but_sent_to_the_server() {
    enum Seen {
        Header(&'static str, String),
        Query(&'static str),
        Body,
    }
    let special = "sk live/+&=%PLANTED?#";
    let cases = [
        (
            SECRET,
            json!({"type": "bearer", "credential": "c"}),
            "token",
            None,
            Seen::Header("authorization", format!("Bearer {SECRET}")),
        ),
        (
            SECRET,
            json!({"type": "api_key", "credential": "c", "in": "query", "name": "api_key"}),
            "key",
            None,
            Seen::Query("api_key"),
        ),
        (
            special,
            json!({"type": "api_key", "credential": "c", "in": "query", "name": "api_key"}),
            "key",
            None,
            Seen::Query("api_key"),
        ),
        (
            SECRET,
            json!({"type": "api_key", "credential": "c", "in": "header", "name": "X-Api-Key"}),
            "key",
            None,
            Seen::Header("x-api-key", SECRET.to_owned()),
        ),
        (
            SECRET,
            json!({"type": "none"}),
            "token",
            Some(json!({"type": "json", "content": {
                "token": "<<credentials.c.token>>",
                "note": "key=<<credentials.c.token>>",
            }})),
            Seen::Body,
        ),
        (
            special,
            json!({"type": "none"}),
            "token",
            Some(json!({"type": "form", "content": {"token": "<<credentials.c.token>>"}})),
            Seen::Body,
        ),
    ];
    for (secret, auth, field, body, seen) in cases {
        let server = MockServer::start().await;
        Mock::given(any())
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("X-Echo", format!("token={secret}").as_str())
                    .set_body_json(json!({"echo": secret, "note": format!("you sent {secret}")})),
            )
            .mount(&server)
            .await;
        let mut step_json = json!({
            "method": "POST",
            "url": format!("{}/echo", server.uri()),
            "headers": {"X-Trace": "t <<credentials.c.token>>"},
            "auth": auth,
            "extract": {"echo": "$.echo"},
        });
        if let Some(body) = body {
            step_json["body"] = body;
        }
        let step = step(step_json);
        let credentials = creds(&[("c", field, secret), ("c", "token", secret)]);

        let result = run(&step, json!({}), &credentials).await;

        let case = format!("{secret} via {auth}");
        assert_ok(&result);
        let stored = serde_json::to_string(&result).expect("serialize");
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        for form in [secret, encoded.as_str(), "PLANTED"] {
            assert!(
                !stored.contains(form),
                "{case}: `{form}` leaked into {stored}"
            );
        }
        assert!(stored.contains(REDACTED), "{case}");
        assert_eq!(
            result.request["headers"]["x-trace"],
            json!(format!("t {REDACTED}"))
        );
        let response = result.response.as_ref().expect("response");
        assert_eq!(
            response.body,
            json!({"echo": REDACTED, "note": format!("you sent {REDACTED}")}),
            "{case}"
        );
        assert_eq!(
            response.headers["x-echo"],
            json!(format!("token={REDACTED}")),
            "{case}"
        );
        assert_eq!(result.extracted["echo"], json!(REDACTED), "{case}");

        let request = only_request(&server).await;
        assert_eq!(
            header_of(&request, "x-trace"),
            Some(format!("t {secret}").as_str()),
            "{case}"
        );
        match seen {
            Seen::Header(name, value) => {
                assert_eq!(header_of(&request, name), Some(value.as_str()), "{case}");
                assert_eq!(result.request["headers"][name], json!(REDACTED), "{case}");
            }
            Seen::Query(name) => {
                let sent = request
                    .url
                    .query_pairs()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned());
                assert_eq!(sent.as_deref(), Some(secret), "{case}");
                let shown = url::Url::parse(result.request["url"].as_str().expect("url"))
                    .expect("stored url parses");
                let shown_key = shown.query_pairs().find(|(k, _)| k == name);
                assert_eq!(
                    shown_key.map(|(_, v)| v.into_owned()),
                    Some(REDACTED.to_owned()),
                    "{case}"
                );
            }
            Seen::Body => {
                let sent = String::from_utf8(request.body.clone()).expect("utf-8");
                let decoded: Vec<String> = url::form_urlencoded::parse(sent.as_bytes())
                    .map(|(_, v)| v.into_owned())
                    .collect();
                assert!(
                    sent.contains(secret) || decoded.iter().any(|v| v == secret),
                    "{case}: the server got {sent}"
                );
            }
        }
    }
}

#[tokio::test]
async fn private_destinations_are_refused_by_default() {
    let server = server_ok().await;
    let port = server.address().port();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://127.1.2.3:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ] {
        let step = step(json!({"method": "GET", "url": url}));

        let result = run_with(
            HttpConfig::default(),
            &step,
            json!({}),
            &Credentials::new(),
            TIMEOUT,
        )
        .await;

        assert_eq!(
            error_of(&result),
            (StepErrorKind::NetworkPolicy, Retry::Fatal),
            "{url}: {:?}",
            result.error
        );
        assert!(result.response.is_none(), "{url}");
    }
    assert_eq!(
        request_count(&server).await,
        0,
        "nothing reached the server"
    );

    // The same server is reachable once private networks are allowed.
    let step = step(json!({"method": "GET", "url": format!("http://localhost:{port}/")}));
    assert_ok(&run(&step, json!({}), &Credentials::new()).await);
    assert_eq!(request_count(&server).await, 1);
}

#[tokio::test]
async fn url_values_are_percent_encoded_as_components() {
    let server = server_ok().await;
    let port = server.address().port();
    let step = step(json!({
        "method": "GET",
        "url": format!("http://127.0.0.1:{port}/users/<<input.id>>"),
        "query": {"q": "<<input.q>>"},
    }));

    let result = run(
        &step,
        json!({"id": "a/b c", "q": "x&y=1"}),
        &Credentials::new(),
    )
    .await;

    assert_ok(&result);
    let request = only_request(&server).await;
    assert_eq!(request.url.path(), "/users/a%2Fb%20c");
    assert_eq!(request.url.query(), Some("q=x%26y%3D1"));
    assert_eq!(
        result.request["url"],
        json!(format!(
            "http://127.0.0.1:{port}/users/a%2Fb%20c?q=x%26y%3D1"
        ))
    );
}

#[tokio::test]
async fn header_values_with_line_breaks_are_refused_unsent() {
    let server = server_ok().await;
    for injected in ["ok\r\nX-Injected: 1", "ok\nX-Injected: 1", "ok\r"] {
        let step = step(json!({
            "method": "GET",
            "url": format!("{}/x", server.uri()),
            "headers": {"X-Note": "note <<input.note>>"},
        }));

        let result = run(&step, json!({"note": injected}), &Credentials::new()).await;

        assert_eq!(
            error_of(&result),
            (StepErrorKind::Render, Retry::Fatal),
            "{injected:?}"
        );
        let message = &result.error.as_ref().expect("error").message;
        assert!(message.contains("headers.X-Note"), "{message}");
        assert!(!message.contains("X-Injected"), "values are not quoted");
    }
    assert_eq!(request_count(&server).await, 0, "nothing is sent");
}

#[tokio::test]
async fn framing_and_hop_by_hop_headers_are_refused_unsent() {
    let server = server_ok().await;
    let url = format!("{}/x", server.uri());
    let credentials = creds(&[("crm", "key", SECRET)]);
    for (headers, auth, field) in [
        (
            json!({"Host": "internal.test"}),
            json!({"type": "none"}),
            "headers.Host",
        ),
        (
            json!({"Content-Length": "0"}),
            json!({"type": "none"}),
            "headers.Content-Length",
        ),
        (
            json!({"transfer-encoding": "chunked"}),
            json!({"type": "none"}),
            "headers.transfer-encoding",
        ),
        (
            json!({"Connection": "close"}),
            json!({"type": "none"}),
            "headers.Connection",
        ),
        (
            json!({"Upgrade": "h2c"}),
            json!({"type": "none"}),
            "headers.Upgrade",
        ),
        (
            json!({}),
            json!({"type": "api_key", "credential": "crm", "in": "header", "name": "Host"}),
            "auth.name",
        ),
    ] {
        let step = step(json!({"method": "GET", "url": url, "headers": headers, "auth": auth}));

        let result = run(&step, json!({}), &credentials).await;

        assert_eq!(
            error_of(&result),
            (StepErrorKind::NetworkPolicy, Retry::Fatal),
            "{field}"
        );
        let message = &result.error.as_ref().expect("error").message;
        assert!(message.starts_with(field), "{message}");
        assert!(!message.contains(SECRET), "{message}");
    }
    assert_eq!(request_count(&server).await, 0, "nothing is sent");
}

#[tokio::test]
async fn idempotency_key_is_sent_unless_the_step_sets_its_own() {
    let cases = [
        (json!({}), KEY.to_owned()),
        (
            json!({"Idempotency-Key": "own-<<input.order>>"}),
            "own-o_9".to_owned(),
        ),
        (
            json!({"idempotency-key": "lower-<<input.order>>"}),
            "lower-o_9".to_owned(),
        ),
    ];
    for (headers, expected) in cases {
        let server = server_ok().await;
        let step = step(json!({
            "method": "POST",
            "url": format!("{}/orders", server.uri()),
            "headers": headers,
        }));

        let result = run(&step, json!({"order": "o_9"}), &Credentials::new()).await;

        assert_ok(&result);
        let request = only_request(&server).await;
        let sent: Vec<&str> = request
            .headers
            .get_all("idempotency-key")
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect();
        assert_eq!(sent, vec![expected.as_str()], "{headers}");
        assert_eq!(
            result.request["headers"]["idempotency-key"],
            json!(expected),
            "{headers}"
        );
    }
}

#[tokio::test]
async fn large_bodies_are_stored_truncated_but_extracted_whole() {
    let server = MockServer::start().await;
    let padding = "x".repeat(100 - r#"{"pad":"","id":"tail"}"#.len());
    let body = format!(r#"{{"pad":"{padding}","id":"tail"}}"#);
    assert_eq!(body.len(), 100);
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_raw(body.clone(), "application/json"))
        .mount(&server)
        .await;
    let step = step(json!({
        "method": "GET",
        "url": format!("{}/big", server.uri()),
        "extract": {"id": {"path": "$.id", "required": true}},
    }));
    let config = HttpConfig {
        allow_private_networks: true,
        max_stored_body_bytes: 16,
        ..HttpConfig::default()
    };

    let result = run_with(config, &step, json!({}), &Credentials::new(), TIMEOUT).await;

    assert_ok(&result);
    let stored = &result.response.as_ref().expect("response").body;
    assert_eq!(stored["truncated"], json!(true));
    assert_eq!(stored["original_size"], json!(100));
    // The preview is the start of the original bytes.
    assert_eq!(stored["preview"], json!(&body[..16]));
    assert_eq!(result.extracted["id"], json!("tail"));
    assert_eq!(result.context_entry()["body"], *stored);
}

#[tokio::test]
async fn bodies_beyond_the_read_limit_fail_the_step() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_string("y".repeat(100)))
        .mount(&server)
        .await;
    let step = step(json!({"method": "GET", "url": format!("{}/big", server.uri())}));
    let limited = |max_response_bytes| HttpConfig {
        allow_private_networks: true,
        max_response_bytes,
        ..HttpConfig::default()
    };

    let result = run_with(limited(50), &step, json!({}), &Credentials::new(), TIMEOUT).await;

    assert_eq!(
        error_of(&result),
        (StepErrorKind::ResponseTooLarge, Retry::Fatal)
    );
    assert!(result.response.is_none());

    let result = run_with(limited(100), &step, json!({}), &Credentials::new(), TIMEOUT).await;
    assert_ok(&result);
    assert_eq!(
        result.response.as_ref().map(|r| r.body.clone()),
        Some(json!("y".repeat(100)))
    );
}

#[tokio::test]
async fn query_map_and_query_api_key_extend_the_url_query() {
    // The query map and the api key share one query string without clobbering.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(query_param("q", "x&y=1"))
        .and(query_param("api_key", "k 1"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let step = step(json!({
        "method": "GET",
        "url": format!("{}/search?fixed=1", server.uri()),
        "query": {"q": "<<input.q>>"},
        "auth": {"type": "api_key", "credential": "c", "in": "query", "name": "api_key"},
    }));

    let result = run(&step, json!({"q": "x&y=1"}), &creds(&[("c", "key", "k 1")])).await;

    assert_ok(&result);
    let request = only_request(&server).await;
    assert_eq!(request.url.query(), Some("fixed=1&q=x%26y%3D1&api_key=k+1"));
}

async fn redirecting_pair() -> (MockServer, MockServer) {
    let target = server_ok().await;
    let origin = MockServer::start().await;
    Mock::given(any())
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("Location", format!("{}/landing", target.uri()).as_str()),
        )
        .mount(&origin)
        .await;
    (origin, target)
}

#[tokio::test]
async fn redirects_to_another_origin_are_not_followed() {
    let (origin, target) = redirecting_pair().await;
    let step = step(json!({
        "method": "GET",
        "url": format!("{}/start", origin.uri()),
        "auth": {"type": "bearer", "credential": "c"},
        "expect": [302],
    }));

    let result = run(&step, json!({}), &creds(&[("c", "token", SECRET)])).await;

    assert_ok(&result);
    assert_eq!(result.response.as_ref().map(|r| r.status), Some(302));
    let first = only_request(&origin).await;
    assert_eq!(
        header_of(&first, "authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(
        request_count(&target).await,
        0,
        "the other origin got a request"
    );
}

#[tokio::test]
async fn redirect_to_another_origin_carries_no_api_key() {
    let mut leaks = Vec::new();
    for location in ["header", "query"] {
        let (origin, target) = redirecting_pair().await;
        let step = step(json!({
            "method": "GET",
            "url": format!("{}/start", origin.uri()),
            "auth": {"type": "api_key", "credential": "c", "in": location, "name": "X-Api-Key"},
        }));

        let result = run(&step, json!({}), &creds(&[("c", "key", SECRET)])).await;

        assert_eq!(request_count(&origin).await, 1, "{location}");
        let landed = server_requests_text(&target).await;
        if result.error.is_none() && landed.contains(SECRET) {
            leaks.push(format!("api key in {location}: {landed}"));
        }
    }
    assert!(leaks.is_empty(), "{leaks:#?}");
}

async fn server_requests_text(server: &MockServer) -> String {
    server
        .received_requests()
        .await
        .expect("recording on")
        .iter()
        .map(|r| {
            format!(
                "{} {:?} {}",
                r.url,
                r.headers,
                String::from_utf8_lossy(&r.body)
            )
        })
        .collect()
}

#[tokio::test]
async fn secrets_are_redacted_in_url_paths_and_xml_bodies() {
    let secret = "sk-live PLANTED<&>";
    let mut leaks = Vec::new();
    for (url, body) in [
        ("/t/<<credentials.c.token>>", Value::Null),
        (
            "/x",
            json!({"type": "xml", "content": "<t><<credentials.c.token>></t>"}),
        ),
    ] {
        let server = server_ok().await;
        let mut step_json = json!({"method": "POST", "url": format!("{}{url}", server.uri())});
        if !body.is_null() {
            step_json["body"] = body;
        }

        let result = run(
            &step(step_json),
            json!({}),
            &creds(&[("c", "token", secret)]),
        )
        .await;

        assert_ok(&result);
        assert_eq!(request_count(&server).await, 1);
        let shown = result.request.to_string();
        if shown.contains("PLANTED") {
            leaks.push(shown);
        }
    }
    assert!(leaks.is_empty(), "{leaks:#?}");
}

#[tokio::test]
async fn an_attempt_counts_the_body_bytes_it_sent_and_received() {
    let server = MockServer::start().await;
    let reply = "x".repeat(1234);
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_string(reply.clone()))
        .mount(&server)
        .await;
    let s = step(
        json!({"method": "POST", "url": format!("{}/items", server.uri()),
                        "body": {"type": "raw", "content_type": "text/plain", "content": "<<input.text>>"}}),
    );
    let result = run(&s, json!({"text": "héllo"}), &Credentials::new()).await;
    assert!(result.error.is_none(), "{:?}", result.error);
    let sent = only_request(&server).await.body.len();
    assert_eq!(sent, "héllo".len());
    assert_eq!(result.traffic.sent, sent as u64);
    assert_eq!(result.traffic.received, reply.len() as u64);

    // Nothing is sent to an unreachable address, and nothing comes back.
    let closed = TcpListener::bind("127.0.0.1:0").expect("port");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let s = step(json!({"method": "GET", "url": format!("http://127.0.0.1:{port}/")}));
    let result = run(&s, json!({}), &Credentials::new()).await;
    assert!(result.error.is_some());
    assert_eq!(result.traffic.sent, 0);
    assert_eq!(result.traffic.received, 0);
}
