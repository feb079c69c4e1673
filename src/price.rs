//! Prices and cost, in integers: exact per request and exact when summed.
//!
//! A price is held in pico-dollars per million tokens, which is atto-dollars (1e-18 USD)
//! per token, so a request's cost is `tokens × price` in atto-dollars with no division and
//! no rounding: a 3-token `text-embedding-3-small` call ($0.02 per million) costs exactly
//! 60,000,000,000 atto-dollars ($0.00000006), where whole micro-dollars said $0. Prices
//! keep 12 decimals of USD per million tokens. A price fits u64 up to $18.4M per million
//! tokens; a cost is u128: the product of two u64 cannot overflow it, and a sum of costs
//! overflows only after ~10^16 requests of 10 million tokens at $1,000 per million.

use crate::usage::Usage;
use ahash::AHashMap;
use serde::Deserialize;

/// USD in atto-dollars (1e-18).
pub type Atto = u128;

const PICO_PER_USD: u64 = 1_000_000_000_000;
const ATTO_PER_USD: Atto = 1_000_000_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    /// Pico-dollars per million tokens (= atto-dollars per token).
    pub input: u64,
    pub cached_input: u64,
    pub output: u64,
    /// Prompt tokens written to the provider's cache (Anthropic: 1.25 × input for the
    /// 5-minute cache); the input price where the catalog names none.
    pub cache_write: u64,
}

/// USD per million tokens, as written in the config (a YAML float), to pico-dollars per
/// million tokens. The float's shortest round-trip decimal is what the operator wrote, so
/// it is converted digit by digit, not by a float multiply; beyond 12 decimals it rounds
/// half up. `None` for a negative, non-finite or too large value.
pub fn pico_per_mtok(usd: f64) -> Option<u64> {
    if !usd.is_finite() || usd < 0.0 {
        return None;
    }
    let text = format!("{usd}");
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let whole: u64 = int.parse().ok()?;
    let mut fraction: u64 = 0;
    for (i, d) in frac.bytes().enumerate() {
        let d = u64::from(d.checked_sub(b'0').filter(|d| *d <= 9)?);
        if i < 12 {
            fraction = fraction * 10 + d;
        } else {
            if i == 12 && d >= 5 {
                fraction += 1;
            }
            break;
        }
    }
    let scale = 10u64.pow(12u32.saturating_sub(frac.len().min(12) as u32));
    whole
        .checked_mul(PICO_PER_USD)?
        .checked_add(fraction.checked_mul(scale)?)
}

/// USD as the config writes it (a YAML float) to atto-dollars, digit by digit from the
/// float's shortest decimal (see `pico_per_mtok`). `None` for a negative, non-finite or
/// absurdly large value, or one with more than 18 decimals.
pub fn atto_of_usd(usd: f64) -> Option<Atto> {
    if !usd.is_finite() || !(0.0..=1e15).contains(&usd) {
        return None;
    }
    let text = format!("{usd}");
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    if frac.len() > 18 {
        return None;
    }
    let whole: Atto = int.parse().ok()?;
    let mut fraction: Atto = 0;
    for d in frac.bytes() {
        fraction = fraction * 10 + Atto::from(d.checked_sub(b'0').filter(|d| *d <= 9)?);
    }
    Some(whole * ATTO_PER_USD + fraction * 10u128.pow(18 - frac.len() as u32))
}

