//! Located diagnostics for the cluster description, rendered compiler-style:
//! `file:line:col: error: message`, the offending source line, and a `^^^` marker.

use std::fmt::Write as _;

use super::types::Pos;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub pos: Pos,
    pub message: String,
    /// Extra context, e.g. where a duplicate value was first used.
    pub note: Option<String>,
}

/// Every problem found in one description, sorted by position.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    pub file: String,
    pub source: String,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(file: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            source: source.into(),
            items: Vec::new(),
        }
    }

    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.items.push(Diagnostic {
            pos,
            message: message.into(),
            note: None,
        });
    }

    pub fn error_with_note(
        &mut self,
        pos: Pos,
        message: impl Into<String>,
        note: impl Into<String>,
    ) {
        self.items.push(Diagnostic {
            pos,
            message: message.into(),
            note: Some(note.into()),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn sort(&mut self) {
        self.items.sort_by_key(|d| (d.pos.line, d.pos.col));
        self.items.dedup();
    }

    /// Renders every diagnostic with its snippet, then a one-line summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.items {
            self.render_one(&mut out, d);
        }
        let n = self.items.len();
        let _ = writeln!(
            out,
            "{}: {n} error{} found",
            self.file,
            if n == 1 { "" } else { "s" }
        );
        out
    }

    fn render_one(&self, out: &mut String, d: &Diagnostic) {
        let (line, col) = (d.pos.line.max(1), d.pos.col.max(1));
        let _ = writeln!(out, "{}:{line}:{col}: error: {}", self.file, d.message);
        if let Some(text) = self.source.lines().nth(line as usize - 1) {
            let width = line.to_string().len();
            let marker_len = if d.pos.len > 0 {
                // Never underline past the end of the line (multi-line values).
                let rest = text.chars().count().saturating_sub(col as usize - 1);
                let value = self
                    .source
                    .get(d.pos.offset..d.pos.offset + d.pos.len)
                    .unwrap_or("");
                value
                    .lines()
                    .next()
                    .map(|l| l.chars().count())
                    .unwrap_or(1)
                    .clamp(1, rest.max(1))
            } else {
                1
            };
            let _ = writeln!(out, "{:width$} |", "");
            let _ = writeln!(out, "{line:>width$} | {text}");
            let _ = writeln!(
                out,
                "{:width$} | {}{}",
                "",
                " ".repeat(col as usize - 1),
                "^".repeat(marker_len)
            );
            if let Some(note) = &d.note {
                let _ = writeln!(out, "{:width$} = note: {note}", "");
            }
        } else if let Some(note) = &d.note {
            let _ = writeln!(out, "  = note: {note}");
        }
    }
}

impl std::fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

impl std::error::Error for Diagnostics {}

/// The closest candidate within a small edit distance, for "did you mean" hints.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("hostnme", &["hostname", "ip", "mac"]),
            Some("hostname")
        );
        assert_eq!(
            did_you_mean("pod_cidrs", &["pod_cidr", "service_cidr"]),
            Some("pod_cidr")
        );
        assert_eq!(did_you_mean("zzzzzz", &["hostname", "ip"]), None);
    }

    #[test]
    fn renders_snippet_with_marker() {
        let src = "a: 1\nnodes:\n  - mac: zz\n";
        let mut d = Diagnostics::new("f.yaml", src);
        d.error(
            Pos {
                line: 3,
                col: 10,
                offset: 16,
                len: 2,
            },
            "invalid MAC address `zz`",
        );
        let r = d.render();
        assert!(
            r.contains("f.yaml:3:10: error: invalid MAC address `zz`"),
            "{r}"
        );
        assert!(r.contains("3 |   - mac: zz\n  |          ^^\n"), "{r}");
    }
}
