import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import type { IncomingHttpHeaders } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { AuditLog, auditEntry, HMAC_PREFIX, INIT_ACTION, systemActor } from "../../src/audit/index.js";
import { buildInitialAdmin } from "../../src/auth/index.js";
import type { HsmKeyRef } from "../../src/hsm/index.js";
import { Pkcs11Keystore } from "../../src/hsm/pkcs11/index.js";
import type { Logger } from "../../src/log/index.js";
import { Secret } from "../../src/secret/index.js";
import { type AuditEntry, auditRecordHash, SqliteStore, type Store } from "../../src/store/index.js";
import { AUDIT_COLUMNS, forgeAfter } from "../helpers/audit.js";
import { type CustosInstance, httpsRaw, startCustos } from "../helpers/custos.js";

/**
 * The audit log checked as an auditor and an attacker with write access to the
 * SQLite file would: what `verify` names, what every request leaves behind, what
 * never reaches the file, and who may read it. Oracles: the file itself
 * (better-sqlite3), the public hash rule, the HSM, and the CLI's exit codes.
 */

let custos: CustosInstance;
/** The test's own session to the instance's token (the server keeps its own). */
let keystore: Pkcs11Keystore;
let keys: { hmacKey: HsmKeyRef; checkpointKey: HsmKeyRef };
const scratch = mkdtempSync(join(tmpdir(), "custos-audit-conf-"));
let dbCount = 0;

before(async () => {
  // The token must exist before this process first opens the PKCS#11 library.
  custos = await startCustos();
  keystore = await Pkcs11Keystore.open({
    modulePath: custos.token.modulePath,
    tokenLabel: custos.token.label,
    pin: Secret.fromString(custos.token.pin),
  });
  keys = await AuditLog.provisionKeys(keystore);
});

after(async () => {
  await keystore?.close();
  await custos?.dispose();
  rmSync(scratch, { recursive: true, force: true });
});

// ---- the journal on its own ------------------------------------------------------

function entry(i: number): AuditEntry {
  return auditEntry(systemActor(`req-${i}`), "test.action", `item/${i}`, { i });
}

interface Journal {
  store: SqliteStore;
  audit: AuditLog;
  /** A second connection to the file, as an attacker would have. */
  sql: Database.Database;
  close(): Promise<void>;
}

/** A journal opened as the server opens it: its chain keyed from the HSM. */
async function journal(records: number, checkpoint = false): Promise<Journal> {
  const path = join(scratch, `journal-${++dbCount}.db`);
  const store = await SqliteStore.open(path);
  const audit = await AuditLog.open({ store, keystore, ...keys });
  for (let i = 1; i <= records; i++) await audit.record(entry(i));
  if (checkpoint) assert.ok(await audit.checkpoint());
  const sql = new Database(path);
  return {
    store,
    audit,
    sql,
    async close() {
      sql.close();
      await store.close();
    },
  };
}

const named = (r: { problems: Array<{ seq: number; kind: string }> }) => r.problems.map((p) => [p.seq, p.kind]);

/** Initialises `store` as `custos init` does: its first record is the init record. */
async function initialise(store: SqliteStore): Promise<void> {
  const { policies, admin, adminToken, token } = await buildInitialAdmin({ name: "admin" });
  token.destroy();
  await store.initialize(
    { settings: {}, policies, admin, adminToken },
    auditEntry(systemActor("init"), INIT_ACTION, "custos"),
  );
}

