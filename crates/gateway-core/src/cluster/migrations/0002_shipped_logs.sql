-- Each instance's audit log, line for line as its local files hold it (docs/scaling.md): what
-- `audit query --database` and `audit verify --database` read. Only durable lines are shipped.
CREATE TABLE hetao_audit_lines (
    instance text NOT NULL,
    seq      bigint NOT NULL,
    line     text NOT NULL,
    PRIMARY KEY (instance, seq)
);

-- The instances that ship lines, with the audit key they announced (for information: auditors
-- verify with the public keys they hold, never with what the database says).
CREATE TABLE hetao_instances (
    instance         text PRIMARY KEY,
    audit_key_id     text NOT NULL,
    audit_public_key text NOT NULL,
    first_seen       timestamptz NOT NULL DEFAULT now(),
    last_seen        timestamptz NOT NULL DEFAULT now()
);
