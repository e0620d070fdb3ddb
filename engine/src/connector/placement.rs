//! Where credentials and untrusted values may go in a request.
//!
//! Two rules, checked when a connector is saved and again before every
//! send (definitions saved before the rules existed are refused too):
//!
//! - **The host is fixed by the connector.** Everything a URL template
//!   renders before the path (scheme, user info, host, port) is literal
//!   text or a bare `<<settings.NAME>>`: a value from the input or a
//!   response cannot move the request, with its credentials, to another
//!   host (`https://api.x.com<<input.p>>` with `@evil.com/`). The one
//!   exception is a URL that is wholly one credential field (a webhook URL
//!   whose path is the secret): its owner chose that host.
//! - **Credentials cannot be read back.** A credential may be named only
//!   in an `auth` block or as a bare `<<credentials.NAME.FIELD>>` (no
//!   filter, slice or operator) in a header value, a query value, the URL
//!   after its host, a JSON body leaf, a form field or an XML/raw body. A
//!   transformed secret (`| reverse`, a slice, `| int`) would defeat
//!   redaction and read back from step history; a JSON key and the output
//!   may name no credential at all.

use serde_json::Value;

use super::{Body, Step, ValidationError};
use crate::template::Renderer;

/// The placement problems of one step, with paths under `path`
/// (`steps[0]`).
pub fn step_problems(renderer: &Renderer, path: &str, step: &Step) -> Vec<ValidationError> {
    let mut out = Vec::new();
    url(renderer, &format!("{path}.url"), &step.url, &mut out);
    for (name, value) in &step.headers {
        whole_value(renderer, &format!("{path}.headers.{name}"), value, &mut out);
    }
    for (name, value) in &step.query {
        whole_value(renderer, &format!("{path}.query.{name}"), value, &mut out);
    }
    match &step.body {
        None => {}
        Some(Body::Json { content }) => {
            json(renderer, &format!("{path}.body.content"), content, &mut out);
        }
        Some(Body::Form { content }) => {
            for (name, value) in content {
                whole_value(
                    renderer,
                    &format!("{path}.body.content.{name}"),
                    value,
                    &mut out,
                );
            }
        }
        Some(Body::Xml { content } | Body::Raw { content, .. }) => {
            whole_value(renderer, &format!("{path}.body.content"), content, &mut out);
        }
    }
    out
}

/// The placement problems of a connector's output template: it may name
/// no credential at all (outputs are read back by every member).
pub fn output_problems(renderer: &Renderer, output: &Value) -> Vec<ValidationError> {
    let mut out = Vec::new();
    super::visit_json("output", output, &mut |path, template| {
        if names_credentials(renderer, template) {
            out.push(problem(path, "the output may not name a credential"));
        }
    });
    out
}

fn problem(path: &str, message: &str) -> ValidationError {
    ValidationError {
        path: path.to_owned(),
        message: message.to_owned(),
    }
}

fn refs(renderer: &Renderer, template: &str) -> Vec<String> {
    // Syntax errors are the validator's to report.
    renderer.references(template).unwrap_or_default()
}

/// The `<<...>>` spans of a template as the scanner sees them: `(start,
/// end)` byte offsets, delimiters included.
fn placeholder_spans(template: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(start) = template[from..].find("<<").map(|i| from + i) {
        let Some(end) = template[start + 2..].find(">>").map(|i| start + 2 + i + 2) else {
            break;
        };
        spans.push((start, end));
        from = end;
    }
    spans
}

/// Byte offsets of the word `credentials` (not part of a longer name).
fn credential_words(template: &str) -> Vec<usize> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    template
        .match_indices("credentials")
        .map(|(i, _)| i)
        .filter(|&i| {
            let before = template[..i].chars().next_back();
            let after = template[i + "credentials".len()..].chars().next();
            !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
        })
        .collect()
}

