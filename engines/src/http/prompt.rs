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
//! request. Without a tokenizer, each target gets its own search over probe requests
//! ([`LengthSearch`]), refitted after every probe, since tokens per word are not constant.

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

/// Local token counts with the served model's `tokenizer.json`: the filler length is
/// searched so that the local count plus the chat template's overhead hits the target.
#[derive(Debug, Clone)]
pub struct TokenizerModel {
    pub tokenizer: Box<tokenizers::Tokenizer>,
    /// Server prompt tokens minus the local count of the same prompt (chat template).
    pub overhead: i64,
}

impl TokenizerModel {
    /// Load a `tokenizer.json`.
    pub fn load_tokenizer(path: &std::path::Path) -> Result<tokenizers::Tokenizer, String> {
        tokenizers::Tokenizer::from_file(path).map_err(|e| format!("cannot load tokenizer {}: {e}", path.display()))
    }

    /// Local token count of a text.
    pub fn local_count(tok: &tokenizers::Tokenizer, text: &str) -> Result<usize, String> {
        tok.encode(text, false).map(|e| e.len()).map_err(|e| format!("tokenizer failed: {e}"))
    }

    /// Predicted server prompt tokens for `words` filler words.
    pub fn predict(&self, b: &PromptBuilder, nonce: &str, words: usize) -> Result<f64, String> {
        Ok((Self::local_count(&self.tokenizer, &b.prompt(nonce, words))? as i64 + self.overhead) as f64)
    }

