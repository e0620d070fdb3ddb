//! Escaping by destination, from minijinja's output spans.

use std::fmt::Write as _;

use minijinja::{OutputSpan, OutputSpanKind};
use percent_encoding::utf8_percent_encode;

use super::{COMPONENT, Dest, TemplateError, escape_xml};

// ---------------------------------------------------------------------------
// Escaping by destination
// ---------------------------------------------------------------------------

/// Where in a URL the output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UrlPart {
    /// Scheme and authority: values are inserted raw.
    Prefix,
    Path,
    Query,
    Fragment,
}

/// Tracks the URL part over the characters emitted so far.
pub(super) struct UrlState {
    part: UrlPart,
    /// The last two characters, most recent first.
    prev: [char; 2],
}

impl UrlState {
    fn new() -> Self {
        UrlState {
            part: UrlPart::Prefix,
            prev: ['\0', '\0'],
        }
    }

    fn step(&mut self, c: char) {
        self.part = match (self.part, c) {
            (UrlPart::Fragment, _) | (_, '#') => UrlPart::Fragment,
            (UrlPart::Prefix | UrlPart::Path, '?') => UrlPart::Query,
            // The `//` of `scheme://`.
            (UrlPart::Prefix, '/')
                if self.prev[0] == ':' || (self.prev[0] == '/' && self.prev[1] == ':') =>
            {
                UrlPart::Prefix
            }
            (UrlPart::Prefix, '/') => UrlPart::Path,
            (part, _) => part,
        };
        self.prev = [c, self.prev[0]];
    }
}

/// Builds the final string from the rendered output, escaping the bytes that
/// came from placeholders (bytes not covered by a span are treated as values).
pub(super) fn assemble(
    out: &str,
    spans: &[OutputSpan],
    dest: Dest,
) -> Result<String, TemplateError> {
    let mut asm = Assembler::new(dest, out.len());
    let mut pos = 0;
    for span in spans {
        let range = span.output_range();
        let (start, end) = (range.start.max(pos), range.end.min(out.len()));
        if start >= end {
            continue;
        }
        let (Some(gap), Some(piece)) = (out.get(pos..start), out.get(start..end)) else {
            break;
        };
        if !gap.is_empty() {
            asm.value(gap)?;
        }
        if span.kind() == OutputSpanKind::Raw {
            asm.literal(piece)?;
        } else {
            asm.value(piece)?;
        }
        pos = end;
    }
    if let Some(rest) = out.get(pos..)
        && !rest.is_empty()
    {
        asm.value(rest)?;
    }
    asm.finish()
}

pub(super) struct Assembler {
    dest: Dest,
    out: String,
    url: UrlState,
    /// Byte offset in `out` where the current URL path segment starts.
    segment_start: usize,
    /// Whether the current URL path segment contains value bytes.
    segment_has_value: bool,
}

impl Assembler {
    fn new(dest: Dest, capacity: usize) -> Self {
        Assembler {
            dest,
            out: String::with_capacity(capacity),
            url: UrlState::new(),
            segment_start: 0,
            segment_has_value: false,
        }
    }

    /// Literal template text: copied; in a URL it moves the state on.
    fn literal(&mut self, text: &str) -> Result<(), TemplateError> {
        if self.dest != Dest::Url {
            self.out.push_str(text);
            return Ok(());
        }
        for c in text.chars() {
            self.url_char(c)?;
        }
        Ok(())
    }

    /// A character emitted raw into a URL.
    fn url_char(&mut self, c: char) -> Result<(), TemplateError> {
        let before = self.url.part;
        self.url.step(c);
        if before == UrlPart::Path && matches!(c, '/' | '?' | '#') {
            self.end_segment()?;
        }
        self.out.push(c);
        if self.url.part == UrlPart::Path && c == '/' {
            self.segment_start = self.out.len();
            self.segment_has_value = false;
        }
        Ok(())
    }

    /// Checks the path segment just completed.
    fn end_segment(&mut self) -> Result<(), TemplateError> {
        if self.segment_has_value {
            let segment = self.out.get(self.segment_start..).unwrap_or_default();
            let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
            if decoded == "." || decoded == ".." {
                return Err(TemplateError::UrlDotSegment);
            }
        }
        Ok(())
    }

