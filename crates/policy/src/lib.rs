//! The permission boundary of a session: Cedar policies that every tool call is checked
//! against before it runs or asks for approval.
//!
//! **Invariant:** pure. No I/O, no clock, no async: a [`Boundary`] is built from text and
//! the agent's tools, and [`Boundary::authorize`] is a function of the boundary and the call.
//! Only this crate names `cedar_policy`.
//!
//! # The entity model
//! - principal `Stead::User::"<issuer>|<subject>"` (API keys `Stead::User::"key:<key id>"`),
//!   attributes `tenant: String`, `roles: Set<String>`, `claims` (a record of the standard
//!   claims in [`CLAIMS`], each optional);
//! - action `Stead::Action::"call_tool"`;
//! - resource `Stead::Tool::"<tool name>"` (MCP tools `"<server>/<tool>"`), attributes
//!   `kind: String` (`builtin`, `http`, `mcp`, `client`) and, when the tool has one,
//!   `host: String`;
//! - `context.arguments`: the call's arguments as a record, `context.session`: the session id.
//!
//! The schema policies are validated against is generated from the tools (see [`schema`] for
//! how JSON Schemas map to Cedar types; [`Boundary::schema`] prints it). How JSON arguments
//! become Cedar values is in [`value`]: what Cedar cannot hold (a number with more than four
//! fractional digits, `null` in an array, nesting deeper than
//! [`limits::MAX_ARGUMENT_DEPTH`]) denies the call, with the reason.
//!
//! # Semantics
//! - A boundary is a list of **layers**, each a policy set from one source, in order: the
//!   tenant's, the agent's, the session request's, then any narrowing. A layer whose text holds
//!   no policy (empty, or comments only) does not count.
//! - **No policy at all**: every tool the agent declares is allowed (Stead's behaviour before
//!   boundaries). A tool the boundary was not built with is always denied.
//! - **At least one policy**: default deny. A call is allowed only if EVERY non-empty layer
//!   allows it, each by Cedar's rule (some `permit` holds and no `forbid` holds). Composition
//!   is an intersection: a later layer can only narrow, and a `permit` in the session layer
//!   never widens what the agent layer denies. [`Boundary::narrow`] adds a layer.
//!   Each layer is a whole Cedar policy set, so a layer of forbids only denies everything: a
//!   layer meant only to take away writes `permit(principal, action, resource);` beside its
//!   forbids.
//! - **Errors deny.** If evaluating any policy of any layer errors (a missing attribute, a
//!   type error), the call is denied and the reason names the policy — Cedar itself would
//!   skip an erroring policy, which could turn a `forbid` into an allow.
//! - **Approval.** A `permit` annotated `@approval("ROLE")` allows only after a person holding
//!   ROLE approves. When the call is allowed and any holding permit of any layer carries
//!   `@approval`, the decision is [`Decision::RequireApproval`] — even if another permit
//!   without it also holds (an approval is an obligation, not an alternative). The role is
//!   the first such permit's (tenant layer first, then text order).
//! - **Names.** A policy is named `<source>:<@id>` when it has an `@id("…")` annotation,
//!   else `<source>#<index>` (its position in its layer's text, from 0). Names are unique in
//!   a layer; decisions and errors use them.
//! - **Visible tools.** [`Boundary::visible_tools`] over-approximates, soundly, the tools that
//!   some arguments could make allowed (Cedar's partial evaluation is experimental, so it is
//!   not used): a tool is hidden only when, in some layer, no `permit` can hold for this
//!   principal and tool whatever the arguments, or a `forbid` that reads no `context` holds.
//!   To decide "can hold", each permit is evaluated with its conditions that mention
//!   `context` removed (a `when` is split at its top-level `&&`, so `principal.tenant == "a"
//!   && context.arguments.x == 1` still checks the tenant).

mod error;
pub mod schema;
pub mod value;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    Authorizer, Context, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet,
    Request, RestrictedExpression, ValidationMode, Validator,
};
use miette::Diagnostic;
use serde_json::Value;

pub use error::{Error, Problem, Result};
pub use schema::{CLAIMS, ClaimType};

