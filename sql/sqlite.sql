CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL, 
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

-- Running upgrade  -> 0001

CREATE TABLE audit_head (
    id INTEGER NOT NULL, 
    seq BIGINT NOT NULL, 
    hash VARCHAR(64) NOT NULL, 
    CONSTRAINT pk_audit_head PRIMARY KEY (id)
);

INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_log (
    seq BIGINT NOT NULL, 
    at DATETIME NOT NULL, 
    node VARCHAR(64) NOT NULL, 
    os_user VARCHAR(64) NOT NULL, 
    actor VARCHAR(64) NOT NULL, 
    action VARCHAR(64) NOT NULL, 
    subject_type VARCHAR(16) NOT NULL, 
    subject_id VARCHAR(64), 
    details TEXT NOT NULL, 
    prev_hash VARCHAR(64) NOT NULL, 
    hash VARCHAR(64) NOT NULL, 
    CONSTRAINT pk_audit_log PRIMARY KEY (seq), 
    CONSTRAINT uq_audit_log_hash UNIQUE (hash), 
    CONSTRAINT uq_audit_log_prev_hash UNIQUE (prev_hash)
);

CREATE INDEX ix_audit_log_action ON audit_log (action);

CREATE INDEX ix_audit_log_subject_id ON audit_log (subject_id);

CREATE TABLE calls (
    id VARCHAR(36) NOT NULL, 
    pbx VARCHAR(16) NOT NULL, 
    node VARCHAR(64) NOT NULL, 
    pbx_call_id VARCHAR(64) NOT NULL, 
    campaign VARCHAR(64) NOT NULL, 
    direction VARCHAR(8) NOT NULL, 
    agent VARCHAR(64), 
    number_kind VARCHAR(12) NOT NULL, 
    number_key VARCHAR(64), 
    number_enc BLOB, 
    consent_status VARCHAR(16), 
    started_at DATETIME NOT NULL, 
    ended_at DATETIME, 
    CONSTRAINT pk_calls PRIMARY KEY (id), 
    CONSTRAINT uq_calls_node_pbx_pbx_call_id UNIQUE (node, pbx, pbx_call_id)
);

CREATE INDEX ix_calls_number_key ON calls (number_key);

CREATE TABLE consent_evidence (
    id VARCHAR(36) NOT NULL, 
    call_id VARCHAR(36) NOT NULL, 
    kind VARCHAR(8) NOT NULL, 
    status VARCHAR(16) NOT NULL, 
    method VARCHAR(32) NOT NULL, 
    actor VARCHAR(64), 
    legal_basis VARCHAR(32) NOT NULL, 
    prompt_id VARCHAR(32), 
    prompt_sha256 VARCHAR(64), 
    language VARCHAR(16), 
    digits JSON NOT NULL, 
    prompts JSON NOT NULL, 
    attempts INTEGER NOT NULL, 
    policy JSON NOT NULL, 
    pbx_call_id VARCHAR(64), 
    pbx_channel_id VARCHAR(128), 
    decided_at DATETIME NOT NULL, 
    CONSTRAINT pk_consent_evidence PRIMARY KEY (id), 
    CONSTRAINT fk_consent_evidence_call_id_calls FOREIGN KEY(call_id) REFERENCES calls (id)
);

CREATE INDEX ix_consent_evidence_call_id ON consent_evidence (call_id);

CREATE UNIQUE INDEX uq_consent_evidence_one_decision ON consent_evidence (call_id) WHERE kind = 'decision';

