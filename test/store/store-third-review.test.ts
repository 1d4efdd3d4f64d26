import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { AuditLog } from "../../src/audit/index.js";
import { isCustosError } from "../../src/errors/index.js";
import { Pkcs11Keystore } from "../../src/hsm/pkcs11/index.js";
import { KmsService, keyPairLabel } from "../../src/kms/index.js";
import { Secret } from "../../src/secret/index.js";
import {
  type AuditEntry,
  type BootstrapTokenRecord,
  type CaRecord,
  type CertificateRecord,
  type ConsumerRecord,
  type InstanceRecord,
  type KrlMaker,
  type SecretChange,
  type SecretVersionRecord,
  SqliteStore,
  type SshCertificateRecord,
  type SshSudoGrantRecord,
} from "../../src/store/index.js";
import { migrate } from "../../src/store/sqlite/connection.js";
import { migrations } from "../../src/store/sqlite/migrations/index.js";
import { type CustosInstance, errorCode, fetchRaw, httpsRaw, ok, startCustos } from "../helpers/custos.js";
import { acmeProdApps, nodeAgentToken } from "../helpers/platform.js";
import { createTestToken, tokenObjectLabels } from "../helpers/softhsm.js";
import {
  aesVersion,
  assertChainIntact,
  entry,
  groupRecord,
  keyRecord,
  policyRecord,
  sudoGrant,
  tempDir,
  tokenRecord,
  userRecord,
} from "./helpers.js";

/**
 * The store's promise, third review: every use-case-level operation commits whole or
 * not at all, with its audit record, and what it acknowledged survives a kill -9.
 *
 * Oracles: the database file read and changed from a second SQLite connection (a
 * trigger installed there fails one chosen statement of an operation, a middle write
 * or its audit record; every table is then compared with what it held before, and
 * the error must be the store's own, not SQLite's); a real server answering over
 * HTTPS with its audit log read from the file; a child process killed with SIGKILL;
 * strace's record of the system calls; pkcs11-tool's list of the HSM's keys.
 */

const tmp = tempDir();
after(() => tmp.remove());

const T = "2025-01-01T00:00:00.000Z";
const LATER = "2030-01-01T00:00:00.000Z";
const FAULT_MESSAGE = "injected fault";

/** Every table's rows, in rowid order, as a second connection sees the file. */
function snapshot(db: Database.Database): Record<string, unknown[]> {
  const tables = db
    .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
    .all() as Array<{ name: string }>;
  return Object.fromEntries(tables.map((t) => [t.name, db.prepare(`SELECT * FROM "${t.name}" ORDER BY rowid`).all()]));
}

interface Fault {
  readonly table: string;
  readonly event: "INSERT" | "UPDATE" | "DELETE";
  /** A trigger WHEN condition (NEW./OLD. columns); every row when omitted. */
  readonly when?: string;
  /** FAIL keeps what the failing statement changed before that row; ABORT undoes the statement; ROLLBACK the transaction. */
  readonly mode?: "ABORT" | "FAIL" | "ROLLBACK";
}

let faults = 0;

/** Installs a trigger that fails the statement `fault` describes; returns what removes it. */
function inject(db: Database.Database, fault: Fault): () => void {
  const name = `injected_fault_${++faults}`;
  db.exec(
    `CREATE TRIGGER ${name} BEFORE ${fault.event} ON ${fault.table}
     ${fault.when === undefined ? "" : `WHEN ${fault.when}`}
     BEGIN SELECT RAISE(${fault.mode ?? "FAIL"}, '${FAULT_MESSAGE}'); END`,
  );
  return () => db.exec(`DROP TRIGGER ${name}`);
}

const SQL_WORDS = /\b(INSERT|UPDATE|DELETE|SELECT|WHERE|VALUES|SQLITE_[A-Z_]+)\b|injected/;

/** The error the store gives for a failed statement: a CustosError of its own, saying nothing of the SQL. */
function assertCleanStoreError(e: unknown, what: string): void {
  assert.ok(isCustosError(e), `${what}: expected a CustosError, got ${String(e)}`);
  assert.ok(!(e instanceof Database.SqliteError), `${what}: a raw SqliteError`);
  assert.notEqual(e.code, "internal", `${what}: ${e.message}`);
  assert.doesNotMatch(e.message, SQL_WORDS, `${what}: the message speaks SQL`);
}

/** The injected trigger is what failed `e` (and not, say, a validation the op does first). */
function causedByFault(e: unknown): boolean {
  for (let c: unknown = e; c instanceof Error; c = c.cause) {
    if (c.message === FAULT_MESSAGE) return true;
  }
  return false;
}

/** An audit fault on the op's own record: its action is made unique so the trigger catches nothing else. */
function auditFault(action: string): Fault {
  return { table: "audit_log", event: "INSERT", when: `NEW.action = '${action}'`, mode: "ABORT" };
}

let unique = 0;
/** An audit entry with an action no other write uses (so a trigger on it fires for this op only). */
function own(action: string): AuditEntry {
  return entry(`${action}#${++unique}`);
}

const krl: KrlMaker = (state) =>
  Buffer.from(
    JSON.stringify({
      version: state.version,
      cas: state.cas.map((c) => [c.caId, [...c.serials].sort()]),
      keys: state.fingerprints.map((f) => f.toString("hex")).sort(),
    }),
  );

// ---- records ----------------------------------------------------------------

function caRecord(id: string, kind: CaRecord["kind"], parentId: string | null): CaRecord {
  return {
    id,
    kind,
    algorithm: "ecdsa-p256",
    hsmLabel: `custos-ca-${id}`,
    hsmId: "0a",
    certPem: `-----BEGIN CERTIFICATE-----\n${randomBytes(48).toString("base64")}\n-----END CERTIFICATE-----\n`,
    parentId,
    state: "active",
    createdAt: T,
    notAfter: LATER,
    crlNumber: 1,
    crlDer: randomBytes(64),
    crlNextUpdate: LATER,
    revision: 1,
  };
}

function certificate(serial: string, issuerId: string, role = "web"): CertificateRecord {
  return {
    serial,
    issuerId,
    role,
    subject: `CN=${serial}`,
    commonName: serial,
    dnsNames: [`${serial}.svc.test`],
    ipAddresses: [],
    uris: [],
    keyType: "ec-p256",
    publicKey: randomBytes(91),
    notBefore: T,
    notAfter: LATER,
    fingerprint: randomBytes(32).toString("hex"),
    pem: `-----BEGIN CERTIFICATE-----\n${randomBytes(48).toString("base64")}\n-----END CERTIFICATE-----\n`,
    status: "valid",
    revokedAt: null,
    revocationReason: null,
    issuedBy: "user:alice",
  };
}

function instance(id: string, appId: string, app: string): InstanceRecord {
  return {
    id,
    org: "acme",
    space: "prod",
    app,
    appId,
    state: "registered",
    leaseExpiresAt: LATER,
    registeredBy: "token:agent",
    createdAt: T,
    updatedAt: T,
    stoppedAt: null,
    stopReason: null,
    revision: 1,
  };
}

function bootstrapToken(id: string, instanceId: string): BootstrapTokenRecord {
  return {
    id,
    instanceId,
    hash: randomBytes(32).toString("hex"),
    createdAt: T,
    expiresAt: LATER,
    state: "unused",
    usedAt: null,
  };
}

function sshCert(serial: string, fingerprint: string, sudoGrantId: string | null = null): SshCertificateRecord {
  return {
    serial,
    caId: "ssh-user-1",
    certType: "user",
    keyId: `key-${serial}`,
    role: "owner",
    principals: ["app"],
    requester: "user:alice",
    fingerprint,
    validAfter: T,
    validBefore: LATER,
    issuedAt: T,
    sudoGrantId,
    status: "valid",
    revokedAt: null,
    revocationReason: null,
  };
}

function sshSudo(id: string, appId: string, app: string, subjectId: string): SshSudoGrantRecord {
  return {
    id,
    appId,
    org: "acme",
    space: "prod",
    app,
    subjectType: "user",
    subjectId,
    account: "root",
    reason: "incident",
    grantedBy: "user:root",
    createdAt: T,
    expiresAt: LATER,
    revokedAt: null,
  };
}

function secretVersion(path: string, version: number): SecretVersionRecord {
  return {
    path,
    version,
    createdAt: T,
    deletedAt: null,
    destroyedAt: null,
    ciphertext: `custos:v1:${randomBytes(60).toString("base64")}`,
  };
}

function appRecord(id: string, name: string, ownerUsers: string[], ownerGroups: string[], revision = 1) {
  return {
    id,
    org: "acme",
    space: "prod",
    name,
    keyName: `app.acme.prod.${name}`,
    ownerUsers,
    ownerGroups,
    createdAt: T,
    updatedAt: T,
    revision,
  };
}

// ---- every multi-write operation, failed at one of its writes ------------------