/// Bounds on what a boundary accepts, reported in errors and denials.
pub mod limits {
    /// Bytes of policy text in one layer.
    pub const MAX_POLICY_TEXT_BYTES: usize = 64 * 1024;
    /// Policies in one boundary, all layers together.
    pub const MAX_POLICIES: usize = 256;
    /// Layers in one boundary (tenant, agent, session and narrowings).
    pub const MAX_LAYERS: usize = 16;
    /// Nesting of a call's arguments (the arguments object itself is level 1).
    pub const MAX_ARGUMENT_DEPTH: usize = 32;
    /// JSON values in a call's arguments.
    pub const MAX_ARGUMENT_VALUES: usize = 100_000;
}

use limits::{MAX_LAYERS, MAX_POLICIES, MAX_POLICY_TEXT_BYTES};

/// How a tool runs; the `kind` attribute of `Stead::Tool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ToolKind {
    Builtin,
    Http,
    Mcp,
    Client,
}

impl ToolKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolKind::Builtin => "builtin",
            ToolKind::Http => "http",
            ToolKind::Mcp => "mcp",
            ToolKind::Client => "client",
        }
    }
}

impl fmt::Display for ToolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tool of the agent, as the boundary sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolInfo {
    /// The name the model calls it by; MCP tools are `<server>/<tool>`.
    pub name: String,
    pub kind: ToolKind,
    /// The host it reaches (HTTP tools, MCP over HTTP).
    pub host: Option<String>,
    /// The JSON Schema of its arguments, when known.
    pub arguments_schema: Option<Value>,
}

/// The session's user.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrincipalInfo {
    /// `<issuer>|<subject>`, or `key:<key id>`.
    pub id: String,
    pub tenant: String,
    pub roles: Vec<String>,
    /// The token's claims; only those in [`CLAIMS`] reach the policies.
    pub claims: serde_json::Map<String, Value>,
}

/// One tool call to authorize.
#[derive(Clone, Copy, Debug)]
pub struct CallRequest<'a> {
    pub principal: &'a PrincipalInfo,
    pub tool: &'a ToolInfo,
    pub arguments: &'a Value,
    pub session: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// `by`: the names of the policies that denied (forbids that held, policies that errored);
    /// empty when nothing permitted the call or it could not be put to the policies.
    Deny {
        by: Vec<String>,
        reason: String,
    },
    /// Allowed once a person holding `role` approves; `by` names the `@approval` permit.
    RequireApproval {
        role: String,
        by: String,
    },
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    pub fn is_deny(&self) -> bool {
        matches!(self, Decision::Deny { .. })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow => f.write_str("allow"),
            Decision::Deny { reason, .. } => write!(f, "deny: {reason}"),
            Decision::RequireApproval { role, by } => {
                write!(f, "allow after approval by a holder of role `{role}` ({by})")
            }
        }
    }
}

/// What one layer said about a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    RequireApproval,
    Deny,
}

/// One layer's part in a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerReport {
    pub source: String,
    pub verdict: Verdict,
    /// The policies that decided: the permits that held (allow) or the forbids that held
    /// (deny); empty for a default deny.
    pub determining: Vec<String>,
    /// Evaluation errors, each naming its policy.
    pub errors: Vec<String>,
}

/// A decision and how each layer reached it: the output of a future `stead policy check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub decision: Decision,
    /// Empty when no layer was consulted (no policies, an unknown tool, arguments that cannot
    /// be represented).
    pub layers: Vec<LayerReport>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "decision: {}", self.decision)?;
        for layer in &self.layers {
            let verdict = match layer.verdict {
                Verdict::Allow => "allow",
                Verdict::RequireApproval => "allow after approval",
                Verdict::Deny => "deny",
            };
            write!(f, "  {}: {verdict}", layer.source)?;
            if !layer.determining.is_empty() {
                write!(f, " by {}", layer.determining.join(", "))?;
            }
            writeln!(f)?;
            for e in &layer.errors {
                writeln!(f, "    error: {e}")?;
            }
        }
        Ok(())
    }
}

