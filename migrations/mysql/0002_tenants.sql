-- Tenants, their API keys (stored hashed), quotas, encrypted secrets, the audit trail, and
-- the shared counters that enforce quotas across gateway replicas.
CREATE TABLE tenants (
    id         VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    created_at BIGINT NOT NULL
) ENGINE = InnoDB;
INSERT INTO tenants (id, created_at) VALUES ('default', 0);

CREATE TABLE api_keys (
    id         VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    tenant_id  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    key_hash   CHAR(64) CHARACTER SET ascii NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT NULL,
    KEY api_keys_tenant (tenant_id),
    CONSTRAINT api_keys_tenant_fk FOREIGN KEY (tenant_id) REFERENCES tenants (id)
) ENGINE = InnoDB;

-- NULL means "the gateway's default".
CREATE TABLE quotas (
    tenant_id       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    runs_per_minute BIGINT NULL,
    concurrent_runs BIGINT NULL,
    max_tools       BIGINT NULL,
    max_code_bytes  BIGINT NULL,
    CONSTRAINT quotas_tenant_fk FOREIGN KEY (tenant_id) REFERENCES tenants (id)
) ENGINE = InnoDB;

-- AES-256-GCM; the key is never in the database. The tenant and name are the
-- associated data, so a ciphertext cannot be moved to another tenant or name.
CREATE TABLE secrets (
    tenant_id  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    name       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    nonce      VARCHAR(64) CHARACTER SET ascii NOT NULL,
    ciphertext TEXT CHARACTER SET ascii NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name),
    CONSTRAINT secrets_tenant_fk FOREIGN KEY (tenant_id) REFERENCES tenants (id)
) ENGINE = InnoDB;

CREATE TABLE audit_log (
    id        BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at        BIGINT NOT NULL,
    tenant_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    actor     VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    action    VARCHAR(32) CHARACTER SET ascii NOT NULL,
    subject   VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    version   BIGINT NULL,
    KEY audit_log_tenant (tenant_id, id)
) ENGINE = InnoDB;

CREATE TABLE run_windows (
    tenant_id    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    window_start BIGINT NOT NULL,
    runs         BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, window_start)
) ENGINE = InnoDB;

CREATE TABLE run_leases (
    job_id     VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    tenant_id  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    expires_at BIGINT NOT NULL,
    KEY run_leases_tenant (tenant_id, expires_at)
) ENGINE = InnoDB;

ALTER TABLE tool_versions ADD COLUMN secrets TEXT NOT NULL DEFAULT ('[]');
