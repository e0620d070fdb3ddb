//! The `paginate` field of a step and its save-time checks.
//!
//! A paginated step is sent once per page of a list API; where the next
//! page is comes from a JSONPath cursor in the body, a `Link: rel="next"`
//! header, or an offset or page counter put into a query parameter. The
//! step's extracted fields accumulate across pages (see [`crate::paging`],
//! which runs it).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Step;
use super::validate::ValidationError;
use crate::extract::Query;

/// Pages fetched when `max_pages` is not given.
pub const DEFAULT_MAX_PAGES: u32 = 100;
/// Largest `max_pages`.
pub const MAX_PAGES: u32 = 1_000;
/// Response bytes read across pages when `max_bytes` is not given: 10 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Largest `max_bytes`: 100 MiB.
pub const MAX_BYTES: u64 = 100 * 1024 * 1024;
/// Largest counter `page_size` and `start`.
pub const MAX_COUNTER: u64 = 1_000_000_000;

/// How a step pages through a list API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Paginate {
    /// Where the next page is.
    pub next: NextPage,
    /// Pages sent at most, the first included (1 to 1,000; default 100).
    /// Paging stops there, and the step's `paging.complete` is `false`.
    #[serde(default = "default_max_pages")]
    #[schema(minimum = 1, maximum = 1_000)]
    pub max_pages: u32,
    /// Response bytes read across pages at most (1 to 104,857,600; default
    /// 10,485,760): no page is requested once they are reached.
    #[serde(default = "default_max_bytes")]
    #[schema(minimum = 1, maximum = 104_857_600)]
    pub max_bytes: u64,
}

fn default_max_pages() -> u32 {
    DEFAULT_MAX_PAGES
}

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}

/// Where the next page of a list is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NextPage {
    /// The response body holds the next page's cursor at `path`; it is
    /// sent as the query parameter `param`. A missing, `null`, `false` or
    /// empty cursor ends the list.
    Cursor {
        /// JSONPath of the cursor (`$.paging.next.after`).
        #[schema(value_type = String, example = "$.paging.next.after")]
        path: Query,
        /// The query parameter the cursor is sent in (`after`).
        #[schema(min_length = 1, max_length = 128, example = "after")]
        param: String,
    },
    /// The response's `Link` header holds the next page's URL
    /// (`rel="next"`); it must have the first page's origin. No such link
    /// ends the list.
    Link,
    /// An offset counter: the query parameter `param` is `start` (default
    /// 0), then grows by `page_size` each page. A page whose `items`
    /// array has fewer than `page_size` entries ends the list.
    Offset {
        /// The query parameter (`offset`).
        #[schema(min_length = 1, max_length = 128, example = "offset")]
        param: String,
        /// The first offset.
        #[serde(default)]
        #[schema(maximum = 1_000_000_000)]
        start: u64,
        /// Items per page, as the step asks for them (1 to 1,000,000,000).
        #[schema(minimum = 1, maximum = 1_000_000_000, example = 100)]
        page_size: u64,
        /// JSONPath of the page's items (`$.results`).
        #[schema(value_type = String, example = "$.results")]
        items: Query,
    },
    /// A page counter: the query parameter `param` is `start` (default 1),
    /// then grows by one each page. A page whose `items` array is empty
    /// (or, with `page_size`, shorter than it) ends the list.
    Page {
        /// The query parameter (`page`).
        #[schema(min_length = 1, max_length = 128, example = "page")]
        param: String,
        /// The first page number.
        #[serde(default = "default_first_page")]
        #[schema(maximum = 1_000_000_000)]
        start: u64,
        /// Items per full page, when the provider says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 1, maximum = 1_000_000_000)]
        page_size: Option<u64>,
        /// JSONPath of the page's items (`$.data`).
        #[schema(value_type = String, example = "$.data")]
        items: Query,
    },
}

fn default_first_page() -> u64 {
    1
}

impl NextPage {
    /// The query parameter the next page's position is sent in, if any.
    pub fn param(&self) -> Option<&str> {
        match self {
            NextPage::Cursor { param, .. }
            | NextPage::Offset { param, .. }
            | NextPage::Page { param, .. } => Some(param),
            NextPage::Link => None,
        }
    }
}

