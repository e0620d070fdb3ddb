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
