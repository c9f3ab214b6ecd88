//! The rmcp server handler. One instance serves one 2025-11-25 session (or one stateless
//! 2026-07-28 request); the tenant comes from the authenticated HTTP request, or is fixed
//! for stdio.

use std::sync::{Arc, OnceLock};

use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, Implementation,
    InitializeRequestParams, InitializeResult, JsonObject, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, SubscriptionFilter, Tool,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use shared::model::{TenantId, ToolSummary};
use shared::telemetry;
use tracing::Instrument as _;

use super::meta;
use super::result::{error_result, run_result};
use crate::app::App;
use crate::caller::Caller;

const INSTRUCTIONS: &str = "Toolsmith lets you extend yourself with tools. When you lack a \
capability, write it: create_tool stores JavaScript/TypeScript code with a JSON Schema for its \
arguments, and the new tool is callable at once by its own name (or via run_tool). When a \
result is wrong, read the code with get_tool and fix it with update_tool. Errors name their \
kind and, for code errors, the line and column.";

/// Serves MCP for one session or request.
#[derive(Clone)]
pub struct McpHandler {
    app: Arc<App>,
    fixed_caller: Option<Caller>,
    session_tenant: Arc<OnceLock<TenantId>>,
}

impl std::fmt::Debug for McpHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpHandler")
            .field("tenant", &self.session_tenant.get())
            .finish()
    }
}

impl McpHandler {
    /// A handler whose tenant comes from each authenticated HTTP request.
    pub fn http(app: Arc<App>) -> Self {
        Self {
            app,
            fixed_caller: None,
            session_tenant: Arc::new(OnceLock::new()),
        }
    }

    /// A handler for one local tenant (stdio).
    pub fn local(app: Arc<App>, caller: Caller) -> Self {
        Self {
            app,
            fixed_caller: Some(caller),
            session_tenant: Arc::new(OnceLock::new()),
        }
    }

    /// The caller. A session stays with the tenant that opened it.
    fn caller(&self, extensions: &rmcp::model::Extensions) -> Result<Caller, McpError> {
        let caller = match &self.fixed_caller {
            Some(caller) => caller.clone(),
            None => extensions
                .get::<http::request::Parts>()
                .and_then(|parts| parts.extensions.get::<Caller>())
                .cloned()
                .ok_or_else(|| McpError::internal_error("request carries no caller", None))?,
        };
        match self.session_tenant.get() {
            Some(session) if *session != caller.tenant => Err(McpError::invalid_request(
                "this session belongs to another API key's tenant",
                None,
            )),
            _ => Ok(caller),
        }
    }

    fn tenant(&self, extensions: &rmcp::model::Extensions) -> Result<TenantId, McpError> {
        self.caller(extensions).map(|caller| caller.tenant)
    }
}

impl ServerHandler for McpHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("toolsmith", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        let initialized = self.tenant(&context.extensions).and_then(|tenant| {
            let _ = self.session_tenant.set(tenant.clone());
            context.peer.set_peer_info(request.clone());
            let result = self.negotiate_initialize(&request)?;
            // Registered here rather than on `notifications/initialized`: with sessions
            // shared between replicas, that notification may reach another replica than
            // the one holding the client's notification stream.
            self.app.listeners.add(tenant, context.peer.clone());
            Ok(result)
        });
        self.app.metrics.mcp(
            "initialize",
            if initialized.is_ok() { "ok" } else { "error" },
        );
        initialized
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let tenant = self.tenant(&context.request_context().extensions);
        self.app.metrics.mcp(
            "subscriptions/listen",
            if tenant.is_ok() { "ok" } else { "error" },
        );
        let tenant = tenant?;
        if context.accepted().tools_list_changed != Some(true) {
            context.cancelled().await;
            return Ok(());
        }
        let mut events = self.app.bus.subscribe();
        loop {
            let relevant = tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => event.tenant == tenant,
                    Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => return Ok(()),
                },
                () = context.cancelled() => return Ok(()),
            };
            if relevant && context.sink().notify_tool_list_changed().await.is_err() {
                return Ok(());
            }
        }
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let listed = self.list(request, context).await;
        self.app
            .metrics
            .mcp("tools/list", if listed.is_ok() { "ok" } else { "error" });
        listed
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let _in_flight = self.app.drain.enter();
        let span = tracing::info_span!("mcp.tools/call", tool = %request.name);
        // Continue the client's trace when it sends one (SEP-414 `_meta.traceparent`).
        if let Some(traceparent) = context.meta.get_traceparent() {
            let mut carrier = std::collections::BTreeMap::new();
            carrier.insert("traceparent".to_owned(), traceparent.to_owned());
            if let Some(state) = context.meta.get_tracestate() {
                carrier.insert("tracestate".to_owned(), state.to_owned());
            }
            telemetry::adopt(&span, &carrier);
        }
        let called = self.call(request, context).instrument(span).await;
        let status = match &called {
            Ok(result) if result.is_error == Some(true) => "tool_error",
            Ok(_) => "ok",
            Err(_) => "error",
        };
        self.app.metrics.mcp("tools/call", status);
        called.map(Into::into)
    }
}

impl McpHandler {
    async fn list(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let tenant = self.tenant(&context.extensions)?;
        let cursor = request.and_then(|r| r.cursor);
        let mut tools = if cursor.is_none() {
            meta::tools(&self.app.settings)
        } else {
            Vec::new()
        };
        let page = self
            .app
            .list_tools(&tenant, None, cursor.as_deref())
            .await
            .map_err(|error| McpError::invalid_params(error.message, None))?;
        tools.extend(page.items.iter().map(first_class));
        let mut result = ListToolsResult::with_all_items(tools);
        result.next_cursor = page.next_cursor;
        // Tool lists change at runtime: clients should re-fetch (or listen for changes).
        result.ttl_ms = Some(0);
        result.cache_scope = Some(CacheScope::Private);
        Ok(result)
    }

    async fn call(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&context.extensions)?;
        let args = Value::Object(request.arguments.unwrap_or_default());
        if let Some(result) = meta::call(&self.app, &caller, &request.name, args.clone()).await {
            return Ok(result);
        }
        Ok(
            match self.app.run_tool(&caller.tenant, &request.name, args).await {
                Ok(result) => run_result(result),
                Err(error) => error_result(&error, &[], false),
            },
        )
    }
}

/// A stored tool as a first-class MCP tool.
fn first_class(summary: &ToolSummary) -> Tool {
    let schema = match &summary.input_schema {
        Value::Object(map) => map.clone(),
        _ => JsonObject::new(),
    };
    let mut meta = rmcp::model::MetaObject::new();
    meta.0
        .insert("io.toolsmith/version".into(), Value::from(summary.version));
    Tool::new(
        summary.name.to_string(),
        summary.description.clone(),
        Arc::new(schema),
    )
    .with_meta(meta)
}
