//! The user's text files: which files a directory holds, and the documents of each.
//!
//! - **Which files**: every `.txt` and `.jsonl` file (extension in any case) in the directory
//!   and its subfolders, in the byte order of their `/`-separated paths relative to it
//!   (`a/z.txt` before `b.txt`, as Python's `sorted()` orders them). Names starting with `.` are
//!   skipped, files and folders alike (the token caches live in `.distill-cache/`); links to
//!   files are followed, links to folders are not.
//! - **`.txt`**: UTF-8 (a leading byte-order mark is dropped), read by [`Documents`]: the whole
//!   file, each line, or each run of non-blank lines.
//! - **`.jsonl`**: one JSON object per line, its text field (a string) is one document; blank
//!   lines are skipped.
//!
//! A document that is empty or only white space is left out in every mode.

use crate::error::{Result, TextError};
use crate::tokenizer::sha256_hex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How a `.txt` file is cut into documents (`.jsonl` files always hold one per line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Documents {
    /// The whole file is one document, as it is (line breaks and a final newline kept).
    File,
    /// Each line is a document, without its line break (`\n`, or `\r\n`).
    Lines,
    /// Each run of non-blank lines is a document, its lines joined by `\n`; lines holding only
    /// white space separate documents.
    BlankLines,
}

impl Documents {
    /// The flag value: `file`, `lines` or `blank-lines`.
    pub fn name(self) -> &'static str {
        match self {
            Documents::File => "file",
            Documents::Lines => "lines",
            Documents::BlankLines => "blank-lines",
        }
    }
}

impl std::fmt::Display for Documents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Documents {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "file" => Ok(Documents::File),
            "lines" => Ok(Documents::Lines),
            "blank-lines" => Ok(Documents::BlankLines),
            _ => Err(format!("expected file, lines or blank-lines, got {s:?}")),
        }
    }
}

/// One text file of a corpus, read into memory.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    /// Where it is.
    pub(crate) path: PathBuf,
    /// Its path relative to the directory given (`/`-separated; the file name when a file was
    /// given): what the corpus fingerprint and messages name.
    pub(crate) name: String,
    /// Its bytes.
    pub(crate) bytes: Vec<u8>,
    /// Hex SHA-256 of its bytes.
    pub(crate) sha256: String,
}

fn is_text_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("txt") || e.eq_ignore_ascii_case("jsonl"))
}

fn is_jsonl(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
}

/// Whether `dir` holds a `.txt` or `.jsonl` file (see the module's rules), for hints.
pub fn has_text_files(dir: &Path) -> bool {
    let mut found = Vec::new();
    walk(dir, dir, None, &mut found).is_ok() && !found.is_empty()
}

/// Appends the text files under `dir` (relative names from `root`) to `out`, leaving out
/// hidden names and anything under `exclude` (a canonical path).
fn walk(
    root: &Path,
    dir: &Path,
    exclude: Option<&Path>,
    out: &mut Vec<(String, PathBuf)>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if exclude.is_some_and(|x| path.canonicalize().is_ok_and(|p| p.starts_with(x))) {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(root, &path, exclude, out)?;
        } else if is_text_file(&path) && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let name: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push((name.join("/"), path));
        }
    }
    Ok(())
}

/// The text files of `root` (a directory, or one `.txt`/`.jsonl` file), sorted and read, files
/// under `exclude` left out.
///
/// Errors: [`TextError::CorpusRead`]; [`TextError::NoTextFiles`] when there is none.
pub(crate) fn read_text_files(root: &Path, exclude: Option<&Path>) -> Result<Vec<SourceFile>> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TextError::CorpusRead { path, source }
    };
    let mut found = Vec::new();
    if root.is_file() && is_text_file(root) {
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        found.push((name, root.to_path_buf()));
    } else if root.is_dir() {
        walk(root, root, exclude, &mut found).map_err(read_err(root))?;
    } else if let Err(source) = std::fs::metadata(root) {
        return Err(TextError::CorpusRead {
            path: root.to_path_buf(),
            source,
        });
    }
    if found.is_empty() {
        return Err(TextError::NoTextFiles {
            path: root.to_path_buf(),
        });
    }
    found.sort();
    found
        .into_iter()
        .map(|(name, path)| {
            let bytes = std::fs::read(&path).map_err(read_err(&path))?;
            Ok(SourceFile {
                sha256: sha256_hex(&bytes),
                path,
                name,
                bytes,
            })
        })
        .collect()
}