    /// Placeholder output: escaped for the destination.
    fn value(&mut self, text: &str) -> Result<(), TemplateError> {
        match self.dest {
            Dest::Text | Dest::Header => self.out.push_str(text),
            Dest::Xml => self.out.push_str(&escape_xml(text)),
            Dest::Url => match self.url.part {
                // All of a value that starts in the prefix is raw (a base
                // URL with a path of its own); its characters move the state.
                UrlPart::Prefix => {
                    for c in text.chars() {
                        self.url_char(c)?;
                    }
                }
                part => {
                    // Encoded text has no `/`, `?` or `#`: the part stays.
                    let _ = write!(self.out, "{}", utf8_percent_encode(text, COMPONENT));
                    if part == UrlPart::Path {
                        self.segment_has_value = true;
                    }
                }
            },
        }
        Ok(())
    }

    fn finish(mut self) -> Result<String, TemplateError> {
        if self.dest == Dest::Url && self.url.part == UrlPart::Path {
            self.end_segment()?;
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::template::Renderer;

    /// The URL part after each character of `url`, one letter per
    /// character: `s` scheme and authority, `p` path, `q` query, `f`
    /// fragment.
    fn parts(url: &str) -> String {
        let mut state = UrlState::new();
        url.chars()
            .map(|c| {
                state.step(c);
                match state.part {
                    UrlPart::Prefix => 's',
                    UrlPart::Path => 'p',
                    UrlPart::Query => 'q',
                    UrlPart::Fragment => 'f',
                }
            })
            .collect()
    }

    #[test]
    fn url_state_finds_where_each_part_starts() {
        let cases = [
            // The `//` after `scheme:` stays in the authority; the next `/`
            // starts the path.
            ("https://h/p?q#f", "sssssssssppqqff"),
            ("http://h:8/a/b", "sssssssssspppp"),
            // Query and fragment may follow the authority directly.
            ("https://h?q=/", "sssssssssqqqq"),
            ("https://h#f?/", "sssssssssffff"),
            // `/` and `?` do not leave the query; nothing leaves the fragment.
            ("https://h/?a/b?c#d/e?#", "ssssssssspqqqqqqffffff"),
            // A third slash is the path; so is a slash not after `:` or `:/`.
            ("https:///p", "sssssssspp"),
            ("h//x", "sppp"),
            ("//h/p", "ppppp"),
            ("/:/p", "pppp"),
            // `:/` keeps the authority whether one or two slashes follow.
            ("x:/y", "ssss"),
            ("x:/y/z", "sssspp"),
            ("a:b//c", "sssppp"),
            ("x/:/", "sppp"),
            ("?a#b", "qqff"),
            ("#a?b", "ffff"),
        ];
        for (url, want) in cases {
            assert_eq!(parts(url), want, "{url}");
        }
    }

    /// Assembles literal text and values, alternately (literal first).
    fn assembled(dest: Dest, pieces: &[&str]) -> Result<String, TemplateError> {
        let mut asm = Assembler::new(dest, 0);
        for (i, piece) in pieces.iter().enumerate() {
            if i % 2 == 0 {
                asm.literal(piece)?;
            } else {
                asm.value(piece)?;
            }
        }
        asm.finish()
    }

    #[test]
    fn url_values_are_raw_before_the_path_and_encoded_after() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["", "https://h.test/base", "/u/", "a/b c"],
                "https://h.test/base/u/a%2Fb%20c",
            ),
            // A value that ends the authority moves the state: the next
            // value is in the path.
            (&["", "https://h.test/", "", "a/b"], "https://h.test/a%2Fb"),
            (&["https://", "h.test", "/", "x?y"], "https://h.test/x%3Fy"),
            (
                &["https://h.test?a=", "1&b=2#f"],
                "https://h.test?a=1%26b%3D2%23f",
            ),
            (&["https://h.test#", "a#b c"], "https://h.test#a%23b%20c"),
            (&["https://h.test/", "~-._ok"], "https://h.test/~-._ok"),
            // Literal text is never encoded.
            (
                &["https://h.test/a b?c d#e f"],
                "https://h.test/a b?c d#e f",
            ),
        ];
        for (pieces, want) in cases {
            assert_eq!(
                assembled(Dest::Url, pieces).as_deref(),
                Ok(*want),
                "{pieces:?}"
            );
        }
    }

    #[test]
    fn url_values_forming_a_dot_segment_are_refused_wherever_the_segment_ends() {
        for pieces in [
            &["https://h.test/", ".."][..],
            &["https://h.test/", "."],
            &["https://h.test/", "..", "/x"],
            &["https://h.test/", "..", "?x"],
            &["https://h.test/", "..", "#x"],
            &["https://h.test/", "%2E", ""],
            &["https://h.test/", "%2e%2E", "/"],
            &["https://h.test/", ".", "", "."],
            &["https://h.test/", "x", "/", ".."],
        ] {
            // `%2E` in a value is encoded to `%252E`, so only raw dots can
            // form a dot segment; literal `%2e` next to a value dot counts.
            let want = if pieces[1].starts_with('%') {
                Ok(())
            } else {
                Err(TemplateError::UrlDotSegment)
            };
            assert_eq!(assembled(Dest::Url, pieces).map(|_| ()), want, "{pieces:?}");
        }
        for pieces in [
            &["https://h.test/", "..."][..],
            &["https://h.test/", "a.."],
            &["https://h.test/a", ".."],
            &["https://h.test/", "..", "a"],
            &["https://h.test/?", ".."],
            &["https://h.test/#", ".."],
            // Dot segments written literally are the author's business.
            &["https://h.test/../x"],
            &["https://h.test/", "x", "/.."],
        ] {
            assert!(assembled(Dest::Url, pieces).is_ok(), "{pieces:?}");
        }
        assert_eq!(
            assembled(Dest::Url, &["https://h.test/", ".", "%2e"]),
            Err(TemplateError::UrlDotSegment)
        );
        assert_eq!(
            assembled(Dest::Url, &["https://h.test/", ".", "%2E/x"]),
            Err(TemplateError::UrlDotSegment)
        );
    }

    #[test]
    fn non_url_destinations_track_no_url_state() {
        let pieces = &["https://h.test/", "..", "?a=", "<&>\"'"];
        assert_eq!(
            assembled(Dest::Xml, pieces).as_deref(),
            Ok("https://h.test/..?a=&lt;&amp;&gt;&quot;&apos;")
        );
        assert_eq!(
            assembled(Dest::Xml, &["<a x='1'>", "</a>"]).as_deref(),
            Ok("<a x='1'>&lt;/a&gt;")
        );
        for dest in [Dest::Text, Dest::Header] {
            assert_eq!(
                assembled(dest, pieces).as_deref(),
                Ok("https://h.test/..?a=<&>\"'"),
                "{dest:?}"
            );
        }
    }

    #[test]
    fn rendered_spans_decide_what_is_escaped() {
        let r = Renderer::new();
        let ctx = json!({
            "input": {"a": "x/y", "b": "<&>", "dots": ".."},
            "settings": {"base": "https://h.test/api"},
        });
        let cases = [
            (
                "<<settings.base>>/<<input.a>>",
                Dest::Url,
                "https://h.test/api/x%2Fy",
            ),
            (
                "https://h.test/<<input.a>>-<<input.a>>",
                Dest::Url,
                "https://h.test/x%2Fy-x%2Fy",
            ),
            (
                "https://h.test/a?<<input.a>>=<<input.b>>&z",
                Dest::Url,
                "https://h.test/a?x%2Fy=%3C%26%3E&z",
            ),
            ("<<input.a>><<input.a>>", Dest::Url, "x/yx%2Fy"),
            (
                "<x><<input.b>></x><<input.b>>",
                Dest::Xml,
                "<x>&lt;&amp;&gt;</x>&lt;&amp;&gt;",
            ),
            ("<<input.b>>", Dest::Xml, "&lt;&amp;&gt;"),
        ];
        for (template, dest, want) in cases {
            assert_eq!(
                r.render_str(template, &ctx, dest).as_deref(),
                Ok(want),
                "{template}"
            );
        }
        assert_eq!(
            r.render_str("https://h.test/<<input.dots>>", &ctx, Dest::Url),
            Err(TemplateError::UrlDotSegment)
        );
        // Literal dot segments after a value are the author's, whether they
        // end the template or follow a base URL ending in `/`.
        let ctx = json!({"input": {"a": "x"}, "settings": {"base": "https://h.test/api/"}});
        for (template, want) in [
            ("https://h.test/<<input.a>>/..", "https://h.test/x/.."),
            ("<<settings.base>>..", "https://h.test/api/.."),
            ("<<settings.base>>../<<input.a>>", "https://h.test/api/../x"),
        ] {
            assert_eq!(
                r.render_str(template, &ctx, Dest::Url).as_deref(),
                Ok(want),
                "{template}"
            );
        }
    }
}
