/**
 * Backup and restore of the whole store, end to end: `GET /v1/store/backup` and
 * `custos backup` against a real server that keeps serving (the copy's headers, its
 * bytes as a self-contained SQLite file, one consistent moment, who may take it and
 * how it is audited; a download that fails replaces nothing), then `custos restore`
 * offline (refused while a server holds the store, refused for anything that is not an
 * intact Custos store, the replaced database kept aside whole) and a server started
 * again on the restored store and the same HSM token: it serves the backup's state,
 * and `audit verify` reports the log truncated, since the HSM's anchored checkpoint
 * covers records the backup does not hold.
 * Oracles: the SQLite files read directly with better-sqlite3, SHA-256 of the bytes,
 * the file system (modes, names, what is left in a directory), and the API.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import type { IncomingHttpHeaders } from "node:http";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { type Reply, startServer } from "../client/server.js";
import { type CustosInstance, errorCode, ok, startCustos } from "../helpers/custos.js";
import { waitFor } from "../helpers/wait.js";

const BIN = resolve(import.meta.dirname, "../../bin/custos.js");

type Json = Record<string, unknown>;

/** What `GET /v1/store/backup` answered, the body's bytes untouched. */
interface BackupAnswer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

/** `GET /v1/store/backup` as the holder of `bearer`. */
function getBackup(custos: CustosInstance, bearer: string): Promise<BackupAnswer> {
  return new Promise((ok, fail) => {
    const req = request(
      {
        host: "127.0.0.1",
        port: custos.port,
        path: "/v1/store/backup",
        method: "GET",
        ca: custos.ca,
        agent: false,
        headers: { authorization: `Bearer ${bearer}` },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => ok({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on("error", fail);
      },
    );
    req.on("error", fail);
    req.end();
  });
}

function sha256(bytes: Buffer): string {
  return createHash("sha256").update(bytes).digest("hex");
}

function fileSha256(path: string): string {
  return sha256(readFileSync(path));
}

/** Every encoding a leaked value could take in a file. */
function forms(value: string): Buffer[] {
  const raw = Buffer.from(value);
  return [
    raw,
    Buffer.from(raw.toString("base64")),
    Buffer.from(raw.toString("base64url")),
    Buffer.from(raw.toString("hex")),
  ];
}

/** A fresh directory, removed by `cleanup()`. */
const scratchDirs: string[] = [];
function scratch(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `custos-backup-${prefix}-`));
  scratchDirs.push(dir);
  return dir;
}
after(() => {
  for (const dir of scratchDirs) rmSync(dir, { recursive: true, force: true });
});

/** What a SQLite file holds, read through a read-only connection of its own. */
/** The audit_log columns the restore test reads from a dumped row. */
interface AuditRow {
  readonly seq: number;
  readonly action: string;
  readonly resource: string;
  readonly outcome: string;
  readonly details: string;
  readonly hash: string;
}

interface CopyContents {
  readonly journalMode: string;
  readonly integrity: string[];
  readonly keyNames: Set<string>;
  /** The newest audit record's seq (0 for none). */
  readonly auditSeq: number;
  readonly audit: Array<{
    seq: number;
    action: string;
    resource: string;
    outcome: string;
    prev_hash: string;
    hash: string;
  }>;
  readonly newestCheckpointSeq: number;
}

function readCopy(path: string): CopyContents {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const journalMode = String(db.pragma("journal_mode", { simple: true }));
    const integrity = (db.pragma("integrity_check") as Array<{ integrity_check: string }>).map(
      (r) => r.integrity_check,
    );
    const keyNames = new Set((db.prepare("SELECT name FROM keys").all() as Array<{ name: string }>).map((r) => r.name));
    const audit = db
      .prepare("SELECT seq, action, resource, outcome, prev_hash, hash FROM audit_log ORDER BY seq")
      .all() as CopyContents["audit"];
    const newestCheckpointSeq = (
      db.prepare("SELECT coalesce(max(seq), 0) AS seq FROM audit_checkpoints").get() as { seq: number }
    ).seq;
    return { journalMode, integrity, keyNames, auditSeq: audit.at(-1)?.seq ?? 0, audit, newestCheckpointSeq };
  } finally {
    db.close();
  }
}

/** Every row of every table, as sorted JSON lines per table: what two databases must agree on to hold the same store. */
function dump(path: string): Record<string, string[]> {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const tables = (
      db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .all() as Array<{ name: string }>
    ).map((r) => r.name);
    return Object.fromEntries(
      tables.map((t) => [
        t,
        (db.prepare(`SELECT * FROM "${t}"`).all() as unknown[])
          .map((row) =>
            JSON.stringify(row, (_k, v: unknown) =>
              Buffer.isBuffer(v) || v instanceof Uint8Array ? Buffer.from(v).toString("hex") : v,
            ),
          )
          .sort(),
      ]),
    );
  } finally {
    db.close();
  }
}

