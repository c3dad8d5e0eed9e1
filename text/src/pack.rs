//! Packing encoded documents into fixed-length next-token sequences.

use crate::error::{Result, TextError};

/// The label of a position with no real next token (padding), PyTorch's `ignore_index`.
pub const IGNORE_INDEX: i64 = -100;

/// Packed sequences of one split: `inputs` and `labels`, both `i64 [num_sequences, seq_len]`,
/// row-major. `labels[n][t]` is the token after `inputs[n][t]` in the stream, or
/// [`IGNORE_INDEX`] where there is none (the padded end of the last sequence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// Token ids, `[num_sequences * seq_len]`.
    pub inputs: Vec<i64>,
    /// Next-token ids or [`IGNORE_INDEX`], `[num_sequences * seq_len]`.
    pub labels: Vec<i64>,
    /// N.
    pub num_sequences: usize,
    /// S.
    pub seq_len: usize,
}

impl Packed {
    /// `[num_sequences, seq_len]`, the shape of both `inputs` and `labels`.
    pub fn shape(&self) -> [usize; 2] {
        [self.num_sequences, self.seq_len]
    }

    /// The number of positions with a real label (label != [`IGNORE_INDEX`]): the tokens a
    /// loss or perplexity averages over.
    pub fn num_real_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// The token stream of a split: every document followed by `eot`.
pub fn stream(docs: &[Vec<u32>], eot: u32) -> Vec<u32> {
    let mut s = Vec::with_capacity(docs.iter().map(|d| d.len() + 1).sum());
    for d in docs {
        s.extend_from_slice(d);
        s.push(eot);
    }
    s
}

/// Cuts a token stream (see [`stream`]) into sequences of `seq_len`: window `k` is
/// `stream[k*S ..= k*S + S]` (S + 1 tokens, so consecutive windows share one token), its first
/// S tokens the inputs and its last S the labels. Every token but the first is thus a label
/// exactly once. The last window, when shorter, is padded with `pad` (labels
/// [`IGNORE_INDEX`]); a window needs at least 2 tokens (one input with its label).
///
/// Errors: [`TextError::BadSeqLen`] when `seq_len` is 0.
pub fn pack_stream(stream: &[u32], seq_len: usize, pad: u32) -> Result<Packed> {
    if seq_len == 0 {
        return Err(TextError::BadSeqLen(seq_len));
    }
    let n = if stream.len() < 2 {
        0
    } else {
        (stream.len() - 2) / seq_len + 1
    };
    let mut inputs = Vec::with_capacity(n * seq_len);
    let mut labels = Vec::with_capacity(n * seq_len);
    for k in 0..n {
        for t in k * seq_len..(k + 1) * seq_len {
            inputs.push(i64::from(stream.get(t).copied().unwrap_or(pad)));
            labels.push(stream.get(t + 1).map_or(IGNORE_INDEX, |&x| i64::from(x)));
        }
    }
    Ok(Packed {
        inputs,
        labels,
        num_sequences: n,
        seq_len,
    })
}

/// [`pack_stream`] of [`stream`]`(docs, eot)`.
///
/// Errors: [`TextError::BadSeqLen`] when `seq_len` is 0.
pub fn pack(docs: &[Vec<u32>], eot: u32, pad: u32, seq_len: usize) -> Result<Packed> {
    pack_stream(&stream(docs, eot), seq_len, pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_shifts_labels_by_one_and_pads_the_end() {
        // Documents [5 6 7] and [8], eot 0, pad 1: stream 5 6 7 0 8 0 (6 tokens).
        // S = 2: windows of 3 starting at 0, 2, 4: [5 6 7], [7 0 8], [8 0] + pad.
        let p = pack(&[vec![5, 6, 7], vec![8]], 0, 1, 2).unwrap();
        assert_eq!(p.shape(), [3, 2]);
        assert_eq!(p.inputs, vec![5, 6, 7, 0, 8, 0]);
        assert_eq!(p.labels, vec![6, 7, 0, 8, 0, IGNORE_INDEX]);
        assert_eq!(p.num_real_tokens(), 5); // every token but the first is a label once
        // S = 4: stream of 6 -> windows at 0 ([5 6 7 0 8]) and 4 ([8 0] + 3 pads).
        let p = pack(&[vec![5, 6, 7], vec![8]], 0, 1, 4).unwrap();
        assert_eq!(p.shape(), [2, 4]);
        assert_eq!(p.inputs, vec![5, 6, 7, 0, 8, 0, 1, 1]);
        assert_eq!(
            p.labels,
            vec![6, 7, 0, 8, 0, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
        );
        // Exactly S + 1 tokens make one full window.
        let p = pack_stream(&[3, 4, 5], 2, 1).unwrap();
        assert_eq!((p.inputs, p.labels), (vec![3, 4], vec![4, 5]));
    }

    #[test]
    fn labels_are_the_stream_shifted_by_one_for_any_length() {
        let s: Vec<u32> = (10..47).collect();
        for seq_len in 1..=40 {
            let p = pack_stream(&s, seq_len, 1).unwrap();
            let real: Vec<i64> = p
                .labels
                .iter()
                .copied()
                .filter(|&l| l != IGNORE_INDEX)
                .collect();
            let expected: Vec<i64> = s[1..].iter().map(|&x| i64::from(x)).collect();
            assert_eq!(real, expected, "seq_len {seq_len}");
            assert_eq!(p.inputs.len(), p.num_sequences * seq_len);
        }
    }

    #[test]
    fn too_short_streams_give_no_sequence_and_zero_length_is_an_error() {
        assert_eq!(pack_stream(&[], 4, 1).unwrap().num_sequences, 0);
        assert_eq!(pack_stream(&[7], 4, 1).unwrap().num_sequences, 0);
        let err = pack_stream(&[1, 2, 3], 0, 1).unwrap_err().to_string();
        assert_eq!(err, "sequence length must be at least 1, got 0");
    }
}