describe("audit verify against direct edits of the SQLite file", () => {
  test("an empty and a one-record log verify; that one record edited is named", async () => {
    const j = await journal(0);
    assert.deepEqual(await j.audit.verify(), {
      ok: true,
      records: 0,
      checkpoints: 0,
      unsignedTail: 0,
      problems: [],
      restores: [],
    });
    await j.audit.record(entry(1));
    assert.equal((await j.audit.verify()).ok, true);
    j.sql.prepare("UPDATE audit_log SET action = 'test.other' WHERE seq = 1").run();
    assert.deepEqual(named(await j.audit.verify()), [[1, "edited"]]);
    await j.close();
  });

  test("only the time, the outcome, the actor or the error code edited, in four records: each is named", async () => {
    const j = await journal(16, true);
    j.sql.exec(`UPDATE audit_log SET time = '2001-01-01T00:00:00.000Z' WHERE seq = 3;
      UPDATE audit_log SET outcome = 'denied' WHERE seq = 7;
      UPDATE audit_log SET principal = 'user:someone-else' WHERE seq = 11;
      UPDATE audit_log SET error_code = 'forbidden' WHERE seq = 15;`);
    assert.deepEqual(named(await j.audit.verify()), [
      [3, "edited"],
      [7, "edited"],
      [11, "edited"],
      [15, "edited"],
    ]);
    await j.close();
  });

  test("a checkpoint moved to another record, or given another hash, is checkpoint_invalid", async () => {
    const j = await journal(6, true);
    const other = (await j.store.readAuditRange(4, 4))[0];
    assert.ok(other);
    j.sql.prepare("UPDATE audit_checkpoints SET seq = 4, hash = ? WHERE seq = 6").run(other.hash);
    assert.deepEqual(named(await j.audit.verify()), [[4, "checkpoint_invalid"]]);
    j.sql.prepare("UPDATE audit_checkpoints SET seq = 6, hash = ? WHERE seq = 4").run("0".repeat(64));
    assert.deepEqual(named(await j.audit.verify()), [[6, "checkpoint_invalid"]]);
    await j.close();
  });

  test("the newest record rewritten with its hash recomputed (one row edited) is named", async () => {
    const j = await journal(8, true);
    for (let i = 9; i <= 10; i++) await j.audit.record(entry(i));
    const last = (await j.store.readAuditRange(10, 10))[0];
    assert.ok(last);
    const forged = { ...last, principal: "user:someone-else" };
    j.sql
      .prepare("UPDATE audit_log SET principal = ?, hash = ? WHERE seq = 10")
      .run(forged.principal, auditRecordHash(10, last.prevHash, forged, last.detailsJson));
    assert.deepEqual(named(await j.audit.verify()), [[10, "edited"]]);
    await j.close();
  });

  test("a forged record appended after the last checkpoint is named", async () => {
    const j = await journal(8, true);
    forgeAfter(j.sql, await j.store.auditHead(), auditEntry(systemActor("forged"), "key.destroy", "key/anything"));
    const report = await j.audit.verify();
    assert.equal(report.records, 9);
    // It links to the head as a genuine record would: only its keyed hash gives it away (named edited).
    assert.equal(report.ok, false);
    assert.deepEqual(
      report.problems.map((p) => p.seq),
      [9],
    );
    await j.close();
  });

  test("after a clean stop every record is signed; deleting the tail and its checkpoint is then named", async () => {
    const j = await journal(10);
    await j.audit.stop();
    const signed = await j.audit.verify();
    assert.deepEqual([signed.ok, signed.checkpoints, signed.unsignedTail], [true, 1, 0]);
    j.sql.exec("DELETE FROM audit_log WHERE seq > 7; DELETE FROM audit_checkpoints;");
    assert.deepEqual(named(await j.audit.verify()), [[8, "truncated"]]);
    await j.close();
  });

  test("the HSM anchor is not rolled back: after a cut, a restarted server's records and checkpoints leave it naming the cut", async () => {
    const warnings: string[] = [];
    const logger = { warn: (_o: unknown, m?: string) => warnings.push(String(m)), debug() {} } as unknown as Logger;
    const path = join(scratch, `journal-${++dbCount}.db`);
    const first = await SqliteStore.open(path);
    const before = await AuditLog.open({ store: first, keystore, ...keys, logger });
    for (let i = 1; i <= 10; i++) await before.record(entry(i));
    await before.stop();
    await first.close();
    const sql = new Database(path);
    sql.exec("DELETE FROM audit_log WHERE seq > 6; DELETE FROM audit_checkpoints;");
    sql.close();
    // The server starts again on the cut file, carries on from record 6 and checkpoints past the anchored seq.
    const store = await SqliteStore.open(path);
    const after = await AuditLog.open({ store, keystore, ...keys, logger });
    for (let i = 7; i <= 12; i++) await after.record(entry(100 + i));
    assert.ok(await after.checkpoint());
    // Record 10 is a new one now: not the record the anchor signed.
    assert.deepEqual(named(await after.verify()), [[10, "checkpoint_mismatch"]]);
    assert.ok(
      warnings.some((w) => w.includes("anchored in the HSM")),
      JSON.stringify(warnings),
    );
    await store.close();
  });

  test("stores sharing one token keep an anchor each: both verify, and each one's cut is named", async () => {
    const a = await journal(5, true);
    const b = await journal(9, true);
    assert.equal((await a.audit.verify()).ok, true);
    assert.equal((await b.audit.verify()).ok, true);
    b.sql.exec("DELETE FROM audit_log WHERE seq > 4; DELETE FROM audit_checkpoints;");
    assert.equal((await a.audit.verify()).ok, true);
    assert.deepEqual(named(await b.audit.verify()), [[5, "truncated"]]);
    await a.close();
    await b.close();
  });

  test("details rewritten into other JSON text with the same parsed value (a duplicate key) is named edited", async () => {
    const j = await journal(5, true);
    j.sql.prepare(`UPDATE audit_log SET details = '{"i":99,"i":3}' WHERE seq = 3`).run();
    assert.deepEqual(named(await j.audit.verify()), [[3, "edited"]]);
    await j.close();
  });

  test("an initialised store whose log was emptied under a running server: record 1 is named missing", async () => {
    const j = await journal(0);
    await initialise(j.store);
    for (let i = 2; i <= 4; i++) await j.audit.record(entry(i));
    assert.equal((await j.audit.verify()).ok, true);
    j.sql.exec("DELETE FROM audit_log; DELETE FROM audit_checkpoints;");
    assert.deepEqual(named(await j.audit.verify()), [[1, "deleted"]]);
    await j.close();
  });

  test("a log written before the chain was keyed, replaced from its start by a valid unkeyed chain, is named", async () => {
    const path = join(scratch, `journal-${++dbCount}.db`);
    const store = await SqliteStore.open(path);
    await initialise(store);
    const unkeyed = new AuditLog({ store, keystore, ...keys });
    for (let i = 2; i <= 4; i++) await unkeyed.record(entry(i));
    const sql = new Database(path);
    sql.exec("DELETE FROM audit_log");
    let last = { seq: 0, hash: "0".repeat(64) };
    for (let i = 1; i <= 3; i++) {
      forgeAfter(sql, last, entry(100 + i));
      last = await store.auditHead();
    }
    sql.close();
    const report = await unkeyed.verify();
    assert.deepEqual(named(report), [[1, "inserted"]]);
    assert.match(report.problems[0]?.message ?? "", /not the store's initialisation record \(custos\.init\)/);
    await store.close();
  });

  test("a forged row at a huge seq is reported without reading every empty page up to it", async () => {
    const j = await journal(10);
    j.sql
      .prepare(
        `INSERT INTO audit_log (${AUDIT_COLUMNS}) VALUES (?, 't', 'r', 'p', 's', 'a', 'x', 'success', NULL, '{}', ?, ?)`,
      )
      .run(2 ** 40, "0".repeat(64), "0".repeat(64));
    let reads = 0;
    const counting = new Proxy(j.store, {
      get(target, name) {
        const value = Reflect.get(target, name, target);
        if (typeof value !== "function") return value;
        return (...args: unknown[]) => {
          if (/^(readAudit|listAudit$|auditHead$)/.test(String(name)) && ++reads > 100) {
            throw new Error("verify read the log more than 100 times for an 11-row log");
          }
          return value.apply(target, args);
        };
      },
    }) as Store;
    const report = await (await AuditLog.open({ store: counting, keystore, ...keys })).verify();
    assert.deepEqual(named(report), [[2 ** 40, "inserted"]]);
    assert.match(report.problems[0]?.message ?? "", /seqs 11\.\.1099511627775 empty/);
    await j.close();
  });
});

describe("audit HMAC", () => {
  test("the same value gives the same HMAC across instances; another HSM key gives another", async () => {
    const a = await journal(0);
    const b = await journal(0);
    const other = await keystore.ensureHmacKey("custos-audit-conf-other-hmac");
    const c = new AuditLog({ store: b.store, keystore, hmacKey: other, checkpointKey: keys.checkpointKey });
    const value = "s3cret-value-to-search-for";
    const mac = await a.audit.hmac(value);
    assert.match(mac, /^hmac-sha256:[0-9a-f]{64}$/);
    assert.equal(await b.audit.hmac(value), mac);
    assert.notEqual(await c.hmac(value), mac);
    assert.notEqual(await c.hmac(value), await c.hmac(`${value}.`));
    await a.close();
    await b.close();
  });
});

// ---- a running server ---------------------------------------------------------------

interface Answer {
  status: number;
  id: string;
  body: unknown;
  headers: IncomingHttpHeaders;
}

/** One request as sent; `bearer` undefined means the admin's token, null none. */
async function send(
  method: string,
  path: string,
  o: { body?: unknown; raw?: string; bearer?: string | null } = {},
): Promise<Answer> {
  const bearer = o.bearer === undefined ? custos.adminToken : o.bearer;
  const data = o.raw ?? (o.body === undefined ? undefined : JSON.stringify(o.body));
  const r = await httpsRaw({
    port: custos.port,
    ca: custos.ca,
    method,
    path,
    headers: {
      ...(data !== undefined ? { "content-type": "application/json" } : {}),
      ...(bearer ? { authorization: `Bearer ${bearer}` } : {}),
    },
    body: data,
  });
  return { status: r.status, id: String(r.headers["x-request-id"]), body: r.body, headers: r.headers };
}

type Row = Record<string, unknown> & { seq: number };

const query = <T>(sql: string, ...params: unknown[]): T[] => custos.query<T>(sql, ...params);

const recordsOf = (requestId: string) => query<Row>("SELECT * FROM audit_log WHERE request_id = ?", requestId);

function scopedToken(policies: string[]): Promise<string> {
  return send("POST", "/v1/auth/tokens", {
    body: { name: `t-${randomBytes(4).toString("hex")}`, policies, forUser: false },
  }).then((r) => {
    assert.equal(r.status, 201, JSON.stringify(r.body));
    return (r.body as { token: string }).token;
  });
}

describe("every request leaves exactly one record", () => {
  before(async () => {
    assert.equal((await send("POST", "/v1/keys", { body: { name: "audited", purpose: "encrypt" } })).status, 201);
  });

  test("refusals and failures: 401, 403, 400, 404, 409 and a failed decryption, each one record", async () => {
    const none = await scopedToken([]);
    const cases: Array<[string, () => Promise<Answer>, number, string, string]> = [
      ["no token", () => send("POST", "/v1/keys", { body: {}, bearer: null }), 401, "denied", "unauthenticated"],
      ["unknown token", () => send("GET", "/v1/keys", { bearer: "cst_nope" }), 401, "denied", "unauthenticated"],
      ["no policy", () => send("POST", "/v1/keys/audited/rotate", { bearer: none }), 403, "denied", "forbidden"],
      ["audit read without policy", () => send("GET", "/v1/audit", { bearer: none }), 403, "denied", "forbidden"],
      ["schema", () => send("POST", "/v1/keys", { body: { name: "x" } }), 400, "failure", "invalid_request"],
      ["bad JSON", () => send("POST", "/v1/keys", { raw: "{bad" }), 400, "failure", "invalid_request"],
      ["bad percent-encoding", () => send("GET", "/v1/keys/%E0%A4%A"), 400, "failure", "invalid_request"],
      ["no such route", () => send("DELETE", "/v1/nowhere"), 404, "failure", "not_found"],
      [
        "name taken",
        () => send("POST", "/v1/keys", { body: { name: "audited", purpose: "encrypt" } }),
        409,
        "failure",
        "conflict",
      ],
      [
        "bad ciphertext",
        () => send("POST", "/v1/keys/audited/decrypt", { body: { ciphertext: "custos:v1:AAAA" } }),
        400,
        "failure",
        "decryption_failed",
      ],
      [
        "unknown bootstrap token (the broker audits it itself)",
        () =>
          send("POST", "/v1/broker/exchange", {
            body: { token: "cbt_unknown", instance: "i-1", csr: "x" },
            bearer: null,
          }),
        401,
        "denied",
        "unauthenticated",
      ],
    ];
    for (const [what, call, status, outcome, code] of cases) {
      const r = await call();
      assert.equal(r.status, status, `${what}: ${JSON.stringify(r.body)}`);
      const rows = recordsOf(r.id);
      assert.equal(rows.length, 1, `${what}: ${JSON.stringify(rows)}`);
      assert.deepEqual([rows[0]?.outcome, rows[0]?.error_code], [outcome, code], what);
    }
  });

  test("successes are one record each, with who, what and on what", async () => {
    const writes: Array<[Promise<Answer>, string, string]> = [
      [send("POST", "/v1/keys/audited/rotate"), "key.rotate", "key/audited"],
      [send("PUT", "/v1/secrets/data/shared/one", { body: { value: "v" } }), "secret.write", "secret/shared/one"],
      [send("POST", "/v1/users", { body: { name: "audited-user" } }), "user.create", "user/audited-user"],
    ];
    for (const [pending, action, resource] of writes) {
      const r = await pending;
      assert.ok(r.status < 300, JSON.stringify(r.body));
      const rows = recordsOf(r.id);
      assert.equal(rows.length, 1, JSON.stringify(rows));
      assert.match(String(rows[0]?.principal), /^token:/);
      assert.deepEqual([rows[0]?.action, rows[0]?.resource, rows[0]?.outcome], [action, resource, "success"]);
    }
  });

  test("public CA, CRL, SSH CA and KRL answers that are not JSON are audited like the JSON ones", async () => {
    const unaudited: string[] = [];
    for (const path of [
      "/v1/pki/ca.pem",
      "/v1/pki/ca",
      "/v1/pki/chain.pem",
      "/v1/pki/crl",
      "/v1/pki/crl.pem",
      "/v1/pki/ocsp/AAAA",
      "/v1/ssh/trusted-user-ca-keys",
      "/v1/ssh/known-hosts",
      "/v1/ssh/krl",
    ]) {
      const r = await send("GET", path, { bearer: null });
      assert.equal(r.status, 200, path);
      if (recordsOf(r.id).length !== 1) unaudited.push(path);
    }
    assert.deepEqual(unaudited, []);
  });
});

describe("sensitive values never reach the database", () => {
  const tag = randomBytes(6).toString("hex");
  const planted: Array<[string, Buffer]> = [];
  const plant = (what: string, value: string | Buffer): void => {
    const bytes = Buffer.isBuffer(value) ? value : Buffer.from(value);
    planted.push([what, bytes], [`${what} (base64)`, Buffer.from(bytes.toString("base64"))]);
  };

  test("passwords, tokens, plaintexts, data keys, secret values and private keys: not in the db nor its WAL", async () => {
    const password = `pw-first-${tag}-long-enough`;
    const second = `pw-second-${tag}-long-enough`;
    const wrong = `pw-wrong-${tag}-long-enough`;
    plant("password", password);
    plant("new password", second);
    plant("wrong password", wrong);
    assert.equal((await send("POST", "/v1/users", { body: { name: "scan-user", password } })).status, 201);
    assert.equal(
      (await send("POST", "/v1/auth/login", { body: { username: "scan-user", password: wrong }, bearer: null })).status,
      401,
    );
    const login = await send("POST", "/v1/auth/login", { body: { username: "scan-user", password }, bearer: null });
    assert.equal(login.status, 200);
    plant("session token", (login.body as { token: string }).token);
    assert.equal((await send("PATCH", "/v1/users/scan-user", { body: { password: second } })).status, 200);
    plant("api token", await scopedToken([]));
    const bogus = `cst_bogus${tag}`;
    plant("refused bearer token", bogus);
    assert.equal((await send("GET", "/v1/keys", { bearer: bogus })).status, 401);
    plant("token in a query", `qtoken${tag}`);
    await send("GET", `/v1/keys?token=qtoken${tag}`);
    plant("bootstrap token", `cbt_bogus${tag}`);
    await send("POST", "/v1/broker/exchange", {
      body: { token: `cbt_bogus${tag}`, instance: "i", csr: "x" },
      bearer: null,
    });

    assert.equal((await send("POST", "/v1/keys", { body: { name: "scan", purpose: "encrypt" } })).status, 201);
    const plaintext = Buffer.from(`plaintext-${tag}`);
    plant("plaintext", plaintext);
    const enc = await send("POST", "/v1/keys/scan/encrypt", {
      body: { plaintext: plaintext.toString("base64"), context: { app: "scan" } },
    });
    assert.equal(enc.status, 200);
    const dec = await send("POST", "/v1/keys/scan/decrypt", {
      body: { ciphertext: (enc.body as { ciphertext: string }).ciphertext, context: { app: "scan" } },
    });
    assert.equal((dec.body as { plaintext: string }).plaintext, plaintext.toString("base64"));
    const dk = await send("POST", "/v1/keys/scan/datakey", { body: { plaintext: true } });
    plant("data key", Buffer.from((dk.body as { plaintext: string }).plaintext, "base64"));

    plant("secret value", `secret-value-${tag}`);
    assert.equal(
      (await send("PUT", "/v1/secrets/data/shared/scan", { body: { value: `secret-value-${tag}` } })).status,
      200,
    );
    assert.equal((await send("POST", "/v1/secrets/generate/shared/scan-gen", { body: {} })).status, 200);
    const generated = await send("GET", "/v1/secrets/data/shared/scan-gen");
    plant("generated secret", (generated.body as { value: string }).value);

    const role = await send("PUT", "/v1/pki/roles/scan", { body: { dnsNames: ["scan.test"] } });
    assert.equal(role.status, 200, JSON.stringify(role.body));
    const issued = await send("POST", "/v1/pki/roles/scan/issue", { body: { commonName: "scan.test" } });
    assert.equal(issued.status, 200, JSON.stringify(issued.body));
    const pem = (issued.body as { privateKey: string }).privateKey;
    const der = Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ""), "base64");
    plant("issued private key", der);
    planted.push(["issued private key (PEM line)", Buffer.from(pem.split("\n")[1] ?? pem)]);

    const files = ["custos.db", "custos.db-wal"].map((f) => join(custos.dir, f)).filter(existsSync);
    assert.ok(files.length > 0);
    const found: string[] = [];
    for (const file of files) {
      const bytes = readFileSync(file);
      for (const [what, value] of planted) if (bytes.includes(value)) found.push(`${what} in ${file}`);
    }
    assert.deepEqual(found, []);
  });

  test("a secret write's record carries the value's HMAC (README: secret values HMACed with an HSM key)", async () => {
    const value = `searchable-${tag}`;
    const r = await send("PUT", "/v1/secrets/data/shared/hmaced", { body: { value } });
    assert.equal(r.status, 200);
    // The value behind the label that keeps values apart from the chain key's input.
    const input = Buffer.from(`custos-audit-value:v1\0${value}`);
    const mac = HMAC_PREFIX + (await keystore.hmac(keys.hmacKey, input)).toString("hex");
    const rows = recordsOf(r.id);
    assert.equal(rows.length, 1);
    assert.ok(String(rows[0]?.details).includes(mac), String(rows[0]?.details));
  });
});

