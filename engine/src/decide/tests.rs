use serde_json::Map;

use super::*;
use crate::http::{ResponseRecord, StepError, Traffic};

const SECOND: Duration = Duration::from_secs(1);

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .expect("date")
        .with_timezone(&Utc)
}

/// Two steps (`a` then `b`), 3 attempts of 1 s, 2 s, ... each.
fn connector(extra: Value) -> Connector {
    let mut def = json!({
        "name": "c",
        "steps": [
            {"name": "a", "method": "GET", "url": "https://x.test/a"},
            {"name": "b", "method": "GET", "url": "https://x.test/b"},
        ],
        "retry": {"max_attempts": 3, "initial_delay_ms": 1000, "max_delay_ms": 60000, "multiplier": 2.0},
    });
    if let (Some(def), Some(extra)) = (def.as_object_mut(), extra.as_object()) {
        def.extend(extra.clone());
    }
    serde_json::from_value(def).expect("connector")
}

fn ok(status: u16, extracted: Value) -> StepResult {
    StepResult {
        request: json!({"method": "GET", "url": "https://x.test/a"}),
        response: Some(ResponseRecord {
            status,
            headers: Map::new(),
            body: json!({"ok": true}),
        }),
        extracted: extracted.as_object().cloned().unwrap_or_default(),
        started_at: now(),
        duration_ms: 5,
        error: None,
        traffic: Traffic::default(),
    }
}

fn failed(status: Option<u16>, kind: StepErrorKind, retry: Retry) -> StepResult {
    let mut result = ok(status.unwrap_or(0), json!({}));
    if status.is_none() {
        result.response = None;
    }
    result.error = Some(StepError {
        kind,
        message: "boom".to_owned(),
        retry,
    });
    result
}

/// What a case expects after the step outcome.
enum Want {
    /// Exactly this next state.
    Next(Next),
    /// A failure stored as exactly this JSON.
    Error(Value),
    /// A failure of the `output` template.
    OutputError,
}

struct Case {
    name: &'static str,
    connector: Connector,
    index: usize,
    attempt: u32,
    result: StepResult,
    deadline: DateTime<Utc>,
    max_context_bytes: usize,
    outcome: StepOutcome,
    want: Want,
}

fn case(name: &'static str, index: usize, attempt: u32, result: StepResult) -> Case {
    Case {
        name,
        connector: connector(json!({})),
        index,
        attempt,
        result,
        deadline: now() + Duration::from_secs(300),
        max_context_bytes: 1024 * 1024,
        outcome: StepOutcome::Failed,
        want: Want::OutputError,
    }
}

fn step_error(kind: StepErrorKind, message: &str, attempt: u32, status: Option<u16>) -> Value {
    json!({"step": "a", "step_index": 0, "attempt": attempt, "kind": kind, "message": message, "status": status})
}

