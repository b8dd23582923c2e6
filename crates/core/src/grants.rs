//! What the operator grants tenants (DESIGN §3.9: a tenant is not the operator). The operator —
//! whoever configures `stead serve` — owns the host: processes, environment variables, model
//! keys, network reach. A tenant's agent spec may only *name* what the operator declared:
//! model providers, catalog MCP servers, exposed environment variables. Only a tenant the
//! operator marks as trusted may write host-level values (a command line, a model base URL, a
//! key variable, any `${env:…}`) into a spec. Checked when a spec is applied and again each
//! time one is used, so a grant withdrawn from the config takes effect at the next run.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::agent::{AgentSpec, McpServerSpec, Provider};
use crate::ids::TenantId;

/// Which tenants a grant covers: every tenant (the default), or those named.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantSet(pub Option<BTreeSet<String>>);

impl TenantSet {
    pub fn covers(&self, tenant: &TenantId) -> bool {
        self.0.as_ref().is_none_or(|set| set.contains(tenant.as_str()))
    }

    pub fn is_all(&self) -> bool {
        self.0.is_none()
    }
}

/// A model endpoint the operator declared: `[[provider]] name = "local", kind = "openai",
/// base_url = "http://127.0.0.1:11434/v1", api_key_env = "LOCAL_KEY"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedProvider {
    pub name: String,
    /// The wire format: `openai`, `anthropic` or `scripted`.
    pub kind: Provider,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The variable of `stead serve`'s environment that holds the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Only these tenants may use it (default: all).
    #[serde(default, skip_serializing_if = "TenantSet::is_all")]
    pub tenants: TenantSet,
}

/// An MCP server the operator declared: `[[mcp_server]] name = "files", command = "npx",
/// args = [...]` (or `url` + `headers`). Tenants reference it by name from `mcp_servers`.
/// Its `${env:…}` values are the operator's and read the whole environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogServer {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "TenantSet::is_all")]
    pub tenants: TenantSet,
}

/// An environment variable the operator exposes to tenants' `${env:…}` references.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposedVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "TenantSet::is_all")]
    pub tenants: TenantSet,
}

/// Everything the operator grants. Immutable once the server starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Grants {
    pub providers: BTreeMap<String, NamedProvider>,
    pub mcp_catalog: BTreeMap<String, CatalogServer>,
    pub exposed_env: Vec<ExposedVar>,
    /// Tenants that act as the operator (their specs may hold commands, base URLs and any
    /// `${env:…}`). Without API keys the local user is the operator: `default` is trusted.
    pub trusted_tenants: BTreeSet<String>,
}

/// Where in a spec a string can hold `${env:…}`.
pub const ENV_REF: &str = "${env:";

impl Grants {
    /// Checks the declarations themselves (names, one transport per catalog server).
    pub fn validate(&self) -> Result<(), String> {
        for p in self.providers.values() {
            // A declared name must not shadow a built-in kind (nor be unparseable as a name).
            if !matches!(Provider::parse(&p.name), Ok(Provider::Named(_))) {
                return Err(format!(
                    "provider name `{}`: use [a-z0-9_-], not openai/anthropic/scripted (those are the built-in kinds)",
                    p.name
                ));
            }
            if matches!(p.kind, Provider::Named(_)) {
                return Err(format!("provider `{}`: kind must be openai, anthropic or scripted", p.name));
            }
            if let Some(u) = &p.base_url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                return Err(format!("provider `{}`: base_url must start with http:// or https://", p.name));
            }
        }
        for s in self.mcp_catalog.values() {
            if !crate::agent::is_slug(&s.name) || s.name.contains("__") {
                return Err(format!("mcp_server name `{}`: use [a-z0-9_-] (no `__`)", s.name));
            }
            match (&s.command, &s.url) {
                (Some(c), None) if !c.trim().is_empty() => {}
                (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {}
                _ => return Err(format!("mcp_server `{}`: give either `command` or an http(s) `url`", s.name)),
            }
        }
        Ok(())
    }

    pub fn trusts(&self, tenant: &TenantId) -> bool {
        self.trusted_tenants.contains(tenant.as_str())
    }

    /// Whether `tenant`'s specs may read `var` with `${env:VAR}`.
    pub fn may_read_env(&self, tenant: &TenantId, var: &str) -> bool {
        self.trusts(tenant) || self.exposed_env.iter().any(|v| v.name == var && v.tenants.covers(tenant))
    }

