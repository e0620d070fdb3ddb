//! Property tests over untrusted input: the connector validator, the
//! JSONPath evaluator, the template renderer through the step runner,
//! response handling against a real loopback server, and inbound webhook
//! signature headers. Each holds for every
//! generated case: no panic, bounded output, and no secret in anything a
//! step result stores.

use std::time::Duration;

use chrono::Utc;
use conveyor_engine::connector::{self, Step, placement};
use conveyor_engine::extract::Query;
use conveyor_engine::http::{HttpConfig, StepClient, StepResult, retry_after};
use conveyor_engine::redact::Credentials;
use conveyor_engine::template::Renderer;
use proptest::prelude::*;
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const SECRET: &str = "Sx9Kq2Lm7Zp4Wt8";
/// Stands for the loopback server's address in generated steps.
const STUB: &str = "http://stub.test";

/// Template fragments mixing literals, inputs, settings and credentials
/// with filters, slices and operators.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("<<credentials.c.token>>".to_owned()),
        Just("<<credentials.c.token | reverse>>".to_owned()),
        Just("<<credentials.c.token[1:]>>".to_owned()),
        Just("<<credentials.c.token | upper>>".to_owned()),
        Just("<<credentials.c.token ~ input.a>>".to_owned()),
        Just("<<credentials.c>>".to_owned()),
        Just("<<credentials | tojson>>".to_owned()),
        Just("<<'>>' ~ credentials.c.token | reverse>>".to_owned()),
        Just("<<credentials['c'].token | list | join(',')>>".to_owned()),
        Just("<<input.a>>".to_owned()),
        Just("<<input.a | default('x')>>".to_owned()),
        Just("<<settings.base>>".to_owned()),
        Just("Bearer ".to_owned()),
        Just("/".to_owned()),
        Just("@".to_owned()),
        Just("?q=".to_owned()),
        "[a-z]{1,4}",
    ]
}

fn template() -> impl Strategy<Value = String> {
    prop::collection::vec(fragment(), 1..4).prop_map(|parts| parts.concat())
}

/// A step definition with templates in every position.
fn step_json(base: String) -> impl Strategy<Value = Value> {
    (
        template(),
        template(),
        template(),
        template(),
        template(),
        any::<bool>(),
    )
        .prop_map(move |(path, header, query, leaf, key, form)| {
            let body = if form {
                json!({"type": "form", "content": {"f": leaf}})
            } else {
                let mut content = serde_json::Map::new();
                content.insert("leaf".to_owned(), json!(leaf));
                content.insert(key, json!(1));
                json!({"type": "json", "content": content})
            };
            json!({"name": "s", "method": "POST", "url": format!("{base}/{path}"),
                   "headers": {"X-H": header}, "query": {"q": query}, "body": body})
        })
}

/// Answers by echoing what it received, as a careless provider would.
struct Echo;

impl Respond for Echo {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let headers: serde_json::Map<String, Value> = request
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    json!(String::from_utf8_lossy(v.as_bytes())),
                )
            })
            .collect();
        ResponseTemplate::new(200).set_body_json(json!({
            "url": request.url.as_str(),
            "headers": headers,
            "body": String::from_utf8_lossy(&request.body),
        }))
    }
}