describe("every multi-write Store operation, failed at a middle write or its audit record, leaves no row behind", () => {
  let store: SqliteStore;
  let side: Database.Database;

  /**
   * Runs `op` once per fault (and once more with its audit record refused): each run
   * must reject with the store's own error and leave every table as it was, the
   * chain head included. Then `op` runs without a fault and must succeed, its
   * records continuing the chain from the same head. Returns that run's value.
   */
  async function wholeOrNothing<T>(what: string, op: () => Promise<T>, action: string, steps: Fault[]): Promise<T> {
    for (const fault of [...steps, auditFault(action)]) {
      const label = `${what}, fault on ${fault.event} ${fault.table}${fault.when ? ` when ${fault.when}` : ""}`;
      const before = snapshot(side);
      const head = await store.auditHead();
      const remove = inject(side, fault);
      try {
        await assert.rejects(op(), (e: unknown) => {
          assertCleanStoreError(e, label);
          assert.ok(causedByFault(e), `${label}: failed for another reason: ${String(e)}`);
          return true;
        });
      } finally {
        remove();
      }
      assert.deepEqual(snapshot(side), before, `${label}: a table changed`);
      assert.deepEqual(await store.auditHead(), head, `${label}: the chain head moved`);
    }
    const head = await store.auditHead();
    const value = await op();
    const [first] = await store.readAuditAfter(head.seq, 1);
    assert.equal(first?.prevHash, head.hash, `${what}: the next record continues the chain`);
    assert.equal(first?.action, action, `${what}: its own record follows the head`);
    return value;
  }

  const alice = userRecord("alice");
  const bob = userRecord("bob");
  const carol = userRecord("carol");
  const ops = groupRecord("ops", [alice.id, bob.id]);
  const session = tokenRecord(alice.id, { kind: "session", name: "login" });
  const parent = tokenRecord(alice.id, { name: "parent" });
  const child = tokenRecord(alice.id, { name: "child", parentId: parent.id });
  const grandchild = tokenRecord(alice.id, { name: "grandchild", parentId: child.id });
  const bobToken = tokenRecord(bob.id, { name: "bob" });
  const bobChild = tokenRecord(bob.id, { name: "bob-child", parentId: bobToken.id });
  // A standalone token bob made in a login session, and one it made in turn.
  const bobMade = tokenRecord(null, { name: "bob-svc", makerUserId: bob.id });
  const bobMadeChild = tokenRecord(null, { name: "bob-svc-child", parentId: bobMade.id });
  const k1 = keyRecord("k1");
  const root = caRecord("root-1", "root", null);
  const int1 = caRecord("int-1", "intermediate", "root-1");
  const c1 = certificate("c1", "int-1");
  const consumerCert = certificate("cons-1", "int-1", "router");
  const consumer: ConsumerRecord = {
    name: "router",
    role: "router",
    request: { dnsNames: ["*.apps.test"] },
    targetGeneration: 1,
    previousGeneration: null,
    rotation: null,
    createdAt: T,
    updatedAt: T,
    revision: 1,
  };
  const web = appRecord("app-web", "web", [alice.id], [ops.id]);
  const doomed = appRecord("app-doomed", "doomed", [alice.id], []);
  const dbPath = "acme/prod/web/db";
  const sharedPath = "shared/tls";
  const sg1 = sshSudo("sg-1", "app-web", "web", alice.id);
  const sgDoomed = sshSudo("sg-doomed", "app-doomed", "doomed", alice.id);

  before(async () => {
    const path = tmp.path("multi-write.db");
    store = await SqliteStore.open(path);
    side = new Database(path);
    for (const u of [alice, bob, carol]) await store.createUser(u, entry("user.create"));
    await store.createGroup(ops, entry("group.create"));
    for (const t of [session, parent, child, grandchild, bobToken, bobChild, bobMade, bobMadeChild]) {
      await store.createToken(t, entry("token.create"));
    }
    await store.createKey(k1, aesVersion(k1.id, 1), entry("key.create"));
    await store.addCas([root, int1], [], { "pki.active": "int-1" }, entry("pki.init"));
    await store.createCertificate(c1, entry("pki.issue"));
    await store.putRole(
      { name: "router", definition: { dnsNames: ["*.apps.test"] }, createdAt: T, updatedAt: T, revision: 1 },
      null,
      entry("pki.role.put"),
    );
    await store.writeConsumer(
      {
        consumer,
        expectedRevision: null,
        addGeneration: {
          generation: {
            consumer: "router",
            generation: 1,
            serial: consumerCert.serial,
            sealedKey: randomBytes(80),
            createdAt: T,
          },
          certificate: consumerCert,
        },
      },
      entry("cert.consumer.create"),
    );
    await store.platform.createOrg({ name: "acme", createdAt: T }, entry("platform.org.create"));
    await store.platform.createSpace({ org: "acme", name: "prod", createdAt: T }, entry("platform.space.create"));
    await store.platform.createApp(web, entry("platform.app.create"));
    await store.platform.createApp(doomed, entry("platform.app.create"));
    for (const [path, appId, versions] of [
      [dbPath, "app-web", 2],
      [sharedPath, null, 1],
      ["acme/prod/doomed/key", "app-doomed", 2],
    ] as const) {
      for (let v = 1; v <= versions; v++) {
        await store.secrets.changeSecret(
          {
            secret: {
              path,
              appId,
              currentVersion: v,
              maxVersions: 2,
              casRequired: false,
              customMetadata: {},
              createdAt: T,
              updatedAt: T,
              revision: v,
            },
            expectedRevision: v === 1 ? null : v - 1,
            addVersion: secretVersion(path, v),
          },
          entry("secret.write"),
        );
      }
    }
    await store.secrets.putGrants(
      [{ target: sharedPath, appId: "app-doomed", grantedBy: "user:root", createdAt: T }],
      entry("secret.grant"),
    );
    await store.broker.register(instance("i-1", "app-web", "web"), bootstrapToken("tok-1", "i-1"), entry("reg"));
    await store.ssh.initialize(
      [
        {
          id: "ssh-user-1",
          kind: "user",
          algorithm: "ed25519",
          hsmLabel: "ssh-user",
          hsmId: "01",
          publicKey: randomBytes(51),
          state: "active",
          createdAt: T,
        },
      ],
      [
        {
          name: "owner",
          certType: "user",
          spec: { ttl: 3600 },
          builtin: true,
          createdAt: T,
          updatedAt: T,
          revision: 1,
        },
      ],
      krl,
      entry("ssh.init"),
    );
    await store.ssh.createSudoGrant(sg1, entry("ssh.sudo.grant"));
    await store.ssh.createSudoGrant(sgDoomed, entry("ssh.sudo.grant"));
    await store.ssh.insertCertificate(sshCert("101", "SHA256:one"), entry("ssh.sign"));
    await store.ssh.insertCertificate(sshCert("102", "SHA256:two", "sg-1"), entry("ssh.sign"));
    await store.ssh.insertCertificate(sshCert("103", "SHA256:three"), entry("ssh.sign"));
    await store.ssh.insertCertificate(sshCert("104", "SHA256:three"), entry("ssh.sign"));
  });
  after(async () => {
    side?.close();
    await store?.close();
  });

  test("keys: createKey (key, version, record) and updateKey (rotate and destroy in one change)", async () => {
    const k2 = keyRecord("k2");
    const a1 = own("key.create");
    await wholeOrNothing("createKey", () => store.createKey(k2, aesVersion(k2.id, 1), a1), a1.action, [
      { table: "key_versions", event: "INSERT" },
    ]);
    assert.equal((await store.getKey("k2"))?.id, k2.id);

    // The read cache holds k1 and its version 1 before each failed change: neither may go stale.
    const cachedKey = await store.getKey("k1");
    const cachedVersion = await store.getKeyVersion(k1.id, 1);
    assert.ok(cachedVersion?.wrappedKey);
    const a2 = own("key.rotate");
    const rotated = { ...k1, revision: 2, latestVersion: 2, minDecryptionVersion: 2, updatedAt: LATER };
    const change = { key: rotated, expectedRevision: 1, addVersion: aesVersion(k1.id, 2), destroyVersions: [1] };
    for (const fault of [
      { table: "key_versions", event: "INSERT" } as const,
      { table: "key_versions", event: "UPDATE", when: "NEW.wrapped_key IS NULL" } as const,
    ]) {
      const remove = inject(side, fault);
      await assert.rejects(store.updateKey(change, a2), (e: unknown) => causedByFault(e));
      remove();
      assert.deepEqual(await store.getKey("k1"), cachedKey, "the cached key after a failed change");
      assert.deepEqual(await store.getKeyVersion(k1.id, 1), cachedVersion, "the cached version after a failed change");
    }
    await wholeOrNothing("updateKey", () => store.updateKey(change, a2), a2.action, [
      { table: "key_versions", event: "INSERT" },
      { table: "key_versions", event: "UPDATE", when: "NEW.wrapped_key IS NULL" },
      { table: "keys", event: "UPDATE" },
    ]);
    assert.deepEqual(await store.getKey("k1"), rotated);
    assert.equal((await store.getKeyVersion(k1.id, 1))?.wrappedKey, null);
  });

  test("users and groups: updateUser ending sessions, deleteUser, createGroup, updateGroup", async () => {
    const a1 = own("user.update");
    await wholeOrNothing(
      "updateUser with endSessions",
      () => store.updateUser({ ...alice, passwordHash: "$argon2id$new" }, 1, a1, { endSessions: true }),
      a1.action,
      [
        { table: "tokens", event: "UPDATE" },
        { table: "users", event: "UPDATE" },
      ],
    );
    assert.notEqual((await store.getToken(session.id))?.revokedAt, null);

    const a2 = own("user.delete");
    const deleteHead = await store.auditHead();
    await wholeOrNothing("deleteUser", () => store.deleteUser(bob.id, a2), a2.action, [
      { table: "tokens", event: "UPDATE", when: `NEW.id = '${bobChild.id}'` },
      { table: "tokens", event: "UPDATE", when: `NEW.id = '${bobMade.id}'` },
      { table: "tokens", event: "UPDATE", when: `NEW.id = '${bobMadeChild.id}'` },
      { table: "groups", event: "UPDATE" },
      // A cascade from the user's row: ABORT, as FAIL inside a foreign-key action is reported as that key failing.
      { table: "group_members", event: "DELETE", mode: "ABORT" },
      { table: "users", event: "DELETE" },
    ]);
    assert.equal(await store.getUser(bob.id), undefined);
    for (const t of [bobToken, bobChild, bobMade, bobMadeChild]) {
      assert.equal((await store.getToken(t.id))?.revokedAt, a2.time, t.name);
    }
    // revokedWith names what the user's own tokens don't: bob-child acts for bob, so it is one of them.
    const [deleted] = await store.readAuditAfter(deleteHead.seq, 1);
    assert.deepEqual(new Set(deleted?.details.revokedWith as string[]), new Set([bobMade.id, bobMadeChild.id]));

    const g2 = groupRecord("g2", [alice.id, carol.id]);
    const a3 = own("group.create");
    await wholeOrNothing("createGroup", () => store.createGroup(g2, a3), a3.action, [
      { table: "group_members", event: "INSERT", when: `NEW.user_id = '${carol.id}'` },
    ]);

    const current = await store.getGroupByName("ops");
    assert.ok(current);
    const a4 = own("group.update");
    await wholeOrNothing(
      "updateGroup",
      () => store.updateGroup({ ...current, members: [carol.id, alice.id] }, current.revision, a4),
      a4.action,
      [
        { table: "group_members", event: "DELETE" },
        { table: "group_members", event: "INSERT", when: `NEW.user_id = '${alice.id}'` },
      ],
    );
    assert.deepEqual((await store.getGroupByName("ops"))?.members, [carol.id, alice.id]);
  });

  test("tokens: revokeToken takes the tokens it made and theirs, or none of them", async () => {
    const a = own("token.revoke");
    const revokedWith = await wholeOrNothing("revokeToken", () => store.revokeToken(parent.id, LATER, a), a.action, [
      // FAIL keeps the rows the statement changed before the grandchild's, until the savepoint rolls back.
      { table: "tokens", event: "UPDATE", when: `NEW.id = '${grandchild.id}'`, mode: "FAIL" },
      { table: "tokens", event: "UPDATE", when: `NEW.id = '${parent.id}'` },
    ]);
    assert.deepEqual([...revokedWith].sort(), [child.id, grandchild.id].sort());
  });

  test("pki: revokeCertificate (certificate and CRL), addCas (rollover), writeConsumer and reportConsumerAgent", async () => {
    const a1 = own("pki.revoke");
    const crl = { caId: "int-1", expectedRevision: 1, crlNumber: 2, crlDer: randomBytes(70), crlNextUpdate: LATER };
    await wholeOrNothing(
      "revokeCertificate",
      () => store.revokeCertificate("c1", LATER, "keyCompromise", crl, a1),
      a1.action,
      [
        { table: "pki_certificates", event: "UPDATE" },
        { table: "pki_cas", event: "UPDATE" },
      ],
    );
    assert.equal((await store.getCertificate("c1"))?.status, "revoked");
    assert.deepEqual((await store.getCa("int-1"))?.crlDer, crl.crlDer);

    const a2 = own("pki.ca.rotate");
    await wholeOrNothing(
      "addCas with a retirement",
      () =>
        store.addCas(
          [caRecord("int-2", "intermediate", "root-1")],
          [{ id: "int-1", expectedRevision: 2 }],
          { "pki.active": "int-2" },
          a2,
        ),
      a2.action,
      [
        { table: "pki_cas", event: "UPDATE" },
        { table: "pki_cas", event: "INSERT" },
        { table: "settings", event: "INSERT" },
      ],
    );
    assert.equal((await store.getCa("int-1"))?.state, "retiring");

    const a3 = own("cert.rotate");
    const gen2 = certificate("cons-2", "int-2", "router");
    const rotating: ConsumerRecord = {
      ...consumer,
      targetGeneration: 2,
      previousGeneration: 1,
      rotation: { kind: "rotate", from: 1, to: 2, startedAt: LATER, completedAt: null },
      updatedAt: LATER,
      revision: 2,
    };
    await wholeOrNothing(
      "writeConsumer with a new generation",
      () =>
        store.writeConsumer(
          {
            consumer: rotating,
            expectedRevision: 1,
            addGeneration: {
              generation: {
                consumer: "router",
                generation: 2,
                serial: gen2.serial,
                sealedKey: randomBytes(80),
                createdAt: LATER,
              },
              certificate: gen2,
            },
          },
          a3,
        ),
      a3.action,
      [
        { table: "cert_consumers", event: "UPDATE" },
        { table: "pki_certificates", event: "INSERT" },
        { table: "cert_consumer_generations", event: "INSERT" },
      ],
    );
    const a4 = own("cert.agent.report");
    await wholeOrNothing(
      "reportConsumerAgent completing a rotation",
      () =>
        store.reportConsumerAgent(
          { consumer: "router", agentId: "edge-1", fingerprint: gen2.fingerprint, reportedAt: LATER },
          {
            consumer: { ...rotating, rotation: { ...rotating.rotation!, completedAt: LATER }, revision: 3 },
            expectedRevision: 2,
          },
          a4,
        ),
      a4.action,
      [
        { table: "cert_consumer_agents", event: "INSERT" },
        { table: "cert_consumers", event: "UPDATE" },
      ],
    );
    assert.equal((await store.getConsumer("router"))?.rotation?.completedAt, LATER);
  });

  test("platform: createApp with owners, updateApp, deleteApp (secrets, grants, SSH sudo grants)", async () => {
    const api = appRecord("app-api", "api", [alice.id], [ops.id]);
    const a1 = own("platform.app.create");
    await wholeOrNothing("createApp", () => store.platform.createApp(api, a1), a1.action, [
      { table: "platform_apps", event: "INSERT" },
      { table: "platform_app_owners", event: "INSERT", when: "NEW.group_id IS NOT NULL" },
    ]);

    const a2 = own("platform.app.update");
    await wholeOrNothing(
      "updateApp (owners replaced)",
      () => store.platform.updateApp({ ...web, ownerUsers: [carol.id], ownerGroups: [], revision: 2 }, 1, a2),
      a2.action,
      [
        { table: "platform_app_owners", event: "DELETE" },
        { table: "platform_app_owners", event: "INSERT" },
      ],
    );

    const a3 = own("platform.app.delete");
    await wholeOrNothing("deleteApp", () => store.platform.deleteApp("app-doomed", a3), a3.action, [
      { table: "secret_versions", event: "DELETE", when: "OLD.version = 2" },
      { table: "platform_apps", event: "DELETE" },
      // Cascades from the app's row.
      { table: "secret_grants", event: "DELETE", mode: "ABORT" },
      { table: "secrets", event: "DELETE", mode: "ABORT" },
      { table: "ssh_sudo_grants", event: "UPDATE" },
    ]);
    assert.equal(await store.platform.getAppById("app-doomed"), undefined);
    assert.equal(await store.secrets.getSecret("acme/prod/doomed/key"), undefined);
    assert.notEqual((await store.ssh.getSudoGrant("sg-doomed"))?.revokedAt, null);
  });

  test("secrets: a write that prunes, a destruction, deleteSecret and putGrants", async () => {
    const current = await store.secrets.getSecret(dbPath);
    assert.ok(current);
    const { versions: _versions, ...metadata } = current;
    const a1 = own("secret.write");
    const write: SecretChange = {
      secret: { ...metadata, currentVersion: 3, revision: current.revision + 1, updatedAt: LATER },
      expectedRevision: current.revision,
      addVersion: secretVersion(dbPath, 3),
      pruneVersions: [1],
    };
    await wholeOrNothing("changeSecret adding and pruning", () => store.secrets.changeSecret(write, a1), a1.action, [
      { table: "secrets", event: "UPDATE" },
      { table: "secret_versions", event: "INSERT" },
      { table: "secret_versions", event: "DELETE" },
    ]);
    assert.deepEqual(
      (await store.secrets.getSecret(dbPath))?.versions.map((v) => v.version),
      [2, 3],
    );

    const a2 = own("secret.destroy");
    await wholeOrNothing(
      "changeSecret destroying and deleting versions",
      () =>
        store.secrets.changeSecret(
          {
            secret: { ...metadata, currentVersion: 3, revision: current.revision + 2, updatedAt: LATER },
            expectedRevision: current.revision + 1,
            deleteVersions: { versions: [3], at: LATER },
            destroyVersions: { versions: [2], at: LATER },
          },
          a2,
        ),
      a2.action,
      [
        { table: "secret_versions", event: "UPDATE", when: "NEW.deleted_at IS NOT NULL" },
        { table: "secret_versions", event: "UPDATE", when: "NEW.ciphertext IS NULL" },
      ],
    );
    assert.equal((await store.secrets.getSecretVersion(dbPath, 2))?.ciphertext, null);

    const shared = await store.secrets.getSecret(sharedPath);
    assert.ok(shared);
    const a3 = own("secret.delete");
    await wholeOrNothing("deleteSecret", () => store.secrets.deleteSecret(sharedPath, shared.revision, a3), a3.action, [
      { table: "secret_versions", event: "DELETE" },
      { table: "secrets", event: "DELETE" },
    ]);

    const a4 = own("secret.grant");
    const grants = [
      { target: "shared/certs/", appId: "app-web", grantedBy: "user:root", createdAt: LATER },
      { target: "shared/certs/", appId: "app-api", grantedBy: "user:root", createdAt: LATER },
    ];
    await wholeOrNothing("putGrants", () => store.secrets.putGrants(grants, a4), a4.action, [
      { table: "secret_grants", event: "INSERT", when: "NEW.app_id = 'app-api'" },
    ]);
  });

  test("broker: register, an exchange with a certificate and two records, issue, stop", async () => {
    const a1 = own("broker.register");
    await wholeOrNothing(
      "register",
      () => store.broker.register(instance("i-2", "app-web", "web"), bootstrapToken("tok-2", "i-2"), a1),
      a1.action,
      [
        { table: "broker_instances", event: "INSERT" },
        { table: "broker_tokens", event: "INSERT" },
      ],
    );

    const pkiAudit = own("pki.issue");
    const exchangeAudit = own("broker.exchange");
    const exchangeCert = certificate("b-1", "int-2", "custos-broker");
    const jwt = { jti: "jti-1", instanceId: "i-1", issuedAt: LATER, expiresAt: LATER, deniedAt: null };
    await wholeOrNothing(
      "exchange",
      () =>
        store.broker.exchange("tok-1", LATER, {
          instanceId: "i-1",
          certificate: exchangeCert,
          jwt,
          audits: [pkiAudit, exchangeAudit],
        }),
      pkiAudit.action,
      [
        { table: "broker_tokens", event: "UPDATE" },
        { table: "broker_instances", event: "UPDATE" },
        { table: "pki_certificates", event: "INSERT" },
        { table: "broker_certificates", event: "INSERT" },
        { table: "broker_jwts", event: "INSERT" },
        auditFault(exchangeAudit.action),
      ],
    );
    assert.equal((await store.broker.getToken("tok-1"))?.state, "used");

    const issueAudit = own("broker.renew");
    const renewed = certificate("b-2", "int-2", "custos-broker");
    await wholeOrNothing(
      "issue",
      () =>
        store.broker.issue({
          instanceId: "i-1",
          certificate: renewed,
          jwt: { ...jwt, jti: "jti-2" },
          audits: [issueAudit],
        }),
      issueAudit.action,
      [
        { table: "pki_certificates", event: "INSERT" },
        { table: "broker_certificates", event: "INSERT" },
        { table: "broker_jwts", event: "INSERT" },
      ],
    );

    const a4 = own("broker.deregister");
    const serials = await wholeOrNothing(
      "stop",
      () => store.broker.stop("i-1", "2029-01-01T00:00:00.000Z", "deregistered", a4),
      a4.action,
      [
        { table: "broker_instances", event: "UPDATE" },
        { table: "broker_jwts", event: "UPDATE", when: "NEW.jti = 'jti-2'" },
      ],
    );
    assert.deepEqual(serials, ["b-1", "b-2"]);
    assert.deepEqual(
      (await store.broker.liveJwts("i-1", "2029-01-01T00:00:00.000Z")).map((j) => j.deniedAt),
      ["2029-01-01T00:00:00.000Z", "2029-01-01T00:00:00.000Z"],
    );
  });

  test("ssh: revokeCertificate, revokeKey and revokeSudoGrant each store their KRL with the revocation", async () => {
    const krlBefore = await store.ssh.getKrl();
    assert.ok(krlBefore);
    const a1 = own("ssh.revoke");
    const first = await wholeOrNothing(
      "revokeCertificate",
      () => store.ssh.revokeCertificate("101", LATER, "superseded", krl, a1),
      a1.action,
      [
        { table: "ssh_certificates", event: "UPDATE" },
        { table: "ssh_krl", event: "INSERT" },
      ],
    );
    assert.equal(first.version, krlBefore.version + 1, "failed attempts took no KRL version");

    const a2 = own("ssh.revoke.key");
    const byKey = await wholeOrNothing(
      "revokeKey",
      () =>
        store.ssh.revokeKey(
          { fingerprint: "SHA256:three", fingerprintRaw: randomBytes(32) },
          LATER,
          "keyCompromise",
          "user:root",
          krl,
          a2,
        ),
      a2.action,
      [
        { table: "ssh_certificates", event: "UPDATE", when: "NEW.serial = '104'", mode: "FAIL" },
        { table: "ssh_revoked_keys", event: "INSERT" },
        { table: "ssh_krl", event: "INSERT" },
      ],
    );
    assert.deepEqual([...byKey.serials].sort(), ["103", "104"]);

    const a3 = own("ssh.sudo.revoke");
    const bySudo = await wholeOrNothing(
      "revokeSudoGrant",
      () => store.ssh.revokeSudoGrant("sg-1", "2029-01-01T00:00:00.000Z", krl, a3),
      a3.action,
      [
        { table: "ssh_sudo_grants", event: "UPDATE" },
        { table: "ssh_certificates", event: "UPDATE" },
        { table: "ssh_krl", event: "INSERT" },
      ],
    );
    assert.deepEqual(bySudo.serials, ["102"]);
    assert.equal(bySudo.krl.version, krlBefore.version + 3);
  });

  test("single-table operations: the change and its audit record go together", async () => {
    const cases: Array<[string, (a: AuditEntry) => Promise<unknown>, Fault[]]> = [
      ["putSetting", (a) => store.putSetting("s", "v", a), [{ table: "settings", event: "INSERT" }]],
      ["createUser", (a) => store.createUser(userRecord("dave"), a), []],
      ["createToken", (a) => store.createToken(tokenRecord(carol.id, { name: "single" }), a), []],
      ["putPolicy", (a) => store.putPolicy(policyRecord("readers"), null, a), []],
      ["createSudoGrant", (a) => store.createSudoGrant(sudoGrant(carol.id, { id: "sudo-1" }), a), []],
      ["revokeSudoGrant", (a) => store.revokeSudoGrant("sudo-1", LATER, a), []],
      ["deletePolicy", (a) => store.deletePolicy("readers", a), []],
      [
        "putRole",
        (a) => store.putRole({ name: "db", definition: {}, createdAt: T, updatedAt: T, revision: 1 }, null, a),
        [],
      ],
      ["deleteRole", (a) => store.deleteRole("db", a), []],
      ["createCertificate", (a) => store.createCertificate(certificate("c9", "int-2"), a), []],
      ["createOrg", (a) => store.platform.createOrg({ name: "other", createdAt: T }, a), []],
      ["createSpace", (a) => store.platform.createSpace({ org: "other", name: "dev", createdAt: T }, a), []],
      ["deleteSpace", (a) => store.platform.deleteSpace("other", "dev", a), []],
      ["deleteOrg", (a) => store.platform.deleteOrg("other", a), []],
      ["beginDeleteApp", (a) => store.platform.beginDeleteApp("app-api", LATER, a), []],
      ["extendLease", (a) => store.broker.extendLease("i-2", 1, "2031-01-01T00:00:00.000Z", LATER, a), []],
      [
        "ssh.putRole",
        (a) =>
          store.ssh.putRole(
            { name: "ops", certType: "user", spec: {}, builtin: false, createdAt: T, updatedAt: T, revision: 1 },
            null,
            a,
          ),
        [],
      ],
      ["ssh.insertCertificate", (a) => store.ssh.insertCertificate(sshCert("105", "SHA256:five"), a), []],
      ["ssh.createSudoGrant", (a) => store.ssh.createSudoGrant(sshSudo("sg-2", "app-web", "web", carol.id), a), []],
      ["ssh.deleteRole", (a) => store.ssh.deleteRole("ops", a), []],
      [
        "deleteGroup",
        async (a) => store.deleteGroup((await store.getGroupByName("g2"))?.id ?? "missing", a),
        // Its members go by cascade.
        [{ table: "group_members", event: "DELETE", mode: "ABORT" }],
      ],
    ];
    for (const [what, run, steps] of cases) {
      const a = own(what);
      await wholeOrNothing(what, () => run(a), a.action, steps);
    }
  });

  test("initialize and ssh.initialize on a fresh store: all of the first state or none of it", async () => {
    const path = tmp.path("fresh.db");
    const fresh = await SqliteStore.open(path);
    const freshSide = new Database(path);
    const previous = { store, side };
    store = fresh;
    side = freshSide;
    try {
      const admin = userRecord("admin", { policies: ["admin"] });
      const a1 = own("custos.init");
      await wholeOrNothing(
        "initialize",
        () =>
          fresh.initialize(
            {
              settings: { "root.label": "custos-root", "root.kcv": "abcdef" },
              policies: [policyRecord("admin"), policyRecord("reader")],
              admin,
              adminToken: tokenRecord(admin.id, { name: "admin" }),
            },
            a1,
          ),
        a1.action,
        [
          { table: "policies", event: "INSERT", when: "NEW.name = 'reader'" },
          { table: "users", event: "INSERT" },
          { table: "tokens", event: "INSERT" },
          { table: "store_meta", event: "INSERT" },
        ],
      );
      assert.equal(await fresh.isInitialized(), true);
      const a2 = own("ssh.init");
      await wholeOrNothing(
        "ssh.initialize",
        () =>
          fresh.ssh.initialize(
            [
              {
                id: "u",
                kind: "user",
                algorithm: "ed25519",
                hsmLabel: "u",
                hsmId: "01",
                publicKey: randomBytes(51),
                state: "active",
                createdAt: T,
              },
              {
                id: "h",
                kind: "host",
                algorithm: "ed25519",
                hsmLabel: "h",
                hsmId: "02",
                publicKey: randomBytes(51),
                state: "active",
                createdAt: T,
              },
            ],
            [{ name: "owner", certType: "user", spec: {}, builtin: true, createdAt: T, updatedAt: T, revision: 1 }],
            krl,
            a2,
          ),
        a2.action,
        [
          { table: "ssh_cas", event: "INSERT", when: "NEW.id = 'h'" },
          { table: "ssh_roles", event: "INSERT" },
          { table: "ssh_krl", event: "INSERT" },
        ],
      );
      assert.equal(await assertChainIntact(fresh), 2);
    } finally {
      store = previous.store;
      side = previous.side;
      freshSide.close();
      await fresh.close();
    }
  });

  test("after all those failures the chain is whole and the file sound", async () => {
    await assertChainIntact(store);
    assert.deepEqual(side.pragma("integrity_check"), [{ integrity_check: "ok" }]);
    assert.deepEqual(side.pragma("foreign_key_check"), []);
  });
});