/// The tools and the schema generated from them, shared by a boundary and its narrowings.
struct Tools {
    by_name: HashMap<String, ToolInfo>,
    generated: schema::Generated,
    user_type: EntityTypeName,
    tool_type: EntityTypeName,
    call_tool: EntityUid,
}

struct PolicyMeta {
    index: usize,
    effect: Effect,
    approval: Option<String>,
}

struct Layer {
    source: String,
    policies: PolicySet,
    /// The permits with their context-reading conditions removed and the forbids that read no
    /// context (see [`Boundary::visible_tools`]).
    visibility: PolicySet,
    meta: HashMap<String, PolicyMeta>,
}

/// A session's permission boundary. Cheap to clone; narrowing shares the schema and layers.
#[derive(Clone)]
pub struct Boundary {
    tools: Arc<Tools>,
    layers: Vec<Arc<Layer>>,
}

impl fmt::Debug for Boundary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Boundary")
            .field("tools", &self.tools.by_name.len())
            .field("layers", &self.layers.iter().map(|l| (&l.source, l.meta.len())).collect::<Vec<_>>())
            .finish()
    }
}

impl Boundary {
    /// A boundary with no policy: it allows every tool in `tools`.
    pub fn new(tools: &[ToolInfo]) -> Result<Boundary> {
        let mut by_name = HashMap::new();
        for tool in tools {
            if tool.name.contains('\0') {
                return Err(Error::Tools(format!("tool name {:?} holds NUL", tool.name)));
            }
            if by_name.insert(tool.name.clone(), tool.clone()).is_some() {
                return Err(Error::Tools(format!("two tools are named `{}`", tool.name)));
            }
        }
        let generated = schema::generate(tools)?;
        let parse_type = |t: &str| EntityTypeName::from_str(t).expect("a valid type name");
        Ok(Boundary {
            tools: Arc::new(Tools {
                by_name,
                generated,
                user_type: parse_type("Stead::User"),
                tool_type: parse_type("Stead::Tool"),
                call_tool: EntityUid::from_type_name_and_id(parse_type("Stead::Action"), EntityId::new("call_tool")),
            }),
            layers: Vec::new(),
        })
    }

    /// `new(tools)` narrowed by each `(source, text)` in order — typically
    /// `[("tenant", …), ("agent", …), ("session", …)]`.
    pub fn compose(tools: &[ToolInfo], layers: &[(&str, &str)]) -> Result<Boundary> {
        let mut boundary = Boundary::new(tools)?;
        for (source, text) in layers {
            boundary = boundary.narrow(source, text)?;
        }
        Ok(boundary)
    }

    /// This boundary with one more layer: a call must now also be allowed by `text`'s
    /// policies. Never widens. Text with no policy returns the boundary unchanged.
    /// `source` names the layer in policy names and errors: unique in the boundary, made of
    /// ASCII letters, digits, `-`, `_` and `.`.
    pub fn narrow(&self, source: &str, text: &str) -> Result<Boundary> {
        let label_ok =
            !source.is_empty() && source.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let taken = self.layers.iter().any(|l| l.source == source);
        if !label_ok || taken {
            return Err(Error::Invalid {
                layer: source.into(),
                problems: vec![Problem {
                    line: 0,
                    column: 0,
                    policy: None,
                    message: if taken {
                        format!("the boundary has a `{source}` layer already: sources are unique")
                    } else {
                        "a source is made of ASCII letters, digits, `-`, `_` and `.`".into()
                    },
                }],
            });
        }
        if text.len() > MAX_POLICY_TEXT_BYTES {
            return Err(Error::Limit {
                layer: source.into(),
                what: "policy text (bytes)",
                actual: text.len(),
                limit: MAX_POLICY_TEXT_BYTES,
            });
        }
        let Some(layer) = parse_layer(&self.tools, source, text)? else {
            return Ok(self.clone());
        };
        if self.layers.len() + 1 > MAX_LAYERS {
            return Err(Error::Limit {
                layer: source.into(),
                what: "the number of layers",
                actual: self.layers.len() + 1,
                limit: MAX_LAYERS,
            });
        }
        let count = self.policy_count() + layer.meta.len();
        if count > MAX_POLICIES {
            return Err(Error::Limit {
                layer: source.into(),
                what: "the number of policies in the boundary",
                actual: count,
                limit: MAX_POLICIES,
            });
        }
        let mut layers = self.layers.clone();
        layers.push(Arc::new(layer));
        Ok(Boundary { tools: self.tools.clone(), layers })
    }

