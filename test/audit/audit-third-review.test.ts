/**
 * Third review of the audit log as an admin uses it: the record each kind of request
 * leaves (served, refused, failed, unauthenticated), reading the log (filters, bounds,
 * paging while it grows, the CLI), what never reaches it, `custos audit hash` finding
 * the write that set a value, and `custos audit verify` over a log edited directly in
 * SQLite. Held to README.md and docs/api.md. Oracles: the SQLite file read directly
 * (better-sqlite3), the answers' own request ids and messages, the CLI's exit codes,
 * the database's stored credentials, and the checkpoint key's own name and id.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import type { IncomingHttpHeaders } from "node:http";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import type { AuditRow as Row } from "../../src/store/sqlite/rows.js";
import { type CustosInstance, httpsRaw, startCustos } from "../helpers/custos.js";
import { freePort } from "../helpers/ports.js";
import { unplugToken } from "../helpers/softhsm.js";
import { waitFor } from "../helpers/wait.js";

type Json = Record<string, unknown>;
/** A record as `GET /v1/audit` answers it. */
interface ApiRecord {
  seq: number;
  time: string;
  requestId: string;
  principal: string;
  source: string;
  action: string;
  resource: string;
  outcome: string;
  errorCode: string | null;
  details: Json;
}
interface Answer {
  status: number;
  id: string;
  body: unknown;
  text: string;
  headers: IncomingHttpHeaders;
}
interface Problem {
  seq: number;
  kind: string;
  message: string;
}

const ROW_COLUMNS = [
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
] as const;

/** Checkpoints are taken after this many records (README: `audit.checkpointEvery`). */
const CHECKPOINT_EVERY = 25;

