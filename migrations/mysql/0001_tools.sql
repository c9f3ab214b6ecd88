-- Tools and their versions. Every write adds a row to tool_versions; `tools` points at the
-- newest one. Deleting a tool marks it deleted and keeps its versions; creating it again
-- continues the numbering so a version number is never reused.
CREATE TABLE tools (
    tenant_id       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    name            VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    current_version BIGINT NOT NULL,
    deleted_at      BIGINT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE tool_versions (
    tenant_id     VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    name          VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version       BIGINT NOT NULL,
    description   TEXT NOT NULL,
    code          MEDIUMTEXT NOT NULL,
    code_hash     CHAR(64) CHARACTER SET ascii NOT NULL,
    input_schema  MEDIUMTEXT NOT NULL,
    allowed_hosts TEXT NOT NULL,
    timeout_ms    BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name, version)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
