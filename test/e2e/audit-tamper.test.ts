import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { auditRecordHash } from "../../src/store/index.js";
import { type CustosInstance, startCustos } from "../helpers/custos.js";

type Row = Record<string, unknown>;
const COLUMNS = [
  "time",
  "request_id",
  "principal",
  "source",
  "action",
  "resource",
  "outcome",
  "error_code",
  "details",
  "prev_hash",
  "hash",
];

/** Tampering with one audit row directly in SQLite is named by `custos audit verify`. */
describe("audit verify names a tampered record", () => {
  let custos: CustosInstance;
  before(async () => {
    custos = await startCustos();
    for (let i = 0; i < 12; i++) {
      const r = await custos.call("POST", "/v1/keys", { name: `k${i}`, purpose: "encrypt" });
      assert.equal(r.status, 201, r.text);
    }
  });
  after(async () => {
    await custos?.dispose();
  });

  /** Stops the server, changes the database, restarts and runs the CLI's verify; then undoes the change. */
  async function tampered(change: (db: Database.Database) => () => void) {
    await custos.stop();
    const db = new Database(join(custos.dir, "custos.db"));
    const undo = change(db);
    db.close();
    await custos.start();
    const verdict = custos.cli(["audit", "verify"]);
    await custos.stop();
    undo();
    await custos.start();
    return verdict;
  }

  const row = (db: Database.Database, seq: number) =>
    db.prepare("SELECT * FROM audit_log WHERE seq = ?").get(seq) as Row;
  const put = (db: Database.Database, seq: number, r: Row) =>
    db
      .prepare(`UPDATE audit_log SET ${COLUMNS.map((c) => `${c} = @${c}`).join(", ")} WHERE seq = @seq`)
      .run({ ...r, seq });

  test("an intact log verifies", () => {
    const ok = custos.cli(["audit", "verify"]);
    assert.equal(ok.status, 0, ok.stdout + ok.stderr);
  });

  test("an edited record is named", async () => {
    const path = join(custos.dir, "custos.db");
    const r = await tampered((db) => {
      const original = row(db, 5);
      db.prepare("UPDATE audit_log SET principal = 'user:mallory' WHERE seq = 5").run();
      return () => {
        const d = new Database(path);
        put(d, 5, original);
        d.close();
      };
    });
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.match(r.stdout + r.stderr, /\b5\b[^\n]*edited|edited[^\n]*\b5\b/);
  });

  test("a deleted record is named", async () => {
    const path = join(custos.dir, "custos.db");
    const r = await tampered((db) => {
      const original = row(db, 6);
      db.prepare("DELETE FROM audit_log WHERE seq = 6").run();
      return () => {
        const d = new Database(path);
        d.prepare(
          `INSERT INTO audit_log (seq, ${COLUMNS.join(", ")}) VALUES (@seq, ${COLUMNS.map((c) => `@${c}`).join(", ")})`,
        ).run(original);
        d.close();
      };
    });
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.match(r.stdout + r.stderr, /\b6\b[^\n]*deleted|deleted[^\n]*\b6\b/);
  });

  test("two reordered records are named", async () => {
    const path = join(custos.dir, "custos.db");
    const r = await tampered((db) => {
      const a = row(db, 8);
      const b = row(db, 9);
      put(db, 8, b);
      put(db, 9, a);
      return () => {
        const d = new Database(path);
        put(d, 8, a);
        put(d, 9, b);
        d.close();
      };
    });
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.match(r.stdout + r.stderr, /reordered/);
    assert.match(r.stdout + r.stderr, /\b8\b/);
    assert.match(r.stdout + r.stderr, /\b9\b/);
  });

  test("a record rewritten with its hash recomputed by the public rule is named edited (the chain is keyed)", async () => {
    const path = join(custos.dir, "custos.db");
    const r = await tampered((db) => {
      const original = row(db, 7);
      const forged = {
        time: String(original.time),
        requestId: String(original.request_id),
        principal: "user:mallory",
        source: String(original.source),
        action: String(original.action),
        resource: String(original.resource),
        outcome: original.outcome as "success",
        errorCode: original.error_code === null ? null : String(original.error_code),
      };
      // Anyone who reads the source can compute this; only the HSM-derived chain key makes it wrong.
      const hash = auditRecordHash(7, String(original.prev_hash), forged, String(original.details));
      db.prepare("UPDATE audit_log SET principal = ?, hash = ? WHERE seq = 7").run(forged.principal, hash);
      return () => {
        const d = new Database(path);
        put(d, 7, original);
        d.close();
      };
    });
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.match(r.stdout, /^record 7: edited: /m);
  });

  test("the log cut back with every checkpoint deleted is named truncated (the HSM keeps the newest checkpoint)", async () => {
    const path = join(custos.dir, "custos.db");
    const r = await tampered((db) => {
      const rows = db.prepare("SELECT * FROM audit_log WHERE seq > 10 ORDER BY seq").all() as Row[];
      const checkpoints = db.prepare("SELECT * FROM audit_checkpoints").all() as Row[];
      assert.ok(rows.length > 0 && checkpoints.length > 0, "records after 10 and checkpoints to cut");
      db.exec("DELETE FROM audit_log WHERE seq > 10; DELETE FROM audit_checkpoints;");
      return () => {
        // The server wrote on after the cut: its records and checkpoints go, the originals come back.
        const d = new Database(path);
        d.exec("DELETE FROM audit_log WHERE seq > 10; DELETE FROM audit_checkpoints;");
        const insert = (table: string, r: Row) => {
          const columns = Object.keys(r);
          d.prepare(
            `INSERT INTO ${table} (${columns.join(", ")}) VALUES (${columns.map((c) => `@${c}`).join(", ")})`,
          ).run(r);
        };
        for (const r of rows) insert("audit_log", r);
        for (const c of checkpoints) insert("audit_checkpoints", c);
        d.close();
      };
    });
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.match(r.stdout, /truncated/);
  });

  test("after undoing every change the log verifies again", () => {
    const ok = custos.cli(["audit", "verify"]);
    assert.equal(ok.status, 0, ok.stdout + ok.stderr);
  });
});
