import { CustosError } from "../../errors/index.js";
import type {
  KrlMaker,
  KrlState,
  ReachableInstance,
  SshCaRecord,
  SshCertificateRecord,
  SshKrlRecord,
  SshRoleRecord,
  SshStore,
  SshSudoGrantRecord,
  SudoInstance,
} from "../ssh.js";
import type { Area, Sql } from "./area.js";

interface CaRow {
  id: string;
  kind: string;
  algorithm: string;
  hsm_label: string;
  hsm_id: string;
  public_key: Buffer;
  state: string;
  created_at: string;
}

function caFromRow(r: CaRow): SshCaRecord {
  return {
    id: r.id,
    kind: r.kind as SshCaRecord["kind"],
    algorithm: r.algorithm as SshCaRecord["algorithm"],
    hsmLabel: r.hsm_label,
    hsmId: r.hsm_id,
    publicKey: r.public_key,
    state: r.state as SshCaRecord["state"],
    createdAt: r.created_at,
  };
}

interface RoleRow {
  name: string;
  cert_type: string;
  spec: string;
  builtin: number;
  created_at: string;
  updated_at: string;
  revision: number;
}

function roleFromRow(r: RoleRow): SshRoleRecord {
  return {
    name: r.name,
    certType: r.cert_type as SshRoleRecord["certType"],
    spec: JSON.parse(r.spec) as Record<string, unknown>,
    builtin: r.builtin === 1,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    revision: r.revision,
  };
}

interface CertRow {
  serial: string;
  ca_id: string;
  cert_type: string;
  key_id: string;
  role: string;
  principals: string;
  requester: string;
  fingerprint: string;
  valid_after: string;
  valid_before: string;
  issued_at: string;
  sudo_grant_id: string | null;
  status: string;
  revoked_at: string | null;
  revocation_reason: string | null;
}

function certFromRow(r: CertRow): SshCertificateRecord {
  return {
    serial: r.serial,
    caId: r.ca_id,
    certType: r.cert_type as SshCertificateRecord["certType"],
    keyId: r.key_id,
    role: r.role,
    principals: JSON.parse(r.principals) as string[],
    requester: r.requester,
    fingerprint: r.fingerprint,
    validAfter: r.valid_after,
    validBefore: r.valid_before,
    issuedAt: r.issued_at,
    sudoGrantId: r.sudo_grant_id,
    status: r.status as SshCertificateRecord["status"],
    revokedAt: r.revoked_at,
    revocationReason: r.revocation_reason,
  };
}

interface GrantRow {
  id: string;
  app_id: string;
  org: string;
  space: string;
  app: string;
  subject_type: string;
  subject_id: string;
  account: string;
  reason: string;
  granted_by: string;
  created_at: string;
  expires_at: string;
  revoked_at: string | null;
}

function grantFromRow(r: GrantRow): SshSudoGrantRecord {
  return {
    id: r.id,
    appId: r.app_id,
    org: r.org,
    space: r.space,
    app: r.app,
    subjectType: r.subject_type as SshSudoGrantRecord["subjectType"],
    subjectId: r.subject_id,
    account: r.account,
    reason: r.reason,
    grantedBy: r.granted_by,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    revokedAt: r.revoked_at,
  };
}

interface KrlRow {
  version: number;
  generated_at: string;
  krl: Buffer;
}

const krlFromRow = (r: KrlRow): SshKrlRecord => ({ version: r.version, generatedAt: r.generated_at, krl: r.krl });

/** A live instance: registered or running, lease not lapsed. */
const LIVE = "i.state != 'stopped' AND i.lease_expires_at > ?";

/**
 * How long a revoked certificate stays in the KRL after its valid_before: a host
 * whose clock runs behind still accepts the certificate for that long.
 */
const KRL_EXPIRY_GRACE_MS = 24 * 3600 * 1000;

/**
 * The KRL's content now: every CA with its revoked certificates not expired for
 * longer than the grace (an expired certificate needs no revocation), and every
 * revoked key. The new KRL replaces the stored one in the caller's transaction.
 */
