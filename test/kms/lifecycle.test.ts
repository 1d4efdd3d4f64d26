import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { systemActor } from "../../src/audit/index.js";
import { keyPairLabel } from "../../src/kms/index.js";
import type { AuditRecord } from "../../src/store/index.js";
import { tokenObjectLabels } from "../helpers/softhsm.js";
import { alice, type KmsFixture, openFixture, rejectsWith } from "./setup.js";

let f: KmsFixture;

before(async () => {
  f = await openFixture("custos-kms-life");
});
after(async () => {
  await f?.close();
});

const DAY = 86400;

/** The `before` or `after` state an audit record carries. */
function side(rec: AuditRecord | undefined, which: "before" | "after"): Record<string, unknown> {
  const value = rec?.details[which];
  assert.ok(value !== null && typeof value === "object", `audit record has no ${which}`);
  return value as Record<string, unknown>;
}

/** Labels of the KMS private keys on the token, listed by pkcs11-tool (an oracle outside our code). */
function kmsPrivateKeys(): string[] {
  return tokenObjectLabels(f.token, "privkey").filter((l) => l.startsWith("custos/key/"));
}
const at = (iso: string) => new Date(iso);

describe("key management", () => {
  test("create: defaults, metadata and versions, never material", async () => {
    const k = await f.kms.createKey(alice, { name: "created", purpose: "encrypt", description: "d" });
    assert.equal(k.algorithm, "aes-256-gcm");
    assert.equal(k.state, "enabled");
    assert.equal(k.latestVersion, 1);
    assert.equal(k.minDecryptionVersion, 1);
    assert.equal(k.rotationPeriodSeconds, null);
    assert.match(k.id, /^[0-9a-f-]{36}$/);
    assert.deepEqual(Object.keys(k.versions[0] ?? {}).sort(), ["createdAt", "state", "version"]);
    assert.ok(!JSON.stringify(await f.kms.getKey(alice, "created")).includes("wrapped"));
    const s = await f.kms.createKey(alice, { name: "signed", purpose: "sign" });
    assert.equal(s.algorithm, "ecdsa-p256");
    assert.match(s.versions[0]?.publicKeyPem ?? "", /^-----BEGIN PUBLIC KEY-----\n/);
    const rec = (await f.records("key.create")).at(-1);
    assert.equal(rec?.resource, "key/signed");
    assert.equal(side(rec, "after").state, "enabled");
  });

  test("create refuses bad names, algorithms, periods and duplicates", async () => {
    for (const name of ["", "-lead", "has space", "x".repeat(129), "a/b"]) {
      await rejectsWith(f.kms.createKey(alice, { name, purpose: "encrypt" }), "invalid_request");
    }
    await rejectsWith(
      f.kms.createKey(alice, { name: "alg", purpose: "encrypt", algorithm: "ed25519" }),
      "invalid_request",
      /aes-256-gcm/,
    );
    await rejectsWith(
      f.kms.createKey(alice, { name: "alg", purpose: "sign", algorithm: "aes-256-gcm" }),
      "invalid_request",
    );
    await rejectsWith(
      f.kms.createKey(alice, { name: "per", purpose: "encrypt", rotationPeriodSeconds: 10 }),
      "invalid_request",
      /rotationPeriodSeconds/,
    );
    await rejectsWith(f.kms.createKey(alice, { name: "created", purpose: "encrypt" }), "conflict");
    assert.ok(await f.kms.createKey(alice, { name: "A.b_c-9", purpose: "encrypt" }));
  });

  test("a store failure after generating a key pair leaves no HSM object behind", async () => {
    const pairsBefore = kmsPrivateKeys();
    // Two creates of one name race past the early name check; the loser's key pair must go.
    const results = await Promise.allSettled([
      f.kms.createKey(alice, { name: "raced", purpose: "sign" }),
      f.kms.createKey(alice, { name: "raced", purpose: "sign" }),
    ]);
    const won = results.filter((r) => r.status === "fulfilled");
    assert.equal(won.length, 1);
    const winner = (won[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof f.kms.createKey>>>).value;
    const lost = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
    assert.equal((lost.reason as { code: string }).code, "conflict");
    const versions = await f.store.listKeyVersions(winner.id);
    assert.equal(versions.length, 1);
    // The winner's pair is there and is the only pair under any label for this name's keys.
    const ref = { label: versions[0]?.hsmLabel ?? "", id: versions[0]?.hsmId ?? "" };
    assert.ok((await f.keystore.publicKey(ref)).length > 0);
    // Counted on the token itself: exactly one new private key, the winner's.
    assert.deepEqual(
      kmsPrivateKeys().filter((l) => !pairsBefore.includes(l)),
      [ref.label],
    );
  });

  test("list paginates by name and filters by prefix", async () => {
    for (const n of ["pg-1", "pg-2", "pg-3"]) await f.kms.createKey(alice, { name: n, purpose: "encrypt" });
    const page1 = await f.kms.listKeys(alice, { prefix: "pg-", limit: 2 });
    assert.deepEqual(
      page1.map((k) => k.name),
      ["pg-1", "pg-2"],
    );
    const page2 = await f.kms.listKeys(alice, { prefix: "pg-", after: "pg-2", limit: 2 });
    assert.deepEqual(
      page2.map((k) => k.name),
      ["pg-3"],
    );
    await rejectsWith(f.kms.listKeys(alice, { limit: 0 }), "invalid_request");
    await rejectsWith(f.kms.getKey(alice, "nope"), "not_found");
  });

  test("disable refuses every crypto op at once; enable restores; both are audited", async () => {
    await f.kms.createKey(alice, { name: "toggle", purpose: "encrypt" });
    const { ciphertext } = await f.kms.encrypt(alice, "toggle", { plaintext: Buffer.from("x") });
    assert.equal((await f.kms.disableKey(alice, "toggle")).state, "disabled");
    await rejectsWith(f.kms.encrypt(alice, "toggle", { plaintext: Buffer.from("x") }), "key_disabled");
    await rejectsWith(f.kms.decrypt(alice, "toggle", { ciphertext }), "key_disabled");
    await rejectsWith(f.kms.rewrap(alice, "toggle", { ciphertext }), "key_disabled");
    await rejectsWith(f.kms.generateDataKey(alice, "toggle"), "key_disabled");
    await rejectsWith(f.kms.encryptBatch(alice, "toggle", [{ plaintext: Buffer.from("x") }]), "key_disabled");
    // Idempotent, but still one audit record per call (the API leaves these routes to us).
    const before = (await f.records("key.disable")).length;
    assert.equal((await f.kms.disableKey(alice, "toggle")).state, "disabled");
    const records = await f.records("key.disable");
    assert.equal(records.length, before + 1);
    assert.equal(records.at(-1)?.details.unchanged, true);
    assert.equal((await f.kms.enableKey(alice, "toggle")).state, "enabled");
    assert.equal((await f.kms.decrypt(alice, "toggle", { ciphertext })).plaintext.exposeText(), "x");
    const en = (await f.records("key.enable")).at(-1);
    assert.deepEqual([side(en, "before").state, side(en, "after").state], ["disabled", "enabled"]);
  });

  test("update: description, rotation period (null clears), minDecryptionVersion only on encrypt keys", async () => {
    f.now = at("2030-01-01T00:00:00.000Z");
    await f.kms.createKey(alice, { name: "upd", purpose: "encrypt" });
    f.now = at("2030-03-01T00:00:00.000Z");
    const u = await f.kms.updateKey(alice, "upd", { description: "new", rotationPeriodSeconds: 30 * DAY });
    assert.equal(u.description, "new");
    assert.equal(u.rotationPeriodSeconds, 30 * DAY);
    // Counted from the latest version's creation: an old key becomes due at once.
    assert.equal(u.nextRotationAt, "2030-01-31T00:00:00.000Z");
    const cleared = await f.kms.updateKey(alice, "upd", { rotationPeriodSeconds: null });
    assert.equal(cleared.rotationPeriodSeconds, null);
    assert.equal(cleared.nextRotationAt, null);
    await rejectsWith(f.kms.updateKey(alice, "upd", {}), "invalid_request", /nothing to update/);
    await rejectsWith(f.kms.updateKey(alice, "signed", { minDecryptionVersion: 1 }), "invalid_request", /encrypt keys/);
    const rec = (await f.records("key.update")).at(-1);
    assert.equal(side(rec, "before").rotationPeriodSeconds, 30 * DAY);
    assert.equal(side(rec, "after").rotationPeriodSeconds, null);
  });

  test("concurrent rotations produce distinct consecutive versions, none lost", async () => {
    await f.kms.createKey(alice, { name: "race-enc", purpose: "encrypt" });
    await f.kms.createKey(alice, { name: "race-sig", purpose: "sign", algorithm: "ed25519" });
    for (const name of ["race-enc", "race-sig"]) {
      const results = await Promise.all([
        f.kms.rotateKey(alice, name),
        f.kms.rotateKey(alice, name),
        f.kms.rotateKey(alice, name),
      ]);
      const latest = results.map((r) => r.latestVersion).sort();
      assert.deepEqual(latest, [2, 3, 4]);
      const key = await f.kms.getKey(alice, name);
      assert.equal(key.latestVersion, 4);
      assert.deepEqual(
        key.versions.map((v) => v.version),
        [1, 2, 3, 4],
      );
    }
    // Every signing version has its own usable pair; losers of the race left none behind.
    const key = await f.kms.getKey(alice, "race-sig");
    const rows = await f.store.listKeyVersions(key.id);
    assert.equal(kmsPrivateKeys().filter((l) => l.startsWith(`custos/key/${key.id}/`)).length, 4);
    for (const v of rows) {
      assert.equal(v.hsmLabel, keyPairLabel(key.id, v.version));
      const s = await f.kms.sign(alice, "race-sig", { message: Buffer.from("m"), version: v.version });
      assert.equal((await f.kms.verify(alice, "race-sig", { message: Buffer.from("m"), ...s })).valid, true);
    }
  });

  test("schedule and cancel destruction; pending keys refuse crypto with key_disabled", async () => {
    await f.kms.createKey(alice, { name: "doomed", purpose: "encrypt" });
    f.now = at("2030-05-01T00:00:00.000Z");
    const p = await f.kms.scheduleDestruction(alice, "doomed", { waitingSeconds: 7 * DAY });
    assert.equal(p.state, "pending_destruction");
    assert.equal(p.destroyAt, "2030-05-08T00:00:00.000Z");
    await rejectsWith(f.kms.encrypt(alice, "doomed", { plaintext: Buffer.from("x") }), "key_disabled");
    await rejectsWith(f.kms.enableKey(alice, "doomed"), "conflict", /cancel/);
    await rejectsWith(f.kms.scheduleDestruction(alice, "doomed", { waitingSeconds: DAY }), "conflict");
    const c = await f.kms.cancelDestruction(alice, "doomed");
    assert.equal(c.state, "disabled");
    assert.equal(c.destroyAt, null);
    await rejectsWith(f.kms.cancelDestruction(alice, "doomed"), "conflict");
    await rejectsWith(
      f.kms.scheduleDestruction(alice, "doomed", { waitingSeconds: -1 }),
      "invalid_request",
      /waitingSeconds/,
    );
    const d = await f.kms.scheduleDestruction(alice, "doomed");
    assert.equal(d.destroyAt, "2030-05-31T00:00:00.000Z");
  });

  test("the default minimum waiting period is a day", async () => {
    const { KmsService } = await import("../../src/kms/index.js");
    const strict = new KmsService({ keystore: f.keystore, store: f.store, audit: f.audit });
    await f.kms.createKey(alice, { name: "strict", purpose: "encrypt" });
    await rejectsWith(
      strict.scheduleDestruction(alice, "strict", { waitingSeconds: 3600 }),
      "invalid_request",
      /86400/,
    );
    assert.equal(
      (await strict.scheduleDestruction(alice, "strict", { waitingSeconds: DAY })).state,
      "pending_destruction",
    );
  });

  test("destroy erases wrapped material in the database and the key pairs in the HSM", async () => {
    const enc = await f.kms.createKey(alice, { name: "gone-enc", purpose: "encrypt" });
    await f.kms.rotateKey(alice, "gone-enc");
    const wrappedBefore = (await f.store.listKeyVersions(enc.id)).map((v) => v.wrappedKey);
    assert.ok(wrappedBefore.every((w) => w !== null && w.length === 40));
    const { ciphertext } = await f.kms.encrypt(alice, "gone-enc", { plaintext: Buffer.from("x") });
    const d = await f.kms.destroyKey(alice, "gone-enc");
    assert.equal(d.state, "destroyed");
    assert.ok(d.versions.every((v) => v.state === "destroyed"));
    // Read the rows back through a second connection, as someone holding the file would.
    const db = new Database(f.dbPath, { readonly: true });
    try {
      const rows = db.prepare("SELECT version, state, wrapped_key FROM key_versions WHERE key_id = ?").all(enc.id);
      assert.deepEqual(rows, [
        { version: 1, state: "destroyed", wrapped_key: null },
        { version: 2, state: "destroyed", wrapped_key: null },
      ]);
    } finally {
      db.close();
    }
    await rejectsWith(f.kms.decrypt(alice, "gone-enc", { ciphertext }), "decryption_failed");
    await rejectsWith(f.kms.encrypt(alice, "gone-enc", { plaintext: Buffer.from("x") }), "key_destroyed");
    await rejectsWith(f.kms.enableKey(alice, "gone-enc"), "key_destroyed");
    await rejectsWith(f.kms.rotateKey(alice, "gone-enc"), "key_destroyed");
    const rec = (await f.records("key.destroy")).at(-1);
    assert.equal(side(rec, "after").state, "destroyed");

    const sig = await f.kms.createKey(alice, { name: "gone-sig", purpose: "sign", algorithm: "ecdsa-p256" });
    await f.kms.rotateKey(alice, "gone-sig");
    const refs = (await f.store.listKeyVersions(sig.id)).map((v) => ({ label: v.hsmLabel ?? "", id: v.hsmId ?? "" }));
    for (const ref of refs) assert.ok((await f.keystore.publicKey(ref)).length > 0);
    await f.kms.destroyKey(alice, "gone-sig");
    for (const ref of refs) await rejectsWith(f.keystore.publicKey(ref), "not_found");
    await rejectsWith(f.kms.sign(alice, "gone-sig", { message: Buffer.from("m") }), "key_destroyed");
    // Destroying again is a harmless re-sweep, audited as unchanged.
    assert.equal((await f.kms.destroyKey(alice, "gone-sig")).state, "destroyed");
    assert.equal((await f.records("key.destroy")).at(-1)?.details.unchanged, true);
  });

  test("runDue rotates due enabled keys and destroys due pending keys, with a fake clock", async () => {
    f.now = at("2031-01-01T00:00:00.000Z");
    // Earlier tests left keys pending destruction; let those go first.
    await f.kms.runDue();
    await f.kms.createKey(alice, { name: "auto", purpose: "encrypt", rotationPeriodSeconds: 90 * DAY });
    await f.kms.createKey(alice, { name: "auto-off", purpose: "encrypt", rotationPeriodSeconds: 90 * DAY });
    await f.kms.disableKey(alice, "auto-off");
    await f.kms.createKey(alice, { name: "sched", purpose: "sign" });
    await f.kms.scheduleDestruction(alice, "sched", { waitingSeconds: 30 * DAY });
    await f.kms.createKey(alice, { name: "sched-cancelled", purpose: "encrypt" });
    await f.kms.scheduleDestruction(alice, "sched-cancelled", { waitingSeconds: 30 * DAY });
    await f.kms.cancelDestruction(alice, "sched-cancelled");

    assert.deepEqual(await f.kms.runDue(at("2031-01-15T00:00:00.000Z")), { rotated: 0, destroyed: 0, failed: 0 });
    assert.equal((await f.kms.getKey(alice, "auto")).latestVersion, 1);

    f.now = at("2031-02-01T00:00:00.000Z");
    const first = await f.kms.runDue();
    assert.equal(first.destroyed, 1);
    assert.equal(first.failed, 0);
    assert.equal((await f.kms.getKey(alice, "sched")).state, "destroyed");
    assert.equal((await f.kms.getKey(alice, "sched-cancelled")).state, "disabled");
    const rec = (await f.records("key.destroy")).at(-1);
    assert.equal(rec?.principal, "system");
    assert.equal(rec?.details.scheduled, true);

    f.now = at("2031-04-02T00:00:00.000Z");
    const second = await f.kms.runDue();
    assert.ok(second.rotated >= 1);
    const auto = await f.kms.getKey(alice, "auto");
    assert.equal(auto.latestVersion, 2);
    assert.equal(auto.nextRotationAt, "2031-07-01T00:00:00.000Z");
    assert.equal((await f.kms.getKey(alice, "auto-off")).latestVersion, 1);
    const rot = (await f.records("key.rotate")).filter((r) => r.resource === "key/auto").at(-1);
    assert.equal(rot?.principal, "system");
    assert.equal(rot?.details.automatic, true);
    // Nothing more is due at the same instant, so a second pass (another node) does nothing.
    const again = await f.kms.runDue();
    assert.equal(again.rotated, 0);
    assert.equal((await f.kms.getKey(alice, "auto")).latestVersion, 2);
  });

  test("state changes are audited atomically with the change (the record is in the store)", async () => {
    const actor = systemActor("req-atomic");
    await f.kms.createKey(actor, { name: "atomic", purpose: "encrypt" });
    const rec = (await f.records("key.create")).find((r) => r.requestId === "req-atomic");
    assert.ok(rec);
    assert.equal(rec.resource, "key/atomic");
    // Fail closed on a state change: the audit sink is not involved, the store commits both.
    f.audit.failing = true;
    try {
      const r = await f.kms.rotateKey(actor, "atomic");
      assert.equal(r.latestVersion, 2);
    } finally {
      f.audit.failing = false;
    }
    assert.ok((await f.records("key.rotate")).some((r) => r.requestId === "req-atomic"));
  });
});
