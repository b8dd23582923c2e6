//! The `stead` binary: `stead serve` runs the server; every other verb is a client of it.
//! Data goes to stdout, messages to stderr.

mod client;
mod config;
mod http_server;
mod render;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "stead", version, about = "Stateful runtime for AI agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub struct ClientArgs {
    /// The Stead server to talk to.
    #[arg(long, env = "STEAD_URL", default_value = "http://127.0.0.1:8787", global = true)]
    pub url: String,
    /// API key, when the server requires one.
    #[arg(long, env = "STEAD_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print raw JSON (one object per line) instead of readable text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<config::ServeArgs>),
    /// Manage agent definitions.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Manage sessions.
    #[command(subcommand)]
    Session(SessionCmd),
    /// Send input to a session and stream the run to the terminal.
    Run {
        session: String,
        /// The input text.
        text: String,
        /// Don't stream: create the run and print it.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Inspect and steer runs.
    #[command(subcommand)]
    Runs(RunsCmd),
    /// Verify the tamper-evident log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Human decisions on tool calls.
    #[command(subcommand)]
    Approvals(ApprovalsCmd),
    /// The credential vault: store, list and delete secrets (values are never shown).
    #[command(subcommand)]
    Secrets(SecretsCmd),
    /// Approve a pending tool call; the run resumes.
    Approve {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        /// Run the call with these arguments instead (a JSON object).
        #[arg(long)]
        arguments: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deny a pending tool call; the model is told why.
    Deny {
        id: String,
        #[arg(long, required = true)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum ApprovalsCmd {
    /// List approvals waiting for a decision (`--all` for decided ones too).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        session: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    Get {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Settle a call whose outcome is unknown: retry it, skip it (reporting OUTPUT), or fail the run.
    Resolve {
        id: String,
        #[arg(long, value_parser = ["retry", "skip", "fail"])]
        action: String,
        #[arg(long)]
        output: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum SecretsCmd {
    /// Store a secret, reading its value from stdin (a trailing newline is dropped).
    Set {
        name: String,
        /// `tenant` (any agent of the tenant may use it) or `user` (your own).
        #[arg(long, default_value = "tenant", value_parser = ["tenant", "user"])]
        scope: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List secrets: names, scopes, versions.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    Delete {
        name: String,
        #[arg(long, default_value = "tenant", value_parser = ["tenant", "user"])]
        scope: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Create or update an agent from a YAML or JSON file (`-` for stdin).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List agents.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show an agent (latest version, or `--version N`).
    Get {
        name: String,
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum SessionCmd {
    /// Create a session for an agent.
    Create {
        #[arg(long)]
        agent: String,
        /// Pin this agent version (default: latest).
        #[arg(long)]
        version: Option<u32>,
        /// JSON object stored with the session.
        #[arg(long)]
        metadata: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    Get {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    Delete {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a session's events; `--follow` keeps streaming new ones.
    Events {
        id: String,
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum RunsCmd {
    Get {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    List {
        session: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    Cancel {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Submit client tool outputs and stream the rest of the run. ID is a run id, or a
    /// session id to answer the session's run that is waiting.
    Submit {
        id: String,
        /// `CALL_ID=TEXT`, once per waiting call.
        #[arg(long = "output", required_unless_present = "answer")]
        outputs: Vec<String>,
        /// The output, when exactly one call is waiting.
        #[arg(long, conflicts_with = "outputs")]
        answer: Option<String>,
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Recompute a session's hash chain; names the first broken link.
    Verify {
        session: String,
        /// Verify offline, straight from a data directory (the server must be stopped).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Tenant of the session, for offline verification.
        #[arg(long, default_value = "default")]
        tenant: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(*args).await,
            Command::Agent(cmd) => match cmd {
                AgentCmd::Apply { file, client } => client::agent_apply(&client, &file).await,
                AgentCmd::List { client } => client::get_print(&client, "/v1/agents?limit=100").await,
                AgentCmd::Get { name, version, client } => {
                    let path = match version {
                        Some(v) => format!("/v1/agents/{name}/versions/{v}"),
                        None => format!("/v1/agents/{name}"),
                    };
                    client::get_print(&client, &path).await
                }
            },
            Command::Session(cmd) => match cmd {
                SessionCmd::Create { agent, version, metadata, client } => {
                    client::session_create(&client, &agent, version, metadata.as_deref()).await
                }
                SessionCmd::Get { id, client } => client::get_print(&client, &format!("/v1/sessions/{id}")).await,
                SessionCmd::List { limit, client } => {
                    client::get_print(&client, &format!("/v1/sessions?limit={limit}")).await
                }
                SessionCmd::Delete { id, client } => client::delete(&client, &format!("/v1/sessions/{id}")).await,
                SessionCmd::Events { id, after, follow, client } => client::events(&client, &id, after, follow).await,
            },
            Command::Run { session, text, detach, client } => client::run(&client, &session, &text, detach).await,
            Command::Runs(cmd) => match cmd {
                RunsCmd::Get { id, client } => client::get_print(&client, &format!("/v1/runs/{id}")).await,
                RunsCmd::List { session, client } => {
                    client::get_print(&client, &format!("/v1/sessions/{session}/runs?limit=100")).await
                }
                RunsCmd::Cancel { id, reason, client } => client::cancel(&client, &id, reason.as_deref()).await,
                RunsCmd::Submit { id, outputs, answer, detach, client } => {
                    client::submit(&client, &id, &outputs, answer.as_deref(), detach).await
                }
            },
            Command::Approvals(cmd) => match cmd {
                ApprovalsCmd::List { all, session, client } => {
                    client::approvals_list(&client, all, session.as_deref()).await
                }
                ApprovalsCmd::Get { id, client } => client::get_print(&client, &format!("/v1/approvals/{id}")).await,
                ApprovalsCmd::Resolve { id, action, output, reason, client } => {
                    let body = serde_json::json!({"action": action, "output": output, "reason": reason});
                    client::decide(&client, &id, "resolve", body).await
                }
            },
            Command::Secrets(cmd) => match cmd {
                SecretsCmd::Set { name, scope, client } => client::secret_set(&client, &name, &scope).await,
                SecretsCmd::List { client } => client::get_print(&client, "/v1/secrets").await,
                SecretsCmd::Delete { name, scope, client } => {
                    client::delete(&client, &format!("/v1/secrets/{name}?scope={scope}")).await
                }
            },
            Command::Approve { id, reason, arguments, client } => {
                let arguments: Option<serde_json::Value> = match arguments {
                    Some(a) => {
                        Some(serde_json::from_str(&a).map_err(|e| anyhow::anyhow!("--arguments must be JSON: {e}"))?)
                    }
                    None => None,
                };
                client::decide(&client, &id, "approve", serde_json::json!({"reason": reason, "arguments": arguments}))
                    .await
            }
            Command::Deny { id, reason, client } => {
                client::decide(&client, &id, "deny", serde_json::json!({"reason": reason})).await
            }
            Command::Audit(AuditCmd::Verify { session, data_dir, tenant, client }) => {
                client::audit_verify(&client, &session, data_dir.as_deref(), &tenant).await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
