import { CustosError } from "../../errors/index.js";
import type {
  BootstrapTokenRecord,
  BootstrapTokenState,
  BrokerStore,
  InstanceCertificate,
  InstanceRecord,
  InstanceState,
  IssuedCredentials,
  JwtRecord,
} from "../broker.js";
import type { Area, Sql } from "./area.js";
import { insertCertificate } from "./pki.js";

interface InstanceRow {
  id: string;
  org: string;
  space: string;
  app: string;
  app_id: string;
  state: string;
  lease_expires_at: string;
  registered_by: string;
  created_at: string;
  updated_at: string;
  stopped_at: string | null;
  stop_reason: string | null;
  revision: number;
}

function instanceFromRow(r: InstanceRow): InstanceRecord {
  return {
    id: r.id,
    org: r.org,
    space: r.space,
    app: r.app,
    appId: r.app_id,
    state: r.state as InstanceState,
    leaseExpiresAt: r.lease_expires_at,
    registeredBy: r.registered_by,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    stoppedAt: r.stopped_at,
    stopReason: r.stop_reason,
    revision: r.revision,
  };
}

interface TokenRow {
  id: string;
  instance_id: string;
  hash: string;
  created_at: string;
  expires_at: string;
  state: string;
  used_at: string | null;
}

function tokenFromRow(r: TokenRow): BootstrapTokenRecord {
  return {
    id: r.id,
    instanceId: r.instance_id,
    hash: r.hash,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    state: r.state as BootstrapTokenState,
    usedAt: r.used_at,
  };
}

interface JwtRow {
  jti: string;
  instance_id: string;
  issued_at: string;
  expires_at: string;
  denied_at: string | null;
}

function jwtFromRow(r: JwtRow): JwtRecord {
  return {
    jti: r.jti,
    instanceId: r.instance_id,
    issuedAt: r.issued_at,
    expiresAt: r.expires_at,
    deniedAt: r.denied_at,
  };
}

interface CertRow {
  serial: string;
  instance_id: string;
  not_after: string;
  status: string;
}

function certFromRow(r: CertRow): InstanceCertificate {
  return {
    serial: r.serial,
    instanceId: r.instance_id,
    notAfter: r.not_after,
    status: r.status as InstanceCertificate["status"],
  };
}

const CERT_SELECT = `SELECT b.serial, b.instance_id, c.not_after, c.status
  FROM broker_certificates b JOIN pki_certificates c ON c.serial = b.serial`;

function getInstance(sql: Sql, id: string): InstanceRecord | undefined {
  const row = sql.get<InstanceRow>("SELECT * FROM broker_instances WHERE id = ?", id);
  return row === undefined ? undefined : instanceFromRow(row);
}

/** Records what one exchange or renewal issued; the instance must be running by now. */
function recordCredentials(sql: Sql, c: IssuedCredentials): void {
  const instance = getInstance(sql, c.instanceId);
  if (instance?.state !== "running") {
    throw new CustosError("conflict", `instance ${c.instanceId} is not running`);
  }
  if (c.certificate !== null) {
    insertCertificate(sql, c.certificate);
    sql.run(
      "INSERT INTO broker_certificates (serial, instance_id, issued_at) VALUES (?, ?, ?)",
      c.certificate.serial,
      c.instanceId,
      c.jwt.issuedAt,
    );
  }
  sql.run(
    "INSERT INTO broker_jwts (jti, instance_id, issued_at, expires_at, denied_at) VALUES (?, ?, ?, ?, NULL)",
    c.jwt.jti,
    c.instanceId,
    c.jwt.issuedAt,
    c.jwt.expiresAt,
  );
}

