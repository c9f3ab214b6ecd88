-- MCP 2025-11-25 sessions, so that any gateway replica can serve a session another one
-- opened (and a restarted gateway keeps its sessions): the client's initialize
-- parameters, bound to the tenant that opened the session.
CREATE TABLE mcp_sessions (
    id         VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    tenant_id  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    state      MEDIUMTEXT NOT NULL,
    created_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL,
    KEY mcp_sessions_seen (seen_at)
) ENGINE = InnoDB;
