import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { anchorLabel, readAnchor } from "../../src/audit/anchor.js";
import { AuditLog, auditEntry, systemActor } from "../../src/audit/index.js";
import { RESTORE_ACTION } from "../../src/audit/restore.js";
import type { HsmKeyRef } from "../../src/hsm/index.js";
import { Pkcs11Keystore } from "../../src/hsm/pkcs11/index.js";
import type { Logger } from "../../src/log/index.js";
import { Secret } from "../../src/secret/index.js";
import { type AuditCheckpoint, type AuditEntry, canonicalJson, SqliteStore } from "../../src/store/index.js";
import { forgeAfter } from "../helpers/audit.js";
import { createTestToken, type TestToken } from "../helpers/softhsm.js";

/**
 * A restore recorded in the audit log (`AuditLog.recordRestore`): a backup put back
 * cuts the log short of the checkpoint anchored in the HSM, and only a genuine
 * restore record (keyed hash, naming that anchor, with a signed checkpoint at its
 * seq) may excuse the cut, in `verify` and when the server moves the anchor. The
 * restore is simulated on the file (rows past the backup deleted, as a copy taken
 * then would lack them); the attacker is a second connection to the file that can
 * compute only the public, unkeyed hash. Oracles: the file, the HSM anchor, the logs.
 */

let token: TestToken;
/** The test's own session to its own token. */
let keystore: Pkcs11Keystore;
let keys: { hmacKey: HsmKeyRef; checkpointKey: HsmKeyRef };
const scratch = mkdtempSync(join(tmpdir(), "custos-audit-restore-"));
let dbCount = 0;
const opened: Journal[] = [];

before(async () => {
  token = createTestToken("custos-restore");
  keystore = await Pkcs11Keystore.open({
    modulePath: token.modulePath,
    tokenLabel: token.label,
    pin: Secret.fromString(token.pin),
  });
  keys = await AuditLog.provisionKeys(keystore);
});

after(async () => {
  for (const j of opened) await j.close();
  await keystore?.close();
  token?.remove();
  rmSync(scratch, { recursive: true, force: true });
});

/** What `custos restore` would pass: a backup whose newest record is 6, replacing a database that reached 10. */
const FACTS = {
  backup: { sha256: "ab".repeat(32), newestSeq: 6 },
  replaced: { file: "custos.db.replaced-20261125T000000Z", newestSeq: 10 },
} as const;

/**
 * `tag` differs per store: the anchor is named after the first record's hash, so two
 * stores with equal first records (same millisecond) would share one anchor.
 */
function entry(i: number, tag: string): AuditEntry {
  return auditEntry(systemActor(`req-${i}`), "test.action", `item/${i}`, { i, tag });
}

const named = (r: { problems: Array<{ seq: number; kind: string }> }) => r.problems.map((p) => [p.seq, p.kind]);

interface Journal {
  store: SqliteStore;
  audit: AuditLog;
  /** A second connection to the file, as an attacker would have. */
  sql: Database.Database;
  close(): Promise<void>;
}

interface Collected {
  logger: Logger;
  warnings: string[];
  infos: string[];
}

function collecting(): Collected {
  const warnings: string[] = [];
  const infos: string[] = [];
  const logger = {
    warn: (_o: unknown, m?: string) => warnings.push(String(m)),
    info: (_o: unknown, m?: string) => infos.push(String(m)),
    error: () => {},
    debug: () => {},
  } as unknown as Logger;
  return { logger, warnings, infos };
}

/** The store at `path` opened as a server (or `custos restore`) opens it: its chain keyed from the HSM. */
async function open(path: string, logger?: Logger): Promise<Journal> {
  const store = await SqliteStore.open(path);
  const audit = await AuditLog.open({ store, keystore, ...keys, logger });
  const sql = new Database(path);
  let closed = false;
  const j: Journal = {
    store,
    audit,
    sql,
    async close() {
      if (closed) return;
      closed = true;
      sql.close();
      await store.close();
    },
  };
  opened.push(j);
  return j;
}

/** The store's anchor in the HSM, read directly; undefined when it has none. */
async function anchorOf(j: Journal): Promise<AuditCheckpoint | undefined> {
  const label = await anchorLabel(j.store);
  assert.ok(label);
  const anchor = await readAnchor(keystore, label);
  assert.ok(anchor === undefined || "checkpoint" in anchor, "the anchor is readable");
  return anchor?.checkpoint;
}

/**
 * A server's store, stopped cleanly: records 1..10, checkpointed at 6 (what the
 * backup will hold) and at 10 (the anchor). Returns the file, its tag and the anchor.
 */
async function served(): Promise<{ path: string; tag: string; anchor: AuditCheckpoint }> {
  const path = join(scratch, `journal-${++dbCount}.db`);
  const tag = randomBytes(8).toString("hex");
  const j = await open(path);
  for (let i = 1; i <= 6; i++) await j.audit.record(entry(i, tag));
  assert.equal((await j.audit.checkpoint())?.seq, 6);
  for (let i = 7; i <= 10; i++) await j.audit.record(entry(i, tag));
  await j.audit.stop();
  const anchor = await anchorOf(j);
  assert.equal(anchor?.seq, 10);
  await j.close();
  return { path, tag, anchor: anchor as AuditCheckpoint };
}

