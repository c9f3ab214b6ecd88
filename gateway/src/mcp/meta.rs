//! The meta-tools an agent uses to list, read, create, update, delete and run its tools:
//! their schemas, descriptions an agent can act on without docs, and their dispatch.

use std::sync::Arc;

use rmcp::model::{CallToolResult, JsonObject, Tool, ToolAnnotations};
use serde::Deserialize;
use serde_json::{Value, json};

use shared::model::{TenantId, ToolDefinition};
use shared::protocol::{ErrorKind, RunError};
use shared::time::rfc3339;

use super::result::{error_result, run_result};
use crate::app::{App, Settings};
use crate::caller::Caller;
use crate::tools::{ToolChanges, ToolDraft};

/// Names of the meta-tools, in the order `tools/list` shows them.
pub const META_TOOL_NAMES: [&str; 6] = [
    "list_tools",
    "get_tool",
    "create_tool",
    "update_tool",
    "delete_tool",
    "run_tool",
];

const CODE_GUIDE: &str = "`code` is JavaScript or TypeScript run by Deno, in one of two forms: \
(1) the body of an async function, where `context` holds the call's arguments — use `await` \
freely and `return` any JSON value, e.g. `const r = await fetch(`https://api.example.com/${context.city}`); \
return await r.json();` — or (2) a module with `export default async function (context) { … }`. \
`console.log` output is returned beside the result, never mixed into it. The code may use \
fetch() and WebSocket to public internet hosts and `npm:`/`jsr:` imports; it cannot read or \
write files, read environment variables, start processes or reach private networks.";

/// The meta-tools with their schemas.
pub fn tools(settings: &Settings) -> Vec<Tool> {
    let timeouts = &settings.timeouts;
    vec![
        Tool::new(
            "list_tools",
            "List the tools stored on this server: name, description, version and when it was \
             last updated. Results come in pages: when the answer has `next_cursor`, pass it as \
             `cursor` to get the next page. `query` keeps only tools whose name or description \
             contains it (case-insensitive).",
            schema(json!({
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "Substring to look for in names and descriptions."},
                    "cursor": {"type": "string", "description": "`next_cursor` from the previous page."}
                },
                "additionalProperties": false
            })),
        )
        .annotate(ToolAnnotations::new().read_only(true)),
        Tool::new(
            "get_tool",
            "Get a stored tool's whole definition: code, input_schema, description, version, \
             allowed_hosts, timeout_ms and timestamps. Read it before update_tool to see the \
             code you are changing.",
            schema(json!({
                "type": "object",
                "properties": {"name": {"type": "string", "description": "The tool's name."}},
                "required": ["name"],
                "additionalProperties": false
            })),
        )
        .annotate(ToolAnnotations::new().read_only(true)),
        Tool::new(
            "create_tool",
            format!(
                "Create a new tool. It can be called at once by its own name (it appears in \
                 tools/list) or through run_tool. {CODE_GUIDE} `input_schema` is a JSON Schema \
                 (2020-12) object schema for the arguments; calls that do not match it are \
                 refused before the code runs (default: any object). `allowed_hosts` narrows \
                 network access to the listed hosts. `timeout_ms` bounds one run's wall-clock \
                 time (default {}, at most {}). `secrets` names tenant secrets the code receives \
                 as `context.secrets.NAME`. Code that does not parse is refused with the \
                 line and column of the problem, and nothing is stored.",
                timeouts.default_timeout_ms, timeouts.max_timeout_ms
            ),
            schema(json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$", "description": "Lowercase letters, digits and '_', starting with a letter."},
                    "description": {"type": "string", "description": "What the tool does and returns, for whoever calls it."},
                    "code": {"type": "string", "description": "The tool's JavaScript/TypeScript code."},
                    "input_schema": {"type": "object", "description": "JSON Schema for the arguments, e.g. {\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"]}."},
                    "allowed_hosts": {"type": "array", "items": {"type": "string"}, "description": "Hosts (optionally host:port) the code may connect to; omit to allow any public host."},
                    "timeout_ms": {"type": "integer", "minimum": 1, "maximum": timeouts.max_timeout_ms, "description": "Wall-clock limit of one run in milliseconds."},
                    "secrets": {"type": "array", "items": {"type": "string"}, "description": "Names of tenant secrets the code receives as context.secrets.NAME (values are set by an operator and redacted from results)."},
                    "isolation": {"type": "string", "enum": ["warm", "strict"], "description": "warm (default): runs reuse a process kept for this tool version, so module-level state may persist between runs; strict: a fresh process for every run."}
                },
                "required": ["name", "description", "code"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "update_tool",
            "Change a stored tool. Only the fields you pass change; the others keep their \
             value. This stores a new version (earlier versions are kept) that every client \
             uses from the next call on. Use it to fix a tool whose result was wrong: \
             get_tool shows the current code. Code that does not parse is refused with its \
             line and column, and the tool stays as it was.",
            schema(json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": "The tool to change."},
                    "description": {"type": "string"},
                    "code": {"type": "string"},
                    "input_schema": {"type": "object"},
                    "allowed_hosts": {"type": "array", "items": {"type": "string"}},
                    "timeout_ms": {"type": "integer", "minimum": 1, "maximum": timeouts.max_timeout_ms},
                    "secrets": {"type": "array", "items": {"type": "string"}},
                    "isolation": {"type": "string", "enum": ["warm", "strict"]}
                },
                "required": ["name"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "delete_tool",
            "Delete a stored tool. It leaves tools/list at once, and calling it afterwards \
             answers not_found.",
            schema(json!({
                "type": "object",
                "properties": {"name": {"type": "string", "description": "The tool to delete."}},
                "required": ["name"],
                "additionalProperties": false
            })),
        )
        .annotate(ToolAnnotations::new().destructive(true)),
        Tool::new(
            "run_tool",
            "Run a stored tool with `params` as its `context`: the same as calling the tool by \
             its own name, for clients that cached an older tool list. Returns the tool's \
             return value (as structured content and as text) with console output beside it, \
             or an error with `kind` (invalid_params, compile_error, runtime_error, timeout, \
             memory_limit, output_limit, permission_denied, not_found, quota_exceeded, \
             unavailable), `message`, and for code errors the `line` and `column` in the \
             tool's code.",
            schema(json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": "The tool to run."},
                    "params": {"type": "object", "description": "Arguments, matching the tool's input_schema."}
                },
                "required": ["name"],
                "additionalProperties": false
            })),
        )
        .annotate(ToolAnnotations::new().open_world(true)),
    ]
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameArgs {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunArgs {
    name: String,
    #[serde(default)]
    params: Option<Value>,
}

/// Runs a meta-tool; `None` when `name` is not one.
pub async fn call(app: &App, caller: &Caller, name: &str, args: Value) -> Option<CallToolResult> {
    let tenant = &caller.tenant;
    let outcome = match name {
        "list_tools" => list(app, tenant, args).await,
        "get_tool" => get(app, tenant, args).await,
        "create_tool" => create(app, caller, args).await,
        "update_tool" => update(app, caller, args).await,
        "delete_tool" => delete(app, caller, args).await,
        "run_tool" => return Some(run(app, tenant, args).await),
        _ => return None,
    };
    Some(outcome.unwrap_or_else(|error| error_result(&error, &[], false)))
}

fn parse<T: serde::de::DeserializeOwned>(tool: &str, args: Value) -> Result<T, RunError> {
    serde_json::from_value(args).map_err(|error| {
        RunError::new(
            ErrorKind::InvalidParams,
            format!("invalid arguments for {tool}: {error}"),
        )
    })
}

async fn list(app: &App, tenant: &TenantId, args: Value) -> Result<CallToolResult, RunError> {
    let args: ListArgs = parse("list_tools", args)?;
    let page = app
        .list_tools(tenant, args.query.as_deref(), args.cursor.as_deref())
        .await?;
    let tools: Vec<Value> = page
        .items
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "description": t.description,
                "version": t.version,
                "updated_at": rfc3339(t.updated_at),
            })
        })
        .collect();
    let mut body = json!({ "tools": tools });
    if let Some(cursor) = page.next_cursor {
        body["next_cursor"] = json!(cursor);
    }
    Ok(CallToolResult::structured(body))
}