    /// Filler words for a target token count: the smallest count whose prediction reaches
    /// the target (predictions grow with the filler).
    pub fn words_for(&self, b: &PromptBuilder, nonce: &str, target: usize) -> Result<usize, String> {
        let t = target as f64;
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

/// Where a probe search stops: within 0.5% or 4 tokens of the target, whichever is larger
/// (tighter than a case's hit tolerance, [`ctxcost_core::endpoint::prompt_tolerance_tokens`],
/// so that a BPE nonce's few tokens of variation from request to request still hit).
pub fn fit_tolerance(target: usize) -> f64 {
    (target as f64 * 0.005).max(4.0)
}

/// Probes per target before the search settles for its nearest point.
pub const MAX_PROBES_PER_TARGET: usize = 8;

/// Without a tokenizer, the server's `usage.prompt_tokens` of probe requests is the only
/// measure of a prompt's length, and tokens per filler word differ with the length (a BPE
/// tokenizer's ratio is not constant, the chat template adds a fixed part, the nonce a few
/// tokens). So each target gets its own search over the probes made so far (of every
/// target): a secant through the two probes nearest the target, kept inside the bracket of
/// the nearest probes below and above it (interpolation, bisection as a last resort),
/// probed, and refitted, until a probe lands within [`fit_tolerance`] or
/// [`MAX_PROBES_PER_TARGET`] probes are spent. A length the server refused (its context
/// limit) bounds the search from above.
#[derive(Debug, Clone, Default)]
pub struct LengthSearch {
    /// (filler words, server prompt tokens) of every successful probe, sorted by words.
    points: Vec<(usize, u64)>,
    /// The fewest filler words the server refused (HTTP 4xx), with its message.
    refused: Option<(usize, String)>,
}

impl LengthSearch {
    pub fn points(&self) -> &[(usize, u64)] {
        &self.points
    }

    pub fn refused(&self) -> Option<&(usize, String)> {
        self.refused.as_ref()
    }

    /// Record a probe's result.
    pub fn add(&mut self, words: usize, tokens: u64) {
        if let Err(i) = self.points.binary_search_by_key(&words, |p| p.0) {
            self.points.insert(i, (words, tokens));
        }
    }

    /// Record that the server refused a prompt of `words` filler words.
    pub fn refuse(&mut self, words: usize, why: String) {
        if self.refused.as_ref().is_none_or(|(w, _)| words < *w) {
            self.refused = Some((words, why));
        }
    }

    /// The probe nearest the target (fewer words on a tie).
    pub fn nearest(&self, target: usize) -> Option<(usize, u64)> {
        self.points.iter().copied().min_by(|a, b| dist(a.1, target).total_cmp(&dist(b.1, target)).then(a.0.cmp(&b.0)))
    }

    /// A probe within [`fit_tolerance`] of the target, if any.
    pub fn hit(&self, target: usize) -> Option<(usize, u64)> {
        self.nearest(target).filter(|p| dist(p.1, target) <= fit_tolerance(target))
    }

    /// The filler words to probe next for `target`, or `None` when no new count can bring
    /// the search closer (the bracket is one word wide, or the refusal bound is reached).
    pub fn next(&self, target: usize) -> Option<usize> {
        let t = target as f64;
        let below = self.points.iter().filter(|p| (p.1 as f64) < t).max_by_key(|p| p.0).copied();
        let above = self.points.iter().filter(|p| (p.1 as f64) > t).min_by_key(|p| p.0).copied();
        // Secant through the two probes nearest the target (in tokens).
        let mut by_dist: Vec<(usize, u64)> = self.points.clone();
        by_dist.sort_by(|a, b| dist(a.1, target).total_cmp(&dist(b.1, target)).then(a.0.cmp(&b.0)));
        let slope_of = |a: (usize, u64), b: (usize, u64)| {
            let s = (b.1 as f64 - a.1 as f64) / (b.0 as f64 - a.0 as f64);
            (s.is_finite() && s > 0.0).then_some(s)
        };
        let secant = match by_dist.as_slice() {
            [a, b, ..] => slope_of(*a, *b).map(|s| a.0 as f64 + (t - a.1 as f64) / s),
            [a] if a.0 > 0 => Some(a.0 as f64 * t / a.1.max(1) as f64),
            _ => None,
        };
        let lo = below.map_or(0, |p| p.0);
        let hi = match (above, &self.refused) {
            (Some(a), Some((r, _))) => a.0.min(*r),
            (Some(a), None) => a.0,
            (None, Some((r, _))) => *r,
            (None, None) => usize::MAX,
        };
        if hi <= lo + 1 && below.is_some() {
            return None;
        }
        let inside = |w: f64| w > lo as f64 && w < hi as f64;
        let w = match secant {
            Some(w) if w.is_finite() && (inside(w) || (below.is_none() && w >= 0.0 && w < hi as f64)) => w.round() as usize,
            _ => match (below, above) {
                // Interpolate between the bracket's ends.
                (Some(b), Some(a)) if hi == a.0 => (b.0 as f64 + (t - b.1 as f64) * (a.0 - b.0) as f64 / (a.1 - b.1) as f64).round() as usize,
                // Bisect towards the refusal, or below the least probe.
                _ if hi != usize::MAX => lo + (hi - lo) / 2,
                _ => return None,
            },
        };
        let w = if below.is_some() { w.clamp(lo + 1, hi.saturating_sub(1).max(lo + 1)) } else { w.min(hi.saturating_sub(1)) };
        (!self.points.iter().any(|p| p.0 == w) && self.refused.as_ref().is_none_or(|(r, _)| w < *r)).then_some(w)
    }
}

fn dist(tokens: u64, target: usize) -> f64 {
    (tokens as f64 - target as f64).abs()
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

    /// A server whose tokens per word grow with the prompt (as BPE ratios differ between
    /// texts), plus a template overhead: tokens(w) = 14 + w (1 + 0.05 w / 1000).
    fn growing(w: usize) -> u64 {
        let w = w as f64;
        (14.0 + w * (1.0 + 0.05 * w / 1000.0)).round() as u64
    }

    /// Search like `Bench` does: probe, refit, until a hit or the probe budget is spent.
    fn search(s: &mut LengthSearch, target: usize, tokens: &dyn Fn(usize) -> Option<u64>) -> (Option<(usize, u64)>, usize) {
        let mut probes = 0;
        while s.hit(target).is_none() && probes < MAX_PROBES_PER_TARGET {
            let Some(w) = s.next(target) else { break };
            probes += 1;
            match tokens(w) {
                Some(t) => s.add(w, t),
                None => s.refuse(w, "too long".into()),
            }
        }
        (s.hit(target), probes)
    }

    #[test]
    fn the_search_hits_every_target_where_one_line_misses() {
        let mut s = LengthSearch::default();
        s.add(32, growing(32));
        s.add(256, growing(256));
        // The old fit: one line near the largest target, used for every smaller one.
        let (w1, w2) = (30_000usize, 31_000usize);
        let b = (growing(w2) - growing(w1)) as f64 / (w2 - w1) as f64;
        let a = growing(w1) as f64 - b * w1 as f64;
        let old = |t: usize| growing(((t as f64 - a) / b).round() as usize);
        assert!((old(1024) as f64 / 1024.0 - 1.0).abs() > 0.05, "the line must miss for this test to mean anything: {}", old(1024));
        let mut total = 0;
        for target in [65_536usize, 1000, 1024, 2048, 4096, 16_384, 3000, 40_000, 500] {
            let (hit, probes) = search(&mut s, target, &|w| Some(growing(w)));
            let (_, tokens) = hit.unwrap_or_else(|| panic!("{target}: no hit after {probes} probes; points {:?}", s.points()));
            assert!(dist(tokens, target) <= fit_tolerance(target), "{target}: {tokens}");
            assert!(probes <= 6, "{target}: {probes} probes");
            total += probes;
        }
        assert!(total <= 30, "{total} probes in all");
    }

    #[test]
    fn a_refused_length_bounds_the_search() {
        // Limit: 64K tokens. A target of 60K is reached from below; 100K is not.
        let limited = |w: usize| (growing(w) <= 65_536).then(|| growing(w));
        let mut s = LengthSearch::default();
        s.add(32, growing(32));
        s.add(256, growing(256));
        s.refuse(200_000, "limit".into());
        let (hit, _) = search(&mut s, 60_000, &limited);
        assert!(hit.is_some(), "{:?}", s.points());
        let (hit, probes) = search(&mut s, 100_000, &limited);
        assert!(hit.is_none() && probes <= MAX_PROBES_PER_TARGET);
        assert!(s.refused().is_some_and(|r| growing(r.0) > 65_536));
        assert!(s.nearest(100_000).unwrap().1 <= 65_536);
    }

}
