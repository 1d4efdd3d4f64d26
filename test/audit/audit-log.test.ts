import assert from "node:assert/strict";
import { createHash, createPublicKey, createSecretKey, verify } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { AUDIT_LIST_MAX, AuditLog, auditEntry, systemActor } from "../../src/audit/index.js";
import { isCustosError } from "../../src/errors/index.js";
import type { HsmKeyRef } from "../../src/hsm/index.js";
import { Pkcs11Keystore } from "../../src/hsm/pkcs11/index.js";
import { Secret } from "../../src/secret/index.js";
import { type AuditEntry, auditCheckpointMessage, auditRecordHash, SqliteStore } from "../../src/store/index.js";
import { createTestToken, type TestToken } from "../helpers/softhsm.js";

let token: TestToken;
let keystore: Pkcs11Keystore;
let keys: { hmacKey: HsmKeyRef; checkpointKey: HsmKeyRef };
const dir = mkdtempSync(join(tmpdir(), "custos-audit-"));
let dbCount = 0;

before(async () => {
  token = createTestToken("custos-audit");
  keystore = await Pkcs11Keystore.open({
    modulePath: token.modulePath,
    tokenLabel: token.label,
    pin: Secret.fromString(token.pin),
  });
  keys = await AuditLog.provisionKeys(keystore);
});

after(async () => {
  await keystore?.close();
  token?.remove();
  rmSync(dir, { recursive: true, force: true });
});

function entry(i: number, overrides: Partial<AuditEntry> = {}): AuditEntry {
  return { ...auditEntry(systemActor(`req-${i}`), "test.action", `item/${i}`, { i }), ...overrides };
}

interface Fixture {
  path: string;
  store: SqliteStore;
  audit: AuditLog;
  /** A second connection, as an attacker with file access would have. */
  sql: Database.Database;
  close(): Promise<void>;
}

/** A store with `records` audit records and (optionally) a checkpoint at the end. */
async function fixture(records: number, options: { checkpoint?: boolean } = {}): Promise<Fixture> {
  const path = join(dir, `audit-${++dbCount}.db`);
  const store = await SqliteStore.open(path);
  const audit = new AuditLog({ store, keystore, ...keys });
  for (let i = 1; i <= records; i++) await audit.record(entry(i));
  if (options.checkpoint === true) assert.ok(await audit.checkpoint());
  const sql = new Database(path);
  return {
    path,
    store,
    audit,
    sql,
    async close() {
      sql.close();
      await audit.stop();
      await store.close();
    },
  };
}

function problemsOf(report: { problems: Array<{ seq: number; kind: string }> }): Array<[number, string]> {
  return report.problems.map((p) => [p.seq, p.kind]);
}