// ---- group commit: one batch, several areas, some writes failing ------------------

describe("a group-committed batch across areas in which some writes fail", () => {
  let store: SqliteStore;
  let side: Database.Database;
  const user = userRecord("erin");
  const parent = tokenRecord(user.id, { name: "parent" });
  const child = tokenRecord(user.id, { name: "child", parentId: parent.id });
  const kg = keyRecord("kg");

  before(async () => {
    const path = tmp.path("batch.db");
    store = await SqliteStore.open(path);
    side = new Database(path);
    await store.createUser(user, entry("user.create"));
    await store.createToken(parent, entry("token.create"));
    await store.createToken(child, entry("token.create"));
    await store.createKey(kg, aesVersion(kg.id, 1), entry("key.create"));
    await store.platform.createOrg({ name: "acme", createdAt: T }, entry("platform.org.create"));
    await store.platform.createSpace({ org: "acme", name: "prod", createdAt: T }, entry("platform.space.create"));
    await store.platform.createApp(appRecord("app-web", "web", [], []), entry("platform.app.create"));
  });
  after(async () => {
    side?.close();
    await store?.close();
  });

  const newSecret = (path: string): SecretChange => ({
    secret: {
      path,
      appId: "app-web",
      currentVersion: 1,
      maxVersions: 10,
      casRequired: false,
      customMetadata: {},
      createdAt: T,
      updatedAt: T,
      revision: 1,
    },
    expectedRevision: null,
    addVersion: secretVersion(path, 1),
  });

  test("the failing writes roll back alone; the others land, in order, each acknowledged with what was stored", async () => {
    const cachedKey = await store.getKey("kg");
    assert.ok(cachedKey);
    const head = await store.auditHead();
    const removeSecret = inject(side, {
      table: "secret_versions",
      event: "INSERT",
      when: "NEW.path = 'acme/prod/web/lost'",
    });
    const rotate = own("key.rotate");
    const removeRotate = inject(side, auditFault(rotate.action));
    const kh = keyRecord("kh");
    const settled = await Promise.allSettled([
      store.appendAudit(entry("batch.first")),
      store.secrets.changeSecret(newSecret("acme/prod/web/lost"), entry("secret.write")),
      store.createKey(kh, aesVersion(kh.id, 1), entry("key.create")),
      store.broker.register(
        instance("i-b", "app-web", "web"),
        bootstrapToken("tok-b", "i-b"),
        entry("broker.register"),
      ),
      store.updateKey(
        { key: { ...kg, revision: 2, latestVersion: 2 }, expectedRevision: 1, addVersion: aesVersion(kg.id, 2) },
        rotate,
      ),
      store.revokeToken(parent.id, LATER, entry("token.revoke")),
      store.secrets.changeSecret(newSecret("acme/prod/web/kept"), entry("secret.write")),
      store.appendAudit(entry("batch.last")),
    ]);
    removeSecret();
    removeRotate();
    assert.deepEqual(
      settled.map((s) => s.status),
      ["fulfilled", "rejected", "fulfilled", "fulfilled", "rejected", "fulfilled", "fulfilled", "fulfilled"],
    );
    for (const s of settled) {
      if (s.status === "rejected") {
        assertCleanStoreError(s.reason, "a failed write in the batch");
        assert.ok(causedByFault(s.reason));
      }
    }

    // Six writes landed: their records follow the old head gap-free, in submission order.
    const records = await store.readAuditAfter(head.seq, 100);
    assert.deepEqual(
      records.map((r) => [r.seq, r.action]),
      [
        [head.seq + 1, "batch.first"],
        [head.seq + 2, "key.create"],
        [head.seq + 3, "broker.register"],
        [head.seq + 4, "token.revoke"],
        [head.seq + 5, "secret.write"],
        [head.seq + 6, "batch.last"],
      ],
    );
    assert.equal(records[0]?.prevHash, head.hash);
    const [first, , , , , revoked, , last] = settled;
    assert.ok(first?.status === "fulfilled" && last?.status === "fulfilled");
    assert.equal(first.value.hash, records[0]?.hash, "the acknowledged record is the stored one");
    assert.equal(last.value.hash, records[5]?.hash);
    assert.ok(revoked?.status === "fulfilled");
    assert.deepEqual(revoked.value, [child.id]);
    assert.deepEqual(records[3]?.details.revokedWith, [child.id]);

    // What failed left nothing; what landed is whole.
    assert.equal(await store.secrets.getSecret("acme/prod/web/lost"), undefined);
    assert.deepEqual(
      side.prepare("SELECT count(*) AS n FROM secret_versions WHERE path = ?").get("acme/prod/web/lost"),
      { n: 0 },
    );
    assert.deepEqual(await store.getKey("kg"), cachedKey, "the failed rotation left the cached key as it was");
    assert.equal(await store.getKeyVersion(kg.id, 2), undefined);
    assert.equal((await store.getKey("kh"))?.id, kh.id);
    assert.equal((await store.broker.getToken("tok-b"))?.state, "unused");
    assert.equal((await store.secrets.getSecret("acme/prod/web/kept"))?.currentVersion, 1);
    assert.notEqual((await store.getToken(child.id))?.revokedAt, null);
    assert.equal(await assertChainIntact(store), head.seq + 6);
  });

  test("a write that makes SQLite roll back the whole transaction fails its whole batch, store_unavailable, and nothing of it lands", async () => {
    const key = await store.getKey("kg");
    assert.ok(key);
    const head = await store.auditHead();
    const before = snapshot(side);
    const remove = inject(side, { table: "broker_tokens", event: "INSERT", mode: "ROLLBACK" });
    const late = userRecord("frank");
    const rotation = {
      key: { ...key, revision: key.revision + 1, latestVersion: 2 },
      expectedRevision: key.revision,
      addVersion: aesVersion(kg.id, 2),
    };
    const batch = () => [
      store.updateKey(rotation, entry("key.rotate")),
      store.secrets.changeSecret(newSecret("acme/prod/web/second"), entry("secret.write")),
      store.broker.register(
        instance("i-r", "app-web", "web"),
        bootstrapToken("tok-r", "i-r"),
        entry("broker.register"),
      ),
      store.createUser(late, entry("user.create")),
      store.appendAudit(entry("after.rollback")),
    ];
    const settled = await Promise.allSettled(batch());
    remove();
    for (const s of settled) {
      assert.equal(s.status, "rejected", "a write of a rolled-back batch was acknowledged");
      if (s.status === "rejected") {
        assertCleanStoreError(s.reason, "a write of the rolled-back batch");
        assert.equal(s.reason.code, "store_unavailable");
      }
    }
    assert.deepEqual(snapshot(side), before, "the batch left a row");
    assert.deepEqual(await store.auditHead(), head);
    assert.deepEqual(await store.getKey("kg"), key, "the rotation that ran before the failure is not cached");
    assert.equal(await store.getKeyVersion(kg.id, 2), undefined);

    // The same writes, submitted again, all land and continue the chain from the same head.
    const again = await Promise.allSettled(batch());
    assert.deepEqual(
      again.map((s) => s.status),
      ["fulfilled", "fulfilled", "fulfilled", "fulfilled", "fulfilled"],
    );
    const [next] = await store.readAuditAfter(head.seq, 1);
    assert.equal(next?.prevHash, head.hash);
    assert.equal((await store.getKey("kg"))?.latestVersion, 2);
    assert.equal(await assertChainIntact(store), head.seq + 5);
  });
});