    /// The named provider `name`, if `tenant` may use it.
    pub fn provider(&self, tenant: &TenantId, name: &str) -> Result<&NamedProvider, Error> {
        match self.providers.get(name) {
            Some(p) if p.tenants.covers(tenant) => Ok(p),
            _ => Err(Error::NotGranted(format!(
                "model provider `{name}` is not declared for this tenant (the operator declares providers with [[provider]] in the server config)"
            ))),
        }
    }

    /// The catalog server `name`, if `tenant` may use it.
    pub fn catalog_server(&self, tenant: &TenantId, name: &str) -> Result<&CatalogServer, Error> {
        match self.mcp_catalog.get(name) {
            Some(s) if s.tenants.covers(tenant) => Ok(s),
            _ => Err(Error::NotGranted(format!(
                "MCP server `{name}` is not in the operator's catalog for this tenant (the operator declares them with [[mcp_server]] in the server config)"
            ))),
        }
    }

    /// Whether `tenant` may use `spec` as written: every host-level value in it is either the
    /// tenant's to choose (it is trusted) or a name the operator granted.
    pub fn check_spec(&self, tenant: &TenantId, spec: &AgentSpec) -> Result<(), Error> {
        let trusted = self.trusts(tenant);
        let refuse = |field: &str, why: &str| Err(Error::NotGranted(format!("field `{field}`: {why}")));
        if let Provider::Named(name) = &spec.model.provider {
            self.provider(tenant, name)?;
        }
        if !trusted {
            if spec.model.base_url.is_some() {
                return refuse(
                    "model.base_url",
                    "only the operator chooses model endpoints; use a provider the operator declared",
                );
            }
            if spec.model.api_key_env.is_some() {
                return refuse(
                    "model.api_key_env",
                    "only the operator chooses which key is sent; use a provider the operator declared",
                );
            }
        }
        for (i, tool) in spec.tools.iter().enumerate() {
            if let Some(h) = &tool.http {
                for (k, v) in &h.headers {
                    self.check_env_refs(tenant, &format!("tools[{i}].http.headers.{k}"), v)?;
                }
                self.check_env_refs(tenant, &format!("tools[{i}].http.url"), &h.url)?;
            }
        }
        for (i, m) in spec.mcp_servers.iter().enumerate() {
            self.check_mcp_server(tenant, trusted, i, m)?;
        }
        Ok(())
    }

    fn check_mcp_server(&self, tenant: &TenantId, trusted: bool, i: usize, m: &McpServerSpec) -> Result<(), Error> {
        if let Some(name) = m.catalog_name() {
            self.catalog_server(tenant, name)?;
        }
        if m.command.is_some() && !trusted {
            return Err(Error::NotGranted(format!(
                "field `mcp_servers[{i}].command`: only the operator starts processes on the host; reference a server of the operator's catalog by name (`catalog: NAME`)"
            )));
        }
        for (k, v) in m.env.iter().chain(&m.headers) {
            self.check_env_refs(tenant, &format!("mcp_servers[{i}].{k}"), v)?;
        }
        if let Some(u) = &m.url {
            self.check_env_refs(tenant, &format!("mcp_servers[{i}].url"), u)?;
        }
        Ok(())
    }

    /// Every `${env:VAR}` in `value` must name a variable exposed to `tenant`.
    fn check_env_refs(&self, tenant: &TenantId, field: &str, value: &str) -> Result<(), Error> {
        for var in env_refs(value) {
            if !self.may_read_env(tenant, var) {
                return Err(Error::NotGranted(format!(
                    "field `{field}`: environment variable `{var}` is not exposed to this tenant (the operator exposes variables with [[expose_env]] in the server config)"
                )));
            }
        }
        Ok(())
    }
}

