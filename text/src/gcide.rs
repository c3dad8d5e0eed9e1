//! Reading GCIDE (the Collaborative International Dictionary of English) from its dictd files:
//! `gcide.index` (one line per headword: `headword TAB offset TAB length`, the numbers in dictd's
//! base-64 digits) and `gcide.dict.dz` (dictzip, which reads as gzip).

use crate::error::{Result, TextError};
use flate2::read::MultiGzDecoder;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The dictd data file inside a corpus directory.
pub const GCIDE_DICT: &str = "gcide.dict.dz";
/// The dictd index file inside a corpus directory.
pub const GCIDE_INDEX: &str = "gcide.index";

/// One dictionary entry as plain text: the unit of the held-out split and of packing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The first headword that the index lists for the entry.
    pub headword: String,
    /// The entry's text, see [`entry_to_text`].
    pub text: String,
}

/// The two files of a corpus directory, `(dict, index)`, or [`TextError::CorpusMissing`].
pub(crate) fn corpus_files(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (dict, index) = (dir.join(GCIDE_DICT), dir.join(GCIDE_INDEX));
    for p in [&dict, &index] {
        if !p.is_file() {
            return Err(TextError::CorpusMissing { path: p.clone() });
        }
    }
    Ok((dict, index))
}

/// Reads every entry of the GCIDE in `dir` (`gcide.dict.dz` + `gcide.index`) as one
/// [`Document`], in the order of the entries in the data file.
///
/// Several headwords may point at one entry (`Colour` and `Color`): it is read once. The dictd
/// metadata entries (headwords starting `00-`, such as `00-database-info`, with the licence
/// header) are left out. Bytes that are not UTF-8 (a few in GCIDE 0.48) are dropped.
///
/// Errors: [`TextError::CorpusMissing`] naming the file and `make setup`;
/// [`TextError::CorpusRead`]; [`TextError::CorpusFormat`] for an index line that is not
/// `headword TAB offset TAB length` or points past the end of the data.
pub fn read_gcide(dir: &Path) -> Result<Vec<Document>> {
    let (dict_path, index_path) = corpus_files(dir)?;
    let index = std::fs::read(&index_path).map_err(|source| TextError::CorpusRead {
        path: index_path.clone(),
        source,
    })?;
    let mut data = Vec::new();
    std::fs::File::open(&dict_path)
        .and_then(|f| MultiGzDecoder::new(f).read_to_end(&mut data))
        .map_err(|source| TextError::CorpusRead {
            path: dict_path.clone(),
            source,
        })?;

    // (offset, length) -> (first headword, whether it is metadata). BTreeMap: data-file order.
    let mut entries: BTreeMap<(usize, usize), (String, bool)> = BTreeMap::new();
    let text = String::from_utf8_lossy(&index);
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |message: String| TextError::CorpusFormat {
            path: index_path.clone(),
            line: i + 1,
            message,
        };
        let fields: Vec<&str> = line.split('\t').collect();
        let [headword, offset, length] = fields[..] else {
            return Err(bad(format!(
                "expected `headword<TAB>offset<TAB>length`, got {} tab-separated fields",
                fields.len()
            )));
        };
        let offset = decode_b64_number(offset)
            .ok_or_else(|| bad(format!("offset {offset:?} is not a dictd base-64 number")))?;
        let length = decode_b64_number(length)
            .ok_or_else(|| bad(format!("length {length:?} is not a dictd base-64 number")))?;
        if offset
            .checked_add(length)
            .is_none_or(|end| end > data.len())
        {
            return Err(bad(format!(
                "entry {headword:?} at bytes {offset}..{} is past the end of {} ({} bytes uncompressed)",
                offset.saturating_add(length),
                dict_path.display(),
                data.len()
            )));
        }
        let meta = headword.starts_with("00-");
        entries
            .entry((offset, length))
            .and_modify(|e| e.1 |= meta)
            .or_insert_with(|| (headword.to_string(), meta));
    }
    Ok(entries
        .into_iter()
        .filter(|(_, (_, meta))| !meta)
        .map(|((offset, length), (headword, _))| Document {
            headword,
            text: entry_to_text(&String::from_utf8_lossy(&data[offset..offset + length])),
        })
        .filter(|d| !d.text.is_empty())
        .collect())
}

/// A dictd base-64 number (digits `A-Za-z0-9+/`, most significant first), or `None`.
pub(crate) fn decode_b64_number(s: &str) -> Option<usize> {
    if s.is_empty() {
        return None;
    }
    s.bytes().try_fold(0usize, |acc, c| {
        let digit = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc.checked_mul(64)?.checked_add(digit as usize)
    })
}