CREATE TABLE recordings (
    id VARCHAR(36) NOT NULL, 
    call_id VARCHAR(36) NOT NULL, 
    state VARCHAR(12) NOT NULL, 
    spool_path VARCHAR(512) NOT NULL, 
    format VARCHAR(8) NOT NULL, 
    sample_rate INTEGER, 
    channels INTEGER NOT NULL, 
    pbx_ref VARCHAR(128), 
    pbx_channel VARCHAR(128), 
    retention_category VARCHAR(32) NOT NULL, 
    started_at DATETIME NOT NULL, 
    closed_at DATETIME, 
    duration_ms BIGINT, 
    plaintext_size BIGINT, 
    plaintext_sha256 VARCHAR(64), 
    ciphertext_path VARCHAR(512), 
    ciphertext_size BIGINT, 
    ciphertext_sha256 VARCHAR(64), 
    key_epoch VARCHAR(32), 
    encrypted_at DATETIME, 
    expires_at DATETIME, 
    legal_hold BOOLEAN NOT NULL, 
    hold_reason TEXT, 
    discarded_at DATETIME, 
    discard_reason VARCHAR(64), 
    purged_at DATETIME, 
    last_error TEXT, 
    CONSTRAINT pk_recordings PRIMARY KEY (id), 
    CONSTRAINT fk_recordings_call_id_calls FOREIGN KEY(call_id) REFERENCES calls (id)
);

CREATE INDEX ix_recordings_call_id ON recordings (call_id);

CREATE INDEX ix_recordings_expires_at ON recordings (expires_at);

CREATE INDEX ix_recordings_key_epoch ON recordings (key_epoch);

CREATE INDEX ix_recordings_state ON recordings (state);

INSERT INTO alembic_version (version_num) VALUES ('0001') RETURNING version_num;

-- Running upgrade 0001 -> 0002

CREATE TABLE key_epochs (
    id VARCHAR(32) NOT NULL, 
    suite INTEGER NOT NULL, 
    public_key BLOB NOT NULL, 
    fingerprint VARCHAR(64) NOT NULL, 
    expires_from DATETIME NOT NULL, 
    expires_until DATETIME NOT NULL, 
    created_at DATETIME NOT NULL, 
    destroyed_at DATETIME, 
    CONSTRAINT pk_key_epochs PRIMARY KEY (id)
);

CREATE INDEX ix_key_epochs_expires_from ON key_epochs (expires_from);

UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001';

-- Running upgrade 0002 -> 0003

ALTER TABLE key_epochs ADD COLUMN purpose VARCHAR(8) DEFAULT 'expiry' NOT NULL;

ALTER TABLE recordings ADD COLUMN purge_reason VARCHAR(32);

ALTER TABLE recordings ADD COLUMN hold_key VARCHAR(32);

CREATE INDEX ix_recordings_state_expires_at ON recordings (state, expires_at);

DROP INDEX ix_recordings_state;

UPDATE alembic_version SET version_num='0003' WHERE alembic_version.version_num = '0002';

-- Running upgrade 0003 -> 0004

CREATE TABLE users (
    id INTEGER NOT NULL, 
    name VARCHAR(64) NOT NULL, 
    role VARCHAR(16) NOT NULL, 
    password_hash VARCHAR(255), 
    totp_secret VARCHAR(64), 
    disabled BOOLEAN NOT NULL, 
    failed_logins INTEGER NOT NULL, 
    locked_until DATETIME, 
    created_at DATETIME NOT NULL, 
    password_changed_at DATETIME, 
    last_login_at DATETIME, 
    CONSTRAINT pk_users PRIMARY KEY (id), 
    CONSTRAINT uq_users_name UNIQUE (name)
);

CREATE TABLE web_sessions (
    id_hash VARCHAR(64) NOT NULL, 
    user_id INTEGER NOT NULL, 
    csrf_token VARCHAR(64) NOT NULL, 
    address VARCHAR(64), 
    created_at DATETIME NOT NULL, 
    last_seen_at DATETIME NOT NULL, 
    idle_expires_at DATETIME NOT NULL, 
    absolute_expires_at DATETIME NOT NULL, 
    revoked_at DATETIME, 
    CONSTRAINT pk_web_sessions PRIMARY KEY (id_hash), 
    CONSTRAINT fk_web_sessions_user_id_users FOREIGN KEY(user_id) REFERENCES users (id)
);

