import { CustosError } from "../../errors/index.js";
import type {
  CaKind,
  CaRecord,
  CaState,
  CertificateQuery,
  CertificateRecord,
  CertificateStatus,
  ConsumerAgentRecord,
  ConsumerChange,
  ConsumerGenerationRecord,
  ConsumerRecord,
  ConsumerRotation,
  CrlChange,
  RoleRecord,
} from "../types.js";
import type { Sql } from "./area.js";

/**
 * The PKI's statements and row mappings. The store runs them inside its own
 * transactions (each function is one step of an operation) and appends the audit
 * record; nothing here commits.
 */

// ---- CAs --------------------------------------------------------------------

interface CaRow {
  id: string;
  kind: string;
  algorithm: string;
  hsm_label: string;
  hsm_id: string;
  cert_pem: string;
  parent_id: string | null;
  state: string;
  created_at: string;
  not_after: string;
  crl_number: number;
  crl_der: Buffer;
  crl_next_update: string;
  revision: number;
}

function caFromRow(r: CaRow): CaRecord {
  return {
    id: r.id,
    kind: r.kind as CaKind,
    algorithm: r.algorithm as CaRecord["algorithm"],
    hsmLabel: r.hsm_label,
    hsmId: r.hsm_id,
    certPem: r.cert_pem,
    parentId: r.parent_id,
    state: r.state as CaState,
    createdAt: r.created_at,
    notAfter: r.not_after,
    crlNumber: r.crl_number,
    crlDer: r.crl_der,
    crlNextUpdate: r.crl_next_update,
    revision: r.revision,
  };
}

export function listCas(sql: Sql): CaRecord[] {
  return sql.all<CaRow>("SELECT * FROM pki_cas ORDER BY kind DESC, created_at, id").map(caFromRow);
}

export function getCa(sql: Sql, id: string): CaRecord | undefined {
  const row = sql.get<CaRow>("SELECT * FROM pki_cas WHERE id = ?", id);
  return row === undefined ? undefined : caFromRow(row);
}

export function insertCa(sql: Sql, ca: CaRecord): void {
  sql.run(
    `INSERT INTO pki_cas (id, kind, algorithm, hsm_label, hsm_id, cert_pem, parent_id, state, created_at, not_after,
       crl_number, crl_der, crl_next_update, revision)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ca.id,
    ca.kind,
    ca.algorithm,
    ca.hsmLabel,
    ca.hsmId,
    ca.certPem,
    ca.parentId,
    ca.state,
    ca.createdAt,
    ca.notAfter,
    ca.crlNumber,
    ca.crlDer,
    ca.crlNextUpdate,
    ca.revision,
  );
}

function staleCa(id: string): CustosError {
  return new CustosError("conflict", `CA ${id} was changed by another writer`);
}

export function retireCa(sql: Sql, id: string, expectedRevision: number): void {
  const result = sql.run(
    "UPDATE pki_cas SET state = 'retiring', revision = revision + 1 WHERE id = ? AND revision = ?",
    id,
    expectedRevision,
  );
  if (result.changes === 0) throw staleCa(id);
}

export function replaceCrl(sql: Sql, change: CrlChange): void {
  const result = sql.run(
    `UPDATE pki_cas SET crl_number = ?, crl_der = ?, crl_next_update = ?, revision = revision + 1
     WHERE id = ? AND revision = ?`,
    change.crlNumber,
    change.crlDer,
    change.crlNextUpdate,
    change.caId,
    change.expectedRevision,
  );
  if (result.changes === 0) throw staleCa(change.caId);
}

// ---- certificates -----------------------------------------------------------

interface CertificateRow {
  serial: string;
  issuer_id: string;
  role: string;
  subject: string;
  common_name: string | null;
  dns_names: string;
  ip_addresses: string;
  uris: string;
  key_type: string;
  public_key: Buffer;
  not_before: string;
  not_after: string;
  fingerprint: string;
  pem: string;
  status: string;
  revoked_at: string | null;
  revocation_reason: string | null;
  issued_by: string;
}

function certificateFromRow(r: CertificateRow): CertificateRecord {
  return {
    serial: r.serial,
    issuerId: r.issuer_id,
    role: r.role,
    subject: r.subject,
    commonName: r.common_name,
    dnsNames: JSON.parse(r.dns_names) as string[],
    ipAddresses: JSON.parse(r.ip_addresses) as string[],
    uris: JSON.parse(r.uris) as string[],
    keyType: r.key_type,
    publicKey: r.public_key,
    notBefore: r.not_before,
    notAfter: r.not_after,
    fingerprint: r.fingerprint,
    pem: r.pem,
    status: r.status as CertificateStatus,
    revokedAt: r.revoked_at,
    revocationReason: r.revocation_reason,
    issuedBy: r.issued_by,
  };
}

export function insertCertificate(sql: Sql, c: CertificateRecord): void {
  sql.run(
    `INSERT INTO pki_certificates (serial, issuer_id, role, subject, common_name, dns_names, ip_addresses, uris,
       key_type, public_key, not_before, not_after, fingerprint, pem, status, revoked_at, revocation_reason, issued_by)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    c.serial,
    c.issuerId,
    c.role,
    c.subject,
    c.commonName,
    JSON.stringify(c.dnsNames),
    JSON.stringify(c.ipAddresses),
    JSON.stringify(c.uris),
    c.keyType,
    c.publicKey,
    c.notBefore,
    c.notAfter,
    c.fingerprint,
    c.pem,
    c.status,
    c.revokedAt,
    c.revocationReason,
    c.issuedBy,
  );
}

