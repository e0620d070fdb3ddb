//! Paging through a list API, one durable page at a time: pure.
//!
//! A step with `paginate` is sent once per page. Between pages the runner
//! commits the page's step row and the [`Progress`] (pages done, bytes
//! read, where the next page is, the fields extracted so far) inside the
//! execution's context, under `paging.<step>`; a worker that resumes the
//! execution reads it back and sends the next page, not the first.
//!
//! [`page_step`] shapes the request of the next page; [`after_page`] folds
//! a successful page into the progress and says whether another follows.
//!
//! Accumulation rule: every extracted field becomes an array over the
//! pages. A page's array value is concatenated, `null` (nothing selected)
//! adds nothing, and any other value is appended as one entry.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::connector::Step;
use crate::connector::paging::{NextPage, Paginate};
use crate::extract::Extraction;
use crate::http::{Retry, StepError, StepErrorKind, StepResult};

/// Hidden extraction of the next page's cursor (a name no user field may
/// have: fields are `[A-Za-z0-9_]`).
const CURSOR_FIELD: &str = "#cursor";
/// Hidden extraction of a counter page's items.
const ITEMS_FIELD: &str = "#items";

/// How far a paginated step got: stored in the execution's context between
/// pages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Pages done.
    pub pages: u32,
    /// Response bytes read by them.
    pub bytes: u64,
    /// Where the next page is: a cursor, a URL or a counter; `null` before
    /// the first page.
    pub next: Value,
    /// The fields extracted so far, accumulated.
    pub extract: Map<String, Value>,
}

