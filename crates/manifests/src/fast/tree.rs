//! The block-YAML subset the fast path reads, as a tree of borrowed text.
//!
//! Understood: block mappings and sequences (indentless ones too, as
//! kubectl writes them), plain scalars on one line, single- and
//! double-quoted scalars without escapes, `[]`, `{}`, one-line flow
//! sequences of plain words and simple quoted strings, comments, a
//! leading `---`, CRLF line ends.
//! Anything else (anchors, aliases, tags, block scalars, multi-line
//! scalars, escapes, tabs, duplicate keys, non-ASCII text, directives...)
//! makes [`parse`] return `None`, and the caller uses serde-saphyr.

/// A node of the tree. Lines are 1-based within the document's text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Node<'a> {
    /// A key or `-` with nothing after it: YAML's null.
    Empty,
    Scalar {
        text: &'a str,
        plain: bool,
        line: usize,
    },
    Seq {
        items: Vec<Node<'a>>,
        line: usize,
    },
    Map {
        entries: Vec<(&'a str, Node<'a>)>,
        line: usize,
    },
}

impl Node<'_> {
    /// The line the node starts on (0 for an empty value).
    pub(crate) fn line(&self) -> usize {
        match self {
            Node::Empty => 0,
            Node::Scalar { line, .. } | Node::Seq { line, .. } | Node::Map { line, .. } => *line,
        }
    }
}

/// One line with content: its number, indentation and text (without the
/// indentation and trailing spaces).
#[derive(Clone, Copy, Debug)]
struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
}

/// Parses one document's text, or `None` when it is outside the subset.
pub(crate) fn parse(text: &str) -> Option<Node<'_>> {
    let lines = lines(text)?;
    let Some(indent) = lines.first().map(|l| l.indent) else { return Some(Node::Empty) };
    let mut p = Parser { pos: 0, lines };
    let root = p.block(indent)?;
    (p.pos == p.lines.len()).then_some(root)
}

fn lines(text: &str) -> Option<Vec<Line<'_>>> {
    let mut out = Vec::with_capacity(text.len() / 16);
    for (i, raw) in text.split('\n').enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        // Tabs, control characters and non-ASCII text are left to serde-saphyr.
        if !raw.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return None;
        }
        let content = raw.trim_start_matches(' ');
        let text = content.trim_end_matches(' ');
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if let Some(rest) = text.strip_prefix("---") {
            // split_documents puts a marker only on a document's first line.
            if i == 0 && (rest.is_empty() || (rest.starts_with(' ') && rest.trim_start().starts_with('#'))) {
                continue;
            }
            return None;
        }
        if text.starts_with("...") || text.starts_with('%') {
            return None;
        }
        out.push(Line { no: i + 1, indent: raw.len() - content.len(), text });
    }
    Some(out)
}

struct Parser<'a> {
    lines: Vec<Line<'a>>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<Line<'a>> {
        self.lines.get(self.pos).copied()
    }

    /// The block starting at the current line, indented by `indent`.
    fn block(&mut self, indent: usize) -> Option<Node<'a>> {
        if is_seq_item(self.peek()?.text) { self.seq(indent) } else { self.map(indent) }
    }

    fn map(&mut self, indent: usize) -> Option<Node<'a>> {
        let start = self.peek()?.no;
        let mut entries: Vec<(&'a str, Node<'a>)> = Vec::new();
        while let Some(line) = self.peek().filter(|l| l.indent == indent) {
            let KeyLine::Key(key, rest) = key_line(line.text) else { return None };
            if entries.iter().any(|(k, _)| *k == key) {
                return None; // serde-saphyr refuses duplicate keys
            }
            self.pos += 1;
            let value = if rest.is_empty() {
                match self.peek() {
                    Some(next) if next.indent > indent => self.block(next.indent)?,
                    // kubectl's indentless sequence: `ports:` then `- ...` at the key's indentation.
                    Some(next) if next.indent == indent && is_seq_item(next.text) => self.seq(indent)?,
                    _ => Node::Empty,
                }
            } else {
                let value = inline(rest, line.no)?;
                if self.peek().is_some_and(|next| next.indent > indent) {
                    return None; // a multi-line scalar
                }
                value
            };
            entries.push((key, value));
        }
        self.ends_block(indent)?;
        Some(Node::Map { entries, line: start })
    }

    fn seq(&mut self, indent: usize) -> Option<Node<'a>> {
        let start = self.peek()?.no;
        let mut items = Vec::new();
        while let Some(line) = self.peek().filter(|l| l.indent == indent && is_seq_item(l.text)) {
            let rest = line.text[1..].trim_start_matches(' ');
            if rest.is_empty() || rest.starts_with('#') {
                self.pos += 1;
                items.push(match self.peek() {
                    Some(next) if next.indent > indent => self.block(next.indent)?,
                    _ => Node::Empty,
                });
            } else if is_seq_item(rest) || matches!(key_line(rest), KeyLine::Key(..)) {
                // A block that starts on the item's line: the rest of the
                // line is its first line, indented to where it starts.
                let nested = indent + (line.text.len() - rest.len());
                self.lines[self.pos] = Line { no: line.no, indent: nested, text: rest };
                items.push(self.block(nested)?);
            } else {
                self.pos += 1;
                items.push(inline(rest, line.no)?);
                if self.peek().is_some_and(|next| next.indent > indent) {
                    return None; // a multi-line scalar
                }
            }
        }
        self.ends_block(indent)?;
        Some(Node::Seq { items, line: start })
    }

    /// After a block: the next line must belong to an enclosing one.
    fn ends_block(&self, indent: usize) -> Option<()> {
        match self.peek() {
            Some(next) if next.indent > indent => None,
            // Same indentation but not part of this block: only an
            // indentless sequence ending before its parent's next key.
            Some(next) if next.indent == indent && is_seq_item(next.text) => None,
            _ => Some(()),
        }
    }
}