#[test]
fn every_branch_decides_as_the_table_says() {
    let a_entry = json!({"status": 200, "headers": {}, "body": {"ok": true}, "extract": {"id": 7}});
    let b_entry = json!({"status": 200, "headers": {}, "body": {"ok": true}, "extract": {"n": 1}});
    let cases = [
        Case {
            outcome: StepOutcome::Succeeded,
            want: Want::Next(Next::Continue {
                context: json!({"steps": {"a": a_entry}}),
                next_step: 1,
            }),
            ..case(
                "success before the last step continues",
                0,
                1,
                ok(200, json!({"id": 7})),
            )
        },
        Case {
            outcome: StepOutcome::Succeeded,
            want: Want::Next(Next::Succeed {
                context: json!({"steps": {"b": b_entry}}),
                output: json!({"b": {"n": 1}}),
            }),
            ..case(
                "success of the last step renders the output",
                1,
                1,
                ok(200, json!({"n": 1})),
            )
        },
        Case {
            outcome: StepOutcome::RetryScheduled,
            want: Want::Next(Next::Retry {
                run_at: now() + SECOND,
                attempt: 2,
                throttled: false,
            }),
            ..case(
                "a retryable failure with attempts left is retried after the backoff",
                0,
                1,
                failed(Some(503), StepErrorKind::HttpStatus, Retry::Retryable),
            )
        },
        Case {
            outcome: StepOutcome::RetryScheduled,
            want: Want::Next(Next::Retry {
                run_at: now() + 10 * SECOND,
                attempt: 3,
                throttled: false,
            }),
            ..case(
                "a longer Retry-After wins over the backoff",
                0,
                2,
                failed(
                    Some(429),
                    StepErrorKind::HttpStatus,
                    Retry::RetryAfter(10 * SECOND),
                ),
            )
        },
        Case {
            want: Want::Error(step_error(
                StepErrorKind::HttpStatus,
                "boom; gave up after 3 attempts",
                3,
                Some(500),
            )),
            ..case(
                "a retryable failure on the last attempt fails the execution",
                0,
                3,
                failed(Some(500), StepErrorKind::HttpStatus, Retry::Retryable),
            )
        },
        Case {
            deadline: now() + SECOND / 2,
            want: Want::Error(step_error(
                StepErrorKind::Connect,
                "boom; a retry would pass the run deadline",
                1,
                None,
            )),
            ..case(
                "a retry past the deadline fails the execution",
                0,
                1,
                failed(None, StepErrorKind::Connect, Retry::Retryable),
            )
        },
        Case {
            want: Want::Error(step_error(StepErrorKind::HttpStatus, "boom", 1, Some(404))),
            ..case(
                "a fatal failure fails at once",
                0,
                1,
                failed(Some(404), StepErrorKind::HttpStatus, Retry::Fatal),
            )
        },
        Case {
            max_context_bytes: 10,
            want: Want::Error(json!({
                "step": "a", "step_index": 0, "attempt": 1, "kind": "context_too_large",
                "message": "the execution context would grow to 81 bytes, over the 10 byte limit; extract fewer fields or lower the stored body size",
            })),
            ..case(
                "a context over the limit fails the execution",
                0,
                1,
                ok(200, json!({"id": 7})),
            )
        },
        Case {
            connector: connector(json!({"output": {"x": "<<steps.missing.body>>"}})),
            ..case(
                "an output template that fails to render fails the execution",
                1,
                1,
                ok(200, json!({})),
            )
        },
    ];
    let renderer = Renderer::new();
    for c in cases {
        let policy = Policy {
            renderer: &renderer,
            max_context_bytes: c.max_context_bytes,
            max_retry_after: Duration::from_secs(3600),
        };
        let attempt = StepAttempt {
            connector: &c.connector,
            index: c.index,
            attempt: c.attempt,
            throttled: 0,
            result: &c.result,
            deadline: c.deadline,
        };
        let mut ctx = json!({"steps": {}});
        let got = decide(&attempt, &mut ctx, &policy, now(), || 0.0);
        assert_eq!(got.outcome, c.outcome, "{}", c.name);
        match (c.want, got.next) {
            (Want::Next(want), next) => assert_eq!(next, want, "{}", c.name),
            (Want::Error(want), Next::Fail(error)) => {
                assert_eq!(error.to_json(), want, "{}", c.name)
            }
            (Want::OutputError, Next::Fail(error)) => {
                assert_eq!(
                    error.kind,
                    ErrorKind::Run(RunErrorKind::Output),
                    "{}",
                    c.name
                );
                assert!(error.message.starts_with("output: "), "{}", c.name);
            }
            (_, next) => panic!("{}: expected a failure, got {next:?}", c.name),
        }
    }
}

#[test]
fn a_continuing_failure_records_its_error_and_moves_on() {
    let renderer = Renderer::new();
    let policy = Policy {
        renderer: &renderer,
        max_context_bytes: 1024,
        max_retry_after: SECOND,
    };
    let connector = connector(json!({}));
    let mut connector_continue = connector.clone();
    connector_continue.steps[0].on_error = OnError::Continue;
    connector_continue.steps[1].on_error = OnError::Continue;
    let result = failed(Some(400), StepErrorKind::HttpStatus, Retry::Fatal);
    let mut ctx = json!({"steps": {}});
    let first = StepAttempt {
        connector: &connector_continue,
        index: 0,
        attempt: 1,
        throttled: 0,
        result: &result,
        deadline: now() + SECOND,
    };
    let got = decide(&first, &mut ctx, &policy, now(), || 0.0);
    assert_eq!(got.outcome, StepOutcome::Continued);
    let error = step_error(StepErrorKind::HttpStatus, "boom", 1, Some(400));
    assert_eq!(ctx["steps"]["a"]["error"], error);
    assert!(matches!(got.next, Next::Continue { next_step: 1, .. }));

    let last = StepAttempt { index: 1, ..first };
    let got = decide(&last, &mut ctx, &policy, now(), || 0.0);
    assert_eq!(got.outcome, StepOutcome::Continued);
    let Next::Succeed { output, .. } = got.next else {
        panic!("the last continuing step still succeeds the run");
    };
    assert_eq!(output, json!({"a": {}, "b": {}}));
}

