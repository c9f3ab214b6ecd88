//! The job protocol between gateways and workers. A job carries everything a run needs, so a
//! worker holds no database credentials. Both envelopes are versioned JSON (`"v": 1`): a
//! worker refuses a version it does not know instead of guessing, so gateways and workers
//! of two releases can share a queue during a rollout.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::code::PreparedCode;
use crate::model::{Isolation, TenantId, ToolName};
use crate::secrets::SecretValues;

/// The envelope version this build writes and reads.
pub const PROTOCOL_VERSION: u32 = 1;

/// One run of one tool version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunJob {
    pub v: u32,
    /// Unique per run; the idempotency key for results.
    pub job_id: String,
    pub tenant: TenantId,
    pub tool: ToolName,
    pub version: i64,
    pub code_hash: String,
    /// Shared with the gateway's cache: building a job copies no code.
    pub code: Arc<PreparedCode>,
    /// The tool's `context`.
    pub params: Value,
    pub permissions: Permissions,
    pub limits: Limits,
    /// Warm (a process kept per tool version) or strict (a fresh process per run).
    #[serde(default)]
    pub isolation: Isolation,
    /// Secret values the tool declared, by name (their `Debug` shows names only).
    #[serde(default, skip_serializing_if = "SecretValues::is_empty")]
    pub secrets: SecretValues,
    /// Unix ms after which nobody waits for the result; the worker does not start it later.
    pub deadline_ms: i64,
    /// Unix ms when the job was put on the queue (for queue-wait metrics).
    #[serde(default)]
    pub enqueued_ms: i64,
    /// W3C trace context (`traceparent`, `tracestate`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trace: BTreeMap<String, String>,
}

/// What the run may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    /// When not empty, the only hosts the tool may connect to (public addresses only still).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

/// Hard limits for one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub timeout_ms: u64,
    pub memory_mb: u64,
    pub output_bytes: u64,
}

/// The closed set of ways a run fails. The same names label the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidParams,
    CompileError,
    RuntimeError,
    Timeout,
    MemoryLimit,
    OutputLimit,
    PermissionDenied,
    NotFound,
    QuotaExceeded,
    Unavailable,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::InvalidParams,
        ErrorKind::CompileError,
        ErrorKind::RuntimeError,
        ErrorKind::Timeout,
        ErrorKind::MemoryLimit,
        ErrorKind::OutputLimit,
        ErrorKind::PermissionDenied,
        ErrorKind::NotFound,
        ErrorKind::QuotaExceeded,
        ErrorKind::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidParams => "invalid_params",
            ErrorKind::CompileError => "compile_error",
            ErrorKind::RuntimeError => "runtime_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::MemoryLimit => "memory_limit",
            ErrorKind::OutputLimit => "output_limit",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed run as the agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
}

impl RunError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            line: None,
            column: None,
        }
    }

    pub fn at(mut self, line: u32, column: u32) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

/// One line the tool wrote with `console.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub level: String,
    pub text: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Ok { value: Value },
    Error { error: RunError },
}

/// What comes back for a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub v: u32,
    pub job_id: String,
    pub outcome: Outcome,
    /// Console output, capped; never part of the value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogLine>,
    /// True when `logs` was cut at the cap.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub logs_truncated: bool,
    /// Time spent running in the sandbox.
    #[serde(default)]
    pub duration_ms: u64,
}

impl RunResult {
    pub fn error(job_id: impl Into<String>, error: RunError) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            job_id: job_id.into(),
            outcome: Outcome::Error { error },
            logs: Vec::new(),
            logs_truncated: false,
            duration_ms: 0,
        }
    }

    pub fn error_kind(&self) -> Option<ErrorKind> {
        match &self.outcome {
            Outcome::Ok { .. } => None,
            Outcome::Error { error } => Some(error.kind),
        }
    }
}

/// A job or result envelope could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("envelope version {found} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version { found: u64 },
}

/// Reads a job, refusing envelope versions this build does not speak.
pub fn decode_job(bytes: &[u8]) -> Result<RunJob, EnvelopeError> {
    check_version(bytes)?;
    Ok(serde_json::from_slice(bytes)?)
}

/// Reads a result, refusing envelope versions this build does not speak.
pub fn decode_result(bytes: &[u8]) -> Result<RunResult, EnvelopeError> {
    check_version(bytes)?;
    Ok(serde_json::from_slice(bytes)?)
}

fn check_version(bytes: &[u8]) -> Result<(), EnvelopeError> {
    #[derive(Deserialize)]
    struct Versioned {
        v: u64,
    }
    let Versioned { v } = serde_json::from_slice(bytes)?;
    if v != u64::from(PROTOCOL_VERSION) {
        return Err(EnvelopeError::Version { found: v });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::prepare;
    use serde_json::json;

    fn job() -> RunJob {
        RunJob {
            v: PROTOCOL_VERSION,
            job_id: "j1".into(),
            tenant: TenantId::default_tenant(),
            tool: ToolName::parse("echo").unwrap(),
            version: 3,
            code_hash: "abc".into(),
            code: Arc::new(prepare("return context;").unwrap()),
            params: json!({"a": 1}),
            permissions: Permissions::default(),
            limits: Limits {
                timeout_ms: 1000,
                memory_mb: 128,
                output_bytes: 1 << 20,
            },
            isolation: Isolation::Warm,
            secrets: SecretValues::default(),
            deadline_ms: 42,
            enqueued_ms: 40,
            trace: BTreeMap::new(),
        }
    }

    #[test]
    fn jobs_round_trip() {
        let bytes = serde_json::to_vec(&job()).unwrap();
        assert_eq!(decode_job(&bytes).unwrap(), job());
    }

    #[test]
    fn unknown_envelope_versions_are_refused() {
        let mut value = serde_json::to_value(job()).unwrap();
        value["v"] = json!(2);
        let error = decode_job(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(matches!(error, EnvelopeError::Version { found: 2 }));
    }

    /// Within one envelope version a newer release only adds fields; an older reader
    /// ignores them (the rule mixed-version rollouts rely on).
    #[test]
    fn fields_a_newer_release_adds_are_ignored() {
        let mut value = serde_json::to_value(job()).unwrap();
        value["priority"] = json!("high");
        value["limits"]["gpu"] = json!(0);
        assert_eq!(
            decode_job(&serde_json::to_vec(&value).unwrap()).unwrap(),
            job()
        );
        let mut result = serde_json::to_value(RunResult::error(
            "j1",
            RunError::new(ErrorKind::Timeout, "slow"),
        ))
        .unwrap();
        result["worker_version"] = json!("9.9.9");
        let decoded = decode_result(&serde_json::to_vec(&result).unwrap()).unwrap();
        assert_eq!(decoded.error_kind(), Some(ErrorKind::Timeout));
    }

    #[test]
    fn error_kinds_serialize_as_the_documented_names() {
        for kind in ErrorKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                json!(kind.as_str()),
                "{kind:?}"
            );
        }
    }
}