/// An exact decimal USD string (`0.00000006`) of an atto-dollar amount.
pub fn usd_decimal(atto: Atto) -> String {
    let mut out = Vec::with_capacity(40);
    write_usd(atto, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// `usd_decimal`, appended to `out`.
pub fn write_usd(atto: Atto, out: &mut Vec<u8>) {
    // Every usage event prints one: digits by hand, no formatting machinery.
    // Under 18.4 USD (every single request) in u64 arithmetic: u128 division is a call.
    let (whole, frac) = match u64::try_from(atto) {
        Ok(a) => (u128::from(a / ATTO_PER_USD as u64), a % ATTO_PER_USD as u64),
        Err(_) => (atto / ATTO_PER_USD, (atto % ATTO_PER_USD) as u64),
    };
    match u64::try_from(whole) {
        Ok(w) => out.extend_from_slice(itoa::Buffer::new().format(w).as_bytes()),
        Err(_) => out.extend_from_slice(itoa::Buffer::new().format(whole).as_bytes()),
    }
    if frac != 0 {
        // The fraction's 18 digits without the zeros they end with (a price in
        // picodollars leaves at least six): those first, in halving steps, so that itoa
        // prints only the significant digits; then the zeros they lack in front.
        let (mut f, mut digits) = (frac, 18);
        while f % 100_000_000 == 0 {
            f /= 100_000_000;
            digits -= 8;
        }
        for (p, n) in [(10_000, 4), (100, 2), (10, 1)] {
            if f % p == 0 {
                f /= p;
                digits -= n;
            }
        }
        let mut itoa = itoa::Buffer::new();
        let text = itoa.format(f).as_bytes();
        out.push(b'.');
        out.extend_from_slice(&b"000000000000000000"[..digits - text.len()]);
        out.extend_from_slice(text);
    }
}

/// An atto-dollar amount as float USD, for Prometheus counters (which are floats anyway).
pub fn usd_f64(atto: Atto) -> f64 {
    (atto / ATTO_PER_USD) as f64 + (atto % ATTO_PER_USD) as f64 / ATTO_PER_USD as f64
}

impl Price {
    /// From USD per million tokens; `None` for a negative or non-finite value. Cached reads
    /// and cache writes default to the input price.
    pub fn from_usd(
        input: f64,
        output: f64,
        cached_input: Option<f64>,
        cache_write: Option<f64>,
    ) -> Option<Price> {
        Some(Price {
            input: pico_per_mtok(input)?,
            output: pico_per_mtok(output)?,
            cached_input: pico_per_mtok(cached_input.unwrap_or(input))?,
            cache_write: pico_per_mtok(cache_write.unwrap_or(input))?,
        })
    }

    /// Cost of one request in atto-dollars, exact. `usage.input` includes the tokens read
    /// from and written to the provider's cache (OpenAI's convention for reads), each
    /// billed at its own price.
    pub fn cost(&self, u: &Usage) -> Atto {
        let cached = u.cached_input.min(u.input);
        let written = u.cache_write.min(u.input - cached);
        let fresh = u.input - cached - written;
        Atto::from(fresh) * Atto::from(self.input)
            + Atto::from(cached) * Atto::from(self.cached_input)
            + Atto::from(written) * Atto::from(self.cache_write)
            + Atto::from(u.output) * Atto::from(self.output)
    }
}

/// `conf/prices.yaml`: list prices by provider model id.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    prices: std::collections::BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    input: f64,
    output: f64,
    #[serde(default)]
    cached_input: Option<f64>,
    #[serde(default)]
    cache_write: Option<f64>,
    #[serde(default)]
    #[allow(dead_code)]
    source: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    as_of: Option<serde_yaml::Value>,
}

#[derive(Default, Debug)]
pub struct Catalog {
    prices: AHashMap<String, Price>,
}

impl Catalog {
    pub fn parse(text: &str) -> Result<Catalog, String> {
        let f: PriceFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut prices = AHashMap::with_capacity(f.prices.len());
        for (model, e) in f.prices {
            let p = Price::from_usd(e.input, e.output, e.cached_input, e.cache_write)
                .ok_or_else(|| format!("prices.{model}: prices must be non-negative numbers"))?;
            prices.insert(model, p);
        }
        Ok(Catalog { prices })
    }

    /// The price of a model id; a dated id falls back to the longest listed prefix
    /// (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`).
    pub fn lookup(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.prices.get(model) {
            return Some(*p);
        }
        let mut end = model.len();
        while let Some(i) = model[..end].rfind('-') {
            if let Some(p) = self.prices.get(&model[..i]) {
                return Some(*p);
            }
            end = i;
        }
        None
    }

    pub fn len(&self) -> usize {
        self.prices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_integer_cost() {
        let p = Price::from_usd(0.15, 0.60, Some(0.075), None).unwrap();
        assert_eq!(
            p,
            Price {
                input: 150_000_000_000,
                cached_input: 75_000_000_000,
                output: 600_000_000_000,
                cache_write: 150_000_000_000,
            }
        );
        let u = Usage {
            input: 1_000_000,
            output: 1_000_000,
            cached_input: 0,
            reasoning: 0,
            cache_write: 0,
        };
        assert_eq!(usd_decimal(p.cost(&u)), "0.75");
        let u = Usage {
            input: 1000,
            output: 500,
            cached_input: 400,
            reasoning: 0,
            cache_write: 0,
        };
        // 600 × 0.15 + 400 × 0.075 + 500 × 0.60 per million = 0.00042 USD
        assert_eq!(usd_decimal(p.cost(&u)), "0.00042");
        // A million one-token requests add up to exactly what one million-token one costs.
        let one = Usage {
            input: 0,
            output: 1,
            cached_input: 0,
            reasoning: 0,
            cache_write: 0,
        };
        let p2 = Price::from_usd(10.0, 10.0, None, None).unwrap();
        assert_eq!(usd_decimal(p2.cost(&one)), "0.00001");
        assert!(Price::from_usd(-1.0, 0.0, None, None).is_none());
    }

    #[test]
    fn a_million_three_token_embeddings_sum_exactly() {
        let p = Price::from_usd(0.02, 0.0, None, None).unwrap();
        let call = Usage {
            input: 3,
            ..Usage::default()
        };
        // $0.02 per million × 3 tokens = $0.00000006: zero in whole micro-dollars.
        assert_eq!(usd_decimal(p.cost(&call)), "0.00000006");
        let total: Atto = (0..1_000_000).map(|_| p.cost(&call)).sum();
        assert_eq!(usd_decimal(total), "0.06");
        assert_eq!(total, 60_000_000_000_000_000);
    }

    #[test]
    fn prices_keep_twelve_decimals() {
        assert_eq!(pico_per_mtok(0.0000001), Some(100_000)); // 1e-7 USD per million
        assert_eq!(pico_per_mtok(0.123456789012), Some(123_456_789_012));
        assert_eq!(pico_per_mtok(0.0000000000015), Some(2)); // rounded at the 12th decimal
        assert_eq!(pico_per_mtok(2.5), Some(2_500_000_000_000));
        assert_eq!(pico_per_mtok(0.1 + 0.2), Some(300_000_000_000)); // 0.30000000000000004
        assert_eq!(pico_per_mtok(-1.0), None);
        assert_eq!(pico_per_mtok(f64::NAN), None);
        assert_eq!(pico_per_mtok(1e30), None);
        assert_eq!(usd_decimal(0), "0");
        // Every count of trailing zeros, against the arithmetic's own text.
        for zeros in 0..18 {
            for digits in [1u128, 7, 12, 305, 100_000_001] {
                let atto = digits * 10u128.pow(zeros);
                let whole = atto / ATTO_PER_USD;
                let frac = format!("{:018}", atto % ATTO_PER_USD);
                let frac = frac.trim_end_matches('0');
                let want = if frac.is_empty() {
                    whole.to_string()
                } else {
                    format!("{whole}.{frac}")
                };
                assert_eq!(usd_decimal(atto), want, "{atto}");
            }
        }
        // Both sides of the u64 fast path.
        assert_eq!(usd_decimal(u128::from(u64::MAX)), "18.446744073709551615");
        assert_eq!(
            usd_decimal(u128::from(u64::MAX) + 1),
            "18.446744073709551616"
        );
        assert_eq!(usd_decimal(3 * ATTO_PER_USD), "3");
        assert_eq!(
            usd_decimal(u128::MAX),
            "340282366920938463463.374607431768211455"
        );
        assert_eq!(usd_f64(1_500_000_000_000_000_000), 1.5);
    }

    #[test]
    fn shipped_catalog_parses_and_prefix_lookup() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/prices.yaml"))
                .unwrap();
        let c = Catalog::parse(&text).unwrap();
        assert!(c.len() > 25);
        let mini = c.lookup("gpt-4o-mini").unwrap();
        assert_eq!(c.lookup("gpt-4o-mini-2024-07-18"), Some(mini));
        assert_eq!(
            c.lookup("gpt-4o-2024-08-06").unwrap().input,
            2_500_000_000_000
        );
        assert_eq!(
            c.lookup("claude-3-5-haiku-20241022").unwrap().output,
            4_000_000_000_000
        );
        assert!(c.lookup("no-such-model").is_none());
    }
}
