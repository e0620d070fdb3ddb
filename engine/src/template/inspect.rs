//! Looking inside templates (placeholders, locations, paths) and turning
//! minijinja errors into [`TemplateError`]s that never quote a value.

use std::fmt::Write as _;

use minijinja::ErrorKind;
use serde_json::Value as Json;

use super::{BLOCK_START, COMMENT_START, Dest, MAX_DEPTH, MAX_QUOTE_CHARS, TemplateError};

// ---------------------------------------------------------------------------
// Template inspection helpers
// ---------------------------------------------------------------------------

/// A string with no placeholder renders to itself in every destination.
pub(super) fn is_literal(template: &str) -> bool {
    !template.contains("<<") && !template.contains([BLOCK_START, COMMENT_START])
}

pub(super) fn finish_literal(template: &str, dest: Dest) -> Result<String, TemplateError> {
    finish_literal_owned(template.to_owned(), dest)
}

pub(super) fn finish_literal_owned(out: String, dest: Dest) -> Result<String, TemplateError> {
    if dest == Dest::Header && out.contains(['\r', '\n']) {
        return Err(TemplateError::HeaderNewline);
    }
    Ok(out)
}

/// Rejects the characters that would open a block or a comment.
pub(super) fn check_reserved(template: &str) -> Result<(), TemplateError> {
    match template.find([BLOCK_START, COMMENT_START]) {
        None => Ok(()),
        Some(offset) => Err(TemplateError::Syntax {
            message: format!(
                "the character U+{:04X} is reserved{}",
                u32::from(template[offset..].chars().next().unwrap_or(BLOCK_START)),
                location(template, offset)
            ),
            offset: Some(offset),
        }),
    }
}

/// If `template` is `<<expr>>` (with optional whitespace control), returns
/// `expr` and its byte offset in `template`.
///
/// Whether `expr` really is one expression (and not `a>> text <<b`) is for
/// the expression parser to decide: it stops at the first top-level `>>`.
pub(super) fn single_placeholder(template: &str) -> Option<(&str, usize)> {
    let mut inner = template.strip_prefix("<<")?.strip_suffix(">>")?;
    let mut offset = 2;
    if let Some(rest) = inner.strip_prefix(['-', '+']) {
        inner = rest;
        offset += 1;
    }
    if let Some(rest) = inner.strip_suffix(['-', '+']) {
        inner = rest;
    }
    Some((inner, offset))
}

/// ` (line L, column C)` for a byte offset, or empty if it is not one.
pub(super) fn location(template: &str, offset: usize) -> String {
    match template.get(..offset) {
        Some(before) => {
            let line = before.matches('\n').count() + 1;
            let column = before
                .rsplit('\n')
                .next()
                .unwrap_or_default()
                .chars()
                .count()
                + 1;
            format!(" (line {line}, column {column})")
        }
        None => String::new(),
    }
}

/// Template text for an error message, shortened.
pub(super) fn quote(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTE_CHARS {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX_QUOTE_CHARS).collect();
        short.push('…');
        short
    }
}

/// The placeholder (`<<...>>`) of `template` around a byte range.
pub(super) fn enclosing_placeholder(template: &str, range: std::ops::Range<usize>) -> Option<&str> {
    let start = template
        .get(..range.start.min(template.len()))?
        .rfind("<<")?;
    let from = range.end.max(start + 2).min(template.len());
    let end = from + template.get(from..)?.find(">>")? + 2;
    template.get(start..end)
}

pub(super) fn push_index(path: &mut String, index: usize) {
    let _ = write!(path, "[{index}]");
}

pub(super) fn push_key(path: &mut String, key: &str) {
    let mut chars = key.chars();
    let simple = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if simple {
        path.push('.');
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&Json::String(key.to_owned()).to_string());
        path.push(']');
    }
}

pub(super) fn too_deep() -> TemplateError {
    TemplateError::Render(format!("JSON is nested more than {MAX_DEPTH} levels deep"))
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Converts a minijinja error; `base` is the byte offset of the evaluated
/// source inside `template` (non-zero for typed expressions).
///
/// `find_missing` is given the placeholder (`<<...>>`) of an undefined error
/// that minijinja did not describe and may name the missing path.
pub(super) fn convert_error(
    err: &minijinja::Error,
    template: &str,
    base: usize,
    find_missing: impl FnOnce(&str) -> Option<String>,
) -> TemplateError {
    let range = err
        .range()
        .map(|r| r.start.saturating_add(base)..r.end.saturating_add(base));
    match err.kind() {
        ErrorKind::OutOfFuel => TemplateError::OutOfFuel,
        ErrorKind::SyntaxError | ErrorKind::BadEscape => {
            let offset = range.map(|r| r.start);
            let mut message = err
                .detail()
                .map_or_else(|| err.kind().to_string(), str::to_owned);
            if let Some(offset) = offset {
                message.push_str(&location(template, offset));
            }
            TemplateError::Syntax { message, offset }
        }
        kind => {
            let placeholder = range
                .clone()
                .and_then(|r| enclosing_placeholder(template, r));
            if let Some(path) = err.detail().and_then(undefined_path) {
                return TemplateError::Undefined { path };
            }
            if kind == ErrorKind::UndefinedError {
                // Without a location (an operator's operand, say) the
                // whole template is searched for the missing name.
                let path = match placeholder {
                    Some(p) => find_missing(p).or_else(|| {
                        let inner = p.strip_prefix("<<")?.strip_suffix(">>")?;
                        Some(quote(inner.trim_matches(['-', '+']).trim()))
                    }),
                    None => find_missing(template),
                }
                .unwrap_or_else(|| "a value".to_owned());
                return TemplateError::Undefined { path };
            }
            let mut message = kind.to_string();
            if let Some(detail) = safe_detail(err) {
                message.push_str(": ");
                message.push_str(detail);
            }
            match placeholder {
                Some(p) => {
                    let _ = write!(message, " (in `{}`)", quote(p));
                }
                None => {
                    if let Some(r) = range {
                        message.push_str(&location(template, r.start));
                    }
                }
            }
            TemplateError::Render(message)
        }
    }
}

/// The path in minijinja's "`input.x` is undefined" detail. It is built
/// from names and constants of the template only.
pub(super) fn undefined_path(detail: &str) -> Option<String> {
    const TAIL: &str = "` is undefined";
    let end = detail.rfind(TAIL)?;
    let head = &detail[..end];
    let start = if let Some(i) = head.rfind("(`") {
        i + 2
    } else {
        head.strip_prefix('`')?;
        1
    };
    let path = head.get(start..)?;
    (!path.is_empty()).then(|| path.to_owned())
}

/// The minijinja error detail if it cannot contain a value.
pub(super) fn safe_detail(err: &minijinja::Error) -> Option<&str> {
    let detail = err.detail()?;
    match err.kind() {
        ErrorKind::UnknownFilter
        | ErrorKind::UnknownTest
        | ErrorKind::UnknownFunction
        | ErrorKind::UnknownMethod
        | ErrorKind::MissingArgument
        | ErrorKind::TooManyArguments
        | ErrorKind::CannotUnpack
        | ErrorKind::NonKey
        | ErrorKind::NonPrimitive => Some(detail),
        // "unable to calculate {lhs} {op} {rhs}" quotes operands.
        ErrorKind::InvalidOperation
            if !detail.starts_with("unable to calculate") && !detail.starts_with("failed to") =>
        {
            Some(detail)
        }
        _ => None,
    }
}
