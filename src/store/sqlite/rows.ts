import type {
  AuditCheckpoint,
  AuditOutcome,
  AuditRecord,
  GroupRecord,
  KeyAlgorithm,
  KeyPurpose,
  KeyRecord,
  KeyState,
  KeyVersionRecord,
  KeyVersionState,
  PolicyRecord,
  PolicyRule,
  StoredAuditRecord,
  SudoGrantRecord,
  SudoSubjectType,
  TokenKind,
  TokenRecord,
  UserRecord,
} from "../types.js";

/**
 * Rows as SQLite returns them and their mapping to the store's records. The union
 * types are trusted on the way out: only this store writes these tables.
 */

export interface KeyRow {
  id: string;
  name: string;
  purpose: string;
  algorithm: string;
  state: string;
  description: string;
  created_at: string;
  updated_at: string;
  revision: number;
  latest_version: number;
  min_decryption_version: number;
  rotation_period_seconds: number | null;
  next_rotation_at: string | null;
  destroy_at: string | null;
}

export function keyFromRow(r: KeyRow): KeyRecord {
  return {
    id: r.id,
    name: r.name,
    purpose: r.purpose as KeyPurpose,
    algorithm: r.algorithm as KeyAlgorithm,
    state: r.state as KeyState,
    description: r.description,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    revision: r.revision,
    latestVersion: r.latest_version,
    minDecryptionVersion: r.min_decryption_version,
    rotationPeriodSeconds: r.rotation_period_seconds,
    nextRotationAt: r.next_rotation_at,
    destroyAt: r.destroy_at,
  };
}

/** Named parameters for INSERT/UPDATE of a key. */
export function keyParams(k: KeyRecord): Record<string, string | number | null> {
  return {
    id: k.id,
    name: k.name,
    purpose: k.purpose,
    algorithm: k.algorithm,
    state: k.state,
    description: k.description,
    created_at: k.createdAt,
    updated_at: k.updatedAt,
    revision: k.revision,
    latest_version: k.latestVersion,
    min_decryption_version: k.minDecryptionVersion,
    rotation_period_seconds: k.rotationPeriodSeconds,
    next_rotation_at: k.nextRotationAt,
    destroy_at: k.destroyAt,
  };
}

export interface KeyVersionRow {
  key_id: string;
  version: number;
  state: string;
  created_at: string;
  wrapped_key: Buffer | null;
  hsm_label: string | null;
  hsm_id: string | null;
  public_key: Buffer | null;
}

export function keyVersionFromRow(r: KeyVersionRow): KeyVersionRecord {
  return {
    keyId: r.key_id,
    version: r.version,
    state: r.state as KeyVersionState,
    createdAt: r.created_at,
    wrappedKey: r.wrapped_key,
    hsmLabel: r.hsm_label,
    hsmId: r.hsm_id,
    publicKey: r.public_key,
  };
}

export function keyVersionParams(v: KeyVersionRecord): Record<string, string | number | Buffer | null> {
  return {
    key_id: v.keyId,
    version: v.version,
    state: v.state,
    created_at: v.createdAt,
    wrapped_key: v.wrappedKey === null ? null : Buffer.from(v.wrappedKey),
    hsm_label: v.hsmLabel,
    hsm_id: v.hsmId,
    public_key: v.publicKey === null ? null : Buffer.from(v.publicKey),
  };
}

export interface UserRow {
  id: string;
  name: string;
  password_hash: string | null;
  policies: string;
  disabled: number;
  created_at: string;
  updated_at: string;
  revision: number;
}

export function userFromRow(r: UserRow): UserRecord {
  return {
    id: r.id,
    name: r.name,
    passwordHash: r.password_hash,
    policies: JSON.parse(r.policies) as string[],
    disabled: r.disabled === 1,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    revision: r.revision,
  };
}

export function userParams(u: UserRecord, revision = u.revision): Record<string, string | number | null> {
  return {
    id: u.id,
    name: u.name,
    password_hash: u.passwordHash,
    policies: JSON.stringify(u.policies),
    disabled: u.disabled ? 1 : 0,
    created_at: u.createdAt,
    updated_at: u.updatedAt,
    revision,
  };
}

export interface GroupRow {
  id: string;
  name: string;
  policies: string;
  created_at: string;
  updated_at: string;
  revision: number;
  /** JSON array of member ids in order, aggregated by the query. */
  members: string | null;
}

export function groupFromRow(r: GroupRow): GroupRecord {
  return {
    id: r.id,
    name: r.name,
    members: r.members === null ? [] : (JSON.parse(r.members) as string[]),
    policies: JSON.parse(r.policies) as string[],
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    revision: r.revision,
  };
}