fn stored(result: &StepResult) -> String {
    let response = result
        .response
        .as_ref()
        .map(|r| json!({"status": r.status, "headers": r.headers, "body": r.body}));
    json!({
        "request": result.request,
        "response": response,
        "extracted": result.extracted,
        "error": result.error,
    })
    .to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn credentials() -> Credentials {
    let mut c = Credentials::new();
    c.entry("c".to_owned())
        .or_default()
        .insert("token".to_owned(), SECRET.to_owned());
    c
}

fn context() -> Value {
    json!({"input": {"a": "in"}, "steps": {}, "execution": {"id": "e", "attempt": 1},
           "connector": {"id": "c"}, "workspace": {"id": "w"}, "settings": {"base": "set"}})
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Whatever a connector author writes, a connector the validator accepts
    /// never stores its secret, in any form, even when the provider echoes
    /// the whole request back.
    #[test]
    fn an_accepted_step_never_stores_a_secret(
        definitions in prop::collection::vec(step_json(STUB.to_owned()), 1..4),
    ) {
        let rt = runtime();
        let server = rt.block_on(async {
            let server = MockServer::start().await;
            Mock::given(wiremock::matchers::any()).respond_with(Echo).mount(&server).await;
            server
        });
        for mut definition in definitions {
            let url = definition["url"].as_str().unwrap_or_default().replace(STUB, &server.uri());
            definition["url"] = json!(url);
            let connector = json!({"name": "f", "steps": [definition.clone()]});
            let Ok(valid) = connector::parse_and_validate(&connector) else {
                continue;
            };
            let step: &Step = &valid.steps[0];
            let client = StepClient::new(HttpConfig {
                allow_private_networks: true,
                ..HttpConfig::default()
            })
            .expect("client");
            let result = rt.block_on(client.run(
                step,
                &context(),
                &credentials(),
                "k",
                Duration::from_secs(10),
            ));
            let text = stored(&result);
            let reversed: String = SECRET.chars().rev().collect();
            for form in [SECRET.to_owned(), reversed, SECRET.to_uppercase(), SECRET[1..].to_owned()] {
                prop_assert!(!text.contains(&form), "{definition}\nstored: {text}");
            }
        }
    }

    /// The validator never panics, and whatever it accepts also passes the
    /// send-time placement check.
    #[test]
    fn the_validator_never_panics_and_agrees_with_send_time(
        steps in prop::collection::vec(step_json("https://api.example.com".into()), 1..3),
        output in template(),
    ) {
        let mut steps = steps;
        for (i, s) in steps.iter_mut().enumerate() {
            s["name"] = json!(format!("s{i}"));
        }
        let connector = json!({"name": "f", "steps": steps, "output": {"o": output}});
        match connector::parse_and_validate(&connector) {
            Ok(c) => {
                let renderer = Renderer::new();
                for step in &c.steps {
                    prop_assert!(placement::step_problems(&renderer, "step", step).is_empty());
                }
            }
            Err(errors) => prop_assert!(!errors.0.is_empty()),
        }
    }

    /// Arbitrary JSONPath text never panics the parser; an accepted query
    /// never panics on any document and returns a bounded number of nodes.
    #[test]
    fn jsonpath_never_panics_and_stays_bounded(
        path in prop_oneof![
            any::<String>(),
            "\\$(\\.\\.?\\*|\\[[0-9,:*-]{1,8}\\]|\\.[a-z]{1,3}|\\[\\?@[.a-z<>=0-9 ]{1,10}\\]){0,6}",
        ],
        doc in json_value(),
    ) {
        if let Ok(query) = Query::parse(&path) {
            let total = count_nodes(&doc);
            let nodes = query.nodes(&doc);
            // A union may name a node more than once, never more than the
            // selectors in the path allow.
            prop_assert!(nodes.len() <= total * (path.len() + 1), "{path}: {}", nodes.len());
            let _ = query.extract(&doc);
        }
    }

    /// `Retry-After` parsing never panics, whatever the header holds, and
    /// delay-seconds are read as exactly that many seconds.
    #[test]
    fn retry_after_never_panics(value in prop_oneof![any::<String>(), (0u64..1_000_000).prop_map(|n| format!(" {n} "))]) {
        let mut headers = reqwest::header::HeaderMap::new();
        let sendable = reqwest::header::HeaderValue::from_str(&value);
        if let Ok(v) = &sendable {
            headers.insert(reqwest::header::RETRY_AFTER, v.clone());
        }
        let parsed = retry_after(&headers, Utc::now());
        if sendable.is_err() {
            prop_assert_eq!(parsed, None);
        }
        if let (Ok(_), Ok(secs)) = (&sendable, value.trim().parse::<u64>()) {
            prop_assert_eq!(parsed, Some(Duration::from_secs(secs)));
        }
    }

    /// Any response (status, content type, bytes) is handled without a
    /// panic, and what is stored stays within the stored-body limit.
    #[test]
    fn any_response_is_handled_and_stored_within_bounds(
        status in prop_oneof![Just(200u16), Just(201), Just(204), Just(302), Just(404), Just(429), Just(500), 100u16..600],
        content_type in prop_oneof![Just("application/json"), Just("text/plain"), Just("application/xml"), Just("application/octet-stream")],
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2048),
            json_value().prop_map(|v| v.to_string().into_bytes()),
        ],
    ) {
        let rt = runtime();
        let max_stored = 256;
        let result = rt.block_on(async {
            let server = MockServer::start().await;
            Mock::given(wiremock::matchers::any())
                .respond_with(ResponseTemplate::new(status).set_body_raw(body.clone(), content_type))
                .mount(&server)
                .await;
            let step: Step = serde_json::from_value(json!({
                "name": "s", "method": "GET", "url": format!("{}/x", server.uri()),
                "extract": {"a": "$.a", "all": "$..*"}}))
            .expect("step");
            let client = StepClient::new(HttpConfig {
                allow_private_networks: true,
                max_stored_body_bytes: max_stored,
                ..HttpConfig::default()
            })
            .expect("client");
            client.run(&step, &context(), &Credentials::new(), "k", Duration::from_secs(10)).await
        });
        if let Some(r) = &result.response {
            let stored = r.body.to_string().len();
            // The truncation marker adds its fields and a preview to the limit.
            prop_assert!(stored <= max_stored * 6 + 128, "stored {stored} bytes");
        }
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-c]{1,2}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// The property above sends only what the validator accepts; this is one
/// such step, checked to reach the provider with the secret and come back
/// without it.
#[tokio::test]
async fn an_echoing_provider_cannot_make_a_bare_credential_read_back() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(Echo)
        .mount(&server)
        .await;
    let connector = json!({"name": "f", "steps": [{"name": "s", "method": "POST",
        "url": format!("{}/bot<<credentials.c.token>>/x", server.uri()),
        "headers": {"X-H": "Bearer <<credentials.c.token>>"},
        "query": {"q": "<<credentials.c.token>>"},
        "body": {"type": "json", "content": {"t": "<<credentials.c.token>>"}}}]});
    let valid = connector::parse_and_validate(&connector).expect("accepted");
    let client = StepClient::new(HttpConfig {
        allow_private_networks: true,
        ..HttpConfig::default()
    })
    .expect("client");
    let result = client
        .run(
            &valid.steps[0],
            &context(),
            &credentials(),
            "k",
            Duration::from_secs(10),
        )
        .await;
    assert!(result.error.is_none(), "{:?}", result.error);
    let received = server.received_requests().await.expect("recorded");
    let sent = String::from_utf8_lossy(&received[0].body).into_owned();
    assert!(sent.contains(SECRET), "the provider got the secret: {sent}");
    let text = stored(&result);
    assert!(text.contains("REDACTED"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever headers a webhook sender makes up, every verification
    /// scheme answers without panicking, and a forged delivery (one not
    /// signed with the key) is never accepted by a scheme that verifies.
    #[test]
    fn webhook_signatures_from_anyone_never_panic_or_pass(
        value in "[ -~]{0,120}",
        timestamp in prop_oneof![Just("1700000000".to_owned()), "[0-9]{0,12}", "[ -~]{0,12}"],
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        use conveyor_engine::webhook::{self, Scheme, Settings};
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let settings = Settings {
            header: Some("X-Sig".to_owned()),
            ..Settings::default()
        };
        let header = |name: &str| {
            Some(if name.to_ascii_lowercase().contains("timestamp") {
                timestamp.clone()
            } else {
                value.clone()
            })
        };
        for scheme in [
            Scheme::Header, Scheme::HmacSha256, Scheme::Stripe, Scheme::Shopify,
            Scheme::Slack, Scheme::Github, Scheme::StandardWebhooks,
        ] {
            let verdict = webhook::verify(scheme, &settings, b"0123456789abcdef", &header, &body, now);
            // `header` compares the value with the key itself: only the key passes.
            if value != "0123456789abcdef" {
                prop_assert!(verdict.is_err(), "{scheme:?} accepted {value:?}");
            }
        }
    }
}
