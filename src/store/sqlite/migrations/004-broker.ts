import type { Migration } from "./types.js";

/**
 * Container instances, their one-time bootstrap tokens (SHA-256 only, never the
 * token) and the credentials issued to them: identity certificates (the PKI keeps
 * the certificate itself) and JWT ids, the deny-list being those with `denied_at`.
 */
export const brokerSchema: Migration = {
  version: 4,
  name: "broker",
  sql: `
CREATE TABLE broker_instances (
  id               TEXT PRIMARY KEY,
  org              TEXT NOT NULL,
  space            TEXT NOT NULL,
  app              TEXT NOT NULL,
  app_id           TEXT NOT NULL,
  state            TEXT NOT NULL CHECK (state IN ('registered', 'running', 'stopped')),
  lease_expires_at TEXT NOT NULL,
  registered_by    TEXT NOT NULL,
  created_at       TEXT NOT NULL,
  updated_at       TEXT NOT NULL,
  stopped_at       TEXT,
  stop_reason      TEXT,
  revision         INTEGER NOT NULL
) STRICT;
CREATE INDEX broker_instances_live ON broker_instances (state, lease_expires_at);
CREATE INDEX broker_instances_app ON broker_instances (app_id, state);

CREATE TABLE broker_tokens (
  id          TEXT PRIMARY KEY,
  instance_id TEXT NOT NULL UNIQUE REFERENCES broker_instances (id),
  hash        TEXT NOT NULL UNIQUE,
  created_at  TEXT NOT NULL,
  expires_at  TEXT NOT NULL,
  state       TEXT NOT NULL CHECK (state IN ('unused', 'used', 'void')),
  used_at     TEXT
) STRICT;

CREATE TABLE broker_certificates (
  serial      TEXT PRIMARY KEY REFERENCES pki_certificates (serial),
  instance_id TEXT NOT NULL REFERENCES broker_instances (id),
  issued_at   TEXT NOT NULL
) STRICT;
CREATE INDEX broker_certificates_instance ON broker_certificates (instance_id);

CREATE TABLE broker_jwts (
  jti         TEXT PRIMARY KEY,
  instance_id TEXT NOT NULL REFERENCES broker_instances (id),
  issued_at   TEXT NOT NULL,
  expires_at  TEXT NOT NULL,
  denied_at   TEXT
) STRICT;
CREATE INDEX broker_jwts_instance ON broker_jwts (instance_id, expires_at);
CREATE INDEX broker_jwts_expiry ON broker_jwts (expires_at);
`,
};
