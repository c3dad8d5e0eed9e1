//! The text-file flags (`--tokenizer`, `--documents`, `--text-field`, `--eos-token`,
//! `--test-every`, `--test-data`) that `train`, `distill`, `capture` and `eval` share.

use super::error::{ConfigError, invalid};
use crate::cli::TextFilesArgs;
use distill_text::FilesOptions;

/// The validated text-file settings of `a`. With `needs_tokenizer` (every command but
/// `eval --checkpoint`, where the checkpoint's record stands in), the other flags need
/// `--tokenizer`.
pub(super) fn files_options(
    a: &TextFilesArgs,
    needs_tokenizer: bool,
) -> Result<FilesOptions, ConfigError> {
    if needs_tokenizer && a.tokenizer.is_none() {
        let given = [
            ("documents", a.documents.is_some()),
            ("text-field", a.text_field.is_some()),
            ("eos-token", a.eos_token.is_some()),
            ("test-every", a.test_every.is_some()),
            ("test-data", a.test_data.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            return Err(invalid(
                flag,
                "needs --tokenizer FILE (the teacher's tokenizer.json): it reads --data-dir as \
                 .txt and .jsonl files",
            ));
        }
    }
    if let Some(n) = a.test_every.filter(|&n| n < 2) {
        return Err(invalid(
            "test-every",
            format!("expected at least 2 (every N-th document is held out), got {n}"),
        ));
    }
    for (flag, value) in [("text-field", &a.text_field), ("eos-token", &a.eos_token)] {
        if value.as_deref() == Some("") {
            return Err(invalid(flag, "expected a non-empty string, got \"\""));
        }
    }
    Ok(FilesOptions {
        tokenizer: a.tokenizer.clone(),
        documents: a.documents,
        text_field: a.text_field.clone(),
        eos_token: a.eos_token.clone(),
        test_every: a.test_every,
        test_data: a.test_data.clone(),
    })
}
