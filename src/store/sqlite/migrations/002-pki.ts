import type { Migration } from "./types.js";

/**
 * The PKI: CAs (keys in the HSM, referenced by label and id), issued certificates,
 * roles, and TLS consumers with their certificate generations and agents. A
 * consumer's private keys are stored only sealed by the HSM.
 */
export const pkiSchema: Migration = {
  version: 2,
  name: "pki",
  sql: `
CREATE TABLE pki_cas (
  id              TEXT PRIMARY KEY,
  kind            TEXT NOT NULL CHECK (kind IN ('root', 'intermediate')),
  algorithm       TEXT NOT NULL,
  hsm_label       TEXT NOT NULL,
  hsm_id          TEXT NOT NULL,
  cert_pem        TEXT NOT NULL,
  parent_id       TEXT REFERENCES pki_cas (id),
  state           TEXT NOT NULL CHECK (state IN ('active', 'retiring')),
  created_at      TEXT NOT NULL,
  not_after       TEXT NOT NULL,
  crl_number      INTEGER NOT NULL,
  crl_der         BLOB NOT NULL,
  crl_next_update TEXT NOT NULL,
  revision        INTEGER NOT NULL
) STRICT;

CREATE TABLE pki_certificates (
  serial            TEXT PRIMARY KEY,
  issuer_id         TEXT NOT NULL REFERENCES pki_cas (id),
  role              TEXT NOT NULL,
  subject           TEXT NOT NULL,
  common_name       TEXT,
  dns_names         TEXT NOT NULL,
  ip_addresses      TEXT NOT NULL,
  uris              TEXT NOT NULL,
  key_type          TEXT NOT NULL,
  public_key        BLOB NOT NULL,
  not_before        TEXT NOT NULL,
  not_after         TEXT NOT NULL,
  fingerprint       TEXT NOT NULL,
  pem               TEXT NOT NULL,
  status            TEXT NOT NULL CHECK (status IN ('valid', 'revoked')),
  revoked_at        TEXT,
  revocation_reason TEXT,
  issued_by         TEXT NOT NULL
) STRICT;
CREATE INDEX pki_certificates_revoked ON pki_certificates (issuer_id, status, not_after);
CREATE INDEX pki_certificates_role ON pki_certificates (role, serial);

CREATE TABLE pki_roles (
  name       TEXT PRIMARY KEY,
  definition TEXT NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  revision   INTEGER NOT NULL
) STRICT;

CREATE TABLE cert_consumers (
  name                TEXT PRIMARY KEY,
  role                TEXT NOT NULL,
  request             TEXT NOT NULL,
  target_generation   INTEGER NOT NULL,
  previous_generation INTEGER,
  rotation            TEXT,
  created_at          TEXT NOT NULL,
  updated_at          TEXT NOT NULL,
  revision            INTEGER NOT NULL
) STRICT;

CREATE TABLE cert_consumer_generations (
  consumer   TEXT NOT NULL REFERENCES cert_consumers (name) ON DELETE CASCADE,
  generation INTEGER NOT NULL,
  serial     TEXT NOT NULL REFERENCES pki_certificates (serial),
  sealed_key BLOB NOT NULL,
  created_at TEXT NOT NULL,
  PRIMARY KEY (consumer, generation)
) STRICT;

CREATE TABLE cert_consumer_agents (
  consumer    TEXT NOT NULL REFERENCES cert_consumers (name) ON DELETE CASCADE,
  agent_id    TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  reported_at TEXT NOT NULL,
  PRIMARY KEY (consumer, agent_id)
) STRICT;
`,
};
