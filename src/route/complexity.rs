//! The request's complexity score in [0, 1]: higher means it needs a stronger model.
//! Computed in-process from the request body alone — no network, no model to load — as
//! `sigmoid(b + Σ wᵢ·xᵢ)` over features counted in one pass over the user's text (length,
//! numbers, maths and code notation, a few short lists of task words) and the request's
//! shape (turns, tools, JSON output, output limit, images).
//!
//! The weights are set by hand, not trained: trained on MMLU with subjects held out, no
//! model beat prompt length (docs/routing.md has the figures and why). The reference
//! implementation, its evaluation and the fixtures this module is tested against are in
//! `scripts/complexity/`.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::OnceLock;

/// Quantitative work: the answer has to be computed.
const CALC: &[&str] = &[
    "calculate",
    "calculated",
    "calculating",
    "calculation",
    "compute",
    "computed",
    "solve",
    "solving",
    "equation",
    "equations",
    "probability",
    "percent",
    "percentage",
    "average",
    "total",
    "sum",
    "ratio",
    "remainder",
    "integer",
    "integers",
    "derivative",
    "integral",
    "expected",
];
/// Multi-step or argumentative reasoning.
const REASON: &[&str] = &[
    "prove",
    "proof",
    "derive",
    "derivation",
    "justify",
    "deduce",
    "infer",
    "implies",
    "imply",
    "therefore",
    "hence",
    "thus",
    "consequently",
    "analyze",
    "analyse",
    "evaluate",
    "determine",
    "explain",
    "why",
    "reasoning",
    "argument",
    "compare",
    "contrast",
    "tradeoff",
    "optimal",
    "optimize",
    "minimum",
    "maximum",
];
/// Programming.
const CODE: &[&str] = &[
    "code",
    "function",
    "class",
    "def",
    "return",
    "import",
    "algorithm",
    "implement",
    "debug",
    "compile",
    "runtime",
    "bug",
    "exception",
    "regex",
    "sql",
    "query",
    "api",
    "python",
    "javascript",
    "rust",
    "java",
    "array",
    "loop",
    "recursion",
    "recursive",
];
/// Simple, formulaic tasks a small model handles well.
const SIMPLE: &[&str] = &[
    "translate",
    "translation",
    "summarize",
    "summarise",
    "summary",
    "rewrite",
    "rephrase",
    "paraphrase",
    "list",
    "hello",
    "hi",
    "hey",
    "thanks",
    "thank",
    "define",
    "definition",
    "synonym",
    "spell",
    "spelling",
    "joke",
    "poem",
    "story",
    "email",
    "tweet",
    "slogan",
    "title",
    "greet",
    "grammar",
    "rename",
    "capitalize",
];
const NEG: &[&str] = &[
    "not", "no", "never", "none", "neither", "nor", "cannot", "without", "except", "nothing",
    "nobody", "nowhere",
];
const COND: &[&str] = &[
    "if",
    "unless",
    "suppose",
    "supposing",
    "assume",
    "assuming",
    "given",
    "whether",
    "otherwise",
    "provided",
];
/// First and third person: a scenario with people in it to reason about. "you" is left out
/// on purpose: it marks role-play and chit-chat addressed to the assistant.
const PRONOUN: &[&str] = &[
    "i",
    "me",
    "my",
    "mine",
    "myself",
    "we",
    "us",
    "our",
    "ours",
    "he",
    "him",
    "his",
    "himself",
    "she",
    "her",
    "hers",
    "herself",
    "they",
    "them",
    "their",
    "theirs",
    "themselves",
];

const GROUP_CALC: u8 = 1;
const GROUP_REASON: u8 = 2;
const GROUP_CODE: u8 = 4;
const GROUP_SIMPLE: u8 = 8;
const GROUP_NEG: u8 = 16;
const GROUP_COND: u8 = 32;
const GROUP_PRONOUN: u8 = 64;

/// `sigmoid(INTERCEPT + Σ weight × feature)`.
const INTERCEPT: f64 = -6.0;

/// The features, in the order of `Features::values`, with their weights.
pub const WEIGHTS: [(&str, f64); 19] = [
    ("log_chars", 1.0),
    ("num_density", 1.0),
    ("math_density", 0.2),
    ("latex", 0.3),
    ("code_density", 0.15),
    ("calc_kw", 0.4),
    ("reason_kw", 0.4),
    ("code_kw", 0.3),
    ("simple_kw", -0.6),
    ("neg_kw", 0.1),
    ("cond_kw", 0.2),
    ("pronoun_share", 4.0),
    ("extra_turns", 0.3),
    ("context_chars", 0.05),
    ("system_chars", 0.05),
    ("tools", 0.3),
    ("json_out", 0.3),
    ("max_tokens", 0.15),
    ("images", 0.5),
];

