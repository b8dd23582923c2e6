//! How a SQLite store is opened: data directory, durability and limits.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// When a commit reaches the disk (`PRAGMA synchronous`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// fsync on every commit group: a commit that returned survives power loss.
    #[default]
    Full,
    /// fsync at WAL checkpoints only: survives a crash of Stead, may lose the last commits
    /// on power loss.
    Normal,
    /// Never fsync: for tests and benchmarks.
    Off,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Full => "full",
            Durability::Normal => "normal",
            Durability::Off => "off",
        }
    }

    /// The value of `PRAGMA synchronous` in WAL mode.
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
            Durability::Off => "OFF",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A durability name that is not `full`, `normal` or `off`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid durability {0:?}: expected one of full, normal, off")]
pub struct ParseDurabilityError(pub String);

impl FromStr for Durability {
    type Err = ParseDurabilityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            "off" => Ok(Durability::Off),
            _ => Err(ParseDurabilityError(s.chars().take(40).collect())),
        }
    }
}

/// Options of [`crate::SqliteStore::open`].
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// The data directory; the database is `stead.db` inside it, guarded by `LOCK`.
    pub path: PathBuf,
    pub durability: Durability,
    /// A session's log may hold at most this many events.
    pub max_events_per_session: u64,
    /// An event's JSON payload (its `data`) may be at most this many bytes.
    pub max_event_bytes: usize,
    /// Read-only connections serving reads in parallel with the writer.
    pub read_connections: usize,
}

impl SqliteOptions {
    pub const DEFAULT_MAX_EVENTS_PER_SESSION: u64 = 1_000_000;
    pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;
    pub const DEFAULT_READ_CONNECTIONS: usize = 4;

    /// Defaults for everything but the data directory.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::default(),
            max_events_per_session: Self::DEFAULT_MAX_EVENTS_PER_SESSION,
            max_event_bytes: Self::DEFAULT_MAX_EVENT_BYTES,
            read_connections: Self::DEFAULT_READ_CONNECTIONS,
        }
    }

    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    pub fn max_events_per_session(mut self, max: u64) -> Self {
        self.max_events_per_session = max;
        self
    }

    pub fn max_event_bytes(mut self, max: usize) -> Self {
        self.max_event_bytes = max;
        self
    }

    pub fn read_connections(mut self, n: usize) -> Self {
        self.read_connections = n;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_parses_and_displays() {
        for (text, d) in [("full", Durability::Full), ("Normal", Durability::Normal), (" off ", Durability::Off)] {
            assert_eq!(text.parse::<Durability>(), Ok(d));
            assert_eq!(d.to_string().parse::<Durability>(), Ok(d));
        }
        let err = "fast".parse::<Durability>().unwrap_err().to_string();
        assert!(err.contains("fast") && err.contains("full, normal, off"), "{err}");
        assert_eq!(Durability::default(), Durability::Full);
    }
}
