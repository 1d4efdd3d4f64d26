import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { type CustosInstance, type HttpAnswer, httpsRaw, startCustos } from "../helpers/custos.js";

type Json = Record<string, unknown>;

/**
 * Authentication and authorisation as an attacker and a Vault user meet them over
 * HTTPS: RFC 6750 bearer syntax and challenges, policy globs, escalation paths
 * through user, group, token and sudo management, and credentials at rest. Oracles:
 * the API's answers, the SQLite database and WAL, the server's log and docs/api.md.
 */
describe("auth conformance over HTTPS", () => {
  let custos: CustosInstance;
  before(async () => {
    // Many logins below: the per-minute login limit is not what these tests are about.
    custos = await startCustos({ auth: { loginAttemptsPerMinute: 1000 } });
    await ok(
      custos.call("PUT", "/v1/policies/user-manager", { rules: [{ resource: "*", actions: ["user:*", "group:*"] }] }),
    );
    await ok(custos.call("PUT", "/v1/policies/everything", { rules: [{ resource: "*", actions: ["*"] }] }));
    await ok(custos.call("PUT", "/v1/policies/own-tokens", { rules: [{ resource: "token/*", actions: ["token:*"] }] }));
  });
  after(async () => {
    await custos?.dispose();
  });

  async function ok(answer: Promise<HttpAnswer>): Promise<Json> {
    const r = await answer;
    assert.ok(r.status >= 200 && r.status < 300, `${r.status}: ${r.text}`);
    return r.body as Json;
  }
  const codeOf = (r: HttpAnswer) => (r.body as { error?: { code?: string } } | null)?.error?.code;
  const send = (path: string, headers: Record<string, string>) =>
    httpsRaw({ port: custos.port, ca: custos.ca, method: "GET", path, headers });

  /** Creates a user with a password and policies, and logs in: the session token. */
  async function userSession(name: string, policies: string[] = [], password = `${name} password 1234`) {
    await ok(custos.call("POST", "/v1/users", { name, password, policies }));
    return login(name, password);
  }
  async function login(username: string, password: string): Promise<string> {
    return (await ok(custos.call("POST", "/v1/auth/login", { username, password }, null))).token as string;
  }
  const whoami = (token: string) => custos.call("GET", "/v1/auth/whoami", undefined, token);
  const sudo = (subject: { user: string } | { group: string }) =>
    ok(custos.call("POST", "/v1/sudo/grants", { ...subject, ttlSeconds: 600, reason: "incident" }));

  describe("RFC 6750 bearer syntax and challenges", () => {
    test('credentials = "Bearer" 1*SP b64token: more than one space still authenticates (RFC 6750 2.1)', async () => {
      const r = await send("/v1/auth/whoami", { authorization: `Bearer  ${custos.adminToken}` });
      assert.equal(r.status, 200, r.text);
    });

    test("a credential of another scheme gets a challenge with no error code (RFC 6750 3.1)", async () => {
      const r = await send("/v1/auth/whoami", { authorization: `Basic ${Buffer.from("admin:pw").toString("base64")}` });
      assert.equal(r.status, 401);
      assert.equal(r.headers["www-authenticate"], 'Bearer realm="custos"');
    });

    test("a valid token lacking the policy gets 403 with an insufficient_scope challenge (RFC 6750 3, 3.1)", async () => {
      const token = (await ok(custos.call("POST", "/v1/auth/tokens", { name: "no-scope", policies: [] })))
        .token as string;
      const r = await send("/v1/users", { authorization: `Bearer ${token}` });
      assert.equal(r.status, 403, r.text);
      assert.match(String(r.headers["www-authenticate"]), /^Bearer realm="custos", error="insufficient_scope"/);
    });
  });

  describe("policy globs", () => {
    test("key/app-a-* reaches neither app-a, nor APP-A-*, nor app-b through dot segments or encoded slashes", async () => {
      for (const name of ["app-a", "APP-A-upper", "app-a-one", "app-b-data"]) {
        await ok(custos.call("POST", "/v1/keys", { name, purpose: "encrypt" }));
      }
      await ok(
        custos.call("PUT", "/v1/policies/glob-a", { rules: [{ resource: "key/app-a-*", actions: ["key:read"] }] }),
      );
      const token = (await ok(custos.call("POST", "/v1/auth/tokens", { name: "glob-a", policies: ["glob-a"] })))
        .token as string;
      assert.equal((await custos.call("GET", "/v1/keys/app-a-one", undefined, token)).status, 200);
      for (const path of [
        "/v1/keys/app-a",
        "/v1/keys/APP-A-upper",
        "/v1/keys/app-a-one%2F..%2Fapp-b-data",
        "/v1/keys/app-a-one/../app-b-data",
        "/v1/keys/app-a-%2e%2e%2fapp-b-data",
        "/v1/keys?prefix=app-",
        "/v1/keys",
      ]) {
        const r = await custos.call("GET", path, undefined, token);
        assert.ok([400, 403, 404].includes(r.status), `${path}: ${r.status} ${r.text}`);
        assert.ok(!r.text.includes("app-b-data") || codeOf(r) !== undefined, `${path} leaked app-b-data`);
      }
      const listed = (await ok(custos.call("GET", "/v1/keys?prefix=app-a-", undefined, token))).keys as Json[];
      assert.deepEqual(
        listed.map((k) => k.name),
        ["app-a-one"],
      );
    });
  });

  describe("escalation", () => {
    test("a non-admin holding every non-privileged action can't reach admin by any management route", async () => {
      await ok(custos.call("POST", "/v1/groups", { name: "admins-group", policies: ["admin"] }));
      const adminTokenId = (await ok(custos.call("GET", "/v1/auth/whoami"))).id as string;
      const token = await userSession("wide", ["everything"]);
      for (const [method, path, body] of [
        ["POST", "/v1/auth/tokens", { name: "up", policies: ["admin"] }],
        ["POST", "/v1/auth/tokens", { name: "up", policies: ["admin"], forUser: false }],
        ["PUT", "/v1/policies/everything", { rules: [{ resource: "*", actions: ["*"] }] }],
        ["POST", "/v1/sudo/grants", { user: "wide", ttlSeconds: 600, reason: "me" }],
        ["PATCH", "/v1/users/wide", { policies: ["everything", "admin"] }],
        ["POST", "/v1/users", { name: "wide-twin", password: "wide twin password", policies: ["admin"] }],
        ["PATCH", "/v1/groups/admins-group", { addMembers: ["wide"] }],
        ["PATCH", "/v1/users/admin", { password: "taken over password" }],
        ["DELETE", "/v1/users/admin", undefined],
        ["DELETE", `/v1/auth/tokens/${adminTokenId}`, undefined],
      ] as const) {
        const r = await custos.call(method, path, body, token);
        assert.equal(r.status, 403, `${method} ${path}: ${r.text}`);
        assert.equal(codeOf(r), "forbidden");
      }
      assert.equal((await whoami(custos.adminToken)).status, 200);
      assert.equal(((await whoami(token)).body as Json).isAdmin, false);
    });

    test("the last enabled admin can't be deleted, disabled or demoted: 409 conflict as documented", async () => {
      for (const [method, body] of [
        ["DELETE", undefined],
        ["PATCH", { disabled: true }],
        ["PATCH", { policies: [] }],
      ] as const) {
        const r = await custos.call(method, "/v1/users/admin", body);
        assert.equal(r.status, 409, `${method} ${JSON.stringify(body)}: ${r.text}`);
        assert.equal(codeOf(r), "conflict");
      }
    });

    test("a user manager can't take over an account that holds sudo admin by resetting its password", async () => {
      const manager = await userSession("um-one", ["user-manager"]);
      await userSession("oncall-one");
      await sudo({ user: "oncall-one" });
      const reset = await custos.call("PATCH", "/v1/users/oncall-one", { password: "now the manager's" }, manager);
      const taken = reset.status === 200 ? await whoami(await login("oncall-one", "now the manager's")) : undefined;
      assert.equal(reset.status, 403, `reset ${reset.status}; then logged in as: ${taken?.text}`);
    });

    test("a group manager can't join a group that holds a sudo admin grant", async () => {
      const manager = await userSession("gm-one", ["user-manager"]);
      await ok(custos.call("POST", "/v1/groups", { name: "oncall-group" }));
      await sudo({ group: "oncall-group" });
      const join = await custos.call("PATCH", "/v1/groups/oncall-group", { addMembers: ["gm-one"] }, manager);
      assert.equal(join.status, 403, `join ${join.status}; then: ${(await whoami(manager)).text}`);
    });

    test("a user manager can't take over an app owner's account and read the app's secrets", async () => {
      await userSession("owner-one");
      await ok(custos.call("POST", "/v1/platform/orgs", { name: "acme" }));
      await ok(custos.call("POST", "/v1/platform/orgs/acme/spaces", { name: "prod" }));
      await ok(
        custos.call("POST", "/v1/platform/orgs/acme/spaces/prod/apps", {
          name: "web",
          owners: { users: ["owner-one"] },
        }),
      );
      await ok(custos.call("PUT", "/v1/secrets/data/acme/prod/web/db-password", { value: "owner-only value" }));
      const manager = await userSession("um-two", ["user-manager"]);
      assert.equal(
        (await custos.call("GET", "/v1/secrets/data/acme/prod/web/db-password", undefined, manager)).status,
        403,
      );
      const reset = await custos.call("PATCH", "/v1/users/owner-one", { password: "now the manager's" }, manager);
      const asOwner = reset.status === 200 ? await login("owner-one", "now the manager's") : undefined;
      const read = asOwner
        ? await custos.call("GET", "/v1/secrets/data/acme/prod/web/db-password", undefined, asOwner)
        : undefined;
      assert.equal(reset.status, 403, `reset ${reset.status}; then read as the owner: ${read?.text}`);
    });

    test("a user or group deleted and made again under its name inherits neither its sudo grant nor its app", async () => {
      await userSession("heir");
      await ok(custos.call("POST", "/v1/groups", { name: "heir-group", members: ["heir"] }));
      await ok(custos.call("POST", "/v1/platform/orgs", { name: "heirs" }));
      await ok(custos.call("POST", "/v1/platform/orgs/heirs/spaces", { name: "prod" }));
      await ok(
        custos.call("POST", "/v1/platform/orgs/heirs/spaces/prod/apps", {
          name: "heirloom",
          owners: { users: ["heir"] },
        }),
      );
      await ok(custos.call("PUT", "/v1/secrets/data/heirs/prod/heirloom/key", { value: "the heir's" }));
      await sudo({ user: "heir" });
      await sudo({ group: "heir-group" });
      await ok(custos.call("DELETE", "/v1/users/heir"));
      await ok(custos.call("DELETE", "/v1/groups/heir-group"));
      const again = await userSession("heir");
      await ok(custos.call("POST", "/v1/groups", { name: "heir-group", members: ["heir"] }));
      const who = (await whoami(again)).body as Json;
      assert.deepEqual([who.isAdmin, who.sudoUntil], [false, null]);
      const read = await custos.call("GET", "/v1/secrets/data/heirs/prod/heirloom/key", undefined, again);
      assert.equal(read.status, 403, read.text);
    });
  });

  describe("sudo", () => {
    test("a token scoped to admin made during sudo stops being admin when the grant is revoked", async () => {
      const session = await userSession("sudo-scoped");
      const grant = await sudo({ user: "sudo-scoped" });
      const made = await ok(custos.call("POST", "/v1/auth/tokens", { name: "during", policies: ["admin"] }, session));
      assert.equal(((await whoami(made.token as string)).body as Json).isAdmin, true);
      await ok(custos.call("DELETE", `/v1/sudo/grants/${grant.id as string}`));
      for (const token of [session, made.token as string]) {
        const r = await custos.call("GET", "/v1/sudo/grants", undefined, token);
        assert.equal(r.status, 403, r.text);
        assert.equal(((await whoami(token)).body as Json).isAdmin, false);
      }
    });

    test("a standalone token minted during sudo doesn't keep admin after the grant is revoked", async () => {
      const session = await userSession("sudo-standalone");
      const grant = await sudo({ user: "sudo-standalone" });
      const made = await custos.call(
        "POST",
        "/v1/auth/tokens",
        { name: "keep", forUser: false, policies: ["admin"] },
        session,
      );
      await ok(custos.call("DELETE", `/v1/sudo/grants/${grant.id as string}`));
      if (made.status === 201) {
        const kept = (made.body as Json).token as string;
        const r = await custos.call("GET", "/v1/sudo/grants", undefined, kept);
        assert.notEqual(r.status, 200, "the standalone token still reads sudo grants after the revocation");
      }
      assert.equal(((await whoami(session)).body as Json).isAdmin, false);
    });
  });

  test("a token's ttlSeconds spans 60 s to 10 years, as documented; beyond either end is a 400 naming the range", async () => {
    const twoYears = 2 * 365 * 86_400;
    const made = await ok(custos.call("POST", "/v1/auth/tokens", { name: "long-lived", ttlSeconds: twoYears }));
    const lifetime = Date.parse(made.expiresAt as string) - Date.now();
    assert.ok(Math.abs(lifetime - twoYears * 1000) < 3_600_000, `expiresAt ${made.expiresAt as string}`);
    for (const ttlSeconds of [59, 10 * 365 * 86_400 + 1]) {
      const r = await custos.call("POST", "/v1/auth/tokens", { name: "out-of-range", ttlSeconds });
      assert.equal(r.status, 400, r.text);
      assert.equal(codeOf(r), "invalid_request");
      assert.match(r.text, /ttlSeconds must be an integer from 60 to 315360000/);
    }
  });

  describe("names and passwords", () => {
    test("user names: bad form 400, taken in any case 409, unknown 404, admin policy built in", async () => {
      const bad = await custos.call("POST", "/v1/users", { name: "Bad Name" });
      assert.equal(bad.status, 400, bad.text);
      assert.equal(codeOf(bad), "invalid_request");
      await ok(custos.call("POST", "/v1/users", { name: "dup-user" }));
      const dup = await custos.call("POST", "/v1/users", { name: "DUP-USER" });
      assert.equal(dup.status, 409, dup.text);
      assert.equal(codeOf(dup), "conflict");
      const unknownPolicy = await custos.call("POST", "/v1/users", { name: "np-user", policies: ["no-such"] });
      assert.equal(unknownPolicy.status, 400, unknownPolicy.text);
      assert.equal((await custos.call("GET", "/v1/users/nobody-here")).status, 404);
      assert.equal(
        (await custos.call("PUT", "/v1/policies/Admin", { rules: [{ resource: "*", actions: ["*"] }] })).status,
        403,
      );
    });

    test("a name with U+212A KELVIN SIGN is refused, not folded into the ASCII k of another account", async () => {
      await ok(custos.call("POST", "/v1/users", { name: "kelvin-probe", password: "kelvin probe password" }));
      const lookalike = "\u212Aelvin-probe";
      const made = await custos.call("POST", "/v1/users", { name: "\u212Aelvin-new" });
      assert.equal(made.status, 400, made.text);
      const read = await custos.call("GET", `/v1/users/${encodeURIComponent(lookalike)}`);
      assert.equal(read.status, 404, read.text);
    });

    test("a password is checked whole: a 1024-byte password with more appended is wrong", async () => {
      const password = "é".repeat(512); // 512 characters, 1024 UTF-8 bytes: the longest accepted
      await ok(custos.call("POST", "/v1/users", { name: "long-pass", password }));
      assert.equal(
        (await custos.call("POST", "/v1/auth/login", { username: "long-pass", password }, null)).status,
        200,
      );
      const wrong = `${password}not the password`;
      const r = await custos.call("POST", "/v1/auth/login", { username: "long-pass", password: wrong }, null);
      assert.equal(r.status, 401, r.text);
    });
  });

  describe("credentials at rest, in listings and in the log", () => {
    test("listings and the audit log carry no token, token hash, password or password hash", async () => {
      const password = "planted listing password";
      const session = await userSession("listed", ["own-tokens"], password);
      const api = await ok(custos.call("POST", "/v1/auth/tokens", { name: "listed-api", policies: [] }, session));
      await sudo({ user: "listed" });
      const secrets = [password, session, api.token as string, custos.adminToken];
      const banned = [...secrets, ...secrets.filter((s) => s.startsWith("cst_")).map(sha256), "$argon2"];
      for (const path of [
        "/v1/users",
        "/v1/users/listed",
        "/v1/groups",
        "/v1/auth/tokens",
        "/v1/sudo/grants",
        "/v1/policies",
        "/v1/audit?limit=1000",
      ]) {
        const text = (await custos.call("GET", path)).text;
        for (const b of banned) assert.ok(!text.includes(b), `${path} carries a credential`);
        assert.ok(!text.includes("cst_"), `${path} carries a token string`);
      }
    });

    test("no password or token in clear in the database, its WAL or the server log; hashes are argon2id per RFC 9106", async () => {
      const password = "planted at-rest password";
      const session = await userSession("at-rest", ["own-tokens"], password);
      await custos.call("POST", "/v1/auth/login", { username: "at-rest", password: `${password}!` }, null);
      const api = await ok(custos.call("POST", "/v1/auth/tokens", { name: "at-rest-api", policies: [] }, session));
      await ok(custos.call("PATCH", "/v1/users/at-rest", { password: `${password} two` }));
      const tokens = [session, api.token as string, custos.adminToken];
      const files = ["custos.db", "custos.db-wal", "custos.db-shm", "server.log"].map((f) => join(custos.dir, f));
      assert.ok(existsSync(files[1] ?? ""), "expected a WAL file");
      const bytes = Buffer.concat(files.filter(existsSync).map((f) => readFileSync(f)));
      for (const secret of [
        password,
        `${password}!`,
        `${password} two`,
        ...tokens,
        ...tokens.map((t) => t.slice(21)),
      ]) {
        assert.equal(bytes.indexOf(secret), -1, "a credential is in clear at rest");
      }
      assert.notEqual(bytes.indexOf(sha256(api.token as string)), -1, "the scan should see the token hash");
      const db = new Database(join(custos.dir, "custos.db"), { readonly: true });
      try {
        const rows = db.prepare("SELECT password_hash FROM users WHERE password_hash IS NOT NULL").all() as {
          password_hash: string;
        }[];
        assert.ok(rows.length > 0);
        for (const { password_hash } of rows) {
          // RFC 9106 4, second recommended option: argon2id, t=3, p=4, m=64 MiB, 128-bit salt, 256-bit tag.
          const m = /^\$argon2id\$v=19\$(?<params>[^$]+)\$(?<salt>[A-Za-z0-9+/]+)\$(?<tag>[A-Za-z0-9+/]+)$/.exec(
            password_hash,
          );
          assert.ok(m?.groups, password_hash.slice(0, 30));
          const params = Object.fromEntries(m.groups.params?.split(",").map((kv) => kv.split("=")) ?? []);
          assert.deepEqual(params, { m: "65536", t: "3", p: "4" });
          assert.equal(Buffer.from(m.groups.salt ?? "", "base64").length, 16);
          assert.equal(Buffer.from(m.groups.tag ?? "", "base64").length, 32);
        }
      } finally {
        db.close();
      }
    });
  });
});

function sha256(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}