impl Progress {
    /// The progress of `step` stored in a persisted context, or a fresh
    /// one (the first page) when there is none or it cannot be read.
    pub fn stored(context: &Value, step: &str) -> Progress {
        context
            .get("paging")
            .and_then(|p| p.get(step))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    /// The progress as stored in the context.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The request of the page after `progress`: `step` with the page's
/// position in its query (or its URL replaced by the next link) and the
/// hidden extractions paging reads. A cursor or counter is a template over
/// `page.*`; the second value is that `page` object for the context.
pub fn page_step(step: &Step, paginate: &Paginate, progress: &Progress) -> (Step, Value) {
    let mut out = step.clone();
    out.paginate = None;
    let mut page = json!({"number": progress.pages + 1});
    match &paginate.next {
        NextPage::Cursor { path, param } => {
            out.extract
                .insert(CURSOR_FIELD.to_owned(), Extraction::optional(path.clone()));
            if let Value::String(cursor) = &progress.next {
                out.query
                    .insert(param.clone(), "<<page.cursor>>".to_owned());
                page["cursor"] = json!(cursor);
            }
        }
        NextPage::Link => {
            if let Value::String(url) = &progress.next {
                // The link carries the whole query of the next page. It is
                // a serialised `Url`, so it holds no `<` (that would open a
                // placeholder): `<` is percent-encoded in every part.
                out.url.clone_from(url);
                out.query.clear();
            }
        }
        NextPage::Offset {
            param,
            start,
            items,
            ..
        }
        | NextPage::Page {
            param,
            start,
            items,
            ..
        } => {
            out.extract
                .insert(ITEMS_FIELD.to_owned(), Extraction::optional(items.clone()));
            let at = progress.next.as_u64().unwrap_or(*start);
            out.query
                .insert(param.clone(), "<<page.counter>>".to_owned());
            page["counter"] = json!(at);
        }
    }
    (out, page)
}

/// What follows a successful page.
#[derive(Debug, Clone, PartialEq)]
pub enum After {
    /// Another page is due; store this progress.
    More(Progress),
    /// The step is done: these are its accumulated fields, and the summary
    /// (`{"pages": n, "complete": bool}`) goes into its context entry.
    Done {
        /// Every field, accumulated over the pages.
        extract: Map<String, Value>,
        /// `{"pages": n, "complete": bool}`.
        summary: Value,
    },
}

/// Folds the successful page `result` into `progress` and decides whether
/// another page follows. The hidden extractions are taken out of
/// `result.extracted`, which is left holding the page's own fields.
///
/// # Errors
///
/// A message when the page says where the next one is in a way that cannot
/// be followed: a cursor that is not a string or number, or a next link
/// that is malformed or leaves the page's origin.
pub fn after_page(
    paginate: &Paginate,
    mut progress: Progress,
    result: &mut StepResult,
) -> Result<After, String> {
    let cursor = result.extracted.remove(CURSOR_FIELD);
    let items = result.extracted.remove(ITEMS_FIELD);
    let current = progress.next.as_u64();
    let next = match &paginate.next {
        NextPage::Cursor { path, .. } => match cursor.unwrap_or(Value::Null) {
            Value::Null | Value::Bool(false) => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(Value::String(s)),
            Value::Number(n) => Some(Value::String(n.to_string())),
            _ => {
                return Err(format!(
                    "paginate: the cursor at `{path}` is not a string or number"
                ));
            }
        },
        NextPage::Link => next_link(result)?.map(Value::String),
        NextPage::Offset {
            start, page_size, ..
        } => {
            let full = count(items.as_ref()) >= *page_size;
            full.then(|| json!(current.unwrap_or(*start).saturating_add(*page_size)))
        }
        NextPage::Page {
            start, page_size, ..
        } => {
            let n = count(items.as_ref());
            let more = n > 0 && page_size.is_none_or(|size| n >= size);
            more.then(|| json!(current.unwrap_or(*start).saturating_add(1)))
        }
    };
    for (name, value) in &result.extracted {
        let into = progress
            .extract
            .entry(name.clone())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(acc) = into {
            match value {
                Value::Array(items) => acc.extend(items.iter().cloned()),
                Value::Null => {}
                other => acc.push(other.clone()),
            }
        }
    }
    progress.pages += 1;
    progress.bytes = progress.bytes.saturating_add(result.traffic.received);
    let within = progress.pages < paginate.max_pages && progress.bytes < paginate.max_bytes;
    match next {
        Some(next) if within => {
            progress.next = next;
            Ok(After::More(progress))
        }
        next => Ok(After::Done {
            summary: json!({"pages": progress.pages, "complete": next.is_none()}),
            extract: progress.extract,
        }),
    }
}

/// Settles a successful page `result` of the step named `step`: the next
/// page's progress when another follows. Otherwise `result` becomes the
/// step's last attempt: its fields are the accumulated ones and `ctx`
/// holds the summary under `paged.<step>`, which the decision moves into
/// the step's context entry (`steps.<step>.paging`); or, when the page
/// cannot be followed, it fails with a `paging` error (not retried).
pub fn settle(
    paginate: &Paginate,
    progress: Progress,
    result: &mut StepResult,
    ctx: &mut Value,
    step: &str,
) -> Option<Progress> {
    match after_page(paginate, progress, result) {
        Ok(After::More(next)) => Some(next),
        Ok(After::Done { extract, summary }) => {
            result.extracted = extract;
            ctx["paged"][step] = summary;
            None
        }
        Err(message) => {
            result.error = Some(StepError {
                kind: StepErrorKind::Paging,
                message,
                retry: Retry::Fatal,
            });
            None
        }
    }
}

/// Entries of a counter page's items: an array's length, 0 for nothing.
fn count(items: Option<&Value>) -> u64 {
    match items {
        Some(Value::Array(a)) => a.len() as u64,
        None | Some(Value::Null) => 0,
        Some(_) => 1,
    }
}

/// The `rel="next"` URL of the page's `Link` header, resolved against the
/// page's URL, which it must share its origin with (a credential sent to
/// the provider must not follow a link elsewhere).
fn next_link(result: &StepResult) -> Result<Option<String>, String> {
    let Some(header) = result
        .response
        .as_ref()
        .and_then(|r| r.headers.get("link"))
        .and_then(Value::as_str)
    else {
        return Ok(None);
    };
    let Some(target) = parse_next_link(header) else {
        return Ok(None);
    };
    let base = result
        .request
        .get("url")
        .and_then(Value::as_str)
        .and_then(|u| url::Url::parse(u).ok())
        .ok_or("paginate: the page's URL is unknown, so its next link cannot be resolved")?;
    let next = base
        .join(target)
        .map_err(|e| format!("paginate: the next link is not a URL: {e}"))?;
    if next.origin() != base.origin() {
        return Err(format!(
            "paginate: the next link leaves the page's origin ({})",
            base.origin().ascii_serialization()
        ));
    }
    Ok(Some(next.to_string()))
}

/// The target of the first `rel="next"` link of a `Link` header value
/// (RFC 8288: `<url>; rel="next", <url>; rel="prev"`).
fn parse_next_link(header: &str) -> Option<&str> {
    let mut rest = header;
    while let Some(open) = rest.find('<') {
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        let after = &rest[close + 1..];
        let params_end = after.find('<').unwrap_or(after.len());
        let params = after[..params_end].trim_end().trim_end_matches(',');
        let is_next = params.split(';').any(|p| {
            let Some((name, value)) = p.split_once('=') else {
                return false;
            };
            name.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
        });
        if is_next {
            return Some(target.trim());
        }
        rest = &after[params_end..];
    }
    None
}

#[cfg(test)]
mod tests;
