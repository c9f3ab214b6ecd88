//! What the definition meta-tools do, independent of MCP: check definitions against the
//! tenant's quotas and store them, with change events and an audit entry. Every failure is
//! a [`RunError`] of the closed set, with a message an agent can act on and no internals.
//! The run path is in `run.rs`.

use serde::Deserialize;
use serde_json::Value;

use shared::code::prepare;
use shared::model::{
    Isolation, Page, TenantId, ToolDefinition, ToolName, ToolSpec, ToolSummary,
    check_allowed_hosts, check_description, check_input_schema,
};
use shared::protocol::{ErrorKind, RunError};
use shared::queue::{ChangeEvent, ChangeKind, QueueError};
use shared::registry::RegistryError;

use crate::app::App;
use crate::caller::Caller;
use crate::quota::exceeded;

/// How many times an update is retried when another write lands between read and write.
const UPDATE_ATTEMPTS: usize = 3;
/// Most schema violations listed in one `invalid_params` message.
const MAX_PARAM_ERRORS: usize = 10;
/// Most secrets one tool may declare.
const MAX_SECRETS: usize = 16;

/// A new tool, as `create_tool` receives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDraft {
    pub name: String,
    pub description: String,
    pub code: String,
    #[serde(default)]
    pub input_schema: Option<Value>,
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub secrets: Option<Vec<String>>,
    #[serde(default)]
    pub isolation: Option<Isolation>,
}

/// Changes to a tool, as `update_tool` receives them; absent fields keep their value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolChanges {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub input_schema: Option<Value>,
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub secrets: Option<Vec<String>>,
    #[serde(default)]
    pub isolation: Option<Isolation>,
}

