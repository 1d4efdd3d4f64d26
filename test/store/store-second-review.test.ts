import assert from "node:assert/strict";
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import Database from "better-sqlite3";
import { isCustosError } from "../../src/errors/index.js";
import { SqliteStore } from "../../src/store/index.js";
import { migrate } from "../../src/store/sqlite/connection.js";
import { migrations } from "../../src/store/sqlite/migrations/index.js";
import { assertChainIntact, entry, tempDir, userRecord } from "./helpers.js";

const tmp = tempDir();
after(() => tmp.remove());

/** What child scripts (written into the temp directory) import: this checkout's store and better-sqlite3. */
const STORE_URL = new URL("../../src/store/index.js", import.meta.url).href;
const SQLITE_URL = import.meta.resolve("better-sqlite3");

async function rejectsWith(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (e: unknown) => {
    assert.ok(isCustosError(e), `expected CustosError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return true;
  });
}

/** SQLite's own verdict on the file, read-only and outside the store. */
function assertFileSound(path: string): void {
  const db = new Database(path, { readonly: true });
  try {
    assert.deepEqual(db.pragma("integrity_check"), [{ integrity_check: "ok" }]);
    assert.deepEqual(db.pragma("foreign_key_check"), [], "no dangling references");
  } finally {
    db.close();
  }
}

/**
 * Writes a child script into the temp directory and starts it with tsx; with `fileSizeLimit`
 * (in `ulimit -f` blocks) under a shell that sets that limit first.
 */
function child(name: string, source: string, args: string[], fileSizeLimit?: number): ChildProcessWithoutNullStreams {
  const script = join(tmp.dir, `${name}.mts`);
  writeFileSync(script, source);
  const node = [process.execPath, "--import", "tsx", script, ...args];
  const stdio: ["pipe", "pipe", "pipe"] = ["pipe", "pipe", "pipe"];
  if (fileSizeLimit === undefined) return spawn(node[0] ?? "", node.slice(1), { stdio });
  return spawn("sh", ["-c", `ulimit -f ${fileSizeLimit} && exec "$0" "$@"`, ...node], { stdio });
}

/** Calls `onLine` for each stdout line; resolves with the exit signal and code. */
function lines(
  proc: ChildProcessWithoutNullStreams,
  onLine: (line: string) => void,
): Promise<{ signal: NodeJS.Signals | null; code: number | null; stderr: string }> {
  let buffered = "";
  let stderr = "";
  proc.stdout.setEncoding("utf8");
  proc.stderr.setEncoding("utf8");
  proc.stderr.on("data", (chunk: string) => {
    stderr += chunk;
  });
  proc.stdout.on("data", (chunk: string) => {
    buffered += chunk;
    const parts = buffered.split("\n");
    buffered = parts.pop() ?? "";
    for (const line of parts) onLine(line);
  });
  return new Promise((resolve) => proc.on("exit", (code, signal) => resolve({ signal, code, stderr })));
}

describe("opening", () => {
  test("a path the store cannot create (missing directory, a directory) fails with store_unavailable", async () => {
    await rejectsWith(SqliteStore.open(join(tmp.dir, "no-such-dir", "custos.db")), "store_unavailable");
    const dir = tmp.path("a-directory");
    mkdirSync(dir);
    await rejectsWith(SqliteStore.open(dir), "store_unavailable");
  });

  test("a file that is not a SQLite database is refused with store_unavailable and left as it was", async () => {
    const path = tmp.path("not-a-db.db");
    const bytes = Buffer.concat([Buffer.from("this is not a database\n"), randomBytes(8192)]);
    writeFileSync(path, bytes);
    await rejectsWith(SqliteStore.open(path), "store_unavailable");
    assert.deepEqual(readFileSync(path), bytes);
  });

  test("database, WAL and SHM files left world-readable by an earlier run are made 0600 at open", async () => {
    const path = tmp.path("wide.db");
    await (await SqliteStore.open(path)).close();
    // Another connection keeps the -wal and -shm files in place while their modes are widened.
    const side = new Database(path);
    side.prepare("INSERT INTO settings (name, value) VALUES ('left', 'over')").run();
    for (const file of [path, `${path}-wal`, `${path}-shm`]) chmodSync(file, 0o644);
    const store = await SqliteStore.open(path);
    for (const file of [path, `${path}-wal`, `${path}-shm`]) {
      assert.equal(statSync(file).mode & 0o777, 0o600, file);
    }
    assert.equal(await store.getSetting("left"), "over");
    await store.close();
    side.close();
  });

  test("two processes opening a new database at the same moment both succeed (migrations are not applied twice)", async () => {
    const opener = `
        const { SqliteStore } = await import(${JSON.stringify(STORE_URL)});
        process.stdout.write("ready\\n");
        process.stdin.once("data", async () => {
          try {
            await (await SqliteStore.open(process.argv[2])).close();
            process.stdout.write("ok\\n");
          } catch (e) {
            process.stdout.write("failed " + e.code + ": " + e.message + " / " + e.cause?.message + "\\n");
          }
          process.exit(0);
        });`;
    const outcomes: string[] = [];
    for (let round = 0; round < 4; round++) {
      const path = tmp.path(`race-${round}.db`);
      const procs = [0, 1, 2].map(() => child("opener", opener, [path]));
      const ready = procs.map((p) => new Promise((r) => p.stdout.once("data", r)));
      const done = procs.map((p) =>
        lines(p, (line) => {
          if (line !== "ready") outcomes.push(line);
        }),
      );
      await Promise.all(ready);
      for (const p of procs) p.stdin.write("go\n");
      await Promise.all(done);
      assertFileSound(path);
    }
    assert.deepEqual(
      outcomes.filter((o) => o !== "ok"),
      [],
    );
  });
});

describe("migrations", () => {
  const newest = Math.max(...migrations.map((m) => m.version));

  test("a database written at the first schema version is brought up to date with its rows intact", async () => {
    const path = tmp.path("v1.db");
    const old = new Database(path);
    old.pragma("journal_mode = WAL");
    migrate(
      old,
      migrations.filter((m) => m.version === 1),
    );
    const at = "2025-01-01T00:00:00.000Z";
    old.prepare("INSERT INTO users VALUES ('u1', 'old-user', NULL, '[]', 0, ?, ?, 1)").run(at, at);
    old
      .prepare("INSERT INTO tokens VALUES ('tok_old', ?, 'api', 'ci', 'u1', NULL, ?, NULL, NULL)")
      .run("cd".repeat(32), at);
    old.close();

    const store = await SqliteStore.open(path);
    assert.equal((await store.getUserByName("old-user"))?.id, "u1");
    const token = await store.getTokenByHash("cd".repeat(32));
    assert.equal(token?.id, "tok_old");
    assert.equal(token?.revokedAt, null);
    await store.revokeToken("tok_old", at, entry("token.revoke"));
    assert.equal((await store.getToken("tok_old"))?.revokedAt, at);
    await store.close();

    const db = new Database(path, { readonly: true });
    const versions = (
      db.prepare("SELECT version FROM schema_migrations ORDER BY version").all() as Array<{
        version: number;
      }>
    ).map((r) => r.version);
    db.close();
    assert.deepEqual(
      versions,
      Array.from({ length: newest }, (_, i) => i + 1),
    );
    assertFileSound(path);
  });

  test("a migration that fails part-way leaves the schema at the last whole version", async () => {
    const path = tmp.path("half-migrated.db");
    await (await SqliteStore.open(path)).close();
    const db = new Database(path);
    const broken = {
      version: newest + 1,
      name: "broken",
      sql: "CREATE TABLE half_made (a TEXT); SELECT * FROM nowhere;",
    };
    assert.throws(() => migrate(db, [...migrations, broken]));
    assert.equal(db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'half_made'").get(), undefined);
    assert.deepEqual(db.prepare("SELECT max(version) AS v FROM schema_migrations").get(), { v: newest });
    db.close();
    const store = await SqliteStore.open(path);
    await store.appendAudit(entry("after-failed-migration"));
    await store.close();
  });
});

describe("the write lock held by another process", () => {
  test("writes wait for a lock held longer than one busy timeout, then commit in order with the chain intact", async () => {
    const path = tmp.path("held.db");
    const store = await SqliteStore.open(path, { writeTimeoutMs: 10_000 });
    await store.appendAudit(entry("before"));
    const holder = child(
      "holder",
      `
      const { default: Database } = await import(${JSON.stringify(SQLITE_URL)});
      const db = new Database(process.argv[2]);
      db.exec("BEGIN IMMEDIATE");
      db.prepare("INSERT INTO settings (name, value) VALUES ('order', 'other process')").run();
      process.stdout.write("locked\\n");
      setTimeout(() => { db.exec("COMMIT"); db.close(); }, 900);`,
      [path],
    );
    const locked = new Promise((r) => holder.stdout.once("data", r));
    const exited = lines(holder, () => {});
    await locked;
    const user = userRecord("waited");
    const results = await Promise.allSettled([
      store.appendAudit(entry("while-locked-1")),
      store.createUser(user, entry("user.create")),
      store.putSetting("order", "store", entry("setting.put")),
      store.appendAudit(entry("while-locked-2")),
    ]);
    assert.deepEqual(
      results.map((r) => r.status),
      ["fulfilled", "fulfilled", "fulfilled", "fulfilled"],
    );
    const { code, stderr } = await exited;
    assert.equal(code, 0, stderr);
    assert.equal(await store.getSetting("order"), "store", "the store's write landed after the other process's");
    assert.deepEqual(await store.getUser(user.id), user);
    assert.equal(await assertChainIntact(store), 5);
    await store.close();
    assertFileSound(path);
  });

  test("close() while a batch waits for the lock settles every write and then closes", async () => {
    const path = tmp.path("close-locked.db");
    const store = await SqliteStore.open(path, { writeTimeoutMs: 10_000 });
    const side = new Database(path, { timeout: 0 });
    side.exec("BEGIN IMMEDIATE");
    const user = userRecord("closing");
    const pending = [store.createUser(user, entry("user.create")), store.appendAudit(entry("closing"))];
    const closed = store.close();
    await rejectsWith(store.appendAudit(entry("after-close")), "store_unavailable");
    setTimeout(() => side.exec("COMMIT"), 600);
    await closed;
    const results = await Promise.allSettled(pending);
    assert.deepEqual(
      results.map((r) => r.status),
      ["fulfilled", "fulfilled"],
    );
    side.close();
    const reopened = await SqliteStore.open(path);
    assert.deepEqual(await reopened.getUser(user.id), user);
    assert.equal(await assertChainIntact(reopened), 2);
    await reopened.close();
  });
});

describe("a failing operation inside a batch", () => {
  test("an op that throws after appending one of its audit records leaves no row and no trace in the chain head", async () => {
    const store = await SqliteStore.open(tmp.path("multi-audit.db"));
    const at = "2025-01-01T00:00:00.000Z";
    const instanceId = "i-1";
    // An instance is registered only for an app that exists.
    await store.platform.createOrg({ name: "acme", createdAt: at }, entry("platform.org.create"));
    await store.platform.createSpace({ org: "acme", name: "prod", createdAt: at }, entry("platform.space.create"));
    await store.platform.createApp(
      {
        id: "app-web",
        org: "acme",
        space: "prod",
        name: "web",
        keyName: "app.acme.prod.web",
        ownerUsers: [],
        ownerGroups: [],
        createdAt: at,
        updatedAt: at,
        revision: 1,
      },
      entry("platform.app.create"),
    );
    await store.broker.register(
      {
        id: instanceId,
        org: "acme",
        space: "prod",
        app: "web",
        appId: "app-web",
        state: "registered",
        leaseExpiresAt: "2025-01-01T01:00:00.000Z",
        registeredBy: "agent",
        createdAt: at,
        updatedAt: at,
        stoppedAt: null,
        stopReason: null,
        revision: 1,
      },
      {
        id: "tok-1",
        instanceId,
        hash: "ab".repeat(32),
        createdAt: at,
        expiresAt: "2025-01-01T00:10:00.000Z",
        state: "unused",
        usedAt: null,
      },
      entry("broker.register"),
    );
    const jwt = { jti: "jti-1", instanceId, issuedAt: at, expiresAt: "2025-01-01T00:30:00.000Z", deniedAt: null };
    // The second record's details can't be serialised: it throws after the first record was appended.
    const bad = { ...entry("broker.exchange.second"), details: { n: 10n } as unknown as Record<string, unknown> };
    const [exchange, next] = await Promise.allSettled([
      store.broker.exchange("tok-1", at, {
        instanceId,
        certificate: null,
        jwt,
        audits: [entry("broker.exchange"), bad],
      }),
      store.appendAudit(entry("next")),
    ]);
    assert.equal(exchange?.status, "rejected");
    assert.equal(next?.status, "fulfilled");
    assert.equal(next.status === "fulfilled" && next.value.seq, 5, "the rolled-back records took no seq");
    assert.equal((await store.broker.getToken("tok-1"))?.state, "unused", "the token was not consumed");
    assert.equal((await store.broker.getInstance(instanceId))?.state, "registered");
    // The exchange, done again correctly, is not refused as a replay.
    await store.broker.exchange("tok-1", at, {
      instanceId,
      certificate: null,
      jwt,
      audits: [entry("broker.exchange")],
    });
    assert.equal(await assertChainIntact(store), 6);
    await store.close();
  });
});

describe("crashes and full disks", () => {
  const keyWriter = `
    const { randomBytes, randomUUID } = await import("node:crypto");
    const { SqliteStore } = await import(${JSON.stringify(STORE_URL)});
    const store = await SqliteStore.open(process.argv[2]);
    let n = 0;
    const entry = (action, resource) => ({ time: new Date().toISOString(), requestId: "r" + ++n, principal: "system",
      source: "local", action, resource, outcome: "success", errorCode: null, details: { n } });
    const version = (keyId, v) => ({ keyId, version: v, state: "active", createdAt: new Date().toISOString(),
      wrappedKey: randomBytes(40), hsmLabel: null, hsmId: null, publicKey: null });
    const keyRec = (name, id, revision, latest) => ({ id, name, purpose: "encrypt", algorithm: "aes-256-gcm",
      state: "enabled", description: "", createdAt: "2025-01-01T00:00:00.000Z", updatedAt: new Date().toISOString(),
      revision, latestVersion: latest, minDecryptionVersion: 1,
      rotationPeriodSeconds: null, nextRotationAt: null, destroyAt: null });
    const out = (line) => process.stdout.write(line + "\\n");
    let created = [], rotated = [];
    for (let burst = 0; ; burst++) {
      const ops = [];
      for (const k of rotated) {
        ops.push(store.updateKey({ key: keyRec(k.name, k.id, 3, 2), expectedRevision: 2, destroyVersions: [1] },
          entry("key.destroy-version", "key/" + k.name)).then(() => out("D " + k.name + " " + k.v1.toString("hex"))));
      }
      const nextRotated = [];
      for (const k of created) {
        ops.push(store.updateKey({ key: keyRec(k.name, k.id, 2, 2), expectedRevision: 1, addVersion: version(k.id, 2) },
          entry("key.rotate", "key/" + k.name)).then(() => { out("R " + k.name); nextRotated.push(k); }));
      }
      const nextCreated = [];
      for (let i = 0; i < 4; i++) {
        const name = "k-" + burst + "-" + i, id = randomUUID(), v1 = version(id, 1);
        ops.push(store.createKey(keyRec(name, id, 1, 1), v1, entry("key.create", "key/" + name))
          .then(() => { out("K " + name); nextCreated.push({ name, id, v1: v1.wrappedKey }); }));
      }
      // A name already taken: must fail alone, inside the same batches.
      const dupId = randomUUID();
      if (burst > 0) ops.push(store.createKey(keyRec("k-0-0", dupId, 1, 1), version(dupId, 1),
        entry("key.create", "key/k-0-0")).then(() => out("X duplicate accepted"), (e) => out("C " + e.code)));
      await Promise.all(ops);
      created = nextCreated;
      rotated = nextRotated;
    }`;

  test("kill -9 at a random moment during creates, rotations and destroys: every acknowledged change is whole", async () => {
    const path = tmp.path("keys-kill.db");
    const proc = child("key-writer", keyWriter, [path]);
    const acked = { created: new Set<string>(), rotated: new Set<string>(), destroyed: new Map<string, string>() };
    const conflicts: string[] = [];
    const killAfter = 300 + Math.floor(Math.random() * 900);
    let seen = 0;
    const exit = lines(proc, (line) => {
      const [kind, a, b] = line.split(" ");
      if (kind === "K" && a) acked.created.add(a);
      else if (kind === "R" && a) acked.rotated.add(a);
      else if (kind === "D" && a && b) acked.destroyed.set(a, b);
      else conflicts.push(line);
      if (++seen >= killAfter && proc.exitCode === null && !proc.killed) proc.kill("SIGKILL");
    });
    const { signal, stderr } = await exit;
    assert.equal(signal, "SIGKILL", stderr);
    assert.ok(acked.destroyed.size > 0, "the kill came after some destructions");
    assert.ok(
      conflicts.every((c) => c === "C conflict"),
      conflicts.find((c) => c !== "C conflict"),
    );

    // The destroyed versions' wrapped keys are gone from the files as the crash left them.
    const files = Buffer.concat([path, `${path}-wal`].filter(existsSync).map((f) => readFileSync(f)));
    for (const [name, hex] of acked.destroyed) {
      assert.ok(!files.includes(Buffer.from(hex, "hex")), `wrapped key of destroyed ${name}/1 still in the files`);
    }
    assertFileSound(path);

    const store = await SqliteStore.open(path);
    try {
      const seq = await assertChainIntact(store);
      const records = await store.readAuditRange(1, seq);
      for (const key of await store.listKeys()) {
        // Each change commits with its record: a key at revision r has exactly r records.
        const changes = records.filter((r) => r.resource === `key/${key.name}`).length;
        assert.equal(changes, key.revision, `key ${key.name} at revision ${key.revision} has ${changes} records`);
        assert.equal((await store.listKeyVersions(key.id)).length, key.latestVersion);
      }
      for (const name of acked.created) assert.ok(await store.getKey(name), `acknowledged key ${name} lost`);
      for (const name of acked.rotated)
        assert.ok(((await store.getKey(name))?.revision ?? 0) >= 2, `rotation of ${name}`);
      for (const name of acked.destroyed.keys()) {
        const key = await store.getKey(name);
        assert.equal(key?.revision, 3, `destruction of ${name}`);
        assert.equal((await store.getKeyVersion(key.id, 1))?.wrappedKey, null);
      }
    } finally {
      await store.close();
    }
  });

  test("a full disk mid-burst rejects writes with store_unavailable; what was acknowledged is whole, what was refused is absent", async () => {
    const path = tmp.path("full.db");
    // The file-size limit stands in for a full disk: writes past it fail (EFBIG), and Node ignores SIGXFSZ.
    const filler = `
      const { randomUUID } = await import("node:crypto");
      const { SqliteStore } = await import(${JSON.stringify(STORE_URL)});
      const store = await SqliteStore.open(process.argv[2]);
      let n = 0, failures = 0;
      const pad = "p".repeat(3000);
      const entry = (action) => ({ time: new Date().toISOString(), requestId: "r" + ++n, principal: "system",
        source: "local", action, resource: "item/" + n, outcome: "success", errorCode: null, details: { n, pad } });
      while (failures < 40) {
        const ops = [];
        for (let i = 0; i < 8; i++) {
          const id = randomUUID(), now = new Date().toISOString();
          const p = i % 2 === 0
            ? store.createUser({ id, name: "u-" + id, passwordHash: null, policies: [], disabled: false,
                createdAt: now, updatedAt: now, revision: 1 }, entry("user.create")).then(() => "U " + id)
            : store.appendAudit(entry("fill")).then((r) => "A " + r.seq + " " + r.hash);
          ops.push(p.then((line) => process.stdout.write(line + "\\n"),
            (e) => { failures++; process.stdout.write("E " + (e.code ?? "raw:" + e) + " " + (i % 2 === 0 ? id : "-") + "\\n"); }));
        }
        await Promise.all(ops);
      }
      await store.close();
      process.stdout.write("closed\\n");`;
    const proc = child("filler", filler, [path], 4096);
    const users = new Set<string>();
    const refusedUsers = new Set<string>();
    const audits = new Map<number, string>();
    const errors: string[] = [];
    let closed = false;
    const { code, stderr } = await lines(proc, (line) => {
      const [kind, a, b] = line.split(" ");
      if (kind === "U" && a) users.add(a);
      else if (kind === "A" && a && b) audits.set(Number(a), b);
      else if (kind === "E" && a && b) {
        errors.push(a);
        if (b !== "-") refusedUsers.add(b);
      } else if (line === "closed") closed = true;
    });
    assert.equal(code, 0, stderr);
    assert.ok(closed, "close() settled after the failures");
    assert.ok(users.size > 0 && errors.length > 0, "the limit was reached after some writes");
    assert.deepEqual([...new Set(errors)], ["store_unavailable"]);

    assertFileSound(path);
    const store = await SqliteStore.open(path);
    try {
      const seq = await assertChainIntact(store);
      const records = await store.readAuditRange(1, seq);
      for (const [s, hash] of audits) assert.equal(records[s - 1]?.hash, hash, `acknowledged record ${s}`);
      for (const id of users) assert.ok(await store.getUser(id), `acknowledged user ${id}`);
      for (const id of refusedUsers) assert.equal(await store.getUser(id), undefined, `refused user ${id} exists`);
      assert.equal((await store.listUsers()).length, records.filter((r) => r.action === "user.create").length);
      // The store takes writes again once there is room.
      assert.equal((await store.appendAudit(entry("after"))).seq, seq + 1);
    } finally {
      await store.close();
    }
  });
});
