//! `switchyard usage`: the collector's `/v1/usage` from a terminal, as a table, CSV or JSON.

use std::fmt::Write as _;

pub struct Request<'a> {
    pub collector: &'a str,
    pub token: &'a str,
    pub group_by: &'a str,
    pub since: &'a str,
    pub until: Option<&'a str>,
    pub team: Option<&'a str>,
    pub model: Option<&'a str>,
    pub format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Fetches the report and returns it as text to print.
pub fn fetch(r: &Request<'_>) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(fetch_async(r))
}

async fn fetch_async(r: &Request<'_>) -> Result<String, String> {
    let mut params = vec![("from", r.since), ("group_by", r.group_by)];
    if let Some(u) = r.until {
        params.push(("to", u));
    }
    if let Some(t) = r.team {
        params.push(("team", t));
    }
    if let Some(m) = r.model {
        params.push(("model", m));
    }
    if r.format == Format::Csv {
        params.push(("format", "csv"));
    }
    let url = format!("{}/v1/usage", r.collector.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let resp = client
        .get(url)
        .query(&params)
        .bearer_auth(r.token)
        .send()
        .await
        .map_err(|e| format!("cannot reach the collector: {e}"))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    if !status.is_success() {
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(200).collect());
        return Err(format!("collector answered {status}: {msg}"));
    }
    match r.format {
        Format::Csv => Ok(text),
        Format::Json => Ok(text + "\n"),
        Format::Table => {
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("unexpected answer: {e}"))?;
            Ok(table(&v, r.group_by))
        }
    }
}

const COLUMNS: [&str; 8] = [
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "p50_latency_ms",
    "p95_latency_ms",
];

fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Aligned columns: group keys left, numbers right.
fn table(v: &serde_json::Value, group_by: &str) -> String {
    let keys: Vec<&str> = group_by.split(',').filter(|k| !k.is_empty()).collect();
    let mut head: Vec<&str> = keys.clone();
    head.extend(COLUMNS);
    let empty = Vec::new();
    let rows = v["rows"].as_array().unwrap_or(&empty);
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| head.iter().map(|k| cell(&r[*k])).collect())
        .collect();
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            body.iter()
                .map(|r| r[i].chars().count())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        for (i, c) in cells.iter().enumerate() {
            let w = widths[i];
            if i < keys.len() {
                let _ = write!(out, "{c:<w$}  ");
            } else {
                let _ = write!(out, "{c:>w$}  ");
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(
        &mut out,
        &head.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    for r in &body {
        line(&mut out, r);
    }
    if body.is_empty() {
        out.push_str("(no usage in this range)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_aligns_keys_left_and_numbers_right() {
        let v = serde_json::json!({"rows": [
            {"team": "research", "requests": 12, "errors": 0, "input_tokens": 100, "output_tokens": 20,
             "cached_tokens": 0, "cost_usd": 0.0015, "p50_latency_ms": 3.1, "p95_latency_ms": null}
        ]});
        let t = super::table(&v, "team");
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("team      requests"), "{t}");
        assert!(lines[1].starts_with("research        12"), "{t}");
        assert!(lines[1].ends_with('-'), "{t}");
    }
}