#[test]
fn jitter_is_drawn_only_for_a_retry() {
    let renderer = Renderer::new();
    let policy = Policy {
        renderer: &renderer,
        max_context_bytes: 1024 * 1024,
        max_retry_after: SECOND,
    };
    let connector = connector(json!({}));
    let deadline = now() + Duration::from_secs(300);
    let retryable = failed(Some(503), StepErrorKind::HttpStatus, Retry::Retryable);
    let attempt = StepAttempt {
        connector: &connector,
        index: 0,
        attempt: 2,
        throttled: 0,
        result: &retryable,
        deadline,
    };
    let got = decide(&attempt, &mut json!({}), &policy, now(), || 0.5);
    let want = now() + Duration::from_millis(1_800);
    assert_eq!(
        got.next,
        Next::Retry {
            run_at: want,
            attempt: 3,
            throttled: false,
        }
    );
    let success = ok(200, json!({}));
    let attempt = StepAttempt {
        result: &success,
        ..attempt
    };
    let got = decide(&attempt, &mut json!({}), &policy, now(), || {
        panic!("no jitter without a retry")
    });
    assert_eq!(got.outcome, StepOutcome::Succeeded);
}

#[test]
fn the_deadline_ends_a_run_only_once_reached() {
    let connector = connector(json!({"timeout_ms": 1000}));
    let deadline = now() + SECOND;
    assert_eq!(deadline_passed(&connector, 1, now(), deadline), None);
    let error = deadline_passed(&connector, 1, deadline, deadline).expect("deadline");
    assert_eq!(
        error.to_json(),
        json!({"kind": "deadline", "step": "b", "step_index": 1, "message": "the run exceeded its timeout_ms of 1000 ms"})
    );
}

#[test]
fn output_renders_the_template_or_collects_extracted_fields() {
    let renderer = Renderer::new();
    let ctx = json!({"steps": {"a": {"extract": {"id": 7}}}, "input": {"n": 2}});
    let plain = connector(json!({}));
    assert_eq!(
        render_output(&plain, &renderer, &ctx),
        Ok(json!({"a": {"id": 7}}))
    );
    let templated =
        connector(json!({"output": {"id": "<<steps.a.extract.id>>", "n": "<<input.n>>"}}));
    assert_eq!(
        render_output(&templated, &renderer, &ctx),
        Ok(json!({"id": 7, "n": 2}))
    );
}

#[test]
fn execution_level_errors_name_only_their_kind_and_message() {
    for (kind, text) in [
        (RunErrorKind::Definition, "definition"),
        (RunErrorKind::Credential, "credential"),
        (RunErrorKind::Deadline, "deadline"),
        (RunErrorKind::Output, "output"),
        (RunErrorKind::ContextTooLarge, "context_too_large"),
        (RunErrorKind::Poisoned, "poisoned"),
    ] {
        assert_eq!(
            ExecutionError::run(kind, "m").to_json(),
            json!({"kind": text, "message": "m"})
        );
    }
}