export function getCertificate(sql: Sql, serial: string): CertificateRecord | undefined {
  const row = sql.get<CertificateRow>("SELECT * FROM pki_certificates WHERE serial = ?", serial);
  return row === undefined ? undefined : certificateFromRow(row);
}

export function listCertificates(sql: Sql, query: CertificateQuery, limit: number): CertificateRecord[] {
  const status = query.status ?? null;
  return sql
    .all<CertificateRow>(
      `SELECT * FROM pki_certificates
       WHERE (:role IS NULL OR role = :role)
         AND (:issuer IS NULL OR issuer_id = :issuer)
         AND (:status IS NULL
              OR (:status = 'revoked' AND status = 'revoked')
              OR (:status = 'valid' AND status = 'valid' AND not_after > :now)
              OR (:status = 'expired' AND status = 'valid' AND not_after <= :now))
         AND (:after IS NULL OR serial > :after)
       ORDER BY serial LIMIT :limit`,
      {
        role: query.role ?? null,
        issuer: query.issuerId ?? null,
        status,
        now: query.now ?? new Date().toISOString(),
        after: query.after ?? null,
        limit,
      },
    )
    .map(certificateFromRow);
}

export function listRevoked(sql: Sql, issuerId: string, notAfterSince: string): CertificateRecord[] {
  return sql
    .all<CertificateRow>(
      `SELECT * FROM pki_certificates WHERE issuer_id = ? AND status = 'revoked' AND not_after > ? ORDER BY serial`,
      issuerId,
      notAfterSince,
    )
    .map(certificateFromRow);
}

export function revokeCertificate(sql: Sql, serial: string, revokedAt: string, reason: string): void {
  const result = sql.run(
    `UPDATE pki_certificates SET status = 'revoked', revoked_at = ?, revocation_reason = ?
     WHERE serial = ? AND status = 'valid'`,
    revokedAt,
    reason,
    serial,
  );
  if (result.changes === 0) {
    if (getCertificate(sql, serial) === undefined) throw new CustosError("not_found", "certificate not found");
    throw new CustosError("conflict", "the certificate is already revoked");
  }
}

// ---- roles ------------------------------------------------------------------

interface RoleRow {
  name: string;
  definition: string;
  created_at: string;
  updated_at: string;
  revision: number;
}

function roleFromRow(r: RoleRow): RoleRecord {
  return {
    name: r.name,
    definition: JSON.parse(r.definition) as Record<string, unknown>,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    revision: r.revision,
  };
}

export function putRole(sql: Sql, role: RoleRecord, expectedRevision: number | null): void {
  const params = [JSON.stringify(role.definition), role.createdAt, role.updatedAt];
  if (expectedRevision === null) {
    if (getRole(sql, role.name) !== undefined) throw new CustosError("conflict", `role ${role.name} exists`);
    sql.run(
      "INSERT INTO pki_roles (definition, created_at, updated_at, revision, name) VALUES (?, ?, ?, 1, ?)",
      ...params,
      role.name,
    );
    return;
  }
  const result = sql.run(
    `UPDATE pki_roles SET definition = ?, created_at = ?, updated_at = ?, revision = revision + 1
     WHERE name = ? AND revision = ?`,
    ...params,
    role.name,
    expectedRevision,
  );
  if (result.changes === 0) throw new CustosError("conflict", `role ${role.name} was changed by another writer`);
}

export function getRole(sql: Sql, name: string): RoleRecord | undefined {
  const row = sql.get<RoleRow>("SELECT * FROM pki_roles WHERE name = ?", name);
  return row === undefined ? undefined : roleFromRow(row);
}

export function listRoles(sql: Sql): RoleRecord[] {
  return sql.all<RoleRow>("SELECT * FROM pki_roles ORDER BY name").map(roleFromRow);
}

