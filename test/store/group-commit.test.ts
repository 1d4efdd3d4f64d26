import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import Database from "better-sqlite3";
import { type CustosError, isCustosError } from "../../src/errors/index.js";
import { SqliteStore } from "../../src/store/index.js";
import { assertChainIntact, entry, tempDir, userRecord } from "./helpers.js";

const tmp = tempDir();
after(() => tmp.remove());

type Settled<T> = { ok: true; value: T } | { ok: false; error: CustosError };

async function settle<T>(promises: Promise<T>[]): Promise<Settled<T>[]> {
  return Promise.all(
    promises.map((p) =>
      p.then(
        (value): Settled<T> => ({ ok: true, value }),
        (error: unknown): Settled<T> => {
          assert.ok(isCustosError(error), `expected CustosError, got ${String(error)}`);
          return { ok: false, error };
        },
      ),
    ),
  );
}

describe("group commit", () => {
  test("a conflicting write in a batch rejects alone; the others commit with gap-free seqs", async () => {
    const store = await SqliteStore.open(tmp.path("batch.db"));
    const taken = userRecord("taken");
    await store.createUser(taken, entry("user.create"));
    const a = userRecord("a");
    const b = userRecord("b");
    // All fired in the same tick, so they share one transaction.
    const results = await settle<unknown>([
      store.appendAudit(entry("one")),
      store.createUser(a, entry("user.create")),
      store.createUser(userRecord("taken"), entry("user.create")),
      store.updateUser({ ...taken, revision: 2 }, 7, entry("user.update")),
      store.createUser(b, entry("user.create")),
      store.appendAudit(entry("two")),
    ]);
    assert.deepEqual(
      results.map((r) => (r.ok ? "ok" : r.error.code)),
      ["ok", "ok", "conflict", "conflict", "ok", "ok"],
    );
    assert.deepEqual(await store.getUser(a.id), a);
    assert.deepEqual(await store.getUser(b.id), b);
    assert.equal((await store.getUser(taken.id))?.revision, 1);
    const first = results[0];
    const last = results[5];
    assert.ok(first?.ok && last?.ok);
    assert.equal((first.value as { seq: number }).seq, 2);
    assert.equal((last.value as { seq: number }).seq, 5, "the failed writes took no seq");
    assert.equal(await assertChainIntact(store), 5);
    await store.close();
  });

  test("an operation failing after its change is written rolls back the change and its audit record only", async () => {
    const path = tmp.path("trigger.db");
    const store = await SqliteStore.open(path);
    const side = new Database(path);
    side.exec(`CREATE TRIGGER refuse BEFORE INSERT ON audit_log WHEN NEW.action = 'refuse.me'
               BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END`);
    const doomed = userRecord("doomed");
    const kept = userRecord("kept");
    const results = await settle<unknown>([
      store.appendAudit(entry("before")),
      store.createUser(doomed, entry("refuse.me")),
      store.createUser(kept, entry("user.create")),
    ]);
    assert.deepEqual(
      results.map((r) => r.ok),
      [true, false, true],
    );
    assert.equal(await store.getUser(doomed.id), undefined, "the user insert was rolled back with its audit record");
    assert.deepEqual(await store.getUser(kept.id), kept);
    assert.equal(await assertChainIntact(store), 2);
    side.close();
    await store.close();
  });

  test("a failed COMMIT rejects the whole batch with store_unavailable and the head is reloaded", async () => {
    const path = tmp.path("commit-fail.db");
    const store = await SqliteStore.open(path);
    const before = await store.appendAudit(entry("before"));
    // A deferred foreign-key violation is checked at COMMIT, so COMMIT itself fails.
    const side = new Database(path);
    side.exec(`
      CREATE TABLE inject_parent (id INTEGER PRIMARY KEY);
      CREATE TABLE inject_child (ref INTEGER REFERENCES inject_parent (id) DEFERRABLE INITIALLY DEFERRED);
      CREATE TRIGGER inject AFTER INSERT ON audit_log WHEN NEW.action = 'fail.commit'
      BEGIN INSERT INTO inject_child VALUES (1); END;`);
    const lost = userRecord("lost");
    const results = await settle<unknown>([
      store.appendAudit(entry("innocent-1")),
      store.createUser(lost, entry("fail.commit")),
      store.appendAudit(entry("innocent-2")),
    ]);
    assert.deepEqual(
      results.map((r) => (r.ok ? "ok" : r.error.code)),
      ["store_unavailable", "store_unavailable", "store_unavailable"],
    );
    assert.equal(await store.getUser(lost.id), undefined);
    assert.deepEqual(await store.auditHead(), { seq: before.seq, hash: before.hash });

    side.exec("DROP TRIGGER inject");
    const next = await store.appendAudit(entry("after"));
    assert.equal(next.seq, before.seq + 1);
    assert.equal(next.prevHash, before.hash);
    assert.equal(await assertChainIntact(store), 2);
    side.close();
    await store.close();
  });

  test("a write that cannot get the database lock rejects with store_unavailable instead of hanging", async () => {
    const path = tmp.path("locked.db");
    const store = await SqliteStore.open(path, { writeTimeoutMs: 400 });
    await store.appendAudit(entry("first"));
    const side = new Database(path, { timeout: 0 });
    side.exec("BEGIN IMMEDIATE");
    const blocked = userRecord("blocked");
    const results = await settle<unknown>([
      store.appendAudit(entry("blocked-1")),
      store.createUser(blocked, entry("user.create")),
    ]);
    assert.deepEqual(
      results.map((r) => (r.ok ? "ok" : r.error.code)),
      ["store_unavailable", "store_unavailable"],
    );
    side.exec("ROLLBACK");
    side.close();
    assert.equal(await store.getUser(blocked.id), undefined, "an expired write was never applied");
    const next = await store.appendAudit(entry("after"));
    assert.equal(next.seq, 2);
    assert.equal(await assertChainIntact(store), 2);
    await store.close();
  });

  test("a write waiting for another connection's lock leaves the event loop turning", async () => {
    const path = tmp.path("turning.db");
    const store = await SqliteStore.open(path, { writeTimeoutMs: 5_000 });
    const side = new Database(path, { timeout: 0 });
    side.exec("BEGIN IMMEDIATE");
    const waiting = store.appendAudit(entry("waiting"));
    // Over 500 ms a 5 ms timer fires about 100 times (fewer on a busy machine). A BEGIN that sleeps in SQLite's
    // busy handler (250 ms a try) holds the loop nearly all that time, and it fires only a handful.
    let turns = 0;
    const ticker = setInterval(() => turns++, 5);
    await new Promise((resolve) => setTimeout(resolve, 500));
    clearInterval(ticker);
    side.exec("COMMIT");
    side.close();
    assert.equal((await waiting).seq, 1, "the write committed once the lock was free");
    assert.ok(turns >= 10, `the loop turned only ${turns} times while the write waited`);
    await store.close();
  });

  test("many concurrent appends get distinct, consecutive seqs in submission order", async () => {
    const store = await SqliteStore.open(tmp.path("many.db"));
    const records = await Promise.all(Array.from({ length: 500 }, (_, i) => store.appendAudit(entry(`burst.${i}`))));
    assert.deepEqual(
      records.map((r) => r.seq),
      Array.from({ length: 500 }, (_, i) => i + 1),
    );
    assert.deepEqual(
      records.map((r) => r.action),
      Array.from({ length: 500 }, (_, i) => `burst.${i}`),
    );
    assert.equal(await assertChainIntact(store), 500);
    await store.close();
  });
});
