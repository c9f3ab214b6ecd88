-- MCP 2025-11-25 sessions, so that any gateway replica can serve a session another one
-- opened (and a restarted gateway keeps its sessions): the client's initialize
-- parameters, bound to the tenant that opened the session.
CREATE TABLE mcp_sessions (
    id         TEXT    NOT NULL PRIMARY KEY,
    tenant_id  TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL
);
CREATE INDEX mcp_sessions_seen ON mcp_sessions (seen_at);