describe("AuditLog", () => {
  test("hmac is hmac-sha256:<hex>, keyed (not a plain hash), deterministic, the same for string and bytes", async () => {
    const f = await fixture(0);
    const a = await f.audit.hmac("s3cret-token-value");
    assert.match(a, /^hmac-sha256:[0-9a-f]{64}$/);
    assert.equal(await f.audit.hmac(Buffer.from("s3cret-token-value")), a);
    assert.notEqual(await f.audit.hmac("s3cret-token-valuf"), a);
    assert.notEqual(a.slice("hmac-sha256:".length), createHash("sha256").update("s3cret-token-value").digest("hex"));
    // The HSM's HMAC of the value behind its label and separator: the documented input.
    const input = Buffer.from("custos-audit-value:v1\0s3cret-token-value", "utf8");
    assert.equal(a, `hmac-sha256:${(await keystore.hmac(keys.hmacKey, input)).toString("hex")}`);
    await f.close();
  });

  test("no value's hmac is the chain key: not the chain label's, which derives it", async () => {
    const f = await fixture(0);
    const keyed = await AuditLog.open({ store: f.store, keystore, ...keys });
    await keyed.record(entry(1));
    const [first] = await f.store.readAuditRange(1, 1);
    assert.ok(first !== undefined);
    const hashWith = (key: Buffer) =>
      auditRecordHash(1, first.prevHash, first, first.detailsJson, { key: createSecretKey(key), keyedFrom: 1 });
    // The chain key as open() derives it reproduces the record's hash ...
    const chainKey = await keystore.hmac(keys.hmacKey, Buffer.from("custos-audit-chain:v1", "utf8"));
    assert.equal(hashWith(chainKey), first.hash);
    // ... and the hmac of that very label, as a secret write would record it, does not.
    const mac = await keyed.hmac("custos-audit-chain:v1");
    assert.notEqual(hashWith(Buffer.from(mac.slice("hmac-sha256:".length), "hex")), first.hash);
    await f.close();
  });

  test("provisionKeys reuses the keys an earlier run left on the token", async () => {
    assert.deepEqual(await AuditLog.provisionKeys(keystore), keys);
  });

  test("record appends durably and list reads back", async () => {
    const f = await fixture(3);
    const listed = await f.audit.list({});
    assert.deepEqual(
      listed.map((r) => [r.seq, r.resource]),
      [
        [1, "item/1"],
        [2, "item/2"],
        [3, "item/3"],
      ],
    );
    assert.deepEqual(
      (await f.audit.list({ descending: true, limit: 1 })).map((r) => r.seq),
      [3],
    );
    await f.close();
  });

  test("list's afterSeq is a cursor in the listing's order: newer oldest first, older newest first", async () => {
    const f = await fixture(6);
    const seqs = async (q: Parameters<AuditLog["list"]>[0]) => (await f.audit.list(q)).map((r) => r.seq);
    assert.deepEqual(await seqs({ afterSeq: 2, limit: 2 }), [3, 4]);
    assert.deepEqual(await seqs({ afterSeq: 5, limit: 2, descending: true }), [4, 3]);
    // Paging newest first by the last seq of each page walks the whole log once.
    const walked: number[] = [];
    for (let page = await seqs({ limit: 4, descending: true }); page.length > 0; ) {
      walked.push(...page);
      page = await seqs({ limit: 4, descending: true, afterSeq: page.at(-1) as number });
    }
    assert.deepEqual(walked, [6, 5, 4, 3, 2, 1]);
    await f.close();
  });

  test("checkpoint signs the head with the HSM key (checked with node:crypto); nothing new => undefined", async () => {
    const f = await fixture(5);
    const cp = await f.audit.checkpoint();
    assert.ok(cp);
    const head = await f.store.auditHead();
    assert.equal(cp.seq, 5);
    assert.equal(cp.hash, head.hash);
    assert.deepEqual(
      [cp.keyLabel, cp.keyId, cp.scheme],
      [keys.checkpointKey.label, keys.checkpointKey.id, "ecdsa-p256-sha256"],
    );
    const publicKey = createPublicKey({
      key: await keystore.publicKey(keys.checkpointKey),
      format: "der",
      type: "spki",
    });
    const message = auditCheckpointMessage(cp.seq, cp.hash, cp.time);
    const signature = Buffer.from(cp.signature, "base64");
    assert.ok(verify("sha256", message, { key: publicKey, dsaEncoding: "ieee-p1363" }, signature));
    assert.ok(!verify("sha256", Buffer.from("other"), { key: publicKey, dsaEncoding: "ieee-p1363" }, signature));
    assert.deepEqual(await f.store.listAuditCheckpoints(), [cp]);
    assert.equal(await f.audit.checkpoint(), undefined);
    await f.audit.record(entry(6));
    assert.equal((await f.audit.checkpoint())?.seq, 6);
    await f.close();
  });

  test("checkpoints are taken every `checkpointEvery` records", async () => {
    const path = join(dir, `every-${++dbCount}.db`);
    const store = await SqliteStore.open(path);
    const audit = new AuditLog({ store, keystore, ...keys, checkpointEvery: 10 });
    audit.start();
    for (let i = 1; i <= 25; i++) await audit.record(entry(i));
    await audit.stop();
    const seqs = (await store.listAuditCheckpoints()).map((c) => c.seq);
    assert.ok(seqs.length >= 2, `checkpoints at ${seqs.join(",")}`);
    assert.ok(seqs.every((s) => s >= 10));
    assert.equal((await audit.verify()).ok, true);
    await store.close();
  });

  test("list refuses a limit above AUDIT_LIST_MAX instead of returning fewer records", async () => {
    const f = await fixture(2);
    assert.equal((await f.audit.list({ limit: AUDIT_LIST_MAX })).length, 2);
    await assert.rejects(f.audit.list({ limit: AUDIT_LIST_MAX + 1 }), (e: unknown) =>
      isCustosError(e, "invalid_request"),
    );
    await f.close();
  });

  test("open keys the chain from the next record, and derives the same key on every start", async () => {
    const f = await fixture(5);
    const keyed = await AuditLog.open({ store: f.store, keystore, ...keys });
    for (let i = 6; i <= 8; i++) await keyed.record(entry(i));
    const sixth = (await f.store.readAuditRange(6, 6))[0]!;
    assert.notEqual(sixth.hash, auditRecordHash(6, sixth.prevHash, sixth, sixth.detailsJson), "record 6 is keyed");
    assert.deepEqual(await keyed.verify(), {
      ok: true,
      records: 8,
      checkpoints: 0,
      unsignedTail: 8,
      problems: [],
      restores: [],
    });
    await f.store.close();

    const store = await SqliteStore.open(f.path);
    const reopened = await AuditLog.open({ store, keystore, ...keys });
    await reopened.record(entry(9));
    assert.equal((await reopened.verify()).ok, true);
    // The unkeyed records stay covered: the first keyed one holds record 5's hash.
    const fifth = (await store.readAuditRange(5, 5))[0]!;
    const forged = { ...fifth, principal: "user:mallory" };
    f.sql
      .prepare("UPDATE audit_log SET principal = ?, hash = ? WHERE seq = 5")
      .run(forged.principal, auditRecordHash(5, fifth.prevHash, forged, fifth.detailsJson));
    assert.deepEqual(problemsOf(await reopened.verify()), [[6, "broken_link"]]);
    f.sql.close();
    await store.close();
  });

  test("record with a closed store fails with audit_unavailable", async () => {
    const f = await fixture(1);
    await f.store.close();
    await assert.rejects(f.audit.record(entry(2)), (e: unknown) => isCustosError(e, "audit_unavailable"));
    await f.close();
  });

  test("record with a store that can't write in time fails with audit_unavailable, not a hang", async () => {
    const path = join(dir, `locked-${++dbCount}.db`);
    const store = await SqliteStore.open(path, { writeTimeoutMs: 60_000 });
    const audit = new AuditLog({ store, keystore, ...keys, recordTimeoutMs: 300 });
    await audit.record(entry(1));
    const side = new Database(path, { timeout: 0 });
    side.exec("BEGIN IMMEDIATE");
    await assert.rejects(audit.record(entry(2)), (e: unknown) => isCustosError(e, "audit_unavailable"));
    side.exec("ROLLBACK");
    side.close();
    await store.close();
  });
});