    /// True when the boundary holds no policy (every declared tool is allowed).
    pub fn is_unrestricted(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn policy_count(&self) -> usize {
        self.layers.iter().map(|l| l.meta.len()).sum()
    }

    /// The sources of the non-empty layers, in order.
    pub fn sources(&self) -> Vec<&str> {
        self.layers.iter().map(|l| l.source.as_str()).collect()
    }

    /// The generated Cedar schema, in Cedar's schema syntax: what policies can name.
    pub fn schema(&self) -> &str {
        &self.tools.generated.cedar_text
    }

    pub fn authorize(&self, req: &CallRequest<'_>) -> Decision {
        self.evaluate(req, false).decision
    }

    /// [`Boundary::authorize`], with every layer's part in the decision.
    pub fn explain(&self, req: &CallRequest<'_>) -> Explanation {
        self.evaluate(req, true)
    }

    /// The names of the `tools` this boundary could allow `principal` to call with some
    /// arguments, in the order given (see the crate docs for the rule).
    pub fn visible_tools(&self, principal: &PrincipalInfo, tools: &[ToolInfo]) -> Vec<String> {
        let declared = tools.iter().filter(|t| self.tools.by_name.contains_key(&t.name));
        if self.layers.is_empty() {
            return declared.map(|t| t.name.clone()).collect();
        }
        let Ok(claims) = value::claims(&principal.claims) else {
            // Every call of this principal is denied.
            return Vec::new();
        };
        let authorizer = Authorizer::new();
        let no_arguments = RestrictedExpression::new_record([]).expect("an empty record");
        declared
            .filter(|tool| {
                let Ok((request, entities)) = self.request(principal, claims.clone(), tool, no_arguments.clone(), "")
                else {
                    return false;
                };
                self.layers.iter().all(|layer| {
                    let response = authorizer.is_authorized(&request, &layer.visibility, &entities);
                    let forbid_errored = response.diagnostics().errors().any(|e| {
                        let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
                        layer.meta.get(e.policy_id().to_string().as_str()).is_some_and(|m| m.effect == Effect::Forbid)
                    });
                    response.decision() == cedar_policy::Decision::Allow && !forbid_errored
                })
            })
            .map(|t| t.name.clone())
            .collect()
    }

    fn evaluate(&self, req: &CallRequest<'_>, all_layers: bool) -> Explanation {
        let deny =
            |reason: String| Explanation { decision: Decision::Deny { by: Vec::new(), reason }, layers: Vec::new() };
        if !self.tools.by_name.contains_key(&req.tool.name) {
            return deny(format!("`{}` is not one of the tools this boundary was built for", req.tool.name));
        }
        if self.layers.is_empty() {
            return Explanation { decision: Decision::Allow, layers: Vec::new() };
        }
        let arguments = match value::arguments(req.arguments, &self.tools.generated.arguments) {
            Ok(a) => a,
            Err(e) => return deny(format!("the arguments cannot be given to the policies: {e}")),
        };
        let claims = match value::claims(&req.principal.claims) {
            Ok(c) => c,
            Err(e) => return deny(format!("the principal cannot be given to the policies: {e}")),
        };
        let (request, entities) = match self.request(req.principal, claims, req.tool, arguments, req.session) {
            Ok(r) => r,
            Err(e) => return deny(format!("the call cannot be given to the policies: {e}")),
        };

        let authorizer = Authorizer::new();
        let mut reports = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let report = layer.evaluate(&authorizer, &request, &entities);
            let denied = report.verdict == Verdict::Deny;
            reports.push(report);
            if denied && !all_layers {
                break;
            }
        }
        Explanation { decision: self.combine(&reports), layers: reports }
    }

