//! Files into documents, documents into objects, with line numbers.
//!
//! A file is split into its YAML documents at `---` lines before parsing
//! (YAML forbids a document marker at column 0 inside content, so this is
//! exact), which gives each document's start line and lets a large file be
//! parsed on several threads: the YAML parser is the cost that dominates a
//! cold load.

/// One object of a manifest file and the 1-based line it starts on.
pub use edgemesh_k8s::ParsedObject;
use edgemesh_k8s::convert;
use edgemesh_k8s::schema::{Document, Header, Located};
use serde_saphyr::{MessageFormatter, UserMessageFormatter};

use crate::error::ManifestError;
use crate::fast;

/// Files smaller than this are parsed on one thread.
pub(crate) const PARALLEL_MIN_BYTES: usize = 512 * 1024;
/// No more parser threads than this for one file.
const MAX_THREADS: usize = 4;

/// Parses one file's text into validated objects (with the line each starts
/// on), or the first error with its line and reason.
///
/// Multi-document files (`---`) and `v1/List` are supported; kinds other than
/// `v1/Service`, `discovery.k8s.io/v1/EndpointSlice`, `v1/Endpoints` and
/// `v1/Node` are skipped.
pub fn parse_manifest(text: &str) -> Result<Vec<ParsedObject>, ManifestError> {
    let threads = if text.len() >= PARALLEL_MIN_BYTES { available_threads() } else { 1 };
    parse_with_threads(text, threads)
}

pub(crate) fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS)
}

/// [`parse_manifest`] on up to `threads` threads.
pub(crate) fn parse_with_threads(text: &str, threads: usize) -> Result<Vec<ParsedObject>, ManifestError> {
    let docs = split_documents(text);
    if threads <= 1 || docs.len() < 2 {
        return parse_documents(&docs);
    }
    // Contiguous groups keep file order; the first error in file order wins.
    let per = docs.len().div_ceil(threads);
    // Worker threads log through the caller's subscriber and span.
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let span = tracing::Span::current();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = docs
            .chunks(per)
            .map(|group| {
                s.spawn(|| tracing::dispatcher::with_default(&dispatch, || span.in_scope(|| parse_documents(group))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    let mut out = Vec::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

fn parse_documents(docs: &[Chunk<'_>]) -> Result<Vec<ParsedObject>, ManifestError> {
    let mut out = Vec::with_capacity(docs.len());
    for doc in docs {
        parse_document(doc, &mut out)?;
    }
    Ok(out)
}

/// One YAML document of a file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Chunk<'a> {
    /// 1-based line of the document's first line (its `---`, if any).
    pub start_line: usize,
    pub text: &'a str,
}

/// Splits a file at document markers, dropping documents with nothing but
/// comments, blank lines and markers.
pub(crate) fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut chunks = Vec::new();
    let mut start = 0; // byte offset of the current document
    let mut start_line = 1;
    let mut content = false;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if let Some(rest) = trimmed.strip_prefix("---").filter(|r| r.is_empty() || r.starts_with([' ', '\t'])) {
            if content {
                chunks.push(Chunk { start_line, text: &text[start..offset] });
            }
            start = offset;
            start_line = i + 1;
            let rest = rest.trim_start();
            content = !rest.is_empty() && !rest.starts_with('#');
        } else if !content {
            let t = trimmed.trim_start();
            content = !(t.is_empty() || t.starts_with('#') || t == "..." || t.starts_with('%'));
        }
        offset += line.len();
    }
    if content {
        chunks.push(Chunk { start_line, text: &text[start..] });
    }
    chunks
}

fn parse_document(chunk: &Chunk<'_>, out: &mut Vec<ParsedObject>) -> Result<(), ManifestError> {
    // Plain block YAML (what kubectl and generators write) takes the fast
    // path; anything it does not fully understand, errors included, goes
    // through serde-saphyr, the reference.
    let doc = match fast::document(chunk.text) {
        Some(doc) => doc,
        None => match slow_document(chunk)? {
            Some(doc) => doc,
            None => return Ok(()),
        },
    };
    let base = chunk.start_line - 1;
    Ok(convert::document(doc.value, base, base + doc.line.max(1), out)?)
}

/// [`parse_manifest`] with every document through serde-saphyr (the fast
/// path skipped): the reference the fast path must agree with, for its
/// property test and the fuzz target (`fuzz/`). Not an API.
#[doc(hidden)]
pub fn parse_manifest_reference(text: &str) -> Result<Vec<ParsedObject>, ManifestError> {
    let mut out = Vec::new();
    for chunk in split_documents(text) {
        if let Some(doc) = slow_document(&chunk)? {
            let base = chunk.start_line - 1;
            convert::document(doc.value, base, base + doc.line.max(1), &mut out)?;
        }
    }
    Ok(out)
}

/// One document through serde-saphyr; `None` for a document of a kind we do
/// not read that does not fit our schema.
pub(crate) fn slow_document(chunk: &Chunk<'_>) -> Result<Option<Located<Document>>, ManifestError> {
    let base = chunk.start_line - 1;
    match serde_saphyr::from_str_with_options(chunk.text, options(chunk.text.len())) {
        Ok(doc) => Ok(Some(doc)),
        Err(err) => {
            // A kind we do not read may hold anything; its errors are not ours.
            if let Ok(h) = serde_saphyr::from_str_with_options::<Header>(chunk.text, options(chunk.text.len()))
                && let Some(kind) = h.kind
                && !convert::reads(&kind, h.api_version.as_deref())
            {
                tracing::debug!(line = chunk.start_line, %kind, "skipping object of a kind the agent does not use");
                return Ok(None);
            }
            let line = err.location().map_or(0, |l| usize::try_from(l.line()).unwrap_or(0)).max(1);
            let reason = UserMessageFormatter.format_message(err.without_snippet()).into_owned();
            Err(ManifestError::Yaml { line: base + line, reason })
        }
    }
}

/// Parser options: no snippets or comments (we report our own way), and a
/// budget that scales with the document so a `List` of 100,000 services is
/// accepted while alias bombs are still refused.
fn options(len: usize) -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.with_snippet = false;
    o.emit_comments = false;
    if let Some(b) = o.budget.as_mut() {
        b.max_events = b.max_events.max(len);
        b.max_nodes = b.max_nodes.max(len);
        b.max_total_scalar_bytes = b.max_total_scalar_bytes.max(len);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_with_start_lines() {
        let text = "# leading comment\n---\na: 1\n---   # c\n\n---\nb: 2\n...\n--- {c: 3}\n---x: 1\n";
        let chunks = split_documents(text);
        let got: Vec<_> = chunks.iter().map(|c| (c.start_line, c.text)).collect();
        assert_eq!(got, vec![(2, "---\na: 1\n"), (6, "---\nb: 2\n...\n"), (9, "--- {c: 3}\n---x: 1\n")]);
        assert_eq!(split_documents("a: 1").len(), 1);
        assert!(split_documents("").is_empty());
        assert!(split_documents("# only\n---\n\n").is_empty());
    }
}
