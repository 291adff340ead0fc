//! A Bloom filter over key tokens: about 10 bits per key, 7 probes, about 1 % false positives.
//!
//! ```text
//! filter block:  u32 LE probes (k) | u32 LE bit count (m, a multiple of 64) | m/8 bytes of bits
//! ```
//! Probe i tests bit `(h + i * delta) mod m`, with `h` the key's token and
//! `delta = h.rotate_right(17) | 1` (double hashing, as LevelDB does). The token is already a
//! 64-bit xxh3 hash of the key, so no second hash pass is needed.

use crate::record::Token;

/// Bits per key used when none is given.
pub const BITS_PER_KEY_DEFAULT: u32 = 10;

/// A built or loaded Bloom filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bloom {
    probes: u32,
    bits: Vec<u64>,
}

impl Bloom {
    /// Builds a filter holding `tokens`.
    #[must_use]
    pub fn build(tokens: &[Token], bits_per_key: u32) -> Self {
        let bits_per_key = bits_per_key.clamp(1, 64);
        let wanted = (tokens.len() as u64 * u64::from(bits_per_key)).max(64);
        let words = usize::try_from(wanted.div_ceil(64)).unwrap_or(usize::MAX);
        // k = bits_per_key * ln 2, rounded, as in the textbook optimum.
        let probes = ((f64::from(bits_per_key) * 0.69).round() as u32).clamp(1, 30);
        let mut bloom = Bloom {
            probes,
            bits: vec![0; words],
        };
        for &t in tokens {
            bloom.add(t);
        }
        bloom
    }

    fn m(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    fn add(&mut self, token: Token) {
        let m = self.m();
        let mut h = token.0;
        let delta = h.rotate_right(17) | 1;
        for _ in 0..self.probes {
            let bit = h % m;
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
            h = h.wrapping_add(delta);
        }
    }

    /// Whether `token` may be in the set (false means it certainly is not).
    #[must_use]
    pub fn may_contain(&self, token: Token) -> bool {
        let m = self.m();
        let mut h = token.0;
        let delta = h.rotate_right(17) | 1;
        for _ in 0..self.probes {
            let bit = h % m;
            if self.bits[(bit / 64) as usize] & (1 << (bit % 64)) == 0 {
                return false;
            }
            h = h.wrapping_add(delta);
        }
        true
    }

    /// The filter block's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.bits.len() * 8);
        out.extend_from_slice(&self.probes.to_le_bytes());
        let m = u32::try_from(self.m()).expect("INVARIANT: filters are under 4 Gbit");
        out.extend_from_slice(&m.to_le_bytes());
        for w in &self.bits {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Parses a filter block; `None` if its shape is invalid.
    #[must_use]
    pub fn decode(buf: &[u8]) -> Option<Self> {
        let probes = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?);
        let m = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
        if probes == 0 || probes > 30 || m == 0 || m % 64 != 0 {
            return None;
        }
        let body = buf.get(8..)?;
        if body.len() != m as usize / 8 {
            return None;
        }
        let bits = body
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        Some(Bloom { probes, bits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives() {
        let tokens: Vec<Token> = (0..10_000u32)
            .map(|i| Token::of(&i.to_le_bytes()))
            .collect();
        let bloom = Bloom::build(&tokens, BITS_PER_KEY_DEFAULT);
        assert!(tokens.iter().all(|&t| bloom.may_contain(t)));
        let false_positives = (10_000..110_000u32)
            .filter(|i| bloom.may_contain(Token::of(&i.to_le_bytes())))
            .count();
        // 100 000 probes at ~1 %: allow up to 2 %.
        assert!(false_positives < 2_000, "{false_positives} false positives");
        let back = Bloom::decode(&bloom.encode()).expect("decodes");
        assert_eq!(back, bloom);
    }

    #[test]
    fn bad_blocks_do_not_decode() {
        let enc = Bloom::build(&[Token(1)], 10).encode();
        assert!(Bloom::decode(&enc[..enc.len() - 1]).is_none());
        assert!(Bloom::decode(&[0; 8]).is_none());
        assert!(Bloom::decode(&[]).is_none());
    }
}
