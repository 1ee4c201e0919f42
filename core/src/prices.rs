//! DeepSeek's API list prices, shipped as data (`core/data/deepseek-api-prices.csv`, with its
//! sources): the reports compare them with measured cost, and endpoint runs price measured
//! token counts with them.

/// The API price table as shipped.
pub const API_PRICES_CSV: &str = include_str!("../data/deepseek-api-prices.csv");

/// One row of the API price table.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiPrice {
    pub item: String,
    pub before: f64,
    pub after: f64,
    pub effective_date: String,
    pub model_before: String,
    pub model_after: String,
    pub source: String,
}

impl ApiPrice {
    /// after / before.
    pub fn ratio(&self) -> f64 {
        self.after / self.before
    }
}

/// Parse the API price CSV (columns of `deepseek-api-prices.csv`; fields may be quoted).
pub fn parse_api_prices(text: &str) -> Result<Vec<ApiPrice>, (usize, String)> {
    let bad = |line: usize, why: String| (line, why);
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, h)| split_csv(h)).unwrap_or_default();
    let want = ["item", "usd_per_m_before", "usd_per_m_after", "effective_date", "model_before", "model_after", "source"];
    if header != want {
        return Err(bad(1, format!("the header must be `{}`", want.join(","))));
    }
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f = split_csv(line);
        if f.len() != want.len() {
            return Err(bad(i + 1, format!("expected {} fields, found {}", want.len(), f.len())));
        }
        let num = |s: &str| s.trim().parse::<f64>().map_err(|e| bad(i + 1, format!("`{s}` is not a price: {e}")));
        out.push(ApiPrice {
            item: f[0].clone(),
            before: num(&f[1])?,
            after: num(&f[2])?,
            effective_date: f[3].clone(),
            model_before: f[4].clone(),
            model_after: f[5].clone(),
            source: f[6].clone(),
        });
    }
    Ok(out)
}

/// Split one CSV line, honouring double quotes (`""` inside quotes is a quote).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// API prices for one model of the table: `terminus`/`v3.1` picks the `before` column
/// (DeepSeek-V3.1-Terminus), `v3.2`/`v3.2-exp` the `after` column; or three numbers
/// `HIT,MISS,OUT` in USD per million tokens (`custom`). Matching is case-insensitive on the
/// table's model names too.
pub fn pricing_for(spec: &str) -> Result<crate::endpoint::ApiPricing, String> {
    let s = spec.trim();
    let nums: Vec<&str> = s.split(',').map(str::trim).collect();
    if nums.len() == 3 {
        let mut v = [0.0f64; 3];
        for (slot, t) in v.iter_mut().zip(&nums) {
            *slot = t.parse().map_err(|_| format!("`{t}` in price `{s}` is not a number (write HIT,MISS,OUT in USD per million tokens)"))?;
            if !(*slot >= 0.0 && slot.is_finite()) {
                return Err(format!("price `{s}`: prices must be finite and >= 0"));
            }
        }
        return Ok(crate::endpoint::ApiPricing {
            source: "custom".into(),
            usd_per_m_input_hit: v[0],
            usd_per_m_input_miss: v[1],
            usd_per_m_output: v[2],
        });
    }
    let table = parse_api_prices(API_PRICES_CSV).map_err(|(l, w)| format!("shipped price table line {l}: {w}"))?;
    let low = s.to_ascii_lowercase();
    let first = &table[0];
    let before = low.contains("terminus") || low.contains("v3.1") || low == first.model_before.to_ascii_lowercase();
    let after = low.contains("v3.2") || low == first.model_after.to_ascii_lowercase();
    if before == after {
        return Err(format!(
            "unknown price `{s}`: use `v3.1-terminus` or `v3.2-exp` (DeepSeek API list prices), or `HIT,MISS,OUT` in USD per million tokens"
        ));
    }
    let pick = |item: &str| -> Result<f64, String> {
        let row = table.iter().find(|r| r.item == item).ok_or_else(|| format!("the shipped price table has no `{item}` row"))?;
        Ok(if before { row.before } else { row.after })
    };
    let model = if before { &first.model_before } else { &first.model_after };
    Ok(crate::endpoint::ApiPricing {
        source: format!("{model} API list price ({})", first.effective_date),
        usd_per_m_input_hit: pick("input (cache hit)")?,
        usd_per_m_input_miss: pick("input (cache miss)")?,
        usd_per_m_output: pick("output")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pricing_by_model_and_custom() {
        let t = pricing_for("DeepSeek-V3.1-Terminus").unwrap();
        assert_eq!((t.usd_per_m_input_hit, t.usd_per_m_input_miss, t.usd_per_m_output), (0.07, 0.56, 1.68));
        let v = pricing_for("v3.2-exp").unwrap();
        assert_eq!((v.usd_per_m_input_hit, v.usd_per_m_input_miss, v.usd_per_m_output), (0.028, 0.28, 0.42));
        let c = pricing_for("0.1, 1, 2.5").unwrap();
        assert_eq!((c.source.as_str(), c.usd_per_m_output), ("custom", 2.5));
        assert!(pricing_for("gpt-x").is_err());
        assert!(pricing_for("1,x,2").is_err());
        assert!(pricing_for("1,-1,2").is_err());
    }
}