// ---- kill -9 during secrets and broker writes ---------------------------------------

/** What the child script imports: this checkout's store. */
const STORE_URL = new URL("../../src/store/index.js", import.meta.url).href;

/**
 * Writes secrets (each write adds a version, prunes past three, and every fourth
 * destroys the one before) and walks broker instances through register, exchange
 * and stop, in concurrent bursts, printing each write once it is acknowledged.
 */
const SECRETS_AND_BROKER_WRITER = `
  const { randomBytes } = await import("node:crypto");
  const { SqliteStore } = await import(${JSON.stringify(STORE_URL)});
  const store = await SqliteStore.open(process.argv[2]);
  const LATER = "2099-01-01T00:00:00.000Z";
  let n = 0;
  const now = () => new Date().toISOString();
  const entry = (action, resource) => ({ time: now(), requestId: "r" + ++n, principal: "system", source: "local",
    action, resource, outcome: "success", errorCode: null, details: { n } });
  const out = (line) => process.stdout.write(line + "\\n");
  const hex = (s) => Buffer.from(s, "utf8").toString("hex");
  const T = now();
  await store.platform.createOrg({ name: "acme", createdAt: T }, entry("platform.org.create", "org/acme"));
  await store.platform.createSpace({ org: "acme", name: "prod", createdAt: T }, entry("platform.space.create", "s"));
  await store.platform.createApp({ id: "app-web", org: "acme", space: "prod", name: "web", keyName: "app.acme.prod.web",
    ownerUsers: [], ownerGroups: [], createdAt: T, updatedAt: T, revision: 1 }, entry("platform.app.create", "a"));
  const secrets = new Map();
  let instances = 0, registered = [], running = [];
  for (;;) {
    const ops = [];
    for (const path of ["acme/prod/web/a", "acme/prod/web/b", "acme/prod/web/c"]) {
      const s = secrets.get(path) ?? { revision: 0, current: 0, versions: [], texts: new Map() };
      const version = s.current + 1;
      const prune = s.versions.length >= 3 ? s.versions.slice(0, s.versions.length - 2) : [];
      const destroy = version % 4 === 0 && s.current > 0 && !prune.includes(s.current) ? [s.current] : [];
      const ciphertext = "custos:v1:" + randomBytes(64).toString("base64");
      const at = now();
      const change = {
        secret: { path, appId: "app-web", currentVersion: version, maxVersions: 3, casRequired: false, customMetadata: {},
          createdAt: T, updatedAt: at, revision: s.revision + 1 },
        expectedRevision: s.revision === 0 ? null : s.revision,
        addVersion: { path, version, createdAt: at, deletedAt: null, destroyedAt: null, ciphertext },
        ...(prune.length > 0 ? { pruneVersions: prune } : {}),
        ...(destroy.length > 0 ? { destroyVersions: { versions: destroy, at } } : {}),
      };
      ops.push(store.secrets.changeSecret(change, entry("secret.write", "secret/" + path)).then(() => {
        out("S " + path + " " + version + " " + hex(ciphertext));
        for (const v of destroy) out("D " + path + " " + v + " " + hex(s.texts.get(v)));
        for (const v of prune) out("P " + path + " " + v + " " + hex(s.texts.get(v)));
        s.texts.set(version, ciphertext);
        secrets.set(path, { revision: s.revision + 1, current: version,
          versions: [...s.versions.filter((v) => !prune.includes(v)), version], texts: s.texts });
      }));
    }
    const nextRegistered = [], nextRunning = [];
    for (let i = 0; i < 2; i++) {
      const id = "i-" + ++instances, at = now();
      ops.push(store.broker.register(
        { id, org: "acme", space: "prod", app: "web", appId: "app-web", state: "registered", leaseExpiresAt: LATER,
          registeredBy: "agent", createdAt: at, updatedAt: at, stoppedAt: null, stopReason: null, revision: 1 },
        { id: "tok-" + id, instanceId: id, hash: randomBytes(32).toString("hex"), createdAt: at, expiresAt: LATER,
          state: "unused", usedAt: null },
        entry("broker.register", "instance/" + id)).then(() => { out("R " + id); nextRegistered.push(id); }));
    }
    for (const id of registered) {
      const at = now();
      ops.push(store.broker.exchange("tok-" + id, at, { instanceId: id, certificate: null,
        jwt: { jti: "jti-" + id, instanceId: id, issuedAt: at, expiresAt: LATER, deniedAt: null },
        audits: [entry("broker.exchange", "instance/" + id)] }).then(() => { out("X " + id); nextRunning.push(id); }));
    }
    for (const id of running) {
      ops.push(store.broker.stop(id, now(), "deregistered", entry("broker.deregister", "instance/" + id))
        .then(() => out("T " + id)));
    }
    await Promise.all(ops);
    registered = nextRegistered;
    running = nextRunning;
  }`;

