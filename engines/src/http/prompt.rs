//! Prompts of an exact token length, each starting with a unique nonce.
//!
//! A prompt is `nonce + text + instruction`: the nonce (`[ref 1234-5678-9012]`, a fixed
//! number of digits, so its token count does not vary) makes every prompt differ from its
//! first token, which defeats prefix caching; the text is the same for every request of a
//! length, so prompts of one length differ only in the nonce and A/B sides see the same text.
//! The text ([`PromptText`]) is real text by default: the documents of a corpus in order
//! (the shipped one, [`DEFAULT_CORPUS`], or `--prompt-text FILE`), cut after a number of
//! its words, wrapping round to its start when a prompt needs more words than it has. Real
//! text matters for servers with speculative or MTP decoding, whose speed depends on how
//! predictable the text is. `--prompt-text synthetic` gives the former filler: a fixed,
//! seeded sequence of common English words.
//!
//! Lengths are fitted in **units** of the text: its whitespace-separated words (a cut never
//! splits a word, and the text between words, newlines included, is kept as written). The
//! server's `usage.prompt_tokens` is the ground truth. With a `tokenizer.json` (the served
//! model's), the number of units is searched so that the local count plus the chat
//! template's overhead hits the target exactly; the overhead is measured by one calibration
//! request. Without a tokenizer, each target gets its own search over probe requests
//! ([`LengthSearch`]), refitted after every probe, since tokens per word are not constant.

use std::path::Path;
use std::sync::Arc;

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

/// The name of the shipped corpus (`--prompt-text default`): two plays of Shakespeare in
/// the public domain, `engines/data/` (its README names the source and licence).
pub const DEFAULT_CORPUS: &str = "default (Shakespeare: Julius Caesar, Macbeth)";

const DEFAULT_DOCUMENTS: [&str; 2] = [include_str!("../../data/julius-caesar.txt"), include_str!("../../data/macbeth.txt")];

/// The largest corpus file read (the whole file is held in memory).
const MAX_CORPUS_BYTES: u64 = 256 << 20;

/// Where the text of prompts comes from.
#[derive(Debug, Clone)]
pub enum PromptText {
    /// Real text: a corpus's words in order, cut after the fitted number.
    Corpus(Arc<Corpus>),
    /// Seeded common English words (the text of prompts before real text).
    Synthetic,
}

impl Default for PromptText {
    /// The shipped corpus.
    fn default() -> Self {
        PromptText::Corpus(Arc::new(Corpus::from_documents(DEFAULT_CORPUS, DEFAULT_DOCUMENTS.iter().copied())))
    }
}

impl PromptText {
    /// The value of `--prompt-text`: `default` (the shipped corpus), `synthetic` (filler
    /// words), or a file: plain text, or JSONL of documents with a `text` field (a `.jsonl`
    /// or `.ndjson` name, or a first line that is a JSON object). Every fault of the file is
    /// found here, before any request.
    pub fn from_flag(value: &str) -> Result<PromptText, String> {
        match value.trim() {
            "" | "default" => Ok(PromptText::default()),
            "synthetic" => Ok(PromptText::Synthetic),
            path => Ok(PromptText::Corpus(Arc::new(Corpus::load(Path::new(path))?))),
        }
    }

    /// The text's name in records and keys: `shakespeare` (the shipped corpus), `synthetic`,
    /// or `file:NAME` (the file's name, without `|` or spaces).
    pub fn key_label(&self) -> String {
        match self {
            PromptText::Synthetic => "synthetic".into(),
            PromptText::Corpus(c) if c.name == DEFAULT_CORPUS => "shakespeare".into(),
            PromptText::Corpus(c) => {
                let base = Path::new(&c.name).file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_else(|| c.name.clone());
                format!("file:{}", base.replace(['|', ' ', '\t'], "_"))
            }
        }
    }

    /// What the text is, for terminal lines: `synthetic filler words`, or the corpus's name
    /// with its documents and words.
    pub fn describe(&self) -> String {
        match self {
            PromptText::Synthetic => "synthetic filler words".into(),
            PromptText::Corpus(c) => format!("{}, {} document(s), {} words", c.name, c.documents, c.words()),
        }
    }
}

/// Real text for prompts: documents joined by a blank line, with the end of each
/// whitespace-separated word indexed so a prompt can be cut after any number of them.
#[derive(Debug, PartialEq)]
pub struct Corpus {
    /// What the text is: the shipped corpus's name or the file's path.
    pub name: String,
    /// Documents that had any text.
    pub documents: usize,
    text: String,
    /// Byte offset just past each word of `text`.
    word_ends: Vec<usize>,
}