/// The documents of `file`: by `mode` for `.txt`, by `text_field` for `.jsonl`.
///
/// Errors: [`TextError::TextFile`] for bytes that are not UTF-8 and for a `.jsonl` line that
/// is not a JSON object whose `text_field` is a string, naming the file and the line.
pub(crate) fn documents(
    file: &SourceFile,
    mode: Documents,
    text_field: &str,
) -> Result<Vec<String>> {
    let text = std::str::from_utf8(&file.bytes).map_err(|e| {
        let at = e.valid_up_to();
        TextError::TextFile {
            path: file.path.clone(),
            line: file.bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1,
            message: format!(
                "expected UTF-8 text, got the byte 0x{:02x} (byte {} of the file)",
                file.bytes[at], at
            ),
        }
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let docs = if is_jsonl(&file.path) {
        jsonl_documents(&file.path, text, text_field)?
    } else {
        txt_documents(text, mode)
    };
    Ok(docs.into_iter().filter(|d| !d.trim().is_empty()).collect())
}

fn txt_documents(text: &str, mode: Documents) -> Vec<String> {
    match mode {
        Documents::File => vec![text.to_string()],
        Documents::Lines => text.lines().map(str::to_string).collect(),
        Documents::BlankLines => {
            let mut docs = Vec::new();
            let mut current: Vec<&str> = Vec::new();
            for line in text.lines() {
                if line.trim().is_empty() {
                    if !current.is_empty() {
                        docs.push(current.join("\n"));
                        current.clear();
                    }
                } else {
                    current.push(line);
                }
            }
            if !current.is_empty() {
                docs.push(current.join("\n"));
            }
            docs
        }
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn jsonl_documents(path: &Path, text: &str, field: &str) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| TextError::TextFile {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            bad(format!(
                "expected a JSON object with a string field {field:?}, got text that is not JSON ({e})"
            ))
        })?;
        let serde_json::Value::Object(object) = &value else {
            return Err(bad(format!(
                "expected a JSON object with a string field {field:?}, got {}",
                json_kind(&value)
            )));
        };
        match object.get(field) {
            Some(serde_json::Value::String(s)) => docs.push(s.clone()),
            Some(other) => {
                return Err(bad(format!(
                    "expected the field {field:?} to be a string, got {}",
                    json_kind(other)
                )));
            }
            None => {
                let keys: Vec<String> = object.keys().map(|k| format!("{k:?}")).collect();
                return Err(bad(format!(
                    "expected a string field {field:?} (--text-field), got the fields [{}]",
                    keys.join(", ")
                )));
            }
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, bytes: &[u8]) -> SourceFile {
        SourceFile {
            path: PathBuf::from(format!("/corpus/{name}")),
            name: name.into(),
            bytes: bytes.to_vec(),
            sha256: sha256_hex(bytes),
        }
    }

    #[test]
    fn txt_documents_by_mode() {
        let text = "\u{feff}One line.\r\nTwo\n  \nThree\nand four.\n\n\nFive\n";
        let f = file("a.txt", text.as_bytes());
        assert_eq!(
            documents(&f, Documents::File, "text").unwrap(),
            vec!["One line.\r\nTwo\n  \nThree\nand four.\n\n\nFive\n"]
        );
        assert_eq!(
            documents(&f, Documents::Lines, "text").unwrap(),
            vec!["One line.", "Two", "Three", "and four.", "Five"]
        );
        assert_eq!(
            documents(&f, Documents::BlankLines, "text").unwrap(),
            vec!["One line.\nTwo", "Three\nand four.", "Five"]
        );
        // A file of white space is no document.
        assert!(
            documents(&file("b.txt", b" \n\t\n"), Documents::File, "text")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn jsonl_documents_take_the_field_and_skip_blank_lines() {
        let f = file(
            "a.jsonl",
            b"{\"text\": \"first\", \"id\": 1}\n\n{\"body\": \"x\", \"text\": \"second\\nline\"}\r\n{\"text\": \"\"}\n",
        );
        // The documents mode does not apply to .jsonl.
        for mode in [Documents::File, Documents::Lines] {
            assert_eq!(
                documents(&f, mode, "text").unwrap(),
                vec!["first", "second\nline"]
            );
        }
    }

    #[test]
    fn bad_jsonl_lines_and_bytes_name_the_file_and_line() {
        let err = |bytes: &[u8], field: &str| {
            documents(&file("d.jsonl", bytes), Documents::File, field)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(b"{\"text\": \"ok\"}\n\n{\"text\": \"cut", "text"),
            "/corpus/d.jsonl line 3: expected a JSON object with a string field \"text\", got \
             text that is not JSON (EOF while parsing a string at line 1 column 13)"
        );
        assert_eq!(
            err(b"{\"content\": \"a\", \"id\": 2}\n", "text"),
            "/corpus/d.jsonl line 1: expected a string field \"text\" (--text-field), got the \
             fields [\"content\", \"id\"]"
        );
        assert_eq!(
            err(b"{\"text\": 5}\n", "text"),
            "/corpus/d.jsonl line 1: expected the field \"text\" to be a string, got a number"
        );
        assert_eq!(
            err(b"[\"text\"]\n", "text"),
            "/corpus/d.jsonl line 1: expected a JSON object with a string field \"text\", got an array"
        );
        let e = documents(
            &file("e.txt", b"ok\nstill ok\nbad \xff here\n"),
            Documents::Lines,
            "text",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "/corpus/e.txt line 3: expected UTF-8 text, got the byte 0xff (byte 16 of the file)"
        );
    }

    #[test]
    fn documents_mode_parses_its_three_names() {
        for m in [Documents::File, Documents::Lines, Documents::BlankLines] {
            assert_eq!(m.name().parse::<Documents>(), Ok(m));
        }
        assert_eq!(
            "paragraphs".parse::<Documents>(),
            Err("expected file, lines or blank-lines, got \"paragraphs\"".into())
        );
    }

    #[test]
    fn files_are_found_recursively_sorted_and_hidden_ones_skipped() {
        let d = std::env::temp_dir().join(format!("distill-text-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for (name, body) in [
            ("b.txt", "b"),
            ("a/z.JSONL", "{\"text\": \"z\"}"),
            ("a/c.txt", "c"),
            ("notes.md", "not text"),
            (".hidden.txt", "h"),
            (".cache/x.txt", "x"),
            ("test/t.txt", "t"),
        ] {
            let p = d.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        let names = |exclude: Option<&Path>| -> Vec<String> {
            read_text_files(&d, exclude)
                .unwrap()
                .into_iter()
                .map(|f| f.name)
                .collect()
        };
        assert_eq!(
            names(None),
            vec!["a/c.txt", "a/z.JSONL", "b.txt", "test/t.txt"]
        );
        let test = d.join("test").canonicalize().unwrap();
        assert_eq!(names(Some(&test)), vec!["a/c.txt", "a/z.JSONL", "b.txt"]);
        let one = read_text_files(&d.join("b.txt"), None).unwrap();
        assert_eq!(
            (one[0].name.as_str(), one[0].bytes.as_slice()),
            ("b.txt", &b"b"[..])
        );
        assert!(has_text_files(&d) && !has_text_files(&d.join(".cache/none")));
        std::fs::remove_dir_all(d.join("a")).unwrap();
        std::fs::remove_dir_all(d.join("test")).unwrap();
        std::fs::remove_file(d.join("b.txt")).unwrap();
        let err = read_text_files(&d, None).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{} holds no .txt or .jsonl file", d.display())),
            "{err}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
