//! Prompts of an exact token length, each starting with a unique nonce.
//!
//! A prompt is `nonce + filler + instruction`: the nonce (`[ref 1234-5678-9012]`, a fixed
//! number of digits, so its token count does not vary) makes every prompt differ from its
//! first token, which defeats prefix caching; the filler is a fixed, seeded sequence of common
//! English words, the same for every request, so prompts of one length differ only in the
//! nonce and A/B sides see the same text.
//!
//! The server's `usage.prompt_tokens` is the ground truth. With a `tokenizer.json` (the
//! served model's), the filler length is searched so that the local count plus the chat
//! template's overhead hits the target exactly; the overhead is measured by one calibration
//! request. Without a tokenizer, calibration requests fit a line `tokens = a + b * words`
//! (secant steps until the fit is within tolerance).

use ctxcost_core::inputs::splitmix64;

const WORDS: &[&str] = &[
    "time", "year", "people", "way", "day", "man", "thing", "woman", "life", "child", "world", "school", "state",
    "family", "student", "group", "country", "problem", "hand", "part", "place", "case", "week", "company",
    "system", "program", "question", "work", "government", "number", "night", "point", "home", "water", "room",
    "mother", "area", "money", "story", "fact", "month", "lot", "right", "study", "book", "eye", "job", "word",
    "business", "issue", "side", "kind", "head", "house", "service", "friend", "father", "power", "hour",
    "game", "line", "end", "member", "law",
];

const INSTRUCTION: &str = "Summarise the text above.";

/// Builds prompts from a number of filler words.
#[derive(Debug, Clone)]
pub struct PromptBuilder {
    seed: u64,
}

impl PromptBuilder {
    pub fn new(seed: u64) -> Self {
        PromptBuilder { seed }
    }

    /// The nonce of prompt `index` of `side` (0 or 1) in case `case`: unique per request, the
    /// same length for all.
    pub fn nonce(&self, case: u64, side: u64, index: u64) -> String {
        let h = splitmix64(self.seed ^ splitmix64(case.wrapping_mul(0x9E37) ^ splitmix64(side << 40 | index)));
        let d = h % 1_000_000_000_000;
        format!("[ref {:04}-{:04}-{:04}]", d / 100_000_000, (d / 10_000) % 10_000, d % 10_000)
    }

    /// The prompt with `words` filler words behind `nonce`.
    pub fn prompt(&self, nonce: &str, words: usize) -> String {
        let mut s = String::with_capacity(nonce.len() + words * 7 + INSTRUCTION.len() + 2);
        s.push_str(nonce);
        for i in 0..words {
            s.push(' ');
            let w = splitmix64(self.seed.wrapping_add(0xF111 + i as u64)) as usize % WORDS.len();
            s.push_str(WORDS[w]);
        }
        s.push(' ');
        s.push_str(INSTRUCTION);
        s
    }
}

/// How filler words map to the server's prompt tokens.
#[derive(Debug, Clone)]
pub enum LengthModel {
    /// `tokens = overhead + local_count(prompt)` with the served model's tokenizer.
    Tokenizer { tokenizer: Box<tokenizers::Tokenizer>, overhead: i64 },
    /// `tokens = a + b * words`, fitted by calibration requests.
    Linear { a: f64, b: f64 },
}

impl LengthModel {
    /// Load a `tokenizer.json`.
    pub fn load_tokenizer(path: &std::path::Path) -> Result<tokenizers::Tokenizer, String> {
        tokenizers::Tokenizer::from_file(path).map_err(|e| format!("cannot load tokenizer {}: {e}", path.display()))
    }

    /// Local token count of a text (tokenizer models only).
    pub fn local_count(tok: &tokenizers::Tokenizer, text: &str) -> Result<usize, String> {
        tok.encode(text, false).map(|e| e.len()).map_err(|e| format!("tokenizer failed: {e}"))
    }

    pub fn method(&self) -> &'static str {
        match self {
            LengthModel::Tokenizer { .. } => "tokenizer",
            LengthModel::Linear { .. } => "calibrated",
        }
    }

    /// Predicted server prompt tokens for `words` filler words.
    pub fn predict(&self, b: &PromptBuilder, nonce: &str, words: usize) -> Result<f64, String> {
        match self {
            LengthModel::Tokenizer { tokenizer, overhead } => {
                Ok((Self::local_count(tokenizer, &b.prompt(nonce, words))? as i64 + overhead) as f64)
            }
            LengthModel::Linear { a, b: slope } => Ok(a + slope * words as f64),
        }
    }

    /// Filler words for a target token count (the smallest count whose prediction reaches
    /// the target; exact where the model is exact).
    pub fn words_for(&self, b: &PromptBuilder, nonce: &str, target: usize) -> Result<usize, String> {
        let t = target as f64;
        match self {
            LengthModel::Linear { a, b: slope } => Ok(((t - a) / slope).round().max(0.0) as usize),
            LengthModel::Tokenizer { .. } => {
                // Monotone in words: binary search the first count reaching the target.
                let (mut lo, mut hi) = (0usize, target.max(1) * 2 + 16);
                if self.predict(b, nonce, hi)? < t {
                    return Err(format!("cannot reach {target} prompt tokens with the filler text"));
                }
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if self.predict(b, nonce, mid)? >= t {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                Ok(lo)
            }
        }
    }
}

/// Tolerance of a fitted prompt length: 0.5% or 2 tokens, whichever is larger.
pub fn within_tolerance(measured: u64, target: usize) -> bool {
    (measured as f64 - target as f64).abs() <= (target as f64 * 0.005).max(2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_unique_and_of_one_length() {
        let b = PromptBuilder::new(7);
        let mut seen = std::collections::HashSet::new();
        for case in 0..4 {
            for side in 0..2 {
                for i in 0..200 {
                    let n = b.nonce(case, side, i);
                    assert_eq!(n.len(), "[ref 0000-0000-0000]".len(), "{n}");
                    assert!(seen.insert(n));
                }
            }
        }
    }

    #[test]
    fn prompts_share_the_filler_and_start_with_the_nonce() {
        let b = PromptBuilder::new(1);
        let (x, y) = (b.prompt("[ref 1]", 50), b.prompt("[ref 2]", 50));
        assert!(x.starts_with("[ref 1] "));
        assert_eq!(x["[ref 1]".len()..], y["[ref 2]".len()..]);
        assert_eq!(x.split_whitespace().count(), 2 + 50 + 4);
        assert_ne!(b.prompt("n", 50), PromptBuilder::new(2).prompt("n", 50));
    }

    #[test]
    fn linear_model_inverts() {
        let m = LengthModel::Linear { a: 12.0, b: 1.25 };
        let b = PromptBuilder::new(0);
        let w = m.words_for(&b, "", 1012).unwrap();
        assert_eq!(w, 800);
        assert!(within_tolerance(m.predict(&b, "", w).unwrap() as u64, 1012));
        assert!(!within_tolerance(1000, 1012));
    }
}