describe("the audit log as an admin uses it, third review", () => {
  let custos: CustosInstance;
  /** A standalone token without policies: may do nothing. */
  let nobody: string;
  const tag = randomBytes(5).toString("hex");

  /** One request as sent; `bearer` undefined means the admin's token, null none. */
  async function send(
    method: string,
    path: string,
    o: { body?: unknown; raw?: string; bearer?: string | null; headers?: Record<string, string> } = {},
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
        ...o.headers,
      },
      body: data,
    });
    return { status: r.status, id: String(r.headers["x-request-id"]), body: r.body, text: r.text, headers: r.headers };
  }

  function expect(r: Answer, status: number): Json {
    assert.equal(r.status, status, r.text.slice(0, 300));
    return r.body as Json;
  }

  const query = <T>(sql: string, ...params: unknown[]): T[] => custos.query<T>(sql, ...params);
  const recordsOf = (requestId: string) => query<Row>("SELECT * FROM audit_log WHERE request_id = ?", requestId);
  const head = (): number => query<{ m: number | null }>("SELECT max(seq) AS m FROM audit_log")[0]?.m ?? 0;
  const setting = (name: string): string =>
    query<{ value: string }>("SELECT value FROM settings WHERE name = ?", name)[0]?.value ?? "";

  /** The one record a request left. */
  function recordOf(r: Answer, what: string): Row {
    const rows = recordsOf(r.id);
    assert.equal(rows.length, 1, `${what}: ${rows.length} records for request ${r.id}: ${JSON.stringify(rows)}`);
    return rows[0] as Row;
  }

  async function listing(q: string): Promise<ApiRecord[]> {
    const r = await send("GET", `/v1/audit${q === "" ? "" : `?${q}`}`);
    return expect(r, 200).records as ApiRecord[];
  }

  /** `custos audit verify --json`: its exit code and problems. */
  function verify(): { status: number; problems: Problem[]; report: Json; stdout: string } {
    const r = custos.cli(["--json", "audit", "verify"]);
    let report: Json = {};
    try {
      report = JSON.parse(r.stdout) as Json;
    } catch {
      assert.fail(`audit verify printed no JSON: ${r.stdout}${r.stderr}`);
    }
    return { status: r.status, problems: (report.problems ?? []) as Problem[], report, stdout: r.stdout };
  }

  /** A writable connection to the live database, as someone holding the file has. */
  function openDb(): Database.Database {
    const db = new Database(join(custos.dir, "custos.db"));
    db.pragma("busy_timeout = 10000");
    return db;
  }
  const rowAt = (db: Database.Database, seq: number) =>
    db.prepare("SELECT * FROM audit_log WHERE seq = ?").get(seq) as Row;
  const putRow = (db: Database.Database, seq: number, r: Row) =>
    db
      .prepare(`UPDATE audit_log SET ${ROW_COLUMNS.map((c) => `${c} = @${c}`).join(", ")} WHERE seq = @seq`)
      .run({ ...r, seq });

  before(async () => {
    // No timer checkpoints during the run: the count is the only trigger the cadence test sees.
    custos = await startCustos({
      audit: { checkpointEvery: CHECKPOINT_EVERY, checkpointIntervalMs: 3_600_000 },
      hsm: { operationTimeoutMs: 1500 },
    });
    nobody = expect(
      await send("POST", "/v1/auth/tokens", { body: { name: "nobody", policies: [], forUser: false } }),
      201,
    ).token as string;
    expect(await send("POST", "/v1/keys", { body: { name: "enc", purpose: "encrypt" } }), 201);
    expect(await send("POST", "/v1/keys", { body: { name: "signer", purpose: "sign" } }), 201);
    expect(await send("POST", "/v1/users", { body: { name: "auditee", password: `auditee-pw-${tag}-long` } }), 201);
  });
  after(async () => {
    await custos?.dispose();
  });

  // ---- what each request leaves --------------------------------------------------------

  test("each kind of request leaves one record: its principal, the client's address, outcome and the id it answered", async () => {
    const whoami = expect(await send("GET", "/v1/auth/whoami"), 200);
    const adminPrincipal = `token:${String(whoami.id)}`;
    const login = expect(
      await send("POST", "/v1/auth/login", {
        body: { username: "auditee", password: `auditee-pw-${tag}-long` },
        bearer: null,
      }),
      200,
    );
    const session = String(login.token);
    const revocable = expect(
      await send("POST", "/v1/auth/tokens", { body: { name: "revocable", policies: [], forUser: false } }),
      201,
    );
    expect(await send("DELETE", `/v1/auth/tokens/${String(revocable.id)}`), 200);

    // A client may claim another request id and another address: neither is taken.
    const spoof = { "x-request-id": `spoofed-${tag}`, "x-forwarded-for": "203.0.113.7", "x-real-ip": "203.0.113.8" };
    const cases: Array<[string, () => Promise<Answer>, number, string, string, string, string | null]> = [
      [
        "admin lists keys",
        () => send("GET", "/v1/keys", { headers: spoof }),
        200,
        adminPrincipal,
        "success",
        "key.read",
        null,
      ],
      ["admin HEAD", () => send("HEAD", "/v1/keys"), 200, adminPrincipal, "success", "key.read", null],
      [
        "session whoami",
        () => send("GET", "/v1/auth/whoami", { bearer: session }),
        200,
        "user:auditee",
        "success",
        "auth.whoami",
        null,
      ],
      [
        "session refused",
        () => send("GET", "/v1/keys/enc", { bearer: session }),
        403,
        "user:auditee",
        "denied",
        "key.read",
        "forbidden",
      ],
      [
        "no token",
        () => send("GET", "/v1/keys", { bearer: null, headers: spoof }),
        401,
        "anonymous",
        "denied",
        "",
        "unauthenticated",
      ],
      [
        "unknown token",
        () => send("GET", "/v1/keys", { bearer: `cst_unknown${tag}` }),
        401,
        "anonymous",
        "denied",
        "",
        "unauthenticated",
      ],
      [
        "revoked token",
        () => send("GET", "/v1/keys", { bearer: String(revocable.token) }),
        401,
        "anonymous",
        "denied",
        "",
        "unauthenticated",
      ],
      [
        "public route",
        () => send("GET", "/v1/health", { bearer: null }),
        200,
        "anonymous",
        "success",
        "health.read",
        null,
      ],
      ["no such key", () => send("GET", "/v1/keys/absent"), 404, adminPrincipal, "failure", "key.read", "not_found"],
      [
        "body too large",
        () => send("POST", "/v1/keys/enc/encrypt", { raw: JSON.stringify({ plaintext: "A".repeat(1_100_000) }) }),
        413,
        adminPrincipal,
        "failure",
        "",
        "payload_too_large",
      ],
    ];
    const ids = new Set<string>();
    for (const [what, call, status, principal, outcome, action, code] of cases) {
      const before = new Date().toISOString();
      const r = await call();
      const afterwards = new Date().toISOString();
      assert.equal(r.status, status, `${what}: ${r.text.slice(0, 200)}`);
      assert.match(
        r.id,
        /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/,
        `${what}: request id ${r.id}`,
      );
      assert.ok(!ids.has(r.id), `${what}: request id ${r.id} answered twice`);
      ids.add(r.id);
      const row = recordOf(r, what);
      assert.deepEqual(
        [row.principal, row.source, row.outcome, row.error_code],
        [principal, "127.0.0.1", outcome, code],
        what,
      );
      if (action !== "") assert.equal(row.action, action, what);
      assert.match(row.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, what);
      assert.ok(row.time >= before && row.time <= afterwards, `${what}: recorded at ${row.time}, sent ${before}`);
      assert.ok(!row.details.includes(`spoofed-${tag}`) && !row.details.includes("203.0.113."), what);
    }
    assert.deepEqual(recordsOf(`spoofed-${tag}`), [], "the client's own request id became a record's");
  });

  test("a 5xx answer (HSM unplugged) is one failure record under the request id its message names", async () => {
    const plugBack = unplugToken(custos.token.label);
    let signed: Answer;
    let health: Answer;
    try {
      // A key's cached handle is checked against the token at least once a second: the outage shows by then.
      signed = await send("POST", "/v1/keys/signer/sign", { body: { message: "aGVsbG8=" } });
      for (let i = 0; i < 150 && signed.status === 200; i++) {
        await new Promise((r) => setTimeout(r, 200));
        signed = await send("POST", "/v1/keys/signer/sign", { body: { message: "aGVsbG8=" } });
      }
      health = await send("GET", "/v1/health", { bearer: null });
    } finally {
      plugBack();
    }
    assert.equal(signed.status, 503, signed.text);
    const error = (signed.body as { error: { code: string; message: string } }).error;
    assert.equal(error.code, "hsm_unavailable");
    // docs/api.md: a 5xx message names the request id, whose server log line has the rest.
    assert.ok(error.message.includes(signed.id), `${error.message} does not name ${signed.id}`);
    const row = recordOf(signed, "sign during the outage");
    assert.deepEqual(
      [row.principal.startsWith("token:"), row.action, row.resource, row.outcome, row.error_code],
      [true, "key.sign", "key/signer", "failure", "hsm_unavailable"],
    );
    assert.equal(health.status, 503, health.text);
    const healthRow = recordOf(health, "health during the outage");
    assert.deepEqual([healthRow.action, healthRow.outcome], ["health.read", "failure"]);
    let healthy = false;
    for (let i = 0; i < 100 && !healthy; i++) {
      healthy = (await send("GET", "/v1/health", { bearer: null })).status === 200;
      if (!healthy) await new Promise((r) => setTimeout(r, 200));
    }
    assert.ok(healthy, "health returns to ok once the token is back");
    let again = await send("POST", "/v1/keys/signer/sign", { body: { message: "aGVsbG8=" } });
    for (let i = 0; i < 150 && again.status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 200));
      again = await send("POST", "/v1/keys/signer/sign", { body: { message: "aGVsbG8=" } });
    }
    expect(again, 200);
  });

  test("a refused or failed sudo grant or revocation is filed under the resource its success is", async () => {
    const granted = await send("POST", "/v1/sudo/grants", {
      body: { user: "auditee", ttlSeconds: 600, reason: "audit review" },
    });
    const id = String(expect(granted, 201).id);
    assert.equal(recordOf(granted, "grant").resource, "user/auditee");
    const refusedGrant = await send("POST", "/v1/sudo/grants", {
      body: { user: "auditee", ttlSeconds: 600, reason: "audit review" },
      bearer: nobody,
    });
    assert.equal(refusedGrant.status, 403, refusedGrant.text);
    const revoked = await send("DELETE", `/v1/sudo/grants/${id}`);
    expect(revoked, 200);
    const again = await send("DELETE", `/v1/sudo/grants/${id}`);
    assert.equal(again.status, 409, again.text);
    const refusedRevoke = await send("DELETE", `/v1/sudo/grants/${id}`, { bearer: nobody });
    assert.equal(refusedRevoke.status, 403, refusedRevoke.text);
    const seen = [granted, refusedGrant, revoked, again, refusedRevoke].map((r) => {
      const row = recordOf(r, r.id);
      return [row.action, row.resource, row.outcome];
    });
    assert.deepEqual(seen, [
      ["sudo.grant", "user/auditee", "success"],
      ["sudo.grant", "user/auditee", "denied"],
      ["sudo.revoke", `sudo/${id}`, "success"],
      ["sudo.revoke", `sudo/${id}`, "failure"],
      ["sudo.revoke", `sudo/${id}`, "denied"],
    ]);
    // What an auditor asks: everything that happened to this grant.
    const history = await listing(`resource=${encodeURIComponent(`sudo/${id}`)}`);
    assert.deepEqual(
      history.map((r) => r.outcome),
      ["success", "failure", "denied"],
    );
  });

  test("a failed SSH sudo revocation is filed under the resource its success is (ssh/sudo/<org>/<space>/<app>)", async () => {
    expect(await send("POST", "/v1/platform/orgs", { body: { name: "aud" } }), 201);
    expect(await send("POST", "/v1/platform/orgs/aud/spaces", { body: { name: "ops" } }), 201);
    expect(await send("POST", "/v1/platform/orgs/aud/spaces/ops/apps", { body: { name: "web" } }), 201);
    const granted = await send("POST", "/v1/ssh/sudo", {
      body: { org: "aud", space: "ops", app: "web", user: "auditee", ttlSeconds: 600, reason: "audit review" },
    });
    const id = String(expect(granted, 201).id);
    const revoked = await send("DELETE", `/v1/ssh/sudo/${id}`);
    expect(revoked, 200);
    const again = await send("DELETE", `/v1/ssh/sudo/${id}`);
    assert.equal(again.status, 409, again.text);
    const seen = [granted, revoked, again].map((r) => {
      const row = recordOf(r, r.id);
      return [row.action, row.resource, row.outcome];
    });
    assert.deepEqual(seen, [
      ["ssh.sudo.grant", "ssh/sudo/aud/ops/web", "success"],
      ["ssh.sudo.revoke", "ssh/sudo/aud/ops/web", "success"],
      ["ssh.sudo.revoke", "ssh/sudo/aud/ops/web", "failure"],
    ]);
  });

  test("a user named in another case is audited under its stored name: failed logins and refusals are found by resource", async () => {
    // docs/api.md: names are stored in lower case, and a name given in any case finds the same user.
    const wrong = await send("POST", "/v1/auth/login", {
      body: { username: "AUDITEE", password: "not the password, at all" },
      bearer: null,
    });
    assert.equal(wrong.status, 401, wrong.text);
    const taken = await send("POST", "/v1/users", { body: { name: "AUDITEE" } });
    assert.equal(taken.status, 409, taken.text);
    const refused = await send("PATCH", "/v1/users/Auditee", { body: { disabled: true }, bearer: nobody });
    assert.equal(refused.status, 403, refused.text);
    const seen = [wrong, taken, refused].map((r) => {
      const row = recordOf(r, r.id);
      return [row.action, row.resource];
    });
    assert.deepEqual(seen, [
      ["auth.login", "user/auditee"],
      ["user.create", "user/auditee"],
      ["user.update", "user/auditee"],
    ]);
    const attempts = await listing("action=auth.login&resource=user%2Fauditee");
    assert.ok(
      attempts.some((r) => r.requestId === wrong.id),
      "a failed login on auditee is missing from action=auth.login&resource=user/auditee",
    );
  });

  test("a listing's query values are neither echoed nor audited (docs/api.md), the prefix of GET /v1/keys included", async () => {
    const marker = `qvalue${tag}`;
    const listed = await send("GET", `/v1/keys?prefix=${marker}`);
    expect(listed, 200);
    const refused = await send("GET", `/v1/keys?prefix=${marker}`, { bearer: nobody });
    assert.equal(refused.status, 403, refused.text);
    assert.ok(!refused.text.includes(marker), `the refusal echoes the query value: ${refused.text}`);
    for (const r of [listed, refused]) {
      const row = recordOf(r, r.id);
      assert.ok(!JSON.stringify(row).includes(marker), `the query value is in the record: ${JSON.stringify(row)}`);
    }
  });

  // ---- reading the log ------------------------------------------------------------------

  test("the listing's bounds: 100 by default, oldest first from the init record; after= at either end is empty", async () => {
    while (head() < 130) {
      await Promise.all(Array.from({ length: 10 }, () => send("GET", "/v1/health", { bearer: null })));
    }
    const first = await listing("");
    assert.equal(first.length, 100, "docs/api.md: limit defaults to 100");
    assert.deepEqual(
      first.map((r) => r.seq),
      Array.from({ length: 100 }, (_, i) => i + 1),
    );
    assert.equal(first[0]?.action, "custos.init");
    assert.deepEqual(await listing("order=asc&limit=100"), first, "order=asc is the default order");
    const cli = custos.cli(["--json", "audit", "list"]);
    assert.equal(cli.status, 0, cli.stderr);
    assert.equal((JSON.parse(cli.stdout) as { records: ApiRecord[] }).records.length, 100, "the CLI's default");

    const top = head();
    assert.deepEqual(await listing(`after=${top}`), [], "nothing after the head");
    const newest = await listing(`order=desc&limit=1&after=${top + 1}`);
    assert.deepEqual(
      newest.map((r) => r.seq),
      [top],
    );
    assert.deepEqual(await listing("order=desc&after=1"), [], "nothing before record 1");
    assert.deepEqual(
      (await listing("order=desc&after=3")).map((r) => r.seq),
      [2, 1],
    );
    const newestThree = await send("GET", "/v1/audit?order=desc&limit=3");
    const own = recordOf(newestThree, "the newest page").seq;
    assert.deepEqual(
      (expect(newestThree, 200).records as ApiRecord[]).map((r) => r.seq),
      [own - 1, own - 2, own - 3],
      "newest first starts at the head as it is when read (the page's own record comes after it)",
    );
    const max = await listing("after=0&limit=9999");
    assert.ok(max.length >= 130 && max.length <= 9999);
    assert.deepEqual(
      max.map((r) => r.seq),
      Array.from({ length: max.length }, (_, i) => i + 1),
    );
  });

  test("filters are exact: no pattern characters (*, %, _), several at once, with after and order", async () => {
    expect(await send("GET", "/v1/keys"), 200);
    const literal = await listing("resource=key%2F*");
    assert.ok(literal.length >= 1);
    assert.ok(
      literal.every((r) => r.resource === "key/*"),
      "resource=key/* matched more than itself",
    );
    assert.deepEqual(await listing("principal=token%3A%25"), [], "% is not a wildcard");
    assert.deepEqual(await listing("principal=anonymou_"), [], "_ is not a wildcard");
    assert.deepEqual(await listing("action=key.%25"), []);
    const anonymous = await listing("principal=anonymous&limit=9999");
    assert.ok(anonymous.length > 5);
    assert.ok(anonymous.every((r) => r.principal === "anonymous"));
    const direct = query<{ seq: number }>(
      "SELECT seq FROM audit_log WHERE principal = 'anonymous' AND action = 'health.read' ORDER BY seq DESC",
    ).map((r) => r.seq);
    const combined = await listing("principal=anonymous&action=health.read&order=desc&limit=9999");
    assert.deepEqual(
      combined.map((r) => r.seq),
      direct,
    );
    const middle = direct[Math.floor(direct.length / 2)] ?? 0;
    const older = await listing(`principal=anonymous&action=health.read&order=desc&after=${middle}&limit=3`);
    assert.deepEqual(
      older.map((r) => r.seq),
      direct.filter((s) => s < middle).slice(0, 3),
    );
  });

  test("bad listing parameters are invalid_request naming the parameter, each audited once", async () => {
    const cases: Array<[string, string]> = [
      [`principal=${"p".repeat(257)}`, "principal"],
      [`action=${"a".repeat(129)}`, "action"],
      [`resource=${"r".repeat(1025)}`, "resource"],
      ["limit=1&limit=2", "limit"],
      ["after=1&after=2", "after"],
      ["after=", "after"],
      ["limit=", "limit"],
      ["after=1234567890123456", "after"],
      ["after=0x10", "after"],
      ["limit=1e3", "limit"],
      ["limit=99999", "9999"],
      ["order=DESC", "order"],
      ["order=", "order"],
      ["principal=a&Principal=b", "Principal"],
    ];
    for (const [q, named] of cases) {
      const r = await send("GET", `/v1/audit?${q}`);
      assert.equal(r.status, 400, `${q.slice(0, 40)}: ${r.text}`);
      const error = (r.body as { error: { code: string; message: string } }).error;
      assert.equal(error.code, "invalid_request", q.slice(0, 40));
      assert.ok(error.message.includes(named), `${q.slice(0, 40)}: ${error.message}`);
      const row = recordOf(r, q.slice(0, 40));
      assert.deepEqual([row.outcome, row.error_code], ["failure", "invalid_request"], q.slice(0, 40));
    }
  });

  test("paging the whole log oldest first and newest first while writers append: every seq once, none skipped", async () => {
    let writing = true;
    const writer = async (i: number) => {
      let n = 0;
      while (writing) {
        const r =
          n++ % 2 === 0
            ? await send("POST", "/v1/keys/enc/encrypt", { body: { plaintext: "aGVsbG8=" } })
            : await send("PUT", `/v1/secrets/data/shared/paging-${i}`, { body: { value: `v${n}` } });
        assert.equal(r.status, 200, r.text);
      }
    };
    const writers = [0, 1, 2, 3].map(writer);
    try {
      const ascending: number[] = [];
      let cursor = 0;
      for (let pages = 0; pages < 1000; pages++) {
        const page = await listing(`after=${cursor}&limit=37`);
        ascending.push(...page.map((r) => r.seq));
        if (page.length < 37) break;
        cursor = page.at(-1)?.seq ?? cursor;
      }
      assert.deepEqual(
        ascending,
        Array.from({ length: ascending.length }, (_, i) => i + 1),
        "oldest first: a seq skipped or repeated",
      );

      // Checkpoints are taken meanwhile (encrypts count towards checkpointEvery): a verify in between finds nothing wrong.
      for (let i = 0; i < 2; i++) {
        const checked = expect(await send("POST", "/v1/audit/verify"), 200);
        assert.deepEqual([checked.ok, checked.problems], [true, []], JSON.stringify(checked));
      }

      const descending: number[] = [];
      let page = await listing("order=desc&limit=41");
      const top = page[0]?.seq ?? 0;
      assert.ok(top > ascending.length - 1, "the newest page starts at the head");
      while (page.length > 0) {
        descending.push(...page.map((r) => r.seq));
        page = await listing(`order=desc&limit=41&after=${page.at(-1)?.seq}`);
      }
      assert.deepEqual(
        descending,
        Array.from({ length: top }, (_, i) => top - i),
        "newest first: a seq skipped or repeated",
      );
    } finally {
      writing = false;
      await Promise.all(writers);
    }
  });

  test("custos audit list: the documented columns, newest first, control characters made harmless, usage errors", async () => {
    const hostile = `\u001b[2J\u001b]0;owned\u0007x${tag}`;
    const refused = await send("POST", "/v1/auth/login", {
      body: { username: hostile, password: "not the password, at all" },
      bearer: null,
    });
    assert.equal(refused.status, 401, refused.text);
    const seq = recordOf(refused, "hostile login").seq;

    const table = custos.cli(["audit", "list", "--after", String(seq - 1), "--limit", "1"]);
    assert.equal(table.status, 0, table.stderr);
    const [header, line, ...rest] = table.stdout.trimEnd().split("\n");
    assert.deepEqual(header?.trim().split(/\s+/), [
      "seq",
      "time",
      "principal",
      "source",
      "action",
      "resource",
      "outcome",
      "errorCode",
    ]);
    assert.deepEqual(rest, []);
    assert.match(line ?? "", new RegExp(`^${seq}\\s+\\S+\\s+anonymous\\s+127\\.0\\.0\\.1\\s+auth\\.login\\s+`));
    assert.ok(
      !table.stdout.includes("\u001b") && !table.stdout.includes("\u0007"),
      "a control character reached stdout",
    );
    assert.ok(line?.includes(`x${tag}`), line);

    const newest = custos.cli(["--json", "audit", "list", "--desc", "--limit", "3"]);
    assert.equal(newest.status, 0, newest.stderr);
    const seqs = (JSON.parse(newest.stdout) as { records: ApiRecord[] }).records.map((r) => r.seq);
    assert.equal(seqs.length, 3);
    assert.deepEqual(seqs, [seqs[0] ?? 0, (seqs[0] ?? 0) - 1, (seqs[0] ?? 0) - 2]);
    assert.ok((seqs[0] ?? 0) > seq);

    const none = custos.cli(["audit", "list", "--principal", `nobody-at-all-${tag}`]);
    assert.deepEqual([none.status, none.stdout], [0, ""]);
    assert.match(none.stderr, /no results/);
    for (const args of [
      ["--limit", "0"],
      ["--limit", "10000"],
      ["--after", "-1"],
      ["--after", "x"],
    ]) {
      const r = custos.cli(["audit", "list", ...args]);
      assert.equal(r.status, 64, `${args.join(" ")}: ${r.stdout}${r.stderr}`);
    }
  });

  // ---- what never reaches it -----------------------------------------------------------

  test("no secret sent with a refused or failed request reaches a record, the database, its WAL or the log", async () => {
    const planted: Array<[string, Buffer]> = [];
    const plant = (what: string, value: string | Buffer): string => {
      const bytes = Buffer.isBuffer(value) ? value : Buffer.from(value);
      planted.push([what, bytes], [`${what} (base64)`, Buffer.from(bytes.toString("base64"))]);
      return bytes.toString("utf8");
    };
    const b64 = (s: string) => Buffer.from(s).toString("base64");
    plant("a policy-less token", nobody);
    const refusals: Array<[string, () => Promise<Answer>, number]> = [
      [
        "secret value, no right",
        () =>
          send("PUT", "/v1/secrets/data/shared/scan", {
            body: { value: plant("v403", `v403-${tag}`) },
            bearer: nobody,
          }),
        403,
      ],
      [
        "secret value, stale cas",
        () => send("PUT", "/v1/secrets/data/shared/scan", { body: { value: plant("vcas", `vcas-${tag}`), cas: 9 } }),
        409,
      ],
      [
        "secret value, too long",
        () =>
          send("PUT", "/v1/secrets/data/shared/scan", {
            body: { value: plant("vbig", `vbig-${tag}${"x".repeat(33_000)}`) },
          }),
        400,
      ],
      [
        "secret value, unknown member",
        () => send("PUT", "/v1/secrets/data/shared/scan", { body: { value: plant("vextra", `vextra-${tag}`), x: 1 } }),
        400,
      ],
      [
        "secret value, no such app",
        () => send("PUT", "/v1/secrets/data/no/such/app/scan", { body: { value: plant("v404", `v404-${tag}`) } }),
        404,
      ],
      [
        "password, no right",
        () =>
          send("POST", "/v1/users", {
            body: { name: "scan-a", password: plant("p403", `p403-${tag}-long`) },
            bearer: nobody,
          }),
        403,
      ],
      [
        "password, name taken",
        () => send("POST", "/v1/users", { body: { name: "auditee", password: plant("p409", `p409-${tag}-long`) } }),
        409,
      ],
      [
        "password, too short",
        () => send("POST", "/v1/users", { body: { name: "scan-b", password: plant("pshort", `p${tag.slice(0, 6)}`) } }),
        400,
      ],
      [
        "password change, no right",
        () =>
          send("PATCH", "/v1/users/auditee", {
            body: { password: plant("ppatch", `ppatch-${tag}-long`) },
            bearer: nobody,
          }),
        403,
      ],
      [
        "login password over 1,024 characters",
        () =>
          send("POST", "/v1/auth/login", {
            body: { username: "auditee", password: plant("plong", `plong-${tag}${"y".repeat(1100)}`) },
            bearer: null,
          }),
        400,
      ],
      [
        "login with a wrong password",
        () =>
          send("POST", "/v1/auth/login", {
            body: { username: "auditee", password: plant("pwrong", `pwrong-${tag}-long`) },
            bearer: null,
          }),
        401,
      ],
      [
        "plaintext, no right",
        () =>
          send("POST", "/v1/keys/enc/encrypt", {
            body: { plaintext: b64(plant("t403", `t403-${tag}`)) },
            bearer: nobody,
          }),
        403,
      ],
      [
        "plaintext, no such key",
        () => send("POST", "/v1/keys/absent/encrypt", { body: { plaintext: b64(plant("t404", `t404-${tag}`)) } }),
        404,
      ],
      [
        "plaintext, too long",
        () =>
          send("POST", "/v1/keys/enc/encrypt", {
            body: { plaintext: b64(plant("tbig", `tbig-${tag}${"z".repeat(66_000)}`)) },
          }),
        400,
      ],
      [
        "audit hash, no right",
        () => send("POST", "/v1/audit/hash", { body: { value: plant("h403", `h403-${tag}`) }, bearer: nobody }),
        403,
      ],
      [
        "audit hash, too long",
        () => send("POST", "/v1/audit/hash", { body: { value: plant("hbig", `hbig-${tag}${"w".repeat(33_000)}`) } }),
        400,
      ],
      ["audit hash", () => send("POST", "/v1/audit/hash", { body: { value: plant("hok", `hok-${tag}`) } }), 200],
      [
        "a token in a refused request",
        () => send("GET", `/v1/keys/enc?token=${plant("query token", `cst_query${tag}`)}`),
        400,
      ],
    ];
    for (const [what, call, status] of refusals) {
      const r = await call();
      assert.equal(r.status, status, `${what}: ${r.text.slice(0, 200)}`);
      recordOf(r, what);
    }
    // Served batches hand out what must not be kept either.
    const encrypted = await send("POST", "/v1/keys/enc/encrypt", {
      body: { items: [{ plaintext: b64(plant("batch plaintext", `tbatch-${tag}`)) }, { plaintext: "" }] },
    });
    const items = expect(encrypted, 200).items as Array<{ ciphertext?: string }>;
    const opened = await send("POST", "/v1/keys/enc/decrypt", {
      body: { items: [{ ciphertext: items[0]?.ciphertext ?? "" }] },
    });
    expect(opened, 200);
    const keys = await send("POST", "/v1/keys/enc/datakey", { body: { items: [{}, { bytes: 16 }] } });
    for (const item of expect(keys, 200).items as Array<{ plaintext: string }>) {
      plant("batch data key", Buffer.from(item.plaintext, "base64"));
    }
    // What the store keeps to check credentials: token hashes and password hashes.
    const credentials = [
      ...query<{ hash: string }>("SELECT hash FROM tokens").map((r) => r.hash),
      ...query<{ h: string }>("SELECT password_hash AS h FROM users WHERE password_hash IS NOT NULL").map((r) => r.h),
    ];
    assert.ok(credentials.length >= 3);

    const found: string[] = [];
    const files = ["custos.db", "custos.db-wal"].map((f) => join(custos.dir, f)).filter(existsSync);
    for (const file of [...files, custos.logFile]) {
      const bytes = readFileSync(file);
      for (const [what, value] of planted)
        if (bytes.includes(value)) found.push(`${what} in ${file.split("/").at(-1)}`);
    }
    const records = JSON.stringify(await listing("after=0&limit=9999"));
    for (const [what, value] of planted)
      if (records.includes(value.toString("utf8"))) found.push(`${what} in a record`);
    const stored = JSON.stringify(query<Row>("SELECT * FROM audit_log"));
    for (const c of credentials)
      if (stored.includes(c)) found.push(`a stored credential hash in a record: ${c.slice(0, 12)}…`);
    assert.deepEqual(found, []);
  });

  // ---- custos audit hash ---------------------------------------------------------------

  test("custos audit hash finds the write that set a value: piped with CRLF, from a file, generated, at 32 KiB", async () => {
    const value = `find-mé ${tag}`;
    const put = custos.cli(["secret", "put", "shared/hashed"], { input: `${value}\r\n` });
    assert.equal(put.status, 0, put.stderr);
    expect(await send("PUT", "/v1/secrets/data/shared/hashed", { body: { value: `${value}.` } }), 200);

    const piped = custos.cli(["audit", "hash"], { input: `${value}\r\n` });
    assert.equal(piped.status, 0, piped.stderr);
    const hmac = piped.stdout.trim();
    assert.match(hmac, /^hmac-sha256:[0-9a-f]{64}$/);
    const file = join(custos.dir, "known-value.txt");
    writeFileSync(file, value);
    const fromFile = custos.cli(["audit", "hash", "--from-file", file]);
    assert.deepEqual([fromFile.status, fromFile.stdout.trim()], [0, hmac], fromFile.stderr);
    writeFileSync(file, `${value}\n`);
    const asIs = custos.cli(["audit", "hash", "--from-file", file]);
    assert.equal(asIs.status, 0, asIs.stderr);
    assert.notEqual(asIs.stdout.trim(), hmac, "--from-file takes the file as is, newline included");

    const listed = custos.cli([
      "--json",
      "audit",
      "list",
      "--action",
      "secret.write",
      "--resource",
      "secret/shared/hashed",
    ]);
    assert.equal(listed.status, 0, listed.stderr);
    const writes = (JSON.parse(listed.stdout) as { records: ApiRecord[] }).records;
    assert.equal(writes.length, 2);
    const matching = writes.filter((r) => r.details.valueHmac === hmac);
    assert.deepEqual(
      matching.map((r) => r.details.version),
      [1],
      "exactly the write that set the value",
    );

    const generated = await send("POST", "/v1/secrets/generate/shared/hashed-gen", { body: { alphabet: "hex" } });
    expect(generated, 200);
    const read = expect(await send("GET", "/v1/secrets/data/shared/hashed-gen"), 200);
    writeFileSync(file, String(read.value));
    const genHash = custos.cli(["audit", "hash", "--from-file", file]);
    assert.equal(genHash.status, 0, genHash.stderr);
    const genRecord = recordOf(generated, "generate");
    assert.equal((JSON.parse(genRecord.details) as Json).valueHmac, genHash.stdout.trim());

    // The value as a write takes it: 1 byte to 32 KiB of UTF-8, counted in bytes.
    const wide = "é".repeat(16_384);
    const atLimit = await send("POST", "/v1/audit/hash", { body: { value: wide } });
    expect(atLimit, 200);
    const over = await send("POST", "/v1/audit/hash", { body: { value: `${wide}a` } });
    assert.equal(over.status, 400, over.text);
    assert.equal((over.body as { error: { code: string } }).error.code, "invalid_request");
    const hashRecord = recordOf(atLimit, "audit hash");
    assert.deepEqual([hashRecord.action, hashRecord.resource, hashRecord.outcome], ["audit.hash", "audit", "success"]);
    assert.ok(!hashRecord.details.includes("é"), "the hashed value is in the request's record");
  });

  // ---- checkpoints and verification ----------------------------------------------------

  test("a checkpoint follows every checkpointEvery records, also when they are state changes", async () => {
    // README: checkpoints are signed every audit.checkpointEvery records (here 25), every interval and at shutdown.
    for (let i = 0; i < 3 * CHECKPOINT_EVERY; i++) {
      expect(await send("PUT", `/v1/secrets/data/shared/cadence-${i % 5}`, { body: { value: `c${i}` } }), 200);
    }
    const top = head();
    const newestCheckpoint = () =>
      query<{ m: number | null }>("SELECT max(seq) AS m FROM audit_checkpoints")[0]?.m ?? 0;
    try {
      await waitFor(
        "a checkpoint within checkpointEvery of the head",
        () => newestCheckpoint() > top - 2 * CHECKPOINT_EVERY,
      );
    } catch {
      // Reported below with the figures.
    }
    // Twice the setting: a checkpoint runs in the background, and one asked for while it runs may wait for the next record.
    assert.ok(
      newestCheckpoint() > top - 2 * CHECKPOINT_EVERY,
      `the newest checkpoint is at ${newestCheckpoint()}, the head at ${top}, checkpointEvery ${CHECKPOINT_EVERY}`,
    );
  });

  test("custos audit verify exits 0 on an intact log noting its unsigned tail, 1 when refused, 2 when unreachable", async () => {
    const intact = custos.cli(["audit", "verify"]);
    assert.equal(intact.status, 0, intact.stdout + intact.stderr);
    assert.match(intact.stdout, /^ok: \d+ records, \d+ checkpoints? verified$/m);
    // The CLI's verification and this one are two moments: between them the CLI's own request was
    // recorded (one record), and a checkpoint may have run. So the tail seen now is at most one more
    // than the one the CLI noted: a tail the CLI left out would show here as two or more.
    const report = verify();
    assert.equal(report.status, 0);
    const tail = Number(report.report.unsignedTail);
    const note = /^note: the newest (\d+) records? not yet covered by a signed checkpoint$/m.exec(intact.stdout);
    const noted = note === null ? 0 : Number(note[1]);
    assert.ok(tail <= noted + 1, `the CLI noted ${noted} unsigned records; the log has ${tail} a request later`);
    const refused = custos.cli(["audit", "verify"], { token: nobody });
    assert.equal(refused.status, 1, refused.stdout + refused.stderr);
    assert.match(refused.stderr, /forbidden|not allowed/);
    assert.equal(refused.stdout, "");
    const gone = custos.cli(["audit", "verify"], { env: { CUSTOS_ADDR: `https://127.0.0.1:${await freePort()}` } });
    assert.equal(gone.status, 2, gone.stdout + gone.stderr);
  });

  test("verify names each field edited directly in SQLite (request id, source, action, resource, details), exit 1", async () => {
    const db = openDb();
    const seqs = [5, 6, 7, 8, 9];
    const originals = seqs.map((s) => rowAt(db, s));
    try {
      db.exec(`UPDATE audit_log SET request_id = 'another-request' WHERE seq = 5;
        UPDATE audit_log SET source = '198.51.100.1' WHERE seq = 6;
        UPDATE audit_log SET action = 'audit.tampered' WHERE seq = 7;
        UPDATE audit_log SET resource = 'key/elsewhere' WHERE seq = 8;
        UPDATE audit_log SET details = '{}' WHERE seq = 9;`);
      const v = verify();
      assert.equal(v.status, 1, v.stdout);
      assert.deepEqual(
        v.problems.map((p) => [p.seq, p.kind]),
        seqs.map((s) => [s, "edited"]),
        JSON.stringify(v.problems),
      );
      const human = custos.cli(["audit", "verify"]);
      assert.equal(human.status, 1);
      for (const s of seqs) assert.match(human.stdout, new RegExp(`^record ${s}: edited: `, "m"));
    } finally {
      for (const [i, r] of originals.entries()) putRow(db, seqs[i] ?? 0, r);
      db.close();
    }
    const clean = verify();
    assert.deepEqual([clean.status, clean.problems], [0, []], clean.stdout);
  });

  test("verify names records moved round a cycle (10→14→18→10) as reordered, each at its seq", async () => {
    const db = openDb();
    const [a, b, c] = [rowAt(db, 10), rowAt(db, 14), rowAt(db, 18)];
    try {
      putRow(db, 10, c);
      putRow(db, 14, a);
      putRow(db, 18, b);
      const v = verify();
      assert.equal(v.status, 1, v.stdout);
      assert.deepEqual(
        v.problems.map((p) => [p.seq, p.kind]),
        [
          [10, "reordered"],
          [14, "reordered"],
          [18, "reordered"],
        ],
      );
      assert.equal(v.report.ok, false);
    } finally {
      putRow(db, 10, a);
      putRow(db, 14, b);
      putRow(db, 18, c);
      db.close();
    }
    assert.equal(verify().status, 0);
  });

  test("a checkpoint forged with a KMS signing key under the checkpoint key's name is checkpoint_invalid, never truncation", async () => {
    const label = setting("audit.checkpointKey.label");
    const keyId = setting("audit.checkpointKey.id");
    assert.ok(label !== "" && keyId !== "", "the checkpoint key's name and id are in the settings");
    const top = head();
    const forge = async (seq: number, hash: string) => {
      const time = new Date().toISOString();
      // The very bytes a checkpoint signature covers, signed raw (r‖s) by an ECDSA P-256 key anyone may make.
      const message = Buffer.from(`custos-audit-checkpoint:v1:${seq}:${hash}:${time}`);
      const signed = expect(
        await send("POST", "/v1/keys/signer/sign", { body: { message: message.toString("base64") } }),
        200,
      );
      return {
        seq,
        hash,
        time,
        key_label: label,
        key_id: keyId,
        scheme: "ecdsa-p256-sha256",
        signature: signed.signature,
      };
    };
    const genuine = query<Row>("SELECT hash FROM audit_log WHERE seq = 12")[0]?.hash ?? "";
    const forged = [await forge(12, genuine), await forge(top + 500, "ab".repeat(32))];
    const db = openDb();
    try {
      const insert = db.prepare(
        "INSERT INTO audit_checkpoints (seq, hash, time, key_label, key_id, scheme, signature) VALUES (@seq, @hash, @time, @key_label, @key_id, @scheme, @signature)",
      );
      for (const f of forged) insert.run(f);
      const v = verify();
      assert.equal(v.status, 1, v.stdout);
      assert.deepEqual(
        v.problems.map((p) => [p.seq, p.kind]),
        [
          [12, "checkpoint_invalid"],
          [top + 500, "checkpoint_invalid"],
        ],
      );
    } finally {
      db.prepare("DELETE FROM audit_checkpoints WHERE seq IN (?, ?)").run(12, top + 500);
      db.close();
    }
    assert.equal(verify().status, 0);
  });

  /**
   * Stops the server, deletes record `gone` and renumbers every later record down by one
   * (so no seq is missing), restarts and runs `custos audit verify` (JSON and human);
   * then puts every original record and checkpoint back and restarts.
   */
  async function verifyHiddenDeletion(gone: number) {
    await custos.stop();
    const db = openDb();
    const kept = db.prepare("SELECT * FROM audit_log WHERE seq >= ? ORDER BY seq").all(gone) as Json[];
    const checkpoints = db.prepare("SELECT * FROM audit_checkpoints").all() as Json[];
    const last = Number(kept.at(-1)?.seq ?? 0);
    db.prepare("DELETE FROM audit_log WHERE seq = ?").run(gone);
    const renumber = db.prepare("UPDATE audit_log SET seq = ? WHERE seq = ?");
    for (let s = gone + 1; s <= last; s++) renumber.run(s - 1, s);
    db.close();
    try {
      await custos.start();
      return { renumbered: last - gone, v: verify(), human: custos.cli(["audit", "verify"]) };
    } finally {
      await custos.stop();
      // The server wrote on over the cut: its records and checkpoints go, the originals come back.
      const undo = openDb();
      undo.prepare("DELETE FROM audit_log WHERE seq >= ?").run(gone);
      undo.exec("DELETE FROM audit_checkpoints");
      const insert = (table: string, r: Json) => {
        const columns = Object.keys(r);
        undo
          .prepare(`INSERT INTO ${table} (${columns.join(", ")}) VALUES (${columns.map((c) => `@${c}`).join(", ")})`)
          .run(r);
      };
      for (const r of kept) insert("audit_log", r);
      for (const c of checkpoints) insert("audit_checkpoints", c);
      undo.close();
      await custos.start();
    }
  }

  test("a record near the head deleted and the later ones renumbered to hide the gap: verify names that seq deleted, exit 1", async () => {
    const gone = head() - 40;
    const { v, human } = await verifyHiddenDeletion(gone);
    assert.equal(v.status, 1, v.stdout);
    assert.deepEqual(
      v.problems.filter((p) => p.kind !== "checkpoint_mismatch").map((p) => [p.seq, p.kind]),
      [[gone, "deleted"]],
      `one deletion, named once (a checkpoint over the renumbered records may also say so): ${v.stdout}`,
    );
    assert.equal(human.status, 1);
    assert.match(human.stdout, new RegExp(`^record ${gone}: deleted: `, "m"));
    const clean = verify();
    assert.deepEqual([clean.status, clean.problems], [0, []], clean.stdout);
  });

  test("a middle record deleted with more than 300 later records renumbered is still one deletion, not hundreds of edits", async () => {
    while (head() < 340) {
      await Promise.all(Array.from({ length: 10 }, () => send("GET", "/v1/health", { bearer: null })));
    }
    const { v, renumbered } = await verifyHiddenDeletion(5);
    assert.ok(renumbered > 300, `only ${renumbered} records follow record 5`);
    assert.equal(v.status, 1, v.stdout);
    const named = v.problems.filter((p) => p.kind !== "checkpoint_mismatch").map((p) => [p.seq, p.kind]);
    assert.deepEqual(
      named.slice(0, 3),
      [[5, "deleted"]],
      `${named.length} problems: ${JSON.stringify(named.slice(0, 5))}`,
    );
  });

  // Last: it spends the address's login budget.
  test("every refused login is audited as auth.login: a rate-limited one and a malformed one too", async () => {
    const malformed = await send("POST", "/v1/auth/login", { body: { username: "auditee" }, bearer: null });
    assert.equal(malformed.status, 400, malformed.text);
    let limited: Answer | undefined;
    for (let i = 0; i < 12 && limited === undefined; i++) {
      const r = await send("POST", "/v1/auth/login", {
        body: { username: "auditee", password: "guessing, again and again" },
        bearer: null,
      });
      if (r.status === 429) limited = r;
      else assert.equal(r.status, 401, r.text);
    }
    assert.ok(limited, "no login was rate limited");
    const seen = [malformed, limited].map((r) => {
      const row = recordOf(r, r.id);
      return [row.action, row.error_code];
    });
    assert.deepEqual(seen, [
      ["auth.login", "invalid_request"],
      ["auth.login", "rate_limited"],
    ]);
  });
});
