//! The run path: resolve the tool (cache, then registry), check params against its schema,
//! admit the run against the tenant's quotas, open the secrets it declared, put the job on
//! the queue and wait for its result. Traced as one span with tenant, tool, job id and
//! trace id, and measured per tool.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tracing::Instrument as _;

use shared::code::prepare;
use shared::model::{TenantId, ToolDefinition, ToolName};
use shared::protocol::{ErrorKind, PROTOCOL_VERSION, Permissions, RunError, RunJob, RunResult};
use shared::secrets::SecretValues;
use shared::telemetry;
use shared::time::now_ms;

use crate::app::App;
use crate::cache::CachedTool;
use crate::tools::{check_params, existing_name, not_found, queue_error, registry_error};

impl App {
    /// Runs the current version of a tool. Every failure comes back as an error result.
    pub async fn run_tool(
        &self,
        tenant: &TenantId,
        name: &str,
        params: Value,
    ) -> Result<RunResult, RunError> {
        let span = tracing::info_span!(
            "run",
            tenant = %tenant,
            tool = name,
            job_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        span.record("trace_id", telemetry::trace_id(&span));
        let started = Instant::now();
        self.metrics.in_flight.inc();
        let outcome = self
            .run_traced(tenant, name, params, &span)
            .instrument(span.clone())
            .await;
        self.metrics.in_flight.dec();
        let kind = match &outcome {
            Ok(result) => result.error_kind().map_or("ok", ErrorKind::as_str),
            Err(error) => error.kind.as_str(),
        };
        self.metrics
            .run(tenant.as_str(), name, kind, started.elapsed());
        outcome
    }

    async fn run_traced(
        &self,
        tenant: &TenantId,
        name: &str,
        params: Value,
        span: &tracing::Span,
    ) -> Result<RunResult, RunError> {
        let name = existing_name(name)?;
        let tool = self.runnable(tenant, &name).await?;
        check_params(&tool.validator, &params)?;
        let definition = &tool.definition;
        let wait = self.settings.queue_wait_ms + definition.timeout_ms + 1_000;
        let job_id = uuid::Uuid::now_v7().to_string();
        span.record("job_id", job_id.as_str());
        let _permit = self.quotas.admit(tenant).await?;
        let secrets = self.open_secrets(definition).await?;
        let now = now_ms();
        let mut job = RunJob {
            v: PROTOCOL_VERSION,
            job_id,
            tenant: tenant.clone(),
            tool: name.clone(),
            version: definition.version,
            code_hash: definition.code_hash.clone(),
            code: tool.prepared.clone(),
            params,
            permissions: Permissions {
                allowed_hosts: definition.allowed_hosts.clone(),
            },
            limits: shared::config::run_limits(definition.timeout_ms, &self.settings.sandbox),
            isolation: definition.isolation,
            secrets,
            deadline_ms: now + i64::try_from(wait).unwrap_or(i64::MAX / 2),
            enqueued_ms: now,
            trace: Default::default(),
        };
        let publish = tracing::info_span!("queue.run", job_id = %job.job_id);
        job.trace = telemetry::inject(&publish);
        let result = self
            .queue
            .run(job)
            .instrument(publish)
            .await
            .map_err(|error| queue_error(error, definition))?;
        if let Some(kind) = result.error_kind() {
            tracing::info!(outcome = kind.as_str(), "run failed");
        }
        Ok(result)
    }

    /// The values of the secrets a tool declared, opened with the gateway's secrets key.
    async fn open_secrets(&self, definition: &ToolDefinition) -> Result<SecretValues, RunError> {
        if definition.secrets.is_empty() {
            return Ok(SecretValues::default());
        }
        let Some(key) = &self.secrets_key else {
            return Err(RunError::new(
                ErrorKind::Unavailable,
                "this tool uses secrets, and this server has no secrets key configured \
                 (TOOLSMITH_SECRETS_KEY)",
            ));
        };
        let sealed = self
            .tenants
            .secrets(&definition.tenant, &definition.secrets)
            .await
            .map_err(registry_error)?;
        let mut values = SecretValues::default();
        for (name, sealed) in sealed {
            let value = key
                .open(definition.tenant.as_str(), &name, &sealed)
                .map_err(|error| {
                    tracing::error!(error = %error, secret = %name, "cannot open a secret");
                    RunError::new(ErrorKind::Unavailable, error.to_string())
                })?;
            values.0.insert(name, value);
        }
        if let Some(missing) = definition
            .secrets
            .iter()
            .find(|n| !values.0.contains_key(*n))
        {
            return Err(RunError::new(
                ErrorKind::NotFound,
                format!(
                    "secret {missing:?} is not set for this tenant; an operator sets it with \
                     `gateway secret set {} {missing}`",
                    definition.tenant
                ),
            ));
        }
        Ok(values)
    }

    /// The runnable form of a tool, from the cache or the registry.
    #[tracing::instrument(name = "registry.lookup", skip_all, fields(cache = tracing::field::Empty))]
    async fn runnable(
        &self,
        tenant: &TenantId,
        name: &ToolName,
    ) -> Result<Arc<CachedTool>, RunError> {
        let hit = self.cache.get(tenant, name);
        self.metrics.cache(hit.is_some());
        tracing::Span::current().record("cache", if hit.is_some() { "hit" } else { "miss" });
        if let Some(tool) = hit {
            return Ok(tool);
        }
        let definition = self
            .registry
            .get_tool(tenant, name)
            .await
            .map_err(registry_error)?
            .ok_or_else(|| not_found(name))?;
        let validator =
            jsonschema::draft202012::new(&definition.input_schema).map_err(|error| {
                RunError::new(
                    ErrorKind::InvalidParams,
                    format!("the tool's input_schema cannot be used: {error}"),
                )
            })?;
        let prepared = prepare(&definition.code).map_err(|error| {
            RunError::new(ErrorKind::CompileError, error.message)
                .at(error.position.line, error.position.column)
        })?;
        let tool = Arc::new(CachedTool {
            definition,
            validator,
            prepared: Arc::new(prepared),
        });
        self.cache.insert(tool.clone());
        Ok(tool)
    }
}
