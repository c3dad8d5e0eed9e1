//! The token cache: the encoded token stream of one split, so that a second `prepare` does not
//! encode the corpus again.
//!
//! File layout: the 8 bytes `DTXTTOK1`, a little-endian `u32` header length, a JSON
//! [`CacheHeader`], then `num_tokens` little-endian `u16` (vocab ≤ 65,536) or `u32` ids.

use crate::error::{Result, TextError};
use crate::tokenizer::{sha256_hex, write_atomic};
use serde::{Deserialize, Serialize};
use std::path::Path;

const MAGIC: &[u8; 8] = b"DTXTTOK1";
/// Bumped whenever reading, cleaning or splitting the corpus changes what a stream holds.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// What a cache was made from: a stream is reused only when all of it matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CacheKey {
    pub(crate) format_version: u32,
    pub(crate) split: String,
    pub(crate) tokenizer_fingerprint: String,
    pub(crate) corpus_fingerprint: String,
    pub(crate) vocab_size: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheHeader {
    #[serde(flatten)]
    key: CacheKey,
    /// 2 or 4 bytes per id.
    width: usize,
    num_tokens: usize,
    num_documents: usize,
    payload_sha256: String,
}

fn width_for(vocab_size: usize) -> usize {
    if vocab_size <= 1 << 16 { 2 } else { 4 }
}

/// Writes `stream` (ids < `key.vocab_size`) atomically.
pub(crate) fn write_cache(
    path: &Path,
    key: &CacheKey,
    stream: &[u32],
    num_documents: usize,
) -> Result<()> {
    let width = width_for(key.vocab_size);
    let mut payload = Vec::with_capacity(stream.len() * width);
    for &t in stream {
        if width == 2 {
            payload.extend_from_slice(&(t as u16).to_le_bytes());
        } else {
            payload.extend_from_slice(&t.to_le_bytes());
        }
    }
    let header = CacheHeader {
        key: key.clone(),
        width,
        num_tokens: stream.len(),
        num_documents,
        payload_sha256: sha256_hex(&payload),
    };
    let header = serde_json::to_vec(&header).expect("a cache header serialises");
    let mut bytes = Vec::with_capacity(12 + header.len() + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&payload);
    write_atomic(path, &bytes)
}

/// Reads a stream written by [`write_cache`] for exactly `key`, verifying the magic, the key,
/// the length, the payload's SHA-256 and that every id is below the vocabulary size.
///
/// Errors: [`TextError::CacheInvalid`] naming what did not match.
pub(crate) fn read_cache(path: &Path, key: &CacheKey) -> Result<Vec<u32>> {
    let invalid = |reason: String| TextError::CacheInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(invalid(format!(
            "expected it to start with {:?}",
            String::from_utf8_lossy(MAGIC)
        )));
    }
    let header_len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let header_bytes = bytes.get(12..12 + header_len).ok_or_else(|| {
        invalid(format!(
            "header of {header_len} bytes runs past the end of the file"
        ))
    })?;
    let header: CacheHeader = serde_json::from_slice(header_bytes)
        .map_err(|e| invalid(format!("header is not the expected JSON: {e}")))?;
    if header.key != *key {
        return Err(invalid(format!(
            "made for {:?}, expected {:?}",
            header.key, key
        )));
    }
    if header.width != width_for(key.vocab_size) {
        return Err(invalid(format!(
            "{} bytes per id, expected {}",
            header.width,
            width_for(key.vocab_size)
        )));
    }
    let payload = &bytes[12 + header_len..];
    if payload.len() != header.num_tokens * header.width {
        return Err(invalid(format!(
            "payload is {} bytes, expected {} ({} tokens of {} bytes)",
            payload.len(),
            header.num_tokens * header.width,
            header.num_tokens,
            header.width
        )));
    }
    let sha = sha256_hex(payload);
    if sha != header.payload_sha256 {
        return Err(invalid(format!(
            "payload SHA-256 is {sha}, the header says {}",
            header.payload_sha256
        )));
    }
    let stream: Vec<u32> = if header.width == 2 {
        payload
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    } else {
        payload
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    if let Some((i, t)) = stream
        .iter()
        .enumerate()
        .find(|&(_, &t)| t as usize >= key.vocab_size)
    {
        return Err(invalid(format!(
            "token {i} is id {t}, expected < {}",
            key.vocab_size
        )));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(vocab_size: usize) -> CacheKey {
        CacheKey {
            format_version: FORMAT_VERSION,
            split: "train".into(),
            tokenizer_fingerprint: "ab".repeat(32),
            corpus_fingerprint: "cd".repeat(32),
            vocab_size,
        }
    }

    fn temp_file(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("distill-text-cache-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    #[test]
    fn round_trips_u16_and_u32_streams() {
        for (vocab, stream) in [
            (300, vec![0u32, 299, 7, 1]),
            (70_000, vec![0u32, 69_999, 65_536, 3]),
        ] {
            let p = temp_file(&format!("rt-{vocab}.bin"));
            write_cache(&p, &key(vocab), &stream, 2).unwrap();
            assert_eq!(read_cache(&p, &key(vocab)).unwrap(), stream);
            // 12 bytes of magic and length, the header, then 2 or 4 bytes per id.
            let len = std::fs::metadata(&p).unwrap().len() as usize;
            let header_len =
                u32::from_le_bytes(std::fs::read(&p).unwrap()[8..12].try_into().unwrap()) as usize;
            assert_eq!(
                len,
                12 + header_len + stream.len() * if vocab == 300 { 2 } else { 4 }
            );
            std::fs::remove_file(&p).unwrap();
        }
    }

    #[test]
    fn rejects_corruption_truncation_other_keys_and_out_of_range_ids() {
        let p = temp_file("bad.bin");
        let stream: Vec<u32> = (0..100).collect();
        write_cache(&p, &key(300), &stream, 5).unwrap();
        let good = std::fs::read(&p).unwrap();
        let reason = |bytes: &[u8], k: &CacheKey| {
            std::fs::write(&p, bytes).unwrap();
            read_cache(&p, k).unwrap_err().to_string()
        };
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(reason(&flipped, &key(300)).contains("payload SHA-256"));
        assert!(
            reason(&good[..good.len() - 2], &key(300))
                .contains("payload is 198 bytes, expected 200")
        );
        assert!(reason(b"DTXT", &key(300)).contains("expected it to start with \"DTXTTOK1\""));
        assert!(reason(&good[..20], &key(300)).contains("runs past the end"));
        let mut other = key(300);
        other.tokenizer_fingerprint = "ef".repeat(32);
        assert!(reason(&good, &other).contains("made for"));
        // Ids beyond the vocabulary, with a consistent checksum: written for a larger vocab
        // of the same width and read with a smaller one whose key otherwise matches.
        write_cache(&p, &key(300), &[5, 299, 4], 1).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        let text =
            String::from_utf8_lossy(&bytes).replace("\"vocab_size\":300", "\"vocab_size\":200");
        bytes = text.into_bytes();
        let err = reason(&bytes, &key(200));
        assert!(err.contains("token 1 is id 299, expected < 200"), "{err}");
        std::fs::remove_file(&p).unwrap();
        assert!(
            read_cache(&p, &key(300))
                .unwrap_err()
                .to_string()
                .contains("cannot read it")
        );
    }
}