/// The variable names of the `${env:VAR}` references in `value` (an unterminated one is named
/// by what follows it, so it is checked too).
pub fn env_refs(value: &str) -> impl Iterator<Item = &str> {
    value.split(ENV_REF).skip(1).map(|rest| rest.split('}').next().unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::SpecFormat;

    fn tenant(t: &str) -> TenantId {
        TenantId::new(t).unwrap()
    }

    fn spec(text: &str) -> AgentSpec {
        AgentSpec::parse(&format!("name: a\nmodel: {{provider: scripted, name: e}}\n{text}"), SpecFormat::Yaml).unwrap()
    }

    fn grants() -> Grants {
        let mut g = Grants::default();
        g.trusted_tenants.insert("ops".into());
        g.exposed_env.push(ExposedVar { name: "TICKETS_TOKEN".into(), tenants: TenantSet::default() });
        g.exposed_env.push(ExposedVar {
            name: "ACME_ONLY".into(),
            tenants: TenantSet(Some(BTreeSet::from(["acme".to_owned()]))),
        });
        g.mcp_catalog.insert(
            "files".into(),
            CatalogServer {
                name: "files".into(),
                command: Some("npx".into()),
                args: vec![],
                env: BTreeMap::new(),
                url: None,
                headers: BTreeMap::new(),
                tenants: TenantSet(Some(BTreeSet::from(["acme".to_owned()]))),
            },
        );
        g
    }

    #[test]
    fn untrusted_tenants_cannot_write_host_values() {
        let g = grants();
        let acme = tenant("acme");
        for (text, needle) in [
            ("mcp_servers: [{name: x, command: sh, args: [-c, id]}]", "mcp_servers[0].command"),
            (
                "tools: [{name: t, type: http, http: {method: GET, url: \"https://x\", headers: {X: \"${env:OPENAI_API_KEY}\"}}}]",
                "OPENAI_API_KEY",
            ),
            ("mcp_servers: [{name: x, url: \"https://x\", headers: {X: \"${env:HOME}\"}}]", "HOME"),
            ("mcp_servers: [{name: x, url: \"https://x/${env:SECRET}\"}]", "SECRET"),
            ("mcp_servers: [{name: x, catalog: nope}]", "`nope` is not in the operator's catalog"),
        ] {
            let err = g.check_spec(&acme, &spec(text)).unwrap_err().to_string();
            assert!(err.contains(needle), "{text} -> {err}");
        }
        let model = |extra: &str| {
            AgentSpec::parse(&format!("name: a\nmodel: {{provider: openai, name: m, {extra}}}\n"), SpecFormat::Yaml)
                .unwrap()
        };
        let err = g.check_spec(&acme, &model("base_url: \"http://evil\"")).unwrap_err().to_string();
        assert!(err.contains("model.base_url"), "{err}");
        let err = g.check_spec(&acme, &model("api_key_env: OPENAI_API_KEY")).unwrap_err().to_string();
        assert!(err.contains("model.api_key_env"), "{err}");
        // What the operator granted is usable.
        g.check_spec(&acme, &spec("mcp_servers: [{name: files}]")).unwrap();
        g.check_spec(&acme, &spec("mcp_servers: [{name: fs, catalog: files}]")).unwrap();
        g.check_spec(
            &acme,
            &spec("tools: [{name: t, type: http, http: {method: GET, url: \"https://x\", headers: {A: \"${env:TICKETS_TOKEN} ${env:ACME_ONLY}\"}}}]"),
        )
        .unwrap();
        // Grants scoped to a tenant do not reach another.
        let other = tenant("other");
        assert!(g.check_spec(&other, &spec("mcp_servers: [{name: files}]")).is_err());
        let t = "tools: [{name: t, type: http, http: {method: GET, url: \"https://x\", headers: {A: \"${env:ACME_ONLY}\"}}}]";
        assert!(g.check_spec(&other, &spec(t)).is_err());
        // A trusted tenant is the operator.
        g.check_spec(&tenant("ops"), &spec("mcp_servers: [{name: x, command: sh}]")).unwrap();
        g.check_spec(&tenant("ops"), &model("base_url: \"http://x\", api_key_env: K")).unwrap();
    }

    #[test]
    fn named_providers_are_checked_per_tenant() {
        let mut g = grants();
        g.providers.insert(
            "local".into(),
            NamedProvider {
                name: "local".into(),
                kind: Provider::Openai,
                base_url: Some("http://127.0.0.1:1/v1".into()),
                api_key_env: None,
                tenants: TenantSet(Some(BTreeSet::from(["acme".to_owned()]))),
            },
        );
        g.validate().unwrap();
        let s = AgentSpec::parse("name: a\nmodel: {provider: local, name: m}\n", SpecFormat::Yaml).unwrap();
        assert_eq!(s.model.provider, Provider::Named("local".into()));
        g.check_spec(&tenant("acme"), &s).unwrap();
        let err = g.check_spec(&tenant("other"), &s).unwrap_err().to_string();
        assert!(err.contains("provider `local` is not declared"), "{err}");
    }

    #[test]
    fn env_refs_are_found_even_unterminated() {
        assert_eq!(env_refs("a ${env:X} b ${env:Y}").collect::<Vec<_>>(), ["X", "Y"]);
        assert_eq!(env_refs("${env:Z").collect::<Vec<_>>(), ["Z"]);
        assert_eq!(env_refs("plain").count(), 0);
    }
}
