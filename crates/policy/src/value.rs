//! JSON values turned into Cedar values, built directly (never through Cedar's JSON entity
//! format, whose `__entity`/`__extn` escapes would let a tool argument forge an entity
//! reference or call an extension function).
//!
//! What Cedar can hold is converted; what it cannot is refused, and the caller denies the call:
//! - integers: `Long` (i64); beyond it: refused;
//! - other numbers: `decimal` when exact with at most 4 fractional digits and within
//!   ±922337203685477.5807, else refused (a declared `integer` accepts `3.0` as `3`; a declared
//!   `number` takes integers as decimals);
//! - `null`: an attribute whose value is `null` is absent (`has` is false); `null` inside an
//!   array is refused; `null` arguments are an empty record;
//! - arrays: sets (order and duplicates are not kept);
//! - nesting deeper than [`MAX_ARGUMENT_DEPTH`] or more than [`MAX_ARGUMENT_VALUES`] values:
//!   refused.

use std::collections::BTreeMap;
use std::fmt::Write;

use cedar_policy::RestrictedExpression;
use serde_json::Value;

use crate::limits::{MAX_ARGUMENT_DEPTH, MAX_ARGUMENT_VALUES};
use crate::schema::{ArgType, CLAIMS, ClaimType};

/// Why a value cannot be given to the policies; `path` is where (`arguments.a.b`).
#[derive(Debug)]
pub(crate) struct Unrepresentable {
    pub path: String,
    pub why: String,
}

impl std::fmt::Display for Unrepresentable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.path, self.why)
    }
}

struct Converter {
    path: String,
    values: usize,
}

/// `context.arguments`: a JSON object (or `null`) as a Cedar record.
pub(crate) fn arguments(
    value: &Value,
    declared: &BTreeMap<String, ArgType>,
) -> Result<RestrictedExpression, Unrepresentable> {
    let mut c = Converter { path: "arguments".into(), values: 0 };
    match value {
        Value::Null => Ok(RestrictedExpression::new_record([]).expect("an empty record")),
        Value::Object(map) => c.record(map, Some(declared), 1),
        other => Err(c.refuse(format!("is {}, not an object: tool arguments must be a JSON object", kind(other)))),
    }
}

/// `principal.claims`: only the declared [`CLAIMS`], each of its declared type.
pub(crate) fn claims(claims: &serde_json::Map<String, Value>) -> Result<RestrictedExpression, Unrepresentable> {
    let mut attrs = Vec::new();
    for (name, ty) in CLAIMS {
        let Some(value) = claims.get(*name) else {
            continue;
        };
        let refuse = |expected: &str| Unrepresentable {
            path: format!("claims.{name}"),
            why: format!("is {}, the boundary declares {expected}", kind(value)),
        };
        let expr = match (ty, value) {
            (_, Value::Null) => continue,
            (ClaimType::String, Value::String(s)) => RestrictedExpression::new_string(s.clone()),
            (ClaimType::String, _) => return Err(refuse("a string")),
            (ClaimType::Bool, Value::Bool(b)) => RestrictedExpression::new_bool(*b),
            (ClaimType::Bool, _) => return Err(refuse("a boolean")),
            (ClaimType::StringSet, Value::String(s)) => {
                RestrictedExpression::new_set([RestrictedExpression::new_string(s.clone())])
            }
            (ClaimType::StringSet, Value::Array(items)) if items.iter().all(Value::is_string) => {
                RestrictedExpression::new_set(
                    items.iter().map(|s| RestrictedExpression::new_string(s.as_str().unwrap_or_default().to_owned())),
                )
            }
            (ClaimType::StringSet, _) => return Err(refuse("a set of strings")),
        };
        attrs.push((name.to_string(), expr));
    }
    RestrictedExpression::new_record(attrs).map_err(|e| Unrepresentable { path: "claims".into(), why: e.to_string() })
}

impl Converter {
    fn refuse(&self, why: String) -> Unrepresentable {
        Unrepresentable { path: self.path.clone(), why }
    }

