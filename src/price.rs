//! Prices and cost. Prices are read as USD per million tokens and held as integer
//! micro-dollars per million tokens, so a request's cost is exact integer arithmetic in
//! micro-dollars (no float drift across millions of requests).

use crate::usage::Usage;
use ahash::AHashMap;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    /// Micro-dollars per million tokens.
    pub input: u64,
    pub cached_input: u64,
    pub output: u64,
}

impl Price {
    /// From USD per million tokens; `None` for a negative or non-finite value.
    pub fn from_usd(input: f64, output: f64, cached_input: Option<f64>) -> Option<Price> {
        let micro = |v: f64| (v.is_finite() && v >= 0.0).then(|| (v * 1e6).round() as u64);
        Some(Price {
            input: micro(input)?,
            output: micro(output)?,
            cached_input: micro(cached_input.unwrap_or(input))?,
        })
    }

    /// Cost of one request in micro-dollars, rounded half up. `usage.input` includes the
    /// cached tokens (OpenAI's convention), which are billed at the cached price.
    pub fn cost_micros(&self, u: &Usage) -> u64 {
        let cached = u.cached_input.min(u.input);
        let pico = (u.input - cached) as u128 * self.input as u128
            + cached as u128 * self.cached_input as u128
            + u.output as u128 * self.output as u128;
        ((pico + 500_000) / 1_000_000) as u64
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
            let p = Price::from_usd(e.input, e.output, e.cached_input)
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
        let p = Price::from_usd(0.15, 0.60, Some(0.075)).unwrap();
        assert_eq!(
            p,
            Price {
                input: 150_000,
                cached_input: 75_000,
                output: 600_000
            }
        );
        let u = Usage {
            input: 1_000_000,
            output: 1_000_000,
            cached_input: 0,
            reasoning: 0,
        };
        assert_eq!(p.cost_micros(&u), 750_000); // $0.75
        let u = Usage {
            input: 1000,
            output: 500,
            cached_input: 400,
            reasoning: 0,
        };
        // 600 × 0.15 + 400 × 0.075 + 500 × 0.60 per million = 0.00042 USD = 420 µ$
        assert_eq!(p.cost_micros(&u), 420);
        // A million one-token requests add up to exactly what one million-token one costs.
        let one = Usage {
            input: 0,
            output: 1,
            cached_input: 0,
            reasoning: 0,
        };
        let p2 = Price::from_usd(10.0, 10.0, None).unwrap();
        assert_eq!(p2.cost_micros(&one), 10);
        assert!(Price::from_usd(-1.0, 0.0, None).is_none());
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
        assert_eq!(c.lookup("gpt-4o-2024-08-06").unwrap().input, 2_500_000);
        assert_eq!(
            c.lookup("claude-3-5-haiku-20241022").unwrap().output,
            4_000_000
        );
        assert!(c.lookup("no-such-model").is_none());
    }
}
