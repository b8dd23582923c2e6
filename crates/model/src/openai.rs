//! The OpenAI-compatible provider: its URL and `Authorization` header. HTTP, errors, timeouts
//! and streaming are shared with the other providers (`http`); the wire format lives in
//! `openai_wire`. The API key never reaches a log or an error.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap};

use crate::Error;
pub use crate::http::http_client;
use crate::http::{Client, api_url, http_provider, key_header};
use crate::openai_wire::CHAT_COMPLETIONS;

/// A client of one OpenAI-compatible server. Cloning is cheap and shares the connection pool.
#[derive(Clone)]
pub struct OpenAiProvider {
    client: Client,
}

impl OpenAiProvider {
    /// `base_url` is the API root (e.g. `https://api.openai.com/v1`); requests go to
    /// `{base_url}/chat/completions`. `timeout` bounds each request (see `complete`).
    pub fn new(http: reqwest::Client, base_url: &str, api_key: Option<&str>, timeout: Duration) -> Result<Self, Error> {
        let url = api_url(base_url, |base| format!("{base}/chat/completions"))?;
        let key = api_key.filter(|k| !k.is_empty()).map(str::to_owned);
        let mut headers = HeaderMap::new();
        if let Some(k) = &key {
            headers.insert(AUTHORIZATION, key_header(&format!("Bearer {k}"))?);
        }
        Ok(Self { client: Client::new(http, url, headers, key, timeout) })
    }
}

http_provider!(OpenAiProvider, CHAT_COMPLETIONS, "The full chat-completions URL.");
