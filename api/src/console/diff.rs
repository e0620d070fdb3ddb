//! A line diff of two connector versions' pretty-printed JSON, in hunks
//! with three lines of context, for the connector page. Values stay plain
//! text; the template escapes them like everything else.

use std::time::Duration;

use similar::{ChangeTag, TextDiff};

/// Lines of unchanged context around each change.
const CONTEXT: usize = 3;

/// How long the diff may search for the smallest edit before settling for
/// a larger one (definitions are small; this bounds a pathological pair).
const TIMEOUT: Duration = Duration::from_millis(200);

/// One line of a hunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// `same`, `removed` or `added` (also the CSS class).
    pub kind: &'static str,
    /// The line number in the older text (not for added lines).
    pub old: Option<usize>,
    /// The line number in the newer text (not for removed lines).
    pub new: Option<usize>,
    /// The line, without its line break.
    pub text: String,
}

impl Line {
    /// The marker a unified diff puts before the line.
    pub fn sign(&self) -> &'static str {
        match self.kind {
            "removed" => "-",
            "added" => "+",
            _ => " ",
        }
    }
}

/// The hunks turning `old` into `new`; empty when they are equal.
pub(crate) fn hunks(old: &str, new: &str) -> Vec<Vec<Line>> {
    let diff = TextDiff::configure().timeout(TIMEOUT).diff_lines(old, new);
    diff.grouped_ops(CONTEXT)
        .iter()
        .map(|group| {
            group
                .iter()
                .flat_map(|op| diff.iter_changes(op))
                .map(|change| Line {
                    kind: match change.tag() {
                        ChangeTag::Equal => "same",
                        ChangeTag::Delete => "removed",
                        ChangeTag::Insert => "added",
                    },
                    old: change.old_index().map(|i| i + 1),
                    new: change.new_index().map(|i| i + 1),
                    text: change.value().trim_end_matches(['\r', '\n']).to_owned(),
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: &'static str, old: Option<usize>, new: Option<usize>, text: &str) -> Line {
        Line {
            kind,
            old,
            new,
            text: text.to_owned(),
        }
    }

    #[test]
    fn equal_texts_have_no_hunks() {
        assert!(hunks("a\nb\n", "a\nb\n").is_empty());
    }

    #[test]
    fn a_changed_line_shows_as_removed_then_added_with_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n";
        let got = hunks(old, new);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0],
            vec![
                line("same", Some(2), Some(2), "2"),
                line("same", Some(3), Some(3), "3"),
                line("same", Some(4), Some(4), "4"),
                line("removed", Some(5), None, "5"),
                line("added", None, Some(5), "five"),
                line("same", Some(6), Some(6), "6"),
                line("same", Some(7), Some(7), "7"),
                line("same", Some(8), Some(8), "8"),
            ]
        );
        assert_eq!(got[0][3].sign(), "-");
        assert_eq!(got[0][4].sign(), "+");
        assert_eq!(got[0][0].sign(), " ");
    }

    #[test]
    fn distant_changes_make_separate_hunks() {
        let old: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        let new = old
            .replace("line 2\n", "line two\n")
            .replace("line 19\n", "line nineteen\n");
        let got = hunks(&old, &new);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[1].iter().any(|l| l.text == "line nineteen"));
    }
}
