//! The values of a [`ServerConfig`] that may be credentials, and the one place that removes
//! them from anything the server (or the SDK) hands back: error text, JSON-RPC error messages,
//! stderr, tool listings and call results.
//!
//! A server may echo what it was given (a header in a tool description, an environment value
//! on stderr), and the SDK quotes URLs and bodies in its errors. Everything leaving this crate
//! goes through [`Secrets`]. `stead-tools-http` redacts HTTP tool echoes the same way (its
//! `render_text`); the few lines are repeated here rather than shared, to keep the crates
//! independent (a shared helper would belong in `stead-core`).

use serde_json::Value;

use crate::{Error, McpTool, ServerConfig, Transport, http};

/// Shorter values are not treated as secrets: redacting `1` or `true` everywhere would make
/// every answer unreadable.
pub(crate) const MIN_SECRET_LEN: usize = 8;
pub(crate) const REDACTED: &str = "[redacted]";

/// What to replace, longest first (so a secret that contains another is redacted whole).
#[derive(Default)]
pub(crate) struct Secrets {
    /// Full URL forms (which may hold user info and a query) → the URL without them.
    urls: Vec<(String, String)>,
    values: Vec<String>,
}

impl Secrets {
    /// Header values (and the token of `Bearer <token>`), environment values, and the URL's
    /// password and query values, of at least [`MIN_SECRET_LEN`] bytes.
    pub(crate) fn of(config: &ServerConfig) -> Self {
        let mut values = Vec::new();
        let mut urls = Vec::new();
        match &config.transport {
            Transport::Stdio { env, .. } => values.extend(env.values().cloned()),
            Transport::Http { url, headers } => {
                for value in headers.values() {
                    values.push(value.clone());
                    values.extend(value.rsplit(' ').next().map(str::to_owned));
                }
                if let Ok(parsed) = reqwest::Url::parse(url) {
                    values.extend(parsed.password().map(str::to_owned));
                    values.extend(parsed.query_pairs().map(|(_, v)| v.into_owned()));
                    urls.push((parsed.to_string(), http::redact_url(url)));
                }
                urls.push((url.clone(), http::redact_url(url)));
            }
        }
        values.retain(|v| v.len() >= MIN_SECRET_LEN);
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        urls.retain(|(full, bare)| !full.is_empty() && full != bare);
        urls.sort_by_key(|(full, _)| std::cmp::Reverse(full.len()));
        urls.dedup();
        Self { urls, values }
    }

    /// The longest secret, in bytes: how much more than a limit must be read so that a secret
    /// cut by the limit is still seen whole.
    pub(crate) fn longest(&self) -> usize {
        self.values.first().map_or(0, String::len)
    }

    /// `text` with every secret replaced by `[redacted]` and every full URL by its bare form.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (full, bare) in &self.urls {
            if text.contains(full.as_str()) {
                text = text.replace(full.as_str(), bare);
            }
        }
        for secret in &self.values {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        text
    }

    /// At most `max` bytes of `text`, redacted, with a marker when cut. The cut moves before any
    /// secret it would split, so no prefix of one is shown.
    pub(crate) fn excerpt(&self, text: &str, max: usize) -> String {
        if text.len() <= max {
            return self.redact(text);
        }
        let bytes = text.as_bytes();
        let mut cut = max;
        loop {
            let before = cut;
            for secret in self.values.iter().map(String::as_bytes) {
                let lowest = cut.saturating_sub(secret.len().saturating_sub(1));
                if let Some(start) = (lowest..cut).find(|&i| bytes[i..].starts_with(secret)) {
                    cut = start;
                }
            }
            if cut == before {
                break;
            }
        }
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{} [cut: {} of {} bytes shown]", self.redact(&text[..cut]), cut, text.len())
    }

    /// Redacts every string, object key and number in `value`.
    pub(crate) fn redact_json(&self, value: &mut Value) {
        if self.values.is_empty() && self.urls.is_empty() {
            return;
        }
        match value {
            Value::String(s) => *s = self.redact(s),
            Value::Number(n) => {
                let shown = self.redact(&n.to_string());
                if shown != n.to_string() {
                    *value = Value::String(shown);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            Value::Object(map) => {
                let entries = std::mem::take(map);
                for (key, mut v) in entries {
                    self.redact_json(&mut v);
                    map.insert(self.redact(&key), v);
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }

    /// A listed tool with every field redacted. A server that names a tool after a secret
    /// gets a tool that cannot be called, which is the better failure.
    pub(crate) fn tool(&self, mut tool: McpTool) -> McpTool {
        tool.name = self.redact(&tool.name);
        tool.description = self.redact(&tool.description);
        self.redact_json(&mut tool.input_schema);
        tool
    }

    /// The error with its text redacted.
    pub(crate) fn error(&self, error: Error) -> Error {
        error.map_text(|text| self.redact(&text))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn http_secrets() -> Secrets {
        let mut headers = BTreeMap::new();
        headers.insert("Authorization".to_owned(), "Bearer tok-123456789".to_owned());
        headers.insert("X-Api-Key".to_owned(), "key-abcdefgh".to_owned());
        headers.insert("X-Short".to_owned(), "1".to_owned());
        let url = "http://user:hunter2hunter2@127.0.0.1:9/mcp?token=query-secret-1";
        Secrets::of(&ServerConfig::new("s", Transport::Http { url: url.to_owned(), headers }))
    }

    #[test]
    fn header_values_tokens_url_parts_are_redacted_short_values_kept() {
        let s = http_secrets();
        let text = "Bearer tok-123456789 / tok-123456789 / key-abcdefgh / query-secret-1 / hunter2hunter2 / 1";
        assert_eq!(s.redact(text), "[redacted] / [redacted] / [redacted] / [redacted] / [redacted] / 1");
        let url = "error for url (http://user:hunter2hunter2@127.0.0.1:9/mcp?token=query-secret-1)";
        assert_eq!(s.redact(url), "error for url (http://127.0.0.1:9/mcp)");
    }

    #[test]
    fn env_values_are_redacted() {
        let mut t = Transport::stdio("srv", Vec::<String>::new());
        if let Transport::Stdio { env, .. } = &mut t {
            env.insert("API_KEY".into(), "env-secret-value".into());
        }
        let s = Secrets::of(&ServerConfig::new("s", t));
        assert_eq!(s.redact("key=env-secret-value"), "key=[redacted]");
    }

    #[test]
    fn excerpts_never_show_part_of_a_secret() {
        let s = http_secrets();
        let text = format!("{}key-abcdefgh tail", "x".repeat(10));
        // The limit falls inside the secret: none of it is shown.
        assert_eq!(s.excerpt(&text, 14), format!("{} [cut: 10 of {} bytes shown]", "x".repeat(10), text.len()));
        assert_eq!(s.excerpt("short", 100), "short");
        assert_eq!(s.excerpt("héllo", 2), "h [cut: 1 of 6 bytes shown]");
    }

    #[test]
    fn json_strings_keys_and_numbers_are_redacted() {
        let mut headers = BTreeMap::new();
        headers.insert("X-Pin".to_owned(), "1234567890".to_owned());
        headers.insert("X-Key".to_owned(), "key-abcdefgh".to_owned());
        let s = Secrets::of(&ServerConfig::new("s", Transport::Http { url: "http://h/".into(), headers }));
        let mut v = json!({"a": ["key-abcdefgh!", 1234567890, 7], "key-abcdefgh": {"ok": true}});
        s.redact_json(&mut v);
        assert_eq!(v, json!({"a": ["[redacted]!", "[redacted]", 7], "[redacted]": {"ok": true}}));
    }
}
