//! The tools one agent version can use: built-ins, `type: http` tools, client tools and the
//! tools its MCP servers list. Built once per agent version (MCP discovery included) and
//! cached; a build that hit a problem (an MCP server down) is not cached, so the next run
//! tries again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use stead_core::agent::{AgentSpec, McpServerSpec, ToolKind};
use stead_core::approval::ApprovalRule;
use stead_core::grants::Grants;
use stead_core::ids::TenantId;
use stead_core::message::{ToolCall, ToolDef};
use stead_core::run::{ToolClass, ToolPolicy};
use stead_mcp::McpClient;
use stead_tools_http::{HttpCaller, HttpToolSpec};

use crate::tools::{Tool, ToolContext, ToolOutput, ToolRegistry};

/// How a tool runs.
enum Runner {
    Builtin(Arc<dyn Tool>),
    Http(HttpToolSpec),
    Mcp { client: McpClient, server: String, remote: String },
    Client,
}

struct Entry {
    def: ToolDef,
    /// Compiled from `def.parameters`; `None` when the schema itself could not be compiled
    /// (reported as a build problem).
    validator: Option<jsonschema::Validator>,
    runner: Runner,
    idempotent: bool,
    approval: ApprovalRule,
    timeout: Duration,
}

/// What a server-side call produced.
pub(crate) enum Outcome {
    Known(ToolOutput),
    /// The call may or may not have taken effect (its connection broke mid-call).
    Unknown(String),
}

pub(crate) struct AgentTools {
    /// In declaration order (built-ins and HTTP tools, then each MCP server's).
    order: Vec<String>,
    entries: HashMap<String, Entry>,
    /// Problems met while building (e.g. an MCP server that did not answer).
    pub problems: Vec<String>,
}

/// Where a spec's `${…}` references are resolved from, for one tenant.
pub(crate) struct Resolver<'a> {
    pub tenant: &'a TenantId,
    pub grants: &'a Grants,
    pub held: &'a crate::held::HeldCredentials,
    /// Checks tenant-chosen MCP URLs (and refuses their redirects).
    pub mcp_guard: Option<Arc<stead_tools_http::Guard>>,
    /// The tenant's vault secrets the spec's MCP servers name, revealed for building them.
    pub secrets: HashMap<String, stead_vault::Revealed>,
}

/// The names in every `${secret:NAME}` of `values`.
pub(crate) fn secret_names<'a>(values: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut out = Vec::new();
    for v in values {
        let mut rest = v.as_str();
        while let Some(i) = rest.find(SECRET_REF) {
            let after = &rest[i + SECRET_REF.len()..];
            let Some(end) = after.find('}') else { break };
            if !out.iter().any(|n| n == &after[..end]) {
                out.push(after[..end].to_owned());
            }
            rest = &after[end..];
        }
    }
    out
}

const SECRET_REF: &str = "${secret:";

impl Resolver<'_> {
    /// `${env:VAR}` for a variable this tenant may read, `${held:ID}` for a credential a
    /// request holds in memory. The operator's own values (`operator: true`) read any variable.
    fn substitute(&self, value: &str, operator: bool) -> Result<String, String> {
        let env = |var: &str| -> Result<String, String> {
            if !operator && !self.grants.may_read_env(self.tenant, var) {
                return Err(format!("environment variable {var} is not exposed to this tenant"));
            }
            std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
        };
        let value = substitute_refs(value, "${env:", &env)?;
        let value = substitute_refs(&value, SECRET_REF, &|name| {
            self.secrets
                .get(name)
                .map(|v| v.as_str().to_owned())
                .ok_or_else(|| format!("secret {name} is not in this tenant's vault"))
        })?;
        substitute_refs(&value, crate::held::HELD_REF, &|id| self.held.get(self.tenant, id))
    }
}

