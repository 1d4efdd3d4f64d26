/**
 * Third review of the secrets store over HTTPS and the CLI against a real Custos,
 * held to docs/broker.md, docs/api.md and README.md and to what a Vault KV v2 user
 * expects. Oracles: the SQLite files read directly, the KMS's own public routes
 * (decrypt with the documented encryption context, key metadata), the ciphertext
 * layout of docs/ciphertext-format.md, the audit route's HMAC of a known value, and
 * the server's answers compared with each other.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { parseAsDocumented } from "../helpers/ciphertext.js";
import { type CustosInstance, errorCode, type HttpAnswer, httpsJson, ok, startCustos } from "../helpers/custos.js";
import { waitFor } from "../helpers/wait.js";

type Json = Record<string, unknown>;
type Row = Record<string, unknown> & { seq: number };
type Sent = HttpAnswer & { readonly id: string };

const SECRET_ACTIONS = ["secret:list", "secret:read", "secret:write", "secret:delete", "secret:destroy"] as const;

describe("secrets store, third review", () => {
  let custos: CustosInstance;
  let work: string;
  /** Login sessions of the user who owns web, of the one who owns api and web-admin, and of one who owns nothing. */
  let webOwner: string;
  let apiOwner: string;
  let outsider: string;
  /** A standalone token without policies. */
  let nobody: string;
  /** Standalone tokens each holding exactly one secret action on `secret/acme/prod/web/*`. */
  const only: Record<string, string> = {};

  async function send(method: string, path: string, body?: unknown, bearer: string | null = custos.adminToken) {
    const r = (await httpsJson({ port: custos.port, ca: custos.ca, method, path, body, bearer })) as HttpAnswer & {
      headers: Record<string, unknown>;
    };
    return { status: r.status, body: r.body, text: r.text, id: String(r.headers["x-request-id"]) } as Sent;
  }
  const recordsOf = (requestId: string) =>
    custos.query<Row>("SELECT * FROM audit_log WHERE request_id = ? ORDER BY seq", requestId);
  const detailsOf = (requestId: string): Json => {
    const rows = recordsOf(requestId);
    assert.equal(rows.length, 1, JSON.stringify(rows));
    return JSON.parse(String(rows[0]?.details)) as Json;
  };
  const refused = (r: Sent, status: number, code: string, what = "") => {
    assert.equal(r.status, status, `${what}: ${r.text}`);
    assert.equal(errorCode(r), code, `${what}: ${r.text}`);
  };
  const put = async (path: string, value: string, extra: Json = {}) =>
    ok(await send("PUT", `/v1/secrets/data/${path}`, { value, ...extra })).secret as Json;
  const metadata = async (path: string) => ok(await send("GET", `/v1/secrets/metadata/${path}`)).metadata as Json;
  const versionsOf = async (path: string) =>
    ((await metadata(path)).versions as Json[]).map((v) => [v.version, v.state] as [number, string]);
  const login = async (name: string) => {
    const password = `pw-${name}-${randomBytes(6).toString("hex")}`;
    ok(await send("POST", "/v1/users", { name, password, policies: [] }), 201);
    return ok(await send("POST", "/v1/auth/login", { username: name, password }, null)).token as string;
  };
  const ciphertextOf = (path: string, version: number) =>
    custos.query<{ ciphertext: string | null }>(
      "SELECT ciphertext FROM secret_versions WHERE path = ? AND version = ?",
      path,
      version,
    )[0]?.ciphertext;
  const atRest = () => ["custos.db", "custos.db-wal"].map((n) => join(custos.dir, n)).filter(existsSync);

  before(async () => {
    custos = await startCustos();
    work = mkdtempSync(join(tmpdir(), "custos-secrets-third-"));
    webOwner = await login("web-owner");
    apiOwner = await login("api-owner");
    outsider = await login("outsider");
    ok(await send("POST", "/v1/platform/orgs", { name: "acme" }), 201);
    ok(await send("POST", "/v1/platform/orgs/acme/spaces", { name: "prod" }), 201);
    for (const [name, owner] of [
      ["web", "web-owner"],
      ["api", "api-owner"],
      ["web-admin", "api-owner"],
    ] as const) {
      ok(await send("POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name, owners: { users: [owner] } }), 201);
    }
    nobody = ok(await send("POST", "/v1/auth/tokens", { name: "nobody", policies: [], forUser: false }), 201)
      .token as string;
    for (const action of SECRET_ACTIONS) {
      const policy = `only-${action.split(":")[1]}`;
      ok(
        await send("PUT", `/v1/policies/${policy}`, {
          rules: [{ resource: "secret/acme/prod/web/*", actions: [action] }],
        }),
      );
      only[action] = ok(
        await send("POST", "/v1/auth/tokens", { name: policy, policies: [policy], forUser: false }),
        201,
      ).token as string;
    }
  });
  after(async () => {
    await custos?.dispose();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("the first shared secrets written at once all succeed and make one key secrets.shared, under which all are sealed", async () => {
    const answers = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        send("PUT", `/v1/secrets/data/shared/first/s${i % 6}`, { value: `first-${i}` }),
      ),
    );
    for (const a of answers) assert.equal(a.status, 200, a.text);
    const created = custos.query<{ principal: string }>(
      "SELECT principal FROM audit_log WHERE action = 'key.create' AND resource = 'key/secrets.shared' AND outcome = 'success'",
    );
    assert.equal(created.length, 1);
    const key = ok(await send("GET", "/v1/keys/secrets.shared"));
    assert.deepEqual([key.purpose, key.latestVersion], ["encrypt", 1]);
    const rows = custos.query<{ ciphertext: string }>(
      "SELECT ciphertext FROM secret_versions WHERE path LIKE 'shared/first/%'",
    );
    assert.equal(rows.length, 12);
    for (const r of rows) assert.equal(parseAsDocumented(r.ciphertext).keyId, key.id);
  });

  test("each secrets route needs the one action docs/broker.md names, and that action alone is enough", async () => {
    const p = "acme/prod/web/matrix/x";
    const routes: Array<[string, string, string, unknown, (typeof SECRET_ACTIONS)[number], string]> = [
      ["PUT", "data", p, { value: "matrix-value" }, "secret:write", "secret.write"],
      ["POST", "generate", p, { length: 16 }, "secret:write", "secret.write"],
      ["PATCH", "metadata", p, { customMetadata: { by: "matrix" } }, "secret:write", "secret.metadata.update"],
      ["GET", "data", p, undefined, "secret:read", "secret.read"],
      ["GET", "metadata", p, undefined, "secret:read", "secret.metadata.read"],
      ["POST", "delete", p, { versions: [1] }, "secret:delete", "secret.delete"],
      ["POST", "undelete", p, { versions: [1] }, "secret:delete", "secret.undelete"],
      ["POST", "destroy", p, { versions: [1] }, "secret:destroy", "secret.destroy"],
      ["DELETE", "metadata", p, undefined, "secret:destroy", "secret.metadata.delete"],
      ["GET", "list", "acme/prod/web/matrix", undefined, "secret:list", "secret.list"],
    ];
    const problems: string[] = [];
    for (const [method, kind, path, body, needed, auditAction] of routes) {
      for (const held of SECRET_ACTIONS) {
        // A fresh secret with two live versions before every call, so each route has something to act on.
        await send("DELETE", `/v1/secrets/metadata/${p}`);
        await put(p, "matrix-1");
        await put(p, "matrix-2");
        const r = await send(method, `/v1/secrets/${kind}/${path}`, body, only[held]);
        const what = `${method} ${kind} with only ${held}`;
        const [record] = recordsOf(r.id);
        if (held === needed) {
          if (r.status !== 200) problems.push(`${what}: ${r.status} ${r.text}`);
          else if (record?.outcome !== "success" || record.action !== auditAction) {
            problems.push(`${what}: audited ${record?.action} ${record?.outcome}`);
          }
        } else if (r.status !== 403 || errorCode(r) !== "forbidden") {
          problems.push(`${what}: ${r.status} ${r.text}`);
        } else if (record?.outcome !== "denied" || record.action !== auditAction) {
          problems.push(`${what}: the refusal audited as ${record?.action} ${record?.outcome}`);
        }
      }
    }
    assert.deepEqual(problems, []);
  });

  test("a policy reaches only what its pattern matches: a folder's list needs the trailing slash, grant stays admin's", async () => {
    ok(
      await send("PUT", "/v1/policies/db-folder", {
        rules: [{ resource: "secret/acme/prod/web/db/*", actions: ["secret:*"] }],
      }),
    );
    ok(
      await send("PUT", "/v1/policies/exact-one", {
        rules: [{ resource: "secret/acme/prod/web/exact", actions: ["secret:read", "secret:list"] }],
      }),
    );
    ok(await send("PUT", "/v1/policies/all-secrets", { rules: [{ resource: "secret/*", actions: ["secret:*"] }] }));
    ok(
      await send("PUT", "/v1/policies/upper-case", {
        rules: [{ resource: "secret/acme/prod/web/Public*", actions: ["secret:read"] }],
      }),
    );
    const token = async (policy: string) =>
      ok(await send("POST", "/v1/auth/tokens", { name: policy, policies: [policy], forUser: false }), 201)
        .token as string;
    const db = await token("db-folder");
    const exact = await token("exact-one");
    const all = await token("all-secrets");
    const upper = await token("upper-case");
    await put("acme/prod/web/Public", "upper");
    await put("acme/prod/web/public", "lower");
    await put("acme/prod/web/db/password", "db-password");
    await put("acme/prod/web/dbx", "beside-the-folder");
    await put("acme/prod/web/exact", "exact-value");
    await put("acme/prod/web/exact/below", "below-exact");
    await put("shared/policy/x", "shared-x");

    const expect: Array<[string, string, string, number]> = [
      [db, "GET", "/v1/secrets/data/acme/prod/web/db/password", 200],
      [db, "GET", "/v1/secrets/list/acme/prod/web/db", 200],
      [db, "GET", "/v1/secrets/list/acme/prod/web/db/", 200],
      [db, "GET", "/v1/secrets/data/acme/prod/web/dbx", 403],
      [db, "GET", "/v1/secrets/list/acme/prod/web", 403],
      [exact, "GET", "/v1/secrets/data/acme/prod/web/exact", 200],
      [exact, "GET", "/v1/secrets/data/acme/prod/web/exact/below", 403],
      [exact, "GET", "/v1/secrets/list/acme/prod/web/exact", 403],
      [all, "GET", "/v1/secrets/data/shared/policy/x", 200],
      [all, "GET", "/v1/secrets/list/shared", 200],
      [all, "GET", "/v1/secrets/grants", 200],
      // Names are case-sensitive, and so are patterns.
      [upper, "GET", "/v1/secrets/data/acme/prod/web/Public", 200],
      [upper, "GET", "/v1/secrets/data/acme/prod/web/public", 403],
    ];
    for (const [bearer, method, path, status] of expect) {
      const r = await send(method, path, undefined, bearer);
      assert.equal(r.status, status, `${path}: ${r.text}`);
    }
    // secret:* is every non-privileged secret action: granting stays with admins.
    const grant = await send("PUT", "/v1/secrets/grants/shared/policy/x", { apps: ["acme/prod/web"] }, all);
    refused(grant, 403, "forbidden", "a grant under secret:*");
    assert.equal(recordsOf(grant.id)[0]?.outcome, "denied");
    const naming = await send("PUT", "/v1/policies/granter", {
      rules: [{ resource: "secret/shared/*", actions: ["secret:grant"] }],
    });
    refused(naming, 400, "invalid_request", "a policy naming secret:grant");
    assert.match(naming.text, /privileged/);
  });

  test("owners: everything on their app, nothing on a neighbour whose name starts like theirs, nor on shared", async () => {
    const own = "acme/prod/web/owned/a";
    const neighbour = "acme/prod/web-admin/token";
    await put(neighbour, "web-admin-token");
    await put("shared/owners/x", "shared-owners");
    ok(await send("PUT", "/v1/secrets/grants/shared/owners/x", { apps: ["acme/prod/web"] }));
    const allowed: Array<[string, string, unknown]> = [
      ["PUT", `/v1/secrets/data/${own}`, { value: "owned-1" }],
      ["POST", `/v1/secrets/generate/${own}`, {}],
      ["GET", `/v1/secrets/data/${own}?version=1`, undefined],
      ["PATCH", `/v1/secrets/metadata/${own}`, { maxVersions: 5 }],
      ["POST", `/v1/secrets/delete/${own}`, { versions: [1] }],
      ["POST", `/v1/secrets/undelete/${own}`, { versions: [1] }],
      ["POST", `/v1/secrets/destroy/${own}`, { versions: [1] }],
      ["GET", "/v1/secrets/list/acme/prod/web/owned", undefined],
      ["DELETE", `/v1/secrets/metadata/${own}`, undefined],
    ];
    for (const [method, path, body] of allowed) {
      const r = await send(method, path, body, webOwner);
      assert.equal(r.status, 200, `${method} ${path}: ${r.text}`);
      const [record] = recordsOf(r.id);
      assert.deepEqual([record?.outcome, record?.principal], ["success", "user:web-owner"], `${method} ${path}`);
    }
    const forbidden: Array<[string, string, unknown]> = [
      ["GET", `/v1/secrets/data/${neighbour}`, undefined],
      ["PUT", `/v1/secrets/data/${neighbour}`, { value: "taken-over" }],
      ["GET", `/v1/secrets/metadata/${neighbour}`, undefined],
      ["GET", "/v1/secrets/list/acme/prod/web-admin", undefined],
      ["POST", `/v1/secrets/destroy/${neighbour}`, { versions: [1] }],
      ["GET", "/v1/secrets/data/shared/owners/x", undefined],
      ["GET", "/v1/secrets/list/shared", undefined],
      ["GET", "/v1/secrets/grants", undefined],
      ["PUT", "/v1/secrets/grants/shared/owners/x", { apps: ["acme/prod/web"] }],
      // An app that doesn't exist answers as one that does: no oracle for names.
      ["GET", "/v1/secrets/data/acme/prod/nope/x", undefined],
      ["GET", "/v1/secrets/list/acme/prod/nope", undefined],
    ];
    for (const [method, path, body] of forbidden) {
      for (const bearer of [webOwner, outsider, nobody]) {
        const r = await send(method, path, body, bearer);
        refused(r, 403, "forbidden", `${method} ${path}`);
      }
    }
    assert.equal(ok(await send("GET", `/v1/secrets/data/${neighbour}`)).value, "web-admin-token");
    // The owner of web-admin owns nothing of web: rights follow apps, not how their names begin.
    refused(
      await send("GET", "/v1/secrets/list/acme/prod/web", undefined, apiOwner),
      403,
      "forbidden",
      "web-admin's owner on web",
    );
    assert.equal(ok(await send("GET", `/v1/secrets/data/${neighbour}`, undefined, apiOwner)).value, "web-admin-token");
  });

  test("paths over HTTPS: each malformed one is invalid_request (400) before anything is looked up", async () => {
    const secretPaths = () =>
      custos.query<{ path: string }>("SELECT path FROM secrets ORDER BY path").map((r) => r.path);
    const before = secretPaths();
    const bad = [
      "acme/prod/web",
      "acme/prod/web/",
      "acme/prod/web/a//b",
      "acme/prod/web/a/",
      "acme/prod/web/./a",
      "acme/prod/web/%2e%2e/api/token",
      "acme/prod/web/%252e%252e",
      "acme/prod/web/a%20b",
      "acme/prod/web/a%00b",
      "acme/prod/web/p%C3%A4ss",
      "acme/prod/web/a%2F%2Fb",
      "Acme/prod/web/x",
      "acme/prod/-web/x",
      `acme/prod/web/${"s".repeat(65)}`,
      `acme/prod/web/${Array(9).fill("n").join("/")}`,
      `acme/prod/web/${Array(4).fill("s".repeat(60)).join("/")}/x`,
      "shared",
      "shared/",
      "shared/..",
      `shared/${Array(9).fill("n").join("/")}`,
    ];
    for (const path of bad) {
      for (const [method, route, body] of [
        ["GET", "data", undefined],
        ["PUT", "data", { value: "v" }],
        ["GET", "metadata", undefined],
        ["PATCH", "metadata", { casRequired: true }],
        ["POST", "destroy", { versions: [1] }],
      ] as const) {
        const r = await send(method, `/v1/secrets/${route}/${path}`, body);
        refused(r, 400, "invalid_request", `${method} ${route} ${path}`);
      }
    }
    // Nothing of the above was stored under any spelling.
    assert.deepEqual(secretPaths(), before);
    for (const prefix of ["acme/prod", "acme", "shared/a//b", "acme/prod/web/..", `acme/prod/web/${"x".repeat(250)}`]) {
      refused(await send("GET", `/v1/secrets/list/${prefix}`), 400, "invalid_request", `list ${prefix}`);
    }
    // A well-formed path of an app that doesn't exist is not_found for those who may see it.
    refused(await send("PUT", "/v1/secrets/data/acme/prod/nope/x", { value: "v" }), 404, "not_found", "no app");
    refused(await send("GET", "/v1/secrets/list/acme/prod/nope"), 404, "not_found", "no app");
    refused(await send("PUT", "/v1/secrets/data/acme/nospace/web/x", { value: "v" }), 404, "not_found", "no space");
  });

  test("many writers with the same cas over HTTPS: exactly one wins, the rest are conflict, each audited once", async () => {
    const p = "acme/prod/web/race/cas";
    const tag = randomBytes(4).toString("hex");
    const round = async (cas: number, n: number) => {
      const values = Array.from({ length: n }, (_, i) => `race-${tag}-${cas}-${i}`);
      const answers = await Promise.all(
        values.map((value, i) =>
          i % 4 === 3
            ? send("POST", `/v1/secrets/generate/${p}`, { cas, length: 20 })
            : send("PUT", `/v1/secrets/data/${p}`, { value, cas }),
        ),
      );
      const winners = answers.flatMap((a, i) => (a.status === 200 ? [i] : []));
      assert.equal(winners.length, 1, answers.map((a) => `${a.status} ${a.text}`).join("\n"));
      for (const a of answers) if (a.status !== 200) refused(a, 409, "conflict", `cas ${cas}`);
      for (const a of answers) {
        const rows = recordsOf(a.id);
        assert.equal(rows.length, 1, JSON.stringify(rows));
        assert.deepEqual(
          [rows[0]?.action, rows[0]?.outcome, rows[0]?.error_code],
          a.status === 200 ? ["secret.write", "success", null] : ["secret.write", "failure", "conflict"],
        );
      }
      const winner = winners[0] as number;
      const won = answers[winner] as Sent;
      assert.equal(((won.body as Json).secret as Json).version, cas + 1);
      const read = ok(await send("GET", `/v1/secrets/data/${p}`));
      assert.equal(read.version, cas + 1);
      if (winner % 4 !== 3) assert.equal(read.value, values[winner]);
      // The winner's record carries the HMAC of the value that is now stored, nobody else's.
      const written = detailsOf(won.id).valueHmac;
      assert.equal(ok(await send("POST", "/v1/audit/hash", { value: read.value })).hmac, written);
    };
    await round(0, 16);
    await round(1, 16);
    await round(2, 16);
    assert.deepEqual(await versionsOf(p), [
      [1, "live"],
      [2, "live"],
      [3, "live"],
    ]);
  });

  test("cas while casRequired is set: with no cas every writer is refused, with one exactly one wins", async () => {
    const p = "acme/prod/web/race/required";
    ok(await send("PATCH", `/v1/secrets/metadata/${p}`, { casRequired: true }));
    const without = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        i % 2 === 0
          ? send("PUT", `/v1/secrets/data/${p}`, { value: `no-cas-${i}` })
          : send("POST", `/v1/secrets/generate/${p}`, {}),
      ),
    );
    for (const a of without) refused(a, 400, "invalid_request", "no cas");
    const answers = await Promise.all(
      Array.from({ length: 8 }, (_, i) => send("PUT", `/v1/secrets/data/${p}`, { value: `cas-${i}`, cas: 0 })),
    );
    assert.equal(answers.filter((a) => a.status === 200).length, 1);
    assert.deepEqual(await versionsOf(p), [[1, "live"]]);
  });

  test("soft delete keeps the first deletion time, names several versions, and cas still counts a deleted current version", async () => {
    const p = "acme/prod/web/life/dates";
    for (let i = 1; i <= 4; i++) await put(p, `life-${i}`);
    const first = ok(await send("POST", `/v1/secrets/delete/${p}`, { versions: [1, 3] })).metadata as Json;
    const deletedAt = (first.versions as Json[]).map((v) => v.deletedAt);
    assert.ok(typeof deletedAt[0] === "string" && typeof deletedAt[2] === "string" && deletedAt[1] === null);
    await new Promise((r) => setTimeout(r, 5));
    const again = ok(await send("POST", `/v1/secrets/delete/${p}`, { versions: [1, 2, 3] })).metadata as Json;
    const after = (again.versions as Json[]).map((v) => v.deletedAt);
    assert.equal(after[0], deletedAt[0], "a second delete moved version 1's deletion time");
    assert.equal(after[2], deletedAt[2], "a second delete moved version 3's deletion time");
    assert.equal(typeof after[1], "string");
    // Undeleting a live version changes nothing; destroying a deleted one destroys it, and it stays so.
    const undeleted = ok(await send("POST", `/v1/secrets/undelete/${p}`, { versions: [1, 4] })).metadata as Json;
    assert.deepEqual(
      (undeleted.versions as Json[]).map((v) => v.state),
      ["live", "deleted", "deleted", "live"],
    );
    ok(await send("POST", `/v1/secrets/destroy/${p}`, { versions: [2] }));
    ok(await send("POST", `/v1/secrets/undelete/${p}`, { versions: [2] }));
    assert.deepEqual(await versionsOf(p), [
      [1, "live"],
      [2, "destroyed"],
      [3, "deleted"],
      [4, "live"],
    ]);
    // The current version deleted: KV v2's cas still names it, and the next version follows it.
    ok(await send("POST", `/v1/secrets/delete/${p}`, {}));
    refused(await send("GET", `/v1/secrets/data/${p}`), 404, "not_found", "latest deleted");
    refused(await send("PUT", `/v1/secrets/data/${p}`, { value: "x", cas: 3 }), 409, "conflict", "stale cas");
    assert.equal((await put(p, "life-5", { cas: 4 })).version, 5);
    // One not recorded in a list of several refuses the whole change.
    refused(await send("POST", `/v1/secrets/delete/${p}`, { versions: [5, 9] }), 404, "not_found", "unknown version");
    assert.equal(ok(await send("GET", `/v1/secrets/data/${p}`)).value, "life-5");
  });

  test("lowering maxVersions removes the oldest versions whole: rows, ciphertext in the file and WAL, one audit record", async () => {
    const p = "acme/prod/web/rolling/lowered";
    for (let i = 1; i <= 6; i++) await put(p, `lowered-${i}`);
    ok(await send("POST", `/v1/secrets/delete/${p}`, { versions: [2] }));
    ok(await send("POST", `/v1/secrets/destroy/${p}`, { versions: [3] }));
    const gone = [1, 2, 4].map((v) => ciphertextOf(p, v) as string);
    assert.ok(gone.every((c) => typeof c === "string" && c.length > 40));
    const r = await send("PATCH", `/v1/secrets/metadata/${p}`, { maxVersions: 2 });
    const meta = ok(r).metadata as Json;
    assert.deepEqual(
      (meta.versions as Json[]).map((v) => v.version),
      [5, 6],
    );
    const rows = recordsOf(r.id);
    assert.equal(rows.length, 1);
    assert.equal(rows[0]?.action, "secret.metadata.update");
    assert.deepEqual(JSON.parse(String(rows[0]?.details)).destroyedVersions, [1, 2, 3, 4]);
    assert.deepEqual(
      custos.query<{ version: number }>("SELECT version FROM secret_versions WHERE path = ? ORDER BY version", p),
      [{ version: 5 }, { version: 6 }],
    );
    for (const v of [1, 2, 3, 4]) refused(await send("GET", `/v1/secrets/data/${p}?version=${v}`), 404, "not_found");
    // Raising it again brings nothing back; the next write keeps counting.
    ok(await send("PATCH", `/v1/secrets/metadata/${p}`, { maxVersions: 10 }));
    assert.equal((await put(p, "lowered-7")).version, 7);
    assert.deepEqual(
      (await versionsOf(p)).map(([v]) => v),
      [5, 6, 7],
    );
    const leftovers = () =>
      atRest().flatMap((file) => {
        const bytes = readFileSync(file);
        return gone.filter((c) => bytes.includes(c)).map((c) => `${c.slice(0, 16)}… in ${file}`);
      });
    // A checkpoint a reader blocks is retried with back-off (1 s, 2 s, 4 s, ...): wait for it, generously.
    await waitFor("the pruned ciphertexts to leave the files", () => leftovers().length === 0, 60_000).catch(() => {
      assert.deepEqual(leftovers(), []);
    });
  });

  test("each version is sealed under its own app's key with the path and version as context (docs/ciphertext-format.md)", async () => {
    const web = ok(await send("GET", "/v1/keys/app.acme.prod.web"));
    const api = ok(await send("GET", "/v1/keys/app.acme.prod.api"));
    const p = "acme/prod/web/sealed/db";
    await put(p, "sealed-one");
    await put(p, "sealed-two ✓");
    await put("acme/prod/api/sealed", "api-sealed");
    await put("shared/sealed/x", "shared-sealed");
    const shared = ok(await send("GET", "/v1/keys/secrets.shared"));
    const cases: Array<[string, number, Json, string]> = [
      [p, 1, web, "sealed-one"],
      [p, 2, web, "sealed-two ✓"],
      ["acme/prod/api/sealed", 1, api, "api-sealed"],
      ["shared/sealed/x", 1, shared, "shared-sealed"],
    ];
    for (const [path, version, key, value] of cases) {
      const ciphertext = ciphertextOf(path, version) as string;
      const parsed = parseAsDocumented(ciphertext);
      assert.equal(parsed.keyId, key.id, `${path} v${version} is not under ${key.name}`);
      assert.equal(parsed.version, key.latestVersion);
      assert.equal(parsed.plaintextLength, Buffer.byteLength(value));
      // The KMS itself opens it with exactly that context, and with no other.
      const opened = ok(
        await send("POST", `/v1/keys/${key.name}/decrypt`, {
          ciphertext,
          context: { secret: path, version: String(version) },
        }),
      );
      assert.equal(Buffer.from(opened.plaintext as string, "base64").toString("utf8"), value);
      for (const context of [
        { secret: path, version: String(version + 1) },
        { secret: `${path}x`, version: String(version) },
        {},
      ]) {
        const r = await send("POST", `/v1/keys/${key.name}/decrypt`, { ciphertext, context });
        refused(r, 400, "decryption_failed", JSON.stringify(context));
      }
    }
  });

  test("rotating an app's key: old versions still read, new ones sealed under the new key version", async () => {
    const p = "acme/prod/web/rotated/token";
    await put(p, "before-rotation");
    const rotated = ok(await send("POST", "/v1/keys/app.acme.prod.web/rotate"));
    const latest = rotated.latestVersion as number;
    assert.ok(latest >= 2);
    await put(p, "after-rotation");
    assert.equal(parseAsDocumented(ciphertextOf(p, 2) as string).version, latest);
    assert.equal(parseAsDocumented(ciphertextOf(p, 1) as string).version, latest - 1);
    assert.equal(ok(await send("GET", `/v1/secrets/data/${p}?version=1`)).value, "before-rotation");
    assert.equal(ok(await send("GET", `/v1/secrets/data/${p}`)).value, "after-rotation");
    // Retiring the old key version retires the secret versions sealed under it, with the KMS's own code.
    ok(await send("PATCH", "/v1/keys/app.acme.prod.web", { minDecryptionVersion: latest }));
    const old = await send("GET", `/v1/secrets/data/${p}?version=1`);
    refused(old, 400, "version_too_old", "a version sealed under a retired key version");
    assert.ok(!old.text.includes("before-rotation"));
    assert.equal(ok(await send("GET", `/v1/secrets/data/${p}`)).value, "after-rotation");
  });

  test("a disabled app key, or one pending destruction, answers key_disabled (409) to reads and writes, not to metadata", async () => {
    ok(
      await send("POST", "/v1/platform/orgs/acme/spaces/prod/apps", {
        name: "paused",
        owners: { users: ["web-owner"] },
      }),
      201,
    );
    const p = "acme/prod/paused/token";
    await put(p, "paused-1");
    const key = "/v1/keys/app.acme.prod.paused";
    const check = async (state: string) => {
      for (const [method, path, body] of [
        ["GET", `/v1/secrets/data/${p}`, undefined],
        ["PUT", `/v1/secrets/data/${p}`, { value: "while-off" }],
        ["POST", `/v1/secrets/generate/${p}`, {}],
      ] as const) {
        const r = await send(method, path, body, webOwner);
        refused(r, 409, "key_disabled", `${method} ${path} (${state})`);
        const rows = recordsOf(r.id);
        assert.deepEqual(
          rows.map((row) => [row.outcome, row.error_code]),
          [["failure", "key_disabled"]],
        );
      }
      assert.deepEqual(await versionsOf(p), [[1, "live"]], `a refused write left a version (${state})`);
      ok(await send("GET", `/v1/secrets/metadata/${p}`, undefined, webOwner));
      ok(await send("GET", "/v1/secrets/list/acme/prod/paused", undefined, webOwner));
    };
    ok(await send("PATCH", key, { enabled: false }));
    await check("disabled");
    ok(await send("PATCH", key, { enabled: true }));
    assert.equal(ok(await send("GET", `/v1/secrets/data/${p}`, undefined, webOwner)).value, "paused-1");
    ok(await send("DELETE", `${key}?waitingSeconds=86400`));
    await check("pending destruction");
    ok(await send("POST", `${key}/cancel-destruction`));
    // A cancelled destruction leaves the key disabled (as AWS KMS does): enabled again, all is back.
    ok(await send("PATCH", key, { enabled: true }));
    assert.equal((await put(p, "paused-2")).version, 2);
    assert.equal(ok(await send("GET", `/v1/secrets/data/${p}?version=1`, undefined, webOwner)).value, "paused-1");
  });

  test("a destroyed app key: values answer key_destroyed (410) to reads and writes; metadata, list and destruction still work", async () => {
    ok(
      await send("POST", "/v1/platform/orgs/acme/spaces/prod/apps", {
        name: "shredded",
        owners: { users: ["web-owner"] },
      }),
      201,
    );
    const p = "acme/prod/shredded/token";
    await put(p, "shred-1");
    await put(p, "shred-2");
    await put("acme/prod/shredded/other", "shred-other");
    const ciphertext = ciphertextOf(p, 1) as string;
    ok(await send("DELETE", "/v1/keys/app.acme.prod.shredded?immediate=true"));
    const message = "the key of app acme/prod/shredded was destroyed; its secrets are unrecoverable";
    for (const [method, path, body] of [
      ["GET", `/v1/secrets/data/${p}`, undefined],
      ["GET", `/v1/secrets/data/${p}?version=1`, undefined],
      ["PUT", `/v1/secrets/data/${p}`, { value: "after-shredding" }],
      ["PUT", "/v1/secrets/data/acme/prod/shredded/new", { value: "after-shredding" }],
      ["POST", `/v1/secrets/generate/${p}`, {}],
    ] as const) {
      const r = await send(method, path, body, webOwner);
      assert.equal(r.status, 410, `${method} ${path}: ${r.text}`);
      assert.deepEqual((r.body as Json).error, { code: "key_destroyed", message }, `${method} ${path}`);
      assert.deepEqual(
        recordsOf(r.id).map((row) => [row.outcome, row.error_code]),
        [["failure", "key_destroyed"]],
      );
    }
    assert.deepEqual(await versionsOf(p), [
      [1, "live"],
      [2, "live"],
    ]);
    refused(await send("GET", "/v1/secrets/metadata/acme/prod/shredded/new"), 404, "not_found", "no secret made");
    assert.deepEqual(ok(await send("GET", "/v1/secrets/list/acme/prod/shredded", undefined, webOwner)).keys, [
      "other",
      "token",
    ]);
    // The KMS's own decrypt gives nothing either.
    refused(
      await send("POST", "/v1/keys/app.acme.prod.shredded/decrypt", {
        ciphertext,
        context: { secret: p, version: "1" },
      }),
      400,
      "decryption_failed",
    );
    ok(await send("POST", `/v1/secrets/destroy/${p}`, { versions: [1] }, webOwner));
    ok(await send("DELETE", "/v1/secrets/metadata/acme/prod/shredded/other", undefined, webOwner));
    assert.deepEqual(ok(await send("GET", "/v1/secrets/list/acme/prod/shredded", undefined, webOwner)).keys, ["token"]);
  });

  test("values: controls, NUL, BOM, noncharacters and separators come back as sent with their HMAC; empty, lone surrogates and non-strings are refused", async () => {
    const values: Array<[string, string]> = [
      ["nul", "\u0000"],
      ["nul-inside", "a\u0000b\u0000"],
      ["bom", "\uFEFFleading byte order mark"],
      ["noncharacters", "\uFFFE\uFFFF\u{10FFFF}"],
      ["crlf", "line1\r\nline2\r\n"],
      ["separators", "\u2028\u2029\u0085"],
      ["space", " "],
      ["newline", "\n"],
      ["combining", "e\u0301 \u{1F469}\u200D\u{1F4BB}"],
      ["escapes", "\u001b[31mred\u001b[0m\u0007"],
    ];
    for (const [name, value] of values) {
      const p = `acme/prod/web/values/${name}`;
      await put(p, value);
      const back = ok(await send("GET", `/v1/secrets/data/${p}`));
      assert.ok(back.value === value, `${name}: ${JSON.stringify(back.value)} read back`);
      // The write's HMAC is the HMAC of those very bytes.
      const [record] = custos.query<{ details: string }>(
        "SELECT details FROM audit_log WHERE action = 'secret.write' AND resource = ? ORDER BY seq DESC LIMIT 1",
        `secret/${p}`,
      );
      assert.equal(
        JSON.parse(String(record?.details)).valueHmac,
        ok(await send("POST", "/v1/audit/hash", { value })).hmac,
        name,
      );
    }
    for (const [what, body] of [
      ["empty", '{"value":""}'],
      ["lone high surrogate", '{"value":"a\\ud800"}'],
      ["lone low surrogate", '{"value":"\\udc00b"}'],
      ["reversed pair", '{"value":"\\udc00\\ud800"}'],
      ["null", '{"value":null}'],
      ["number", '{"value":12345}'],
      ["array", '{"value":["x"]}'],
      ["object", '{"value":{"v":"x"}}'],
      ["missing", "{}"],
    ] as const) {
      const r = await send("PUT", "/v1/secrets/data/acme/prod/web/values/refused", body);
      refused(r, 400, "invalid_request", what);
    }
    refused(await send("GET", "/v1/secrets/metadata/acme/prod/web/values/refused"), 404, "not_found", "nothing stored");
  });

  test("CLI: values byte for byte from a file, one newline dropped from stdin, non-UTF-8 and empty input refused (64) before any request", async () => {
    const dir = work;
    const value = `cli-${randomBytes(4).toString("hex")}\uFEFF\r\n\u0000 tail\n\n`;
    const file = join(dir, "value.bin");
    writeFileSync(file, value);
    const put1 = custos.cli(["secret", "put", "acme/prod/web/cli3/file", "--from-file", file], { token: webOwner });
    assert.equal(put1.status, 0, put1.stderr);
    const got = custos.cli(["secret", "get", "acme/prod/web/cli3/file", "--field", "value"], { token: webOwner });
    assert.equal(got.status, 0, got.stderr);
    assert.ok(got.stdoutBytes.equals(Buffer.from(value)), JSON.stringify(got.stdout));

    const stdin = custos.cli(["secret", "put", "acme/prod/web/cli3/stdin"], { input: "two\n\n", token: webOwner });
    assert.equal(stdin.status, 0, stdin.stderr);
    assert.equal(ok(await send("GET", "/v1/secrets/data/acme/prod/web/cli3/stdin")).value, "two\n");

    const latin1 = Buffer.from("caf\xe9 au lait", "latin1");
    const bad = join(dir, "latin1.txt");
    writeFileSync(bad, latin1);
    const empty = join(dir, "empty.txt");
    writeFileSync(empty, "");
    const before = custos.query<{ n: number }>("SELECT count(*) AS n FROM audit_log WHERE action = 'secret.write'")[0]
      ?.n;
    for (const [args, input] of [
      [["--from-file", bad], ""],
      [[], latin1],
      [[], Buffer.from([0xc3])],
      [["--from-file", empty], ""],
      [[], ""],
      [[], "\n"],
      [["--cas", "-1"], "v"],
    ] as const) {
      const r = custos.cli(["secret", "put", "acme/prod/web/cli3/refused", ...args], { input, token: webOwner });
      assert.equal(r.status, 64, `${JSON.stringify(args)} ${JSON.stringify(input)}: ${r.stderr}`);
      assert.ok(!r.stderr.includes("caf"), r.stderr);
    }
    const afterCount = custos.query<{ n: number }>(
      "SELECT count(*) AS n FROM audit_log WHERE action = 'secret.write'",
    )[0]?.n;
    assert.equal(afterCount, before, "a refused input reached the server");
    refused(await send("GET", "/v1/secrets/metadata/acme/prod/web/cli3/refused"), 404, "not_found");
  });

  test("CLI: delete, undelete, destroy and metadata with their exit codes", async () => {
    const p = "acme/prod/web/cli3/life";
    for (let i = 1; i <= 3; i++) await put(p, `life-${i}`);
    const cli = (args: string[], token = webOwner) => custos.cli(["secret", ...args], { token });
    let r = cli(["delete", p, "--versions", "1,2"]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(await versionsOf(p), [
      [1, "deleted"],
      [2, "deleted"],
      [3, "live"],
    ]);
    r = cli(["undelete", p, "--versions", "2", "--versions", "1"]);
    assert.equal(r.status, 0, r.stderr);
    r = cli(["delete", p]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(await versionsOf(p), [
      [1, "live"],
      [2, "live"],
      [3, "deleted"],
    ]);
    r = cli(["metadata", p, "--custom", "team=web", "--custom", "url=a=b", "--max-versions", "2", "--json"]);
    assert.equal(r.status, 0, r.stderr);
    const meta = (JSON.parse(r.stdout) as Json).metadata as Json;
    assert.deepEqual(meta.customMetadata, { team: "web", url: "a=b" });
    assert.deepEqual(
      (meta.versions as Json[]).map((v) => v.version),
      [2, 3],
    );
    // Refusals by the server exit 1, usage errors 64, and neither prints a value.
    for (const [args, status] of [
      [["get", `${p}`, "--version", "1"], 1],
      [["get", "acme/prod/api/nothing"], 1],
      [["get", "acme/prod/web/../api/x"], 1],
      [["put", p, "--cas", "1"], 1],
      [["get", p, "--version", "0"], 64],
      [["destroy", p], 64],
      [["destroy", p, "--versions", "2", "--all"], 64],
      [["metadata", p, "--max-versions", "0"], 64],
      [["metadata", p, "--max-versions", "101"], 64],
      [["metadata", p, "--cas-required", "yes"], 64],
      [["metadata", p, "--custom", "=v"], 64],
      [["undelete", p], 64],
    ] as const) {
      const res = custos.cli(["secret", ...args], { token: webOwner, input: "life-x\n" });
      assert.equal(res.status, status, `${args.join(" ")}: ${res.stderr}`);
      assert.ok(!/life-\d/.test(res.stdout + res.stderr), `${args.join(" ")} printed a value`);
    }
    r = cli(["destroy", p, "--all"]);
    assert.equal(r.status, 0, r.stderr);
    refused(await send("GET", `/v1/secrets/metadata/${p}`), 404, "not_found");
    const list = cli(["list", "acme/prod/web/cli3"]);
    assert.equal(list.status, 0, list.stderr);
    assert.deepEqual(list.stdout.trim().split("\n"), ["file", "stdin"]);
  });

  test("a storm of writes, prunes, deletes and destroys on one secret: versions, rows, ciphertexts and records agree", async () => {
    const p = "acme/prod/web/storm/one";
    ok(await send("PATCH", `/v1/secrets/metadata/${p}`, { maxVersions: 4 }));
    const ops: Array<() => Promise<Sent>> = [];
    for (let i = 0; i < 48; i++) {
      const n = 1 + ((i * 7) % 12);
      switch (i % 6) {
        case 0:
        case 1:
        case 2:
          ops.push(() => send("PUT", `/v1/secrets/data/${p}`, { value: `storm-${i}` }));
          break;
        case 3:
          ops.push(() => send("PATCH", `/v1/secrets/metadata/${p}`, { maxVersions: 2 + (i % 5) }));
          break;
        case 4:
          ops.push(() => send("POST", `/v1/secrets/delete/${p}`, { versions: [n] }));
          break;
        default:
          ops.push(() => send("POST", `/v1/secrets/destroy/${p}`, { versions: [n] }));
      }
    }
    const answers = await Promise.all(ops.map((op) => op()));
    // Which value each version was written with, from the writes' own answers.
    const sentAs = new Map<number, string>();
    answers.forEach((a, i) => {
      const version = ((a.body as Json | null)?.secret as Json | undefined)?.version;
      if (typeof version === "number") sentAs.set(version, `storm-${i}`);
    });
    for (const a of answers) {
      // A named version may have been pruned already: not_found; nothing else may fail.
      assert.ok(a.status === 200 || errorCode(a) === "not_found", a.text);
      assert.equal(recordsOf(a.id).length, 1, `${a.text}: not one record`);
    }
    const records = custos
      .query<{ action: string; outcome: string; details: string }>(
        "SELECT action, outcome, details FROM audit_log WHERE resource = ? ORDER BY seq",
        `secret/${p}`,
      )
      .map((r) => ({ ...r, d: JSON.parse(r.details) as Json }));
    const written = records
      .filter((r) => r.action === "secret.write" && r.outcome === "success")
      .map((r) => r.d.version as number);
    assert.deepEqual(
      written,
      Array.from({ length: 24 }, (_, i) => i + 1),
      "each write is one new version, in order",
    );
    const removed = records.flatMap((r) =>
      r.outcome === "success" ? ((r.d.destroyedVersions as number[]) ?? []) : [],
    );
    assert.equal(new Set(removed).size, removed.length, "a version removed twice");
    const meta = await metadata(p);
    const present = (meta.versions as Json[]).map((v) => v.version as number);
    assert.deepEqual(
      [...present, ...removed].sort((a, b) => a - b),
      written,
      "every version is either kept or listed once as removed",
    );
    assert.ok(present.length <= (meta.maxVersions as number));
    const destroyed = new Set(
      records.flatMap((r) =>
        r.action === "secret.destroy" && r.outcome === "success" ? (r.d.destroyed as number[]) : [],
      ),
    );
    const rows = custos.query<{ version: number; destroyed_at: string | null; ciphertext: string | null }>(
      "SELECT version, destroyed_at, ciphertext FROM secret_versions WHERE path = ? ORDER BY version",
      p,
    );
    assert.deepEqual(
      rows.map((r) => r.version),
      present,
    );
    for (const r of rows) {
      assert.equal(r.destroyed_at !== null, destroyed.has(r.version), `version ${r.version}`);
      assert.equal(r.ciphertext === null, r.destroyed_at !== null, `version ${r.version}`);
      const state = (meta.versions as Json[]).find((v) => v.version === r.version)?.state;
      if (state === "live") {
        const back = ok(await send("GET", `/v1/secrets/data/${p}?version=${r.version}`));
        assert.equal(back.value, sentAs.get(r.version), `version ${r.version} reads back another write's value`);
      }
    }
  });

  test("answers have the documented shapes, never a ciphertext, and reads leave updatedAt alone", async () => {
    const p = "acme/prod/web/shapes/one";
    const texts: string[] = [];
    const keep = (r: Sent) => {
      texts.push(r.text);
      return ok(r);
    };
    const written = keep(await send("PUT", `/v1/secrets/data/${p}`, { value: "shape-1" }));
    assert.deepEqual(Object.keys(written), ["secret"]);
    assert.deepEqual(Object.keys(written.secret as Json).sort(), ["createdAt", "path", "version"]);
    const generated = keep(await send("POST", `/v1/secrets/generate/${p}`, { length: 12 }));
    assert.deepEqual(Object.keys(generated.secret as Json).sort(), ["createdAt", "path", "version"]);
    const read = keep(await send("GET", `/v1/secrets/data/${p}?version=1`));
    assert.deepEqual(Object.keys(read).sort(), ["createdAt", "path", "value", "version"]);
    assert.equal(read.createdAt, (written.secret as Json).createdAt);
    const meta = keep(await send("GET", `/v1/secrets/metadata/${p}`)).metadata as Json;
    assert.deepEqual(Object.keys(meta).sort(), [
      "casRequired",
      "createdAt",
      "currentVersion",
      "customMetadata",
      "maxVersions",
      "path",
      "updatedAt",
      "versions",
    ]);
    for (const v of meta.versions as Json[]) {
      assert.deepEqual(Object.keys(v).sort(), ["createdAt", "deletedAt", "destroyedAt", "state", "version"]);
    }
    assert.deepEqual(
      [meta.currentVersion, meta.maxVersions, meta.casRequired, meta.customMetadata],
      [2, 10, false, {}],
    );
    // Reading, listing and reading metadata change nothing.
    keep(await send("GET", `/v1/secrets/data/${p}`));
    const list = keep(await send("GET", "/v1/secrets/list/acme/prod/web/shapes"));
    assert.deepEqual(list, { prefix: "acme/prod/web/shapes/", keys: ["one"] });
    const again = keep(await send("GET", `/v1/secrets/metadata/${p}`)).metadata as Json;
    assert.equal(again.updatedAt, meta.updatedAt);
    for (const verb of ["delete", "undelete", "destroy"]) {
      const r = keep(await send("POST", `/v1/secrets/${verb}/${p}`, { versions: [1] }));
      assert.deepEqual(Object.keys(r), ["metadata"], verb);
    }
    assert.deepEqual(keep(await send("DELETE", `/v1/secrets/metadata/${p}`)), { deleted: true });
    for (const text of texts) {
      assert.ok(!text.includes("custos:v1:"), `an answer holds a ciphertext: ${text}`);
      assert.doesNotMatch(text, /"(ciphertext|revision|appId|app_id)"/, text);
    }
  });
});