fn is_seq_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

enum KeyLine<'a> {
    /// `key:` and what follows it (empty when nothing or a comment does).
    Key(&'a str, &'a str),
    /// Not a `key: value` line (a scalar), or one the subset does not read.
    Other,
}

/// Splits `key: value`; keys are plain words (letters, digits, `._/-`,
/// starting with a letter or digit, not a YAML keyword) or quoted strings
/// without escapes.
fn key_line(text: &str) -> KeyLine<'_> {
    let (key, after) = match text.as_bytes()[0] {
        q @ (b'"' | b'\'') => {
            let Some(end) = text[1..].find(q as char) else { return KeyLine::Other };
            let key = &text[1..1 + end];
            if key.contains('\\') || key.contains('\'') || key.contains('"') {
                return KeyLine::Other;
            }
            (key, &text[2 + end..])
        }
        _ => {
            let Some(colon) = text.find(':') else { return KeyLine::Other };
            (&text[..colon], &text[colon..])
        }
    };
    let Some(rest) = after.strip_prefix(':') else { return KeyLine::Other };
    if !(rest.is_empty() || rest.starts_with(' ')) || !plain_key(key, text) {
        return KeyLine::Other;
    }
    let rest = rest.trim_start_matches(' ');
    KeyLine::Key(key, if rest.starts_with('#') { "" } else { rest })
}

/// Whether `key` (inside `line`) is a key the fast path can take as a string.
fn plain_key(key: &str, line: &str) -> bool {
    if line.starts_with(['"', '\'']) {
        return !key.is_empty();
    }
    key.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
        && !is_keyword(key)
}

/// Plain words YAML (1.1 or 1.2) may read as something other than a string.
pub(crate) fn is_keyword(word: &str) -> bool {
    const WORDS: [&str; 9] = ["null", "true", "false", "yes", "no", "on", "off", "y", "n"];
    WORDS.iter().any(|w| w.eq_ignore_ascii_case(word))
}

/// A value on the rest of a line: a scalar, `[]`/`{}` or a one-line flow
/// sequence of plain words.
fn inline(text: &str, line: usize) -> Option<Node<'_>> {
    match text.as_bytes()[0] {
        q @ (b'"' | b'\'') => {
            let end = 1 + text[1..].find(q as char)?;
            let inner = &text[1..end];
            let after = text[end + 1..].trim_start_matches(' ');
            // Escapes (`\` in "", `''` in '') and text after the quote are not ours.
            if (q == b'"' && inner.contains('\\')) || !(after.is_empty() || text[end + 1..].starts_with(" #")) {
                return None;
            }
            Some(Node::Scalar { text: inner, plain: false, line })
        }
        b'[' => {
            let end = text.find(']')?;
            let after = &text[end + 1..];
            if !(after.is_empty() || after.starts_with(" #")) {
                return None;
            }
            let inner = text[1..end].trim_matches(' ');
            if inner.is_empty() {
                return Some(Node::Seq { items: Vec::new(), line });
            }
            let items = inner.split(',').map(|w| flow_item(w.trim_matches(' '), line)).collect::<Option<Vec<_>>>()?;
            Some(Node::Seq { items, line })
        }
        b'{' => {
            let after = text.strip_prefix("{}")?;
            (after.is_empty() || after.starts_with(" #")).then_some(Node::Map { entries: Vec::new(), line })
        }
        // Anchors, aliases, tags, block scalars, reserved and flow indicators.
        b'&' | b'*' | b'!' | b'|' | b'>' | b'%' | b'@' | b'`' | b'?' | b':' | b',' | b']' | b'}' | b'#' => None,
        _ => {
            let text = match text.find(" #") {
                Some(comment) => text[..comment].trim_end_matches(' '),
                None => text,
            };
            if text.contains(": ") || text.ends_with(':') || text == "-" || text.starts_with("- ") {
                return None;
            }
            Some(Node::Scalar { text, plain: true, line })
        }
    }
}

/// An item of a one-line flow sequence the subset reads: a word of letters,
/// digits and `._/-` (an IPv4 address, a name), or a quoted string without
/// quotes, escapes or commas inside.
fn flow_item(w: &str, line: usize) -> Option<Node<'_>> {
    let quoted = |q: char| w.strip_prefix(q)?.strip_suffix(q).filter(|t| !t.contains(['"', '\'', '\\']));
    if let Some(text) = quoted('"').or_else(|| quoted('\'')) {
        return Some(Node::Scalar { text, plain: false, line });
    }
    let word = !w.is_empty()
        && w.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
        && !w.starts_with('-');
    word.then_some(Node::Scalar { text: w, plain: true, line })
}
