//! Approval rules: when a tool call needs a person's yes. A rule is `never`, `always`, or a
//! condition on the call's arguments, evaluated purely so `decide` stays deterministic.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Per tool: `require_approval: never | always | {when: CONDITION}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ApprovalRule {
    #[default]
    Never,
    Always,
    When(Box<Condition>),
}

impl ApprovalRule {
    /// Why this call needs approval, or `None` when it doesn't. Arguments that are not a JSON
    /// object can't be checked against a condition, so they need approval (fail closed).
    pub fn requires(&self, arguments: &str) -> Option<String> {
        match self {
            ApprovalRule::Never => None,
            ApprovalRule::Always => Some("this tool always requires approval".into()),
            ApprovalRule::When(c) => match serde_json::from_str::<Value>(arguments) {
                Ok(args) if args.is_object() => c.matches(&args).then(|| format!("arguments match {}", c.describe())),
                _ => Some("the arguments are not a JSON object, so the approval condition cannot be checked".into()),
            },
        }
    }

    pub fn is_never(&self) -> bool {
        matches!(self, ApprovalRule::Never)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RuleRepr {
    Word(String),
    When { when: Box<Condition> },
}

impl Serialize for ApprovalRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ApprovalRule::Never => RuleRepr::Word("never".into()).serialize(s),
            ApprovalRule::Always => RuleRepr::Word("always".into()).serialize(s),
            ApprovalRule::When(c) => RuleRepr::When { when: c.clone() }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ApprovalRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RuleRepr::deserialize(d).map_err(|_| {
            serde::de::Error::custom("require_approval must be `never`, `always` or `{when: CONDITION}`")
        })? {
            RuleRepr::Word(w) if w == "never" => Ok(ApprovalRule::Never),
            RuleRepr::Word(w) if w == "always" => Ok(ApprovalRule::Always),
            RuleRepr::Word(w) => Err(serde::de::Error::custom(format!(
                "require_approval must be `never`, `always` or `{{when: CONDITION}}`, not {w:?}"
            ))),
            RuleRepr::When { when } => Ok(ApprovalRule::When(when)),
        }
    }
}

/// A condition on a call's arguments. Exactly one shape per node: a combinator (`any`, `all`,
/// `not`) or a `path` (JSON pointer into the arguments) with one comparison.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<Condition>>,
    /// JSON pointer, e.g. `/amount` or `/recipient/country`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<f64>,
    /// The value, as a string, contains this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// The path is present (`true`) or absent (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
}