/// Whether a template names a credential: the word inside a placeholder,
/// or a reference the template engine reports.
///
/// Every send checks its step again, so a template that cannot name one is
/// answered without compiling it: the credentials are reachable only
/// through the identifier `credentials` (templates have no dynamic lookup
/// of a top-level name), which must then appear in the text.
fn names_credentials(renderer: &Renderer, template: &str) -> bool {
    if !template.contains("<<") {
        return false;
    }
    if !template.contains("credentials") {
        return false;
    }
    let spans = placeholder_spans(template);
    credential_words(template)
        .iter()
        .any(|&i| spans.iter().any(|&(s, e)| s <= i && i < e))
        || refs(renderer, template)
            .iter()
            .any(|r| r.split('.').next() == Some("credentials"))
}

/// Whether every mention of `credentials` lies in a bare
/// `<<credentials.NAME.FIELD>>` placeholder.
fn credentials_are_bare(template: &str) -> bool {
    let bare: Vec<(usize, usize)> = placeholder_spans(template)
        .into_iter()
        .filter(|&(s, e)| is_credential_field(&template[s..e]))
        .collect();
    credential_words(template)
        .iter()
        .all(|&i| bare.iter().any(|&(s, e)| s <= i && i < e))
}

/// A value naming a credential must name it bare.
fn whole_value(renderer: &Renderer, path: &str, template: &str, out: &mut Vec<ValidationError>) {
    if names_credentials(renderer, template) && !credentials_are_bare(template) {
        out.push(problem(
            path,
            "a credential may only appear as a bare <<credentials.NAME.FIELD>>, without filters, slices or operators (or use the step's auth block)",
        ));
    }
}

