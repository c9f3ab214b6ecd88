-- Tenants, their API keys (stored hashed), quotas, encrypted secrets, the audit trail, and
-- the shared counters that enforce quotas across gateway replicas.
CREATE TABLE tenants (
    id         TEXT    NOT NULL PRIMARY KEY,
    created_at INTEGER NOT NULL
);
INSERT INTO tenants (id, created_at) VALUES ('default', 0);

CREATE TABLE api_keys (
    id         TEXT    NOT NULL PRIMARY KEY,
    tenant_id  TEXT    NOT NULL REFERENCES tenants (id),
    key_hash   TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- NULL means "the gateway's default".
CREATE TABLE quotas (
    tenant_id       TEXT NOT NULL PRIMARY KEY REFERENCES tenants (id),
    runs_per_minute INTEGER,
    concurrent_runs INTEGER,
    max_tools       INTEGER,
    max_code_bytes  INTEGER
);

-- AES-256-GCM; the key is never in the database. The tenant and name are the
-- associated data, so a ciphertext cannot be moved to another tenant or name.
CREATE TABLE secrets (
    tenant_id  TEXT    NOT NULL REFERENCES tenants (id),
    name       TEXT    NOT NULL,
    nonce      TEXT    NOT NULL,
    ciphertext TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    tenant_id TEXT    NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    subject   TEXT    NOT NULL,
    version   INTEGER
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);

CREATE TABLE run_windows (
    tenant_id    TEXT    NOT NULL,
    window_start INTEGER NOT NULL,
    runs         INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, window_start)
);

CREATE TABLE run_leases (
    job_id     TEXT    NOT NULL PRIMARY KEY,
    tenant_id  TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX run_leases_tenant ON run_leases (tenant_id, expires_at);

ALTER TABLE tool_versions ADD COLUMN secrets TEXT NOT NULL DEFAULT '[]';
