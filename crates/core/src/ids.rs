//! Typed, prefixed identifiers. Each id is a UUIDv7 (time-ordered) rendered as
//! `prefix_` + 32 lowercase hex digits, so ids sort by creation time and say what they name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(uuid::Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh, time-ordered id.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }

            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(uuid::Uuid::from_bytes(bytes))
            }

            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                let bad = || Error::InvalidId { prefix: $prefix, value: s.chars().take(80).collect() };
                let hex = s
                    .strip_prefix($prefix)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .ok_or_else(bad)?;
                if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad());
                }
                uuid::Uuid::try_parse(hex).map(Self).map_err(|_| bad())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

prefixed_id!(
    /// A session: one durable conversation/workflow and its event log.
    SessionId,
    "sess"
);
prefixed_id!(
    /// One execution of the agent loop on a session.
    RunId,
    "run"
);
prefixed_id!(
    /// A request for a person's decision on a tool call.
    ApprovalId,
    "apr"
);
prefixed_id!(
    /// One immutable version of an agent definition.
    AgentVersionId,
    "agv"
);

/// The isolation unit. Every record and every query carries one; nothing crosses tenants.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub const DEFAULT: &'static str = "default";

    pub fn default_tenant() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    pub fn new(value: &str) -> Result<Self, Error> {
        let ok = !value.is_empty()
            && value.len() <= 63
            && value.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok { Ok(Self(value.to_owned())) } else { Err(Error::InvalidTenant(value.chars().take(80).collect())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TenantId::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_creation() {
        let a = SessionId::new();
        let b = SessionId::new();
        assert!(a < b, "UUIDv7 ids must be time ordered");
        let text = a.to_string();
        assert!(text.starts_with("sess_") && text.len() == 5 + 32);
        assert_eq!(text.parse::<SessionId>().unwrap(), a);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<SessionId>(&json).unwrap(), a);
    }

    #[test]
    fn ids_reject_wrong_prefix_and_garbage() {
        let run = RunId::new().to_string();
        assert!(run.parse::<SessionId>().is_err(), "a run id is not a session id");
        for bad in ["", "sess_", "sess_xyz", "sess-0123", "sess_0123456789abcdef0123456789abcdeg"] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn tenant_ids_are_slugs() {
        assert!(TenantId::new("acme-prod_1").is_ok());
        for bad in ["", "-x", "Acme", "a b", &"x".repeat(64)] {
            assert!(TenantId::new(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
