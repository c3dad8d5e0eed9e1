//! Helpers shared by the text tests: generated text and a GCIDE-format corpus written by
//! the test itself (no test reads the real corpus).
#![allow(dead_code, unreachable_pub)]

use flate2::Compression;
use flate2::write::GzEncoder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, unique per test name and process.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("distill-text-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const SYLLABLES: &[&str] = &[
    "an", "be", "cor", "dis", "el", "fa", "gen", "hu", "in", "ja", "ka", "lo", "mi", "nor", "op",
    "pra", "qua", "re", "sto", "tri", "un", "ve", "wa", "xe", "yo", "ze", "tion", "ing", "ed",
    "ly",
];

/// `n` English-looking sentences from a seeded generator: words of 1-3 syllables, some
/// capitalised, punctuation, digits and a few non-ASCII characters.
pub fn sentences(seed: u64, n: usize) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let words: Vec<String> = (0..rng.random_range(4..14))
                .map(|_| {
                    let mut w: String = (0..rng.random_range(1..4))
                        .map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())])
                        .collect();
                    match rng.random_range(0..20) {
                        0 => w = w.to_uppercase(),
                        1 => w.push('\u{e9}'),
                        2 => w = format!("{}", rng.random_range(0..2000)),
                        3 => w.push(','),
                        _ => {}
                    }
                    w
                })
                .collect();
            format!("{}.", words.join(" "))
        })
        .collect()
}

/// dictd base-64 of `n` (digits `A-Za-z0-9+/`, most significant first).
pub fn b64(mut n: usize) -> String {
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

/// Writes `gcide.dict.dz` + `gcide.index` into `dir` in the dictd format: a metadata entry
/// (`00-database-info`), then one entry per body, headword `docNNNN`; the body's first line is
/// `docNNNN \Doc\, n.` so every document carries its own index.
pub fn write_corpus(dir: &Path, bodies: &[String]) {
    let mut data = b"00-database-info\n   GPL header, not a document\n".to_vec();
    let mut index = vec![format!("00-database-info\tA\t{}\n", b64(data.len()))];
    for (i, body) in bodies.iter().enumerate() {
        let entry = format!("doc{i:04} \\Doc\\, n.\n   {body}\n   [1913 Webster]\n");
        index.push(format!(
            "doc{i:04}\t{}\t{}\n",
            b64(data.len()),
            b64(entry.len())
        ));
        data.extend_from_slice(entry.as_bytes());
    }
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(&data).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("gcide.dict.dz"), e.finish().unwrap()).unwrap();
    std::fs::write(dir.join("gcide.index"), index.concat()).unwrap();
}

/// A corpus of `n` documents of three generated sentences each.
pub fn corpus(dir: &Path, seed: u64, n: usize) {
    let s = sentences(seed, 3 * n);
    let bodies: Vec<String> = s.chunks(3).map(|c| c.join(" ")).collect();
    write_corpus(dir, &bodies);
}
