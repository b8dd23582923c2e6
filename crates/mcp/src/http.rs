//! Streamable HTTP: building the SDK transport over our reqwest client, and keeping header
//! values (credentials) out of everything we print.
//!
//! The SDK does the protocol work: JSON or SSE answers, session ids for servers that keep
//! sessions, none for stateless ones, and the 2026-07-28 sessionless revision (the client
//! probes with `server/discover` and falls back to `initialize` for older servers).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Once};
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::common::client_side_sse::ExponentialBackoff;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

use crate::Error;

/// Headers the transport sets itself; a configured value would break the protocol.
/// Attempts to resume an interrupted SSE answer before the request fails.
const SSE_RESUME_ATTEMPTS: usize = 3;

const RESERVED: &[&str] = &["accept", "content-type", "mcp-session-id", "mcp-protocol-version", "last-event-id"];

pub(crate) fn transport(
    server: &str,
    url: &str,
    headers: &BTreeMap<String, String>,
    connect_timeout: Duration,
) -> Result<StreamableHttpClientTransport<reqwest::Client>, Error> {
    let custom = header_map(headers)?;
    let client = client(connect_timeout)
        .map_err(|e| Error::Connect(format!("MCP server `{server}`: cannot build HTTP client: {e}")))?;
    let mut config = StreamableHttpClientTransportConfig::with_uri(url).custom_headers(custom);
    // A broken SSE answer is resumed (GET with `Last-Event-ID`: the server re-sends its own
    // messages, our request is not re-sent), but only a few times: the SDK's default retries
    // forever, which would turn a dead server into a hang until `call_timeout`.
    let mut resume = ExponentialBackoff::default();
    resume.max_times = Some(SSE_RESUME_ATTEMPTS);
    resume.base_duration = Duration::from_millis(250);
    resume.max_delay = Some(Duration::from_secs(2));
    config.retry_config = Arc::new(resume);
    Ok(StreamableHttpClientTransport::with_client(client, config))
}

fn client(connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    static PROVIDER: Once = Once::new();
    // reqwest is built with `rustls-no-provider`: ring is the process-wide provider (another
    // crate may have installed it first, which is fine).
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    // No overall request timeout: SSE answers stay open as long as a call runs; each call is
    // bounded by `call_timeout` above the transport.
    reqwest::Client::builder().connect_timeout(connect_timeout).build()
}

fn header_map(headers: &BTreeMap<String, String>) -> Result<HashMap<HeaderName, HeaderValue>, Error> {
    let mut map = HashMap::with_capacity(headers.len());
    for (name, value) in headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::Config(format!("invalid HTTP header name `{name}`")))?;
        if RESERVED.contains(&header.as_str()) {
            return Err(Error::Config(format!("HTTP header `{name}` is set by the MCP transport itself")));
        }
        // The value is never echoed: it may be a credential.
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| Error::Config(format!("invalid value for HTTP header `{name}`")))?;
        // Sensitive values print as "Sensitive" in the SDK's and reqwest's Debug output.
        value.set_sensitive(true);
        map.insert(header, value);
    }
    Ok(map)
}

/// `url` without user info, query or fragment: those may hold credentials.
pub(crate) fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.to_string()
        }
        Err(_) => "<invalid url>".to_owned(),
    }
}

/// Removes header values and the full URL from SDK error text, which we do not control.
pub(crate) fn scrub(text: String, url: &str, headers: &BTreeMap<String, String>) -> String {
    let mut text = text;
    if !url.is_empty() && text.contains(url) {
        text = text.replace(url, &redact_url(url));
    }
    for value in headers.values() {
        // Also the token alone, for `Authorization: Bearer <token>`.
        let token = value.rsplit(' ').next().unwrap_or(value);
        for secret in [value.as_str(), token] {
            if secret.len() >= 4 && text.contains(secret) {
                text = text.replace(secret, "[redacted]");
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_and_invalid_headers_are_refused_without_echoing_values() {
        let mut h = BTreeMap::new();
        h.insert("Mcp-Session-Id".to_owned(), "abc".to_owned());
        assert!(matches!(header_map(&h), Err(Error::Config(m)) if m.contains("Mcp-Session-Id")));

        let mut h = BTreeMap::new();
        h.insert("Authorization".to_owned(), "Bearer sec\nret".to_owned());
        let err = header_map(&h).unwrap_err().to_string();
        assert!(err.contains("Authorization") && !err.contains("sec"), "{err}");

        let mut h = BTreeMap::new();
        h.insert("bad name".to_owned(), "v".to_owned());
        assert!(header_map(&h).is_err());
    }

    #[test]
    fn valid_headers_are_marked_sensitive() {
        let mut h = BTreeMap::new();
        h.insert("Authorization".to_owned(), "Bearer s3cr3t-token".to_owned());
        let map = header_map(&h).unwrap();
        let (name, value) = map.iter().next().unwrap();
        assert_eq!(name.as_str(), "authorization");
        assert!(value.is_sensitive());
        assert!(!format!("{map:?}").contains("s3cr3t"));
    }

    #[test]
    fn scrub_removes_values_tokens_and_url_secrets() {
        let mut h = BTreeMap::new();
        h.insert("Authorization".to_owned(), "Bearer s3cr3t-token".to_owned());
        let url = "http://user:pw@127.0.0.1:9/mcp?key=abcd";
        let text = format!("error sending request for url ({url}): token s3cr3t-token rejected");
        let clean = scrub(text, url, &h);
        assert!(!clean.contains("s3cr3t") && !clean.contains("pw@") && !clean.contains("abcd"), "{clean}");
        assert!(clean.contains("http://127.0.0.1:9/mcp"), "{clean}");
    }
}