    fn combine(&self, reports: &[LayerReport]) -> Decision {
        let mut by = Vec::new();
        let mut reasons = Vec::new();
        for (layer, report) in self.layers.iter().zip(reports) {
            if report.verdict != Verdict::Deny {
                continue;
            }
            if !report.errors.is_empty() {
                by.extend(report.determining.iter().cloned());
                for e in &report.errors {
                    reasons.push(format!("{e} (a policy that errors denies the call)"));
                }
            } else if !report.determining.is_empty() {
                by.extend(report.determining.iter().cloned());
                reasons.push(format!("forbidden by {}", report.determining.join(", ")));
            } else {
                reasons.push(format!(
                    "no `{}` policy permits this call (with policies, what is not permitted is \
                     denied)",
                    layer.source
                ));
            }
        }
        if !reasons.is_empty() {
            return Decision::Deny { by, reason: reasons.join("; ") };
        }
        for (layer, report) in self.layers.iter().zip(reports) {
            if report.verdict == Verdict::RequireApproval {
                for name in &report.determining {
                    if let Some(role) = layer.meta.get(name).and_then(|m| m.approval.clone()) {
                        return Decision::RequireApproval { role, by: name.clone() };
                    }
                }
            }
        }
        Decision::Allow
    }

    fn request(
        &self,
        principal: &PrincipalInfo,
        claims: RestrictedExpression,
        tool: &ToolInfo,
        arguments: RestrictedExpression,
        session: &str,
    ) -> std::result::Result<(Request, Entities), String> {
        let t = &self.tools;
        let user = EntityUid::from_type_name_and_id(t.user_type.clone(), EntityId::new(&principal.id));
        let resource = EntityUid::from_type_name_and_id(t.tool_type.clone(), EntityId::new(&tool.name));
        let user_entity = Entity::new(
            user.clone(),
            HashMap::from([
                ("tenant".to_owned(), RestrictedExpression::new_string(principal.tenant.clone())),
                (
                    "roles".to_owned(),
                    RestrictedExpression::new_set(
                        principal.roles.iter().map(|r| RestrictedExpression::new_string(r.clone())),
                    ),
                ),
                ("claims".to_owned(), claims),
            ]),
            HashSet::new(),
        )
        .map_err(|e| e.to_string())?;
        let mut tool_attrs =
            HashMap::from([("kind".to_owned(), RestrictedExpression::new_string(tool.kind.as_str().to_owned()))]);
        if let Some(host) = &tool.host {
            tool_attrs.insert("host".to_owned(), RestrictedExpression::new_string(host.clone()));
        }
        let tool_entity = Entity::new(resource.clone(), tool_attrs, HashSet::new()).map_err(|e| e.to_string())?;
        let entities = Entities::from_entities([user_entity, tool_entity], None).map_err(|e| e.to_string())?;
        let context = Context::from_pairs([
            ("arguments".to_owned(), arguments),
            ("session".to_owned(), RestrictedExpression::new_string(session.to_owned())),
        ])
        .map_err(|e| e.to_string())?;
        let request = Request::new(user, t.call_tool.clone(), resource, context, None).map_err(|e| e.to_string())?;
        Ok((request, entities))
    }
}

impl Layer {
    fn evaluate(&self, authorizer: &Authorizer, request: &Request, entities: &Entities) -> LayerReport {
        let response = authorizer.is_authorized(request, &self.policies, entities);
        let index = |name: &str| self.meta.get(name).map_or(usize::MAX, |m| m.index);
        let mut errors: Vec<(usize, String, String)> = response
            .diagnostics()
            .errors()
            .map(|e| {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(pe) = e;
                let name = pe.policy_id().to_string();
                (index(&name), name, e.to_string())
            })
            .collect();
        errors.sort();
        let mut determining: Vec<String> = response.diagnostics().reason().map(ToString::to_string).collect();
        determining.sort_by_key(|n| index(n));

        let verdict = if !errors.is_empty() {
            // The policies that errored decided, with any forbid that held.
            let forbids = if response.decision() == cedar_policy::Decision::Deny {
                std::mem::take(&mut determining)
            } else {
                Vec::new()
            };
            determining = errors.iter().map(|(_, name, _)| name.clone()).collect();
            determining.extend(forbids);
            Verdict::Deny
        } else if response.decision() == cedar_policy::Decision::Deny {
            Verdict::Deny
        } else if determining.iter().any(|n| self.meta.get(n).is_some_and(|m| m.approval.is_some())) {
            Verdict::RequireApproval
        } else {
            Verdict::Allow
        };
        LayerReport {
            source: self.source.clone(),
            verdict,
            determining,
            errors: errors.into_iter().map(|(_, _, e)| e).collect(),
        }
    }
}

