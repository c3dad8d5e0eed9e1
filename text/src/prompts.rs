//! Prompts of on-policy distillation from a JSON-lines file: one object per line, the prompt
//! text in one string field and, optionally, a reference completion in another; blank lines are
//! skipped.

use crate::error::{Result, TextError};
use std::path::Path;

/// One prompt of a prompts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptText {
    /// Its 1-based line number in the file.
    pub line: usize,
    /// The prompt.
    pub prompt: String,
    /// The reference completion, when the file names a completion field.
    pub completion: Option<String>,
}

/// The prompts of `path`: each line's string field `prompt_field`, and `completion_field`'s
/// when given.
///
/// Errors: [`TextError::CorpusRead`] when the file cannot be read; [`TextError::TextFile`]
/// (naming the file and line, what was expected and what came) for bytes that are not UTF-8, a
/// line that is not a JSON object, a field that is missing or not a string, and a file without
/// any prompt.
pub fn read_prompts(
    path: &Path,
    prompt_field: &str,
    completion_field: Option<&str>,
) -> Result<Vec<PromptText>> {
    let bytes = std::fs::read(path).map_err(|source| TextError::CorpusRead {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |line: usize, message: String| TextError::TextFile {
        path: path.to_path_buf(),
        line,
        message,
    };
    let text = String::from_utf8(bytes)
        .map_err(|e| bad(1, format!("expected UTF-8 text, got invalid bytes ({e})")))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            bad(
                i + 1,
                format!("expected a JSON object with a string field {prompt_field:?}, got text that is not JSON ({e})"),
            )
        })?;
        let field = |name: &str, flag: &str| -> Result<String> {
            match value.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(bad(
                    i + 1,
                    format!("expected the field {name:?} to be a string"),
                )),
                None if value.is_object() => Err(bad(
                    i + 1,
                    format!("expected a string field {name:?} ({flag}), got none"),
                )),
                None => Err(bad(
                    i + 1,
                    format!("expected a JSON object with a string field {name:?}"),
                )),
            }
        };
        out.push(PromptText {
            line: i + 1,
            prompt: field(prompt_field, "--prompt-field")?,
            completion: completion_field
                .map(|c| field(c, "--completion-field"))
                .transpose()?,
        });
    }
    if out.is_empty() {
        return Err(bad(1, "expected one prompt per line, got no line".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("prompts-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn prompts_and_completions_are_read_by_field() {
        let p = file(
            "ok.jsonl",
            "{\"prompt\": \"a\", \"answer\": \"b\"}\n\n{\"prompt\": \"c\", \"answer\": \"d\", \"x\": 1}\n",
        );
        let got = read_prompts(&p, "prompt", Some("answer")).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].line, 3);
        assert_eq!(
            (got[1].prompt.as_str(), got[1].completion.as_deref()),
            ("c", Some("d"))
        );
        let got = read_prompts(&p, "prompt", None).unwrap();
        assert!(got[0].completion.is_none());
    }

    #[test]
    fn bad_lines_name_the_file_line_and_field() {
        let p = file("bad.jsonl", "{\"prompt\": \"a\"}\n{\"q\": \"b\"}\n");
        let e = read_prompts(&p, "prompt", None).unwrap_err().to_string();
        assert!(
            e.contains("bad.jsonl line 2") && e.contains("\"prompt\" (--prompt-field)"),
            "{e}"
        );
        let e = read_prompts(&p, "prompt", Some("answer"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1") && e.contains("--completion-field"),
            "{e}"
        );
        let p = file("num.jsonl", "{\"prompt\": 3}\n");
        let e = read_prompts(&p, "prompt", None).unwrap_err().to_string();
        assert!(e.contains("to be a string"), "{e}");
        let p = file("empty.jsonl", "\n\n");
        assert!(read_prompts(&p, "prompt", None).is_err());
    }
}