/// Replaces each `{prefix}NAME}` in `value` by `lookup(NAME)`; a failed lookup is an error
/// naming the reference (never its value).
pub(crate) fn substitute_refs(
    value: &str,
    prefix: &str,
    lookup: &dyn Fn(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find(prefix) {
        out.push_str(&rest[..start]);
        let after = &rest[start + prefix.len()..];
        let end = after.find('}').ok_or_else(|| format!("unterminated `{prefix}` reference"))?;
        out.push_str(&lookup(&after[..end])?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The vault secrets an HTTP tool's headers name, revealed for one call (and wiped when the
/// map drops). A secret the vault lacks is left out: the call then fails naming it.
async fn reveal_secrets(
    spec: &HttpToolSpec,
    tenant: &TenantId,
    vault: Option<&stead_vault::Vault>,
) -> Result<HashMap<String, stead_vault::Revealed>, String> {
    let names = spec.secret_refs();
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let vault = vault.ok_or("this tool's headers name vault secrets, but the server has no vault configured")?;
    let mut out = HashMap::new();
    for name in names {
        match vault.reveal(tenant, &stead_vault::Scope::Tenant, &name).await {
            Ok(Some(v)) => {
                out.insert(name, v);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("the vault could not open secret {name}: {e}")),
        }
    }
    Ok(out)
}

/// The model-facing name of an MCP tool: `SERVER__TOOL`, in the characters providers accept.
fn mcp_tool_name(server: &str, tool: &str) -> String {
    let clean: String =
        tool.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    let mut name = format!("{server}__{clean}");
    name.truncate(64);
    name
}

/// How to reach an MCP server: the operator's catalog entry (its values are the operator's),
/// or the tenant's own URL (checked by the MCP guard on every hop), or — trusted tenants
/// only, checked by [`Grants::check_spec`] — a command.
fn mcp_config(m: &McpServerSpec, r: &Resolver<'_>) -> Result<stead_mcp::ServerConfig, String> {
    let subst = |map: &BTreeMap<String, String>, operator: bool| -> Result<BTreeMap<String, String>, String> {
        map.iter()
            .map(|(k, v)| r.substitute(v, operator).map(|v| (k.clone(), v)).map_err(|e| format!("`{k}`: {e}")))
            .collect()
    };
    let (transport, tenant_url) = if let Some(name) = m.catalog_name() {
        let c = r.grants.catalog_server(r.tenant, name).map_err(|e| e.to_string())?;
        match (&c.command, &c.url) {
            (Some(command), _) => (
                stead_mcp::Transport::Stdio {
                    command: command.clone(),
                    args: c.args.clone(),
                    env: subst(&c.env, true)?,
                    cwd: None,
                },
                false,
            ),
            (None, Some(url)) => {
                (stead_mcp::Transport::Http { url: url.clone(), headers: subst(&c.headers, true)? }, false)
            }
            (None, None) => return Err("the catalog entry gives neither `command` nor `url`".into()),
        }
    } else {
        let trusted = r.grants.trusts(r.tenant);
        match (&m.command, &m.url) {
            (Some(command), None) if trusted => (
                stead_mcp::Transport::Stdio {
                    command: command.clone(),
                    args: m.args.clone(),
                    env: subst(&m.env, false)?,
                    cwd: None,
                },
                false,
            ),
            (None, Some(url)) => (
                stead_mcp::Transport::Http { url: r.substitute(url, false)?, headers: subst(&m.headers, false)? },
                !trusted,
            ),
            _ => return Err("only the operator may start MCP server commands".into()),
        }
    };
    let mut config = stead_mcp::ServerConfig::new(m.name.clone(), transport);
    if tenant_url {
        config.url_guard = r.mcp_guard.clone();
    }
    config.call_timeout = Duration::from_secs(m.timeout_secs);
    Ok(config)
}

impl AgentTools {
    pub(crate) async fn build(spec: &AgentSpec, registry: &ToolRegistry, resolver: &Resolver<'_>) -> AgentTools {
        let mut tools = AgentTools { order: Vec::new(), entries: HashMap::new(), problems: Vec::new() };
        // Nothing of a spec that uses what its tenant was not granted is built or started.
        if let Err(e) = resolver.grants.check_spec(resolver.tenant, spec) {
            tools.problems.push(e.to_string());
            return tools;
        }
        for t in &spec.tools {
            let timeout = Duration::from_secs(t.timeout_secs);
            let (def, runner, idempotent) = match t.kind {
                ToolKind::Builtin => {
                    let Some(b) = registry.get(&t.name) else {
                        tools.problems.push(format!("unknown builtin `{}`", t.name));
                        continue;
                    };
                    let d = b.def();
                    let def = ToolDef {
                        name: t.name.clone(),
                        description: t.description.clone().unwrap_or(d.description),
                        parameters: t.parameters.clone().unwrap_or(d.parameters),
                    };
                    (def, Runner::Builtin(b.clone()), t.idempotent.unwrap_or(b.idempotent()))
                }
                ToolKind::Http => {
                    let Some(h) = &t.http else { continue };
                    let spec =
                        HttpToolSpec { method: h.method.clone(), url: h.url.clone(), headers: h.headers.clone() };
                    (plain_def(t), Runner::Http(spec), t.idempotent.unwrap_or(false))
                }
                ToolKind::Client => (plain_def(t), Runner::Client, false),
            };
            tools.insert(Entry {
                def,
                validator: None,
                runner,
                idempotent,
                approval: t.require_approval.clone(),
                timeout,
            });
        }
        for m in &spec.mcp_servers {
            if let Err(e) = tools.add_mcp_server(m, resolver).await {
                tools.problems.push(format!("MCP server `{}`: {e}", m.name));
            }
        }
        tools
    }

    fn insert(&mut self, mut entry: Entry) {
        if !matches!(entry.runner, Runner::Client) {
            match jsonschema::validator_for(&entry.def.parameters) {
                Ok(v) => entry.validator = Some(v),
                Err(e) => self.problems.push(format!("tool `{}` has an invalid JSON Schema: {e}", entry.def.name)),
            }
        }
        if self.entries.contains_key(&entry.def.name) {
            self.problems.push(format!("two tools are named `{}`; the second is ignored", entry.def.name));
            return;
        }
        self.order.push(entry.def.name.clone());
        self.entries.insert(entry.def.name.clone(), entry);
    }

    async fn add_mcp_server(&mut self, m: &McpServerSpec, resolver: &Resolver<'_>) -> Result<(), String> {
        let config = mcp_config(m, resolver)?;
        let client = McpClient::connect(config).await.map_err(|e| e.to_string())?;
        let listed = client.list_tools().await.map_err(|e| e.to_string())?;
        for tool in listed {
            if m.allowed_tools.as_ref().is_some_and(|allowed| !allowed.contains(&tool.name)) {
                continue;
            }
            let over = m.tool_overrides.get(&tool.name).cloned().unwrap_or_default();
            // Only what the server promises is safe to repeat; unknown means not idempotent.
            let hinted = tool.idempotent_hint == Some(true) || tool.read_only_hint == Some(true);
            let def = ToolDef {
                name: mcp_tool_name(&m.name, &tool.name),
                description: tool.description.clone(),
                parameters: tool.input_schema.clone(),
            };
            self.insert(Entry {
                def,
                validator: None,
                runner: Runner::Mcp { client: client.clone(), server: m.name.clone(), remote: tool.name.clone() },
                idempotent: over.idempotent.unwrap_or(hinted),
                approval: over.require_approval.unwrap_or_else(|| m.require_approval.clone()),
                timeout: Duration::from_secs(m.timeout_secs),
            });
        }
        Ok(())
    }

    pub(crate) fn defs(&self) -> Vec<ToolDef> {
        self.order.iter().filter_map(|n| self.entries.get(n)).map(|e| e.def.clone()).collect()
    }

    pub(crate) fn names(&self) -> Vec<&str> {
        self.order.iter().map(String::as_str).collect()
    }

    pub(crate) fn policy(&self, call: &ToolCall) -> ToolPolicy {
        match self.entries.get(&call.name) {
            None => ToolPolicy { class: ToolClass::Unknown, approval: None, rejection: None },
            Some(e) if matches!(e.runner, Runner::Client) => {
                ToolPolicy { class: ToolClass::Client, approval: None, rejection: None }
            }
            Some(e) => ToolPolicy {
                class: ToolClass::Server { idempotent: e.idempotent },
                approval: e.approval.requires(&call.arguments),
                rejection: check_arguments(e, &call.arguments),
            },
        }
    }

    /// Runs one server-side call with its recorded idempotency key.
    pub(crate) async fn execute(
        &self,
        call: &ToolCall,
        ctx: &ToolContext,
        http: Option<&HttpCaller>,
        vault: Option<&stead_vault::Vault>,
    ) -> Outcome {
        let Some(entry) = self.entries.get(&call.name) else {
            let names = self.names();
            return Outcome::Known(ToolOutput::error(format!(
                "unknown tool `{}`; this agent's tools are: {}",
                call.name,
                if names.is_empty() { "(none)".to_owned() } else { names.join(", ") }
            )));
        };
        let raw = if call.arguments.trim().is_empty() { "{}" } else { call.arguments.as_str() };
        let args = match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => return Outcome::Known(ToolOutput::error("tool arguments must be a JSON object")),
            Err(e) => return Outcome::Known(ToolOutput::error(format!("tool arguments are not valid JSON: {e}"))),
        };
        let run = async {
            match &entry.runner {
                Runner::Builtin(tool) => Outcome::Known(tool.call(serde_json::Value::Object(args), ctx).await),
                Runner::Http(spec) => match http {
                    Some(caller) => {
                        let secrets = match reveal_secrets(spec, &ctx.tenant_id, vault).await {
                            Ok(s) => s,
                            Err(e) => return Outcome::Known(ToolOutput::error(e)),
                        };
                        let lookup = |name: &str| secrets.get(name).map(|v| v.as_str().to_owned());
                        let r = caller.call_tool_with(spec, &args, &ctx.idempotency_key, &lookup).await;
                        if r.outcome_unknown {
                            Outcome::Unknown(r.text)
                        } else {
                            Outcome::Known(ToolOutput { content: r.text, is_error: r.is_error })
                        }
                    }
                    None => Outcome::Known(ToolOutput::error("HTTP tools are not enabled on this server")),
                },
                Runner::Mcp { client, server, remote } => {
                    match client.call_tool(remote, args, &ctx.idempotency_key).await {
                        Ok(r) => {
                            let content = match (r.text.is_empty(), &r.structured) {
                                (true, Some(v)) => v.to_string(),
                                _ => r.text,
                            };
                            Outcome::Known(ToolOutput { content, is_error: r.is_error })
                        }
                        Err(e) if e.is_outcome_unknown() => Outcome::Unknown(format!("MCP server `{server}`: {e}")),
                        Err(e) => Outcome::Known(ToolOutput::error(format!("MCP server `{server}`: {e}"))),
                    }
                }
                Runner::Client => Outcome::Known(ToolOutput::error("a client tool cannot run on the server")),
            }
        };
        match tokio::time::timeout(entry.timeout, run).await {
            Ok(outcome) => outcome,
            // Whatever the tool was doing may still happen: for a tool with side effects the
            // outcome is unknown, and `decide` asks a person (or retries, if idempotent).
            Err(_) => Outcome::Unknown(format!("tool `{}` timed out after {}s", call.name, entry.timeout.as_secs())),
        }
    }
}

/// Why `arguments` can't be run with this tool, or `None` when they fit its schema.
fn check_arguments(entry: &Entry, arguments: &str) -> Option<String> {
    let raw = if arguments.trim().is_empty() { "{}" } else { arguments };
    let value: serde_json::Value = match serde_json::from_str(raw) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        Ok(_) => return Some("error: tool arguments must be a JSON object".into()),
        Err(e) => return Some(format!("error: tool arguments are not valid JSON: {e}")),
    };
    let validator = entry.validator.as_ref()?;
    let problems: Vec<String> = validator
        .iter_errors(&value)
        .take(5)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() { e.to_string() } else { format!("{at}: {e}") }
        })
        .collect();
    if problems.is_empty() {
        return None;
    }
    Some(format!("error: the arguments do not match the schema of `{}`: {}", entry.def.name, problems.join("; ")))
}

