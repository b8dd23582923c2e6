//! The tools one agent version can use: built-ins, `type: http` tools, client tools and the
//! tools its MCP servers list. Built once per agent version (MCP discovery included) and
//! cached; a build that hit a problem (an MCP server down) is not cached, so the next run
//! tries again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use stead_core::agent::{AgentSpec, McpServerSpec, ToolKind};
use stead_core::approval::ApprovalRule;
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

/// Replaces `${env:VAR}` with the variable's value; a missing variable is an error naming it.
pub(crate) fn substitute_env(value: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${env:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 6..];
        let end = after.find('}').ok_or_else(|| format!("unterminated `${{env:` in {value:?}"))?;
        let var = &after[..end];
        let v = std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
        out.push_str(&v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
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

fn mcp_transport(m: &McpServerSpec) -> Result<stead_mcp::Transport, String> {
    let subst = |map: &BTreeMap<String, String>| -> Result<BTreeMap<String, String>, String> {
        map.iter().map(|(k, v)| substitute_env(v).map(|v| (k.clone(), v)).map_err(|e| format!("`{k}`: {e}"))).collect()
    };
    match (&m.command, &m.url) {
        (Some(command), None) => Ok(stead_mcp::Transport::Stdio {
            command: command.clone(),
            args: m.args.clone(),
            env: subst(&m.env)?,
            cwd: None,
        }),
        (None, Some(url)) => Ok(stead_mcp::Transport::Http { url: url.clone(), headers: subst(&m.headers)? }),
        _ => Err("give either `command` or `url`".into()),
    }
}

impl AgentTools {
    pub(crate) async fn build(spec: &AgentSpec, registry: &ToolRegistry) -> AgentTools {
        let mut tools = AgentTools { order: Vec::new(), entries: HashMap::new(), problems: Vec::new() };
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
            if let Err(e) = tools.add_mcp_server(m).await {
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

    async fn add_mcp_server(&mut self, m: &McpServerSpec) -> Result<(), String> {
        let mut config = stead_mcp::ServerConfig::new(m.name.clone(), mcp_transport(m)?);
        config.call_timeout = Duration::from_secs(m.timeout_secs);
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
    pub(crate) async fn execute(&self, call: &ToolCall, ctx: &ToolContext, http: Option<&HttpCaller>) -> Outcome {
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
                        let r = caller.call_tool(spec, &args, &ctx.idempotency_key).await;
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
    fn env_substitution_names_the_missing_variable() {
        assert_eq!(substitute_env("plain").unwrap(), "plain");
        let path = std::env::var("PATH").unwrap();
        assert_eq!(substitute_env("a ${env:PATH} b").unwrap(), format!("a {path} b"));
        let err = substitute_env("Bearer ${env:STEAD_SURELY_UNSET_X}").unwrap_err();
        assert!(err.contains("STEAD_SURELY_UNSET_X"), "{err}");
        assert!(substitute_env("${env:PATH").is_err());
    }
}
