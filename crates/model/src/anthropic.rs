//! The Anthropic Messages API provider: its URL and `x-api-key` and `anthropic-version`
//! headers. HTTP, errors, timeouts and streaming are shared with the other providers (`http`);
//! the wire format lives in `anthropic_wire`. The API key never reaches a log or an error.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};

use crate::Error;
use crate::anthropic_wire::{ANTHROPIC_VERSION, MESSAGES};
use crate::http::{Client, api_url, http_provider, key_header};

/// A client of the Anthropic Messages API (or a server speaking it). Cloning is cheap and
/// shares the connection pool.
#[derive(Clone)]
pub struct AnthropicProvider {
    client: Client,
}

impl AnthropicProvider {
    /// `base_url` is the API root (e.g. `https://api.anthropic.com`); requests go to
    /// `{base_url}/v1/messages`, or to `{base_url}/messages` when the root already ends in `/v1`.
    /// `http` is normally [`crate::http_client`]. `timeout` bounds each request (see `complete`).
    pub fn new(http: reqwest::Client, base_url: &str, api_key: Option<&str>, timeout: Duration) -> Result<Self, Error> {
        let url = api_url(base_url, |base| {
            if base.ends_with("/v1") { format!("{base}/messages") } else { format!("{base}/v1/messages") }
        })?;
        let key = api_key.map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned);
        let mut headers = HeaderMap::new();
        headers.insert("anthropic-version", HeaderValue::from_static(ANTHROPIC_VERSION));
        if let Some(k) = &key {
            headers.insert("x-api-key", key_header(k)?);
        }
        Ok(Self { client: Client::new(http, url, headers, key, timeout) })
    }
}

http_provider!(AnthropicProvider, MESSAGES, "The full messages URL.");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn provider(base: &str) -> Result<AnthropicProvider, Error> {
        AnthropicProvider::new(crate::http_client().unwrap(), base, Some(" sk-ant-1 "), Duration::from_secs(1))
    }

    #[test]
    fn urls() {
        assert_eq!(provider("https://api.anthropic.com").unwrap().url(), "https://api.anthropic.com/v1/messages");
        assert_eq!(provider("https://api.anthropic.com/").unwrap().url(), "https://api.anthropic.com/v1/messages");
        assert_eq!(
            provider("http://proxy:8080/anthropic/v1/").unwrap().url(),
            "http://proxy:8080/anthropic/v1/messages"
        );
        assert_eq!(provider("ftp://x").unwrap_err().kind, ErrorKind::Config);
        assert_eq!(provider("http://").unwrap_err().kind, ErrorKind::Config);
    }

    #[test]
    fn debug_and_errors_hide_the_key() {
        let p = provider("https://api.anthropic.com").unwrap();
        assert!(!format!("{p:?}").contains("sk-ant-1"));
        let e = p.client.scrubbed(Error::new(ErrorKind::Auth, "bad key sk-ant-1!"));
        assert_eq!(e.message, "bad key [redacted]!");
    }
}