/// A word of up to 12 ASCII letters packed 5 bits a letter (lowercase), so a keyword is
/// found by integer comparison; longer words are no keyword.
fn pack(word: &[u8]) -> Option<u64> {
    if word.is_empty() || word.len() > 12 {
        return None;
    }
    Some(
        word.iter()
            .fold(0u64, |p, b| p * 32 + u64::from((b | 0x20) - b'a' + 1)),
    )
}

/// Slots of the keyword table (a power of two, about seven times the keywords).
const SLOTS: usize = 1024;

/// The keywords as an open-addressing table of packed words and their groups: most
/// words miss at their first slot, which is empty.
struct Keywords {
    slots: Box<[(u64, u8); SLOTS]>,
}

impl Keywords {
    fn slot(packed: u64) -> usize {
        (packed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize
    }

    #[inline]
    fn groups(&self, packed: u64) -> u8 {
        let mut i = Keywords::slot(packed);
        loop {
            let (key, groups) = self.slots[i];
            if key == packed {
                return groups;
            }
            if key == 0 {
                return 0;
            }
            i = (i + 1) % SLOTS;
        }
    }
}

fn keywords() -> &'static Keywords {
    static TABLE: OnceLock<Keywords> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut slots = Box::new([(0u64, 0u8); SLOTS]);
        for (list, group) in [
            (CALC, GROUP_CALC),
            (REASON, GROUP_REASON),
            (CODE, GROUP_CODE),
            (SIMPLE, GROUP_SIMPLE),
            (NEG, GROUP_NEG),
            (COND, GROUP_COND),
            (PRONOUN, GROUP_PRONOUN),
        ] {
            for w in list {
                let Some(p) = pack(w.as_bytes()) else {
                    continue;
                };
                let mut i = Keywords::slot(p);
                while slots[i].0 != 0 && slots[i].0 != p {
                    i = (i + 1) % SLOTS;
                }
                slots[i] = (p, slots[i].1 | group);
            }
        }
        Keywords { slots }
    })
}

/// What a byte is to the scan.
const OTHER: u8 = 0;
const LETTER: u8 = 1;
const DIGIT: u8 = 2;
const OP: u8 = 3;
const CODE_CHAR: u8 = 4;
const BACKSLASH: u8 = 5;

static CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphabetic() {
            LETTER
        } else if c.is_ascii_digit() {
            DIGIT
        } else {
            match c {
                b'=' | b'+' | b'*' | b'/' | b'^' | b'<' | b'>' | b'|' | b'%' => OP,
                b'{' | b'}' | b';' | b'`' | b'_' => CODE_CHAR,
                b'\\' => BACKSLASH,
                _ => OTHER,
            }
        };
        b += 1;
    }
    t
};

/// Raw counts from the one pass over the user's text.
#[derive(Debug, Default, Clone, PartialEq)]
struct Counts {
    bytes: usize,
    words: usize,
    nums: usize,
    ops: usize,
    latex: usize,
    code_chars: usize,
    calc: usize,
    reason: usize,
    code: usize,
    simple: usize,
    neg: usize,
    cond: usize,
    pronoun: usize,
}

/// The scan over the user's messages, fed one piece of text at a time; pieces are joined
/// by a newline, as if they were one text.
struct Scanner {
    c: Counts,
    /// The previous word, packed (0 if longer than 12 letters or none yet), and its last
    /// letter, for two-word phrases and contractions ("don't": a "t" after an "n").
    prev: u64,
    prev_last: u8,
    pieces: usize,
    keywords: &'static Keywords,
}

const fn packed(word: &str) -> u64 {
    let b = word.as_bytes();
    let mut p = 0u64;
    let mut i = 0;
    while i < b.len() {
        p = p * 32 + (b[i] - b'a' + 1) as u64;
        i += 1;
    }
    p
}

impl Scanner {
    fn new() -> Scanner {
        Scanner {
            c: Counts::default(),
            prev: 0,
            prev_last: 0,
            pieces: 0,
            keywords: keywords(),
        }
    }

