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

fn unit(step: &Step, ctx: &mut Value, progress: &Progress) -> Unit {
    let each = step.for_each.clone().expect("for_each");
    next_unit(&each, step, &Renderer::new(), ctx, progress)
}

fn failure(unit: Unit) -> StepError {
    match unit {
        Unit::Settled(result) => result.error.expect("a failed step"),
        Unit::Item { .. } => panic!("an item is due"),
    }
}

fn done(extracted: Value) -> StepResult {
    let Value::Object(extracted) = extracted else {
        panic!("extracted must be an object");
    };
    StepResult {
        extracted,
        ..empty_result()
    }
}

#[test]
fn the_item_due_is_the_one_after_those_done() {
    let step = step(10);
    let mut ctx = ctx(json!(["a", "b", "c"]));
    assert_eq!(
        unit(&step, &mut ctx, &Progress::default()),
        Unit::Item {
            index: 0,
            value: json!("a"),
            total: 3
        }
    );
    let progress = Progress {
        done: 2,
        results: vec![Map::new(), Map::new()],
    };
    assert_eq!(
        unit(&step, &mut ctx, &progress),
        Unit::Item {
            index: 2,
            value: json!("c"),
            total: 3
        }
    );
}

#[test]
fn items_that_are_not_an_array_or_over_the_bound_fail_without_a_send() {
    let step = step(2);
    for (ids, needle) in [
        (json!("a,b"), "a string, not an array"),
        (json!({"a": 1}), "an object, not an array"),
        (json!(["a", "b", "c"]), "3 items, over max_items (2)"),
    ] {
        let error = failure(unit(&step, &mut ctx(ids.clone()), &Progress::default()));
        assert_eq!(error.kind, StepErrorKind::ForEach, "{ids}");
        assert_eq!(error.retry, Retry::Fatal, "{ids}");
        assert!(error.message.contains(needle), "{ids}: {}", error.message);
    }
    let missing = failure(unit(&step, &mut json!({"steps": {}}), &Progress::default()));
    assert_eq!(missing.kind, StepErrorKind::ForEach);
    let at_bound = unit(&step, &mut ctx(json!(["a", "b"])), &Progress::default());
    assert!(
        matches!(at_bound, Unit::Item { total: 2, .. }),
        "{at_bound:?}"
    );
}

#[test]
fn no_items_settle_the_step_with_empty_arrays() {
    let step = step(10);
    let mut ctx = ctx(json!([]));
    let Unit::Settled(result) = unit(&step, &mut ctx, &Progress::default()) else {
        panic!("nothing is due");
    };
    assert_eq!(result.error, None);
    assert_eq!(Value::Object(result.extracted), json!({"id": [], "ok": []}));
    assert_eq!(ctx["looped"]["send"], json!({"items": 0}));
}

#[test]
fn items_are_collected_per_field_in_item_order_with_null_for_nothing() {
    let step = step(10);
    let mut ctx = json!({"steps": {}});
    let mut first = done(json!({"id": 1, "ok": true}));
    let progress = settle(&step, Progress::default(), 3, &mut first, &mut ctx).expect("more");
    assert_eq!(progress.done, 1);
    assert_eq!(
        Value::Object(first.extracted),
        json!({"id": 1, "ok": true}),
        "an item that another follows keeps its own fields"
    );
    let mut second = done(json!({"id": 2}));
    let progress = settle(&step, progress, 3, &mut second, &mut ctx).expect("more");
    assert_eq!(ctx.get("looped"), None, "no summary before the last item");
    let stored = json!({"steps": {}, "for_each": {"send": progress.to_json()}});
    let resumed = Progress::stored(&stored, "send");
    assert_eq!(resumed, progress);
    let mut last = done(json!({"id": 3, "ok": false}));
    assert_eq!(settle(&step, resumed, 3, &mut last, &mut ctx), None);
    assert_eq!(
        Value::Object(last.extracted),
        json!({"id": [1, 2, 3], "ok": [true, null, false]})
    );
    assert_eq!(ctx["looped"]["send"], json!({"items": 3}));
}

#[test]
fn unreadable_stored_progress_starts_at_the_first_item() {
    let stored = json!({"for_each": {"send": {"done": "three"}}});
    assert_eq!(Progress::stored(&stored, "send"), Progress::default());
    assert_eq!(Progress::stored(&json!({}), "send"), Progress::default());
}