/// Parses, names and validates one layer; `None` when the text holds no policy.
fn parse_layer(tools: &Tools, source: &str, text: &str) -> Result<Option<Layer>> {
    let invalid = |problems: Vec<Problem>| Error::Invalid { layer: source.into(), problems };
    let parsed = PolicySet::from_str(text)
        .map_err(|errors| invalid(errors.iter().map(|e| problem(text, e, None, e.to_string())).collect()))?;
    if parsed.num_of_templates() > 0 {
        let mut problems: Vec<Problem> = parsed
            .templates()
            .map(|t| {
                let at = text.find(&t.to_cedar()).unwrap_or(0);
                let (line, column) = line_column(text, at);
                Problem {
                    line,
                    column,
                    policy: None,
                    message: "templates (policies with slots such as `?principal`) are not \
                              supported"
                        .into(),
                }
            })
            .collect();
        problems.sort_by_key(|p| (p.line, p.column));
        return Err(invalid(problems));
    }
    if parsed.is_empty() {
        return Ok(None);
    }

    // Policies in text order, each with where it starts in the text.
    let mut ordered: Vec<(usize, &Policy)> = parsed
        .policies()
        .map(|p| {
            let index = p.id().to_string().strip_prefix("policy").and_then(|n| n.parse().ok()).unwrap_or(usize::MAX);
            (index, p)
        })
        .collect();
    ordered.sort_by_key(|(i, _)| *i);
    let starts = policy_starts(text, ordered.iter().map(|(_, p)| *p));

    let mut problems = Vec::new();
    let mut meta = HashMap::new();
    let mut named = Vec::with_capacity(ordered.len());
    for ((index, policy), start) in ordered.iter().zip(&starts) {
        let (line, column) = line_column(text, *start);
        let mut at = |policy: Option<String>, message: String| problems.push(Problem { line, column, policy, message });
        let name = match policy.annotation("id") {
            Some(id) => format!("{source}:{id}"),
            None => format!("{source}#{index}"),
        };
        let approval = policy.annotation("approval").map(str::to_owned);
        match (&approval, policy.effect()) {
            (Some(role), Effect::Permit) if role.trim().is_empty() => at(
                Some(name.clone()),
                format!("policy `{name}`: @approval needs a role, as in @approval(\"approver\")"),
            ),
            (Some(_), Effect::Forbid) => {
                at(Some(name.clone()), format!("policy `{name}`: @approval belongs on a permit, not a forbid"))
            }
            _ => {}
        }
        let effect = policy.effect();
        if meta.insert(name.clone(), PolicyMeta { index: *index, effect, approval }).is_some() {
            at(Some(name.clone()), format!("two policies are named `{name}` (check the @id annotations)"));
        }
        named.push(policy.new_id(PolicyId::new(&name)));
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    let policies = PolicySet::from_policies(named.iter().cloned())
        .map_err(|e| invalid(vec![Problem { line: 0, column: 0, policy: None, message: e.to_string() }]))?;

    let generated = &tools.generated;
    let result = Validator::new(generated.schema.clone()).validate(&policies, ValidationMode::Strict);
    for e in result.validation_errors() {
        let mut message = e.to_string();
        if let Some(help) = e.help() {
            message.push_str(&format!(" ({help})"));
        }
        if matches!(e, cedar_policy::ValidationError::UnsafeAttributeAccess(_)) && !generated.conflicts.is_empty() {
            message.push_str(&format!(
                "; arguments that tools declare with different types are left out of the \
                 schema: {}",
                generated.conflicts.join(", ")
            ));
        }
        problems.push(problem(text, e, Some(e.policy_id().to_string()), message));
    }
    let enums = Validator::new(generated.tool_enum_schema.clone()).validate(&policies, ValidationMode::Strict);
    for e in enums.validation_errors() {
        if let cedar_policy::ValidationError::InvalidEnumEntity(_) = e {
            let mut names: Vec<&str> = tools.by_name.keys().map(String::as_str).collect();
            names.sort();
            let message = format!("{e}: it names no tool of this agent (the tools: {})", names.join(", "));
            problems.push(problem(text, e, Some(e.policy_id().to_string()), message));
        }
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line, p.column));
        problems.dedup();
        return Err(invalid(problems));
    }

    let visibility = PolicySet::from_policies(named.iter().filter_map(visibility_policy)).unwrap_or_else(|_| {
        // Cannot happen (the names are unique); a layer that cannot hide stays sound.
        PolicySet::from_str("permit(principal, action, resource);").expect("a valid policy")
    });
    Ok(Some(Layer { source: source.into(), policies, visibility, meta }))
}