export function deleteRole(sql: Sql, name: string): void {
  if (sql.get("SELECT 1 FROM cert_consumers WHERE role = ?", name) !== undefined) {
    throw new CustosError("conflict", `role ${name} is used by a certificate consumer`);
  }
  if (sql.run("DELETE FROM pki_roles WHERE name = ?", name).changes === 0) {
    throw new CustosError("not_found", "role not found");
  }
}

// ---- consumers --------------------------------------------------------------

interface ConsumerRow {
  name: string;
  role: string;
  request: string;
  target_generation: number;
  previous_generation: number | null;
  rotation: string | null;
  created_at: string;
  updated_at: string;
  revision: number;
}

function consumerFromRow(r: ConsumerRow): ConsumerRecord {
  return {
    name: r.name,
    role: r.role,
    request: JSON.parse(r.request) as Record<string, unknown>,
    targetGeneration: r.target_generation,
    previousGeneration: r.previous_generation,
    rotation: r.rotation === null ? null : (JSON.parse(r.rotation) as ConsumerRotation),
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    revision: r.revision,
  };
}

export function writeConsumer(sql: Sql, change: ConsumerChange): void {
  const c = change.consumer;
  const values = [
    c.role,
    JSON.stringify(c.request),
    c.targetGeneration,
    c.previousGeneration,
    c.rotation === null ? null : JSON.stringify(c.rotation),
    c.createdAt,
    c.updatedAt,
  ];
  if (change.expectedRevision === null) {
    if (getConsumer(sql, c.name) !== undefined) throw new CustosError("conflict", `consumer ${c.name} exists`);
    sql.run(
      `INSERT INTO cert_consumers (role, request, target_generation, previous_generation, rotation, created_at,
         updated_at, revision, name) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)`,
      ...values,
      c.name,
    );
  } else {
    const result = sql.run(
      `UPDATE cert_consumers SET role = ?, request = ?, target_generation = ?, previous_generation = ?, rotation = ?,
         created_at = ?, updated_at = ?, revision = revision + 1
       WHERE name = ? AND revision = ?`,
      ...values,
      c.name,
      change.expectedRevision,
    );
    if (result.changes === 0) throw new CustosError("conflict", `consumer ${c.name} was changed by another writer`);
  }
  if (change.addGeneration !== undefined) {
    const { generation: g, certificate } = change.addGeneration;
    insertCertificate(sql, certificate);
    sql.run(
      `INSERT INTO cert_consumer_generations (consumer, generation, serial, sealed_key, created_at)
       VALUES (?, ?, ?, ?, ?)`,
      g.consumer,
      g.generation,
      g.serial,
      g.sealedKey,
      g.createdAt,
    );
  }
}

export function getConsumer(sql: Sql, name: string): ConsumerRecord | undefined {
  const row = sql.get<ConsumerRow>("SELECT * FROM cert_consumers WHERE name = ?", name);
  return row === undefined ? undefined : consumerFromRow(row);
}

export function listConsumers(sql: Sql): ConsumerRecord[] {
  return sql.all<ConsumerRow>("SELECT * FROM cert_consumers ORDER BY name").map(consumerFromRow);
}

export function getConsumerGeneration(
  sql: Sql,
  consumer: string,
  generation: number,
): ConsumerGenerationRecord | undefined {
  const row = sql.get<{ consumer: string; generation: number; serial: string; sealed_key: Buffer; created_at: string }>(
    "SELECT * FROM cert_consumer_generations WHERE consumer = ? AND generation = ?",
    consumer,
    generation,
  );
  return row === undefined
    ? undefined
    : {
        consumer: row.consumer,
        generation: row.generation,
        serial: row.serial,
        sealedKey: row.sealed_key,
        createdAt: row.created_at,
      };
}

export function upsertConsumerAgent(sql: Sql, a: ConsumerAgentRecord): void {
  sql.run(
    `INSERT INTO cert_consumer_agents (consumer, agent_id, fingerprint, reported_at) VALUES (?, ?, ?, ?)
     ON CONFLICT (consumer, agent_id) DO UPDATE SET fingerprint = excluded.fingerprint, reported_at = excluded.reported_at`,
    a.consumer,
    a.agentId,
    a.fingerprint,
    a.reportedAt,
  );
}

export function listConsumerAgents(sql: Sql, consumer: string): ConsumerAgentRecord[] {
  return sql
    .all<{ consumer: string; agent_id: string; fingerprint: string; reported_at: string }>(
      "SELECT * FROM cert_consumer_agents WHERE consumer = ? ORDER BY agent_id",
      consumer,
    )
    .map((r) => ({ consumer: r.consumer, agentId: r.agent_id, fingerprint: r.fingerprint, reportedAt: r.reported_at }));
}