/// Every problem of the step's `paginate`, with field paths.
pub(super) fn problems(path: &str, step: &Step) -> Vec<ValidationError> {
    let mut out = Vec::new();
    let Some(p) = &step.paginate else {
        return out;
    };
    let at = format!("{path}.paginate");
    let mut err = |field: &str, message: String| {
        out.push(ValidationError {
            path: format!("{at}.{field}"),
            message,
        });
    };
    if !(1..=MAX_PAGES).contains(&p.max_pages) {
        err("max_pages", format!("must be between 1 and {MAX_PAGES}"));
    }
    if !(1..=MAX_BYTES).contains(&p.max_bytes) {
        err("max_bytes", format!("must be between 1 and {MAX_BYTES}"));
    }
    if let Some(param) = p.next.param() {
        if param.is_empty() || param.len() > 128 || param.chars().any(char::is_control) {
            err(
                "next.param",
                "must be 1 to 128 characters without control characters".to_owned(),
            );
        } else if step.query.contains_key(param) {
            err(
                "next.param",
                format!("`{param}` is also in the step's query; paging sets it"),
            );
        }
    }
    match &p.next {
        NextPage::Offset {
            start, page_size, ..
        } => {
            if !(1..=MAX_COUNTER).contains(page_size) {
                err(
                    "next.page_size",
                    format!("must be between 1 and {MAX_COUNTER}"),
                );
            }
            if *start > MAX_COUNTER {
                err("next.start", format!("must be at most {MAX_COUNTER}"));
            }
        }
        NextPage::Page {
            start, page_size, ..
        } => {
            if page_size.is_some_and(|s| !(1..=MAX_COUNTER).contains(&s)) {
                err(
                    "next.page_size",
                    format!("must be between 1 and {MAX_COUNTER}"),
                );
            }
            if *start > MAX_COUNTER {
                err("next.start", format!("must be at most {MAX_COUNTER}"));
            }
        }
        NextPage::Cursor { .. } | NextPage::Link => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::MAX_BYTES as MAX;
    use crate::connector::parse_and_validate;

    fn paths(connector: Value) -> Vec<String> {
        match parse_and_validate(&connector) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| e.path).collect(),
        }
    }

    fn list(paginate: Value) -> Value {
        json!({"name": "list", "steps": [
            {"name": "list", "method": "GET", "url": "https://api.test/items",
             "query": {"limit": "10"}, "paginate": paginate}],
            "output": {"pages": "<<steps.list.paging.pages>>"}})
    }

    #[test]
    fn bounds_and_the_page_parameter_are_checked_with_their_paths() {
        let cursor = json!({"type": "cursor", "path": "$.next", "param": "after"});
        assert!(paths(list(json!({"next": cursor}))).is_empty());
        assert!(
            paths(list(
                json!({"next": cursor, "max_pages": 1000, "max_bytes": MAX})
            ))
            .is_empty()
        );
        let cases = [
            (
                json!({"next": cursor, "max_pages": 0}),
                "steps[0].paginate.max_pages",
            ),
            (
                json!({"next": cursor, "max_pages": 1001}),
                "steps[0].paginate.max_pages",
            ),
            (
                json!({"next": cursor, "max_bytes": MAX + 1}),
                "steps[0].paginate.max_bytes",
            ),
            (
                json!({"next": {"type": "cursor", "path": "$.next", "param": "limit"}}),
                "steps[0].paginate.next.param",
            ),
            (
                json!({"next": {"type": "page", "param": "", "items": "$.data"}}),
                "steps[0].paginate.next.param",
            ),
            (
                json!({"next": {"type": "offset", "param": "o", "page_size": 0, "items": "$.data"}}),
                "steps[0].paginate.next.page_size",
            ),
            (
                json!({"next": {"type": "page", "param": "p", "start": 1_000_000_001_u64, "items": "$"}}),
                "steps[0].paginate.next.start",
            ),
        ];
        for (paginate, want) in cases {
            assert_eq!(paths(list(paginate.clone())), [want], "{paginate}");
        }
    }

    #[test]
    fn only_a_paginated_step_has_a_paging_summary_to_reference() {
        let plain = json!({"name": "plain", "steps": [
            {"name": "list", "method": "GET", "url": "https://api.test/items"}],
            "output": {"pages": "<<steps.list.paging.pages>>"}});
        assert_eq!(paths(plain), ["output.pages"]);
    }
}
