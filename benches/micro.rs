//! Micro-benchmarks of the hot pieces of the data path: route decision, body rewrite,
//! SSE usage scan, metrics recording. `cargo bench --bench micro`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::HeaderMap;
use std::hint::black_box;
use switchyard::config::expand::ProcessEnv;
use switchyard::route::{self, RouteInput};
use switchyard::{rewrite, telemetry, usage};

/// 50 routes; the request matches the last one (the worst case of first-match-wins).
fn fifty_route_policy() -> switchyard::policy::Policy {
    let mut y = String::from("providers:\n  p: { format: openai, base_url: \"http://127.0.0.1:9/v1\", api_key: k }\nmodels:\n");
    for i in 0..50 {
        y.push_str(&format!("  m{i}: {{ provider: p, name: upstream-{i} }}\n"));
    }
    y.push_str("routes:\n");
    for i in 0..49 {
        y.push_str(&format!(
            "  - {{ name: r{i}, match: {{ model: \"family-{i}-*\", headers: {{ x-team: t{i} }} }}, strategy: weighted, targets: [{{model: m{i}, weight: 3}}, {{model: m{}, weight: 1}}], fallbacks: [m0] }}\n",
            (i + 1) % 50
        ));
    }
    y.push_str("  - { name: last, match: { model: \"gpt-4o*\" }, strategy: priority, targets: [m49], fallbacks: [m1, m2] }\n");
    switchyard::config::from_str(&y, &ProcessEnv, 1).expect("bench policy")
}

const STRATEGIES: &str = r#"
providers:
  p: { format: openai, base_url: "http://127.0.0.1:9/v1", api_key: k }
models:
  a: { provider: p, quality: 60, price: { input: 0.15, output: 0.6 } }
  b: { provider: p, quality: 80, price: { input: 2.5, output: 10 } }
  c: { provider: p, quality: 90, price: { input: 3, output: 15 } }
routes:
  - { name: cheapest, match: { model: cheapest }, strategy: cheapest, targets: [a, b, c] }
  - { name: fastest, match: { model: fastest }, strategy: fastest, targets: [a, b, c] }
  - { name: least-busy, match: { model: least-busy }, strategy: least-busy, targets: [a, b, c] }
  - name: complexity
    match: { model: complexity }
    strategy: complexity
    tiers: [ { model: a, up_to: 0.35 }, { model: b, up_to: 0.7 }, c ]
"#;

/// A chat request whose user message is `size` bytes of English prose with numbers, the
/// way a real prompt reads (the scorer's work depends on words and their kinds).
fn prose_body(size: usize) -> Bytes {
    const TEXT: &str = "Suppose a train leaves the station at 3 pm travelling at 60 miles per hour, and a second train follows it 45 minutes later at 75 miles per hour. Explain why the second train catches up, calculate when it does, and then summarize the answer in one sentence for a child. ";
    let mut content = String::with_capacity(size + TEXT.len());
    while content.len() < size {
        content.push_str(TEXT);
    }
    content.truncate(size);
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "model": "complexity",
            "messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": content}],
        }))
        .unwrap_or_default(),
    )
}

fn chat_body(size: usize) -> Bytes {
    let content = "x".repeat(size);
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "model": "gpt-4o-mini",
            "temperature": 0.2,
            "messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": content}],
        }))
        .unwrap_or_default(),
    )
}

fn sse_stream(chunks: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..chunks {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":120,\"completion_tokens\":100,\"total_tokens\":220}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn benches(c: &mut Criterion) {
    let policy = fifty_route_policy();
    let seen = route::Observed::default();
    let headers = HeaderMap::new();
    let small = chat_body(200);
    c.bench_function("route/50-routes-last-match", |b| {
        b.iter(|| {
            let input = RouteInput {
                model: black_box("gpt-4o"),
                host: None,
                host_provider: None,
                path: "/v1/chat/completions",
                headers: &headers,
                body: &small,
                max_tokens: None,
                input_tokens: None,
                score: None,
            };
            black_box(route::plan(&policy, &seen, &input).ok())
        })
    });

    // Each strategy's plan over three targets (health read, ordering, the explanation).
    let strategies = switchyard::config::from_str(STRATEGIES, &ProcessEnv, 1).expect("policy");
    for model in ["cheapest", "fastest", "least-busy", "complexity"] {
        c.bench_function(&format!("route/strategy/{model}"), |b| {
            b.iter(|| {
                let input = RouteInput {
                    model: black_box(model),
                    host: None,
                    host_provider: None,
                    path: "/v1/chat/completions",
                    headers: &headers,
                    body: &small,
                    max_tokens: Some(200),
                    input_tokens: None,
                    score: None,
                };
                black_box(route::plan(&strategies, &seen, &input).ok())
            })
        });
    }

    // The complexity score of prompts of ordinary English prose with some numbers.
    for (name, size) in [("1KB", 1024), ("8KB", 8 * 1024), ("32KB", 32 * 1024)] {
        let body = prose_body(size);
        let mut g = c.benchmark_group(format!("complexity/{name}"));
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function("score", |b| {
            b.iter(|| black_box(route::complexity::score(black_box(&body))))
        });
        // The JSON parse alone, for the scan's share of the score.
        g.bench_function("json-parse-only", |b| {
            b.iter(|| {
                black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&body)).ok())
            })
        });
        g.finish();
    }

    for (name, size) in [("2KB", 1900), ("256KB", 256 * 1024)] {
        let body = chat_body(size);
        let mut g = c.benchmark_group(format!("rewrite/{name}"));
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function("probe+splice", |b| {
            b.iter(|| {
                let p = rewrite::probe(black_box(&body)).ok().flatten();
                let span = p.map(|p| p.model_span).unwrap_or(0..0);
                black_box(rewrite::with_model(&body, &span, Some("upstream-49")))
            })
        });
        g.finish();
    }

    let stream = sse_stream(100);
    let mut g = c.benchmark_group("sse-usage-scan");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("100-chunks-as-sent", |b| {
        let events: Vec<&[u8]> = stream.split_inclusive(|&b| b == b'\n').collect();
        b.iter(|| {
            let mut sc = usage::SseScanner::default();
            for e in &events {
                sc.feed(black_box(e));
            }
            black_box(sc.usage)
        })
    });
    g.bench_function("100-chunks-in-1500-byte-reads", |b| {
        b.iter(|| {
            let mut sc = usage::SseScanner::default();
            for part in stream.chunks(1500) {
                sc.feed(black_box(part));
            }
            black_box(sc.usage)
        })
    });
    g.finish();

    let metrics = telemetry::Metrics::new();
    let u = usage::Usage {
        input: 120,
        output: 100,
        cached_input: 0,
        reasoning: 0,
        cache_write: 0,
    };
    c.bench_function("metrics/record-one-request", |b| {
        b.iter(|| {
            metrics
                .requests
                .with_label_values(&["chat", "openai", "gpt-4o-mini", "200"])
                .inc();
            metrics
                .request_duration
                .with_label_values(&["chat"])
                .observe(0.012);
            metrics
                .upstream_attempts
                .with_label_values(&["openai", "ok"])
                .inc();
            let price = switchyard::price::Price::from_usd(0.15, 0.60, None, None);
            metrics.record_usage("openai", "gpt-4o-mini", "default", black_box(&u), price);
        })
    });
}

criterion_group!(micro, benches);
criterion_main!(micro);
