//! The Cedar schema a boundary's policies are validated against, generated from the agent's
//! tools: the fixed entity model (`Stead::User`, `Stead::Tool`, `Stead::Action::"call_tool"`)
//! and a context type mapped from the tools' JSON Schemas.
//!
//! Cedar gives a context type to an *action*, and every tool shares the one action
//! `call_tool`, so `context.arguments` is ONE record type for all tools: the union of every
//! tool's argument properties. Records cannot be open without Cedar's experimental features,
//! so only what the JSON Schemas declare can be named in a policy. Mapping:
//!
//! | JSON Schema | Cedar |
//! |---|---|
//! | `string` (also a string `enum`/`const`) | `String` |
//! | `integer` | `Long` |
//! | `number` | `decimal` (4 fractional digits) |
//! | `boolean` | `Bool` |
//! | `array` with `items` | `Set<item>` (order and duplicates are not kept) |
//! | `object` with `properties` | record of the mapped properties |
//! | `["T", "null"]` | as `T` (a `null` value is an absent attribute) |
//! | anything else (`anyOf`, `$ref`, no `type`, an array without `items`, …) | left out |
//!
//! A property two tools declare with different Cedar types is left out (a policy naming it
//! is refused, and the refusal says why). Every attribute of `context.arguments`, at any
//! depth, is declared *required*, although a given call may lack it (another tool's argument,
//! an optional one): so a policy may read `context.arguments.city` without a `has` guard, and a
//! call that lacks it makes that policy error — which denies the call (see the crate docs).
//! Other optional attributes (`resource.host`, `principal.claims.*`) need `has`, as Cedar asks.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::limits::MAX_ARGUMENT_DEPTH;
use crate::{Error, Result, ToolInfo};

/// The Cedar type of one argument value, as far as the tools' JSON Schemas tell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ArgType {
    Long,
    Decimal,
    String,
    Bool,
    Set(Box<ArgType>),
    Record(BTreeMap<String, ArgType>),
}

/// Claims a policy can read as `principal.claims.<name>`: the standard OpenID Connect ones.
/// Claims not listed here are not given to the policies; a listed claim whose value has
/// another type makes the call deny (a string where a set of strings is declared is taken as
/// a set of one, as identity providers send `groups` either way).
pub const CLAIMS: &[(&str, ClaimType)] = &[
    ("iss", ClaimType::String),
    ("sub", ClaimType::String),
    ("azp", ClaimType::String),
    ("email", ClaimType::String),
    ("email_verified", ClaimType::Bool),
    ("name", ClaimType::String),
    ("preferred_username", ClaimType::String),
    ("groups", ClaimType::StringSet),
    ("scope", ClaimType::String),
    ("acr", ClaimType::String),
    ("amr", ClaimType::StringSet),
];

/// The Cedar type of a declared claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimType {
    String,
    Bool,
    StringSet,
}

/// The generated schema: the real one, and one where `Stead::Tool` is an enumeration of the
/// tool names (used only to find `Stead::Tool::"x"` literals that name no tool, with their
/// place in the text: Cedar's enumerated types carry no attributes, hence two schemas).
pub(crate) struct Generated {
    pub schema: cedar_policy::Schema,
    pub tool_enum_schema: cedar_policy::Schema,
    pub cedar_text: String,
    pub arguments: BTreeMap<String, ArgType>,
    /// Argument paths left out because two tools type them differently (`a.b`).
    pub conflicts: Vec<String>,
}