function storeKrl(sql: Sql, at: string, makeKrl: KrlMaker): SshKrlRecord {
  const expiredBefore = new Date(Date.parse(at) - KRL_EXPIRY_GRACE_MS).toISOString();
  const current = sql.get<{ version: number }>("SELECT version FROM ssh_krl WHERE id = 1");
  const cas = sql.all<CaRow>("SELECT * FROM ssh_cas ORDER BY id").map((ca) => ({
    caId: ca.id,
    publicKey: ca.public_key,
    serials: sql
      .all<{ serial: string }>(
        "SELECT serial FROM ssh_certificates WHERE status = 'revoked' AND valid_before > ? AND ca_id = ?",
        expiredBefore,
        ca.id,
      )
      .map((r) => r.serial),
  }));
  const fingerprints = sql
    .all<{ fingerprint_raw: Buffer }>("SELECT fingerprint_raw FROM ssh_revoked_keys")
    .map((r) => r.fingerprint_raw);
  const state: KrlState = { version: (current?.version ?? 0) + 1, cas, fingerprints };
  const record: SshKrlRecord = { version: state.version, generatedAt: at, krl: makeKrl(state) };
  sql.run(
    `INSERT INTO ssh_krl (id, version, generated_at, krl) VALUES (1, ?, ?, ?)
     ON CONFLICT (id) DO UPDATE SET version = excluded.version, generated_at = excluded.generated_at, krl = excluded.krl`,
    record.version,
    record.generatedAt,
    record.krl,
  );
  return record;
}

function revokeSerials(sql: Sql, serials: readonly string[], at: string, reason: string): void {
  for (const serial of serials) {
    sql.run(
      "UPDATE ssh_certificates SET status = 'revoked', revoked_at = ?, revocation_reason = ? WHERE serial = ?",
      at,
      reason,
      serial,
    );
  }
}

function insertRole(sql: Sql, role: SshRoleRecord): void {
  sql.run(
    `INSERT INTO ssh_roles (name, cert_type, spec, builtin, created_at, updated_at, revision)
     VALUES (?, ?, ?, ?, ?, ?, ?)`,
    role.name,
    role.certType,
    JSON.stringify(role.spec),
    role.builtin ? 1 : 0,
    role.createdAt,
    role.updatedAt,
    role.revision,
  );
}