describe("reading the audit log", () => {
  test("paging with after and limit returns consecutive seqs; order=desc newest first; filters are exact", async () => {
    const page = await send("GET", "/v1/audit?after=3&limit=4");
    assert.equal(page.status, 200);
    const seqs = (page.body as { records: Row[] }).records.map((r) => r.seq);
    assert.deepEqual(seqs, [4, 5, 6, 7]);
    const head = query<{ m: number }>("SELECT max(seq) AS m FROM audit_log")[0]?.m ?? 0;
    const newest = await send("GET", "/v1/audit?order=desc&limit=2");
    const [first, second] = (newest.body as { records: Row[] }).records.map((r) => r.seq);
    assert.ok(first !== undefined && second === first - 1);
    assert.ok(first >= head, "the newest page starts at the head");
    const filtered = await send("GET", "/v1/audit?action=key.rotate&resource=key/audited");
    const rows = (filtered.body as { records: Row[] }).records;
    assert.ok(rows.length >= 1);
    assert.ok(rows.every((r) => r.action === "key.rotate" && r.resource === "key/audited"));
    const prefix = await send("GET", "/v1/audit?action=key");
    assert.deepEqual((prefix.body as { records: Row[] }).records, [], "filters are exact, not prefixes");
  });

  test("bad paging parameters are invalid_request, and audited", async () => {
    for (const q of ["limit=0", "limit=10000", "limit=-1", "after=-1", "after=1.5", "order=up", "since=1"]) {
      const r = await send("GET", `/v1/audit?${q}`);
      assert.equal(r.status, 400, `${q}: ${JSON.stringify(r.body)}`);
      assert.equal((r.body as { error: { code: string } }).error.code, "invalid_request", q);
      assert.equal(recordsOf(r.id).length, 1, q);
    }
  });

  test("a limit the CLI accepts (up to 9999) is honoured, not silently cut to 1000", async () => {
    while ((query<{ m: number }>("SELECT max(seq) AS m FROM audit_log")[0]?.m ?? 0) < 1050) {
      await Promise.all(Array.from({ length: 16 }, () => send("GET", "/v1/health", { bearer: null })));
    }
    const r = custos.cli(["--json", "audit", "list", "--after", "0", "--limit", "1010"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { records: Row[] }).records.length, 1010);
  });
});

