import type { Migration } from "./types.js";

/**
 * The SSH CA: its CAs (public keys; the private keys are HSM token objects), roles,
 * the certificates it signed (fields, not the certificates), revoked keys, sudo
 * grants and the current KRL. `ssh_sudo_grants` has no foreign key to the app: a
 * grant stays as history after its app is deleted.
 */
export const sshSchema: Migration = {
  version: 5,
  name: "ssh",
  sql: `
CREATE TABLE ssh_cas (
  id         TEXT PRIMARY KEY,
  kind       TEXT NOT NULL CHECK (kind IN ('user', 'host')),
  algorithm  TEXT NOT NULL CHECK (algorithm IN ('ecdsa-p256', 'ed25519')),
  hsm_label  TEXT NOT NULL,
  hsm_id     TEXT NOT NULL,
  public_key BLOB NOT NULL,
  state      TEXT NOT NULL CHECK (state IN ('active', 'retired')),
  created_at TEXT NOT NULL
) STRICT;

CREATE TABLE ssh_roles (
  name       TEXT PRIMARY KEY,
  cert_type  TEXT NOT NULL CHECK (cert_type IN ('user', 'host')),
  spec       TEXT NOT NULL,
  builtin    INTEGER NOT NULL CHECK (builtin IN (0, 1)),
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  revision   INTEGER NOT NULL
) STRICT;

CREATE TABLE ssh_sudo_grants (
  id           TEXT PRIMARY KEY,
  app_id       TEXT NOT NULL,
  org          TEXT NOT NULL,
  space        TEXT NOT NULL,
  app          TEXT NOT NULL,
  subject_type TEXT NOT NULL CHECK (subject_type IN ('user', 'group')),
  subject_id   TEXT NOT NULL,
  account      TEXT NOT NULL,
  reason       TEXT NOT NULL,
  granted_by   TEXT NOT NULL,
  created_at   TEXT NOT NULL,
  expires_at   TEXT NOT NULL,
  revoked_at   TEXT
) STRICT;
CREATE INDEX ssh_sudo_grants_subject ON ssh_sudo_grants (subject_type, subject_id);

CREATE TABLE ssh_certificates (
  serial            TEXT PRIMARY KEY,
  ca_id             TEXT NOT NULL REFERENCES ssh_cas (id),
  cert_type         TEXT NOT NULL CHECK (cert_type IN ('user', 'host')),
  key_id            TEXT NOT NULL,
  role              TEXT NOT NULL,
  principals        TEXT NOT NULL,
  requester         TEXT NOT NULL,
  fingerprint       TEXT NOT NULL,
  valid_after       TEXT NOT NULL,
  valid_before      TEXT NOT NULL,
  issued_at         TEXT NOT NULL,
  sudo_grant_id     TEXT REFERENCES ssh_sudo_grants (id),
  status            TEXT NOT NULL CHECK (status IN ('valid', 'revoked')),
  revoked_at        TEXT,
  revocation_reason TEXT
) STRICT;
CREATE INDEX ssh_certificates_fingerprint ON ssh_certificates (fingerprint);
CREATE INDEX ssh_certificates_revoked ON ssh_certificates (valid_before) WHERE status = 'revoked';
CREATE INDEX ssh_certificates_sudo ON ssh_certificates (sudo_grant_id) WHERE sudo_grant_id IS NOT NULL;

CREATE TABLE ssh_revoked_keys (
  fingerprint     TEXT PRIMARY KEY,
  fingerprint_raw BLOB NOT NULL,
  revoked_at      TEXT NOT NULL,
  reason          TEXT NOT NULL,
  revoked_by      TEXT NOT NULL
) STRICT;

CREATE TABLE ssh_krl (
  id           INTEGER PRIMARY KEY CHECK (id = 1),
  version      INTEGER NOT NULL,
  generated_at TEXT NOT NULL,
  krl          BLOB NOT NULL
) STRICT;
`,
};