pub(crate) fn generate(tools: &[ToolInfo]) -> Result<Generated> {
    let mut arguments = BTreeMap::new();
    let mut conflicts = Vec::new();
    for tool in tools {
        let Some(schema) = &tool.arguments_schema else {
            continue;
        };
        if let Some(ArgType::Record(props)) = from_json_schema(schema, 0) {
            merge_records(&mut arguments, props, "", &mut conflicts);
        }
    }
    conflicts.sort();
    conflicts.dedup();

    let claims: serde_json::Map<String, Value> = CLAIMS
        .iter()
        .map(|(name, ty)| {
            let mut t = match ty {
                ClaimType::String => json!({"type": "String"}),
                ClaimType::Bool => json!({"type": "Boolean"}),
                ClaimType::StringSet => json!({"type": "Set", "element": {"type": "String"}}),
            };
            t["required"] = json!(false);
            (name.to_string(), t)
        })
        .collect();
    let user = json!({"shape": {"type": "Record", "attributes": {
        "tenant": {"type": "String"},
        "roles": {"type": "Set", "element": {"type": "String"}},
        "claims": {"type": "Record", "attributes": claims},
    }}});
    let tool = json!({"shape": {"type": "Record", "attributes": {
        "kind": {"type": "String"},
        "host": {"type": "String", "required": false},
    }}});
    let action = json!({"call_tool": {"appliesTo": {
        "principalTypes": ["User"],
        "resourceTypes": ["Tool"],
        "context": {"type": "Record", "attributes": {
            "arguments": cedar_type(&ArgType::Record(arguments.clone())),
            "session": {"type": "String"},
        }},
    }}});

    let real = json!({"Stead": {"entityTypes": {"User": user, "Tool": tool}, "actions": action}});
    let fragment =
        cedar_policy::SchemaFragment::from_json_value(real.clone()).map_err(|e| Error::Tools(e.to_string()))?;
    let cedar_text = fragment.to_cedarschema().map_err(|e| Error::Tools(e.to_string()))?;
    let schema = cedar_policy::Schema::from_json_value(real).map_err(|e| Error::Tools(e.to_string()))?;

    // An enumeration must not be empty; with no tools every literal is unknown, and NUL is
    // refused in tool names, so this choice names none.
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    if names.is_empty() {
        names.push("\0");
    }
    let enum_schema = json!({"Stead": {
        "entityTypes": {"User": user, "Tool": {"enum": names}},
        "actions": action,
    }});
    let tool_enum_schema =
        cedar_policy::Schema::from_json_value(enum_schema).map_err(|e| Error::Tools(e.to_string()))?;

    Ok(Generated { schema, tool_enum_schema, cedar_text, arguments, conflicts })
}

/// The Cedar type of a JSON Schema, or `None` when it has none we can name.
pub(crate) fn from_json_schema(schema: &Value, depth: usize) -> Option<ArgType> {
    if depth > MAX_ARGUMENT_DEPTH {
        return None;
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        Some(Value::Array(types)) => {
            let mut non_null = types.iter().filter(|t| t.as_str() != Some("null"));
            match (non_null.next(), non_null.next()) {
                (Some(Value::String(t)), None) => Some(t.as_str()),
                _ => return None,
            }
        }
        Some(_) => return None,
        None => None,
    };
    let ty = match ty {
        Some(t) => t,
        None if schema.get("properties").is_some() => "object",
        None => {
            let all_strings = |v: &Value| v.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string));
            let enum_of_strings = schema.get("enum").is_some_and(all_strings);
            let const_string = schema.get("const").is_some_and(Value::is_string);
            return (enum_of_strings || const_string).then_some(ArgType::String);
        }
    };
    match ty {
        "string" => Some(ArgType::String),
        "integer" => Some(ArgType::Long),
        "number" => Some(ArgType::Decimal),
        "boolean" => Some(ArgType::Bool),
        "array" => {
            let items = schema.get("items")?;
            Some(ArgType::Set(Box::new(from_json_schema(items, depth + 1)?)))
        }
        "object" => {
            let mut attrs = BTreeMap::new();
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (name, prop) in props {
                    if let Some(t) = from_json_schema(prop, depth + 1) {
                        attrs.insert(name.clone(), t);
                    }
                }
            }
            Some(ArgType::Record(attrs))
        }
        _ => None,
    }
}

