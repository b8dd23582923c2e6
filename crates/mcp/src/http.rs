//! Streamable HTTP: building the SDK transport over our own reqwest client, behind the SSRF
//! guard when the URL was chosen by a tenant, and wording transport failures without header
//! values (credentials) or more than an excerpt of what a server answered.
//!
//! The SDK does the protocol work: JSON or SSE answers, session ids for servers that keep
//! sessions, none for stateless ones, and the 2026-07-28 sessionless revision (the client
//! probes with `server/discover` and falls back to `initialize` for older servers).
//!
//! Where requests go: rmcp 3.11 sends every POST, GET and DELETE of a session to the
//! configured URL (a redirect never changes it). So the URL's host, checked here before the
//! transport exists, is the only destination: an IP literal is checked once by
//! [`Guard::check_url`] (it cannot change), and a host name is resolved by the guard's
//! resolver on every new connection, so a DNS answer that changes (rebinding) is checked
//! again. Redirects are never followed: the first 3xx ends the request with our error, before
//! anything is read from it or sent to the place it points to.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Once};
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use rmcp::service::ClientInitializeError;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::common::client_side_sse::ExponentialBackoff;
use rmcp::transport::streamable_http_client::{StreamableHttpClientTransportConfig, StreamableHttpError};
use stead_core::error::error_chain;
use stead_tools_http::Guard;

use crate::Error;
use crate::redact::Secrets;

/// Attempts to resume an interrupted SSE answer before the request fails.
const SSE_RESUME_ATTEMPTS: usize = 3;
/// How much of a server's error body an error message quotes.
pub(crate) const BODY_EXCERPT: usize = 200;
/// How much of any SDK error text (which may quote a whole server message) a message quotes.
pub(crate) const DETAIL_EXCERPT: usize = 600;

/// Headers the transport sets itself; a configured value would break the protocol.
const RESERVED: &[&str] = &["accept", "content-type", "mcp-session-id", "mcp-protocol-version", "last-event-id"];

/// Where an HTTP transport may connect, and how long it may take.
pub(crate) struct Target<'a> {
    pub server: &'a str,
    pub url: &'a str,
    pub headers: &'a BTreeMap<String, String>,
    pub guard: Option<&'a Arc<Guard>>,
    pub connect_timeout: Duration,
}

pub(crate) fn transport(
    target: &Target<'_>,
    secrets: &Secrets,
) -> Result<StreamableHttpClientTransport<reqwest::Client>, Error> {
    let server = target.server;
    if let Some(guard) = target.guard {
        let url = reqwest::Url::parse(target.url)
            .map_err(|_| Error::Config(format!("MCP server `{server}`: the URL is not valid")))?;
        guard.check_url(&url).map_err(|refused| Error::Connect(format!("MCP server `{server}`: {refused}")))?;
    }
    let custom = header_map(target.headers)?;
    let client = client(target.connect_timeout, target.guard)
        .map_err(|e| Error::Connect(format!("MCP server `{server}`: cannot build HTTP client: {e}")))?;
    let mut config = StreamableHttpClientTransportConfig::with_uri(target.url)
        .custom_headers(custom)
        // Read a little more than we quote, so a secret cut by the limit is still redacted.
        .max_error_response_size(BODY_EXCERPT + secrets.longest());
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

fn client(connect_timeout: Duration, guard: Option<&Arc<Guard>>) -> reqwest::Result<reqwest::Client> {
    static PROVIDER: Once = Once::new();
    // reqwest is built with `rustls-no-provider`: ring is the process-wide provider (another
    // crate may have installed it first, which is fine).
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    // No overall request timeout: SSE answers stay open as long as a call runs; each call is
    // bounded by `call_timeout` above the transport. No proxy from the environment: a proxy
    // would connect for us, to anywhere, past the guard.
    let builder = reqwest::Client::builder().connect_timeout(connect_timeout).no_proxy().referer(false).redirect(
        reqwest::redirect::Policy::custom(|attempt| {
            let refused = RedirectRefused { status: attempt.status().as_u16(), to: origin(attempt.url()) };
            attempt.error(refused)
        }),
    );
    match guard {
        Some(guard) => builder.dns_resolver(guard.resolver()),
        None => builder,
    }
    .build()
}

/// A 3xx answer: MCP servers are reached at the URL configured, never where they point.
#[derive(Debug, thiserror::Error)]
#[error("redirects are not followed for MCP servers (got {status} to {to})")]
pub(crate) struct RedirectRefused {
    status: u16,
    to: String,
}

/// Scheme, host and port only: a path or query may hold credentials.
fn origin(url: &reqwest::Url) -> String {
    url.origin().ascii_serialization()
}

/// The useful words of an SDK or transport error: our own refusals as they are, a server's
/// answer cut to an excerpt, everything redacted.
pub(crate) fn detail(error: &(dyn std::error::Error + 'static), secrets: &Secrets) -> String {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(http) = e.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
            return match http {
                StreamableHttpError::Client(e) => match find::<RedirectRefused>(e) {
                    Some(refused) => refused.to_string(),
                    None => secrets.excerpt(&error_chain(e), DETAIL_EXCERPT),
                },
                StreamableHttpError::UnexpectedServerResponse(body) => {
                    format!("unexpected server response: {}", secrets.excerpt(body, BODY_EXCERPT))
                }
                other => secrets.excerpt(&error_chain(other), DETAIL_EXCERPT),
            };
        }
        // The SDK wraps errors in types that do not name them as a source.
        source = match e.downcast_ref::<ClientInitializeError>() {
            Some(ClientInitializeError::TransportError { error, .. }) => Some(&*error.error),
            Some(ClientInitializeError::LegacyFallbackFailed { discover, fallback }) => {
                // The SDK quotes the server's answer to `server/discover` as the SDK cut it
                // (possibly through a secret, further on): only its start is shown.
                return format!(
                    "initialize failed: {} (server/discover failed too: {})",
                    detail(&**fallback, secrets),
                    secrets.excerpt(&detail(&**discover, secrets), BODY_EXCERPT)
                );
            }
            _ => e.source(),
        };
    }
    secrets.excerpt(&error_chain(error), DETAIL_EXCERPT)
}

/// Whether `error` (or one of its sources) is our redirect refusal.
pub(crate) fn is_redirect(error: &reqwest::Error) -> bool {
    find::<RedirectRefused>(error).is_some()
}

fn find<'a, T: std::error::Error + 'static>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        source = e.source();
    }
    None
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
}