#[test]
fn provider_rate_limit_signals_wait_without_spending_attempts() {
    let renderer = Renderer::new();
    let policy = Policy {
        renderer: &renderer,
        max_context_bytes: 1024 * 1024,
        max_retry_after: 3600 * SECOND,
    };
    let connector = connector(json!({}));
    let deadline = now() + Duration::from_secs(300);
    let with_headers = |status: u16, headers: Value| {
        let mut r = failed(Some(status), StepErrorKind::HttpStatus, Retry::Retryable);
        if let Some(response) = r.response.as_mut() {
            response.headers = headers.as_object().cloned().unwrap_or_default();
        }
        r
    };
    let cases = [
        // 429 with an HTTP-date Retry-After on the 5th attempt of a policy of
        // 3: the provider's wait, not charged.
        (
            with_headers(429, json!({"retry-after": "Thu, 01 Jan 2026 00:00:30 GMT"})),
            5,
            4,
            Some(Next::Retry {
                run_at: now() + 30 * SECOND,
                attempt: 6,
                throttled: true,
            }),
        ),
        (
            with_headers(
                503,
                json!({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "20"}),
            ),
            1,
            0,
            Some(Next::Retry {
                run_at: now() + 20 * SECOND,
                attempt: 2,
                throttled: true,
            }),
        ),
        // Past the deadline: the run fails.
        (with_headers(429, json!({"retry-after": "400"})), 1, 0, None),
        // Without a signal a 429 is an ordinary retry; two earlier throttled
        // attempts leave this third one the second counted.
        (
            with_headers(429, json!({})),
            3,
            2,
            Some(Next::Retry {
                run_at: now() + SECOND,
                attempt: 4,
                throttled: false,
            }),
        ),
        // A 500 with Retry-After is no rate-limit signal: charged, and the
        // policy's 3 attempts are spent.
        (with_headers(500, json!({"retry-after": "5"})), 3, 0, None),
    ];
    for (result, attempt, throttled, want) in cases {
        let step = StepAttempt {
            connector: &connector,
            index: 0,
            attempt,
            throttled,
            result: &result,
            deadline,
        };
        let got = decide(&step, &mut json!({}), &policy, now(), || 0.0);
        match want {
            Some(next) => assert_eq!(got.next, next, "attempt {attempt}"),
            None => assert!(
                matches!(got.next, Next::Fail(_)),
                "attempt {attempt}: {got:?}"
            ),
        }
    }
}

#[test]
fn a_page_with_another_to_follow_continues_at_the_same_step_with_its_progress() {
    let renderer = Renderer::new();
    let policy = Policy {
        renderer: &renderer,
        max_context_bytes: 200,
        max_retry_after: SECOND,
    };
    let connector = connector(json!({}));
    let ctx = json!({"input": {"big": "not persisted"}, "steps": {}});
    let progress = json!({"pages": 1, "next": "c2"});
    let got = next_page(
        &connector,
        (0, 2),
        &ctx,
        ("paging", progress.clone()),
        &policy,
    );
    assert_eq!(got.outcome, StepOutcome::Succeeded);
    assert_eq!(
        got.next,
        Next::Continue {
            context: json!({"steps": {}, "paging": {"a": progress}}),
            next_step: 0,
        }
    );

    let grown = json!({"pages": 1, "extract": {"ids": vec![1; 200]}});
    let got = next_page(&connector, (0, 2), &ctx, ("paging", grown), &policy);
    assert_eq!(got.outcome, StepOutcome::Failed);
    let Next::Fail(error) = got.next else {
        panic!("{:?}", got.next);
    };
    assert_eq!(error.kind, ErrorKind::Run(RunErrorKind::ContextTooLarge));
    assert_eq!(
        (error.step.as_deref(), error.step_index, error.attempt),
        (Some("a"), Some(0), Some(2))
    );
}

#[test]
fn the_last_page_s_paging_summary_goes_into_the_step_entry() {
    let renderer = Renderer::new();
    let policy = Policy {
        renderer: &renderer,
        max_context_bytes: 1024 * 1024,
        max_retry_after: SECOND,
    };
    let connector = connector(json!({}));
    let result = ok(200, json!({"ids": [1, 2, 3]}));
    let step = StepAttempt {
        connector: &connector,
        index: 0,
        attempt: 1,
        throttled: 0,
        result: &result,
        deadline: now() + Duration::from_secs(300),
    };
    let summary = json!({"pages": 2, "complete": true});
    let mut ctx = json!({"steps": {}, "paged": {"a": summary}});
    let got = decide(&step, &mut ctx, &policy, now(), || 0.0);
    let Next::Continue { context, .. } = got.next else {
        panic!("{:?}", got.next);
    };
    assert_eq!(context["steps"]["a"]["paging"], summary);
    assert_eq!(context["steps"]["a"]["extract"]["ids"], json!([1, 2, 3]));
    assert_eq!(ctx["paged"], json!({}), "the summary is moved, not copied");
}

