//! Wall-clock timestamps: milliseconds since the Unix epoch, shown as RFC 3339.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds since the Unix epoch (UTC). Serialized as an RFC 3339 string.
///
/// Stored values come from the database file and arithmetic on durations a spec chose, so
/// nothing here may panic: [`Timestamp::plus`] saturates at [`Timestamp::MAX`], and a value
/// outside `EPOCH..=MAX` (only possible in a corrupted store) is rendered clamped.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// 1970-01-01T00:00:00.000Z, the earliest time RFC 3339 rendering shows.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// 9999-12-31T23:59:59.999Z, the latest time RFC 3339 can write.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

    /// Whether this time can be rendered as it is (`EPOCH..=MAX`).
    pub fn in_range(self) -> bool {
        (Self::EPOCH..=Self::MAX).contains(&self)
    }

    pub fn now() -> Self {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// `self + d`, saturating at [`Timestamp::MAX`] (a time already beyond it stays as it is).
    pub fn plus(self, d: Duration) -> Self {
        let d = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(d).min(self.0.max(Self::MAX.0)))
    }

    /// RFC 3339 with milliseconds. Times outside `EPOCH..=MAX` are shown clamped to that range.
    pub fn to_rfc3339(self) -> String {
        let ms = self.0.clamp(Self::EPOCH.0, Self::MAX.0).unsigned_abs();
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)?;
        let d = t.duration_since(UNIX_EPOCH).map_err(serde::de::Error::custom)?;
        i64::try_from(d.as_millis()).map(Self).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_keeps_millis() {
        let t = Timestamp(1_764_000_000_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2025-11-24T16:00:00.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn range_ends_render() {
        assert_eq!(Timestamp::MAX.to_rfc3339(), "9999-12-31T23:59:59.999Z");
        assert_eq!(Timestamp::EPOCH.to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp(i64::MAX).to_rfc3339(), "9999-12-31T23:59:59.999Z");
        assert_eq!(Timestamp(i64::MIN).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert!(!Timestamp(Timestamp::MAX.0 + 1).in_range() && !Timestamp(-1).in_range());
    }

    #[test]
    fn huge_durations_saturate_instead_of_wrapping() {
        // `u64::MAX` seconds is 2^64 * 1000 ms: cast to i64 it used to wrap to a time in the past.
        let t = Timestamp(1_764_000_000_000);
        assert_eq!(t.plus(Duration::from_secs(u64::MAX)), Timestamp::MAX);
        assert_eq!(t.plus(Duration::MAX), Timestamp::MAX);
        assert_eq!(Timestamp(i64::MAX).plus(Duration::from_secs(1)), Timestamp(i64::MAX));
    }

    proptest::proptest! {
        #[test]
        fn plus_never_goes_back_and_never_panics(t in proptest::num::i64::ANY, secs in proptest::num::u64::ANY, nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            let later = Timestamp(t).plus(d);
            proptest::prop_assert!(later >= Timestamp(t));
            proptest::prop_assert!(later <= Timestamp(t).max(Timestamp::MAX));
            // Exact where the sum fits.
            if let Some(sum) = i64::try_from(d.as_millis()).ok().and_then(|ms| t.checked_add(ms)).filter(|s| *s <= Timestamp::MAX.0) {
                proptest::prop_assert_eq!(later, Timestamp(sum));
            }
            let _ = later.to_rfc3339();
        }

        #[test]
        fn every_value_renders_and_in_range_values_round_trip(t in proptest::num::i64::ANY) {
            let text = Timestamp(t).to_rfc3339();
            let back: Timestamp = serde_json::from_value(serde_json::Value::String(text)).unwrap();
            proptest::prop_assert_eq!(back, Timestamp(t.clamp(0, Timestamp::MAX.0)));
        }
    }
}