describe("kill -9 while secrets and broker instances are written", () => {
  test("every acknowledged write is there and whole, what it erased is gone from the files, and the file is sound", async () => {
    const path = tmp.path("secrets-broker-kill.db");
    const script = tmp.path("secrets-broker-writer.mts");
    writeFileSync(script, SECRETS_AND_BROKER_WRITER);
    const proc = spawn(process.execPath, ["--import", "tsx", script, path], { stdio: ["ignore", "pipe", "pipe"] });
    const written = new Map<string, Map<number, string>>();
    const erased: Array<{ what: string; hex: string }> = [];
    const instances = { registered: new Set<string>(), exchanged: new Set<string>(), stopped: new Set<string>() };
    const other: string[] = [];
    const killAfter = 2000 + Math.floor(Math.random() * 2000);
    let seen = 0;
    let buffered = "";
    let stderr = "";
    proc.stderr.setEncoding("utf8");
    proc.stderr.on("data", (c: string) => {
      stderr += c;
    });
    proc.stdout.setEncoding("utf8");
    proc.stdout.on("data", (chunk: string) => {
      buffered += chunk;
      const lines = buffered.split("\n");
      buffered = lines.pop() ?? "";
      for (const line of lines) {
        const [kind, a = "", b = "", c = ""] = line.split(" ");
        if (kind === "S") {
          const versions = written.get(a) ?? new Map<number, string>();
          versions.set(Number(b), c);
          written.set(a, versions);
        } else if (kind === "D" || kind === "P") erased.push({ what: `${kind} ${a} v${b}`, hex: c });
        else if (kind === "R") instances.registered.add(a);
        else if (kind === "X") instances.exchanged.add(a);
        else if (kind === "T") instances.stopped.add(a);
        else other.push(line);
        if (++seen >= killAfter && proc.exitCode === null && !proc.killed) proc.kill("SIGKILL");
      }
    });
    const signal = await new Promise<NodeJS.Signals | null>((resolve) => proc.on("exit", (_c, s) => resolve(s)));
    assert.equal(signal, "SIGKILL", stderr);
    assert.deepEqual(other, [], "the writer printed only acknowledgements");
    assert.ok(erased.some((e) => e.what.startsWith("D")) && erased.some((e) => e.what.startsWith("P")));
    assert.ok(instances.stopped.size > 0, "the kill came after some stops");

    // The files as the kill left them: what acknowledged writes erased is in neither.
    const files = Buffer.concat([path, `${path}-wal`].filter(existsSync).map((f) => readFileSync(f)));
    for (const e of erased) {
      assert.ok(!files.includes(Buffer.from(e.hex, "hex")), `the ciphertext of ${e.what} is still in the files`);
    }
    const raw = new Database(path, { readonly: true });
    try {
      assert.deepEqual(raw.pragma("integrity_check"), [{ integrity_check: "ok" }]);
      assert.deepEqual(raw.pragma("foreign_key_check"), []);
    } finally {
      raw.close();
    }

    const store = await SqliteStore.open(path);
    try {
      const seq = await assertChainIntact(store);
      const records = await store.readAuditRange(1, seq);
      const recordsOf = (resource: string) => records.filter((r) => r.resource === resource).length;
      for (const [secretPath, versions] of written) {
        const secret = await store.secrets.getSecret(secretPath);
        assert.ok(secret, `acknowledged secret ${secretPath} lost`);
        const newest = Math.max(...versions.keys());
        assert.ok(secret.currentVersion >= newest, `${secretPath}: acknowledged version ${newest} lost`);
        // Each change commits with its record: revision r, r records.
        assert.equal(recordsOf(`secret/${secretPath}`), secret.revision, `${secretPath}: records`);
        assert.deepEqual(
          secret.versions.map((v) => v.version),
          [secret.currentVersion - 2, secret.currentVersion - 1, secret.currentVersion].filter((v) => v >= 1),
          `${secretPath}: the versions kept`,
        );
        for (const v of secret.versions) {
          const stored = await store.secrets.getSecretVersion(secretPath, v.version);
          const acked = versions.get(v.version);
          if (stored?.ciphertext !== null && acked !== undefined) {
            assert.equal(Buffer.from(stored?.ciphertext ?? "").toString("hex"), acked, `${secretPath} v${v.version}`);
          }
          assert.equal(stored?.ciphertext === null, stored?.destroyedAt !== null);
        }
      }
      const all = new Set([...instances.registered, ...instances.exchanged, ...instances.stopped]);
      for (const id of all) {
        const record = await store.broker.getInstance(id);
        assert.ok(record, `acknowledged instance ${id} lost`);
        const token = await store.broker.tokenOfInstance(id);
        const expected = instances.stopped.has(id) ? "stopped" : instances.exchanged.has(id) ? "running" : undefined;
        if (expected === "stopped") assert.equal(record.state, "stopped", id);
        if (expected === "running") assert.notEqual(record.state, "registered", id);
        // State, token and deny-list moved together, with one record per step.
        if (record.state === "registered") assert.equal(token?.state, "unused", id);
        else assert.equal(token?.state, "used", id);
        const jwts = await store.broker.liveJwts(id, "2000-01-01T00:00:00.000Z");
        assert.equal(jwts.length, record.state === "registered" ? 0 : 1, `${id}: its JWT`);
        assert.equal(
          jwts[0]?.deniedAt !== null && jwts[0] !== undefined,
          record.state === "stopped",
          `${id}: deny-list`,
        );
        assert.equal(recordsOf(`instance/${id}`), record.revision, `${id}: records`);
      }
    } finally {
      await store.close();
    }
  });
});

// ---- through the API: a store write failing inside a request ------------------------

