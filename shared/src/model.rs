//! The tool model: names, definitions and the checks a definition must pass before it is
//! stored. Everything here is pure data and pure validation.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Names the gateway's own meta-tools use; no stored tool may take one.
pub const RESERVED_NAMES: &[&str] = &[
    "list_tools",
    "get_tool",
    "create_tool",
    "update_tool",
    "delete_tool",
    "run_tool",
];

/// Longest description a tool may carry, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Most hosts a tool may list in `allowed_hosts`.
pub const MAX_ALLOWED_HOSTS: usize = 32;

/// A tenant's identifier: opaque, stable, never shown to other tenants.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    /// The tenant that serves every caller when authentication is off.
    pub const DEFAULT: &'static str = "default";

    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn default_tenant() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated tool name: `^[a-z][a-z0-9_]{0,63}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ToolName(String);

impl ToolName {
    /// Checks the name's shape. Reserved names pass here: see [`ToolName::new_user`].
    pub fn parse(name: &str) -> Result<Self, ValidationError> {
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !first_ok || !rest_ok || name.len() > 64 {
            return Err(ValidationError::new(
                "name",
                format!(
                    "tool name {name:?} is not valid: use 1 to 64 characters, a lowercase letter \
                     first, then lowercase letters, digits or '_' (pattern ^[a-z][a-z0-9_]{{0,63}}$)"
                ),
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// A name a user may give a new tool: valid and not one of the meta-tools.
    pub fn new_user(name: &str) -> Result<Self, ValidationError> {
        let parsed = Self::parse(name)?;
        if RESERVED_NAMES.contains(&name) {
            return Err(ValidationError::new(
                "name",
                format!("tool name {name:?} is reserved for a built-in meta-tool"),
            ));
        }
        Ok(parsed)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ToolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ToolName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// One stored version of a tool, as the registry returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    pub tenant: TenantId,
    pub name: ToolName,
    pub version: i64,
    pub description: String,
    pub code: String,
    /// Hex SHA-256 of `code`.
    pub code_hash: String,
    pub input_schema: Value,
    pub allowed_hosts: Vec<String>,
    pub timeout_ms: u64,
    /// Names of the tenant secrets the tool receives as `context.secrets`.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub isolation: Isolation,
    /// When version 1 was stored (Unix ms).
    pub created_at: i64,
    /// When this version was stored (Unix ms).
    pub updated_at: i64,
}

/// How a tool's runs are isolated from each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Runs reuse a process kept for this tool version (module state may persist between
    /// them); nothing crosses tool versions or tenants.
    #[default]
    Warm,
    /// Every run gets a fresh process.
    Strict,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Warm => "warm",
            Isolation::Strict => "strict",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "warm" => Some(Isolation::Warm),
            "strict" => Some(Isolation::Strict),
            _ => None,
        }
    }
}

/// A tool as listings show it (and as `tools/list` needs it: with its input schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSummary {
    pub name: ToolName,
    pub description: String,
    pub version: i64,
    pub updated_at: i64,
    pub input_schema: Value,
}

/// A checked definition ready to be stored as a tool's next version.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: ToolName,
    pub description: String,
    pub code: String,
    pub input_schema: Value,
    pub allowed_hosts: Vec<String>,
    pub timeout_ms: u64,
    pub secrets: Vec<String>,
    pub isolation: Isolation,
}

impl ToolSpec {
    pub fn code_hash(&self) -> String {
        code_hash(&self.code)
    }
}

/// Hex SHA-256 of a tool's code: the identity of what runs.
pub fn code_hash(code: &str) -> String {
    hex::encode(Sha256::digest(code.as_bytes()))
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Opaque cursor for the next page, absent on the last one.
    pub next_cursor: Option<String>,
}

/// A definition field that failed its check, with a message an agent can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Checks a description's size.
pub fn check_description(description: &str) -> Result<(), ValidationError> {
    if description.trim().is_empty() {
        return Err(ValidationError::new(
            "description",
            "description must say what the tool does",
        ));
    }
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(ValidationError::new(
            "description",
            format!("description is longer than {MAX_DESCRIPTION_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Checks an input schema: a JSON Schema (2020-12) object describing an object.
pub fn check_input_schema(schema: &Value) -> Result<(), ValidationError> {
    let Some(object) = schema.as_object() else {
        return Err(ValidationError::new(
            "input_schema",
            "input_schema must be a JSON Schema object, for example {\"type\":\"object\",\"properties\":{…}}",
        ));
    };
    match object.get("type") {
        None => {}
        Some(Value::String(t)) if t == "object" => {}
        Some(other) => {
            return Err(ValidationError::new(
                "input_schema",
                format!("input_schema must describe an object (\"type\": \"object\"), not {other}"),
            ));
        }
    }
    if let Err(error) = jsonschema::draft202012::meta::validate(schema) {
        return Err(ValidationError::new(
            "input_schema",
            format!(
                "input_schema is not a valid JSON Schema (2020-12): {error} at {}",
                error.instance_path()
            ),
        ));
    }
    if let Err(error) = jsonschema::draft202012::new(schema) {
        return Err(ValidationError::new(
            "input_schema",
            format!("input_schema cannot be compiled: {error}"),
        ));
    }
    Ok(())
}

/// Normalises and checks `allowed_hosts`: host names or IPv4 addresses, each with an optional
/// port. Only these characters reach Deno's `--allow-net` flag, so no entry can smuggle in a
/// second flag or a list separator.
pub fn check_allowed_hosts(hosts: &[String]) -> Result<Vec<String>, ValidationError> {
    if hosts.len() > MAX_ALLOWED_HOSTS {
        return Err(ValidationError::new(
            "allowed_hosts",
            format!("allowed_hosts lists more than {MAX_ALLOWED_HOSTS} hosts"),
        ));
    }
    let mut out = Vec::with_capacity(hosts.len());
    for raw in hosts {
        let host = raw.trim().to_ascii_lowercase();
        if !is_host_with_port(&host) {
            return Err(ValidationError::new(
                "allowed_hosts",
                format!(
                    "allowed_hosts entry {raw:?} is not a host name with an optional port \
                     (for example \"api.example.com\" or \"api.example.com:8443\")"
                ),
            ));
        }
        if !out.contains(&host) {
            out.push(host);
        }
    }
    Ok(out)
}

fn is_host_with_port(entry: &str) -> bool {
    let (host, port) = match entry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (entry, None),
    };
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return false;
    }
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_names_follow_the_pattern() {
        for ok in ["a", "weather", "get_weather_2", &"a".repeat(64)] {
            assert!(ToolName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Weather",
            "2fast",
            "_x",
            "a-b",
            "a b",
            "ä",
            &"a".repeat(65),
        ] {
            assert!(ToolName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn meta_tool_names_are_reserved() {
        let error = ToolName::new_user("run_tool").unwrap_err();
        assert!(error.message.contains("reserved"));
        assert!(ToolName::new_user("run_tools").is_ok());
    }

    #[test]
    fn input_schema_must_be_an_object_schema() {
        assert!(check_input_schema(&json!({"type": "object"})).is_ok());
        assert!(check_input_schema(&json!({"properties": {"a": {"type": "string"}}})).is_ok());
        assert!(check_input_schema(&json!("object")).is_err());
        assert!(check_input_schema(&json!({"type": "string"})).is_err());
        let error = check_input_schema(&json!({"type": "object", "required": "a"})).unwrap_err();
        assert!(error.message.contains("not a valid JSON Schema"), "{error}");
    }

    #[test]
    fn allowed_hosts_cannot_inject_flags() {
        assert_eq!(
            check_allowed_hosts(&["API.example.com".into(), "example.org:8443".into()]).unwrap(),
            vec!["api.example.com", "example.org:8443"]
        );
        for bad in [
            "a.com,127.0.0.1",
            "--allow-all",
            "a.com --allow-read",
            "http://a.com",
            "a.com:0",
            "a.com:99999",
            "*.a.com",
            "",
        ] {
            assert!(check_allowed_hosts(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn code_hash_is_sha256_hex() {
        assert_eq!(
            code_hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