/** Cuts the (closed) file back to `seq`, records and checkpoints, as putting back a copy taken then would. */
function cut(path: string, seq: number): void {
  const sql = new Database(path);
  sql.prepare("DELETE FROM audit_log WHERE seq > ?").run(seq);
  sql.prepare("DELETE FROM audit_checkpoints WHERE seq > ?").run(seq);
  sql.close();
}

/** A stopped server's store restored from the backup at 6, with the restore recorded as `custos restore` does. */
async function restored(logger?: Logger) {
  const { path, tag, anchor } = await served();
  cut(path, 6);
  const j = await open(path, logger);
  const result = await j.audit.recordRestore(systemActor("restore"), FACTS);
  return { j, tag, anchor, result };
}

/** The row as the file holds it. */
function row(j: Journal, seq: number) {
  return j.sql.prepare("SELECT seq, action, resource, details, hash FROM audit_log WHERE seq = ?").get(seq) as
    | { seq: number; action: string; resource: string; details: string; hash: string }
    | undefined;
}

function checkpointRow(j: Journal, seq: number) {
  return j.sql.prepare("SELECT seq, hash FROM audit_checkpoints WHERE seq = ?").get(seq) as
    | { seq: number; hash: string }
    | undefined;
}

/** The restore summary `verify` should give for the record `restored` writes. */
function summaryOf(j: Journal, seq: number, supersededSeq: number | null) {
  const r = j.sql.prepare("SELECT time FROM audit_log WHERE seq = ?").get(seq) as { time: string };
  return {
    seq,
    time: r.time,
    backupSeq: 6,
    supersededSeq,
    replacedFile: FACTS.replaced.file,
    replacedNewestSeq: 10,
  };
}

