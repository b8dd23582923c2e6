//! JSON pieces both wire formats share: the response body as JSON, strings and numbers in it,
//! and the server's messages inside error bodies.

use serde_json::{Value, json};

use crate::{Error, ErrorKind};

/// Server messages quoted in our errors are cut to this many characters.
const MAX_QUOTED_CHARS: usize = 500;

/// Highest tool-call (OpenAI) or content-block (Anthropic) index a stream may use. Indices
/// count calls and blocks of one answer, so real ones are small; a huge one is refused rather
/// than trusted as a size or incremented past `u64::MAX`.
pub(crate) const MAX_STREAM_INDEX: u64 = 4096;

/// A stream's `index`, refused when beyond [`MAX_STREAM_INDEX`].
pub(crate) fn bounded_index(index: u64) -> Result<u64, Error> {
    if index > MAX_STREAM_INDEX {
        return Err(Error::new(
            ErrorKind::Malformed,
            format!("model stream used index {index}; at most {MAX_STREAM_INDEX} is accepted"),
        ));
    }
    Ok(index)
}

/// A token count in a `usage` object (absent or not a non-negative integer: 0).
pub(crate) fn count(usage: &Value, key: &str) -> u64 {
    usage.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// A complete response body as JSON.
pub(crate) fn response_json(body: &[u8]) -> Result<Value, Error> {
    serde_json::from_slice(body)
        .map_err(|e| Error::new(ErrorKind::Malformed, format!("model response is not valid JSON: {e}")))
}

/// A temperature as JSON, through f64 via the decimal text, so 0.2f32 goes out as 0.2 and not
/// 0.20000000298.
pub(crate) fn temperature(t: f32) -> Value {
    json!(t.to_string().parse::<f64>().unwrap_or(f64::from(t)))
}

pub(crate) fn str_of(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

/// The human-readable part of an error body, in the shapes OpenAI, Ollama and vLLM use (and
/// Anthropic's `error` object).
pub(crate) fn error_message(e: &Value) -> String {
    match e {
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.get("message") {
            Some(Value::String(m)) => m.clone(),
            _ => match o.get("error") {
                Some(inner) if !inner.is_null() => error_message(inner),
                _ => e.to_string(),
            },
        },
        other => other.to_string(),
    }
}

/// A server's message as our errors quote it: trimmed, and cut if long.
pub(crate) fn quoted(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shapes() {
        assert_eq!(error_message(&json!({"error": {"message": "x"}})), "x");
        assert_eq!(error_message(&json!({"message": "y"})), "y");
        assert_eq!(error_message(&json!("z")), "z");
    }
}