/** The broker area's statements, run through the store's reads and group-committed writes. */
export function brokerStore(area: Area): BrokerStore {
  return {
    register: (instance, token, audit) =>
      area.write((sql, record) => {
        // Ids are unique forever: a stopped instance's id keeps its history.
        if (getInstance(sql, instance.id) !== undefined) {
          throw new CustosError("conflict", `instance id ${instance.id} is taken (ids are never reused)`);
        }
        // Checked here, in the transaction, against the app's deletion (see the platform store's beginDeleteApp).
        const path = `${instance.org}/${instance.space}/${instance.app}`;
        const app = sql.get<{ deleting_since: string | null }>(
          "SELECT deleting_since FROM platform_apps WHERE id = ?",
          instance.appId,
        );
        if (app === undefined) throw new CustosError("not_found", `app ${path} not found`);
        if (app.deleting_since !== null) {
          throw new CustosError("conflict", `app ${path} is being deleted: it takes no new instances`);
        }
        sql.run(
          `INSERT INTO broker_instances (id, org, space, app, app_id, state, lease_expires_at, registered_by,
             created_at, updated_at, stopped_at, stop_reason, revision)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, 1)`,
          instance.id,
          instance.org,
          instance.space,
          instance.app,
          instance.appId,
          instance.state,
          instance.leaseExpiresAt,
          instance.registeredBy,
          instance.createdAt,
          instance.updatedAt,
        );
        sql.run(
          `INSERT INTO broker_tokens (id, instance_id, hash, created_at, expires_at, state, used_at)
           VALUES (?, ?, ?, ?, ?, 'unused', NULL)`,
          token.id,
          token.instanceId,
          token.hash,
          token.createdAt,
          token.expiresAt,
        );
        record(audit);
      }),

    getInstance: (id) => area.read((sql) => getInstance(sql, id)),

    getToken: (id) =>
      area.read((sql) => {
        const row = sql.get<TokenRow>("SELECT * FROM broker_tokens WHERE id = ?", id);
        return row === undefined ? undefined : tokenFromRow(row);
      }),

    tokenOfInstance: (instanceId) =>
      area.read((sql) => {
        const row = sql.get<TokenRow>("SELECT * FROM broker_tokens WHERE instance_id = ?", instanceId);
        return row === undefined ? undefined : tokenFromRow(row);
      }),

    exchange: (tokenId, at, credentials) =>
      area.write((sql, record) => {
        const used = sql.run(
          "UPDATE broker_tokens SET state = 'used', used_at = ? WHERE id = ? AND state = 'unused' AND instance_id = ?",
          at,
          tokenId,
          credentials.instanceId,
        );
        // Another exchange (or a stop) got there first.
        if (used.changes === 0) throw new CustosError("conflict", "replay");
        const started = sql.run(
          `UPDATE broker_instances SET state = 'running', updated_at = ?, revision = revision + 1
           WHERE id = ? AND state = 'registered'`,
          at,
          credentials.instanceId,
        );
        if (started.changes === 0) throw new CustosError("conflict", "replay");
        recordCredentials(sql, credentials);
        for (const entry of credentials.audits) record(entry);
      }),

    issue: (credentials) =>
      area.write((sql, record) => {
        recordCredentials(sql, credentials);
        for (const entry of credentials.audits) record(entry);
      }),

    extendLease: (id, expectedRevision, leaseExpiresAt, at, audit) =>
      area.write((sql, record) => {
        const result = sql.run(
          `UPDATE broker_instances SET lease_expires_at = ?, updated_at = ?, revision = revision + 1
           WHERE id = ? AND revision = ? AND state != 'stopped'`,
          leaseExpiresAt,
          at,
          id,
          expectedRevision,
        );
        if (result.changes === 0) throw new CustosError("conflict", `instance ${id} was stopped or changed meanwhile`);
        record(audit);
      }),

    stop: (id, at, reason, audit) =>
      area.write((sql, record) => {
        const result = sql.run(
          `UPDATE broker_instances SET state = 'stopped', stopped_at = ?, stop_reason = ?, updated_at = ?,
             revision = revision + 1
           WHERE id = ? AND state != 'stopped'`,
          at,
          reason,
          at,
          id,
        );
        if (result.changes === 0) {
          if (getInstance(sql, id) === undefined) throw new CustosError("not_found", `no instance ${id}`);
          throw new CustosError("conflict", `instance ${id} is already stopped`);
        }
        sql.run("UPDATE broker_tokens SET state = 'void' WHERE instance_id = ? AND state = 'unused'", id);
        sql.run(
          "UPDATE broker_jwts SET denied_at = ? WHERE instance_id = ? AND denied_at IS NULL AND expires_at > ?",
          at,
          id,
          at,
        );
        record(audit);
        return sql
          .all<{ serial: string }>(
            `${CERT_SELECT} WHERE b.instance_id = ? AND c.status = 'valid' AND c.not_after > ? ORDER BY b.serial`,
            id,
            at,
          )
          .map((r) => r.serial);
      }),

    listInstances: (q) =>
      area.read((sql) => {
        const where: string[] = [];
        const params: unknown[] = [];
        const match = (clause: string, value: unknown): void => {
          where.push(clause);
          params.push(value);
        };
        if (q.org !== undefined) match("org = ?", q.org);
        if (q.space !== undefined) match("space = ?", q.space);
        if (q.app !== undefined) match("app = ?", q.app);
        if (q.state === "live") where.push("state != 'stopped'");
        else if (q.state !== undefined) match("state = ?", q.state);
        if (q.after !== undefined) match("id > ?", q.after);
        const filter = where.length > 0 ? `WHERE ${where.join(" AND ")}` : "";
        return sql
          .all<InstanceRow>(`SELECT * FROM broker_instances ${filter} ORDER BY id LIMIT ?`, ...params, q.limit)
          .map(instanceFromRow);
      }),

    listLapsed: (now) =>
      area.read((sql) =>
        sql
          .all<InstanceRow>(
            `SELECT * FROM broker_instances WHERE state != 'stopped' AND lease_expires_at <= ? ORDER BY lease_expires_at`,
            now,
          )
          .map(instanceFromRow),
      ),

    instanceCounts: (appId) =>
      area.read((sql) =>
        Object.fromEntries(
          sql
            .all<{ state: string; n: number }>(
              "SELECT state, count(*) AS n FROM broker_instances WHERE app_id = ? GROUP BY state",
              appId,
            )
            .map((r) => [r.state, r.n]),
        ),
      ),

    listUnrevoked: (now) =>
      area.read((sql) =>
        sql
          .all<{ serial: string; instance_id: string }>(
            `SELECT b.serial, b.instance_id FROM broker_certificates b
               JOIN pki_certificates c ON c.serial = b.serial
               JOIN broker_instances i ON i.id = b.instance_id
             WHERE i.state = 'stopped' AND c.status = 'valid' AND c.not_after > ? ORDER BY b.serial`,
            now,
          )
          .map((r) => ({ instanceId: r.instance_id, serial: r.serial })),
      ),

    certificate: (serial) =>
      area.read((sql) => {
        const row = sql.get<CertRow>(`${CERT_SELECT} WHERE b.serial = ?`, serial);
        return row === undefined ? undefined : certFromRow(row);
      }),

    certificates: (instanceId) =>
      area.read((sql) =>
        sql
          .all<CertRow>(`${CERT_SELECT} WHERE b.instance_id = ? ORDER BY b.issued_at, b.serial`, instanceId)
          .map(certFromRow),
      ),

    getJwt: (jti) =>
      area.read((sql) => {
        const row = sql.get<JwtRow>("SELECT * FROM broker_jwts WHERE jti = ?", jti);
        return row === undefined ? undefined : jwtFromRow(row);
      }),

    liveJwts: (instanceId, now) =>
      area.read((sql) =>
        sql
          .all<JwtRow>(
            "SELECT * FROM broker_jwts WHERE instance_id = ? AND expires_at > ? ORDER BY issued_at, jti",
            instanceId,
            now,
          )
          .map(jwtFromRow),
      ),

    pruneJwts: (now) => area.write((sql) => sql.run("DELETE FROM broker_jwts WHERE expires_at <= ?", now).changes),

    record: (audit) =>
      area.write((_sql, record) => {
        record(audit);
      }),
  };
}
