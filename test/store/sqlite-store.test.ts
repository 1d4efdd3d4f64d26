import assert from "node:assert/strict";
import { createHash, createHmac, createSecretKey, type Hash, type Hmac, randomBytes } from "node:crypto";
import { statSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { isCustosError } from "../../src/errors/index.js";
import { type AuditRecord, auditRecordHash, canonicalJson, GENESIS_HASH, SqliteStore } from "../../src/store/index.js";
import {
  aesVersion,
  entry,
  groupRecord,
  keyRecord,
  policyRecord,
  signingVersion,
  sudoGrant,
  tempDir,
  tokenRecord,
  userRecord,
} from "./helpers.js";

const tmp = tempDir();
after(() => tmp.remove());

async function rejectsWith(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (e: unknown) => {
    assert.ok(isCustosError(e), `expected CustosError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return true;
  });
}

describe("opening", () => {
  test("creates the database, WAL and SHM files with mode 0600 and durable pragmas", async () => {
    const path = tmp.path("modes.db");
    const store = await SqliteStore.open(path);
    await store.appendAudit(entry("test.mode"));
    for (const file of [path, `${path}-wal`, `${path}-shm`]) {
      assert.equal(statSync(file).mode & 0o777, 0o600, file);
    }
    await store.close();
    const db = new Database(path, { readonly: true });
    assert.equal(db.pragma("journal_mode", { simple: true }), "wal");
    db.close();
  });

  test("migrations are recorded once and reopening does not reapply them", async () => {
    const path = tmp.path("migrate.db");
    await (await SqliteStore.open(path)).close();
    await (await SqliteStore.open(path)).close();
    const db = new Database(path, { readonly: true });
    const rows = db.prepare("SELECT version, name FROM schema_migrations").all();
    const tables = (
      db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as Array<{ name: string }>
    ).map((r) => r.name);
    db.close();
    assert.deepEqual(rows, [
      { version: 1, name: "initial" },
      { version: 2, name: "pki" },
      { version: 3, name: "platform-secrets" },
      { version: 4, name: "broker" },
      { version: 5, name: "ssh" },
      { version: 6, name: "token-parent" },
      { version: 7, name: "app-deleting" },
      { version: 8, name: "token-maker" },
      { version: 9, name: "instance-names" },
      { version: 10, name: "token-renewal" },
    ]);
    for (const t of [
      "settings",
      "keys",
      "key_versions",
      "users",
      "groups",
      "group_members",
      "tokens",
      "policies",
      "sudo_grants",
      "audit_log",
      "audit_checkpoints",
      "pki_cas",
      "pki_certificates",
      "pki_roles",
      "cert_consumers",
      "cert_consumer_generations",
      "cert_consumer_agents",
    ]) {
      assert.ok(tables.includes(t), `table ${t}`);
    }
  });

  test("refuses a database whose schema is newer than this build", async () => {
    const path = tmp.path("future.db");
    await (await SqliteStore.open(path)).close();
    const db = new Database(path);
    db.prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'future', 'x')").run();
    db.close();
    await rejectsWith(SqliteStore.open(path), "store_unavailable");
  });
});

describe("SqliteStore round trips", () => {
  let store: SqliteStore;
  before(async () => {
    store = await SqliteStore.open(tmp.path("roundtrip.db"));
  });
  after(() => store.close());

  test("initialize writes settings, policies, admin and token atomically; twice is conflict", async () => {
    assert.equal(await store.isInitialized(), false);
    const admin = userRecord("admin", { policies: ["admin"] });
    const adminToken = tokenRecord(admin.id, { name: "bootstrap" });
    const policy = policyRecord("admin", { rules: [{ resource: "*", actions: ["*"] }] });
    await store.initialize(
      { settings: { "root.label": "custos-root", "root.kcv": "abcdef" }, policies: [policy], admin, adminToken },
      entry("custos.init"),
    );
    assert.equal(await store.isInitialized(), true);
    assert.equal(await store.getSetting("root.label"), "custos-root");
    assert.deepEqual(await store.getPolicy("admin"), policy);
    assert.deepEqual(await store.getUser(admin.id), admin);
    assert.deepEqual(await store.getToken(adminToken.id), adminToken);
    const other = userRecord("admin2");
    await rejectsWith(
      store.initialize({ settings: {}, policies: [], admin: other, adminToken: tokenRecord(other.id) }, entry("x")),
      "conflict",
    );
    assert.equal(await store.getUser(other.id), undefined, "the failed initialise left nothing behind");
  });

  test("settings", async () => {
    assert.equal(await store.getSetting("absent"), undefined);
    await store.putSetting("tls.dir", "/a", entry("setting.put"));
    await store.putSetting("tls.dir", "/b", entry("setting.put"));
    assert.equal(await store.getSetting("tls.dir"), "/b");
  });

  test("keys: create, get, versions, update with optimistic concurrency, list, due", async () => {
    const key = keyRecord("app-a");
    const v1 = aesVersion(key.id, 1);
    await store.createKey(key, v1, entry("key.create"));
    assert.deepEqual(await store.getKey("app-a"), key);
    const gotV1 = await store.getKeyVersion(key.id, 1);
    assert.deepEqual(gotV1, v1);
    assert.ok(Buffer.isBuffer(gotV1?.wrappedKey));
    assert.equal(await store.getKeyVersion(key.id, 2), undefined);
    assert.equal(await store.getKey("nope"), undefined);

    const dupe = keyRecord("app-a");
    await rejectsWith(store.createKey(dupe, aesVersion(dupe.id, 1), entry("key.create")), "conflict");

    const rotated = { ...key, revision: 2, latestVersion: 2, updatedAt: "2025-02-01T00:00:00.000Z" };
    const v2 = aesVersion(key.id, 2);
    await store.updateKey({ key: rotated, expectedRevision: 1, addVersion: v2 }, entry("key.rotate"));
    assert.deepEqual(await store.getKey("app-a"), rotated);
    assert.deepEqual(await store.listKeyVersions(key.id), [v1, v2]);

    // A writer still holding revision 1 loses.
    await rejectsWith(
      store.updateKey({ key: { ...key, revision: 2, description: "stale" }, expectedRevision: 1 }, entry("key.update")),
      "conflict",
    );
    await rejectsWith(
      store.updateKey({ key: { ...rotated, revision: 5 }, expectedRevision: 2 }, entry("key.update")),
      "invalid_request",
    );
    await rejectsWith(
      store.updateKey({ key: { ...keyRecord("ghost"), revision: 2 }, expectedRevision: 1 }, entry("key.update")),
      "not_found",
    );

    const destroyed = { ...rotated, revision: 3, minDecryptionVersion: 2 };
    await store.updateKey({ key: destroyed, expectedRevision: 2, destroyVersions: [1] }, entry("key.destroy-version"));
    assert.deepEqual(await store.getKeyVersion(key.id, 1), { ...v1, state: "destroyed", wrappedKey: null });
    await rejectsWith(
      store.updateKey({ key: { ...destroyed, revision: 4 }, expectedRevision: 3, destroyVersions: [9] }, entry("k")),
      "not_found",
    );
    assert.equal((await store.getKey("app-a"))?.revision, 3, "the failed update changed nothing");

    const signer = keyRecord("jwt-signer", {
      purpose: "sign",
      algorithm: "ecdsa-p256",
      rotationPeriodSeconds: 86400,
      nextRotationAt: "2025-01-05T00:00:00.000Z",
    });
    const s1 = signingVersion(signer.id, 1);
    await store.createKey(signer, s1, entry("key.create"));
    assert.deepEqual(await store.getKeyVersion(signer.id, 1), s1);
    const doomed = keyRecord("app-b", { state: "pending_destruction", destroyAt: "2025-01-03T00:00:00.000Z" });
    await store.createKey(doomed, aesVersion(doomed.id, 1), entry("key.create"));
    await store.createKey(keyRecord("app-a_x%"), aesVersion("mismatch", 1), entry("key.create")).then(
      () => assert.fail("a version for another key must be refused"),
      (e: unknown) => assert.ok(isCustosError(e, "invalid_request")),
    );

    assert.deepEqual(
      (await store.listKeys()).map((k) => k.name),
      ["app-a", "app-b", "jwt-signer"],
    );
    assert.deepEqual(
      (await store.listKeys({ prefix: "app-" })).map((k) => k.name),
      ["app-a", "app-b"],
    );
    assert.deepEqual(
      (await store.listKeys({ after: "app-a", limit: 1 })).map((k) => k.name),
      ["app-b"],
    );
    assert.deepEqual((await store.listKeys({ prefix: "app_" })).length, 0, "prefix is literal, not a LIKE pattern");
    assert.deepEqual(
      (await store.listKeysDue("2025-01-04T00:00:00.000Z")).map((k) => k.name),
      ["app-b"],
    );
    assert.deepEqual(
      (await store.listKeysDue("2025-01-06T00:00:00.000Z")).map((k) => k.name),
      ["app-b", "jwt-signer"],
    );
    await rejectsWith(store.listKeys({ limit: 0 }), "invalid_request");
  });

  test("keys and versions read from memory follow every write, a rename and a rolled-back one included", async () => {
    const key = keyRecord("cached");
    const v1 = aesVersion(key.id, 1);
    await store.createKey(key, v1, entry("key.create"));
    // Read twice, so the second answer comes from the cache: the same frozen record.
    const first = await store.getKey("cached");
    assert.equal(await store.getKey("cached"), first);
    assert.ok(Object.isFrozen(first));
    assert.equal(await store.getKeyVersion(key.id, 1), await store.getKeyVersion(key.id, 1));

    const renamed = { ...key, name: "cached-renamed", revision: 2 };
    await store.updateKey({ key: renamed, expectedRevision: 1 }, entry("key.rename"));
    assert.equal(await store.getKey("cached"), undefined, "the old name is gone");
    assert.deepEqual(await store.getKey("cached-renamed"), renamed);

    // The version is destroyed, then a later write in the same update fails: nothing changed, nothing stale.
    await rejectsWith(
      store.updateKey(
        { key: { ...renamed, revision: 3 }, expectedRevision: 2, destroyVersions: [1, 7] },
        entry("key.destroy-version"),
      ),
      "not_found",
    );
    assert.deepEqual(await store.getKeyVersion(key.id, 1), v1);
    assert.equal((await store.getKey("cached-renamed"))?.revision, 2);

    await store.updateKey(
      { key: { ...renamed, revision: 3 }, expectedRevision: 2, destroyVersions: [1] },
      entry("key.destroy-version"),
    );
    assert.deepEqual(await store.getKeyVersion(key.id, 1), { ...v1, state: "destroyed", wrappedKey: null });
    assert.equal((await store.getKey("cached-renamed"))?.revision, 3);
  });

  test("users: create, get by id and name, list, update, conflicts, delete revokes tokens and leaves groups", async () => {
    const bob = userRecord("bob", { passwordHash: null, disabled: true, policies: [] });
    await store.createUser(bob, entry("user.create"));
    assert.deepEqual(await store.getUser(bob.id), bob);
    assert.deepEqual(await store.getUserByName("bob"), bob);
    await rejectsWith(store.createUser(userRecord("bob"), entry("user.create")), "conflict");
    assert.ok((await store.listUsers()).some((u) => u.id === bob.id));

    const enabled = { ...bob, disabled: false, revision: 2, updatedAt: "2025-03-01T00:00:00.000Z" };
    await store.updateUser(enabled, 1, entry("user.update"));
    assert.deepEqual(await store.getUser(bob.id), enabled);
    await rejectsWith(store.updateUser({ ...bob, policies: ["x"] }, 1, entry("user.update")), "conflict");
    await rejectsWith(store.updateUser(userRecord("ghost"), 1, entry("user.update")), "not_found");

    const carol = userRecord("carol");
    await store.createUser(carol, entry("user.create"));
    const team = groupRecord("team", [carol.id, bob.id]);
    await store.createGroup(team, entry("group.create"));
    const tok = tokenRecord(bob.id, { kind: "session", policies: ["reader"] });
    const revokedEarlier = tokenRecord(bob.id, { revokedAt: "2025-01-01T05:00:00.000Z" });
    await store.createToken(tok, entry("token.create"));
    await store.createToken(revokedEarlier, entry("token.create"));

    const del = entry("user.delete");
    await store.deleteUser(bob.id, del);
    assert.equal(await store.getUser(bob.id), undefined);
    assert.equal((await store.getToken(tok.id))?.revokedAt, del.time);
    assert.equal((await store.getToken(revokedEarlier.id))?.revokedAt, "2025-01-01T05:00:00.000Z");
    const teamAfter = await store.getGroupByName("team");
    assert.deepEqual(teamAfter?.members, [carol.id]);
    assert.equal(teamAfter?.revision, 2);
    await rejectsWith(store.deleteUser(bob.id, entry("user.delete")), "not_found");
  });

  test("groups: members keep their order; update replaces them; conflicts; groupsOfUser; delete", async () => {
    const u1 = userRecord("g-u1");
    const u2 = userRecord("g-u2");
    const u3 = userRecord("g-u3");
    for (const u of [u1, u2, u3]) await store.createUser(u, entry("user.create"));
    const ops = groupRecord("ops", [u3.id, u1.id]);
    const empty = groupRecord("empty", []);
    await store.createGroup(ops, entry("group.create"));
    await store.createGroup(empty, entry("group.create"));
    assert.deepEqual(await store.getGroupByName("ops"), ops);
    assert.deepEqual(await store.getGroupByName("empty"), empty);
    await rejectsWith(store.createGroup(groupRecord("ops", []), entry("group.create")), "conflict");
    await rejectsWith(store.createGroup(groupRecord("dangling", ["no-such-user"]), entry("g")), "invalid_request");
    await rejectsWith(store.createGroup(groupRecord("twice", [u1.id, u1.id]), entry("g")), "invalid_request");
    assert.equal(await store.getGroupByName("dangling"), undefined);

    const updated = { ...ops, members: [u2.id, u3.id], revision: 2 };
    await store.updateGroup(updated, 1, entry("group.update"));
    assert.deepEqual(await store.getGroupByName("ops"), updated);
    await rejectsWith(store.updateGroup({ ...ops, members: [] }, 1, entry("group.update")), "conflict");
    assert.deepEqual(
      (await store.groupsOfUser(u3.id)).map((g) => g.name),
      ["ops"],
    );
    assert.deepEqual(await store.groupsOfUser(u1.id), []);
    assert.ok((await store.listGroups()).some((g) => g.name === "empty"));

    await store.deleteGroup(ops.id, entry("group.delete"));
    assert.equal(await store.getGroupByName("ops"), undefined);
    assert.deepEqual(await store.groupsOfUser(u3.id), []);
    await rejectsWith(store.deleteGroup(ops.id, entry("group.delete")), "not_found");
  });

  test("tokens: by id and hash, list per user, unique hash, idempotent revoke", async () => {
    const dave = userRecord("dave");
    await store.createUser(dave, entry("user.create"));
    const t1 = tokenRecord(dave.id);
    const t2 = tokenRecord(null, { name: "standalone", policies: ["reader"], expiresAt: null });
    await store.createToken(t1, entry("token.create"));
    await store.createToken(t2, entry("token.create"));
    assert.deepEqual(await store.getToken(t1.id), t1);
    assert.deepEqual(await store.getTokenByHash(t2.hash), t2);
    assert.equal(await store.getTokenByHash("0".repeat(64)), undefined);
    assert.deepEqual(await store.listTokens(dave.id), [t1]);
    assert.ok((await store.listTokens()).length >= 2);
    await rejectsWith(store.createToken(tokenRecord(null, { hash: t1.hash }), entry("token.create")), "conflict");

    await store.revokeToken(t1.id, "2025-01-01T10:00:00.000Z", entry("token.revoke"));
    await store.revokeToken(t1.id, "2025-01-01T11:00:00.000Z", entry("token.revoke"));
    assert.equal((await store.getToken(t1.id))?.revokedAt, "2025-01-01T10:00:00.000Z");
    await rejectsWith(store.revokeToken("tok_nope", "2025-01-01T10:00:00.000Z", entry("token.revoke")), "not_found");
  });

  test("policies: create, conflict on create, update by revision, delete", async () => {
    const p = policyRecord("readers");
    await store.putPolicy(p, null, entry("policy.put"));
    assert.deepEqual(await store.getPolicy("readers"), p);
    await rejectsWith(store.putPolicy(p, null, entry("policy.put")), "conflict");
    const p2 = { ...p, rules: [{ resource: "secret/*", actions: ["secret.read"] }], revision: 2 };
    await store.putPolicy(p2, 1, entry("policy.put"));
    assert.deepEqual(await store.getPolicy("readers"), p2);
    await rejectsWith(store.putPolicy(p2, 1, entry("policy.put")), "conflict");
    await rejectsWith(store.putPolicy(policyRecord("ghost"), 1, entry("policy.put")), "not_found");
    assert.ok((await store.listPolicies()).some((x) => x.name === "readers"));
    await store.deletePolicy("readers", entry("policy.delete"));
    assert.equal(await store.getPolicy("readers"), undefined);
    await rejectsWith(store.deletePolicy("readers", entry("policy.delete")), "not_found");
  });

  test("sudo grants: active filter by time, revoke", async () => {
    const g1 = sudoGrant("user-1");
    const g2 = sudoGrant("group-1", { subjectType: "group", expiresAt: "2025-01-01T03:00:00.000Z" });
    await store.createSudoGrant(g1, entry("sudo.grant"));
    await store.createSudoGrant(g2, entry("sudo.grant"));
    assert.deepEqual(await store.getSudoGrant(g2.id), g2);
    const ids = (grants: { id: string }[]) => grants.map((g) => g.id).sort();
    assert.deepEqual(ids(await store.listSudoGrants("2025-01-01T00:30:00.000Z")), ids([g1, g2]));
    assert.deepEqual(ids(await store.listSudoGrants("2025-01-01T02:00:00.000Z")), [g2.id]);
    await store.revokeSudoGrant(g2.id, "2025-01-01T00:45:00.000Z", entry("sudo.revoke"));
    assert.deepEqual(await store.listSudoGrants("2025-01-01T00:50:00.000Z"), [g1]);
    assert.equal((await store.listSudoGrants()).length, 2);
    await rejectsWith(store.revokeSudoGrant("nope", "2025-01-01T00:45:00.000Z", entry("sudo.revoke")), "not_found");
  });

  test("audit: every committed write appended one chained record; queries filter and page", async () => {
    const head = await store.auditHead();
    const all = await store.readAuditRange(1, head.seq);
    assert.equal(all.length, head.seq, "seq is gap-free: failed operations appended nothing");
    let prevHash = GENESIS_HASH;
    all.forEach((r, i) => {
      assert.equal(r.seq, i + 1);
      assert.equal(r.prevHash, prevHash);
      assert.equal(r.hash, auditRecordHash(r.seq, r.prevHash, r, r.detailsJson));
      prevHash = r.hash;
    });
    assert.equal(head.hash, prevHash);

    const e = entry("audit.custom", {
      principal: "token:abc",
      resource: "secret/db",
      outcome: "denied",
      errorCode: "forbidden",
      details: { when: new Date(0), skip: undefined, list: [1, 2] },
    });
    const rec = await store.appendAudit(e);
    assert.equal(rec.seq, head.seq + 1);
    assert.deepEqual(rec.details, { when: "1970-01-01T00:00:00.000Z", list: [1, 2] }, "details as JSON reads them");
    const [read] = await store.readAuditRange(rec.seq, rec.seq);
    assert.ok(read);
    const { detailsJson, ...fields } = read;
    assert.deepEqual(fields, rec);
    assert.equal(detailsJson, canonicalJson(rec.details), "the details column holds canonical JSON");

    assert.deepEqual(
      (await store.listAudit({ principal: "token:abc" })).map((r) => r.seq),
      [rec.seq],
    );
    assert.deepEqual(
      (await store.listAudit({ action: "user.create", limit: 2 })).map((r) => r.action),
      ["user.create", "user.create"],
    );
    const newest = await store.listAudit({ descending: true, limit: 3 });
    assert.deepEqual(
      newest.map((r) => r.seq),
      [rec.seq, rec.seq - 1, rec.seq - 2],
    );
    assert.deepEqual(
      (await store.listAudit({ afterSeq: rec.seq - 2 })).map((r) => r.seq),
      [rec.seq - 1, rec.seq],
    );
    assert.deepEqual(await store.listAudit({ resource: "nothing/here" }), []);
    await rejectsWith(store.appendAudit(entry("bad", { details: { big: 1n } })), "invalid_request");
  });

  test("audit checkpoints: add, list, duplicate seq is conflict", async () => {
    const head = await store.auditHead();
    const cp = {
      seq: head.seq,
      hash: head.hash,
      time: "2025-01-01T00:00:00.000Z",
      keyLabel: "custos-audit-checkpoint",
      keyId: "01",
      scheme: "ecdsa-p256-sha256",
      signature: Buffer.from("sig").toString("base64"),
    };
    await store.addAuditCheckpoint(cp);
    assert.deepEqual(await store.listAuditCheckpoints(), [cp]);
    await rejectsWith(store.addAuditCheckpoint(cp), "conflict");
  });
});

/**
 * The rule records were hashed by before the chain was keyed, written out
 * independently of the store: SHA-256 (or an HMAC) over the canonical JSON of the
 * whole record, details parsed.
 */
function canonicalRecordHash(r: AuditRecord, mac: Hash | Hmac = createHash("sha256")): string {
  const { seq, prevHash, time, requestId, principal, source, action, resource, outcome, errorCode, details } = r;
  const body = { seq, prevHash, time, requestId, principal, source, action, resource, outcome, errorCode, details };
  return mac.update(canonicalJson(body)).digest("hex");
}

describe("the keyed audit chain", () => {
  const initialState = () => {
    const admin = userRecord("admin", { policies: ["admin"] });
    return { settings: {}, policies: [], admin, adminToken: tokenRecord(admin.id) };
  };

  test("a fresh store is keyed from record 1: each hash is HMAC-SHA256 under the key, not SHA-256", async () => {
    const bytes = randomBytes(32);
    const store = await SqliteStore.open(tmp.path("keyed-fresh.db"));
    assert.equal(await store.useAuditChainKey(createSecretKey(bytes)), 1);
    await store.initialize(initialState(), entry("custos.init"));
    await store.appendAudit(entry("test.one"));
    const records = await store.readAuditRange(1, 2);
    assert.equal(records.length, 2);
    for (const r of records) {
      assert.equal(r.hash, canonicalRecordHash(r, createHmac("sha256", bytes)), `hash at ${r.seq}`);
      assert.notEqual(r.hash, canonicalRecordHash(r));
    }
    await store.close();
  });

  test("a store written unkeyed keeps its SHA-256 records and is keyed from the next one, across reopens", async () => {
    const path = tmp.path("keyed-upgrade.db");
    const bytes = randomBytes(32);
    const before = await SqliteStore.open(path);
    for (let i = 0; i < 3; i++) await before.appendAudit(entry("test.before"));
    await before.close();

    const keyed = await SqliteStore.open(path);
    assert.equal(await keyed.useAuditChainKey(createSecretKey(bytes)), 4);
    await keyed.appendAudit(entry("test.after"));
    const records = await keyed.readAuditRange(1, 4);
    for (const r of records.slice(0, 3)) assert.equal(r.hash, canonicalRecordHash(r), `SHA-256 at ${r.seq}`);
    const [fourth] = records.slice(3);
    assert.ok(fourth);
    assert.equal(fourth.hash, canonicalRecordHash(fourth, createHmac("sha256", bytes)));
    await keyed.close();

    const again = await SqliteStore.open(path);
    await rejectsWith(again.appendAudit(entry("test.unkeyed")), "audit_unavailable");
    assert.equal(await again.useAuditChainKey(createSecretKey(bytes)), 4, "the first keyed seq is read back");
    assert.equal((await again.appendAudit(entry("test.after"))).seq, 5);
    await again.close();
  });

  test("a first keyed seq past the end of the log (records deleted since) refuses the key", async () => {
    const path = tmp.path("keyed-cut.db");
    const store = await SqliteStore.open(path);
    for (let i = 0; i < 3; i++) await store.appendAudit(entry("test.before"));
    assert.equal(await store.useAuditChainKey(createSecretKey(randomBytes(32))), 4);
    await store.appendAudit(entry("test.after"));
    await store.close();
    const db = new Database(path);
    db.prepare("DELETE FROM audit_log WHERE seq >= 3").run();
    db.close();
    const cut = await SqliteStore.open(path);
    await rejectsWith(cut.useAuditChainKey(createSecretKey(randomBytes(32))), "audit_unavailable");
    await cut.close();
  });

  test("an initialised store whose audit log was emptied refuses to open; one never initialised opens", async () => {
    const path = tmp.path("wiped.db");
    const store = await SqliteStore.open(path);
    await store.initialize(initialState(), entry("custos.init"));
    await store.appendAudit(entry("test.one"));
    await store.close();
    const db = new Database(path);
    db.exec("DELETE FROM audit_log; DELETE FROM audit_checkpoints;");
    db.close();
    await assert.rejects(SqliteStore.open(path), (e: unknown) => {
      assert.ok(isCustosError(e, "audit_unavailable"), String(e));
      assert.match(e.message, /initialised but its audit log is empty/);
      return true;
    });
    await (await SqliteStore.open(tmp.path("never-initialised.db"))).close();
  });

  test("readAuditAfter pages by seq, however far apart the seqs are, with the details text as stored", async () => {
    const path = tmp.path("sparse.db");
    const store = await SqliteStore.open(path);
    for (let i = 0; i < 3; i++) await store.appendAudit(entry("test.page"));
    const db = new Database(path);
    db.prepare(
      `INSERT INTO audit_log (seq, time, request_id, principal, source, action, resource, outcome, error_code, details, prev_hash, hash)
       VALUES (?, 't', 'r', 'p', 's', 'a', 'x', 'success', NULL, '{"i":99,"i":3}', 'h', 'h')`,
    ).run(2 ** 40);
    db.close();
    assert.deepEqual(
      (await store.readAuditAfter(Number.NEGATIVE_INFINITY, 2)).map((r) => r.seq),
      [1, 2],
    );
    const rest = await store.readAuditAfter(2, 1000);
    assert.deepEqual(
      rest.map((r) => [r.seq, r.detailsJson]),
      [
        [3, canonicalJson(rest[0]?.details)],
        [2 ** 40, '{"i":99,"i":3}'],
      ],
    );
    await rejectsWith(store.readAuditAfter(0, 0), "invalid_request");
    await store.close();
  });
});

describe("lifecycle", () => {
  test("close flushes writes queued in the same tick, then refuses reads and writes", async () => {
    const path = tmp.path("close.db");
    const store = await SqliteStore.open(path);
    const pending = [store.appendAudit(entry("a")), store.appendAudit(entry("b"))];
    await store.close();
    const records = await Promise.all(pending);
    assert.deepEqual(
      records.map((r) => r.seq),
      [1, 2],
    );
    await rejectsWith(store.appendAudit(entry("c")), "store_unavailable");
    await rejectsWith(store.getSetting("x"), "store_unavailable");
    await store.close();

    const reopened = await SqliteStore.open(path);
    assert.deepEqual(await reopened.auditHead(), { seq: 2, hash: records[1]?.hash });
    assert.equal((await reopened.appendAudit(entry("d"))).prevHash, records[1]?.hash, "the head is reloaded at open");
    await reopened.close();
  });
});