describe("crashes and tampering, through the CLI", () => {
  test("after kill -9 every acknowledged request has its record, and the chain verifies", async () => {
    const acknowledged: string[] = [];
    let stop = false;
    const worker = async () => {
      while (!stop) {
        try {
          const r = await send("POST", "/v1/keys/audited/encrypt", { body: { plaintext: "aGVsbG8=" } });
          if (r.status === 200) acknowledged.push(r.id);
        } catch {
          return; // the server is gone
        }
      }
    };
    const workers = Array.from({ length: 8 }, worker);
    while (acknowledged.length < 200) await new Promise((r) => setTimeout(r, 10));
    await custos.kill9();
    stop = true;
    await Promise.all(workers);
    await custos.start();
    const lost = acknowledged.filter((id) => recordsOf(id).length !== 1);
    assert.deepEqual(lost, []);
    const verify = custos.cli(["audit", "verify"]);
    assert.equal(verify.status, 0, verify.stdout + verify.stderr);
  });

  test("several edited records: exit 1, and each is named on its own line", async () => {
    await custos.stop();
    const path = join(custos.dir, "custos.db");
    const db = new Database(path);
    const original = db.prepare("SELECT seq, principal, time, outcome FROM audit_log WHERE seq IN (5, 9, 14)").all();
    db.exec(`UPDATE audit_log SET principal = 'user:someone-else' WHERE seq = 5;
      UPDATE audit_log SET time = '2001-01-01T00:00:00.000Z' WHERE seq = 9;
      UPDATE audit_log SET outcome = 'denied' WHERE seq = 14;`);
    db.close();
    await custos.start();
    const r = custos.cli(["audit", "verify"]);
    await custos.stop();
    const undo = new Database(path);
    const put = undo.prepare(
      "UPDATE audit_log SET principal = @principal, time = @time, outcome = @outcome WHERE seq = @seq",
    );
    for (const row of original) put.run(row);
    undo.close();
    await custos.start();
    assert.equal(r.status, 1, r.stdout + r.stderr);
    for (const seq of [5, 9, 14]) assert.match(r.stdout, new RegExp(`^record ${seq}: edited: `, "m"));
    assert.match(r.stdout, /^FAILED: 3 problem\(s\)/m);
    assert.equal(custos.cli(["audit", "verify"]).status, 0);
  });

  test("a log wiped clean (every record and checkpoint deleted): the server refuses to start a new chain over it", async () => {
    await custos.stop();
    const db = new Database(join(custos.dir, "custos.db"));
    db.exec("DELETE FROM audit_log; DELETE FROM audit_checkpoints;");
    db.close();
    await assert.rejects(custos.start(), /initialised but its audit log is empty/);
    assert.equal(query<{ n: number }>("SELECT count(*) AS n FROM audit_log")[0]?.n, 0, "no new chain was begun");
  });
});