describe("a restore recorded in the audit log", () => {
  test("a genuine restore record excuses the cut: verify is ok, lists the restore, and the anchor stays put", async () => {
    const { j, anchor, result } = await restored();
    const superseded = { seq: 10, hash: anchor.hash, time: anchor.time };
    assert.deepEqual(result, { seq: 7, details: { ...FACTS, supersededAnchor: superseded } });

    const record = row(j, 7);
    assert.ok(record);
    assert.deepEqual([record.action, record.resource], [RESTORE_ACTION, "store"]);
    assert.deepEqual(JSON.parse(record.details), { ...FACTS, supersededAnchor: superseded });
    assert.deepEqual(checkpointRow(j, 7), { seq: 7, hash: record.hash });
    // recordRestore runs on a copy that may never be installed: it must not move the anchor.
    assert.deepEqual(await anchorOf(j), anchor);

    const report = await j.audit.verify();
    assert.deepEqual(named(report), []);
    assert.deepEqual([report.ok, report.records, report.checkpoints, report.unsignedTail], [true, 7, 2, 0]);
    assert.deepEqual(report.restores, [summaryOf(j, 7, 10)]);
  });

  test("control: the same cut without a restore record is named truncated", async () => {
    const { path } = await served();
    cut(path, 6);
    const j = await open(path);
    const report = await j.audit.verify();
    assert.deepEqual(named(report), [[7, "truncated"]]);
    assert.deepEqual(report.restores, []);
  });

  test("after a genuine restore the server moves the anchor on, and a later cut is named again", async () => {
    const logs = collecting();
    const { j, tag, anchor } = await restored(logs.logger);
    for (let i = 8; i <= 14; i++) await j.audit.record(entry(100 + i, tag));
    // Record 10 is another record now; the anchor at 10 is excused by the restore record, not matched.
    assert.notEqual(row(j, 10)?.hash, anchor.hash);
    assert.deepEqual(named(await j.audit.verify()), []);

    const checkpoint = await j.audit.checkpoint();
    assert.equal(checkpoint?.seq, 14);
    assert.deepEqual(await anchorOf(j), checkpoint);
    assert.deepEqual(logs.warnings, []);
    assert.ok(
      logs.infos.some((m) => m.includes("anchor moved past the restore")),
      JSON.stringify(logs.infos),
    );
    const report = await j.audit.verify();
    assert.deepEqual(named(report), []);
    assert.deepEqual(report.restores, [summaryOf(j, 7, 10)]);

    // The restore record names anchor 10, not 14: it excuses nothing now.
    j.sql.exec("DELETE FROM audit_log WHERE seq > 8; DELETE FROM audit_checkpoints WHERE seq > 8;");
    assert.deepEqual(named(await j.audit.verify()), [[9, "truncated"]]);
  });

  test("a forged restore record (public hash, naming the real anchor) excuses nothing, even once the server signed it", async () => {
    const logs = collecting();
    const { path, tag, anchor } = await served();
    cut(path, 6);
    // The attacker appends the record custos restore would write, hashed by the public rule.
    const sql = new Database(path);
    const head = sql.prepare("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").get() as {
      seq: number;
      hash: string;
    };
    const forged = auditEntry(systemActor("restore"), RESTORE_ACTION, "store", {
      ...FACTS,
      supersededAnchor: { seq: anchor.seq, hash: anchor.hash, time: anchor.time },
    });
    const forgedHash = forgeAfter(sql, head, forged);
    sql.close();

    // The server starts on the file and signs its head, the forged record: so only the keyed hash can give it away.
    const j = await open(path, logs.logger);
    const signed = await j.audit.checkpoint();
    assert.deepEqual([signed?.seq, signed?.hash], [7, forgedHash]);
    assert.deepEqual(await anchorOf(j), anchor);
    assert.equal(logs.warnings.filter((w) => w.includes("anchored in the HSM")).length, 1, JSON.stringify(logs));
    const report = await j.audit.verify();
    assert.deepEqual(named(report), [
      [7, "edited"],
      [8, "truncated"],
    ]);
    assert.deepEqual(report.restores, []);

    for (let i = 8; i <= 12; i++) await j.audit.record(entry(100 + i, tag));
    assert.equal((await j.audit.checkpoint())?.seq, 12);
    assert.deepEqual(await anchorOf(j), anchor);
    assert.equal(logs.warnings.filter((w) => w.includes("anchored in the HSM")).length, 2, JSON.stringify(logs));
    assert.deepEqual(logs.infos, []);
    assert.deepEqual(named(await j.audit.verify()), [
      [7, "edited"],
      [10, "checkpoint_mismatch"],
    ]);
  });

  test("a genuine restore record whose checkpoint was deleted supersedes nothing", async () => {
    const logs = collecting();
    const { j, tag, anchor } = await restored(logs.logger);
    j.sql.prepare("DELETE FROM audit_checkpoints WHERE seq = 7").run();
    const report = await j.audit.verify();
    assert.deepEqual(named(report), [[8, "truncated"]]);
    // Its hash still holds: it is listed, it just vouches for nothing.
    assert.deepEqual(report.restores, [summaryOf(j, 7, 10)]);

    // Nor does the server take it as leave to move the anchor.
    for (let i = 8; i <= 12; i++) await j.audit.record(entry(100 + i, tag));
    assert.equal((await j.audit.checkpoint())?.seq, 12);
    assert.deepEqual(await anchorOf(j), anchor);
    assert.ok(
      logs.warnings.some((w) => w.includes("anchored in the HSM")),
      JSON.stringify(logs.warnings),
    );
    assert.deepEqual(named(await j.audit.verify()), [[10, "checkpoint_mismatch"]]);
  });

  test("a genuine restore record with its details edited is named edited and supersedes nothing", async () => {
    const { j, result } = await restored();
    const edited = { ...result.details, backup: { ...result.details.backup, newestSeq: 5 } };
    j.sql.prepare("UPDATE audit_log SET details = ? WHERE seq = 7").run(canonicalJson(edited));
    // Its checkpoint is untouched and still matches the stored hash: only the keyed hash fails.
    assert.deepEqual(checkpointRow(j, 7)?.hash, row(j, 7)?.hash);
    const report = await j.audit.verify();
    assert.deepEqual(named(report), [
      [7, "edited"],
      [8, "truncated"],
    ]);
    assert.deepEqual(report.restores, []);
  });

  test("a genuine restore record naming an older anchor than the HSM holds excuses no cut past the newer one", async () => {
    const { j, tag } = await restored();
    for (let i = 8; i <= 14; i++) await j.audit.record(entry(100 + i, tag));
    assert.equal((await j.audit.checkpoint())?.seq, 14);
    assert.equal((await anchorOf(j))?.seq, 14);
    // Back to the restore record and its checkpoint: it names anchor 10, the HSM holds 14.
    j.sql.exec("DELETE FROM audit_log WHERE seq > 7; DELETE FROM audit_checkpoints WHERE seq > 7;");
    assert.ok(checkpointRow(j, 7));
    const report = await j.audit.verify();
    assert.deepEqual(named(report), [[8, "truncated"]]);
    assert.deepEqual(report.restores, [summaryOf(j, 7, 10)]);
  });

  test("a restore of a store the HSM holds no anchor for supersedes none, and verifies", async () => {
    const path = join(scratch, `journal-${++dbCount}.db`);
    const tag = randomBytes(8).toString("hex");
    const j = await open(path);
    for (let i = 1; i <= 6; i++) await j.audit.record(entry(i, tag));
    assert.equal(await anchorOf(j), undefined);
    const result = await j.audit.recordRestore(systemActor("restore"), { backup: FACTS.backup, replaced: null });
    assert.deepEqual(result, { seq: 7, details: { backup: FACTS.backup, replaced: null, supersededAnchor: null } });
    assert.equal(await anchorOf(j), undefined);
    const report = await j.audit.verify();
    assert.deepEqual(named(report), []);
    assert.deepEqual(report.restores, [{ ...summaryOf(j, 7, null), replacedFile: null, replacedNewestSeq: null }]);
    // The first checkpoint after it anchors as usual.
    await j.audit.record(entry(8, tag));
    const checkpoint = await j.audit.checkpoint();
    assert.equal(checkpoint?.seq, 8);
    assert.deepEqual(await anchorOf(j), checkpoint);
  });
});
