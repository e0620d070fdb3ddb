use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::*;
use crate::connector::Step;

fn step(max_items: u32) -> Step {
    serde_json::from_value(json!({
        "name": "send", "method": "POST", "url": "https://api.test/items/<<item>>",
        "extract": {"id": "$.id", "ok": "$.ok"},
        "for_each": {"items": "<<steps.list.extract.ids>>", "max_items": max_items}
    }))
    .expect("step")
}

fn ctx(ids: Value) -> Value {
    json!({"steps": {"list": {"extract": {"ids": ids}}}})
}

fn render(step: &Step, ctx: &Value) -> Result<Vec<Value>, Box<StepResult>> {
    let each = step.for_each.clone().expect("for_each");
    items(&each, &Renderer::new(), ctx)
}

fn fields(value: Value) -> Map<String, Value> {
    let Value::Object(map) = value else {
        panic!("fields must be an object");
    };
    map
}

#[test]
fn the_next_item_due_is_the_lowest_neither_finished_nor_in_flight() {
    let mut progress = Progress::default();
    let none = BTreeSet::new();
    assert_eq!(progress.next_due(3, &none), Some(0));
    progress.succeed(0, Map::new());
    progress.fail(2, json!({"kind": "http_status"}));
    assert_eq!(progress.next_due(3, &none), Some(1));
    assert_eq!(progress.next_due(3, &BTreeSet::from([1])), None);
    assert_eq!(progress.done(), 2);
    assert!(progress.is_finished(2) && !progress.is_finished(1));
}

#[test]
fn a_pending_retry_keeps_its_attempt_until_the_item_finishes() {
    let mut progress = Progress::default();
    assert_eq!(
        progress.due(4),
        Due {
            attempt: 1,
            throttled: 0
        }
    );
    let due = Due {
        attempt: 3,
        throttled: 1,
    };
    progress.retries.insert(4, due);
    let stored = json!({"steps": {}, "for_each": {"send": progress.to_json()}});
    let resumed = Progress::stored(&stored, "send");
    assert_eq!(resumed.due(4), due, "the attempt survives a resume");
    let mut resumed = resumed;
    resumed.succeed(4, Map::new());
    assert!(resumed.retries.is_empty());
}

#[test]
fn items_that_are_not_an_array_or_over_the_bound_fail_without_a_send() {
    let step = step(2);
    for (ids, needle) in [
        (json!("a,b"), "a string, not an array"),
        (json!({"a": 1}), "an object, not an array"),
        (json!(["a", "b", "c"]), "3 items, over max_items (2)"),
    ] {
        let error = render(&step, &ctx(ids.clone()))
            .expect_err("refused")
            .error
            .expect("an error");
        assert_eq!(error.kind, StepErrorKind::ForEach, "{ids}");
        assert_eq!(error.retry, Retry::Fatal, "{ids}");
        assert!(error.message.contains(needle), "{ids}: {}", error.message);
    }
    let missing = render(&step, &json!({"steps": {}})).expect_err("refused");
    assert_eq!(missing.error.map(|e| e.kind), Some(StepErrorKind::ForEach));
    let at_bound = render(&step, &ctx(json!(["a", "b"]))).expect("items");
    assert_eq!(at_bound, [json!("a"), json!("b")]);
}

#[test]
fn fields_are_collected_in_item_order_whatever_order_items_finished_in() {
    let step = step(10);
    let mut progress = Progress::default();
    progress.succeed(2, fields(json!({"id": 3, "ok": false})));
    progress.fail(1, json!({"kind": "http_status", "status": 500}));
    progress.succeed(0, fields(json!({"id": 1})));
    let stored = json!({"for_each": {"send": progress.to_json()}});
    let progress = Progress::stored(&stored, "send");
    assert_eq!(
        Value::Object(collect(&step, &progress, 4)),
        json!({"id": [1, null, 3, null], "ok": [null, null, false, null]}),
        "a failed item and an item not run read as null"
    );
    assert_eq!(summary(&progress, 4), json!({"items": 4, "failed": [1]}));
    assert_eq!(
        first_failure(&progress),
        Some(json!({"kind": "http_status", "status": 500}))
    );
}

#[test]
fn no_items_collect_empty_arrays() {
    let step = step(10);
    let progress = Progress::default();
    assert_eq!(
        Value::Object(collect(&step, &progress, 0)),
        json!({"id": [], "ok": []})
    );
    assert_eq!(summary(&progress, 0), json!({"items": 0, "failed": []}));
    assert_eq!(first_failure(&progress), None);
}

#[test]
fn unreadable_stored_progress_starts_with_no_item_finished() {
    let stored = json!({"for_each": {"send": {"finished": "three"}}});
    assert_eq!(Progress::stored(&stored, "send"), Progress::default());
    assert_eq!(Progress::stored(&json!({}), "send"), Progress::default());
}