describe("secrets store, third review: the shared key's name and a kill -9", () => {
  let custos: CustosInstance;
  const call = (method: string, path: string, body?: unknown, bearer?: string | null) =>
    custos.call(method, path, body, bearer);

  before(async () => {
    custos = await startCustos();
    ok(await call("POST", "/v1/platform/orgs", { name: "acme" }), 201);
    ok(await call("POST", "/v1/platform/orgs/acme/spaces", { name: "prod" }), 201);
    ok(await call("POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name: "crash" }), 201);
  });
  after(async () => {
    await custos?.dispose();
  });

  test("a user who may only create keys can't take the name secrets.shared and so break every shared secret for good", async () => {
    ok(await call("PUT", "/v1/policies/key-maker", { rules: [{ resource: "key/*", actions: ["key:create"] }] }));
    const maker = ok(
      await call("POST", "/v1/auth/tokens", { name: "maker", policies: ["key-maker"], forUser: false }),
      201,
    ).token as string;
    // Before any shared secret was written, the name is free for anyone allowed to create keys.
    const squat = await call("POST", "/v1/keys", { name: "secrets.shared", purpose: "sign" }, maker);
    assert.equal(squat.status, 400, squat.text);
    const write = await call("PUT", "/v1/secrets/data/shared/ca-bundle", { value: "shared-after-squat" });
    assert.equal(write.status, 200, write.text);
    assert.equal(ok(await call("GET", "/v1/secrets/data/shared/ca-bundle")).value, "shared-after-squat");
    const key = ok(await call("GET", "/v1/keys/secrets.shared"));
    assert.equal(key.purpose, "encrypt", "shared secrets are sealed under a key the maker chose");
  });

  test("a kill -9 amid writes and destroys: every acknowledged change is there, each version has its one record", async () => {
    const acknowledged = new Map<string, string>();
    const destroyedAck = new Set<string>();
    let stop = false;
    let failures = 0;
    const worker = async (w: number) => {
      for (let i = 0; !stop; i++) {
        const path = `acme/prod/crash/w${w}/s${i}`;
        const value = `crash-${w}-${i}-${randomBytes(4).toString("hex")}`;
        try {
          const r = await call("PUT", `/v1/secrets/data/${path}`, { value, cas: 0 });
          if (r.status !== 200) continue;
          acknowledged.set(path, value);
          if (i % 3 === 2) {
            const d = await call("POST", `/v1/secrets/destroy/${path}`, { versions: [1] });
            if (d.status === 200) destroyedAck.add(path);
          }
        } catch {
          failures++;
          return;
        }
      }
    };
    const workers = [0, 1, 2, 3, 4, 5].map(worker);
    while (acknowledged.size < 40) await new Promise((r) => setTimeout(r, 20));
    const ciphertexts = new Map(
      [...acknowledged.keys()].map((p) => [
        p,
        custos.query<{ ciphertext: string | null }>("SELECT ciphertext FROM secret_versions WHERE path = ?", p)[0]
          ?.ciphertext,
      ]),
    );
    await custos.kill9();
    stop = true;
    await Promise.all(workers);
    assert.ok(failures > 0, "the kill landed in the middle of the burst");
    await custos.start();

    for (const [path, value] of acknowledged) {
      const r = await call("GET", `/v1/secrets/data/${path}`);
      if (destroyedAck.has(path)) assert.equal(r.status, 404, `${path}: ${r.text}`);
      else assert.equal(ok(r).value, value, path);
    }
    // Rows and records, one to one: no version without its write's record, no record of a write that isn't there.
    const rows = custos
      .query<{ path: string; version: number }>(
        "SELECT path, version FROM secret_versions WHERE path LIKE 'acme/prod/crash/%' ORDER BY path",
      )
      .map((r) => `${r.path}@${r.version}`);
    const records = custos
      .query<{ details: string }>(
        "SELECT details FROM audit_log WHERE action = 'secret.write' AND outcome = 'success' AND resource LIKE 'secret/acme/prod/crash/%'",
      )
      .map((r) => JSON.parse(r.details) as Json)
      .map((d) => `${d.path}@${d.version}`)
      .sort();
    assert.deepEqual(records, rows);
    const destroyRecords = custos
      .query<{ resource: string }>(
        "SELECT resource FROM audit_log WHERE action = 'secret.destroy' AND outcome = 'success' AND resource LIKE 'secret/acme/prod/crash/%'",
      )
      .map((r) => r.resource.slice("secret/".length))
      .sort();
    const destroyedRows = custos
      .query<{ path: string }>(
        "SELECT path FROM secret_versions WHERE path LIKE 'acme/prod/crash/%' AND destroyed_at IS NOT NULL ORDER BY path",
      )
      .map((r) => r.path);
    assert.deepEqual(destroyRecords, destroyedRows);
    for (const p of destroyedAck) assert.ok(destroyedRows.includes(p), p);
    // What an acknowledged destroy erased stays erased after the crash.
    const files = ["custos.db", "custos.db-wal"].map((n) => join(custos.dir, n)).filter(existsSync);
    for (const p of destroyedAck) {
      const c = ciphertexts.get(p);
      if (typeof c !== "string") continue;
      for (const file of files) assert.ok(!readFileSync(file).includes(c.slice(-40)), `${p} in ${file}`);
    }
    const verify = ok(await call("POST", "/v1/audit/verify"));
    assert.equal(verify.ok, true, JSON.stringify(verify.problems));
  });
});
