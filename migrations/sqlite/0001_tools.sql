-- Tools and their versions. Every write adds a row to tool_versions; `tools` points at the
-- newest one. Deleting a tool marks it deleted and keeps its versions; creating it again
-- continues the numbering so a version number is never reused.
CREATE TABLE tools (
    tenant_id       TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    current_version INTEGER NOT NULL,
    deleted_at      INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE tool_versions (
    tenant_id     TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    description   TEXT    NOT NULL,
    code          TEXT    NOT NULL,
    code_hash     TEXT    NOT NULL,
    input_schema  TEXT    NOT NULL,
    allowed_hosts TEXT    NOT NULL,
    timeout_ms    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name, version)
);