async fn get(app: &App, tenant: &TenantId, args: Value) -> Result<CallToolResult, RunError> {
    let args: NameArgs = parse("get_tool", args)?;
    let tool = app.get_tool(tenant, &args.name).await?;
    Ok(CallToolResult::structured(definition_json(&tool)))
}

async fn create(app: &App, caller: &Caller, args: Value) -> Result<CallToolResult, RunError> {
    let draft: ToolDraft = parse("create_tool", args)?;
    let tool = app.create_tool(caller, draft).await?;
    Ok(CallToolResult::structured(json!({
        "name": tool.name,
        "version": tool.version,
        "created_at": rfc3339(tool.updated_at),
        "message": format!(
            "created {} (version {}); call it by name or with run_tool",
            tool.name, tool.version
        ),
    })))
}

async fn update(app: &App, caller: &Caller, args: Value) -> Result<CallToolResult, RunError> {
    let changes: ToolChanges = parse("update_tool", args)?;
    let tool = app.update_tool(caller, changes).await?;
    Ok(CallToolResult::structured(json!({
        "name": tool.name,
        "version": tool.version,
        "updated_at": rfc3339(tool.updated_at),
        "message": format!("updated {} to version {}", tool.name, tool.version),
    })))
}

async fn delete(app: &App, caller: &Caller, args: Value) -> Result<CallToolResult, RunError> {
    let args: NameArgs = parse("delete_tool", args)?;
    let version = app.delete_tool(caller, &args.name).await?;
    Ok(CallToolResult::structured(json!({
        "name": args.name,
        "deleted": true,
        "version": version,
    })))
}

async fn run(app: &App, tenant: &TenantId, args: Value) -> CallToolResult {
    let args: RunArgs = match parse("run_tool", args) {
        Ok(args) => args,
        Err(error) => return error_result(&error, &[], false),
    };
    let params = args.params.unwrap_or_else(|| json!({}));
    match app.run_tool(tenant, &args.name, params).await {
        Ok(result) => run_result(result),
        Err(error) => error_result(&error, &[], false),
    }
}

/// A definition as `get_tool` shows it.
pub fn definition_json(tool: &ToolDefinition) -> Value {
    json!({
        "name": tool.name,
        "description": tool.description,
        "version": tool.version,
        "code": tool.code,
        "input_schema": tool.input_schema,
        "allowed_hosts": tool.allowed_hosts,
        "timeout_ms": tool.timeout_ms,
        "secrets": tool.secrets,
        "isolation": tool.isolation,
        "created_at": rfc3339(tool.created_at),
        "updated_at": rfc3339(tool.updated_at),
    })
}
