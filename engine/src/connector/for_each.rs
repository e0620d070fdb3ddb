//! The `for_each` field of a step and its save-time checks.
//!
//! A `for_each` step is sent once per item of an array, up to
//! `concurrency` items at once; `<<item>>` and `<<index>>` are in scope for
//! its templates, and its extracted fields are collected into arrays with
//! one entry per item, in item order (see [`crate::for_each`]).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Step;
use super::validate::ValidationError;
use crate::template::Renderer;

/// Items allowed when `max_items` is not given.
pub const DEFAULT_MAX_ITEMS: u32 = 100;
/// Largest `max_items`.
pub const MAX_ITEMS: u32 = 1_000;
/// Largest `concurrency`: items of one execution in flight at once.
pub const MAX_CONCURRENCY: u32 = 16;

/// Runs a step once per item of an array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForEach {
    /// A template that renders to the array of items
    /// (`<<steps.list.extract.ids>>`). It may not name credentials.
    #[schema(min_length = 1, example = "<<steps.list.extract.ids>>")]
    pub items: String,
    /// Items allowed at most (1 to 1,000; default 100). More items than
    /// that fail the step with the error kind `for_each` before any is
    /// sent; nothing is silently dropped.
    #[serde(default = "default_max_items")]
    #[schema(minimum = 1, maximum = 1_000)]
    pub max_items: u32,
    /// Items of one execution in flight at once (1 to 16; default 1, one
    /// item after another). Each item is still committed on its own and
    /// the fields are still collected in item order.
    #[serde(default = "default_concurrency")]
    #[schema(minimum = 1, maximum = 16)]
    pub concurrency: u32,
}

fn default_max_items() -> u32 {
    DEFAULT_MAX_ITEMS
}

fn default_concurrency() -> u32 {
    1
}

/// Every problem of the step's `for_each` that is not a template
/// reference (the validator checks those), with field paths.
pub(super) fn problems(renderer: &Renderer, path: &str, step: &Step) -> Vec<ValidationError> {
    let mut out = Vec::new();
    let Some(each) = &step.for_each else {
        return out;
    };
    let mut err = |field: &str, message: &str| {
        out.push(ValidationError {
            path: format!("{path}.{field}"),
            message: message.to_owned(),
        });
    };
    if step.paginate.is_some() {
        err(
            "for_each",
            "cannot be combined with paginate on the same step; page in an earlier step and loop over its extracted array",
        );
    }
    if !(1..=MAX_ITEMS).contains(&each.max_items) {
        err(
            "for_each.max_items",
            &format!("must be between 1 and {MAX_ITEMS}"),
        );
    }
    if !(1..=MAX_CONCURRENCY).contains(&each.concurrency) {
        err(
            "for_each.concurrency",
            &format!("must be between 1 and {MAX_CONCURRENCY}"),
        );
    }
    if each.items.trim().is_empty() {
        err("for_each.items", "must not be empty");
    } else if renderer
        .references(&each.items)
        .unwrap_or_default()
        .iter()
        .any(|r| r.split('.').next() == Some("credentials"))
    {
        err(
            "for_each.items",
            "must not name credentials: items are stored in the step rows",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::connector::parse_and_validate;

    fn problems(connector: &Value) -> Vec<(String, String)> {
        match parse_and_validate(connector) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    fn looped(for_each: Value, body: Value) -> Value {
        json!({"name": "each", "steps": [
            {"name": "list", "method": "GET", "url": "https://api.test/items",
             "extract": {"ids": "$.ids"}},
            {"name": "send", "method": "POST", "url": "https://api.test/items/<<item>>",
             "body": {"type": "json", "content": body}, "for_each": for_each,
             "extract": {"id": "$.id"}}],
            "output": {"ids": "<<steps.send.extract.id>>", "n": "<<steps.send.for_each.items>>"}})
    }

    #[test]
    fn a_loop_over_an_earlier_array_with_item_and_index_is_valid() {
        let each = json!({"items": "<<steps.list.extract.ids>>"});
        let body = json!({"id": "<<item>>", "position": "<<index>>"});
        assert_eq!(problems(&looped(each, body)), Vec::new());
        let bounded = json!({"items": "<<steps.list.extract.ids>>", "max_items": 1000});
        assert_eq!(problems(&looped(bounded, json!({}))), Vec::new());
        for concurrency in [1, 16] {
            let parallel =
                json!({"items": "<<steps.list.extract.ids>>", "concurrency": concurrency});
            assert_eq!(problems(&looped(parallel, json!({}))), Vec::new());
        }
    }

    #[test]
    fn bad_loops_are_refused_with_their_field_paths() {
        let ids = "<<steps.list.extract.ids>>";
        let cases = [
            (
                json!({"items": ids, "max_items": 0}),
                "steps[1].for_each.max_items",
            ),
            (
                json!({"items": ids, "max_items": 1001}),
                "steps[1].for_each.max_items",
            ),
            (
                json!({"items": ids, "concurrency": 0}),
                "steps[1].for_each.concurrency",
            ),
            (
                json!({"items": ids, "concurrency": 17}),
                "steps[1].for_each.concurrency",
            ),
            (json!({"items": " "}), "steps[1].for_each.items"),
            (
                json!({"items": "<<credentials.crm.token>>"}),
                "steps[1].for_each.items",
            ),
            (
                json!({"items": "<<steps.send.extract.id>>"}),
                "steps[1].for_each.items",
            ),
            (json!({"items": "<<item>>"}), "steps[1].for_each.items"),
        ];
        for (each, path) in cases {
            let got = problems(&looped(each.clone(), json!({})));
            assert!(
                got.iter().any(|(p, _)| p == path),
                "{each}: expected {path}, got {got:?}"
            );
        }
    }

    #[test]
    fn item_and_index_are_only_in_scope_of_a_loop() {
        let connector = json!({"name": "plain", "steps": [
            {"name": "one", "method": "POST", "url": "https://api.test/x",
             "body": {"type": "json", "content": {"id": "<<item.id>>", "at": "<<index>>"}}}]});
        let got = problems(&connector);
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&"steps[0].body.content.id"), "{got:?}");
        assert!(paths.contains(&"steps[0].body.content.at"), "{got:?}");
        let later = json!({"name": "later", "steps": [
            {"name": "one", "method": "GET", "url": "https://api.test/x",
             "for_each": {"items": "<<input.ids>>"}},
            {"name": "two", "method": "GET", "url": "https://api.test/<<item>>"}]});
        let got = problems(&later);
        assert!(got.iter().any(|(p, _)| p == "steps[1].url"), "{got:?}");
    }

    #[test]
    fn for_each_and_paginate_on_one_step_are_refused() {
        let connector = json!({"name": "both", "steps": [
            {"name": "one", "method": "GET", "url": "https://api.test/<<item>>",
             "for_each": {"items": "<<input.ids>>"},
             "paginate": {"next": {"type": "link"}}}]});
        let got = problems(&connector);
        assert!(got.iter().any(|(p, _)| p == "steps[0].for_each"), "{got:?}");
    }

    #[test]
    fn for_each_summary_is_only_named_on_a_loop() {
        let connector = json!({"name": "summary", "steps": [
            {"name": "one", "method": "GET", "url": "https://api.test/x"}],
            "output": {"n": "<<steps.one.for_each.items>>"}});
        let got = problems(&connector);
        assert!(got.iter().any(|(p, _)| p == "output.n"), "{got:?}");
    }
}