export interface TokenRow {
  id: string;
  hash: string;
  kind: string;
  name: string;
  user_id: string | null;
  policies: string | null;
  created_at: string;
  expires_at: string | null;
  revoked_at: string | null;
  parent_id: string | null;
  maker_user_id: string | null;
  renew_ttl_seconds: number | null;
  max_expires_at: string | null;
}

export function tokenFromRow(r: TokenRow): TokenRecord {
  return {
    id: r.id,
    hash: r.hash,
    kind: r.kind as TokenKind,
    name: r.name,
    userId: r.user_id,
    policies: r.policies === null ? null : (JSON.parse(r.policies) as string[]),
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    revokedAt: r.revoked_at,
    parentId: r.parent_id,
    makerUserId: r.maker_user_id,
    renewal:
      r.renew_ttl_seconds === null || r.max_expires_at === null
        ? null
        : { ttlSeconds: r.renew_ttl_seconds, maxExpiresAt: r.max_expires_at },
  };
}

export function tokenParams(t: TokenRecord): Record<string, string | number | null> {
  return {
    id: t.id,
    hash: t.hash,
    kind: t.kind,
    name: t.name,
    user_id: t.userId,
    policies: t.policies === null ? null : JSON.stringify(t.policies),
    created_at: t.createdAt,
    expires_at: t.expiresAt,
    revoked_at: t.revokedAt,
    parent_id: t.parentId,
    maker_user_id: t.makerUserId,
    renew_ttl_seconds: t.renewal?.ttlSeconds ?? null,
    max_expires_at: t.renewal?.maxExpiresAt ?? null,
  };
}

export interface PolicyRow {
  name: string;
  description: string;
  rules: string;
  created_at: string;
  updated_at: string;
  revision: number;
}

export function policyFromRow(r: PolicyRow): PolicyRecord {
  return {
    name: r.name,
    description: r.description,
    rules: JSON.parse(r.rules) as PolicyRule[],
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    revision: r.revision,
  };
}

export function policyParams(p: PolicyRecord, revision = p.revision): Record<string, string | number> {
  return {
    name: p.name,
    description: p.description,
    rules: JSON.stringify(p.rules),
    created_at: p.createdAt,
    updated_at: p.updatedAt,
    revision,
  };
}

export interface SudoGrantRow {
  id: string;
  subject_type: string;
  subject_id: string;
  policies: string;
  reason: string;
  granted_by: string;
  created_at: string;
  expires_at: string;
  revoked_at: string | null;
}

export function sudoGrantFromRow(r: SudoGrantRow): SudoGrantRecord {
  return {
    id: r.id,
    subjectType: r.subject_type as SudoSubjectType,
    subjectId: r.subject_id,
    policies: JSON.parse(r.policies) as string[],
    reason: r.reason,
    grantedBy: r.granted_by,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    revokedAt: r.revoked_at,
  };
}

export function sudoGrantParams(g: SudoGrantRecord): Record<string, string | null> {
  return {
    id: g.id,
    subject_type: g.subjectType,
    subject_id: g.subjectId,
    policies: JSON.stringify(g.policies),
    reason: g.reason,
    granted_by: g.grantedBy,
    created_at: g.createdAt,
    expires_at: g.expiresAt,
    revoked_at: g.revokedAt,
  };
}

export interface AuditRow {
  seq: number;
  time: string;
  request_id: string;
  principal: string;
  source: string;
  action: string;
  resource: string;
  outcome: string;
  error_code: string | null;
  details: string;
  prev_hash: string;
  hash: string;
}

export function auditFromRow(r: AuditRow): AuditRecord {
  return {
    seq: r.seq,
    time: r.time,
    requestId: r.request_id,
    principal: r.principal,
    source: r.source,
    action: r.action,
    resource: r.resource,
    outcome: r.outcome as AuditOutcome,
    errorCode: r.error_code,
    details: parseDetails(r.details),
    prevHash: r.prev_hash,
    hash: r.hash,
  };
}

export function storedAuditFromRow(r: AuditRow): StoredAuditRecord {
  return { ...auditFromRow(r), detailsJson: r.details };
}

export interface CheckpointRow {
  seq: number;
  hash: string;
  time: string;
  key_label: string;
  key_id: string;
  scheme: string;
  signature: string;
}

export function checkpointFromRow(r: CheckpointRow): AuditCheckpoint {
  return {
    seq: r.seq,
    hash: r.hash,
    time: r.time,
    keyLabel: r.key_label,
    keyId: r.key_id,
    scheme: r.scheme,
    signature: r.signature,
  };
}

/**
 * Audit details as stored. A row edited by hand into invalid JSON still reads back
 * (as the raw text), so verification reports it instead of crashing on it.
 */
function parseDetails(text: string): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(text);
    if (value !== null && typeof value === "object" && !Array.isArray(value)) return value as Record<string, unknown>;
  } catch {
    // fall through
  }
  return { unparseable: text };
}