impl App {
    pub async fn list_tools(
        &self,
        tenant: &TenantId,
        query: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<Page<ToolSummary>, RunError> {
        self.registry
            .list_tools(tenant, query, cursor)
            .await
            .map_err(registry_error)
    }

    pub async fn get_tool(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<ToolDefinition, RunError> {
        let name = existing_name(name)?;
        self.registry
            .get_tool(tenant, &name)
            .await
            .map_err(registry_error)?
            .ok_or_else(|| not_found(&name))
    }

    pub async fn create_tool(
        &self,
        caller: &Caller,
        draft: ToolDraft,
    ) -> Result<ToolDefinition, RunError> {
        let name = ToolName::new_user(&draft.name).map_err(invalid)?;
        let spec = self
            .check_spec(
                &caller.tenant,
                ToolSpec {
                    name,
                    description: draft.description,
                    code: draft.code,
                    input_schema: draft
                        .input_schema
                        .unwrap_or_else(|| serde_json::json!({"type": "object"})),
                    allowed_hosts: draft.allowed_hosts.unwrap_or_default(),
                    timeout_ms: draft
                        .timeout_ms
                        .unwrap_or(self.settings.timeouts.default_timeout_ms),
                    secrets: draft.secrets.unwrap_or_default(),
                    isolation: draft.isolation.unwrap_or_default(),
                },
            )
            .await?;
        let limits = self.quotas.limits(&caller.tenant).await?;
        let stored = self
            .registry
            .create_tool(&caller.tenant, &spec, &caller.actor, Some(limits.max_tools))
            .await
            .map_err(|error| match error {
                RegistryError::TooManyTools(max) => exceeded(format!(
                    "the max_tools quota ({max}) is reached; delete a tool before creating another"
                )),
                other => registry_error(other),
            })?;
        self.announce(&stored, ChangeKind::Created).await;
        Ok(stored)
    }

    pub async fn update_tool(
        &self,
        caller: &Caller,
        changes: ToolChanges,
    ) -> Result<ToolDefinition, RunError> {
        let tenant = &caller.tenant;
        let name = existing_name(&changes.name)?;
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self
                .registry
                .get_tool(tenant, &name)
                .await
                .map_err(registry_error)?
                .ok_or_else(|| not_found(&name))?;
            let spec = self
                .check_spec(
                    tenant,
                    ToolSpec {
                        name: name.clone(),
                        description: changes.description.clone().unwrap_or(current.description),
                        code: changes.code.clone().unwrap_or(current.code),
                        input_schema: changes.input_schema.clone().unwrap_or(current.input_schema),
                        allowed_hosts: changes
                            .allowed_hosts
                            .clone()
                            .unwrap_or(current.allowed_hosts),
                        timeout_ms: changes.timeout_ms.unwrap_or(current.timeout_ms),
                        secrets: changes.secrets.clone().unwrap_or(current.secrets),
                        isolation: changes.isolation.unwrap_or(current.isolation),
                    },
                )
                .await?;
            match self
                .registry
                .update_tool(tenant, &spec, current.version, &caller.actor)
                .await
            {
                Ok(stored) => {
                    self.announce(&stored, ChangeKind::Updated).await;
                    return Ok(stored);
                }
                Err(RegistryError::Conflict(_)) => continue,
                Err(error) => return Err(registry_error(error)),
            }
        }
        Err(RunError::new(
            ErrorKind::Unavailable,
            format!("tool {name:?} is being changed by other requests right now; try again"),
        ))
    }

    pub async fn delete_tool(&self, caller: &Caller, name: &str) -> Result<i64, RunError> {
        let name = existing_name(name)?;
        let version = self
            .registry
            .delete_tool(&caller.tenant, &name, &caller.actor)
            .await
            .map_err(registry_error)?;
        self.cache.remove(&caller.tenant, &name);
        self.publish(ChangeEvent {
            tenant: caller.tenant.clone(),
            tool: name,
            version,
            kind: ChangeKind::Deleted,
        })
        .await;
        Ok(version)
    }

    async fn check_spec(
        &self,
        tenant: &TenantId,
        mut spec: ToolSpec,
    ) -> Result<ToolSpec, RunError> {
        check_description(&spec.description).map_err(invalid)?;
        let limits = self.quotas.limits(tenant).await?;
        let code_bytes = i64::try_from(spec.code.len()).unwrap_or(i64::MAX);
        if code_bytes > limits.max_code_bytes {
            return Err(exceeded(format!(
                "the code is {code_bytes} bytes; the max_code_bytes quota is {}",
                limits.max_code_bytes
            )));
        }
        if let Err(error) = prepare(&spec.code) {
            return Err(RunError::new(
                ErrorKind::CompileError,
                format!("the code does not parse: {}", error.message),
            )
            .at(error.position.line, error.position.column));
        }
        check_input_schema(&spec.input_schema).map_err(invalid)?;
        spec.allowed_hosts = check_allowed_hosts(&spec.allowed_hosts).map_err(invalid)?;
        let max = self.settings.timeouts.max_timeout_ms;
        if spec.timeout_ms == 0 || spec.timeout_ms > max {
            return Err(RunError::new(
                ErrorKind::InvalidParams,
                format!("timeout_ms must be between 1 and {max}"),
            ));
        }
        if spec.secrets.len() > MAX_SECRETS {
            return Err(RunError::new(
                ErrorKind::InvalidParams,
                format!("a tool may declare at most {MAX_SECRETS} secrets"),
            ));
        }
        for name in &spec.secrets {
            shared::secrets::check_name(name).map_err(invalid)?;
        }
        spec.secrets.sort();
        spec.secrets.dedup();
        Ok(spec)
    }

    async fn announce(&self, stored: &ToolDefinition, kind: ChangeKind) {
        self.cache.remove(&stored.tenant, &stored.name);
        self.publish(ChangeEvent {
            tenant: stored.tenant.clone(),
            tool: stored.name.clone(),
            version: stored.version,
            kind,
        })
        .await;
    }

    async fn publish(&self, event: ChangeEvent) {
        if let Err(error) = self.bus.publish(&event).await {
            // The write is committed; other replicas catch up when their cache entry expires.
            tracing::warn!(error = %error, tool = %event.tool, "could not announce a registry change");
        }
    }
}

pub(crate) fn check_params(
    validator: &jsonschema::Validator,
    params: &Value,
) -> Result<(), RunError> {
    let problems: Vec<String> = validator
        .iter_errors(params)
        .take(MAX_PARAM_ERRORS)
        .map(|error| {
            let path = error.instance_path().to_string();
            if path.is_empty() {
                error.to_string()
            } else {
                format!("{path}: {error}")
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RunError::new(
            ErrorKind::InvalidParams,
            format!(
                "params do not match the tool's input_schema: {}",
                problems.join("; ")
            ),
        ))
    }
}

pub(crate) fn existing_name(name: &str) -> Result<ToolName, RunError> {
    ToolName::parse(name)
        .map_err(|_| RunError::new(ErrorKind::NotFound, format!("no tool named {name:?}")))
}

pub(crate) fn not_found(name: &ToolName) -> RunError {
    RunError::new(
        ErrorKind::NotFound,
        format!(
            "no tool named {:?}; list_tools shows the tools that exist",
            name.as_str()
        ),
    )
}

pub(crate) fn invalid(error: shared::model::ValidationError) -> RunError {
    RunError::new(ErrorKind::InvalidParams, error.message)
}

/// The one place registry failures become agent-facing errors; SQL never leaks.
pub fn registry_error(error: RegistryError) -> RunError {
    match error {
        RegistryError::NotFound(name) => RunError::new(
            ErrorKind::NotFound,
            format!("no tool named {name:?}; list_tools shows the tools that exist"),
        ),
        RegistryError::AlreadyExists(_)
        | RegistryError::InvalidCursor
        | RegistryError::NoSuchTenant(_)
        | RegistryError::NoSuchKey(_) => RunError::new(ErrorKind::InvalidParams, error.to_string()),
        RegistryError::Conflict(_) => RunError::new(ErrorKind::Unavailable, error.to_string()),
        other => {
            tracing::error!(error = %other, "registry failure");
            RunError::new(
                ErrorKind::Unavailable,
                "the tool registry is unavailable right now; try again shortly",
            )
        }
    }
}

pub(crate) fn queue_error(error: QueueError, definition: &ToolDefinition) -> RunError {
    match error {
        QueueError::DeadlineExceeded => RunError::new(
            ErrorKind::Timeout,
            format!(
                "no result arrived in time (the tool's limit is {} ms; the workers may be busy or down)",
                definition.timeout_ms
            ),
        ),
        QueueError::DeadLettered(attempts) => RunError::new(
            ErrorKind::RuntimeError,
            format!(
                "the run crashed its worker on each of {attempts} attempts and was stopped; \
                 check the tool for code that brings down its process"
            ),
        ),
        QueueError::Unavailable(_) | QueueError::Closed => {
            tracing::warn!(error = %error, "job queue failure");
            RunError::new(
                ErrorKind::Unavailable,
                format!("the tool could not be run right now: {error}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_errors_name_the_path() {
        let schema = json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city"]
        });
        let validator = jsonschema::draft202012::new(&schema).unwrap();
        assert!(check_params(&validator, &json!({"city": "Oslo"})).is_ok());
        let error = check_params(&validator, &json!({"city": 5, "days": 0})).unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidParams);
        assert!(error.message.contains("/city"), "{}", error.message);
        assert!(error.message.contains("/days"), "{}", error.message);
        let error = check_params(&validator, &json!({})).unwrap_err();
        assert!(error.message.contains("city"), "{}", error.message);
    }

    #[test]
    fn bad_names_are_not_found_for_lookups() {
        assert_eq!(
            existing_name("No Such").unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn unknown_fields_in_a_draft_are_refused() {
        let error = serde_json::from_value::<ToolDraft>(json!({
            "name": "x", "description": "d", "code": "return 1", "colour": "red"
        }))
        .unwrap_err();
        assert!(error.to_string().contains("colour"));
    }
}
