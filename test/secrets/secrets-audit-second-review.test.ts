/**
 * Second conformance review of the secrets store and the audit log, over HTTPS
 * against a real Custos. Held to docs/broker.md, docs/api.md and README.md, and to
 * what a Vault KV v2 user and an audit-log user expect. Oracles: the SQLite files
 * read directly (better-sqlite3), the public hash rule of the chain, node:crypto,
 * and the server's own answers compared with each other.
 */
import assert from "node:assert/strict";
import { createSecretKey, randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { HMAC_PREFIX } from "../../src/audit/index.js";
import { auditRecordHash } from "../../src/store/index.js";
import { forgeAfter } from "../helpers/audit.js";
import { type CustosInstance, errorCode, httpsJson, ok, startCustos } from "../helpers/custos.js";
import { waitFor } from "../helpers/wait.js";

type Json = Record<string, unknown>;
type Row = Record<string, unknown> & { seq: number };

describe("secrets and their audit records, second review", () => {
  let custos: CustosInstance;
  /** A standalone token without policies: owns nothing, may do nothing. */
  let nobody: string;

  /** One request; answers status, body and the request id the audit records carry. */
  async function send(method: string, path: string, body?: unknown, bearer: string | null = custos.adminToken) {
    const r = (await httpsJson({ port: custos.port, ca: custos.ca, method, path, body, bearer })) as Awaited<
      ReturnType<typeof httpsJson>
    > & { headers: Record<string, unknown> };
    return { ...r, id: String(r.headers["x-request-id"]) };
  }

  const query = <T>(sql: string, ...params: unknown[]): T[] => custos.query<T>(sql, ...params);

  const recordsOf = (requestId: string) => query<Row>("SELECT * FROM audit_log WHERE request_id = ?", requestId);
  const ciphertexts = (path: string) =>
    query<{ ciphertext: string }>(
      "SELECT ciphertext FROM secret_versions WHERE path = ? AND ciphertext IS NOT NULL",
      path,
    ).map((r) => r.ciphertext);
  const atRest = () => ["custos.db", "custos.db-wal"].map((n) => join(custos.dir, n)).filter(existsSync);

  before(async () => {
    custos = await startCustos();
    ok(await send("POST", "/v1/platform/orgs", { name: "acme" }), 201);
    ok(await send("POST", "/v1/platform/orgs/acme/spaces", { name: "prod" }), 201);
    ok(await send("POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name: "web" }), 201);
    nobody = ok(await send("POST", "/v1/auth/tokens", { name: "nobody", policies: [], forUser: false }), 201)
      .token as string;
  });
  after(async () => {
    await custos?.dispose();
  });

  test("each secret operation leaves exactly one record with its action, resource, outcome and error code", async () => {
    const p = "acme/prod/web/ops";
    const value = `ops-value-${randomBytes(6).toString("hex")}`;
    const data = `/v1/secrets/data/${p}`;
    const cases: Array<[string, string, unknown, string | null, number, string, string, string | null]> = [
      ["PUT", data, { value, cas: 0 }, custos.adminToken, 200, "secret.write", "success", null],
      ["PUT", data, { value, cas: 0 }, custos.adminToken, 409, "secret.write", "failure", "conflict"],
      ["PUT", data, { value: `${value}-2`, cas: 1 }, custos.adminToken, 200, "secret.write", "success", null],
      ["PUT", data, { value }, nobody, 403, "secret.write", "denied", "forbidden"],
      ["POST", `/v1/secrets/generate/${p}`, {}, custos.adminToken, 200, "secret.write", "success", null],
      ["GET", `${data}?version=1`, undefined, custos.adminToken, 200, "secret.read", "success", null],
      ["GET", `${data}?version=9`, undefined, custos.adminToken, 404, "secret.read", "failure", "not_found"],
      ["GET", data, undefined, nobody, 403, "secret.read", "denied", "forbidden"],
      ["GET", `/v1/secrets/metadata/${p}`, undefined, custos.adminToken, 200, "secret.metadata.read", "success", null],
      [
        "PATCH",
        `/v1/secrets/metadata/${p}`,
        { casRequired: true },
        custos.adminToken,
        200,
        "secret.metadata.update",
        "success",
        null,
      ],
      ["PUT", data, { value }, custos.adminToken, 400, "secret.write", "failure", "invalid_request"],
      ["POST", `/v1/secrets/delete/${p}`, { versions: [1] }, custos.adminToken, 200, "secret.delete", "success", null],
      ["GET", `${data}?version=1`, undefined, custos.adminToken, 404, "secret.read", "failure", "not_found"],
      [
        "POST",
        `/v1/secrets/undelete/${p}`,
        { versions: [1] },
        custos.adminToken,
        200,
        "secret.undelete",
        "success",
        null,
      ],
      [
        "POST",
        `/v1/secrets/destroy/${p}`,
        { versions: [2] },
        custos.adminToken,
        200,
        "secret.destroy",
        "success",
        null,
      ],
      ["GET", `${data}?version=2`, undefined, custos.adminToken, 404, "secret.read", "failure", "not_found"],
      [
        "POST",
        `/v1/secrets/destroy/${p}`,
        { versions: [7] },
        custos.adminToken,
        404,
        "secret.destroy",
        "failure",
        "not_found",
      ],
      ["GET", "/v1/secrets/list/acme/prod/web", undefined, custos.adminToken, 200, "secret.list", "success", null],
      ["DELETE", `/v1/secrets/metadata/${p}`, undefined, nobody, 403, "secret.metadata.delete", "denied", "forbidden"],
      [
        "DELETE",
        `/v1/secrets/metadata/${p}`,
        undefined,
        custos.adminToken,
        200,
        "secret.metadata.delete",
        "success",
        null,
      ],
      ["GET", data, undefined, custos.adminToken, 404, "secret.read", "failure", "not_found"],
    ];
    for (const [method, path, body, bearer, status, action, outcome, code] of cases) {
      const what = `${method} ${path} ${JSON.stringify(body ?? null)}`;
      const r = await send(method, path, body, bearer);
      assert.equal(r.status, status, `${what}: ${r.text}`);
      const rows = recordsOf(r.id);
      assert.equal(rows.length, 1, `${what}: ${JSON.stringify(rows)}`);
      const resource = path.startsWith("/v1/secrets/list/") ? "secret/acme/prod/web/" : `secret/${p}`;
      assert.deepEqual(
        [rows[0]?.action, rows[0]?.resource, rows[0]?.outcome, rows[0]?.error_code],
        [action, resource, outcome, code],
        what,
      );
      assert.ok(!String(rows[0]?.details).includes(value), `${what}: the value is in its record`);
    }
  });

  test("values at the 32 KiB limit round-trip in any UTF-8 width; one byte more is refused", async () => {
    const limit = 32 * 1024;
    const emoji = "\u{1F511}".repeat(limit / 4);
    const escaped = '"\\\n\u0001'.repeat(limit / 4);
    const threeByte = `${"a".repeat(limit - 3)}€`;
    for (const [name, value] of [
      ["emoji", emoji],
      ["escaped", escaped],
      ["three", threeByte],
    ] as const) {
      assert.equal(Buffer.byteLength(value), limit);
      ok(await send("PUT", `/v1/secrets/data/acme/prod/web/limit-${name}`, { value }));
      const back = ok(await send("GET", `/v1/secrets/data/acme/prod/web/limit-${name}`));
      assert.ok(back.value === value, `${name}: the value read back differs`);
    }
    const over = `${"a".repeat(limit - 2)}€`;
    const r = await send("PUT", "/v1/secrets/data/acme/prod/web/limit-over", { value: over });
    assert.equal(r.status, 400, r.text);
    assert.equal(errorCode(r), "invalid_request");
  });

  test("pruned versions, a secret deleted whole and a destroyed 32 KiB value leave no ciphertext at rest", async () => {
    const pruned = "acme/prod/web/pruned";
    ok(await send("PATCH", `/v1/secrets/metadata/${pruned}`, { maxVersions: 2 }));
    for (let i = 1; i <= 2; i++) ok(await send("PUT", `/v1/secrets/data/${pruned}`, { value: `pruned-${i}` }));
    const gone = ciphertexts(pruned);
    assert.equal(gone.length, 2);
    for (let i = 3; i <= 4; i++) {
      const r = await send("PUT", `/v1/secrets/data/${pruned}`, { value: `pruned-${i}` });
      ok(r);
      // docs/broker.md: the audit record lists what the write removed as destroyedVersions.
      assert.deepEqual(JSON.parse(String(recordsOf(r.id)[0]?.details)).destroyedVersions, [i - 2]);
    }
    const meta = ok(await send("GET", `/v1/secrets/metadata/${pruned}`)).metadata as Json;
    assert.deepEqual(
      (meta.versions as Json[]).map((v) => v.version),
      [3, 4],
    );

    const whole = "acme/prod/web/deleted-whole";
    for (let i = 1; i <= 2; i++) ok(await send("PUT", `/v1/secrets/data/${whole}`, { value: `whole-${i}` }));
    gone.push(...ciphertexts(whole));
    ok(await send("DELETE", `/v1/secrets/metadata/${whole}`));

    const big = "acme/prod/web/destroyed-big";
    ok(await send("PUT", `/v1/secrets/data/${big}`, { value: randomBytes(24 * 1024).toString("base64") }));
    const [bigCiphertext] = ciphertexts(big);
    assert.ok(bigCiphertext !== undefined && bigCiphertext.length > 32 * 1024);
    ok(await send("POST", `/v1/secrets/destroy/${big}`, { versions: [1] }));
    // Every 64-character slice, so a fragment left on an overflow page counts too.
    for (let at = 0; at + 64 <= bigCiphertext.length; at += 4096) gone.push(bigCiphertext.slice(at, at + 64));

    assert.equal(gone.length > 6, true);
    const leftovers = () =>
      atRest().flatMap((file) => {
        const bytes = readFileSync(file);
        return gone.filter((c) => bytes.includes(c)).map((c) => `${c.slice(0, 16)}… in ${file}`);
      });
    // A checkpoint a reader blocks is retried with back-off (1 s, 2 s, 4 s, ...): wait for it, generously.
    await waitFor("the erased ciphertexts to leave the files", () => leftovers().length === 0, 60_000).catch(() => {
      assert.deepEqual(leftovers(), []);
    });
  });

  test("listing a folder of 1,001 secrets names all of them: pages of 1,000 with a cursor, and the CLI follows it", async () => {
    const names = Array.from({ length: 1001 }, (_, i) => `k${String(i).padStart(4, "0")}`);
    for (let i = 0; i < names.length; i += 16) {
      await Promise.all(
        names
          .slice(i, i + 16)
          .map(async (n) => ok(await send("PUT", `/v1/secrets/data/shared/many/${n}`, { value: n }))),
      );
    }
    type Page = { keys: string[]; next?: string };
    const first = ok(await send("GET", "/v1/secrets/list/shared/many")) as Page;
    assert.deepEqual([first.keys.length, first.next], [1000, "k0999"], "the first page says more follow");
    const second = ok(await send("GET", `/v1/secrets/list/shared/many?after=${first.next}`)) as Page;
    assert.deepEqual(second, { prefix: "shared/many/", keys: ["k1000"] }, "the last page has no cursor");
    assert.deepEqual([...first.keys, ...second.keys], names);

    const printed = custos.cli(["secret", "list", "shared/many"]);
    assert.equal(printed.status, 0, printed.stderr);
    assert.deepEqual(printed.stdout.trim().split("\n"), names);

    for (const after of ["..", "a/b", "", "k 1", "x".repeat(65)]) {
      const r = await send("GET", `/v1/secrets/list/shared/many?after=${encodeURIComponent(after)}`);
      assert.equal(r.status, 400, `after=${after}: ${r.text}`);
      assert.equal(errorCode(r), "invalid_request");
      assert.match(r.text, /after must be a name from a listing/);
    }
  });

  test("paging a filtered audit query by `after` while matching records are appended: each once, in order", async () => {
    const p = "shared/paged";
    const filter = `action=secret.write&resource=${encodeURIComponent(`secret/${p}`)}`;
    const writes = 48;
    let done = false;
    const writer = (async () => {
      for (let i = 0; i < writes; i += 4) {
        await Promise.all([0, 1, 2, 3].map(async () => ok(await send("PUT", `/v1/secrets/data/${p}`, { value: "v" }))));
      }
      done = true;
    })();
    const seen: Row[] = [];
    let cursor = 0;
    for (;;) {
      const finished = done;
      const page = ok(await send("GET", `/v1/audit?${filter}&after=${cursor}&limit=5`)).records as Row[];
      seen.push(...page);
      cursor = page.at(-1)?.seq ?? cursor;
      if (finished && page.length === 0) break;
    }
    await writer;
    const seqs = seen.map((r) => r.seq);
    assert.deepEqual(
      seqs,
      [...seqs].sort((a, b) => a - b),
    );
    assert.equal(new Set(seqs).size, seqs.length, "a record came twice");
    assert.deepEqual(
      seen.map((r) => (r.details as Json).version),
      Array.from({ length: writes }, (_, i) => i + 1),
    );
  });

  test("paging newest first (order=desc) with the cursor reaches older records without repeating any", async () => {
    const filter = `resource=${encodeURIComponent("secret/shared/paged")}&order=desc&limit=10`;
    const first = ok(await send("GET", `/v1/audit?${filter}`)).records as Row[];
    assert.equal(first.length, 10);
    const cursor = first.at(-1)?.seq as number;
    const second = ok(await send("GET", `/v1/audit?${filter}&after=${cursor}`)).records as Row[];
    const repeated = second.filter((r) => first.some((f) => f.seq === r.seq)).map((r) => r.seq);
    assert.deepEqual(repeated, [], "the second page repeats the first");
    assert.ok(
      second.every((r) => r.seq < cursor),
      "the second page is not older than the first",
    );
  });

  test("an auditor can compute the HMAC of a known value to find the write that set it (docs/broker.md)", async () => {
    const docs = ok(await send("GET", "/v1/docs", undefined, null)) as { paths: Record<string, Json> };
    assert.ok(docs.paths["/v1/audit/hash"]?.post, "the OpenAPI document lists POST /v1/audit/hash");
    const help = custos.cli(["audit", "--help"]);
    assert.match(help.stdout, /hmac/i);

    const value = `known-value ✓ ${randomBytes(6).toString("hex")}`;
    const put = await send("PUT", "/v1/secrets/data/acme/prod/web/known", { value });
    assert.equal(put.status, 200, put.text);
    const written = JSON.parse(String(recordsOf(put.id)[0]?.details)).valueHmac as string;
    assert.ok(written.startsWith(HMAC_PREFIX), written);

    const hashed = await send("POST", "/v1/audit/hash", { value });
    assert.deepEqual(ok(hashed), { hmac: written });
    const [record] = recordsOf(hashed.id);
    assert.deepEqual([record?.action, record?.resource, record?.outcome], ["audit.hash", "audit", "success"]);
    assert.ok(!String(record?.details).includes("known-value"), "the value is in the request's record");
    assert.notEqual(ok(await send("POST", "/v1/audit/hash", { value: `${value}.` })).hmac, written);

    // The CLI reads the value from stdin, dropping one trailing newline as `secret put` does.
    const cli = custos.cli(["audit", "hash"], { input: `${value}\n` });
    assert.equal(cli.status, 0, cli.stderr);
    assert.equal(cli.stdout.trim(), written);

    // Values as a write takes them: a lone surrogate or an empty value is refused, not HMACed as something else.
    for (const bad of ['{"value":"\\ud800"}', '{"value":""}', '{"value":1}', '{"value":"a","extra":1}']) {
      const r = await send("POST", "/v1/audit/hash", bad);
      assert.equal(r.status, 400, `${bad}: ${r.text}`);
      assert.equal(errorCode(r), "invalid_request");
    }
    // An oracle for guesses at secret values: its own privileged action, not granted by a policy.
    const refused = await send("POST", "/v1/audit/hash", { value }, nobody);
    assert.equal(refused.status, 403, refused.text);
    assert.equal(recordsOf(refused.id)[0]?.outcome, "denied");
    const policy = await send("PUT", "/v1/policies/hasher", {
      rules: [{ resource: "audit", actions: ["audit:hash"] }],
    });
    assert.equal(policy.status, 400, policy.text);
    assert.match(policy.text, /privileged/);
  });

  test("the audit HMAC of the chain label, asked of the route, is not the chain key", async () => {
    const label = "custos-audit-chain:v1";
    const hashed = await send("POST", "/v1/audit/hash", { value: label });
    const { hmac } = ok(hashed) as { hmac: string };
    const key = createSecretKey(Buffer.from(hmac.slice(HMAC_PREFIX.length), "hex"));
    // The request's own record is chained under the key: it does not reproduce its hash.
    const [row] = recordsOf(hashed.id) as Array<Row & { hash: string; prev_hash: string; details: string }>;
    assert.ok(row !== undefined);
    const entry = {
      time: String(row.time),
      requestId: String(row.request_id),
      principal: String(row.principal),
      source: String(row.source),
      action: String(row.action),
      resource: String(row.resource),
      outcome: row.outcome as "success",
      errorCode: (row.error_code as string | null) ?? null,
    };
    assert.notEqual(auditRecordHash(row.seq, row.prev_hash, entry, row.details, { key, keyedFrom: 1 }), row.hash);
    // Nor is the record a plain SHA-256 one, so the check above had a keyed hash to miss.
    assert.notEqual(auditRecordHash(row.seq, row.prev_hash, entry, row.details), row.hash);
  });

  test("a secret value can't reveal the audit chain key: a record forged with the value's HMAC is named", async () => {
    // Anyone who may write a secret and read the log (an app owner with audit:read, an
    // admin's leaked log) learns the HMAC of any value they choose.
    const label = "custos-audit-chain:v1";
    const put = await send("PUT", "/v1/secrets/data/acme/prod/web/innocent", { value: label });
    assert.equal(put.status, 200, put.text);
    const [record] = ok(await send("GET", `/v1/audit?action=secret.write&resource=secret/acme/prod/web/innocent`))
      .records as Row[];
    const valueHmac = String((record?.details as Json | undefined)?.valueHmac);
    assert.ok(valueHmac.startsWith(HMAC_PREFIX), valueHmac);
    const key = createSecretKey(Buffer.from(valueHmac.slice(HMAC_PREFIX.length), "hex"));
    const before = ok(await send("POST", "/v1/audit/verify"));
    assert.equal(before.ok, true, JSON.stringify(before.problems));
    let reproduced = false;

    await custos.stop();
    const db = new Database(join(custos.dir, "custos.db"));
    try {
      const head = db.prepare("SELECT * FROM audit_log ORDER BY seq DESC LIMIT 1").get() as Row & {
        hash: string;
        prev_hash: string;
        details: string;
      };
      const genuine = {
        time: String(head.time),
        requestId: String(head.request_id),
        principal: String(head.principal),
        source: String(head.source),
        action: String(head.action),
        resource: String(head.resource),
        outcome: head.outcome as "success",
        errorCode: (head.error_code as string | null) ?? null,
      };
      reproduced =
        auditRecordHash(head.seq, head.prev_hash, genuine, head.details, { key, keyedFrom: 1 }) === head.hash;
      const forged = {
        time: new Date().toISOString(),
        requestId: "forged",
        principal: "user:admin",
        source: "127.0.0.1",
        action: "secret.destroy",
        resource: "secret/acme/prod/web/innocent",
        outcome: "success" as const,
        errorCode: null,
        details: { path: "acme/prod/web/innocent", versions: [1] },
      };
      forgeAfter(db, head, forged, { key, keyedFrom: 1 });
    } finally {
      db.close();
    }
    await custos.start();
    const verdict = ok(await send("POST", "/v1/audit/verify")) as { ok: boolean; problems: Json[] };
    assert.equal(
      verdict.ok,
      false,
      `a record forged without the HSM verifies as genuine (the value's HMAC reproduces the newest genuine hash: ${reproduced})`,
    );
  });
});