describe("AuditLog.verify", () => {
  test("an intact log with checkpoints is ok", async () => {
    const f = await fixture(30, { checkpoint: true });
    for (let i = 31; i <= 40; i++) await f.audit.record(entry(i));
    await f.audit.checkpoint();
    const report = await f.audit.verify();
    assert.deepEqual(report, { ok: true, records: 40, checkpoints: 2, unsignedTail: 0, problems: [], restores: [] });
    await f.close();
  });

  test("records after the newest checkpoint are counted as the unsigned tail; stop() signs them", async () => {
    const f = await fixture(10, { checkpoint: true });
    for (let i = 11; i <= 14; i++) await f.audit.record(entry(i));
    assert.equal((await f.audit.verify()).unsignedTail, 4);
    // Removing those records from the end is not detectable yet: that is what the count warns of.
    f.sql.prepare("DELETE FROM audit_log WHERE seq > 12").run();
    const cut = await f.audit.verify();
    assert.equal(cut.ok, true);
    assert.equal(cut.unsignedTail, 2);
    await f.audit.stop();
    const after = await f.audit.verify();
    assert.deepEqual([after.checkpoints, after.unsignedTail], [2, 0]);
    await f.close();
  });

  test("an edited field is named: that seq, edited", async () => {
    const f = await fixture(20, { checkpoint: true });
    f.sql.prepare("UPDATE audit_log SET principal = 'user:mallory' WHERE seq = 7").run();
    const report = await f.audit.verify();
    assert.equal(report.ok, false);
    assert.deepEqual(problemsOf(report), [[7, "edited"]]);
    await f.close();
  });

  test("an edited details JSON (even into invalid JSON) is named edited", async () => {
    const f = await fixture(10);
    f.sql.prepare("UPDATE audit_log SET details = '{\"i\":' WHERE seq = 4").run();
    assert.deepEqual(problemsOf(await f.audit.verify()), [[4, "edited"]]);
    await f.close();
  });

  test("a deleted row is named: the missing seq, deleted", async () => {
    const f = await fixture(20, { checkpoint: true });
    f.sql.prepare("DELETE FROM audit_log WHERE seq = 12").run();
    const report = await f.audit.verify();
    assert.equal(report.records, 19);
    assert.deepEqual(problemsOf(report), [[12, "deleted"]]);
    await f.close();
  });

  test("a run of deleted rows is one problem, at the first missing seq", async () => {
    const f = await fixture(20, { checkpoint: true });
    f.sql.prepare("DELETE FROM audit_log WHERE seq BETWEEN 12 AND 15").run();
    const report = await f.audit.verify();
    assert.deepEqual(problemsOf(report), [[12, "deleted"]]);
    assert.equal(report.problems[0]?.message, "records 12..15 are missing");
    await f.close();
  });

  test("two rows with swapped contents are named: both seqs, reordered", async () => {
    const f = await fixture(20, { checkpoint: true });
    const fields = "time, request_id, principal, source, action, resource, outcome, error_code, details";
    const read = f.sql.prepare(`SELECT ${fields} FROM audit_log WHERE seq = ?`);
    const write = f.sql.prepare(
      `UPDATE audit_log SET (${fields}) = (:time, :request_id, :principal, :source, :action, :resource, :outcome, :error_code, :details) WHERE seq = :seq`,
    );
    const a = read.get(5) as Record<string, unknown>;
    const b = read.get(9) as Record<string, unknown>;
    write.run({ ...b, seq: 5 });
    write.run({ ...a, seq: 9 });
    assert.deepEqual(problemsOf(await f.audit.verify()), [
      [5, "reordered"],
      [9, "reordered"],
    ]);
    await f.close();
  });

  test("two whole rows swapped (hashes and links too) are named reordered", async () => {
    const f = await fixture(20, { checkpoint: true });
    // Move row 15 out of the way, then swap the two rows' seqs.
    f.sql.exec("UPDATE audit_log SET seq = -1 WHERE seq = 15; UPDATE audit_log SET seq = 15 WHERE seq = 14;");
    f.sql.exec("UPDATE audit_log SET seq = 14 WHERE seq = -1;");
    assert.deepEqual(problemsOf(await f.audit.verify()), [
      [14, "reordered"],
      [15, "reordered"],
    ]);
    await f.close();
  });

  test("a row inserted with later rows renumbered is named inserted; a row below seq 1 too", async () => {
    const f = await fixture(10);
    f.sql.exec("UPDATE audit_log SET seq = -seq WHERE seq >= 6; UPDATE audit_log SET seq = 1 - seq WHERE seq < 0;");
    const forged = { ...entry(99), seq: 6, prevHash: "0".repeat(64) };
    f.sql
      .prepare(
        `INSERT INTO audit_log (seq, time, request_id, principal, source, action, resource, outcome, error_code, details, prev_hash, hash)
         VALUES (6, ?, ?, ?, ?, ?, ?, ?, ?, '{}', ?, ?)`,
      )
      .run(
        forged.time,
        forged.requestId,
        forged.principal,
        forged.source,
        forged.action,
        forged.resource,
        forged.outcome,
        forged.errorCode,
        forged.prevHash,
        auditRecordHash(6, forged.prevHash, forged, "{}"),
      );
    f.sql
      .prepare(
        `INSERT INTO audit_log (seq, time, request_id, principal, source, action, resource, outcome, error_code, details, prev_hash, hash)
         VALUES (0, 't', 'r', 'p', 's', 'a', 'x', 'success', NULL, '{}', 'h', 'h')`,
      )
      .run();
    assert.deepEqual(problemsOf(await f.audit.verify()), [
      [0, "inserted"],
      [6, "inserted"],
    ]);
    await f.close();
  });

  test("a row rewritten with a recomputed hash is a broken link at the next record", async () => {
    const f = await fixture(10);
    const row = (await f.store.readAuditRange(4, 4))[0]!;
    const forged = { ...row, principal: "user:mallory" };
    f.sql
      .prepare("UPDATE audit_log SET principal = ?, hash = ? WHERE seq = 4")
      .run(forged.principal, auditRecordHash(4, row.prevHash, forged, row.detailsJson));
    assert.deepEqual(problemsOf(await f.audit.verify()), [[5, "broken_link"]]);
    await f.close();
  });

  test("a chain rewritten from some record on (all hashes recomputed) contradicts the checkpoint", async () => {
    const f = await fixture(12, { checkpoint: true });
    const rows = await f.store.readAuditRange(1, 12);
    const update = f.sql.prepare("UPDATE audit_log SET principal = ?, prev_hash = ?, hash = ? WHERE seq = ?");
    let prevHash = rows[4]!.hash;
    for (const r of rows.slice(5)) {
      const principal = r.seq === 6 ? "user:mallory" : r.principal;
      const hash = auditRecordHash(r.seq, prevHash, { ...r, principal }, r.detailsJson);
      update.run(principal, prevHash, hash, r.seq);
      prevHash = hash;
    }
    assert.deepEqual(problemsOf(await f.audit.verify()), [[12, "checkpoint_mismatch"]]);
    await f.close();
  });

  test("a log truncated below a signed checkpoint is named truncated", async () => {
    const f = await fixture(15, { checkpoint: true });
    f.sql.prepare("DELETE FROM audit_log WHERE seq > 12").run();
    assert.deepEqual(problemsOf(await f.audit.verify()), [[13, "truncated"]]);
    await f.close();
  });

  test("forged or edited checkpoints are checkpoint_invalid", async () => {
    const f = await fixture(8, { checkpoint: true });
    // Edited: the signed hash no longer matches what the signature covers.
    f.sql.prepare("UPDATE audit_checkpoints SET time = '2020-01-01T00:00:00.000Z' WHERE seq = 8").run();
    assert.deepEqual(problemsOf(await f.audit.verify()), [[8, "checkpoint_invalid"]]);

    // Forged with another HSM key the attacker may be able to sign with (a KMS signing key).
    const other = await keystore.generateKeyPair("ecdsa-p256", "custos-kms-some-signer");
    await f.audit.record(entry(9));
    const head = await f.store.auditHead();
    const time = new Date().toISOString();
    const sig = await keystore.sign(other.ref, "ecdsa-p256-sha256", auditCheckpointMessage(head.seq, head.hash, time));
    await f.store.addAuditCheckpoint({
      seq: head.seq,
      hash: head.hash,
      time,
      keyLabel: other.ref.label,
      keyId: other.ref.id,
      scheme: "ecdsa-p256-sha256",
      signature: sig.toString("base64"),
    });
    const report = await f.audit.verify();
    assert.equal(report.checkpoints, 2);
    assert.deepEqual(problemsOf(report), [
      [8, "checkpoint_invalid"],
      [9, "checkpoint_invalid"],
    ]);
    await keystore.destroyKeyPair(other.ref);
    await f.close();
  });
});
