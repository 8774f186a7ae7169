//! Errors: where a manifest is wrong and why.

use edgemesh_k8s::{ConvertError, Problem};
use thiserror::Error;

/// Why a manifest file was rejected. Every variant names the 1-based line in
/// the file: where the YAML broke, or where the offending field (or, failing
/// that, the object) starts.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ManifestError {
    /// The text is not YAML, or a field has the wrong type.
    #[error("line {line}: invalid YAML: {reason}")]
    Yaml { line: usize, reason: String },
    /// The YAML is fine but an object breaks a Kubernetes rule.
    #[error("line {line}: {object}: {problem}")]
    Invalid {
        line: usize,
        /// Kind and, when known, `namespace/name` of the object.
        object: String,
        problem: Problem,
    },
}

impl ManifestError {
    /// The 1-based line in the file the error points at.
    pub fn line(&self) -> usize {
        match self {
            ManifestError::Yaml { line, .. } | ManifestError::Invalid { line, .. } => *line,
        }
    }

    /// The error without its line number, for structured logs.
    pub fn reason(&self) -> String {
        match self {
            ManifestError::Yaml { reason, .. } => format!("invalid YAML: {reason}"),
            ManifestError::Invalid { object, problem, .. } => format!("{object}: {problem}"),
        }
    }
}

impl From<ConvertError> for ManifestError {
    fn from(e: ConvertError) -> Self {
        ManifestError::Invalid { line: e.line, object: e.object, problem: e.problem }
    }
}