fn json(renderer: &Renderer, path: &str, value: &Value, out: &mut Vec<ValidationError>) {
    match value {
        Value::String(s) => whole_value(renderer, path, s, out),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                json(renderer, &format!("{path}[{i}]"), item, out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let child = format!("{path}.{k}");
                if names_credentials(renderer, k) {
                    out.push(problem(&child, "a JSON key may not name a credential"));
                }
                json(renderer, &child, item, out);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn url(renderer: &Renderer, path: &str, template: &str, out: &mut Vec<ValidationError>) {
    if is_credential_field(template) {
        return;
    }
    whole_value(renderer, path, template, out);
    if !before_path(template)
        .iter()
        .all(|p| is_setting(p) || is_public_credential_field(p))
    {
        out.push(problem(
            path,
            "only literal text, bare <<settings.NAME>> and a bare public OAuth credential field (<<credentials.NAME.instance_url>>, <<credentials.NAME.api_domain>>) may come before the URL's path (scheme, host, port): a value from the input or a response could send the request to another host",
        ));
    }
}

/// Whether a placeholder is exactly `<<credentials.NAME.FIELD>>` where
/// FIELD is a public token response field (an instance URL, an API
/// domain): the provider, not the input, chose that host.
fn is_public_credential_field(placeholder: &str) -> bool {
    if !is_credential_field(placeholder) {
        return false;
    }
    let inner = placeholder
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim_matches(['-', '+'])
        .trim();
    crate::oauth::public_fields().iter().any(|f| {
        inner.ends_with(&format!(".{f}"))
            || inner.ends_with(&format!("['{f}']"))
            || inner.ends_with(&format!("[\"{f}\"]"))
    })
}

/// Whether a placeholder is exactly `<<settings.NAME>>` (dotted names).
fn is_setting(placeholder: &str) -> bool {
    let Some(inner) = placeholder
        .strip_prefix("<<")
        .and_then(|t| t.strip_suffix(">>"))
    else {
        return false;
    };
    let inner = inner.trim_matches(['-', '+']).trim();
    inner.strip_prefix("settings.").is_some_and(|names| {
        names.split('.').all(|n| {
            n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    })
}

/// The placeholders (`<<...>>`, whole) of a URL template that render
/// before its path: up to the first literal `/`, `?` or `#` after the
/// scheme's `//` (or from the start, without a literal scheme).
pub fn before_path(template: &str) -> Vec<String> {
    // Literal text with every placeholder replaced by one marker, and
    // where each placeholder starts in that probe.
    let mut probe = String::new();
    let mut placeholders = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("<<") {
        probe.push_str(&rest[..start]);
        let Some(end) = rest[start..].find(">>") else {
            rest = &rest[start..];
            break;
        };
        placeholders.push((probe.len(), rest[start..start + end + 2].to_owned()));
        probe.push('\u{1}');
        rest = &rest[start + end + 2..];
    }
    probe.push_str(rest);
    let authority_start = probe.find("://").map_or(0, |i| i + 3);
    let path_start = probe[authority_start..]
        .find(['/', '?', '#'])
        .map_or(probe.len(), |i| authority_start + i);
    placeholders
        .into_iter()
        .filter(|(at, _)| *at < path_start)
        .map(|(_, p)| p)
        .collect()
}

/// Whether `template` is exactly `<<credentials.NAME.FIELD>>` (names as
/// `.ident` or `["quoted"]`), with optional whitespace and whitespace
/// control, and nothing else.
pub fn is_credential_field(template: &str) -> bool {
    let Some(inner) = template
        .trim()
        .strip_prefix("<<")
        .and_then(|t| t.strip_suffix(">>"))
    else {
        return false;
    };
    let inner = inner.trim_start_matches(['-', '+']);
    let inner = inner.trim_end_matches(['-', '+']).trim();
    // Exactly two accessors (name, field), and nothing after them.
    inner
        .strip_prefix("credentials")
        .and_then(accessor)
        .and_then(accessor)
        .is_some_and(str::is_empty)
}

/// Consumes one `.ident` or `["name"]`/`['name']`; the rest, or `None`.
fn accessor(text: &str) -> Option<&str> {
    if let Some(after) = text.strip_prefix('.') {
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let ident = &after[..len];
        let starts_well = ident
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        return starts_well.then_some(&after[len..]);
    }
    let after = text.strip_prefix('[')?;
    let quote = after.chars().next().filter(|c| matches!(c, '"' | '\''))?;
    let body = &after[1..];
    let close = body.find(quote)?;
    let name = &body[..close];
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    let tail = body[close + 1..].strip_prefix(']')?;
    valid.then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bare_credential_field_is_a_whole_value() {
        let cases = [
            ("<<credentials.hook.url>>", true),
            ("  << credentials.hook.url >>  ", true),
            ("<<- credentials.hook.url ->>", true),
            ("<<credentials['my-hook'].url>>", true),
            ("<<credentials[\"my.hook\"][\"url\"]>>", true),
            ("<<credentials.hook>>", false),
            ("<<credentials>>", false),
            ("<<credentials.hook.url.x>>", false),
            ("<<credentials.hook.url | reverse>>", false),
            ("<<credentials.hook.url[1:]>>", false),
            ("<<credentials.hook.url ~ 'x'>>", false),
            ("<<credentials.hook.url-1>>", false),
            ("<<credentials.hook.url>>x", false),
            ("x<<credentials.hook.url>>", false),
            ("<<credentials.hook.url>><<credentials.hook.url>>", false),
            ("<<credentials[hook].url>>", false),
            ("<<credentials['a'b].url>>", false),
            ("<<credentials[''].url>>", false),
            ("<<credentials['a b'].url>>", false),
            ("<<credentials.1a.url>>", false),
            ("<<input.url>>", false),
            ("credentials.hook.url", false),
        ];
        for (template, want) in cases {
            assert_eq!(is_credential_field(template), want, "{template}");
        }
    }

    #[test]
    fn placeholders_before_the_path_are_found() {
        let cases: [(&str, &[&str]); 9] = [
            ("https://api.x.com/<<input.p>>", &[]),
            // A `/` inside a placeholder is no path.
            (
                "https://<<input.a ~ '/'>><<input.b>>/x",
                &["<<input.a ~ '/'>>", "<<input.b>>"],
            ),
            ("https://api.x.com<<input.p>>", &["<<input.p>>"]),
            (
                "<<settings.base_url>>/v1/<<input.id>>",
                &["<<settings.base_url>>"],
            ),
            (
                "https://<<settings.host>>:<<input.port>>/x",
                &["<<settings.host>>", "<<input.port>>"],
            ),
            ("https://api.x.com?q=<<input.q>>", &[]),
            ("<<steps.a.body.next>>", &["<<steps.a.body.next>>"]),
            ("https://<<input.user>>@api.x.com/", &["<<input.user>>"]),
            ("https://api.x.com#<<input.f>>", &[]),
        ];
        for (template, want) in cases {
            assert_eq!(before_path(template), want, "{template}");
        }
    }

    #[test]
    fn credentials_must_be_bare_wherever_they_appear() {
        let cases = [
            ("Bearer <<credentials.c.token>>", true),
            ("<<credentials.c.a>>:<<credentials.c.b>>", true),
            ("<<credentials.c.token | upper>>", false),
            ("x <<credentials.c.token ~ ''>>", false),
            ("<<'>>' ~ credentials.c.token | reverse>>", false),
            ("<<input.x>> <<credentials.c>>", false),
            ("<<credentials.c.a>> <<credentials.c.b | upper>>", false),
            ("<<credentials.c.a>>credentials", false),
        ];
        for (template, want) in cases {
            assert_eq!(credentials_are_bare(template), want, "{template}");
        }
        assert_eq!(
            credential_words("credentials my_credentials credentialsx"),
            [0]
        );
        // The word in literal text names nothing.
        let mut out = Vec::new();
        whole_value(
            &Renderer::new(),
            "p",
            "your credentials: <<input.x>>",
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        whole_value(
            &Renderer::new(),
            "p",
            "<<credentials.c.t | lower>>",
            &mut out,
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn only_bare_settings_may_render_before_the_path() {
        let renderer = Renderer::new();
        let cases = [
            ("https://api.x.com/<<input.id>>", true),
            ("<<settings.base_url>>/<<input.id>>", true),
            ("<<- settings.base_url >>/x", true),
            ("https://<<settings.sub>>.x.com:<<settings.port>>/x", true),
            ("<<settings._base>>/x", true),
            ("<<settings.9base>>/x", false),
            ("<<settings.base.9>>/x", false),
            ("<<credentials.hook.url>>", true),
            ("<<settings.base_url | lower>>/x", false),
            ("<<settings.base_url ~ input.p>>/x", false),
            ("https://api.x.com<<input.p>>", false),
            ("<<steps.a.body.next>>", false),
            ("https://<<credentials.c.user>>@api.x.com/", false),
            ("<<credentials.sf.instance_url>>/services/data", true),
            ("<<credentials.zoho['api_domain']>>/crm/v2/Leads", true),
            ("<<credentials.sf.token>>/services/data", false),
            ("<<credentials.sf.instance_url | lower>>/x", false),
        ];
        for (template, ok) in cases {
            let mut out = Vec::new();
            url(&renderer, "url", template, &mut out);
            assert_eq!(out.is_empty(), ok, "{template}: {out:?}");
        }
    }

    /// The paths of a step's placement problems.
    /// (Sorted: JSON object order depends on serde_json's features.)
    fn step_paths(step: serde_json::Value) -> Vec<String> {
        let step: Step = serde_json::from_value(step).expect("a step");
        let mut paths: Vec<String> = step_problems(&Renderer::new(), "steps[2]", &step)
            .into_iter()
            .map(|e| e.path)
            .collect();
        paths.sort();
        paths
    }

    #[test]
    fn every_part_of_a_step_is_checked_under_its_own_path() {
        let bad = "<<credentials.c.token | upper>>";
        let good = "Bearer <<credentials.c.token>>";
        let step = |extra: serde_json::Value| {
            let mut step =
                serde_json::json!({"name": "s", "method": "POST", "url": "https://api.x.com/v1"});
            step.as_object_mut()
                .expect("object")
                .extend(extra.as_object().expect("object").clone());
            step
        };
        let cases: Vec<(serde_json::Value, Vec<&str>)> = vec![
            (serde_json::json!({}), vec![]),
            (
                serde_json::json!({"url": "https://api.x.com<<input.p>>"}),
                vec!["steps[2].url"],
            ),
            (
                serde_json::json!({"url": format!("https://api.x.com/{bad}")}),
                vec!["steps[2].url"],
            ),
            (
                serde_json::json!({"url": "<<credentials.hook.url>>"}),
                vec![],
            ),
            (
                serde_json::json!({"headers": {"A": good, "B": bad}, "query": {"q": bad, "r": good}}),
                vec!["steps[2].headers.B", "steps[2].query.q"],
            ),
            (
                serde_json::json!({"body": {"type": "json", "content":
                    {"ok": good, "list": [1, null, true, bad], "<<credentials.c.k>>": "v"}}}),
                vec![
                    "steps[2].body.content.<<credentials.c.k>>",
                    "steps[2].body.content.list[3]",
                ],
            ),
            (
                serde_json::json!({"body": {"type": "form", "content": {"a": good, "b": bad}}}),
                vec!["steps[2].body.content.b"],
            ),
            (
                serde_json::json!({"body": {"type": "xml", "content": format!("<a>{bad}</a>")}}),
                vec!["steps[2].body.content"],
            ),
            (
                serde_json::json!({"body": {"type": "raw", "content_type": "text/plain", "content": bad}}),
                vec!["steps[2].body.content"],
            ),
            (
                serde_json::json!({"body": {"type": "raw", "content_type": "text/plain", "content": good}}),
                vec![],
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(step_paths(step(extra.clone())), want, "{extra}");
        }
    }

    #[test]
    fn the_output_may_name_no_credential_at_all() {
        let cases = [
            (serde_json::json!({"id": "<<steps.a.extract.id>>"}), vec![]),
            (
                serde_json::json!({"id": "<<credentials.c.token>>", "n": 1,
                                   "list": ["x", "<<credentials.c.k>>"]}),
                vec!["output.id", "output.list[1]"],
            ),
            (
                serde_json::json!({"<<credentials.c.k>>": 1}),
                vec!["output.<<credentials.c.k>>"],
            ),
            (serde_json::json!("literal credentials"), vec![]),
        ];
        for (output, want) in cases {
            let mut paths: Vec<String> = output_problems(&Renderer::new(), &output)
                .into_iter()
                .map(|e| e.path)
                .collect();
            paths.sort();
            assert_eq!(paths, want, "{output}");
        }
        let problem =
            &output_problems(&Renderer::new(), &serde_json::json!("<<credentials.c.k>>"))[0];
        assert_eq!(
            (problem.path.as_str(), problem.message.as_str()),
            ("output", "the output may not name a credential")
        );
    }

    #[test]
    fn a_credential_hidden_from_the_scanner_is_found_by_the_parser() {
        let renderer = Renderer::new();
        // The scanner ends the placeholder at the `>>` inside the string
        // literal, leaving the word outside; the template engine sees it.
        let hidden = "<<'>>' ~ credentials.c.token>>";
        assert_eq!(placeholder_spans(hidden), [(0, 5)]);
        assert!(names_credentials(&renderer, hidden));
        assert_eq!(refs(&renderer, hidden), ["credentials.c.token"]);
        assert!(!names_credentials(&renderer, "<<input.credentials_x>>"));
        assert!(!names_credentials(&renderer, "no placeholder: credentials"));
        // The word right after a placeholder, or further on, is literal text.
        assert!(!names_credentials(&renderer, "<<input.x>>credentials"));
        assert!(!names_credentials(
            &renderer,
            "<<input.x>> your credentials"
        ));
        assert!(refs(&renderer, "<<input.x").is_empty());
        let mut out = Vec::new();
        json(
            &renderer,
            "body",
            &serde_json::json!({"k": hidden}),
            &mut out,
        );
        assert_eq!(out.len(), 1, "{out:?}");
    }
}