    fn value(
        &mut self,
        value: &Value,
        declared: Option<&ArgType>,
        depth: usize,
    ) -> Result<RestrictedExpression, Unrepresentable> {
        self.values += 1;
        if self.values > MAX_ARGUMENT_VALUES {
            return Err(Unrepresentable {
                path: "arguments".into(),
                why: format!("hold more than {MAX_ARGUMENT_VALUES} values"),
            });
        }
        if depth > MAX_ARGUMENT_DEPTH {
            return Err(self.refuse(format!("is nested deeper than {MAX_ARGUMENT_DEPTH} levels")));
        }
        Ok(match value {
            Value::Null => return Err(self.refuse("is null inside an array".into())),
            Value::Bool(b) => RestrictedExpression::new_bool(*b),
            Value::String(s) => RestrictedExpression::new_string(s.clone()),
            Value::Number(n) => self.number(n, declared)?,
            Value::Array(items) => {
                let element = match declared {
                    Some(ArgType::Set(e)) => Some(&**e),
                    _ => None,
                };
                let mut set = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let len = self.path.len();
                    let _ = write!(self.path, "[{i}]");
                    set.push(self.value(item, element, depth + 1)?);
                    self.path.truncate(len);
                }
                RestrictedExpression::new_set(set)
            }
            Value::Object(map) => {
                let attrs = match declared {
                    Some(ArgType::Record(attrs)) => Some(attrs),
                    _ => None,
                };
                self.record(map, attrs, depth)?
            }
        })
    }

    fn record(
        &mut self,
        map: &serde_json::Map<String, Value>,
        declared: Option<&BTreeMap<String, ArgType>>,
        depth: usize,
    ) -> Result<RestrictedExpression, Unrepresentable> {
        let mut attrs = Vec::with_capacity(map.len());
        for (name, value) in map {
            if value.is_null() {
                continue;
            }
            let len = self.path.len();
            self.path.push('.');
            self.path.push_str(name);
            let ty = declared.and_then(|d| d.get(name));
            attrs.push((name.clone(), self.value(value, ty, depth + 1)?));
            self.path.truncate(len);
        }
        RestrictedExpression::new_record(attrs).map_err(|e| self.refuse(e.to_string()))
    }

    fn number(
        &self,
        n: &serde_json::Number,
        declared: Option<&ArgType>,
    ) -> Result<RestrictedExpression, Unrepresentable> {
        let wants_decimal = matches!(declared, Some(ArgType::Decimal));
        if let Some(i) = n.as_i64() {
            if wants_decimal {
                return self.decimal(&i.to_string());
            }
            return Ok(RestrictedExpression::new_long(i));
        }
        if n.is_u64() {
            return Err(self.refuse(format!("is {n}, larger than Cedar's integers (at most {})", i64::MAX)));
        }
        let f = n.as_f64().unwrap_or(f64::NAN);
        if matches!(declared, Some(ArgType::Long)) && f.fract() == 0.0 && f.abs() < 9.0e15 {
            return Ok(RestrictedExpression::new_long(f as i64));
        }
        // `{}` prints the shortest text that reads back as the same f64, never in exponent
        // form: exactly the decimal the caller sent, when it is short.
        self.decimal(&format!("{f}"))
    }

    /// A Cedar `decimal` from a plain decimal text, if it fits exactly.
    fn decimal(&self, text: &str) -> Result<RestrictedExpression, Unrepresentable> {
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        if frac.len() > 4 {
            return Err(self.refuse(format!(
                "is {text}: Cedar holds numbers that are not integers as decimals with at most \
                 4 fractional digits"
            )));
        }
        let digits = int.trim_start_matches('-');
        // i64 holds the value times 10^4: the integer part may be at most 922337203685477.
        let fits = digits.len() < 15
            || (digits.len() == 15 && digits <= "922337203685477" && {
                let scaled: i128 = format!("{digits}{frac:0<4}").parse().unwrap_or(i128::MAX);
                scaled <= i128::from(i64::MAX)
            });
        if !fits {
            return Err(self.refuse(format!("is {text}, beyond Cedar's decimals (±922337203685477.5807)")));
        }
        let frac = if frac.is_empty() { "0" } else { frac };
        Ok(RestrictedExpression::new_decimal(format!("{int}.{frac}")))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decimal(text: &str) -> Result<(), String> {
        let c = Converter { path: "arguments.x".into(), values: 0 };
        c.decimal(text).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn decimals_fit_exactly_or_are_refused() {
        for ok in ["0", "-5", "0.0001", "-0.0001", "922337203685477.5807", "922337203685477", "99999999999999.9999"] {
            assert_eq!(decimal(ok), Ok(()), "{ok}");
        }
        for refused in ["0.00001", "922337203685477.5808", "922337203685478", "1000000000000000"] {
            assert!(decimal(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn numbers_follow_the_declared_type() {
        let declared = BTreeMap::from([("n".to_owned(), ArgType::Long), ("d".to_owned(), ArgType::Decimal)]);
        let ok = |v: Value| arguments(&v, &declared).is_ok();
        assert!(ok(serde_json::json!({"n": 3.0, "d": 3})));
        assert!(ok(serde_json::json!({"n": 3, "d": 2.5})));
        assert!(!ok(serde_json::json!({"d": 1_000_000_000_000_000_i64})));
        assert!(!ok(serde_json::json!({"n": 2.00001})));
    }
}