    fn feed(&mut self, u: &[u8]) {
        if self.pieces > 0 {
            self.c.bytes += 1; // the joining newline
        }
        self.pieces += 1;
        self.c.bytes += u.len();
        let n = u.len();
        let mut i = 0;
        while i < n {
            match CLASS[usize::from(u[i])] {
                LETTER => {
                    // The word and its packed form in one pass (0 past 12 letters).
                    let start = i;
                    let mut p = 0u64;
                    while i < n && CLASS[usize::from(u[i])] == LETTER {
                        p = p.wrapping_mul(32) + u64::from((u[i] | 0x20) - b'a' + 1);
                        i += 1;
                    }
                    if i - start > 12 {
                        p = 0;
                    }
                    self.word(p, u[i - 1] | 0x20);
                    continue;
                }
                DIGIT => {
                    while i < n && u[i].is_ascii_digit() {
                        i += 1;
                    }
                    self.c.nums += 1;
                    continue;
                }
                OP => self.c.ops += 1,
                CODE_CHAR => self.c.code_chars += 1,
                BACKSLASH if u.get(i + 1).is_some_and(u8::is_ascii_alphabetic) => self.c.latex += 1,
                _ => {}
            }
            i += 1;
        }
    }

    /// A word: `p` packed (0 if longer than 12 letters), `last` its last letter.
    fn word(&mut self, p: u64, last: u8) {
        self.c.words += 1;
        if p != 0 {
            let g = self.keywords.groups(p);
            if g != 0 {
                let c = &mut self.c;
                c.calc += usize::from(g & GROUP_CALC != 0);
                c.reason += usize::from(g & GROUP_REASON != 0);
                c.code += usize::from(g & GROUP_CODE != 0);
                c.simple += usize::from(g & GROUP_SIMPLE != 0);
                c.neg += usize::from(g & GROUP_NEG != 0);
                c.cond += usize::from(g & GROUP_COND != 0);
                c.pronoun += usize::from(g & GROUP_PRONOUN != 0);
            }
            if p == packed("t") && self.prev_last == b'n' {
                self.c.neg += 1;
            }
            if self.prev != 0 {
                const HOW: u64 = packed("how");
                const AT: u64 = packed("at");
                const STEP: u64 = packed("step");
                const EXPLAIN: u64 = packed("explain");
                const SHOW: u64 = packed("show");
                const MANY: u64 = packed("many");
                const MUCH: u64 = packed("much");
                const LEAST: u64 = packed("least");
                const MOST: u64 = packed("most");
                const BY: u64 = packed("by");
                const WHY: u64 = packed("why");
                const THAT: u64 = packed("that");
                match (self.prev, p) {
                    (HOW, MANY) | (HOW, MUCH) | (AT, LEAST) | (AT, MOST) => self.c.calc += 1,
                    (STEP, BY) | (EXPLAIN, WHY) | (SHOW, THAT) => self.c.reason += 1,
                    _ => {}
                }
            }
        }
        self.prev = p;
        self.prev_last = last;
    }
}

/// The parts of an OpenAI-format chat request the score reads.
#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow, default)]
    messages: Vec<Message<'a>>,
    #[serde(default)]
    tools: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    functions: Option<Vec<IgnoredAny>>,
    #[serde(borrow, default)]
    response_format: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow, default)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ResponseFormat<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
}

/// The feature vector of a request, in `WEIGHTS` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Features(pub [f64; 19]);

impl Features {
    pub fn score(&self) -> f64 {
        let z = INTERCEPT
            + self
                .0
                .iter()
                .zip(WEIGHTS.iter())
                .map(|(x, (_, w))| x * w)
                .sum::<f64>();
        1.0 / (1.0 + (-z).exp())
    }
}

/// The score of a request body. A body that is not a chat request scores 0.5, the middle.
pub fn score(body: &[u8]) -> f64 {
    features(body).map_or(0.5, |f| f.score())
}

/// A content value's text pieces and image count: a string, or a list of parts.
fn content_pieces<'a>(raw: &'a RawValue, mut piece: impl FnMut(&str), images: &mut usize) {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            if let Ok(s) = serde_json::from_str::<Cow<'a, str>>(text) {
                piece(&s);
            }
        }
        Some(b'[') => {
            let Ok(parts) = serde_json::from_str::<Vec<Part<'a>>>(text) else {
                return;
            };
            // The parts of one message are joined by a newline too.
            let mut joined = String::new();
            let mut any = false;
            for p in &parts {
                match p.kind.as_deref() {
                    Some("text" | "input_text") => {
                        if any {
                            joined.push('\n');
                        }
                        joined.push_str(p.text.as_deref().unwrap_or(""));
                        any = true;
                    }
                    Some("image_url" | "input_image" | "image") => *images += 1,
                    _ => {}
                }
            }
            piece(&joined);
        }
        _ => piece(""),
    }
}