impl Corpus {
    /// A corpus of documents (each trimmed; empty ones left out).
    pub fn from_documents<'a>(name: &str, docs: impl IntoIterator<Item = &'a str>) -> Corpus {
        let mut text = String::new();
        let mut documents = 0;
        for d in docs.into_iter().map(str::trim).filter(|d| !d.is_empty()) {
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            text.push_str(d);
            documents += 1;
        }
        let mut word_ends = Vec::new();
        let mut in_word = false;
        for (i, c) in text.char_indices() {
            if c.is_whitespace() {
                if in_word {
                    word_ends.push(i);
                }
                in_word = false;
            } else {
                in_word = true;
            }
        }
        if in_word {
            word_ends.push(text.len());
        }
        Corpus { name: name.to_string(), documents, text, word_ends }
    }

    /// Read a corpus file: plain UTF-8 text (one document), or JSONL with one JSON object
    /// per line whose `text` field is a document. A file that cannot be read, is not UTF-8
    /// text, has a line that is not such an object, or holds no words is an error naming
    /// the file (and the line).
    pub fn load(path: &Path) -> Result<Corpus, String> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: cannot read it ({e})"))?;
        if !meta.is_file() {
            return Err(format!("{shown}: not a file (give a text or JSONL file, `default` or `synthetic`)"));
        }
        if meta.len() > MAX_CORPUS_BYTES {
            return Err(format!("{shown}: {} MiB; give at most {} MiB of text", meta.len() >> 20, MAX_CORPUS_BYTES >> 20));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("{shown}: cannot read it ({e})"))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            format!("{shown}: not UTF-8 text (invalid byte at offset {}); give plain text or JSONL", e.utf8_error().valid_up_to())
        })?;
        if text.contains('\0') {
            return Err(format!("{shown}: holds NUL bytes, not text; give plain text or JSONL"));
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
        let jsonl = ext == "jsonl"
            || ext == "ndjson"
            || (first.starts_with('{') && serde_json::from_str::<serde_json::Value>(first).is_ok_and(|v| v.is_object()));
        let corpus = if jsonl {
            let mut docs = Vec::new();
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| format!("{shown} line {}: not JSON ({e}); each line of a JSONL corpus is {{\"text\": \"...\"}}", n + 1))?;
                match v.get("text") {
                    Some(serde_json::Value::String(s)) => docs.push(s.clone()),
                    _ => return Err(format!("{shown} line {}: no string `text` field; each line of a JSONL corpus is {{\"text\": \"...\"}}", n + 1)),
                }
            }
            Corpus::from_documents(&shown.to_string(), docs.iter().map(String::as_str))
        } else {
            Corpus::from_documents(&shown.to_string(), [text.as_str()])
        };
        if corpus.words() == 0 {
            return Err(format!("{shown}: holds no words of text"));
        }
        Ok(corpus)
    }

    /// Words (units) in the corpus.
    pub fn words(&self) -> usize {
        self.word_ends.len()
    }

    /// Push the first `units` words onto `s`: whole copies of the text (each after a blank
    /// line) while `units` exceeds it, then the text up to the end of the last word.
    fn push_words(&self, s: &mut String, units: usize) {
        let n = self.words();
        let (copies, rest) = (units / n, units % n);
        for k in 0..copies {
            if k > 0 {
                s.push_str("\n\n");
            }
            s.push_str(&self.text);
        }
        if rest > 0 {
            if copies > 0 {
                s.push_str("\n\n");
            }
            s.push_str(&self.text[..self.word_ends[rest - 1]]);
        }
    }
}

/// Builds prompts from a number of units of its text.
#[derive(Debug, Clone)]
pub struct PromptBuilder {
    seed: u64,
    text: PromptText,
}

impl PromptBuilder {
    /// Prompts of the shipped corpus.
    pub fn new(seed: u64) -> Self {
        PromptBuilder { seed, text: PromptText::default() }
    }

    pub fn with_text(seed: u64, text: PromptText) -> Self {
        PromptBuilder { seed, text }
    }

    pub fn text(&self) -> &PromptText {
        &self.text
    }

    /// The nonce of prompt `index` of `side` (0 or 1) in case `case`: unique per request, the
    /// same length for all.
    pub fn nonce(&self, case: u64, side: u64, index: u64) -> String {
        let h = splitmix64(self.seed ^ splitmix64(case.wrapping_mul(0x9E37) ^ splitmix64(side << 40 | index)));
        let d = h % 1_000_000_000_000;
        format!("[ref {:04}-{:04}-{:04}]", d / 100_000_000, (d / 10_000) % 10_000, d % 10_000)
    }

