//! The input of `edgemesh migrate`: the EdgeMesh config inside a file
//! (a ConfigMap's documents, or the bare config), and its line numbers in
//! that file, for messages that point at the line.

use serde_json::Value;

/// The EdgeMesh config inside the input, and how its lines map to the file's.
pub(super) struct Located {
    pub(super) text: String,
    /// File line of the config text's first line, when known.
    pub(super) start: Option<usize>,
    /// Prefix for messages about the config text (where it sits).
    pub(super) what: String,
    /// `namespace/name` of the ConfigMap it came from.
    pub(super) config_map: Option<String>,
}

impl Located {
    /// The file line of line `n` (1-based) of the config text.
    pub(super) fn line_of(&self, n: usize) -> usize {
        self.start.map_or(n, |s| s + n - 1)
    }
}

/// Splits `text` into YAML documents with the file line each starts on.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = vec![(1, String::new())];
    for (i, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            docs.push((i + 2, String::new()));
        } else if let Some((_, doc)) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.retain(|(_, d)| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')));
    docs
}

/// Finds the agent config: a ConfigMap's `data["edgemesh-agent.yaml"]`,
/// or the whole document when it is a bare config.
pub(super) fn locate_config(text: &str) -> Result<Located, (Option<usize>, String)> {
    const KEY: &str = "edgemesh-agent.yaml";
    let docs = documents(text);
    if docs.is_empty() {
        return Err((
            None,
            "no YAML document: expected the edgemesh-agent-cfg ConfigMap or its edgemesh-agent.yaml".into(),
        ));
    }
    let mut parsed = Vec::new();
    for (start, doc) in &docs {
        let value: Value = serde_saphyr::from_str(doc).map_err(|e| {
            let (line, message) = yaml_error(&e);
            (Some(line.map_or(*start, |l| start + l - 1)), message)
        })?;
        parsed.push((*start, doc, value));
    }
    let config_maps: Vec<_> = parsed.iter().filter(|(_, _, v)| v["kind"] == "ConfigMap").collect();
    if config_maps.is_empty() {
        let [(start, doc, _)] = parsed.as_slice() else {
            return Err((
                Some(docs[1].0),
                "several YAML documents and no ConfigMap among them: give one config".into(),
            ));
        };
        return Ok(Located { text: (*doc).clone(), start: Some(*start), what: String::new(), config_map: None });
    }
    let with_config: Vec<_> = config_maps.iter().filter(|(_, _, v)| v["data"].get(KEY).is_some()).collect();
    let [(start, doc, cm)] = with_config.as_slice() else {
        let (start, _, _) = config_maps[0];
        let message = if with_config.is_empty() {
            format!("no ConfigMap here has data[\"{KEY}\"] (EdgeMesh's is edgemesh-agent-cfg)")
        } else {
            format!("{} ConfigMaps have data[\"{KEY}\"]: give one", with_config.len())
        };
        return Err((Some(*start), message));
    };
    let name = format!(
        "{}/{}",
        cm["metadata"]["namespace"].as_str().unwrap_or("default"),
        cm["metadata"]["name"].as_str().unwrap_or("?")
    );
    let Some(config) = cm["data"][KEY].as_str() else {
        let line = key_line_in(doc, &format!("{KEY}:")).map(|l| start + l - 1);
        return Err((line, format!("data[\"{KEY}\"] of ConfigMap {name} is not a string")));
    };
    // A block scalar (`|`, `|-`) starts on the line after its key: lines map
    // one to one. Other styles: lines are counted within the string.
    let key_line = key_line_in(doc, &format!("{KEY}:"));
    let block = key_line.and_then(|l| doc.lines().nth(l - 1)).is_some_and(|l| {
        let rest = l.trim_start().trim_start_matches(KEY).trim_start_matches(':').trim();
        rest.starts_with('|')
    });
    let first = key_line.filter(|_| block).map(|l| start + l);
    let what = match first {
        Some(_) => format!("data[\"{KEY}\"]: "),
        None => format!("data[\"{KEY}\"] (lines counted within it): "),
    };
    Ok(Located { text: config.to_owned(), start: first, what, config_map: Some(name) })
}

/// 1-based line of the first line whose trimmed text starts with `prefix`.
fn key_line_in(text: &str, prefix: &str) -> Option<usize> {
    text.lines().position(|l| l.trim_start().starts_with(prefix)).map(|i| i + 1)
}

/// Line and message of a serde-saphyr error.
pub(super) fn yaml_error(e: &serde_saphyr::Error) -> (Option<usize>, String) {
    let p = crate::config::YamlProblem::of(e);
    (p.line, p.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_starting_lines() {
        let docs = documents("# head\na: 1\n---\nb: 2\n--- \n\n---\nc: 3\n");
        assert_eq!(docs.iter().map(|(l, _)| *l).collect::<Vec<_>>(), [1, 4, 8]);
    }
}