/** Writes `bytes` alone into a fresh directory and reads it as a database there. */
function readBytesAsCopy(bytes: Buffer): CopyContents & { readonly dirAfter: string[] } {
  const dir = scratch("copy");
  const path = join(dir, "copy.db");
  writeFileSync(path, bytes);
  const contents = readCopy(path);
  return { ...contents, dirAfter: readdirSync(dir) };
}

/** The audit records of the copy form one gap-free chain, 1..auditSeq, each linked to the one before. */
function assertWholeChain(copy: CopyContents, what: string): void {
  assert.ok(copy.audit.length > 0, `${what}: the copy holds audit records`);
  copy.audit.forEach((r, i) => {
    assert.equal(r.seq, i + 1, `${what}: audit records are gap-free`);
    if (i > 0) assert.equal(r.prev_hash, copy.audit[i - 1]!.hash, `${what}: record ${r.seq} links to the one before`);
  });
}

/** The names of the files beside the database (the database itself, its -wal/-shm, anything kept or in progress). */
function databaseSiblings(dir: string): string[] {
  return readdirSync(dir)
    .filter((n) => n.startsWith("custos.db"))
    .sort();
}

/** `custos` run without blocking this process (so a server in it can answer), as spawnSync would report it. */
function cliAsync(
  args: string[],
  env: NodeJS.ProcessEnv,
  cwd: string,
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((ok) => {
    const proc = spawn(process.execPath, [BIN, ...args], { env, cwd, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    proc.stdout.on("data", (c: Buffer) => {
      stdout += c.toString("utf8");
    });
    proc.stderr.on("data", (c: Buffer) => {
      stderr += c.toString("utf8");
    });
    const timer = setTimeout(() => proc.kill("SIGKILL"), 120_000);
    proc.once("close", (status) => {
      clearTimeout(timer);
      ok({ status, stdout, stderr });
    });
  });
}

describe("GET /v1/store/backup and custos backup, on a server that keeps serving", () => {
  let custos: CustosInstance;
  /** A token whose policy allows every non-privileged action on everything. */
  let everything: { token: string; id: string };
  const planted: string[] = [];

  before(async () => {
    custos = await startCustos();
    ok(await custos.call("POST", "/v1/keys", { name: "made-before", purpose: "encrypt" }), 201);
    for (let i = 0; i < 3; i++) {
      const value = `PLANTED-SECRET-${i}-${randomBytes(12).toString("hex")}`;
      planted.push(value);
      ok(await custos.call("PUT", `/v1/secrets/data/shared/backup/value-${i}`, { value }));
    }
    ok(
      await custos.call("PUT", "/v1/policies/everything", {
        description: "every action a policy can name, on everything",
        rules: [{ resource: "*", actions: ["*"] }],
      }),
    );
    const t = ok(await custos.call("POST", "/v1/auth/tokens", { name: "not-admin", policies: ["everything"] }), 201);
    everything = { token: t.token as string, id: t.id as string };
  });
  after(async () => {
    await custos?.dispose();
  });

  test("a non-admin token, even one whose policy allows every action on everything: 403 forbidden, audited as denied", async () => {
    const r = await getBackup(custos, everything.token);
    assert.equal(r.status, 403, r.body.toString("utf8"));
    const body = JSON.parse(r.body.toString("utf8")) as { error?: { code?: string } };
    assert.equal(body.error?.code, "forbidden");
    assert.notEqual(r.headers["content-type"], "application/vnd.sqlite3");

    const audit = ok(await custos.call("GET", "/v1/audit?action=store.backup&order=desc&limit=100"));
    const records = audit.records as Json[];
    const denied = records.find((x) => x.principal === `token:${everything.id}`);
    assert.ok(denied, `the refusal is audited: ${JSON.stringify(records)}`);
    assert.equal(denied.outcome, "denied");
    assert.equal(denied.action, "store.backup");
    assert.equal(denied.resource, "store");

    // No other policy grants it: naming the action in a policy is refused, or grants nothing.
    const named = await custos.call("PUT", "/v1/policies/backup-only", {
      rules: [{ resource: "store", actions: ["store:backup"] }],
    });
    if (named.status === 200) {
      const t = ok(
        await custos.call("POST", "/v1/auth/tokens", { name: "backup-only", policies: ["backup-only"] }),
        201,
      );
      assert.equal((await getBackup(custos, t.token as string)).status, 403, "a non-admin policy granted store:backup");
    } else {
      assert.equal(named.status, 400, named.text);
      assert.equal(errorCode(named), "invalid_request");
    }
  });

  test("the copy: 200, the advertised headers, a self-contained SQLite store holding what came before, no plaintext secret", async () => {
    const r = await getBackup(custos, custos.adminToken);
    assert.equal(r.status, 200, r.body.toString("utf8").slice(0, 500));
    assert.equal(r.headers["content-type"], "application/vnd.sqlite3");
    assert.equal(r.headers["cache-control"], "no-store");
    const digest = String(r.headers["x-custos-backup-sha256"]);
    assert.match(digest, /^[0-9a-f]{64}$/i);
    assert.equal(digest.toLowerCase(), sha256(r.body), "x-custos-backup-sha256 is the body's SHA-256");
    const auditSeqHeader = String(r.headers["x-custos-backup-audit-seq"]);
    assert.match(auditSeqHeader, /^[1-9][0-9]*$/);

    assert.equal(r.body.subarray(0, 16).toString("latin1"), "SQLite format 3\0", "the body is a SQLite file");
    // Bytes 18 and 19 of the header are the file format's write/read versions: 2 means WAL.
    assert.notEqual(r.body[18], 2, "the file is not in WAL mode");
    assert.notEqual(r.body[19], 2, "the file is not in WAL mode");

    const copy = readBytesAsCopy(r.body);
    assert.notEqual(copy.journalMode.toLowerCase(), "wal");
    assert.deepEqual(copy.integrity, ["ok"]);
    assert.deepEqual(copy.dirAfter, ["copy.db"], "the copy opened alone, needing no -wal or -shm");
    assert.ok(copy.keyNames.has("made-before"), "a key created before the backup is in the copy");
    assert.equal(copy.auditSeq, Number(auditSeqHeader), "x-custos-backup-audit-seq is the copy's newest audit record");
    assertWholeChain(copy, "the copy");

    for (const value of planted) {
      for (const form of forms(value)) {
        assert.equal(r.body.indexOf(form), -1, `the plaintext secret ${value} is in the backup`);
      }
    }
  });

  test("the backup is audited after the copy is made: store.backup on store, success, with bytes, sha256 and auditSeq", async () => {
    const r = await getBackup(custos, custos.adminToken);
    assert.equal(r.status, 200);
    const digest = String(r.headers["x-custos-backup-sha256"]).toLowerCase();
    const auditSeq = Number(r.headers["x-custos-backup-audit-seq"]);
    const audit = ok(await custos.call("GET", "/v1/audit?action=store.backup&order=desc&limit=100"));
    const records = audit.records as Array<Json & { details: Json; seq: number }>;
    const record = records.find((x) => x.outcome === "success" && x.details?.sha256 === digest);
    assert.ok(record, `no store.backup success record names sha256 ${digest}: ${JSON.stringify(records)}`);
    assert.equal(record.action, "store.backup");
    assert.equal(record.resource, "store");
    assert.equal(record.details.bytes, r.body.length);
    assert.equal(record.details.auditSeq, auditSeq);
    assert.ok(record.seq > auditSeq, `the record (${record.seq}) comes after the copy's newest (${auditSeq})`);
    // And it is not in the copy it describes.
    const copy = readBytesAsCopy(r.body);
    assert.ok(
      copy.audit.every((x) => x.seq !== record.seq),
      "the backup's own record is not in the copy",
    );
  });

  test("backups taken while keys are created: every write succeeds, and each copy is one moment holding all acknowledged before it", async () => {
    const acknowledged: string[] = [];
    const failures: string[] = [];
    let stop = false;
    const writer = async (w: number) => {
      for (let i = 0; !stop; i++) {
        const name = `busy-${w}-${i}`;
        const r = await custos.call("POST", "/v1/keys", { name, purpose: "encrypt" });
        if (r.status === 201) acknowledged.push(name);
        else failures.push(`${name}: ${r.status} ${r.text}`);
      }
    };
    const writers = [0, 1, 2, 3].map(writer);
    try {
      while (acknowledged.length < 8 && failures.length === 0) await new Promise((r) => setTimeout(r, 20));
      const copies: Array<{ before: string[]; answer: BackupAnswer }> = [];
      for (let i = 0; i < 3; i++) {
        const before = [...acknowledged];
        copies.push({ before, answer: await getBackup(custos, custos.adminToken) });
        const during = await custos.call("GET", "/v1/keys/made-before");
        assert.equal(during.status, 200, during.text);
      }
      stop = true;
      await Promise.all(writers);
      assert.deepEqual(failures, [], "every write during the backups succeeded");

      let previousSeq = 0;
      for (const [i, { before, answer }] of copies.entries()) {
        assert.equal(answer.status, 200, `backup ${i}`);
        assert.equal(String(answer.headers["x-custos-backup-sha256"]).toLowerCase(), sha256(answer.body));
        const copy = readBytesAsCopy(answer.body);
        assert.deepEqual(copy.integrity, ["ok"], `backup ${i}`);
        assert.equal(copy.auditSeq, Number(answer.headers["x-custos-backup-audit-seq"]), `backup ${i}`);
        assert.ok(copy.auditSeq > previousSeq, `backup ${i} is of a later moment than the one before it`);
        previousSeq = copy.auditSeq;
        assertWholeChain(copy, `backup ${i}`);
        for (const name of before)
          assert.ok(copy.keyNames.has(name), `backup ${i}: ${name} was acknowledged before it`);
        // One moment: the keys in the copy are exactly those whose creation the copy's audit log records.
        const busyKeys = [...copy.keyNames].filter((n) => n.startsWith("busy-")).sort();
        const audited = copy.audit
          .filter((x) => x.action === "key.create" && x.outcome === "success" && x.resource.startsWith("key/busy-"))
          .map((x) => x.resource.slice("key/".length))
          .sort();
        assert.deepEqual(busyKeys, audited, `backup ${i}: keys and their audit records are of the same moment`);
        for (const name of busyKeys) assert.ok(acknowledged.includes(name), `backup ${i}: ${name} was never created`);
      }
    } finally {
      stop = true;
      await Promise.all(writers);
    }
  });

  test("custos backup <file>: the copy in a 0600 file, nothing else left in the directory, and one line saying what it wrote", () => {
    const dir = scratch("cli");
    const file = join(dir, "store.db");
    const r = custos.cli(["backup", file]);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.deepEqual(readdirSync(dir), ["store.db"], "no temporary file is left");
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const bytes = readFileSync(file);
    const copy = readCopy(file);
    assert.deepEqual(copy.integrity, ["ok"]);
    assert.notEqual(copy.journalMode.toLowerCase(), "wal");
    assert.ok(copy.keyNames.has("made-before"));
    assert.equal(
      r.stdout,
      `backup: ${file}, ${bytes.length} bytes, sha256 ${sha256(bytes)}, audit log to record ${copy.auditSeq}\n`,
    );
  });

  test("custos backup --json, with the token in CUSTOS_TOKEN_FILE, replacing an existing file: {file, bytes, sha256, auditSeq}, mode 0600", () => {
    const dir = scratch("cli-json");
    const file = join(dir, "store.db");
    writeFileSync(file, "an older backup\n", { mode: 0o644 });
    const tokenFile = join(scratch("token"), "admin.token");
    writeFileSync(tokenFile, `${custos.adminToken}\n`, { mode: 0o600 });
    const r = custos.cli(["backup", file, "--json"], { env: { CUSTOS_TOKEN: "", CUSTOS_TOKEN_FILE: tokenFile } });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const bytes = readFileSync(file);
    const copy = readCopy(file);
    assert.deepEqual(copy.integrity, ["ok"]);
    assert.deepEqual(JSON.parse(r.stdout), {
      file,
      bytes: bytes.length,
      sha256: sha256(bytes),
      auditSeq: copy.auditSeq,
    });
    assert.equal(statSync(file).mode & 0o777, 0o600, "the replaced file is 0600");
    assert.deepEqual(readdirSync(dir), ["store.db"], "no temporary file is left");
  });

  test("custos backup with a token without store:backup: exit 1, error: forbidden:, and no file written or changed", () => {
    const dir = scratch("cli-forbidden");
    const fresh = join(dir, "fresh.db");
    const existing = join(dir, "existing.db");
    writeFileSync(existing, "an older backup\n", { mode: 0o600 });
    for (const file of [fresh, existing]) {
      const r = custos.cli(["backup", file], { token: everything.token });
      assert.equal(r.status, 1, r.stdout + r.stderr);
      assert.match(r.stderr, /^error: forbidden:/);
    }
    assert.equal(existsSync(fresh), false, "no file is written");
    assert.equal(readFileSync(existing, "utf8"), "an older backup\n", "the existing file is unchanged");
    assert.deepEqual(readdirSync(dir), ["existing.db"], "no temporary file is left");
  });

  test("a download whose bytes don't match their SHA-256, or that is cut short, replaces nothing and leaves no temporary file", async () => {
    const real = await getBackup(custos, custos.adminToken);
    assert.equal(real.status, 200);
    const headers = {
      "content-type": "application/vnd.sqlite3",
      "cache-control": "no-store",
      "x-custos-backup-sha256": String(real.headers["x-custos-backup-sha256"]),
      "x-custos-backup-audit-seq": String(real.headers["x-custos-backup-audit-seq"]),
      "content-length": String(real.body.length),
    };
    const flipped = Buffer.from(real.body);
    const at = Math.floor(flipped.length / 2);
    flipped[at] = (flipped[at] ?? 0) ^ 0xff;
    const answers: Array<[string, Reply]> = [
      ["one byte changed", { raw: flipped, headers }],
      ["cut short", { raw: real.body, headers, cutAfter: Math.floor(real.body.length / 2) }],
    ];
    for (const [what, answer] of answers) {
      const dir = scratch("cli-fail");
      const fake = await startServer();
      fake.reply = () => answer;
      try {
        const fresh = join(dir, "fresh.db");
        const existing = join(dir, "existing.db");
        writeFileSync(existing, "an older backup\n", { mode: 0o640 });
        const env = {
          ...process.env,
          CUSTOS_ADDR: fake.url,
          CUSTOS_CACERT: fake.certFile,
          CUSTOS_TOKEN: custos.adminToken,
          CUSTOS_TOKEN_FILE: "",
        };
        for (const file of [fresh, existing]) {
          const r = await cliAsync(["backup", file], env, dir);
          assert.notEqual(r.status, 0, `${what}: the backup failed\n${r.stdout}${r.stderr}`);
          assert.match(r.stderr, what === "cut short" ? /^error: unavailable: / : /^error: transfer_failed: /m, what);
        }
        assert.ok(
          fake.requests.some((x) => x.method === "GET" && x.url === "/v1/store/backup"),
          `${what}: the CLI asked for the backup: ${fake.requests.map((x) => `${x.method} ${x.url}`).join(", ")}`,
        );
        assert.equal(existsSync(fresh), false, `${what}: no file is written`);
        assert.equal(readFileSync(existing, "utf8"), "an older backup\n", `${what}: the existing file is unchanged`);
        assert.equal(statSync(existing).mode & 0o777, 0o640, `${what}: the existing file's mode is unchanged`);
        assert.deepEqual(readdirSync(dir), ["existing.db"], `${what}: no temporary file is left`);
      } finally {
        await fake.close();
      }
    }
  });

  test("the server's copy lies beside the database only while it is sent: none after a backup or a client hanging up mid-way, and one a crash left is removed at start", async () => {
    const copies = () => databaseSiblings(custos.dir).filter((n) => n.startsWith("custos.db.backup-"));
    assert.equal((await getBackup(custos, custos.adminToken)).status, 200);
    assert.deepEqual(copies(), [], "no copy after a whole download");

    // A client that reads the first bytes and hangs up.
    await new Promise<void>((done, fail) => {
      const req = request(
        {
          host: "127.0.0.1",
          port: custos.port,
          path: "/v1/store/backup",
          ca: custos.ca,
          agent: false,
          headers: { authorization: `Bearer ${custos.adminToken}` },
        },
        (res) => {
          assert.equal(res.statusCode, 200);
          res.once("data", () => {
            req.destroy();
            done();
          });
        },
      );
      req.on("error", (e) => (req.destroyed ? undefined : fail(e)));
      req.end();
    });
    await waitFor("the copy removed once the client has gone", () => copies().length === 0);

    await custos.stop();
    const stale = join(custos.dir, `custos.db.backup-${randomBytes(8).toString("hex")}`);
    writeFileSync(stale, randomBytes(4096), { mode: 0o600 });
    await custos.start();
    assert.deepEqual(copies(), [], "the copy a crash left is removed when the server starts");
  });

  // This test ends the server (kill -9): it comes last in this group.
  test("restore over a database left by kill -9: its -wal and -shm go aside with it, the kept database holds the newest write", async () => {
    const dir = scratch("crash-backup");
    const file = join(dir, "store.db");
    const b = custos.cli(["backup", file]);
    assert.equal(b.status, 0, b.stdout + b.stderr);
    ok(await custos.call("POST", "/v1/keys", { name: "newest-before-kill", purpose: "encrypt" }), 201);
    await custos.kill9();
    const db = join(custos.dir, "custos.db");
    assert.ok(existsSync(`${db}-wal`) || existsSync(`${db}-shm`), "a killed server leaves its -wal/-shm");

    const r = custos.cli(["restore", file]);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const kept = databaseSiblings(custos.dir).filter((n) => /^custos\.db\.replaced-\d{8}T\d{6}Z$/.test(n));
    assert.equal(kept.length, 1, `one kept database: ${databaseSiblings(custos.dir).join(", ")}`);
    assert.equal(existsSync(`${db}-wal`), false, "the old -wal is not left beside the restored database");
    assert.equal(existsSync(`${db}-shm`), false, "the old -shm is not left beside the restored database");
    assert.deepEqual(readCopy(db).integrity, ["ok"]);
    assert.equal(readCopy(db).keyNames.has("newest-before-kill"), false, "the restored database is the backup");
    const keptCopy = readCopy(join(custos.dir, kept[0]!));
    assert.deepEqual(keptCopy.integrity, ["ok"]);
    assert.ok(keptCopy.keyNames.has("newest-before-kill"), "the kept database holds the newest write");
  });
});

describe("custos restore, and a server started again on the restored store", () => {
  let custos: CustosInstance;
  let db: string;
  const backupDir = scratch("restore");
  const backupFile = join(backupDir, "store.db");
  let backupSeq = 0;
  const plaintext = Buffer.from(`made before the backup ${randomBytes(8).toString("hex")}`);
  const context = { purpose: "restore-test" };
  let ciphertext = "";
  const secretPath = "/v1/secrets/data/shared/restore/db-password";
  const secretV1 = `PLANTED-V1-${randomBytes(12).toString("hex")}`;
  /** The kept database the successful restore reported. */
  let kept = "";

  before(async () => {
    custos = await startCustos();
    db = join(custos.dir, "custos.db");
    ok(await custos.call("POST", "/v1/keys", { name: "kept-key", purpose: "encrypt" }), 201);
    const enc = ok(
      await custos.call("POST", "/v1/keys/kept-key/encrypt", { plaintext: plaintext.toString("base64"), context }),
    );
    ciphertext = enc.ciphertext as string;
    ok(await custos.call("PUT", secretPath, { value: secretV1 }));

    const b = custos.cli(["backup", backupFile, "--json"]);
    assert.equal(b.status, 0, b.stdout + b.stderr);
    backupSeq = (JSON.parse(b.stdout) as { auditSeq: number }).auditSeq;
    assert.ok(backupSeq > 0);

    // After the backup: a key, a secret version, and enough else that the restored log stays well short of it.
    ok(await custos.call("POST", "/v1/keys", { name: "after-backup", purpose: "encrypt" }), 201);
    ok(await custos.call("PUT", secretPath, { value: `PLANTED-V2-${randomBytes(12).toString("hex")}` }));
    for (let i = 0; i < 15; i++) {
      ok(await custos.call("POST", "/v1/keys", { name: `after-${i}`, purpose: "encrypt" }), 201);
      ok(await custos.call("POST", "/v1/keys/kept-key/encrypt", { plaintext: "aGk=", context }));
    }
  });
  after(async () => {
    await custos?.dispose();
  });

  test("while the server holds the store: exit 2 (the store is unavailable), store_unavailable naming the serving server, and nothing changed", async () => {
    const siblings = databaseSiblings(custos.dir);
    const r = custos.cli(["restore", backupFile]);
    assert.match(r.stderr, /^error: store_unavailable: /);
    assert.match(r.stderr, /another (Custos )?server is serving/i);
    assert.deepEqual(databaseSiblings(custos.dir), siblings, "nothing was moved aside or left behind");
    assert.equal((await custos.call("GET", "/v1/keys/after-backup")).status, 200, "the server still serves its store");
    assert.equal((await custos.call("GET", "/v1/health", undefined, null)).status, 200);
    assert.equal(r.status, 2, r.stdout + r.stderr);
  });

  describe("with the server stopped", () => {
    before(async () => {
      await custos.stop();
    });

    test("a file that is not an intact Custos store is refused with invalid_request and the database is untouched", () => {
      const dir = scratch("not-a-store");
      const random = join(dir, "random.db");
      writeFileSync(random, randomBytes(16_384));
      const empty = join(dir, "empty.db");
      writeFileSync(empty, "");
      const foreign = join(dir, "foreign.db");
      const f = new Database(foreign);
      f.exec("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes (body) VALUES ('hello');");
      f.close();
      const cutShort = join(dir, "cut-short.db");
      const whole = readFileSync(backupFile);
      writeFileSync(cutShort, whole.subarray(0, Math.floor(whole.length / 2)));
      const missing = join(dir, "no-such-backup.db");

      const dbBefore = fileSha256(db);
      const siblings = databaseSiblings(custos.dir);
      const cases: Array<[string, string, RegExp]> = [
        ["random bytes", random, /^error: invalid_request: /],
        ["an empty file", empty, /^error: invalid_request: /],
        ["a SQLite database that is not a Custos store", foreign, /^error: invalid_request: /],
        ["a backup cut short", cutShort, /^error: invalid_request: /],
        ["a missing file", missing, /^error: (invalid_request|io_error)\b/],
      ];
      const problems: string[] = [];
      for (const [what, file, expected] of cases) {
        const r = custos.cli(["restore", file]);
        if (r.status !== 1) problems.push(`${what}: exit ${r.status}: ${r.stdout}${r.stderr}`);
        else if (!expected.test(r.stderr)) problems.push(`${what}: ${r.stderr}`);
        else if (file === missing && !r.stderr.includes(missing))
          problems.push(`${what}: the file is not named: ${r.stderr}`);
        if (fileSha256(db) !== dbBefore) problems.push(`${what}: the database changed`);
        const now = databaseSiblings(custos.dir);
        if (JSON.stringify(now) !== JSON.stringify(siblings))
          problems.push(`${what}: files beside it: ${now.join(", ")}`);
      }
      assert.deepEqual(problems, []);
      assert.equal(fileSha256(db), dbBefore);
    });

    test("a backup of another installation (another HSM root key): root_key_mismatch, and nothing changed", async () => {
      const other = await startCustos();
      const foreign = join(scratch("foreign"), "other.db");
      try {
        const b = other.cli(["backup", foreign]);
        assert.equal(b.status, 0, b.stdout + b.stderr);
      } finally {
        await other.dispose();
      }
      const dbBefore = fileSha256(db);
      const siblings = databaseSiblings(custos.dir);
      const r = custos.cli(["restore", foreign]);
      assert.match(r.stderr, /^error: root_key_mismatch: /, r.stdout + r.stderr);
      assert.notEqual(r.status, 0);
      assert.equal(fileSha256(db), dbBefore, "the database is untouched");
      assert.deepEqual(databaseSiblings(custos.dir), siblings, "nothing was moved aside or left behind");
    });

    test("restore moves the database aside to <db>.replaced-<UTC time>, installs the copy (0600), and says what it replaced", () => {
      const dbBefore = fileSha256(db);
      const started = Math.floor(Date.now() / 1000) * 1000;
      const r = custos.cli(["restore", backupFile, "--config", join(custos.dir, "custos.json")]);
      const ended = Date.now();
      assert.equal(r.status, 0, r.stdout + r.stderr);

      const keptNames = databaseSiblings(custos.dir).filter((n) => n.startsWith("custos.db.replaced-"));
      const main = keptNames.filter((n) => !n.endsWith("-wal") && !n.endsWith("-shm"));
      assert.equal(main.length, 1, `one kept database: ${databaseSiblings(custos.dir).join(", ")}`);
      const m = /^custos\.db\.replaced-(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(main[0]!);
      assert.ok(m, `the kept database's name: ${main[0]}`);
      const stamp = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6]));
      assert.ok(stamp >= started && stamp <= ended, `${main[0]} is named after the UTC time of the restore`);
      kept = join(custos.dir, main[0]!);
      assert.equal(existsSync(`${db}-wal`), false, "no -wal beside the restored database");
      assert.equal(existsSync(`${db}-shm`), false, "no -shm beside the restored database");

      const output = r.stdout + r.stderr;
      assert.match(output, /replaced/);
      assert.ok(output.includes(kept), `the output names the kept database ${kept}:\n${output}`);

      assert.equal(statSync(db).mode & 0o777, 0o600, "the installed database is 0600");
      assert.deepEqual(readCopy(db).integrity, ["ok"]);
      assert.notEqual(fileSha256(db), dbBefore);

      // The installed database is the backup and, past its end, the restore's own record and the checkpoint signed at it.
      const installed = dump(db);
      const backup = dump(backupFile);
      const { audit_log: log, audit_checkpoints: checkpoints, ...rest } = installed;
      const { audit_log: backupLog, audit_checkpoints: backupCheckpoints, ...backupRest } = backup;
      assert.deepEqual(rest, backupRest, "every other table holds exactly the backup");
      const added = log!.filter((row) => !backupLog!.includes(row)).map((row) => JSON.parse(row) as AuditRow);
      assert.equal(log!.length, backupLog!.length + 1, "one audit record added");
      assert.equal(added.length, 1);
      const record = added[0]!;
      assert.deepEqual(
        [record.seq, record.action, record.resource, record.outcome],
        [backupSeq + 1, "store.restore", "store", "success"],
      );
      const details = JSON.parse(record.details) as {
        backup: { sha256: string; newestSeq: number };
        replaced: { file: string; newestSeq: number };
        supersededAnchor: { seq: number } | null;
      };
      assert.deepEqual(details.backup, { sha256: fileSha256(backupFile), newestSeq: backupSeq });
      assert.equal(details.replaced.file, basename(kept));
      assert.equal(details.replaced.newestSeq, readCopy(kept).auditSeq, "the replaced database's newest record");
      assert.ok(
        details.supersededAnchor !== null && details.supersededAnchor.seq > backupSeq,
        `it names the HSM's checkpoint, past the backup: ${record.details}`,
      );
      const newCheckpoints = checkpoints!.filter((row) => !backupCheckpoints!.includes(row));
      assert.deepEqual(
        newCheckpoints.map((row) => (JSON.parse(row) as { seq: number; hash: string }).seq),
        [record.seq],
        "one checkpoint added, at the restore record",
      );
      assert.equal((JSON.parse(newCheckpoints[0]!) as { hash: string }).hash, record.hash);
      assert.equal(checkpoints!.length, backupCheckpoints!.length + 1, "the backup's checkpoints are all kept");
      assert.match(output, new RegExp(`audit record ${record.seq} \\(store\\.restore\\)`));
    });

    test("the kept database is a whole store: it opens, and holds what came after the backup and the checkpoint that signed it", () => {
      assert.ok(kept !== "", "the restore reported a kept database");
      const copy = readCopy(kept);
      assert.deepEqual(copy.integrity, ["ok"]);
      assert.ok(copy.keyNames.has("after-backup"), "the key created after the backup is in the kept database");
      assert.ok(copy.auditSeq > backupSeq);
      assertWholeChain(copy, "the kept database");
      // The precondition of the verify test below: a signed checkpoint covers records the backup lacks.
      assert.ok(
        copy.newestCheckpointSeq > backupSeq,
        `the server signed a checkpoint after the backup (${copy.newestCheckpointSeq} > ${backupSeq})`,
      );
    });

    describe("a server started again on the restored store and the same HSM token", () => {
      before(async () => {
        await custos.start();
      });

      test("a key created and used before the backup still decrypts a ciphertext made before it; a key created after is not_found", async () => {
        const dec = ok(await custos.call("POST", "/v1/keys/kept-key/decrypt", { ciphertext, context }));
        assert.equal(Buffer.from(dec.plaintext as string, "base64").toString("utf8"), plaintext.toString("utf8"));
        const gone = await custos.call("GET", "/v1/keys/after-backup");
        assert.equal(gone.status, 404, gone.text);
        assert.equal(errorCode(gone), "not_found");
        assert.equal((await custos.call("GET", "/v1/keys/after-3")).status, 404);
      });

      test("the secret is at its version from before the backup; the version written after it is gone", async () => {
        const latest = ok(await custos.call("GET", secretPath));
        assert.equal(latest.value, secretV1);
        assert.equal(latest.version, 1);
        const v2 = await custos.call("GET", `${secretPath}?version=2`);
        assert.equal(v2.status, 404, v2.text);
        assert.equal(errorCode(v2), "not_found");
      });

      test("audit verify calls the log intact and lists the restore: which records it lost, and where they are kept", async () => {
        const api = ok(await custos.call("POST", "/v1/audit/verify"));
        assert.deepEqual(api.problems, [], JSON.stringify(api));
        assert.equal(api.ok, true);
        const restores = api.restores as Array<Record<string, unknown>>;
        assert.equal(restores.length, 1, JSON.stringify(restores));
        const r = restores[0]!;
        assert.equal(r.seq, backupSeq + 1);
        assert.equal(r.backupSeq, backupSeq);
        assert.equal(r.replacedFile, basename(kept));
        assert.equal(r.replacedNewestSeq, readCopy(kept).auditSeq);
        assert.ok((r.supersededSeq as number) > backupSeq, JSON.stringify(r));

        const cli = custos.cli(["audit", "verify"]);
        assert.equal(cli.status, 0, cli.stdout + cli.stderr);
        assert.match(cli.stdout, /^ok: /m);
        const lost = `records ${backupSeq + 1}..${r.replacedNewestSeq} of the log before it were lost (kept in ${basename(kept)})`;
        assert.ok(cli.stdout.includes(lost), `${lost}\n${cli.stdout}`);
      });

      test("once the restored server has checkpointed, the HSM vouches for the new log: the backup copied in by hand reads as truncated", async () => {
        ok(await custos.call("POST", "/v1/keys", { name: "after-restore", purpose: "encrypt" }), 201);
        await custos.stop(); // its final checkpoint moves the HSM's anchor past the restore record
        const restoredSeq = readCopy(db).auditSeq;
        for (const f of [`${db}-wal`, `${db}-shm`]) rmSync(f, { force: true });
        writeFileSync(db, readFileSync(backupFile), { mode: 0o600 });
        await custos.start();
        const api = ok(await custos.call("POST", "/v1/audit/verify"));
        assert.equal(api.ok, false, JSON.stringify(api));
        const kinds = (api.problems as Array<{ kind: string }>).map((p) => p.kind);
        assert.ok(
          kinds.includes("truncated") || kinds.includes("checkpoint_mismatch"),
          `the copy without its restore record, behind the anchor at ${restoredSeq}: ${JSON.stringify(api.problems)}`,
        );
        assert.deepEqual(api.restores, [], "a copy with no restore record lists none");
      });
    });
  });
});
