//! Azure OpenAI: OpenAI's wire format, with the model as a deployment in the path, an
//! `api-version` query parameter and an `api-key` header.

use crate::policy::Provider;

/// `/v1/chat/completions?x` → `{base}/openai/deployments/{deployment}/chat/completions?x&api-version=V`.
pub fn path(provider: &Provider, path_and_query: &str, deployment: &str) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let rest = path
        .strip_prefix("/v1")
        .unwrap_or(path)
        .trim_start_matches('/');
    let dep = super::path_segment(deployment);
    let version = provider.api_version.as_deref().unwrap_or(API_VERSION);
    let mut out = format!("{}/openai/deployments/{dep}/{rest}?", provider.base_path);
    if !query.is_empty() {
        out.push_str(query);
        out.push('&');
    }
    out.push_str("api-version=");
    out.push_str(version);
    out
}

/// Azure OpenAI's current GA data-plane version, used when the provider sets none.
pub const API_VERSION: &str = "2024-10-21";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::expand::ProcessEnv;

    #[test]
    fn azure_paths() {
        let p = crate::config::from_str(
            "providers:\n  az: { format: azure-openai, base_url: \"https://acme.openai.azure.com\", api_key: k, api_version: 2024-06-01 }\n",
            &ProcessEnv,
            1,
        )
        .unwrap();
        let az = &p.providers[0];
        assert_eq!(
            path(az, "/v1/chat/completions", "gpt-4o prod"),
            "/openai/deployments/gpt-4o%20prod/chat/completions?api-version=2024-06-01"
        );
        assert_eq!(
            path(az, "/v1/embeddings?x=1", "emb"),
            "/openai/deployments/emb/embeddings?x=1&api-version=2024-06-01"
        );
        assert_eq!(az.auth.as_ref().unwrap().0.as_str(), "api-key");
        assert_eq!(az.auth.as_ref().unwrap().1, "k");
    }
}