#[test]
fn an_item_with_another_to_follow_stores_its_progress_under_for_each() {
    let renderer = Renderer::new();
    let policy = Policy {
        renderer: &renderer,
        max_context_bytes: 1024,
        max_retry_after: SECOND,
    };
    let connector = connector(json!({}));
    let ctx = json!({"steps": {}, "item": 7, "index": 0});
    let progress = json!({"done": 1, "results": [{"id": 7}]});
    let got = next_page(
        &connector,
        (0, 1),
        &ctx,
        ("for_each", progress.clone()),
        &policy,
    );
    assert_eq!(
        got.next,
        Next::Continue {
            context: json!({"steps": {}, "for_each": {"a": progress}}),
            next_step: 0,
        }
    );
}

#[test]
fn a_finished_loop_records_its_summary_and_first_failure_in_the_step_entry() {
    let renderer = Renderer::new();
    let policy = Policy {
        renderer: &renderer,
        max_context_bytes: 1024 * 1024,
        max_retry_after: SECOND,
    };
    let connector = connector(json!({}));
    let collected = ok(200, json!({"ids": [1, null]}));
    let summary = json!({"items": 2, "failed": [1]});
    let failure = json!({"kind": "http_status", "message": "HTTP 500", "step": "a"});
    let mut ctx = json!({"steps": {}});
    let got = finish_loop(
        &connector,
        (0, 1),
        (&collected, StepOutcome::Succeeded),
        (summary.clone(), Some(failure.clone())),
        &mut ctx,
        &policy,
    );
    assert_eq!(got.outcome, StepOutcome::Succeeded, "the row keeps its own");
    let Next::Continue { context, .. } = got.next else {
        panic!("{:?}", got.next);
    };
    let entry = &context["steps"]["a"];
    assert_eq!(entry["for_each"], summary);
    assert_eq!(entry["error"], failure);
    assert_eq!(entry["extract"], json!({"ids": [1, null]}));

    let mut ctx = json!({"steps": {}});
    let clean = json!({"items": 2, "failed": []});
    let got = finish_loop(
        &connector,
        (0, 1),
        (&collected, StepOutcome::Succeeded),
        (clean, None),
        &mut ctx,
        &policy,
    );
    let Next::Continue { context, .. } = got.next else {
        panic!("{:?}", got.next);
    };
    assert_eq!(context["steps"]["a"].get("error"), None);
}

#[test]
fn a_skipped_step_has_null_fields_in_the_context_and_moves_on() {
    let c = connector(json!({
        "steps": [
            {"name": "a", "method": "GET", "url": "https://x.test/a",
             "when": "<<false>>", "extract": {"id": "$.id"}},
            {"name": "b", "method": "GET", "url": "https://x.test/b", "when": "<<false>>"},
        ],
        "output": {"id": "<<steps.a.extract.id>>", "status": "<<steps.a.status>>"},
    }));
    let renderer = Renderer::new();
    let policy = Policy {
        renderer: &renderer,
        max_context_bytes: 1024 * 1024,
        max_retry_after: SECOND,
    };
    let mut ctx = json!({"steps": {}});
    let entry = json!({"status": null, "headers": {}, "body": null, "extract": {"id": null}});
    assert_eq!(
        skip(&c, 0, &mut ctx, &policy),
        Decision {
            outcome: StepOutcome::Skipped,
            next: Next::Continue {
                context: json!({"steps": {"a": entry}}),
                next_step: 1,
            },
        }
    );
    let last = skip(&c, 1, &mut ctx, &policy);
    assert_eq!(last.outcome, StepOutcome::Skipped);
    let Next::Succeed { output, .. } = last.next else {
        panic!("the last skipped step ends the run: {:?}", last.next);
    };
    assert_eq!(output, json!({"id": null, "status": null}));
}