fn plain_def(t: &stead_core::agent::ToolSpec) -> ToolDef {
    ToolDef {
        name: t.name.clone(),
        description: t.description.clone().unwrap_or_default(),
        parameters: t.parameters.clone().unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_names_are_prefixed_and_provider_safe() {
        assert_eq!(mcp_tool_name("files", "read.file"), "files__read_file");
        assert_eq!(mcp_tool_name("s", &"x".repeat(100)).len(), 64);
    }

    #[test]
    fn env_substitution_follows_the_grants() {
        let tenant = TenantId::new("acme").unwrap();
        let mut grants = Grants::default();
        grants.exposed_env.push(stead_core::grants::ExposedVar { name: "PATH".into(), tenants: Default::default() });
        let held = crate::held::HeldCredentials::default();
        let r = Resolver { tenant: &tenant, grants: &grants, held: &held, mcp_guard: None, secrets: HashMap::new() };
        assert_eq!(r.substitute("plain", false).unwrap(), "plain");
        let path = std::env::var("PATH").unwrap();
        assert_eq!(r.substitute("a ${env:PATH} b", false).unwrap(), format!("a {path} b"));
        // Not exposed: refused for the tenant, readable for the operator's own values.
        let err = r.substitute("Bearer ${env:HOME}", false).unwrap_err();
        assert!(err.contains("HOME") && err.contains("not exposed"), "{err}");
        assert!(r.substitute("${env:HOME}", true).is_ok());
        let err = r.substitute("Bearer ${env:STEAD_SURELY_UNSET_X}", true).unwrap_err();
        assert!(err.contains("STEAD_SURELY_UNSET_X"), "{err}");
        assert!(r.substitute("${env:PATH", false).is_err());
        // Held credentials resolve only for their tenant.
        let guard = held.hold(&tenant, "tok-1234567890");
        let reference = guard.reference();
        assert_eq!(r.substitute(&format!("Bearer {reference}"), false).unwrap(), "Bearer tok-1234567890");
        let other = TenantId::new("other").unwrap();
        let r2 = Resolver { tenant: &other, grants: &grants, held: &held, mcp_guard: None, secrets: HashMap::new() };
        assert!(r2.substitute(&reference, false).is_err());
        drop(guard);
        assert!(r.substitute(&reference, false).unwrap_err().contains("no longer held"));
    }
}