/** The SSH CA area's statements, run through the store's reads and group-committed writes. */
export function sshStore(area: Area): SshStore {
  return {
    initialize: (cas, roles, makeKrl, audit) =>
      area.write((sql, record) => {
        if (sql.get("SELECT 1 FROM ssh_cas LIMIT 1") !== undefined) {
          throw new CustosError("conflict", "the SSH CAs exist already");
        }
        for (const ca of cas) {
          sql.run(
            `INSERT INTO ssh_cas (id, kind, algorithm, hsm_label, hsm_id, public_key, state, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
            ca.id,
            ca.kind,
            ca.algorithm,
            ca.hsmLabel,
            ca.hsmId,
            ca.publicKey,
            ca.state,
            ca.createdAt,
          );
        }
        for (const role of roles) {
          if (sql.get("SELECT 1 FROM ssh_roles WHERE name = ?", role.name) === undefined) insertRole(sql, role);
        }
        storeKrl(sql, audit.time, makeKrl);
        record(audit);
      }),

    listCas: () => area.read((sql) => sql.all<CaRow>("SELECT * FROM ssh_cas ORDER BY id").map(caFromRow)),

    putRole: (role, expectedRevision, audit) =>
      area.write((sql, record) => {
        const current = sql.get<RoleRow>("SELECT * FROM ssh_roles WHERE name = ?", role.name);
        if (expectedRevision === null) {
          if (current !== undefined) throw new CustosError("conflict", `SSH role ${role.name} exists`);
          insertRole(sql, role);
        } else {
          if (current === undefined) throw new CustosError("not_found", `no SSH role ${role.name}`);
          if (current.revision !== expectedRevision) {
            throw new CustosError("conflict", `SSH role ${role.name} changed meanwhile; try again`);
          }
          sql.run(
            "UPDATE ssh_roles SET cert_type = ?, spec = ?, updated_at = ?, revision = ? WHERE name = ?",
            role.certType,
            JSON.stringify(role.spec),
            role.updatedAt,
            role.revision,
            role.name,
          );
        }
        record(audit);
      }),

    getRole: (name) =>
      area.read((sql) => {
        const row = sql.get<RoleRow>("SELECT * FROM ssh_roles WHERE name = ?", name);
        return row === undefined ? undefined : roleFromRow(row);
      }),

    listRoles: () => area.read((sql) => sql.all<RoleRow>("SELECT * FROM ssh_roles ORDER BY name").map(roleFromRow)),

    deleteRole: (name, audit) =>
      area.write((sql, record) => {
        const row = sql.get<RoleRow>("SELECT * FROM ssh_roles WHERE name = ?", name);
        if (row === undefined) throw new CustosError("not_found", `no SSH role ${name}`);
        if (row.builtin === 1) throw new CustosError("conflict", `SSH role ${name} is built in: change it instead`);
        sql.run("DELETE FROM ssh_roles WHERE name = ?", name);
        record(audit);
      }),

    insertCertificate: (cert, audit) =>
      area.write((sql, record) => {
        // The KRL revokes the key by its hash: a certificate for it would be dead on arrival, yet listed valid.
        // Checked in the transaction that records it, so that no revocation can slip in between.
        if (sql.get("SELECT 1 FROM ssh_revoked_keys WHERE fingerprint = ?", cert.fingerprint) !== undefined) {
          throw new CustosError("key_revoked", `public key ${cert.fingerprint} was revoked: it can't be certified`);
        }
        sql.run(
          `INSERT INTO ssh_certificates (serial, ca_id, cert_type, key_id, role, principals, requester, fingerprint,
             valid_after, valid_before, issued_at, sudo_grant_id, status, revoked_at, revocation_reason)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'valid', NULL, NULL)`,
          cert.serial,
          cert.caId,
          cert.certType,
          cert.keyId,
          cert.role,
          JSON.stringify(cert.principals),
          cert.requester,
          cert.fingerprint,
          cert.validAfter,
          cert.validBefore,
          cert.issuedAt,
          cert.sudoGrantId,
        );
        record(audit);
      }),

    getCertificate: (serial) =>
      area.read((sql) => {
        const row = sql.get<CertRow>("SELECT * FROM ssh_certificates WHERE serial = ?", serial);
        return row === undefined ? undefined : certFromRow(row);
      }),

    listCertificates: ({ status, limit, now }) =>
      area.read((sql) => {
        const newest = (where: string, ...params: unknown[]) =>
          sql.all<CertRow>(`SELECT * FROM ssh_certificates ${where} ORDER BY rowid DESC LIMIT ?`, ...params, limit);
        if (status === undefined) return newest("").map(certFromRow);
        // `valid` as the view says it: an unrevoked certificate past its valid_before is shown as expired.
        if (status === "valid") return newest("WHERE status = 'valid' AND valid_before > ?", now).map(certFromRow);
        return newest("WHERE status = 'revoked'").map(certFromRow);
      }),

    revokeCertificate: (serial, at, reason, makeKrl, audit) =>
      area.write((sql, record) => {
        const row = sql.get<CertRow>("SELECT * FROM ssh_certificates WHERE serial = ?", serial);
        if (row === undefined) throw new CustosError("not_found", `no SSH certificate ${serial}`);
        if (row.status === "revoked") throw new CustosError("conflict", `SSH certificate ${serial} is already revoked`);
        revokeSerials(sql, [serial], at, reason);
        const krl = storeKrl(sql, at, makeKrl);
        record(audit);
        return krl;
      }),

    revokeKey: (key, at, reason, by, makeKrl, audit) =>
      area.write((sql, record) => {
        const serials = sql
          .all<{ serial: string }>(
            "SELECT serial FROM ssh_certificates WHERE fingerprint = ? AND status = 'valid'",
            key.fingerprint,
          )
          .map((r) => r.serial);
        revokeSerials(sql, serials, at, reason);
        sql.run(
          `INSERT INTO ssh_revoked_keys (fingerprint, fingerprint_raw, revoked_at, reason, revoked_by)
           VALUES (?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO NOTHING`,
          key.fingerprint,
          key.fingerprintRaw,
          at,
          reason,
          by,
        );
        const krl = storeKrl(sql, at, makeKrl);
        record({ ...audit, details: { ...audit.details, revoked: serials, krlVersion: krl.version } });
        return { serials, krl };
      }),

    getKrl: () =>
      area.read((sql) => {
        const row = sql.get<KrlRow>("SELECT version, generated_at, krl FROM ssh_krl WHERE id = 1");
        return row === undefined ? undefined : krlFromRow(row);
      }),

    createSudoGrant: (grant, audit) =>
      area.write((sql, record) => {
        sql.run(
          `INSERT INTO ssh_sudo_grants (id, app_id, org, space, app, subject_type, subject_id, account, reason,
             granted_by, created_at, expires_at, revoked_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)`,
          grant.id,
          grant.appId,
          grant.org,
          grant.space,
          grant.app,
          grant.subjectType,
          grant.subjectId,
          grant.account,
          grant.reason,
          grant.grantedBy,
          grant.createdAt,
          grant.expiresAt,
        );
        record(audit);
      }),

    getSudoGrant: (id) =>
      area.read((sql) => {
        const row = sql.get<GrantRow>("SELECT * FROM ssh_sudo_grants WHERE id = ?", id);
        return row === undefined ? undefined : grantFromRow(row);
      }),

    listSudoGrants: (now) =>
      area.read((sql) =>
        (now === undefined
          ? sql.all<GrantRow>("SELECT * FROM ssh_sudo_grants ORDER BY created_at DESC, id")
          : sql.all<GrantRow>(
              "SELECT * FROM ssh_sudo_grants WHERE revoked_at IS NULL AND expires_at > ? ORDER BY created_at DESC, id",
              now,
            )
        ).map(grantFromRow),
      ),

    revokeSudoGrant: (id, at, makeKrl, audit) =>
      area.write((sql, record) => {
        const row = sql.get<GrantRow>("SELECT * FROM ssh_sudo_grants WHERE id = ?", id);
        if (row === undefined) throw new CustosError("not_found", `no SSH sudo grant ${id}`);
        if (row.revoked_at !== null) throw new CustosError("conflict", `SSH sudo grant ${id} is already revoked`);
        sql.run("UPDATE ssh_sudo_grants SET revoked_at = ? WHERE id = ?", at, id);
        const serials = sql
          .all<{ serial: string }>(
            "SELECT serial FROM ssh_certificates WHERE sudo_grant_id = ? AND status = 'valid' AND valid_before > ?",
            id,
            at,
          )
          .map((r) => r.serial);
        revokeSerials(sql, serials, at, "sudo grant revoked");
        const krl = storeKrl(sql, at, makeKrl);
        record({ ...audit, details: { ...audit.details, revoked: serials, krlVersion: krl.version } });
        return { serials, krl };
      }),

    ownedInstances: (userId, now) =>
      area.read((sql) =>
        sql.all<ReachableInstance>(
          `SELECT i.id AS instanceId, i.app_id AS appId FROM broker_instances i
           WHERE ${LIVE} AND i.app_id IN (
             SELECT o.app_id FROM platform_app_owners o WHERE o.user_id = ?
             UNION
             SELECT o.app_id FROM platform_app_owners o JOIN group_members m ON m.group_id = o.group_id
             WHERE m.user_id = ?)
           ORDER BY i.id`,
          now,
          userId,
          userId,
        ),
      ),

    sudoInstances: (userId, now) =>
      area.read((sql) =>
        sql.all<SudoInstance>(
          `SELECT i.id AS instanceId, i.app_id AS appId, g.account AS account, g.id AS grantId,
             g.expires_at AS grantExpiresAt
           FROM ssh_sudo_grants g JOIN broker_instances i ON i.app_id = g.app_id
           WHERE ${LIVE} AND g.revoked_at IS NULL AND g.expires_at > ? AND (
             (g.subject_type = 'user' AND g.subject_id = ?) OR
             (g.subject_type = 'group' AND g.subject_id IN (SELECT group_id FROM group_members WHERE user_id = ?)))
           ORDER BY i.id, g.expires_at DESC`,
          now,
          now,
          userId,
          userId,
        ),
      ),

    registeredInstances: (registeredBy, now) =>
      area.read((sql) =>
        sql.all<ReachableInstance>(
          `SELECT i.id AS instanceId, i.app_id AS appId FROM broker_instances i
           WHERE ${LIVE} AND i.registered_by = ? ORDER BY i.id`,
          now,
          registeredBy,
        ),
      ),

    record: (audit) => area.write((_sql, record) => record(audit)),
  };
}
