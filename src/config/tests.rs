use super::*;
use std::collections::HashMap;

struct MapEnv(HashMap<&'static str, &'static str>);
impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).map(|s| s.to_string())
    }
}

fn env() -> MapEnv {
    MapEnv(HashMap::from([("OPENAI_API_KEY", "sk-real")]))
}

const GOOD: &str = r#"
providers:
  openai: { format: openai, base_url: "https://api.openai.com/v1", api_key: "${OPENAI_API_KEY}" }
  local:  { format: openai, base_url: "http://127.0.0.1:9000/v1", intercept: [api.local.test] }
models:
  gpt-4o-mini: { provider: openai }
  llama: { provider: local, name: meta-llama/Llama-3.1-8B-Instruct }
routes:
  - name: chat
    match: { model: "gpt-4o*" }
    strategy: weighted
    targets: [ { model: gpt-4o-mini, weight: 9 }, { model: llama, weight: 1 } ]
    fallbacks: [llama]
    retry: { attempts: 3, on: [connect, "5xx"] }
    timeouts: { connect: 2s, first_byte: 30s }
  - name: raw
    match: { host: api.openai.com }
    strategy: passthrough
passthrough: [pypi.org, "internal.svc:8080"]
"#;

fn err(yaml: &str) -> ConfigError {
    match from_str(yaml, &env(), 1) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn compiles_the_good_policy() {
    let p = from_str(GOOD, &env(), 7).unwrap();
    assert_eq!(p.generation, 7);
    assert_eq!(p.providers.len(), 2);
    let openai = &p.providers[p
        .providers
        .iter()
        .position(|x| &*x.name == "openai")
        .unwrap()];
    assert!(openai.tls);
    assert_eq!(openai.port, 443);
    assert_eq!(openai.base_path, "/v1");
    assert_eq!(openai.auth.as_ref().unwrap().1, "Bearer sk-real");
    let local = p.providers.iter().find(|x| &*x.name == "local").unwrap();
    assert_eq!(local.literal_addr, Some("127.0.0.1:9000".parse().unwrap()));
    assert_eq!(local.authority, "127.0.0.1:9000");
    assert!(matches!(
        p.host_rule("api.openai.com"),
        Some(HostRule::Provider(_))
    ));
    assert!(matches!(
        p.host_rule("API.local.test:80"),
        Some(HostRule::Provider(_))
    ));
    assert!(matches!(
        p.host_rule("127.0.0.1:9000"),
        Some(HostRule::Provider(_))
    ));
    assert!(matches!(
        p.host_rule("internal.svc:8080"),
        Some(HostRule::Passthrough { port: 8080, .. })
    ));
    assert!(p.host_rule("evil.example").is_none());
    assert_eq!(
        &*p.model("llama").unwrap().upstream,
        "meta-llama/Llama-3.1-8B-Instruct"
    );
    let r = &p.routes[0];
    assert_eq!(r.retry.attempts, 3);
    assert!(r.retry.on_connect && r.retry.on_5xx && !r.retry.on_429 && !r.retry.on_timeout);
    assert_eq!(r.timeouts.connect, Duration::from_secs(2));
    let text = p.describe();
    assert!(text.contains("chat"), "{text}");
    // secrets never reach /config
    let shown = p.redacted.to_string();
    assert!(
        !shown.contains("sk-real") && !shown.contains("OPENAI_API_KEY"),
        "{shown}"
    );
}

#[test]
fn unknown_keys_are_errors_naming_the_field() {
    let e = err("providers:\n  a: { format: openai, base_url: \"http://x\", api_kye: k }\n");
    assert!(e.to_string().contains("providers.a"), "{e}");
    assert!(e.to_string().contains("api_kye"), "{e}");
    let e = err("listen: { proxy: 127.0.0.1:1, admn: x }\n");
    assert!(e.to_string().contains("admn"), "{e}");
}

#[test]
fn provider_headers_cannot_override_what_the_proxy_sets() {
    for (name, field) in [
        ("Content-Length", "providers.a.headers.Content-Length"),
        ("host", "providers.a.headers.host"),
        ("authorization", "providers.a.headers.authorization"),
    ] {
        let e = err(&format!(
            "providers:\n  a: {{ format: openai, base_url: \"http://x\", api_key: k, headers: {{ {name}: v }} }}\n"
        ));
        assert_eq!(e.field, field, "{e}");
    }
    // Without an api_key, an Authorization header of the operator's is the credential.
    let ok = from_str(
        "providers:\n  a: { format: openai, base_url: \"http://x\", headers: { authorization: Bearer t, openai-organization: o } }\n",
        &env(),
        1,
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn precise_errors() {
    let e = err(&GOOD.replace(
        "targets: [ { model: gpt-4o-mini",
        "targets: [ { model: nope",
    ));
    assert_eq!(e.field, "routes[0].targets[0].model");
    let e = err(&GOOD.replace("strategy: weighted", "strategy: complexity"));
    assert_eq!(e.field, "routes[0].targets");
    assert!(e.message.contains("tiers"), "{}", e.message);
    let e = err(&GOOD.replace("strategy: weighted", "strategy: bogus"));
    assert!(e.message.contains("unknown strategy"));
    let e = err(&GOOD.replace("first_byte: 30s", "first_byte: soon"));
    assert_eq!(e.field, "routes[0].timeouts.first_byte");
    let e = err(&GOOD.replace("\"5xx\"", "\"4xx\""));
    assert_eq!(e.field, "routes[0].retry.on[1]");
    let e = err(&GOOD.replace("${OPENAI_API_KEY}", "${MISSING_KEY}"));
    assert_eq!(e.field, "providers.openai.api_key");
    assert!(e.message.contains("MISSING_KEY"));
    let e = err(&GOOD.replace("https://api.openai.com/v1", "ftp://x"));
    assert_eq!(e.field, "providers.openai.base_url");
    let e = err(&GOOD.replace("{ provider: openai }", "{ provider: nobody }"));
    assert_eq!(e.field, "models.gpt-4o-mini.provider");
    let e = err(&GOOD.replace(
        "format: openai, base_url: \"http://127",
        "format: cohere, base_url: \"http://127",
    ));
    assert_eq!(e.field, "providers.local.format");
    let e = err(&GOOD.replace("pypi.org", "api.local.test"));
    assert_eq!(e.field, "passthrough[0]");
    let e = err(&GOOD.replace("name: raw", "name: chat"));
    assert_eq!(e.field, "routes[1].name");
    let e = err("routes: [ { name: a, strategy: priority } ]");
    assert_eq!(e.field, "routes[0].targets");
    let e = err(&GOOD.replace(
        "intercept: [api.local.test]",
        "ca_file: /nonexistent/ca.pem",
    ));
    assert_eq!(e.field, "providers.local.ca_file");
    let e = err("server: { ca_file: /etc/hostname }");
    assert_eq!(e.field, "server.ca_file");
    let e = err("listen: { proxy: \"localhost\" }");
    assert_eq!(e.field, "listen.proxy");
}

#[test]
fn teams_and_telemetry_are_validated() {
    let base = "models: {}\n";
    let e = err(&format!(
        "{base}teams:\n  t: {{ keys: [{{ id: k, hash: \"abc\" }}] }}\n"
    ));
    assert_eq!(e.field, "teams.t.keys[0].hash");
    let e = err(&format!(
        "{base}teams:\n  t: {{ budget: {{ usd: 5, per: year }} }}\n"
    ));
    assert_eq!(e.field, "teams.t.budget.per");
    let e = err(&format!("{base}teams:\n  t: {{ models: [x] }}\n"));
    assert_eq!(e.field, "teams.t.models[0]");
    let e = err(&format!("{base}telemetry: {{ collector: \"nope\" }}\n"));
    assert_eq!(e.field, "telemetry.collector");
    for (bad, field) in [
        ("compression: brotli", "telemetry.compression"),
        ("spool_max_bytes: 10", "telemetry.spool_max_bytes"),
        ("batch: { max_events: 0 }", "telemetry.batch.max_events"),
        ("batch: { max_wait: 5m }", "telemetry.batch.max_wait"),
        ("spool_dir: \"\"", "telemetry.spool_dir"),
    ] {
        let e = err(&format!(
            "{base}telemetry: {{ collector: \"http://c:7070\", {bad} }}\n"
        ));
        assert_eq!(e.field, field, "{bad}");
    }
    // The token never shows in /config.
    let p = from_str(
        &format!("{base}telemetry: {{ collector: \"http://c:7070\", token: sy-secret-token }}\n"),
        &env(),
        1,
    )
    .unwrap();
    assert!(!p.redacted.to_string().contains("sy-secret-token"));
    assert_eq!(
        p.telemetry.unwrap().token.as_deref(),
        Some("sy-secret-token")
    );
    let ok = format!(
        "{base}teams:\n  t: {{ keys: [{{ id: k, hash: \"sha256:{}\" }}], budget: {{ usd: 5, per: day }}, limits: {{ rpm: 5 }} }}\ntelemetry: {{ collector: \"http://c:7070\" }}\n",
        "a".repeat(64)
    );
    let p = from_str(&ok, &env(), 1).unwrap();
    assert!(
        !p.redacted.to_string().contains(&"a".repeat(64)),
        "key hashes are redacted"
    );
}

#[test]
fn governance_is_validated() {
    let base = "models: { m: { provider: p } }\nproviders: { p: { format: openai, base_url: \"http://x/v1\" } }\n";
    let h = format!("sha256:{}", "b".repeat(64));
    for (bad, field) in [
        ("governance: { on_redis_down: maybe }".to_string(), "governance.on_redis_down"),
        ("governance: { redis: \"http://r\" }".into(), "governance.redis"),
        ("governance: { reservation_ttl: 0s }".into(), "governance.reservation_ttl"),
        ("org: { limits: { rpm: 0 } }".into(), "org.limits.rpm"),
        ("org: { budget: { usd: -1, per: day } }".into(), "org.budget.usd"),
        ("org: { budget: { usd: 1, per: day, on_exceed: explode } }".into(), "org.budget.on_exceed"),
        ("org: { budget: { usd: 1, per: day, on_exceed: downgrade } }".into(), "org.budget.downgrade_to"),
        ("org: { budget: { usd: 1, per: day, on_exceed: downgrade, downgrade_to: nowhere } }".into(), "org.budget.downgrade_to"),
        ("org: { budget: { usd: 1, per: day, alert_at: [0] } }".into(), "org.budget.alert_at"),
        (format!("teams: {{ t: {{ keys: [{{ id: a, hash: \"{h}\" }}, {{ id: a, hash: \"{h}\" }}] }} }}"), "teams.t.keys[1].id"),
        (format!("teams: {{ t: {{ keys: [{{ id: a, hash: \"{h}\" }}, {{ id: b, hash: \"{h}\" }}] }} }}"), "teams.t.keys[1].hash"),
        (format!("teams: {{ t: {{ keys: [{{ id: a, hash: \"{h}\", models: [nope] }}] }} }}"), "teams.t.keys[0].models[0]"),
    ] {
        let e = err(&format!("{base}{bad}\n"));
        assert_eq!(e.field, field, "{bad}");
    }
    let p = from_str(
        &format!("{base}governance: {{ redis: \"redis://:pw@r:6379\", on_redis_down: open }}\norg: {{ models: [\"m*\"], budget: {{ usd: 10000, per: month, on_exceed: downgrade, downgrade_to: m, alert_at: [1.0, 0.8] }} }}\n"),
        &env(),
        1,
    )
    .unwrap();
    assert!(p.governance.active);
    assert!(p.governance_settings.fail_open);
    assert!(
        !p.redacted.to_string().contains(":pw@"),
        "the Redis URL is redacted"
    );
    let b = p.governance.org.budget.as_ref().unwrap();
    assert_eq!(b.limit, 10_000 * 1_000_000_000_000_000_000);
    assert_eq!(b.alert_at, vec![0.8, 1.0]);
    // No governance at all: admission is skipped.
    assert!(!from_str(base, &env(), 1).unwrap().governance.active);
}

#[test]
fn empty_file_is_a_valid_empty_policy() {
    let p = from_str("{}", &env(), 1).unwrap();
    assert!(p.routes.is_empty());
    assert_eq!(p.listen.proxy, "127.0.0.1:4000");
    assert_eq!(p.max_body_bytes, 32 * 1024 * 1024);
}

#[test]
fn errors_never_echo_a_secret() {
    let secret = "sk-proj-Abc123Def456Ghi789Jkl012Mno345Pqr678";
    // The `api_key:` line dedented by two spaces: it becomes a provider of its own.
    let dedented = format!(
        "providers:\n  openai:\n    format: openai\n    base_url: https://api.openai.com/v1\n  api_key: \"{secret}\"\n"
    );
    // Other slips: the key as a map key, as a list item, as a bad duration, in a URL.
    let as_key = format!("providers:\n  {secret}: {{ format: openai, base_url: http://a/v1 }}\nroutes: [{{ name: r, strategy: x, bogus: 1 }}]\n");
    let unknown_field =
        format!("providers:\n  p: {{ format: openai, base_url: http://a/v1, {secret}: 1 }}\n");
    let in_url =
        format!("providers:\n  p: {{ format: openai, base_url: \"http://user:{secret}@a/v1\" }}\n");
    let unterminated = format!(
        "providers:\n  p: {{ format: openai, base_url: http://a/v1, api_key: \"${{{secret}\" }}\n"
    );
    for yaml in [dedented, as_key, unknown_field, in_url, unterminated] {
        let e = err(&yaml);
        let text = e.to_string();
        assert!(!text.contains("Abc123"), "secret echoed: {text}");
        assert!(!text.is_empty());
    }
    // What is echoed still says where the problem is.
    let e = err(&format!(
        "providers:\n  openai:\n    format: openai\n    base_url: https://api.openai.com/v1\n  api_key: \"{secret}\"\n"
    ));
    assert_eq!(e.field, "providers.api_key");
    assert!(e.message.contains("<value hidden>"), "{e}");
    let e = err("providers:\n  p: { format: openai, base_url: http://a/v1, apikey: x }\n");
    assert!(e.message.contains("`apikey`"), "{e}");
    let e = err(&format!(
        "providers:\n  p: {{ format: openai, base_url: \"http://user:{secret}@a/v1\" }}\n"
    ));
    assert_eq!(e.field, "providers.p.base_url");
    assert!(e.message.contains("credentials"), "{e}");
}

#[test]
fn client_limits_are_validated() {
    let p = from_str(GOOD, &env(), 1).unwrap();
    assert_eq!(p.client.header_timeout, Duration::from_secs(10));
    assert_eq!(p.client.idle_timeout, Duration::from_secs(60));
    assert_eq!(p.client.body_timeout, Duration::from_secs(60));
    assert_eq!(p.max_body_memory_bytes, 128 << 20);
    let e = err(&format!("{GOOD}server: {{ header_timeout: 0s }}\n"));
    assert_eq!(e.field, "server.header_timeout");
    let e = err(&format!(
        "{GOOD}server: {{ max_body_bytes: 1000, max_body_memory_bytes: 999 }}\n"
    ));
    assert_eq!(e.field, "server.max_body_memory_bytes");
}

#[test]
fn secret_shaped_values_are_hidden_wherever_they_are_echoed() {
    // An Azure-style key (32 hex digits) pasted as a field name, and as a provider name.
    let azure = "3f2a9c1b7d6e4f5a8b9c0d1e2f3a4b5c";
    let e = err(&format!(
        "providers:\n  p: {{ format: openai, base_url: http://a/v1, {azure}: 1 }}\n"
    ));
    assert!(!e.to_string().contains(azure), "{e}");
    let e = err(&format!(
        "providers:\n  p: {{ format: openai, base_url: http://a/v1 }}\nmodels:\n  m: {{ provider: \"{azure}\" }}\n"
    ));
    assert!(!e.to_string().contains(azure), "{e}");
    // Ordinary names are still shown.
    let e = err("providers:\n  p: { format: openai, base_url: http://a/v1 }\nmodels:\n  m: { provider: claude-3-5-haiku-20241022 }\n");
    assert!(e.to_string().contains("claude-3-5-haiku-20241022"), "{e}");
}

#[test]
fn a_shadow_names_another_route() {
    let shadowed = GOOD.replace("strategy: weighted", "shadow: nope\n    strategy: weighted");
    let e = err(&shadowed);
    assert_eq!(e.field, "routes[0].shadow");
    let own = GOOD.replace("strategy: weighted", "shadow: chat\n    strategy: weighted");
    assert_eq!(err(&own).field, "routes[0].shadow");
}