/// Adds `other`'s attributes to `into`; an attribute typed differently is removed and its
/// path recorded (it stays removed: a third tool cannot bring it back).
fn merge_records(
    into: &mut BTreeMap<String, ArgType>,
    other: BTreeMap<String, ArgType>,
    prefix: &str,
    conflicts: &mut Vec<String>,
) {
    for (name, ty) in other {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        if conflicts.contains(&path) {
            continue;
        }
        match into.remove(&name) {
            None => {
                into.insert(name, ty);
            }
            Some(existing) => match merge(existing, ty, &path, conflicts) {
                Some(merged) => {
                    into.insert(name, merged);
                }
                None => conflicts.push(path),
            },
        }
    }
}

fn merge(a: ArgType, b: ArgType, path: &str, conflicts: &mut Vec<String>) -> Option<ArgType> {
    match (a, b) {
        (ArgType::Record(mut a), ArgType::Record(b)) => {
            merge_records(&mut a, b, path, conflicts);
            Some(ArgType::Record(a))
        }
        (ArgType::Set(a), ArgType::Set(b)) => Some(ArgType::Set(Box::new(merge(*a, *b, path, conflicts)?))),
        (a, b) if a == b => Some(a),
        _ => None,
    }
}

fn cedar_type(ty: &ArgType) -> Value {
    match ty {
        ArgType::Long => json!({"type": "Long"}),
        ArgType::Decimal => json!({"type": "Extension", "name": "decimal"}),
        ArgType::String => json!({"type": "String"}),
        ArgType::Bool => json!({"type": "Boolean"}),
        ArgType::Set(element) => json!({"type": "Set", "element": cedar_type(element)}),
        ArgType::Record(attrs) => {
            let attributes: serde_json::Map<String, Value> =
                attrs.iter().map(|(name, t)| (name.clone(), cedar_type(t))).collect();
            json!({"type": "Record", "attributes": attributes})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_schemas_map_to_cedar_types_or_are_left_out() {
        let t = |v: Value| from_json_schema(&v, 0);
        assert_eq!(t(json!({"type": ["string", "null"]})), Some(ArgType::String));
        assert_eq!(t(json!({"enum": ["a", "b"]})), Some(ArgType::String));
        assert_eq!(t(json!({"enum": ["a", 1]})), None);
        assert_eq!(t(json!({"type": ["string", "integer"]})), None);
        assert_eq!(t(json!({"anyOf": [{"type": "string"}]})), None);
        assert_eq!(t(json!({"type": "array"})), None);
        assert_eq!(
            t(json!({"type": "array", "items": {"type": "number"}})),
            Some(ArgType::Set(Box::new(ArgType::Decimal)))
        );
        assert_eq!(
            t(json!({"properties": {"a": {"type": "boolean"}, "b": {"$ref": "#/x"}}})),
            Some(ArgType::Record(BTreeMap::from([("a".into(), ArgType::Bool)])))
        );
    }

    #[test]
    fn merging_keeps_what_agrees_and_records_conflicts() {
        let tool = |schema: Value| ToolInfo {
            name: format!("t{}", schema),
            kind: crate::ToolKind::Builtin,
            host: None,
            arguments_schema: Some(schema),
        };
        let g = generate(&[
            tool(json!({"properties": {"a": {"type": "string"}, "o": {"properties": {"x": {"type": "integer"}, "y": {"type": "string"}}}}})),
            tool(json!({"properties": {"a": {"type": "integer"}, "o": {"properties": {"x": {"type": "integer"}, "y": {"type": "boolean"}}}}})),
            tool(json!({"properties": {"a": {"type": "string"}}})),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.conflicts, ["a", "o.y"]);
        assert_eq!(
            g.arguments,
            BTreeMap::from([("o".into(), ArgType::Record(BTreeMap::from([("x".into(), ArgType::Long)])))])
        );
    }
}