/// A dictd entry as plain text: paragraphs (separated by blank lines) become one line each, their
/// words joined by single spaces (the indentation and the column padding of quotations go); lines that are only a source tag in brackets
/// (`[1913 Webster]`, `[WordNet 1.5 +PJC]`) are dropped, and so is the U+FFFD that replaces
/// bytes that were not UTF-8. The headword line with its pronunciation (`Serpolet
/// \Ser"po*let\, n.`) is kept as it is.
pub fn entry_to_text(entry: &str) -> String {
    let mut paragraphs: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in entry.lines() {
        let line = line.trim();
        if line.is_empty() {
            if !current.is_empty() {
                paragraphs.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') && !line[1..].contains('[') {
            continue;
        }
        for word in line.split_whitespace() {
            if !current.is_empty() {
                current.push(' ');
            }
            current.extend(word.chars().filter(|&c| c != char::REPLACEMENT_CHARACTER));
        }
    }
    if !current.is_empty() {
        paragraphs.push(current);
    }
    paragraphs.join("\n")
}

/// An entry's text cut after its `words`-th whitespace-separated word, as `(prompt,
/// completion)` with `prompt + completion == text`: the completion starts with the whitespace
/// that follows the prompt (so that a byte-level BPE encodes the two parts as it encodes the
/// text). `None` when `words` is 0 or nothing but whitespace follows.
///
/// An entry starts with its headword, pronunciation and part of speech (`Abaca \Ab"a*ca\, n.`):
/// a prompt of on-policy distillation on GCIDE (`make demo-opd`) is those and the completion
/// the definition.
pub fn split_entry(text: &str, words: usize) -> Option<(&str, &str)> {
    let mut seen = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if !c.is_whitespace() {
            in_word = true;
            continue;
        }
        if in_word {
            seen += 1;
            if seen == words {
                let rest = &text[i..];
                return (!rest.trim().is_empty()).then_some((&text[..i], rest));
            }
        }
        in_word = false;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn temp_dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("distill-text-gcide-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// dictd base-64 of `n`, written independently of the decoder (repeated division).
    fn b64(mut n: usize) -> String {
        const DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = vec![];
        loop {
            out.push(DIGITS[n % 64]);
            n /= 64;
            if n == 0 {
                break;
            }
        }
        out.reverse();
        String::from_utf8(out).unwrap()
    }

    /// Writes a corpus in the dictd format: the entries concatenated, gzip'ed (in two gzip
    /// members, as dictzip's chunks may be), and an index in alphabetical order with aliases.
    fn write_fixture(dir: &Path, entries: &[(&[&str], &str)]) {
        let mut data = Vec::<u8>::new();
        let mut index = Vec::new();
        for (heads, body) in entries {
            let off = data.len();
            data.extend_from_slice(body.as_bytes());
            for h in *heads {
                index.push(format!("{h}\t{}\t{}\n", b64(off), b64(body.len())));
            }
        }
        index.sort();
        let (a, b) = data.split_at(data.len() / 2);
        let mut gz = Vec::new();
        for part in [a, b] {
            let mut e = GzEncoder::new(Vec::new(), Compression::fast());
            e.write_all(part).unwrap();
            gz.extend(e.finish().unwrap());
        }
        std::fs::write(dir.join(GCIDE_DICT), gz).unwrap();
        std::fs::write(dir.join(GCIDE_INDEX), index.concat()).unwrap();
    }

    #[test]
    fn b64_numbers_decode_as_dictd_writes_them() {
        // Hand-checked: "A" = 0, "/" = 63, "BA" = 1*64 + 0 = 64, "Kj" = 10*64 + 35 = 675.
        assert_eq!(decode_b64_number("A"), Some(0));
        assert_eq!(decode_b64_number("/"), Some(63));
        assert_eq!(decode_b64_number("BA"), Some(64));
        assert_eq!(decode_b64_number("Kj"), Some(675));
        for n in [0, 1, 63, 64, 4095, 39_952_321] {
            assert_eq!(decode_b64_number(&b64(n)), Some(n));
        }
        assert_eq!(decode_b64_number(""), None);
        assert_eq!(decode_b64_number("A-"), None);
    }

    #[test]
    fn entries_split_after_the_nth_word_keeping_the_whitespace() {
        let text = "Abaca \\Ab\"a*ca\\, n. The Manila-hemp plant.\nSyn: hemp";
        assert_eq!(
            split_entry(text, 3),
            Some((
                "Abaca \\Ab\"a*ca\\, n.",
                " The Manila-hemp plant.\nSyn: hemp"
            ))
        );
        assert_eq!(split_entry("one\ntwo", 1), Some(("one", "\ntwo")));
        assert_eq!(split_entry("one  two ", 1), Some(("one", "  two ")));
        assert_eq!(split_entry("one two", 2), None);
        assert_eq!(split_entry("one two  ", 2), None);
        assert_eq!(split_entry("one two", 0), None);
    }

    #[test]
    fn entry_text_joins_lines_and_drops_source_tags() {
        let entry = "Serpolet \\Ser\"po*let\\, n. [F.] (Bot.)\n   Wild thyme, to be hoped\n      for.          --Locke.\n   [1913 Webster]\n\n   Syn: thyme,\n        creeping thyme\n        [WordNet 1.5 +PJC]\n";
        assert_eq!(
            entry_to_text(entry),
            "Serpolet \\Ser\"po*let\\, n. [F.] (Bot.) Wild thyme, to be hoped for. --Locke.\nSyn: thyme, creeping thyme"
        );
    }

    #[test]
    fn reads_a_dictd_fixture_skipping_metadata_and_aliases() {
        let dir = temp_dir("fixture");
        write_fixture(
            &dir,
            &[
                (
                    &["00-database-info", "00-web1913-info"],
                    "00-database-info\n   GPL header\n",
                ),
                (
                    &["00-database-short"],
                    "00-database-short\n   The dictionary\n",
                ),
                (
                    &["Colour", "Color"],
                    "Colour \\Col\"our\\, n.\n   A hue.\n   [1913 Webster]\n",
                ),
                (
                    &["Zebra"],
                    "Zebra \\Ze\"bra\\, n.\n   A striped horse\n   of Africa.\n",
                ),
                (
                    &["Apple"],
                    "Apple \\Ap\"ple\\, n.\n   A fruit. Caf\u{e9}.\n",
                ),
            ],
        );
        let docs = read_gcide(&dir).unwrap();
        let expected = [
            // Data-file order, one document per entry; "Color" < "Colour" in the sorted index,
            // so the alias that comes first there names it.
            ("Color", "Colour \\Col\"our\\, n. A hue."),
            ("Zebra", "Zebra \\Ze\"bra\\, n. A striped horse of Africa."),
            ("Apple", "Apple \\Ap\"ple\\, n. A fruit. Caf\u{e9}."),
        ];
        assert_eq!(docs.len(), expected.len(), "{docs:?}");
        for (d, (h, t)) in docs.iter().zip(expected) {
            assert_eq!((d.headword.as_str(), d.text.as_str()), (h, t));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_corpus_names_the_file_and_make_setup() {
        let dir = temp_dir("missing");
        let err = read_gcide(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&dir.join(GCIDE_DICT).display().to_string()),
            "{err}"
        );
        assert!(err.contains("make setup"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_data_file_that_is_not_gzip_is_a_read_error() {
        let dir = temp_dir("not-gzip");
        write_fixture(&dir, &[(&["Apple"], "Apple\n   A fruit.\n")]);
        std::fs::write(dir.join(GCIDE_DICT), b"plain text, not gzip").unwrap();
        let err = read_gcide(&dir).unwrap_err().to_string();
        assert!(err.starts_with("cannot read corpus file"), "{err}");
        assert!(err.contains(GCIDE_DICT), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_index_lines_are_errors_naming_the_line() {
        let dir = temp_dir("bad-index");
        write_fixture(&dir, &[(&["Apple"], "Apple\n   A fruit.\n")]);
        let good = std::fs::read_to_string(dir.join(GCIDE_INDEX)).unwrap();
        for (index, what) in [
            (format!("{good}Pear\tA\n"), "got 2 tab-separated fields"),
            (
                format!("{good}Pear\tA!\tB\n"),
                "offset \"A!\" is not a dictd base-64 number",
            ),
            (
                format!("{good}Pear\tA\tB*\n"),
                "length \"B*\" is not a dictd base-64 number",
            ),
            (
                format!("{good}Pear\tA\t{}\n", b64(1000)),
                "is past the end of",
            ),
        ] {
            std::fs::write(dir.join(GCIDE_INDEX), index).unwrap();
            let err = read_gcide(&dir).unwrap_err().to_string();
            assert!(err.contains("line 2"), "{err}");
            assert!(err.contains(what), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