    /// The prompt with `units` words of text behind `nonce`: real text after a blank line
    /// (and the instruction after another), synthetic filler words space-separated.
    pub fn prompt(&self, nonce: &str, units: usize) -> String {
        match &self.text {
            PromptText::Synthetic => {
                let mut s = String::with_capacity(nonce.len() + units * 7 + INSTRUCTION.len() + 2);
                s.push_str(nonce);
                for i in 0..units {
                    s.push(' ');
                    let w = splitmix64(self.seed.wrapping_add(0xF111 + i as u64)) as usize % WORDS.len();
                    s.push_str(WORDS[w]);
                }
                s.push(' ');
                s.push_str(INSTRUCTION);
                s
            }
            PromptText::Corpus(c) => {
                let mut s = String::with_capacity(nonce.len() + units * 7 + INSTRUCTION.len() + 4);
                s.push_str(nonce);
                s.push_str("\n\n");
                c.push_words(&mut s, units);
                if units > 0 {
                    s.push_str("\n\n");
                }
                s.push_str(INSTRUCTION);
                s
            }
        }
    }
}

/// Local token counts with the served model's `tokenizer.json`: the text's length is
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

    /// Predicted server prompt tokens for `words` units of text.
    pub fn predict(&self, b: &PromptBuilder, nonce: &str, words: usize) -> Result<f64, String> {
        Ok((Self::local_count(&self.tokenizer, &b.prompt(nonce, words))? as i64 + self.overhead) as f64)
    }

    /// Units of text for a target token count: the smallest count whose prediction reaches
    /// the target (predictions grow with the text).
    pub fn words_for(&self, b: &PromptBuilder, nonce: &str, target: usize) -> Result<usize, String> {
        let t = target as f64;
        let (mut lo, mut hi) = (0usize, target.max(1) * 2 + 16);
        if self.predict(b, nonce, hi)? < t {
            return Err(format!("cannot reach {target} prompt tokens with the prompt text"));
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
/// measure of a prompt's length, and tokens per word of text differ with the length (a BPE
/// tokenizer's ratio is not constant, the chat template adds a fixed part, the nonce a few
/// tokens). So each target gets its own search over the probes made so far (of every
/// target): a secant through the two probes nearest the target, kept inside the bracket of
/// the nearest probes below and above it (interpolation, bisection as a last resort),
/// probed, and refitted, until a probe lands within [`fit_tolerance`] or
/// [`MAX_PROBES_PER_TARGET`] probes are spent. A length the server refused (its context
/// limit) bounds the search from above.
#[derive(Debug, Clone, Default)]
pub struct LengthSearch {
    /// (units of text, server prompt tokens) of every successful probe, sorted by units.
    points: Vec<(usize, u64)>,
    /// The fewest units of text the server refused (HTTP 4xx), with its message.
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

    /// Record that the server refused a prompt of `words` units of text.
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

    /// The units of text to probe next for `target`, or `None` when no new count can bring
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
    fn synthetic_prompts_share_the_filler_and_start_with_the_nonce() {
        let b = PromptBuilder::with_text(1, PromptText::Synthetic);
        let (x, y) = (b.prompt("[ref 1]", 50), b.prompt("[ref 2]", 50));
        assert!(x.starts_with("[ref 1] "));
        assert_eq!(x["[ref 1]".len()..], y["[ref 2]".len()..]);
        assert_eq!(x.split_whitespace().count(), 2 + 50 + 4);
        assert_ne!(b.prompt("n", 50), PromptBuilder::with_text(2, PromptText::Synthetic).prompt("n", 50));
    }

    /// The mock server's token rule: whitespace-separated words ([`super::super::mock`]).
    fn mock_tokens(s: &str) -> usize {
        s.split_whitespace().count()
    }

    #[test]
    fn real_text_is_cut_to_a_token_count_after_the_nonce() {
        let b = PromptBuilder::new(1);
        let PromptText::Corpus(c) = b.text() else { panic!("real text is the default") };
        assert!(c.words() > 30_000 && c.documents == 2, "{}", b.text().describe());
        let nonce = b.nonce(0, 0, 0);
        let overhead = mock_tokens(&nonce) + mock_tokens(INSTRUCTION);
        for target in [overhead, 100, 1000, 4096, c.words() + overhead, 100_000] {
            let units = target - overhead;
            let p = b.prompt(&nonce, units);
            assert_eq!(mock_tokens(&p), target, "{target}");
            assert!(p.starts_with(&format!("{nonce}\n\n")) && p.ends_with(INSTRUCTION));
            if units > 0 && units <= c.words() {
                // The text as written (line breaks kept), cut after a whole word.
                let body = &p[nonce.len() + 2..p.len() - INSTRUCTION.len() - 2];
                assert!(c.text.starts_with(body), "{target}");
                assert!(c.text[body.len()..].starts_with(char::is_whitespace) || body.len() == c.text.len());
            }
        }
        assert!(b.prompt(&nonce, 200).starts_with(&format!("{nonce}\n\nJULIUS CAESAR\n\nby William Shakespeare")));
        // Past the corpus's end the text starts over.
        let long = b.prompt(&nonce, c.words() + 5);
        assert_eq!(long.matches("JULIUS CAESAR\n\nby William Shakespeare").count(), 2);
        // Prompts of one length differ in the nonce alone.
        let (x, y) = (b.prompt("[ref 1]", 300), b.prompt("[ref 2]", 300));
        assert_eq!(x["[ref 1]".len()..], y["[ref 2]".len()..]);
    }

    #[test]
    fn the_tokenizer_fit_counts_units_of_real_text() {
        // A word-level tokenizer counts as the mock does.
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{"type":"WhitespaceSplit"},"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"[UNK]":0},"unk_token":"[UNK]"}}"#;
        let tok: tokenizers::Tokenizer = json.parse().unwrap();
        let tm = TokenizerModel { tokenizer: Box::new(tok), overhead: 6 };
        let b = PromptBuilder::new(3);
        let nonce = b.nonce(1, 0, 0);
        for target in [64usize, 777, 5000] {
            let units = tm.words_for(&b, &nonce, target).unwrap();
            assert_eq!(mock_tokens(&b.prompt(&nonce, units)) + 6, target);
        }
    }

    fn corpus_file(name: &str, body: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ctxcost-corpus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn corpus_files_plain_and_jsonl() {
        let plain = corpus_file("plain.txt", b"  Four score and seven\nyears ago  \n");
        let c = Corpus::load(&plain).unwrap();
        assert_eq!((c.words(), c.documents, c.text.as_str()), (6, 1, "Four score and seven\nyears ago"));
        let jsonl = corpus_file("docs.jsonl", b"{\"id\":1,\"text\":\"one two\"}\n\n{\"text\":\"  \"}\n{\"text\":\"three\\nfour five\"}\n");
        let c = Corpus::load(&jsonl).unwrap();
        assert_eq!((c.words(), c.documents, c.text.as_str()), (5, 2, "one two\n\nthree\nfour five"));
        // A JSONL corpus under another name is known by its first line.
        let sniffed = corpus_file("docs.txt", b"{\"text\":\"a b c\"}\n");
        assert_eq!(Corpus::load(&sniffed).unwrap().text, "a b c");
        let b = PromptBuilder::with_text(0, PromptText::from_flag(jsonl.to_str().unwrap()).unwrap());
        assert_eq!(b.prompt("[n]", 3), "[n]\n\none two\n\nthree\n\nSummarise the text above.");
        assert_eq!(b.prompt("[n]", 7), "[n]\n\none two\n\nthree\nfour five\n\none two\n\nSummarise the text above.");
        assert!(matches!(PromptText::from_flag("synthetic").unwrap(), PromptText::Synthetic));
        assert!(matches!(PromptText::from_flag("default").unwrap(), PromptText::Corpus(c) if c.name == DEFAULT_CORPUS));
    }

    #[test]
    fn a_bad_corpus_file_is_one_clear_error() {
        let cases: [(&str, &[u8], &str); 6] = [
            ("bad.jsonl", b"{\"text\":\"ok\"}\n{\"body\":\"x\"}\n", "line 2: no string `text` field"),
            ("broken.jsonl", b"{\"text\":\"ok\"}\n{\"text\":\n", "line 2: not JSON"),
            ("latin1.txt", b"caf\xe9 au lait", "not UTF-8 text"),
            ("nul.txt", b"abc\0def", "NUL bytes"),
            ("empty.txt", b" \n\t\n", "holds no words"),
            ("blank.jsonl", b"{\"text\":\"\"}\n", "holds no words"),
        ];
        for (name, body, want) in cases {
            let p = corpus_file(name, body);
            let e = PromptText::from_flag(p.to_str().unwrap()).unwrap_err();
            assert!(e.contains(want) && e.contains(name), "{name}: {e}");
        }
        let e = PromptText::from_flag("/no/such/corpus.txt").unwrap_err();
        assert!(e.contains("/no/such/corpus.txt") && e.contains("cannot read"), "{e}");
        let e = PromptText::from_flag(std::env::temp_dir().to_str().unwrap()).unwrap_err();
        assert!(e.contains("not a file"), "{e}");
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
