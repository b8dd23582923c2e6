//! For backends: decoding values read back from storage. Anything that does not decode (a bad
//! id, invalid JSON, a negative sequence, a time no RFC 3339 date can show) was written
//! outside Stead and is reported as [`Error::Corrupt`], never a panic.

use serde::de::DeserializeOwned;
use stead_core::event::EventBody;
use stead_core::ids::TenantId;
use stead_core::time::Timestamp;

use crate::{Error, Result};

pub fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Corrupt(what.to_string())
}

/// Database integers are signed; counters beyond `i64::MAX` cannot occur, so saturate.
pub fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub fn to_u64(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| corrupt(format!("{what} is negative ({v})")))
}

/// A stored time, refused when outside what Stead writes (1970 to 9999).
pub fn time(ms: i64, what: &str) -> Result<Timestamp> {
    let t = Timestamp(ms);
    if !t.in_range() {
        return Err(corrupt(format!("{what} {ms} ms is not a time Stead writes (1970 to 9999)")));
    }
    Ok(t)
}

pub fn id_bytes(blob: &[u8], what: &str) -> Result<[u8; 16]> {
    blob.try_into().map_err(|_| corrupt(format!("{what} id is {} bytes, expected 16", blob.len())))
}

pub fn hash_bytes(blob: &[u8]) -> Result<[u8; 32]> {
    blob.try_into().map_err(|_| corrupt(format!("event hash is {} bytes, expected 32", blob.len())))
}

pub fn tenant(s: &str) -> Result<TenantId> {
    TenantId::new(s).map_err(|e| corrupt(format!("stored tenant: {e}")))
}

pub fn json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| corrupt(format!("stored {what} is not valid: {e}")))
}

pub fn to_json<T: serde::Serialize>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Backend(format!("cannot serialize {what}: {e}")))
}

/// An enum stored as its snake_case name, decoded through its serde form so the two never
/// disagree.
pub fn word<T: DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| corrupt(format!("stored {what} {text:?} is not valid")))
}

/// An event body from its stored kind and `data` JSON.
pub fn body_from(kind: &str, data: &str) -> Result<EventBody> {
    let kind_json = to_json(&kind, "event kind")?;
    let text = format!("{{\"type\":{kind_json},\"data\":{data}}}");
    serde_json::from_str(&text).map_err(|e| corrupt(format!("stored `{kind}` event is not valid: {e}")))
}