pub fn features(body: &[u8]) -> Option<Features> {
    let r: Request<'_> = serde_json::from_slice(body).ok()?;
    let mut scan = Scanner::new();
    let (mut users, mut context, mut system, mut images) = (0usize, 0usize, 0usize, 0usize);
    for m in &r.messages {
        let mut len = 0usize;
        match m.role.as_deref() {
            Some("user") => {
                users += 1;
                match m.content {
                    Some(c) => content_pieces(c, |t| scan.feed(t.as_bytes()), &mut images),
                    None => scan.feed(b""),
                }
            }
            Some("system" | "developer") => {
                if let Some(c) = m.content {
                    content_pieces(c, |t| len += t.len(), &mut 0);
                }
                system += len;
            }
            _ => {
                if let Some(c) = m.content {
                    content_pieces(c, |t| len += t.len(), &mut 0);
                }
                for f in m
                    .tool_calls
                    .iter()
                    .flatten()
                    .filter_map(|t| t.function.as_ref())
                {
                    len += f.name.as_deref().map_or(0, str::len);
                    len += f.arguments.as_deref().map_or(0, str::len);
                }
                context += len;
            }
        }
    }
    let c = &scan.c;
    let w = c.words.max(1) as f64;
    let b = c.bytes.max(1) as f64;
    let l = |x: usize| (x as f64).ln_1p();
    // A limit that is not a positive number (the provider will refuse it) counts as none.
    let number = |v: Option<&RawValue>| {
        v.and_then(|v| v.get().parse::<f64>().ok())
            .filter(|n| n.is_finite() && *n > 0.0)
    };
    let max_tokens = number(r.max_tokens)
        .or_else(|| number(r.max_completion_tokens))
        .map_or(0.0, |n| (n.log2() - 10.0).clamp(-4.0, 4.0));
    let json_out = r
        .response_format
        .and_then(|v| serde_json::from_str::<ResponseFormat<'_>>(v.get()).ok())
        .and_then(|f| f.kind)
        .is_some_and(|k| k == "json_schema" || k == "json_object");
    let tools = r
        .tools
        .filter(|t| !t.is_empty())
        .or(r.functions)
        .map_or(0, |t| t.len());
    Some(Features([
        l(c.bytes),
        c.nums as f64 / w,
        100.0 * c.ops as f64 / b,
        l(c.latex),
        100.0 * c.code_chars as f64 / b,
        l(c.calc),
        l(c.reason),
        l(c.code),
        l(c.simple),
        l(c.neg),
        l(c.cond),
        c.pronoun as f64 / w,
        l(users.saturating_sub(1)),
        l(context),
        l(system),
        l(tools),
        f64::from(u8::from(json_out)),
        max_tokens,
        l(images),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference implementation's own cases (scripts/complexity/fixtures.jsonl): every
    /// feature and the score agree with it.
    #[test]
    fn agrees_with_the_reference_implementation() {
        let text = include_str!("../../scripts/complexity/fixtures.jsonl");
        let mut cases = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let case: serde_json::Value = serde_json::from_str(line).unwrap();
            let body = serde_json::to_vec(&case["body"]).unwrap();
            let got = features(&body).unwrap();
            for (i, (name, _)) in WEIGHTS.iter().enumerate() {
                let want = case["features"][name].as_f64().unwrap();
                assert!(
                    (got.0[i] - want).abs() < 1e-9,
                    "{} {name}: {} != {want}",
                    case["name"],
                    got.0[i]
                );
            }
            let want = case["score_hand"].as_f64().unwrap();
            assert!((got.score() - want).abs() < 1e-9, "{}", case["name"]);
            cases += 1;
        }
        assert!(cases >= 20);
    }

    #[test]
    fn easy_requests_score_below_hard_ones() {
        let easy = br#"{"messages":[{"role":"user","content":"hi there!"}]}"#;
        let hard = br#"{"messages":[{"role":"user","content":"Prove that if n is an integer and n^2 is even, then n is even. Explain why each step holds, and derive the general case for primes p where p | n^2 implies p | n."}]}"#;
        assert!(score(easy) < 0.2, "{}", score(easy));
        assert!(score(hard) > score(easy) + 0.3, "{}", score(hard));
        assert_eq!(score(b"[1,2]"), 0.5);
        // A limit the provider would refuse is no limit, not a NaN.
        let odd = br#"{"max_tokens":-1,"messages":[{"role":"user","content":"hi"}]}"#;
        assert!(score(odd).is_finite());
    }
}
