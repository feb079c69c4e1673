//! Upstream TLS: certificate and hostname verification, SNI, and a per-provider CA, against
//! a local TLS server with a freshly made certificate.

mod common;

use common::*;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{SslAcceptor, SslMethod, SslRef};
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509NameBuilder, X509};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

fn self_signed(host: &str) -> (X509, PKey<Private>) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", host).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns(host)
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (b.build(), key)
}

/// A one-route HTTPS upstream answering every request with what it saw: SNI, credentials,
/// model.
fn tls_upstream(cert: X509, key: PKey<Private>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sni = Arc::new(Mutex::new(String::new()));
    let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    acc.set_certificate(&cert).unwrap();
    acc.set_private_key(&key).unwrap();
    let seen = sni.clone();
    acc.set_servername_callback(move |ssl: &mut SslRef, _| {
        *seen.lock().unwrap() = ssl
            .servername(openssl::ssl::NameType::HOST_NAME)
            .unwrap_or("")
            .to_string();
        Ok(())
    });
    let acc = acc.build();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let Ok(stream) = acc.accept(conn) else {
                continue;
            };
            let mut r = BufReader::new(stream);
            let (mut len, mut auth, mut line) = (0usize, String::new(), String::new());
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("authorization:") {
                    auth = line["authorization:".len()..].trim().to_string();
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let out = serde_json::json!({
                "object": "chat.completion", "model": req["model"], "sni": *sni.lock().unwrap(), "auth": auth,
            })
            .to_string();
            let mut s = r.into_inner();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{out}",
                out.len()
            );
            let _ = s.shutdown();
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn verifies_the_certificate_and_sends_sni() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed("localhost");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.to_pem().unwrap()).unwrap();
    let port = tls_upstream(cert, key);
    let yaml = format!(
        r#"
providers:
  private: {{ format: openai, base_url: "https://localhost:{port}/v1", api_key: sk-tls, ca_file: "{ca}" }}
  untrusted: {{ format: openai, base_url: "https://localhost:{port}/v1", api_key: sk-tls }}
models:
  trusted-model: {{ provider: private, name: upstream-model }}
  untrusted-model: {{ provider: untrusted }}
"#,
        ca = ca.display()
    );
    let sc = start_proxy(dir.path(), &yaml);
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/v1/chat/completions", sc.url());

    let resp = c
        .post(&url)
        .json(&chat_body("trusted-model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["sni"], "localhost");
    assert_eq!(v["auth"], "Bearer sk-tls");
    assert_eq!(v["model"], "upstream-model");

    // The same server without its CA configured: verification fails, nothing is sent.
    let resp = c
        .post(&url)
        .json(&chat_body("untrusted-model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unavailable");
}