impl Condition {
    fn comparisons(&self) -> usize {
        [
            self.equals.is_some(),
            self.not_equals.is_some(),
            self.one_of.is_some(),
            self.gt.is_some(),
            self.gte.is_some(),
            self.lt.is_some(),
            self.lte.is_some(),
            self.contains.is_some(),
            self.exists.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }

    /// Checks the shape; `field` names where the condition sits, for the error.
    pub fn validate(&self, field: &str) -> Result<(), String> {
        let shapes = [!self.any.is_empty(), !self.all.is_empty(), self.not.is_some(), self.path.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if shapes != 1 {
            return Err(format!("{field}: use exactly one of `any`, `all`, `not` or `path`"));
        }
        if let Some(path) = &self.path {
            if !(path.is_empty() || path.starts_with('/')) {
                return Err(format!("{field}.path: a JSON pointer starts with `/` (e.g. `/amount`)"));
            }
            if self.comparisons() != 1 {
                return Err(format!(
                    "{field}: a `path` needs exactly one of equals, not_equals, one_of, gt, gte, lt, lte, contains, exists"
                ));
            }
        } else if self.comparisons() != 0 {
            return Err(format!("{field}: comparisons go with a `path`"));
        }
        for (i, c) in self.any.iter().enumerate() {
            c.validate(&format!("{field}.any[{i}]"))?;
        }
        for (i, c) in self.all.iter().enumerate() {
            c.validate(&format!("{field}.all[{i}]"))?;
        }
        if let Some(c) = &self.not {
            c.validate(&format!("{field}.not"))?;
        }
        Ok(())
    }

    /// Evaluates the condition against the arguments. A missing path or a value of the wrong
    /// type makes a comparison false (only `exists: false` and `not_equals` hold for it).
    pub fn matches(&self, args: &Value) -> bool {
        if !self.any.is_empty() {
            return self.any.iter().any(|c| c.matches(args));
        }
        if !self.all.is_empty() {
            return self.all.iter().all(|c| c.matches(args));
        }
        if let Some(c) = &self.not {
            return !c.matches(args);
        }
        let value = self.path.as_deref().and_then(|p| args.pointer(p));
        let num = value.and_then(Value::as_f64);
        if let Some(e) = self.exists {
            return value.is_some() == e;
        }
        if let Some(v) = &self.equals {
            return value == Some(v);
        }
        if let Some(v) = &self.not_equals {
            return value != Some(v);
        }
        if let Some(vs) = &self.one_of {
            return value.is_some_and(|x| vs.contains(x));
        }
        if let Some(t) = &self.contains {
            return value.is_some_and(|x| match x {
                Value::String(s) => s.contains(t.as_str()),
                other => other.to_string().contains(t.as_str()),
            });
        }
        let cmp = |bound: Option<f64>, f: fn(f64, f64) -> bool| bound.map(|b| num.is_some_and(|n| f(n, b)));
        cmp(self.gt, |n, b| n > b)
            .or_else(|| cmp(self.gte, |n, b| n >= b))
            .or_else(|| cmp(self.lt, |n, b| n < b))
            .or_else(|| cmp(self.lte, |n, b| n <= b))
            .unwrap_or(false)
    }

    /// A short human description, for the approval's reason.
    pub fn describe(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> ApprovalRule {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn words_and_conditions_parse() {
        assert_eq!(rule("never"), ApprovalRule::Never);
        assert_eq!(rule("always"), ApprovalRule::Always);
        assert!(matches!(rule("{when: {path: /amount, gt: 100}}"), ApprovalRule::When(_)));
        assert!(serde_yaml_ng::from_str::<ApprovalRule>("sometimes").is_err());
    }

    #[test]
    fn conditions_evaluate_on_arguments() {
        let r = rule("{when: {any: [{path: /amount, gt: 100}, {path: /to/country, one_of: [KP, IR]}]}}");
        assert!(r.requires(r#"{"amount": 101}"#).is_some());
        assert!(r.requires(r#"{"amount": 100}"#).is_none());
        assert!(r.requires(r#"{"amount": 5, "to": {"country": "KP"}}"#).is_some());
        assert!(r.requires(r#"{"amount": "lots"}"#).is_none(), "wrong type: comparison is false");
        assert!(r.requires("not json").is_some(), "unparseable arguments fail closed");
        let r = rule("{when: {not: {path: /dry_run, equals: true}}}");
        assert!(r.requires(r#"{"dry_run": true}"#).is_none());
        assert!(r.requires(r#"{}"#).is_some());
        let r = rule("{when: {all: [{path: /cmd, contains: rm}, {path: /force, exists: true}]}}");
        assert!(r.requires(r#"{"cmd": "rm -rf /", "force": 1}"#).is_some());
        assert!(r.requires(r#"{"cmd": "rm -rf /"}"#).is_none());
        assert!(rule("always").requires("{}").is_some());
        assert!(rule("never").requires("{}").is_none());
    }

    #[test]
    fn malformed_conditions_are_named() {
        let bad = |yaml: &str| match rule(yaml) {
            ApprovalRule::When(c) => c.validate("tools[0].require_approval.when").unwrap_err(),
            _ => panic!(),
        };
        assert!(bad("{when: {path: /a}}").contains("exactly one of equals"));
        assert!(bad("{when: {path: a, gt: 1}}").contains("JSON pointer"));
        assert!(bad("{when: {any: [{path: /a, gt: 1}], path: /b, gt: 2}}").contains("exactly one of `any`"));
        assert!(bad("{when: {all: [{path: /a}]}}").contains("all[0]"));
    }
}
