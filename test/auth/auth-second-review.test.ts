import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type Actor, auditEntry, systemActor } from "../../src/audit/entry.js";
import { AuthService, buildInitialAdmin, type Principal } from "../../src/auth/index.js";
import { isCustosError } from "../../src/errors/index.js";
import { SqliteStore } from "../../src/store/sqlite/index.js";
import { type CustosInstance, errorCode, type HttpAnswer, httpsRaw, ok, startCustos } from "../helpers/custos.js";

type Json = Record<string, unknown>;

/**
 * A second review of authentication and authorisation, for what a Vault user
 * expects of tokens and policies and the first reviews (service, conformance,
 * authz) leave out: token lifetimes against their parent's, revoke-self, a token's
 * scope against app-owner rights, what a failed bearer token or login gives away,
 * header variants, and login rate limiting.
 */

const dirs: string[] = [];
const stores: SqliteStore[] = [];
after(async () => {
  for (const s of stores) await s.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

interface Env {
  auth: AuthService;
  store: SqliteStore;
  admin: Principal;
  actor: Actor;
  advance(seconds: number): void;
}

/** An initialised store, a clock the test moves, and an AuthService over both. */
async function setup(): Promise<Env> {
  const dir = mkdtempSync(join(tmpdir(), "custos-auth2-"));
  dirs.push(dir);
  const store = await SqliteStore.open(join(dir, "custos.db"));
  stores.push(store);
  let nowMs = Date.parse("2031-06-01T00:00:00.000Z");
  const clock = () => new Date(nowMs);
  const initial = await buildInitialAdmin({ name: "root", clock });
  await store.initialize(
    { settings: {}, policies: initial.policies, admin: initial.admin, adminToken: initial.adminToken },
    auditEntry(systemActor("init"), "custos.init", ""),
  );
  const auth = new AuthService({ store, clock, principalCacheMs: 3_600_000, sessionTtlSeconds: 600 });
  const admin = await auth.authenticate(initial.token.exposeText());
  initial.token.destroy();
  return {
    auth,
    store,
    admin,
    actor: { principal: admin.display, requestId: "r", source: "local" },
    advance: (seconds) => {
      nowMs += seconds * 1000;
    },
  };
}

/** A token made by `parent`, authenticated: its principal and its string. */
async function childOf(env: Env, parent: Principal, input: Parameters<AuthService["createToken"]>[2]) {
  const actor: Actor = { principal: parent.display, requestId: "r", source: "local" };
  const { token, record } = await env.auth.createToken(actor, parent, input);
  const text = token.exposeText();
  token.destroy();
  return { text, record, principal: await env.auth.authenticate(text) };
}

async function isInvalid(env: Env, token: string): Promise<boolean> {
  try {
    await env.auth.authenticate(token);
    return false;
  } catch (e) {
    assert.ok(isCustosError(e) && e.code === "unauthenticated", String(e));
    return true;
  }
}

describe("token lifetimes against the parent's (service, moved clock)", () => {
  test("a token with a 2-minute ttl can't mint a child that outlives it", async () => {
    const env = await setup();
    await env.auth.putPolicy(env.actor, { name: "ci", rules: [{ resource: "token/*", actions: ["token:create"] }] });
    const parent = await childOf(env, env.admin, { name: "ci-job", policies: ["ci"], ttlSeconds: 120 });
    const child = await childOf(env, parent.principal, { name: "ci-child" });
    env.advance(121);
    assert.equal(await isInvalid(env, parent.text), true, "the parent should have expired");
    assert.equal(
      await isInvalid(env, child.text),
      true,
      `child expiresAt ${String(child.record.expiresAt)}, parent's ${String(parent.record.expiresAt)}`,
    );
  });

  test("a standalone token with a ttl can't mint a standalone child that outlives it", async () => {
    const env = await setup();
    await env.auth.putPolicy(env.actor, { name: "agent", rules: [{ resource: "*", actions: ["token:create"] }] });
    const parent = await childOf(env, env.admin, {
      name: "agent",
      forUser: false,
      policies: ["agent"],
      ttlSeconds: 300,
    });
    const child = await childOf(env, parent.principal, {
      name: "agent-copy",
      forUser: false,
      policies: ["agent"],
      ttlSeconds: 10 * 365 * 86_400,
    });
    env.advance(301);
    assert.equal(await isInvalid(env, parent.text), true);
    assert.equal(await isInvalid(env, child.text), true, `child expiresAt ${String(child.record.expiresAt)}`);
  });

  test("a child's expiry is clamped to its parent's: omitted, longer and shorter ttls; none without a parent expiry", async () => {
    const env = await setup();
    const parent = await childOf(env, env.admin, { name: "deploy", ttlSeconds: 600 });
    const omitted = await childOf(env, parent.principal, { name: "omitted" });
    const longer = await childOf(env, parent.principal, { name: "longer", ttlSeconds: 86_400 });
    const shorter = await childOf(env, parent.principal, { name: "shorter", ttlSeconds: 120 });
    assert.equal(parent.record.expiresAt, "2031-06-01T00:10:00.000Z");
    assert.equal(omitted.record.expiresAt, parent.record.expiresAt);
    assert.equal(longer.record.expiresAt, parent.record.expiresAt);
    assert.equal(shorter.record.expiresAt, "2031-06-01T00:02:00.000Z");
    // What the store keeps is what the answer showed.
    assert.equal((await env.store.getToken(longer.record.id))?.expiresAt, parent.record.expiresAt);
    // The admin's own token never expires, so neither need its children.
    assert.equal((await childOf(env, env.admin, { name: "forever" })).record.expiresAt, null);
  });

  test("a login session mints a user-bound API token that outlives it", async () => {
    const env = await setup();
    const password = "session user password";
    await env.auth.createUser(env.actor, { name: "dev", password });
    const anonymous: Actor = { principal: "anonymous", requestId: "r", source: "local" };
    const session = await env.auth.login(anonymous, "dev", password);
    const sessionText = session.token.exposeText();
    session.token.destroy();
    const dev = await env.auth.authenticate(sessionText);
    const api = await childOf(env, dev, { name: "laptop", ttlSeconds: 86_400 });
    const forever = await childOf(env, dev, { name: "forever" });
    assert.equal(api.record.expiresAt, "2031-06-02T00:00:00.000Z");
    assert.equal(forever.record.expiresAt, null);
    env.advance(601);
    assert.equal(await isInvalid(env, sessionText), true, "the session should have expired");
    assert.equal(await isInvalid(env, api.text), false);
    assert.equal(await isInvalid(env, forever.text), false);
  });
});

describe("tokens, headers and login over HTTPS", () => {
  let custos: CustosInstance;
  const LOGIN_LIMIT = 8;
  before(async () => {
    custos = await startCustos({ auth: { loginAttemptsPerMinute: LOGIN_LIMIT } });
  });
  after(async () => {
    await custos?.dispose();
  });

  const send = (path: string, authorization: string) =>
    httpsRaw({ port: custos.port, ca: custos.ca, method: "GET", path, headers: { authorization } });
  const login = (username: string, password: string) =>
    custos.call("POST", "/v1/auth/login", { username, password }, null);
  /** What a client can tell apart in an error answer: status, body and challenge. */
  const visible = (r: HttpAnswer & { headers?: Record<string, unknown> }) => ({
    status: r.status,
    body: r.body,
    challenge: r.headers?.["www-authenticate"],
  });

  test("a token with no policy can revoke itself, and a session can log itself out", async () => {
    const password = "no policy user password";
    ok(await custos.call("POST", "/v1/users", { name: "no-policy", password }), 201);
    const session = ok(await login("no-policy", password));
    const api = ok(await custos.call("POST", "/v1/auth/tokens", { name: "bare", policies: [] }), 201);
    for (const [id, token] of [
      [session.tokenId, session.token],
      [api.id, api.token],
    ] as [string, string][]) {
      const self = await custos.call("DELETE", `/v1/auth/tokens/${id}`, undefined, token);
      assert.equal(self.status, 200, self.text);
      assert.equal((await custos.call("GET", "/v1/auth/whoami", undefined, token)).status, 401);
    }
    const revokes = (ok(await custos.call("GET", "/v1/audit?action=token.revoke&limit=20&order=desc")).records ??
      []) as Json[];
    for (const [id, by] of [
      [session.tokenId, "user:no-policy"],
      [api.id, `token:${api.id as string}`],
    ] as [string, string][]) {
      const record = revokes.find((r) => r.resource === `token/${id}`);
      assert.equal(record?.principal, by, `the revocation of token/${id} is audited`);
    }
  });

  test("a token with no policy revokes its user's other tokens, not another user's nor an unknown id", async () => {
    const password = "two token user password";
    ok(await custos.call("PUT", "/v1/policies/maker", { rules: [{ resource: "token/*", actions: ["token:create"] }] }));
    ok(await custos.call("POST", "/v1/users", { name: "two-tokens", password, policies: ["maker"] }), 201);
    const session = ok(await login("two-tokens", password)).token as string;
    const bare = ok(await custos.call("POST", "/v1/auth/tokens", { name: "bare", policies: [] }, session), 201);
    const other = ok(await custos.call("POST", "/v1/auth/tokens", { name: "other", policies: [] }, session), 201);
    const admins = ok(await custos.call("POST", "/v1/auth/tokens", { name: "admins", policies: [] }), 201);
    const revoke = (id: string) => custos.call("DELETE", `/v1/auth/tokens/${id}`, undefined, bare.token as string);
    assert.equal((await revoke(admins.id as string)).status, 403);
    assert.equal(
      (await revoke("aaaaaaaaaaaaaaaa")).status,
      403,
      "an unknown id is not told apart without token:revoke",
    );
    assert.equal((await custos.call("GET", "/v1/auth/whoami", undefined, admins.token as string)).status, 200);
    ok(await revoke(other.id as string));
    assert.equal((await custos.call("GET", "/v1/auth/whoami", undefined, other.token as string)).status, 401);
    ok(await revoke(bare.id as string));
  });

  test("token:revoke without admin rights is refused alike for another's token and an unknown id", async () => {
    ok(
      await custos.call("PUT", "/v1/policies/revoker", { rules: [{ resource: "token/*", actions: ["token:revoke"] }] }),
    );
    const password = "revoker user password";
    ok(await custos.call("POST", "/v1/users", { name: "revoker", password, policies: ["revoker"] }), 201);
    const revoker = ok(await login("revoker", password)).token as string;
    const target = ok(await custos.call("POST", "/v1/auth/tokens", { name: "target", policies: [] }), 201);
    const answers = [];
    for (const id of [target.id as string, "aaaaaaaaaaaaaaaa"]) {
      const r = await custos.call("DELETE", `/v1/auth/tokens/${id}`, undefined, revoker);
      answers.push([r.status, errorCode(r)]);
    }
    assert.deepEqual(answers, [
      [403, "forbidden"],
      [403, "forbidden"],
    ]);
    assert.equal((await custos.call("GET", "/v1/auth/whoami", undefined, target.token as string)).status, 200);
  });

  test("custos token revoke revokes the caller's own token", async () => {
    const bare = ok(await custos.call("POST", "/v1/auth/tokens", { name: "cli-self", policies: [] }), 201);
    const r = custos.cli(["token", "revoke", bare.id as string], { token: bare.token as string });
    assert.equal(r.status, 0, r.stderr);
    assert.equal((await custos.call("GET", "/v1/auth/whoami", undefined, bare.token as string)).status, 401);
  });

  test("a token's answer shows its expiry clamped to the creating token's", async () => {
    const parent = ok(await custos.call("POST", "/v1/auth/tokens", { name: "short", ttlSeconds: 120 }), 201);
    const child = ok(
      await custos.call("POST", "/v1/auth/tokens", { name: "long", ttlSeconds: 86_400 }, parent.token as string),
      201,
    );
    assert.equal(child.expiresAt, parent.expiresAt);
    const listed = (ok(await custos.call("GET", "/v1/auth/tokens")).tokens as Json[]).find((t) => t.id === child.id);
    assert.equal(listed?.expiresAt, parent.expiresAt);
  });

  test("a wrong secret under a live id, a revoked token and an unknown id all answer alike and leave no trace", async () => {
    const liveId = ok(await custos.call("GET", "/v1/auth/whoami")).id as string;
    const revoked = ok(await custos.call("POST", "/v1/auth/tokens", { name: "to-revoke", policies: [] }), 201);
    ok(await custos.call("DELETE", `/v1/auth/tokens/${revoked.id as string}`));
    const tried = "S".repeat(43);
    const answers = [];
    for (const token of [`cst_${liveId}_${tried}`, `cst_aaaaaaaaaaaaaaaa_${tried}`, revoked.token as string]) {
      answers.push(visible(await send("/v1/auth/whoami", `Bearer ${token}`)));
    }
    assert.deepEqual(answers[0], answers[1]);
    assert.deepEqual(answers[0], answers[2]);
    assert.equal(answers[0]?.status, 401);
    assert.equal(answers[0]?.challenge, 'Bearer realm="custos", error="invalid_token"');
    const records = (ok(await custos.call("GET", "/v1/audit?limit=20&order=desc")).records as Json[]).filter(
      (r) => r.outcome === "denied" && r.action === "GET /v1/auth/whoami",
    );
    assert.deepEqual(
      records.slice(0, 3).map((r) => [r.principal, r.errorCode]),
      Array(3).fill(["anonymous", "unauthenticated"]),
    );
    const trace = JSON.stringify(records) + readFileSync(custos.logFile, "utf8");
    for (const secret of [tried, revoked.token as string, liveId]) assert.ok(!trace.includes(secret), "recorded");
  });

  test("the Bearer scheme in any case and trailing whitespace work; other separators and extra credentials don't", async () => {
    const token = custos.adminToken;
    for (const value of [`bearer ${token}`, `BEARER ${token}`, `BeArEr ${token}`, `Bearer ${token}  `]) {
      const r = await send("/v1/auth/whoami", value);
      assert.equal(r.status, 200, `${JSON.stringify(value.replace(token, "<token>"))}: ${r.text}`);
    }
    for (const value of [
      `Bearer\t${token}`,
      `Bearer ${token} ${token}`,
      `Bearer ${token},`,
      `Bearer=${token}`,
      `Bearer ${token.toUpperCase()}`,
      token,
    ]) {
      const r = await send("/v1/auth/whoami", value);
      assert.equal(r.status, 401, `${JSON.stringify(value.replace(token, "<token>"))}: ${r.text}`);
    }
  });

  test("wrong password, unknown user, disabled user and password-less user get one identical answer", async () => {
    const password = "known user password";
    ok(await custos.call("POST", "/v1/users", { name: "known", password }), 201);
    ok(await custos.call("POST", "/v1/users", { name: "off", password }), 201);
    ok(await custos.call("PATCH", "/v1/users/off", { disabled: true }));
    ok(await custos.call("POST", "/v1/users", { name: "no-pass" }), 201);
    const answers = [];
    for (const [username, pw] of [
      ["known", `${password}!`],
      ["unknown-user", password],
      ["off", password],
      ["no-pass", password],
    ] as const) {
      answers.push(visible(await login(username, pw)));
    }
    for (const a of answers.slice(1)) assert.deepEqual(a, answers[0]);
    assert.equal(answers[0]?.status, 401);
  });

  test("a token its owner scoped to no policy can't act as the app owner; an unscoped one still does", async () => {
    const password = "app owner password";
    const maker = { rules: [{ resource: "token/*", actions: ["token:create"] }] };
    ok(await custos.call("PUT", "/v1/policies/token-maker", maker));
    ok(await custos.call("POST", "/v1/users", { name: "app-owner", password, policies: ["token-maker"] }), 201);
    ok(await custos.call("POST", "/v1/platform/orgs", { name: "scoped" }), 201);
    ok(await custos.call("POST", "/v1/platform/orgs/scoped/spaces", { name: "prod" }), 201);
    const owners = { users: ["app-owner"] };
    ok(await custos.call("POST", "/v1/platform/orgs/scoped/spaces/prod/apps", { name: "web", owners }), 201);
    ok(await custos.call("PUT", "/v1/secrets/data/scoped/prod/web/db", { value: "owner only" }));
    const session = ok(await login("app-owner", password)).token as string;
    const path = "/v1/secrets/data/scoped/prod/web/db";
    assert.equal((await custos.call("GET", path, undefined, session)).status, 200, "the owner's own session reads it");
    const bare = ok(await custos.call("POST", "/v1/auth/tokens", { name: "ci", policies: [] }, session), 201);
    assert.deepEqual(ok(await custos.call("GET", "/v1/auth/whoami", undefined, bare.token as string)).policies, []);
    const read = await custos.call("GET", path, undefined, bare.token as string);
    assert.equal(read.status, 403, `a token scoped to [] read the secret: ${read.text}`);
    const appPath = "/v1/platform/apps/scoped/prod/web";
    assert.equal((await custos.call("GET", appPath, undefined, bare.token as string)).status, 403);
    // A token of the same owner that keeps the user's own rights is the owner still.
    const full = ok(await custos.call("POST", "/v1/auth/tokens", { name: "full" }, session), 201);
    assert.equal(full.policies, null);
    assert.equal(ok(await custos.call("GET", path, undefined, full.token as string)).value, "owner only");
    ok(await custos.call("GET", appPath, undefined, full.token as string));
  });

  // Last: it spends what remains of this minute's login attempts.
  test(`after ${LOGIN_LIMIT} logins in a minute the next is 429 rate_limited, even with the right password`, async () => {
    const password = "limited user password";
    ok(await custos.call("POST", "/v1/users", { name: "limited", password }), 201);
    let tries = 0;
    let r = await login("limited", "wrong password 1234");
    while (r.status === 401 && tries++ < LOGIN_LIMIT) r = await login("limited", "wrong password 1234");
    assert.equal(r.status, 429, r.text);
    const right = await login("limited", password);
    assert.equal(right.status, 429, right.text);
    assert.equal(errorCode(right), "rate_limited");
  });
});