/// A problem at the first label of a Cedar diagnostic.
fn problem(text: &str, d: &dyn Diagnostic, policy: Option<String>, message: String) -> Problem {
    let offset = d.labels().and_then(|mut labels| labels.next()).map_or(0, |l| l.offset());
    let (line, column) = line_column(text, offset);
    Problem { line, column, policy, message }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// Where each policy starts in `text`: Cedar keeps each policy's exact text, found in order
/// (skipping matches that follow `//` on their line, inside a comment).
fn policy_starts<'a>(text: &str, policies: impl Iterator<Item = &'a Policy>) -> Vec<usize> {
    let mut cursor = 0;
    policies
        .map(|p| {
            let Some(snippet) = p.to_cedar() else {
                return cursor;
            };
            let mut from = cursor;
            while let Some(found) = text.get(from..).and_then(|t| t.find(&snippet)) {
                let at = from + found;
                let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                if !text[line_start..at].contains("//") {
                    cursor = at + snippet.len();
                    return at;
                }
                from = at + 1;
            }
            cursor
        })
        .collect()
}

/// The policy used to decide whether a tool could be allowed whatever the arguments:
/// a permit without its conditions that read `context`, or a forbid that reads none.
fn visibility_policy(policy: &Policy) -> Option<Policy> {
    let mut est = policy.to_json().ok()?;
    let conditions = est.get("conditions")?.as_array()?.clone();
    match policy.effect() {
        Effect::Forbid => {
            if conditions.iter().any(reads_context) {
                return None;
            }
            Some(policy.clone())
        }
        Effect::Permit => {
            let mut kept = Vec::new();
            for condition in conditions {
                let body = condition.get("body").cloned().unwrap_or(Value::Null);
                if condition.get("kind").and_then(Value::as_str) == Some("when") {
                    let mut conjuncts = Vec::new();
                    split_and(body, &mut conjuncts);
                    kept.extend(
                        conjuncts
                            .into_iter()
                            .filter(|c| !reads_context(c))
                            .map(|c| serde_json::json!({"kind": "when", "body": c})),
                    );
                } else if !reads_context(&condition) {
                    kept.push(condition);
                }
            }
            est["conditions"] = Value::Array(kept);
            Policy::from_json(Some(policy.id().clone()), est).ok().or_else(|| {
                // Keeping no condition is always possible and still sound.
                let mut bare = policy.to_json().ok()?;
                bare["conditions"] = Value::Array(Vec::new());
                Policy::from_json(Some(policy.id().clone()), bare).ok()
            })
        }
    }
}

fn split_and(expr: Value, out: &mut Vec<Value>) {
    match expr {
        Value::Object(mut map) if map.len() == 1 && map.contains_key("&&") => {
            let mut and = map.remove("&&").unwrap_or(Value::Null);
            split_and(and["left"].take(), out);
            split_and(and["right"].take(), out);
        }
        other => out.push(other),
    }
}

fn reads_context(expr: &Value) -> bool {
    match expr {
        Value::Object(map) => {
            map.get("Var").and_then(Value::as_str) == Some("context") || map.values().any(reads_context)
        }
        Value::Array(items) => items.iter().any(reads_context),
        _ => false,
    }
}