CREATE INDEX ix_web_sessions_user_id ON web_sessions (user_id);

CREATE TABLE api_tokens (
    id INTEGER NOT NULL, 
    token_hash VARCHAR(64) NOT NULL, 
    user_id INTEGER NOT NULL, 
    label VARCHAR(64) NOT NULL, 
    created_at DATETIME NOT NULL, 
    expires_at DATETIME NOT NULL, 
    last_used_at DATETIME, 
    revoked_at DATETIME, 
    CONSTRAINT pk_api_tokens PRIMARY KEY (id), 
    CONSTRAINT fk_api_tokens_user_id_users FOREIGN KEY(user_id) REFERENCES users (id), 
    CONSTRAINT uq_api_tokens_token_hash UNIQUE (token_hash)
);

CREATE INDEX ix_api_tokens_user_id ON api_tokens (user_id);

CREATE TABLE share_links (
    id INTEGER NOT NULL, 
    token_hash VARCHAR(64) NOT NULL, 
    recording_id VARCHAR(36) NOT NULL, 
    created_by INTEGER NOT NULL, 
    created_at DATETIME NOT NULL, 
    expires_at DATETIME NOT NULL, 
    max_plays INTEGER, 
    plays_used INTEGER NOT NULL, 
    revoked_at DATETIME, 
    CONSTRAINT pk_share_links PRIMARY KEY (id), 
    CONSTRAINT fk_share_links_created_by_users FOREIGN KEY(created_by) REFERENCES users (id), 
    CONSTRAINT fk_share_links_recording_id_recordings FOREIGN KEY(recording_id) REFERENCES recordings (id), 
    CONSTRAINT uq_share_links_token_hash UNIQUE (token_hash)
);

CREATE INDEX ix_share_links_recording_id ON share_links (recording_id);

UPDATE alembic_version SET version_num='0004' WHERE alembic_version.version_num = '0003';

-- Running upgrade 0004 -> 0005

CREATE INDEX ix_calls_started_at_id ON calls (started_at, id);

UPDATE alembic_version SET version_num='0005' WHERE alembic_version.version_num = '0004';

-- Running upgrade 0005 -> 0006

CREATE TABLE share_tickets (
    ticket_hash VARCHAR(64) NOT NULL, 
    link_id INTEGER NOT NULL, 
    expires_at DATETIME NOT NULL, 
    CONSTRAINT pk_share_tickets PRIMARY KEY (ticket_hash), 
    CONSTRAINT fk_share_tickets_link_id_share_links FOREIGN KEY(link_id) REFERENCES share_links (id)
);

CREATE INDEX ix_share_tickets_link_id ON share_tickets (link_id);

CREATE INDEX ix_share_tickets_expires_at ON share_tickets (expires_at);

CREATE TABLE login_failures (
    id INTEGER NOT NULL, 
    address VARCHAR(64) NOT NULL, 
    at DATETIME NOT NULL, 
    CONSTRAINT pk_login_failures PRIMARY KEY (id)
);

CREATE INDEX ix_login_failures_at ON login_failures (at);

CREATE INDEX ix_login_failures_address_at ON login_failures (address, at);

UPDATE alembic_version SET version_num='0006' WHERE alembic_version.version_num = '0005';

-- Running upgrade 0006 -> 0007

CREATE INDEX ix_audit_log_person_actor ON audit_log (actor, seq) WHERE actor NOT IN ('callconsent', 'retention');

UPDATE alembic_version SET version_num='0007' WHERE alembic_version.version_num = '0006';

-- Running upgrade 0007 -> 0008

CREATE INDEX ix_audit_log_retention ON audit_log (seq) WHERE actor = 'retention';

UPDATE alembic_version SET version_num='0008' WHERE alembic_version.version_num = '0007';

-- Running upgrade 0008 -> 0009

ALTER TABLE users ADD COLUMN totp_last_step INTEGER;

UPDATE alembic_version SET version_num='0009' WHERE alembic_version.version_num = '0008';