describe("through the API: a request whose store write fails changes nothing, says so cleanly, and is audited as failed", () => {
  let custos: CustosInstance;
  let side: Database.Database;
  let agent: string;
  let csrDir: string;

  /** One request, with the request id the answer carries. */
  const send = async (method: string, path: string, body?: unknown, bearer: string | null = custos.adminToken) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const a = await httpsRaw({
      port: custos.port,
      ca: custos.ca,
      method,
      path,
      body: data,
      headers: {
        ...(data === undefined ? {} : { "content-type": "application/json" }),
        ...(bearer ? { authorization: `Bearer ${bearer}` } : {}),
      },
    });
    return { ...a, requestId: String(a.headers["x-request-id"]) };
  };

  /** Every table but the audit log's, as a second connection sees the live file. */
  const state = (): Record<string, unknown[]> => {
    const { audit_log: _log, audit_checkpoints: _checkpoints, ...rest } = snapshot(side);
    return rest;
  };

  /** Failed requests and the action their success is audited under. */
  const namedFailures: Array<{ requestId: string; action: string }> = [];
  const failedAction = (requestId: string): string => auditOf(requestId).at(-1)?.action ?? "";

  const auditOf = (requestId: string) =>
    custos.query<{ action: string; outcome: string; error_code: string | null }>(
      "SELECT action, outcome, error_code FROM audit_log WHERE request_id = ? ORDER BY seq",
      requestId,
    );

  /** Which of the data directory's database files and server log hold `text` as it was sent. */
  const filesHolding = (text: string): string[] =>
    ["custos.db", "custos.db-wal", "server.log"]
      .filter((f) => existsSync(join(custos.dir, f)))
      .filter((f) => readFileSync(join(custos.dir, f)).includes(Buffer.from(text)));

  /** A clean error answer: the documented shape and status, no SQL, no internal error. */
  const assertCleanAnswer = (a: { status: number; text: string; body: unknown }, what: string): string => {
    const code = errorCode(a);
    assert.ok(code !== undefined, `${what}: not an error answer: ${a.status} ${a.text}`);
    assert.deepEqual(Object.keys(a.body as object), ["error"], `${what}: ${a.text}`);
    assert.ok(a.status >= 400, `${what}: ${a.status}`);
    assert.notEqual(code, "internal", `${what}: ${a.text}`);
    assert.doesNotMatch(a.text, SQL_WORDS, `${what}: the answer speaks SQL`);
    return code;
  };

  /** The request's last record is its failure, with the answer's code; none says the change was done. */
  const assertAuditedAsFailed = (requestId: string, code: string, action: string, what: string): void => {
    const records = auditOf(requestId);
    assert.ok(records.length > 0, `${what}: not audited`);
    assert.deepEqual(
      records.at(-1),
      { action, outcome: "failure", error_code: code },
      `${what}: ${JSON.stringify(records)}`,
    );
    assert.ok(
      !records.some((r) => r.action === action && r.outcome === "success"),
      `${what}: audited as done: ${JSON.stringify(records)}`,
    );
  };

  before(async () => {
    // The sweep that finishes an interrupted stop runs every second.
    custos = await startCustos({ broker: { sweepSeconds: 1 } });
    side = new Database(join(custos.dir, "custos.db"));
    csrDir = mkdtempSync(join(tmpdir(), "custos-store-review-"));
    await acmeProdApps(custos, [
      { name: "web", owners: {} },
      { name: "half", owners: {} },
    ]);
    agent = nodeAgentToken(custos);
    ok(
      await custos.call("PUT", "/v1/pki/roles/svc", {
        dnsNames: ["*.svc.test"],
        keyTypes: ["ec-p256"],
        maxTtlSeconds: 86_400,
        ttlSeconds: 3600,
      }),
    );
  });
  after(async () => {
    side?.close();
    await custos?.dispose();
    if (csrDir) rmSync(csrDir, { recursive: true, force: true });
  });

  test("a key creation whose version row is refused: no key, the name stays free, audited as failed", async () => {
    const before = state();
    const remove = inject(side, { table: "key_versions", event: "INSERT" });
    const a = await send("POST", "/v1/keys", { name: "refused", purpose: "encrypt" });
    remove();
    const code = assertCleanAnswer(a, "key create");
    assert.deepEqual(state(), before);
    assertAuditedAsFailed(a.requestId, code, "key.create", "key create");
    assert.equal((await custos.call("GET", "/v1/keys/refused")).status, 404);
    ok(await custos.call("POST", "/v1/keys", { name: "refused", purpose: "encrypt" }), 201);
  });

  test("an app creation whose key is refused leaves neither app nor key, and can be made again", async () => {
    const before = state();
    const remove = inject(side, { table: "keys", event: "INSERT", when: "NEW.name = 'app.acme.prod.nokey'" });
    const a = await send("POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name: "nokey" });
    remove();
    const code = assertCleanAnswer(a, "app create");
    assert.deepEqual(state(), before, "the app's record was not withdrawn");
    // The record went first and was withdrawn when the key was refused; the request ends as a failure.
    assert.deepEqual(
      auditOf(a.requestId).map((r) => [r.action, r.outcome, r.error_code]),
      [
        ["platform.app.create", "success", null],
        ["platform.app.delete", "success", null],
        [failedAction(a.requestId), "failure", code],
      ],
    );
    namedFailures.push({ requestId: a.requestId, action: "platform.app.create" });
    ok(await custos.call("POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name: "nokey" }), 201);
  });

  test("an app deletion cut short at its last transaction leaves the app marked, takes no instance, and finishes when asked again", async () => {
    const remove = inject(side, { table: "platform_apps", event: "DELETE", when: "OLD.name = 'half'" });
    const a = await send("DELETE", "/v1/platform/apps/acme/prod/half");
    remove();
    const code = assertCleanAnswer(a, "app delete");
    const records = auditOf(a.requestId);
    assert.deepEqual(records.map((r) => [r.action, r.outcome]).slice(0, 2), [
      ["platform.app.delete.begin", "success"],
      ["key.destroy", "success"],
    ]);
    assert.deepEqual(
      records.slice(2).map((r) => [r.outcome, r.error_code]),
      [["failure", code]],
    );
    assert.ok(
      !records.some((r) => r.action === "platform.app.delete" && r.outcome === "success"),
      "the deletion was audited as done",
    );
    namedFailures.push({ requestId: a.requestId, action: "platform.app.delete" });
    const [row] = custos.query<{ deleting_since: string | null }>(
      "SELECT deleting_since FROM platform_apps WHERE name = 'half'",
    );
    assert.ok(row?.deleting_since, "the app is still there, marked as being deleted");
    const key = custos.query<{ state: string }>("SELECT state FROM keys WHERE name = 'app.acme.prod.half'");
    assert.deepEqual(key, [{ state: "destroyed" }], "its key was destroyed before the last step");
    const register = await send(
      "POST",
      "/v1/broker/instances",
      { org: "acme", space: "prod", app: "half", instance: "h-1" },
      agent,
    );
    assert.equal(errorCode(register), "conflict", register.text);
    ok(await custos.call("DELETE", "/v1/platform/apps/acme/prod/half"));
    assert.deepEqual(custos.query("SELECT 1 FROM platform_apps WHERE name = 'half'"), []);
  });

  test("a secret write whose version row is refused: no secret, no trace of the value anywhere, the next write is version 1", async () => {
    const value = `store-review-secret-${randomBytes(12).toString("hex")}`;
    const before = state();
    const remove = inject(side, { table: "secret_versions", event: "INSERT" });
    const a = await send("PUT", "/v1/secrets/data/acme/prod/web/refused", { value });
    remove();
    const code = assertCleanAnswer(a, "secret write");
    assert.deepEqual(state(), before);
    assertAuditedAsFailed(a.requestId, code, "secret.write", "secret write");
    assert.deepEqual(filesHolding(value), [], "the value is in the files in clear");
    const written = ok(await custos.call("PUT", "/v1/secrets/data/acme/prod/web/refused", { value }));
    assert.equal((written.secret as { version?: unknown }).version, 1);
  });

  test("an exchange whose JWT row is refused does not use up the bootstrap token: nothing is recorded, and the exchange can be made again", async () => {
    const registered = ok(
      await custos.call(
        "POST",
        "/v1/broker/instances",
        { org: "acme", space: "prod", app: "web", instance: "w-1" },
        agent,
      ),
      201,
    );
    const csr = newCsr(csrDir, "w-1");
    const before = state();
    const remove = inject(side, { table: "broker_jwts", event: "INSERT" });
    const a = await send(
      "POST",
      "/v1/broker/exchange",
      { token: registered.bootstrapToken, instance: "w-1", csr },
      null,
    );
    remove();
    const code = assertCleanAnswer(a, "exchange");
    assert.deepEqual(state(), before, "the exchange left a row (a used token, a certificate)");
    assertAuditedAsFailed(a.requestId, code, "broker.exchange", "exchange");
    assert.deepEqual(
      filesHolding(String(registered.bootstrapToken)),
      [],
      "the bootstrap token is in the files in clear",
    );
    const again = ok(
      await custos.call(
        "POST",
        "/v1/broker/exchange",
        { token: registered.bootstrapToken, instance: "w-1", csr },
        null,
      ),
    );
    assert.equal(typeof again.jwt, "string");
  });

  test("a deregistration whose certificate revocation is refused: the instance is stopped, and the sweep finishes the revocation", async () => {
    const [cert] = custos.query<{ serial: string }>("SELECT serial FROM broker_certificates WHERE instance_id = 'w-1'");
    assert.ok(cert, "w-1 holds an identity certificate from its exchange");
    const remove = inject(side, { table: "pki_cas", event: "UPDATE" });
    let a: Awaited<ReturnType<typeof send>>;
    try {
      a = await send("DELETE", "/v1/broker/instances/w-1", undefined, agent);
    } finally {
      remove();
    }
    const code = assertCleanAnswer(a, "deregister");
    // The stop is its own transaction, committed before the revocations: audited as done, then the failure.
    assert.deepEqual(
      auditOf(a.requestId).map((r) => [r.action, r.outcome, r.error_code]),
      [
        ["broker.deregister", "success", null],
        [failedAction(a.requestId), "failure", code],
      ],
    );
    namedFailures.push({ requestId: a.requestId, action: "broker.deregister" });
    const [instanceRow] = custos.query<{ state: string }>("SELECT state FROM broker_instances WHERE id = 'w-1'");
    assert.equal(instanceRow?.state, "stopped");
    assert.deepEqual(
      custos.query("SELECT 1 FROM broker_jwts WHERE instance_id = 'w-1' AND denied_at IS NULL"),
      [],
      "its JWT is deny-listed with the stop",
    );
    const status = () =>
      custos.query<{ status: string }>("SELECT status FROM pki_certificates WHERE serial = ?", cert.serial)[0]?.status;
    const deadline = Date.now() + 30_000;
    while (status() !== "revoked" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
    assert.equal(status(), "revoked", "the sweep did not finish the interrupted stop");
  });

  test("a revocation whose CRL is refused: the certificate stays valid, the CRL served is byte for byte the same, and the next revocation numbers it once", async () => {
    const issued = ok(await custos.call("POST", "/v1/pki/roles/svc/issue", { dnsNames: ["a.svc.test"] }));
    const serial = String(issued.serialNumber ?? issued.serial);
    const crlBefore = await fetchRaw(custos, "/v1/pki/crl");
    const numberBefore = crlNumber(crlBefore.body);
    const before = state();
    const remove = inject(side, { table: "pki_cas", event: "UPDATE" });
    const a = await send("POST", `/v1/pki/certs/${serial}/revoke`, { reason: "keyCompromise" });
    remove();
    const code = assertCleanAnswer(a, "revoke");
    assert.deepEqual(state(), before);
    assertAuditedAsFailed(a.requestId, code, "pki.revoke", "revoke");
    assert.deepEqual((await fetchRaw(custos, "/v1/pki/crl")).body, crlBefore.body, "the CRL served changed");
    ok(await custos.call("POST", `/v1/pki/certs/${serial}/revoke`, { reason: "keyCompromise" }));
    const crlAfter = await fetchRaw(custos, "/v1/pki/crl");
    assert.equal(crlNumber(crlAfter.body), numberBefore + 1);
  });

  test("a token revocation refused at a token it made revokes none of them; they all still work", async () => {
    const parent = ok(await custos.call("POST", "/v1/auth/tokens", { name: "parent", policies: ["admin"] }), 201);
    const childToken = ok(
      await custos.call("POST", "/v1/auth/tokens", { name: "child", policies: ["admin"] }, String(parent.token)),
      201,
    );
    const grandchild = ok(
      await custos.call(
        "POST",
        "/v1/auth/tokens",
        { name: "grandchild", policies: ["admin"] },
        String(childToken.token),
      ),
      201,
    );
    const before = state();
    const remove = inject(side, { table: "tokens", event: "UPDATE", when: `NEW.id = '${String(grandchild.id)}'` });
    const a = await send("DELETE", `/v1/auth/tokens/${String(parent.id)}`);
    remove();
    const code = assertCleanAnswer(a, "token revoke");
    assert.deepEqual(state(), before);
    assertAuditedAsFailed(a.requestId, code, "token.revoke", "token revoke");
    for (const t of [parent, childToken, grandchild]) {
      assert.equal((await custos.call("GET", "/v1/auth/whoami", undefined, String(t.token))).status, 200);
    }
    const done = ok(await custos.call("DELETE", `/v1/auth/tokens/${String(parent.id)}`));
    assert.deepEqual([...(done.revokedWith as string[])].sort(), [String(childToken.id), String(grandchild.id)].sort());
    for (const t of [parent, childToken, grandchild]) {
      assert.equal((await custos.call("GET", "/v1/auth/whoami", undefined, String(t.token))).status, 401);
    }
  });

  test("an intermediate rotation whose CA row is refused changes no issuer; the next one makes generation 2 with the same HSM key", async () => {
    const issuers = async () => ok(await custos.call("GET", "/v1/pki/issuers", undefined, null));
    const caKeys = (): string[] =>
      tokenObjectLabels(custos.token, "privkey")
        .filter((l) => l.startsWith("custos-pki-"))
        .sort();
    const before = state();
    const issuersBefore = await issuers();
    const remove = inject(side, { table: "pki_cas", event: "INSERT" });
    const a = await send("POST", "/v1/pki/issuers/rotate", {});
    remove();
    const code = assertCleanAnswer(a, "rotate");
    assert.deepEqual(state(), before);
    assert.deepEqual(
      auditOf(a.requestId).map((r) => [r.outcome, r.error_code]),
      [["failure", code]],
    );
    namedFailures.push({ requestId: a.requestId, action: "pki.ca.rotate" });
    assert.deepEqual(await issuers(), issuersBefore, "the issuers served changed");
    const keysAfterFailure = caKeys();
    const rotated = ok(await custos.call("POST", "/v1/pki/issuers/rotate", {}));
    assert.equal((rotated.issuer as { id?: unknown }).id, "int-2");
    assert.deepEqual(caKeys(), keysAfterFailure, "the retry made another CA key instead of using the one made for it");
  });

  test("a kill -9 between an app's record and its key: the server restarts on a sound file, and the app left without a key can be deleted and made again", async () => {
    // Holds the key's transaction open (the event loop with it) until the kill: a long join, as triggers take no WITH.
    side.exec(`CREATE TRIGGER stall_key BEFORE INSERT ON keys WHEN NEW.name = 'app.acme.prod.crash'
      BEGIN SELECT count(*) FROM audit_log a, audit_log b, audit_log c, audit_log d, audit_log e; END`);
    const pending = send("POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name: "crash" }).catch(() => null);
    const appRow = () => side.prepare("SELECT 1 FROM platform_apps WHERE name = 'crash'").get();
    const deadline = Date.now() + 30_000;
    while (appRow() === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.ok(appRow(), "the app's record was committed");
    await custos.kill9();
    assert.equal(await pending, null, "the creation was never answered");
    side.exec("DROP TRIGGER stall_key");
    assert.deepEqual(side.pragma("integrity_check"), [{ integrity_check: "ok" }]);
    assert.deepEqual(custos.query("SELECT 1 FROM keys WHERE name = 'app.acme.prod.crash'"), []);
    await custos.start();
    ok(await custos.call("DELETE", "/v1/platform/apps/acme/prod/crash"));
    ok(await custos.call("POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name: "crash" }), 201);
    assert.deepEqual(custos.query("SELECT state FROM keys WHERE name = 'app.acme.prod.crash'"), [{ state: "enabled" }]);
  });

  test("a failed change is audited under the action its success is audited under", () => {
    assert.equal(namedFailures.length, 4);
    const misnamed = namedFailures
      .map(({ requestId, action }) => ({ success: action, failure: failedAction(requestId) }))
      .filter((n) => n.success !== n.failure);
    assert.deepEqual(misnamed, []);
  });

  test("after every failure above, audit verify passes and the file is sound", () => {
    assert.deepEqual(side.pragma("integrity_check"), [{ integrity_check: "ok" }]);
    const verify = custos.cli(["audit", "verify"]);
    assert.equal(verify.status, 0, verify.stdout + verify.stderr);
  });
});

/** A CSR for a fresh P-256 key, made by openssl. */
function newCsr(dir: string, name: string): string {
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const keyFile = join(dir, `${name}.key`);
  writeFileSync(keyFile, privateKey.export({ type: "pkcs8", format: "pem" }).toString(), { mode: 0o600 });
  const r = spawnSync("openssl", ["req", "-new", "-key", keyFile, "-subj", `/CN=${name}`], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

/** The CRL number of a DER CRL, as openssl reads it. */
function crlNumber(der: Buffer): number {
  const r = spawnSync("openssl", ["crl", "-inform", "DER", "-noout", "-crlnumber"], { input: der, encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const match = /crlNumber=(?:0x)?([0-9A-Fa-f]+)/.exec(r.stdout);
  assert.ok(match?.[1], r.stdout);
  return Number.parseInt(match[1], 16);
}

// ---- a store_unavailable that committed nothing ---------------------------------------

describe("a write refused with store_unavailable before anything was committed", () => {
  const token = createTestToken("custos-store-review");
  let keystore: Pkcs11Keystore;
  let store: SqliteStore;
  let log: AuditLog;
  let kms: KmsService;
  let side: Database.Database;
  const actor = { principal: "user:alice", requestId: "req-store-review", source: "127.0.0.1" };

  /** Labels of the KMS key pairs' private keys on the token, as pkcs11-tool lists them. */
  const kmsPrivateKeys = (): string[] =>
    tokenObjectLabels(token, "privkey")
      .filter((l) => l.startsWith("custos/key/"))
      .sort();

  before(async () => {
    keystore = await Pkcs11Keystore.open({
      modulePath: token.modulePath,
      tokenLabel: token.label,
      pin: Secret.fromString(token.pin),
    });
    await keystore.createRootKey();
    const path = tmp.path("kms.db");
    // Short: a write that can't get the lock is refused quickly.
    store = await SqliteStore.open(path, { writeTimeoutMs: 400 });
    log = new AuditLog({ store, keystore, ...(await AuditLog.provisionKeys(keystore)) });
    kms = new KmsService({ keystore, store, audit: log });
    side = new Database(path, { timeout: 0 });
  });
  after(async () => {
    side?.close();
    await log?.stop();
    await store?.close();
    await keystore?.close();
    token.remove();
  });

  test("the store says the write was not made: the write lock held past its deadline, nothing of it is in the file", async () => {
    const before = snapshot(side);
    side.exec("BEGIN IMMEDIATE");
    const pending = store.createUser(userRecord("locked-out"), entry("user.create"));
    await assert.rejects(pending, (e: unknown) => {
      assertCleanStoreError(e, "a write past its deadline");
      assert.equal((e as { code: string }).code, "store_unavailable");
      return true;
    });
    side.exec("ROLLBACK");
    assert.deepEqual(snapshot(side), before);
  });

  test("a signing key whose store write was refused that way leaves no key pair in the HSM", async () => {
    const before = kmsPrivateKeys();
    side.exec("BEGIN IMMEDIATE");
    try {
      await assert.rejects(
        kms.createKey(actor, { name: "orphan", purpose: "sign", algorithm: "ecdsa-p256" }),
        (e: unknown) => isCustosError(e, "store_unavailable"),
      );
    } finally {
      side.exec("ROLLBACK");
    }
    assert.equal(await store.getKey("orphan"), undefined, "the key was not recorded");
    // A rotation of a signing key, refused the same way.
    await kms.createKey(actor, { name: "signer", purpose: "sign", algorithm: "ecdsa-p256" });
    const signer = await store.getKey("signer");
    assert.ok(signer);
    side.exec("BEGIN IMMEDIATE");
    try {
      await assert.rejects(kms.rotateKey(actor, "signer"), (e: unknown) => isCustosError(e, "store_unavailable"));
    } finally {
      side.exec("ROLLBACK");
    }
    assert.equal((await store.getKey("signer"))?.latestVersion, 1, "the rotation was not recorded");
    assert.deepEqual(
      kmsPrivateKeys(),
      [...before, keyPairLabel(signer.id, 1)].sort(),
      "key pairs no record refers to were left in the HSM",
    );
  });
});

// ---- the order of system calls: no acknowledgement before its WAL is on disk ----------

/** Whether strace runs here (it is not among the packages Custos installs, and containers may forbid ptrace). */
const straceWorks = spawnSync("strace", ["-o", "/dev/null", "true"]).status === 0;

describe("what the kernel sees: an acknowledged write's WAL frames were fdatasynced first", () => {
  test("each acknowledgement, and each read of a commit, comes after a WAL sync that began after the commit's frames were written", {
    skip: straceWorks ? false : "strace is not available (or ptrace is not allowed)",
  }, () => {
    const path = tmp.path("strace.db");
    const script = tmp.path("strace-writer.mts");
    writeFileSync(
      script,
      `
        const { writeSync } = await import("node:fs");
        const { SqliteStore } = await import(${JSON.stringify(STORE_URL)});
        const store = await SqliteStore.open(process.argv[2]);
        for (let i = 1; i <= 6; i++) {
          const e = { time: new Date().toISOString(), requestId: "r" + i, principal: "system", source: "local",
            action: "strace." + i, resource: "", outcome: "success", errorCode: null, details: { i } };
          const acked = store.appendAudit(e).then((r) => writeSync(1, "ACK " + r.seq + "\\n"));
          // Runs after the flush that commits the write, most likely while its sync is still running.
          const read = new Promise((resolve) => setImmediate(resolve))
            .then(() => store.auditHead())
            .then((h) => writeSync(1, "READ " + h.seq + "\\n"));
          await Promise.all([acked, read]);
        }
        await store.close();`,
    );
    const trace = tmp.path("strace.txt");
    const r = spawnSync(
      "strace",
      [
        "-f",
        "-y",
        "-qq",
        "-e",
        "trace=pwrite64,write,fdatasync,fsync",
        "-o",
        trace,
        process.execPath,
        "--import",
        "tsx",
        script,
        path,
      ],
      { encoding: "utf8" },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /ACK 6/);

    const wal = `${path}-wal>`;
    let lastWalWrite = -1;
    /** Per thread, where its running WAL sync began. */
    const syncing = new Map<string, number>();
    /** The latest start index of a WAL sync that has completed. */
    let syncedFrom = -1;
    let checked = 0;
    const lines = readFileSync(trace, "utf8").split("\n");
    lines.forEach((line, i) => {
      const pid = line.split(" ")[0] ?? "";
      if (/ pwrite64\(\d+</.test(line) && line.includes(wal)) lastWalWrite = i;
      if (/ f(data)?sync\(\d+</.test(line) && line.includes(wal)) {
        if (line.includes("<unfinished")) syncing.set(pid, i);
        else syncedFrom = Math.max(syncedFrom, i);
      }
      if (/<\.\.\. f(data)?sync resumed>/.test(line) && syncing.has(pid)) {
        syncedFrom = Math.max(syncedFrom, syncing.get(pid) ?? -1);
        syncing.delete(pid);
      }
      const said = /write\(1<[^>]*>, "(ACK|READ) (\d+)\\n"/.exec(line);
      if (said) {
        checked++;
        assert.ok(
          syncedFrom > lastWalWrite,
          `line ${i + 1} (${said[1]} ${said[2]}): the WAL written at line ${lastWalWrite + 1} was not yet synced`,
        );
      }
    });
    assert.equal(checked, 12, "every acknowledgement and read was seen in the trace");
  });
});

// ---- erasure through the WAL while another process reads --------------------------------

describe("a destroyed secret version's ciphertext while another connection holds a read snapshot", () => {
  test("is gone from the database file and its WAL once the reader lets go", async () => {
    const path = tmp.path("erase-reader.db");
    const store = await SqliteStore.open(path);
    const reader = new Database(path, { readonly: true });
    try {
      await store.platform.createOrg({ name: "acme", createdAt: T }, entry("platform.org.create"));
      await store.platform.createSpace({ org: "acme", name: "prod", createdAt: T }, entry("platform.space.create"));
      await store.platform.createApp(appRecord("app-web", "web", [], []), entry("platform.app.create"));
      const secretPath = "acme/prod/web/erased";
      const v1 = secretVersion(secretPath, 1);
      const base = {
        path: secretPath,
        appId: "app-web",
        maxVersions: 10,
        casRequired: false,
        customMetadata: {},
        createdAt: T,
        updatedAt: T,
      };
      await store.secrets.changeSecret(
        { secret: { ...base, currentVersion: 1, revision: 1 }, expectedRevision: null, addVersion: v1 },
        entry("secret.write"),
      );
      const cipher = Buffer.from(v1.ciphertext ?? "", "utf8");
      // A read transaction that saw version 1: its snapshot keeps the WAL from being cut.
      reader.exec("BEGIN");
      assert.equal(
        (
          reader.prepare("SELECT ciphertext FROM secret_versions WHERE path = ?").get(secretPath) as {
            ciphertext: string;
          }
        ).ciphertext,
        v1.ciphertext,
      );
      await store.secrets.changeSecret(
        {
          secret: { ...base, currentVersion: 1, revision: 2 },
          expectedRevision: 1,
          destroyVersions: { versions: [1], at: LATER },
        },
        entry("secret.destroy"),
      );
      reader.exec("COMMIT");
      const inFiles = () => [path, `${path}-wal`].filter(existsSync).filter((f) => readFileSync(f).includes(cipher));
      // Retried with back-off (1 s, then 2 s, ...): wait for it, generously.
      const deadline = Date.now() + 20_000;
      while (inFiles().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
      assert.deepEqual(inFiles(), [], "the destroyed ciphertext is still in these files");
      assert.equal((await store.secrets.getSecretVersion(secretPath, 1))?.ciphertext, null);
    } finally {
      reader.close();
      await store.close();
    }
  });
});

describe("a destruction acknowledged by a process killed before its WAL could be cut", () => {
  test("the ciphertext left in the WAL is erased when the store is next opened", async () => {
    const path = tmp.path("erase-after-kill.db");
    const script = tmp.path("erase-writer.mts");
    writeFileSync(
      script,
      `
      const { randomBytes } = await import("node:crypto");
      const { SqliteStore } = await import(${JSON.stringify(STORE_URL)});
      const store = await SqliteStore.open(process.argv[2]);
      const T = new Date().toISOString();
      let n = 0;
      const entry = (action) => ({ time: T, requestId: "r" + ++n, principal: "system", source: "local", action,
        resource: "", outcome: "success", errorCode: null, details: {} });
      await store.platform.createOrg({ name: "acme", createdAt: T }, entry("org"));
      await store.platform.createSpace({ org: "acme", name: "prod", createdAt: T }, entry("space"));
      await store.platform.createApp({ id: "app-web", org: "acme", space: "prod", name: "web", keyName: "app.acme.prod.web",
        ownerUsers: [], ownerGroups: [], createdAt: T, updatedAt: T, revision: 1 }, entry("app"));
      const path = "acme/prod/web/gone";
      const ciphertext = "custos:v1:" + randomBytes(64).toString("base64");
      const secret = { path, appId: "app-web", currentVersion: 1, maxVersions: 10, casRequired: false, customMetadata: {},
        createdAt: T, updatedAt: T, revision: 1 };
      await store.secrets.changeSecret({ secret, expectedRevision: null,
        addVersion: { path, version: 1, createdAt: T, deletedAt: null, destroyedAt: null, ciphertext } }, entry("write"));
      process.stdout.write("W " + Buffer.from(ciphertext).toString("hex") + "\\n");
      process.stdin.once("data", async () => {
        await store.secrets.changeSecret({ secret: { ...secret, revision: 2 }, expectedRevision: 1,
          destroyVersions: { versions: [1], at: T } }, entry("destroy"));
        process.stdout.write("D\\n");
      });`,
    );
    const proc = spawn(process.execPath, ["--import", "tsx", script, path], { stdio: ["pipe", "pipe", "pipe"] });
    let stderr = "";
    proc.stderr.setEncoding("utf8");
    proc.stderr.on("data", (c: string) => {
      stderr += c;
    });
    const exited = new Promise<NodeJS.Signals | null>((resolve) => proc.on("exit", (_c, s) => resolve(s)));
    let reader: Database.Database | undefined;
    let cipher = Buffer.alloc(0);
    let buffered = "";
    proc.stdout.setEncoding("utf8");
    proc.stdout.on("data", (chunk: string) => {
      buffered += chunk;
      const lines = buffered.split("\n");
      buffered = lines.pop() ?? "";
      for (const line of lines) {
        if (line.startsWith("W ")) {
          cipher = Buffer.from(line.slice(2), "hex");
          // A read snapshot from before the destruction: the checkpoint after it can't cut the WAL.
          reader = new Database(path, { readonly: true });
          reader.exec("BEGIN");
          reader.prepare("SELECT count(*) FROM secret_versions").get();
          proc.stdin.write("go\n");
        } else if (line === "D") proc.kill("SIGKILL");
      }
    });
    assert.equal(await exited, "SIGKILL", stderr);
    assert.ok(reader && cipher.length > 0, "the writer wrote its secret");
    reader.exec("COMMIT");
    reader.close();
    const holding = () => [path, `${path}-wal`].filter(existsSync).filter((f) => readFileSync(f).includes(cipher));
    assert.ok(holding().length > 0, "the scenario: the destroyed ciphertext was still in the files at the kill");
    const store = await SqliteStore.open(path);
    try {
      assert.deepEqual(holding(), [], "opening the store did not erase it");
      assert.equal((await store.secrets.getSecretVersion("acme/prod/web/gone", 1))?.ciphertext, null);
    } finally {
      await store.close();
    }
  });
});

// ---- migration 8: the user whose login session made a standalone token -------------

describe("a database written before token makers were recorded (schema 7), opened by this build", () => {
  test("keeps its tokens, gives them no maker, and records, lists and revokes by maker from then on", async () => {
    const path = tmp.path("schema-7.db");
    const old = new Database(path);
    old.pragma("journal_mode = WAL");
    migrate(
      old,
      migrations.filter((m) => m.version <= 7),
    );
    const columns = (db: Database.Database) =>
      (db.prepare("SELECT name FROM pragma_table_info('tokens')").all() as Array<{ name: string }>).map((r) => r.name);
    assert.ok(!columns(old).includes("maker_user_id"), "the scenario: schema 7 has no maker column");
    old.prepare("INSERT INTO users VALUES ('u-old', 'old-user', NULL, '[]', 0, ?, ?, 1)").run(T, T);
    // At schema 7: id, hash, kind, name, user_id, policies, created_at, expires_at, revoked_at, parent_id.
    const insert = old.prepare("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)");
    insert.run("tok_session", "a1".repeat(32), "session", "session", "u-old", null, T, null);
    insert.run("tok_svc", "b2".repeat(32), "api", "svc", null, '["ops"]', T, null);
    insert.run("tok_job", "c3".repeat(32), "api", "job", null, '["ops"]', T, "tok_svc");
    old.close();

    const made = tokenRecord(null, { name: "made-after", policies: ["ops"], makerUserId: "u-old" });
    const madeChild = tokenRecord(null, { name: "its-child", policies: ["ops"], parentId: made.id });
    const store = await SqliteStore.open(path);
    try {
      const svc = await store.getTokenByHash("b2".repeat(32));
      const job = await store.getToken("tok_job");
      assert.deepEqual(
        [svc?.id, svc?.policies, svc?.parentId, svc?.makerUserId, job?.parentId, job?.makerUserId],
        ["tok_svc", ["ops"], null, null, "tok_svc", null],
      );
      assert.deepEqual(await store.listTokensMadeByUser("u-old"), []);

      await store.createToken(made, entry("token.create"));
      await store.createToken(madeChild, entry("token.create"));
      assert.deepEqual(await store.getToken(made.id), made);
      assert.deepEqual(
        (await store.listTokensMadeByUser("u-old")).map((t) => t.id),
        [made.id],
      );
      // A maker that is not (or no longer) a user makes no token: deletion would have revoked it.
      await assert.rejects(
        store.createToken(tokenRecord(null, { name: "orphan", makerUserId: "u-gone" }), entry("token.create")),
        (e: unknown) => isCustosError(e) && e.code === "unauthenticated",
      );

      const head = await store.auditHead();
      const deletion = entry("user.delete");
      await store.deleteUser("u-old", deletion);
      const [record] = await store.readAuditAfter(head.seq, 1);
      assert.deepEqual(new Set(record?.details.revokedWith as string[]), new Set([made.id, madeChild.id]));
      const revokedAt = async (id: string) => (await store.getToken(id))?.revokedAt;
      assert.deepEqual(
        [
          await revokedAt("tok_session"),
          await revokedAt(made.id),
          await revokedAt(madeChild.id),
          await revokedAt("tok_svc"),
          await revokedAt("tok_job"),
        ],
        // The tokens written before the migration have no recorded maker: deleting the user leaves them.
        [deletion.time, deletion.time, deletion.time, null, null],
      );
      await assertChainIntact(store);
    } finally {
      await store.close();
    }

    const db = new Database(path, { readonly: true });
    try {
      assert.ok(columns(db).includes("maker_user_id"));
      assert.deepEqual(db.prepare("SELECT version, name FROM schema_migrations WHERE version = 8").all(), [
        { version: 8, name: "token-maker" },
      ]);
      assert.deepEqual(
        db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'tokens_maker_user'").all(),
        [{ name: "tokens_maker_user" }],
      );
      assert.deepEqual(db.prepare("SELECT id, maker_user_id FROM tokens WHERE maker_user_id IS NOT NULL").all(), [
        { id: made.id, maker_user_id: "u-old" },
      ]);
      assert.deepEqual(db.pragma("integrity_check"), [{ integrity_check: "ok" }]);
    } finally {
      db.close();
    }
  });
});
