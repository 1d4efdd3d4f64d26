import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { type Actor, auditEntry, systemActor } from "../../src/audit/entry.js";
import { AuthService, buildInitialAdmin, hashToken, type Principal } from "../../src/auth/index.js";
import { type ErrorCode, isCustosError } from "../../src/errors/index.js";
import { Secret } from "../../src/secret/index.js";
import type { AppRecord } from "../../src/store/index.js";
import { SqliteStore } from "../../src/store/sqlite/index.js";

const ROOT_PASSWORD = "root-password-0123";
const TOKEN_RE = /^cst_[a-z2-7]{16}_[A-Za-z0-9_-]{43}$/;
const dirs: string[] = [];
const stores: SqliteStore[] = [];

after(async () => {
  for (const s of stores) await s.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

interface Env {
  store: SqliteStore;
  auth: AuthService;
  dir: string;
  dbPath: string;
  /** The admin's first token, as a string. */
  adminToken: string;
  admin: Principal;
  actor: Actor;
  advance(seconds: number): void;
}

/** A fresh initialised SqliteStore, a controllable clock, and an AuthService whose caches outlive every test step. */
async function setup(principalCacheMs = 3_600_000): Promise<Env> {
  const dir = mkdtempSync(join(tmpdir(), "custos-auth-"));
  dirs.push(dir);
  const dbPath = join(dir, "custos.db");
  const store = await SqliteStore.open(dbPath);
  stores.push(store);
  let nowMs = Date.parse("2030-01-01T00:00:00.000Z");
  const clock = () => new Date(nowMs);
  const initial = await buildInitialAdmin({ name: "Root", password: Secret.fromString(ROOT_PASSWORD), clock });
  await store.initialize(
    { settings: {}, policies: initial.policies, admin: initial.admin, adminToken: initial.adminToken },
    auditEntry(systemActor("init"), "custos.init", ""),
  );
  const adminToken = initial.token.exposeText();
  initial.token.destroy();
  const auth = new AuthService({ store, clock, principalCacheMs, sessionTtlSeconds: 600 });
  const admin = await auth.authenticate(adminToken);
  return {
    store,
    auth,
    dir,
    dbPath,
    adminToken,
    admin,
    actor: { principal: admin.display, requestId: "req-test", source: "local" },
    advance(seconds: number) {
      nowMs += seconds * 1000;
    },
  };
}

async function rejectsWith(promise: Promise<unknown>, code: ErrorCode, message?: string): Promise<void> {
  await assert.rejects(promise, (e: unknown) => {
    assert.ok(isCustosError(e), `expected CustosError, got ${String(e)}`);
    assert.equal(e.code, code);
    if (message !== undefined) assert.equal(e.message, message);
    return true;
  });
}

function throwsWith(fn: () => unknown, code: ErrorCode, message?: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isCustosError(e));
    assert.equal(e.code, code);
    if (message !== undefined) assert.equal(e.message, message);
    return true;
  });
}

/** Logs `name` in and authenticates the session. */
async function loginAs(env: Env, name: string, password: string): Promise<{ principal: Principal; token: string }> {
  const session = await env.auth.login({ principal: "anonymous", requestId: "r", source: "127.0.0.1" }, name, password);
  const token = session.token.exposeText();
  session.token.destroy();
  return { principal: await env.auth.authenticate(token), token };
}

/** A user with a password and policies, logged in. */
async function userWith(env: Env, name: string, policies: string[]) {
  await env.auth.createUser(env.actor, { name, password: `${name}-password-1234`, policies });
  return loginAs(env, name, `${name}-password-1234`);
}

/**
 * The app `<org>/prod/web` owned by these user and group ids, written straight to
 * the store (its KMS key is not what these tests are about).
 */
async function appOwnedBy(env: Env, org: string, ownerUsers: string[], ownerGroups: string[]): Promise<AppRecord> {
  const at = new Date(0).toISOString();
  const audit = (action: string) => auditEntry(systemActor("test"), action, `org/${org}`);
  await env.store.platform.createOrg({ name: org, createdAt: at }, audit("platform.org.create"));
  await env.store.platform.createSpace({ org, name: "prod", createdAt: at }, audit("platform.space.create"));
  const app: AppRecord = {
    id: randomUUID(),
    org,
    space: "prod",
    name: "web",
    keyName: `app.${org}.prod.web`,
    ownerUsers,
    ownerGroups,
    createdAt: at,
    updatedAt: at,
    revision: 1,
  };
  await env.store.platform.createApp(app, audit("platform.app.create"));
  return app;
}

/** A user holding `user-admin` (every user:* and group:* action on everything), logged in, and the Actor it acts as. */
async function userManager(env: Env, name: string) {
  await env.auth.putPolicy(env.actor, {
    name: "user-admin",
    rules: [{ resource: "*", actions: ["user:*", "group:*"] }],
  });
  const session = await userWith(env, name, ["user-admin"]);
  const actor: Actor = { principal: session.principal.display, requestId: "r", source: "x" };
  return { ...session, actor };
}

const INVALID_TOKEN = "invalid or expired token";
const INVALID_CREDENTIALS = "invalid credentials";

describe("bootstrap", () => {
  test("the initial admin token authenticates as an admin acting for the admin user", async () => {
    const env = await setup();
    assert.match(env.adminToken, TOKEN_RE);
    assert.equal(env.admin.kind, "token");
    assert.equal(env.admin.isAdmin, true);
    assert.deepEqual(env.admin.policies, ["admin"]);
    assert.equal(env.admin.display, `token:${env.admin.tokenId}`);
    const root = await env.auth.getUser("root");
    assert.equal(env.admin.userId, root.id);
    assert.equal((await env.store.getToken(env.admin.tokenId))?.hash, hashToken(env.adminToken));
    env.auth.authorize(env.admin, "audit:verify", "audit");
  });
});

describe("password login", () => {
  test("the right password opens a session that authenticates as the user", async () => {
    const env = await setup();
    await env.auth.createUser(env.actor, { name: "Alice", password: "correct horse battery" });
    const actor: Actor = { principal: "anonymous", requestId: "r1", source: "10.0.0.1" };
    const session = await env.auth.login(actor, "ALICE", "correct horse battery");
    const token = session.token.exposeText();
    assert.match(token, TOKEN_RE);
    assert.equal(token.slice(4, 20), session.tokenId);
    assert.equal(session.expiresAt, new Date(Date.parse("2030-01-01T00:00:00.000Z") + 600_000).toISOString());
    const p = await env.auth.authenticate(token);
    assert.equal(p.kind, "user");
    assert.equal(p.name, "alice");
    assert.equal(p.display, "user:alice");
    assert.equal(p.isAdmin, false);
    assert.equal(p.sudoUntil, null);
    const [record] = await env.store.listAudit({ action: "auth.login" });
    assert.equal(record?.principal, "user:alice");
    assert.equal(record?.details.tokenId, session.tokenId);
  });

  test("wrong password, unknown user, password-less user and disabled user all fail the same way", async () => {
    const env = await setup();
    const a: Actor = { principal: "anonymous", requestId: "r", source: "x" };
    await env.auth.createUser(env.actor, { name: "alice", password: "correct horse battery" });
    await env.auth.createUser(env.actor, { name: "nopass" });
    await env.auth.createUser(env.actor, { name: "dora", password: "dora-password-1234" });
    await env.auth.updateUser(env.actor, "dora", { disabled: true });
    await rejectsWith(env.auth.login(a, "alice", "correct horse batterY"), "unauthenticated", INVALID_CREDENTIALS);
    await rejectsWith(env.auth.login(a, "mallory", "correct horse battery"), "unauthenticated", INVALID_CREDENTIALS);
    await rejectsWith(
      env.auth.login(a, "Not A Name!", "correct horse battery"),
      "unauthenticated",
      INVALID_CREDENTIALS,
    );
    await rejectsWith(env.auth.login(a, "nopass", ""), "unauthenticated", INVALID_CREDENTIALS);
    await rejectsWith(env.auth.login(a, "dora", "dora-password-1234"), "unauthenticated", INVALID_CREDENTIALS);
  });

  test("passwords shorter than 12 characters are refused; 12 non-ASCII characters are enough", async () => {
    const env = await setup();
    await rejectsWith(env.auth.createUser(env.actor, { name: "short", password: "elevenchars" }), "invalid_request");
    await env.auth.createUser(env.actor, { name: "kanji", password: "秘密秘密秘密秘密秘密秘密" });
    const { principal } = await loginAs(env, "kanji", "秘密秘密秘密秘密秘密秘密");
    assert.equal(principal.name, "kanji");
  });

  test("a password over 1024 bytes of UTF-8 is refused when set; a longer attempt never matches", async () => {
    const env = await setup();
    const longest = "é".repeat(512); // 1024 bytes
    await rejectsWith(
      env.auth.createUser(env.actor, { name: "too-long", password: `${longest}e` }),
      "invalid_request",
      "passwords must be at most 1024 bytes in UTF-8 (a non-ASCII character takes 2 to 4)",
    );
    await rejectsWith(
      env.auth.createUser(env.actor, { name: "too-short", password: "elevenchars" }),
      "invalid_request",
      "passwords must be at least 12 characters",
    );
    await env.auth.createUser(env.actor, { name: "longest", password: longest });
    assert.equal((await loginAs(env, "longest", longest)).principal.name, "longest");
    // Cut to 1024 bytes, these would be the password.
    for (const attempt of [`${longest}e`, `${longest}${"x".repeat(1000)}`]) {
      await rejectsWith(loginAs(env, "longest", attempt), "unauthenticated", INVALID_CREDENTIALS);
    }
  });

  test("a name with a non-ASCII look-alike is refused, never folded onto an ASCII name", async () => {
    const env = await setup();
    const kelvin = "\u212A"; // KELVIN SIGN: toLowerCase() makes it "k"
    await env.auth.createUser(env.actor, { name: "keeper", password: "keeper-password-1234" });
    await rejectsWith(env.auth.createUser(env.actor, { name: `${kelvin}eeper2` }), "invalid_request");
    await rejectsWith(env.auth.createGroup(env.actor, { name: `${kelvin}eepers` }), "invalid_request");
    await rejectsWith(
      env.auth.putPolicy(env.actor, {
        name: `${kelvin}ey-reader`,
        rules: [{ resource: "key/*", actions: ["key:read"] }],
      }),
      "invalid_request",
      "policy name must match ^[a-z0-9][a-z0-9._-]{0,63}$",
    );
    await rejectsWith(env.auth.getUser(`${kelvin}eeper`), "not_found");
    await rejectsWith(env.auth.updateUser(env.actor, `${kelvin}eeper`, { disabled: true }), "not_found");
    await rejectsWith(loginAs(env, `${kelvin}eeper`, "keeper-password-1234"), "unauthenticated", INVALID_CREDENTIALS);
    // ASCII capitals still fold.
    assert.equal((await loginAs(env, "KEEPER", "keeper-password-1234")).principal.name, "keeper");
  });

  test("a changed password replaces the old one", async () => {
    const env = await setup();
    await userWith(env, "erin", []);
    await env.auth.updateUser(env.actor, "erin", { password: Secret.fromString("a brand new password") });
    await rejectsWith(loginAs(env, "erin", "erin-password-1234"), "unauthenticated");
    assert.equal((await loginAs(env, "erin", "a brand new password")).principal.name, "erin");
  });

  test("a changed password ends the user's login sessions but not their API tokens", async () => {
    const env = await setup();
    const frank = await userWith(env, "frank", []);
    const api = await env.auth.createToken(env.actor, frank.principal, { name: "frank-ci" });
    await env.auth.updateUser(env.actor, "frank", { password: Secret.fromString("another new password") });
    await rejectsWith(env.auth.authenticate(frank.token), "unauthenticated", INVALID_TOKEN);
    assert.equal((await env.auth.authenticate(api.token.exposeText())).tokenId, api.record.id);
    const fresh = await loginAs(env, "frank", "another new password");
    assert.equal((await env.auth.authenticate(fresh.token)).name, "frank");
  });
});

describe("bearer tokens", () => {
  test("malformed, unknown, and tampered tokens are all 'invalid or expired token'", async () => {
    const env = await setup();
    const bad = [
      "",
      "nonsense",
      `${env.adminToken}x`,
      env.adminToken.slice(0, -1),
      `${env.adminToken.slice(0, -1)}${env.adminToken.endsWith("A") ? "B" : "A"}`,
      `cst_aaaaaaaaaaaaaaaa_${"A".repeat(43)}`,
      // The right secret under another token's public id.
      `cst_bbbbbbbbbbbbbbbb_${env.adminToken.slice(21)}`,
    ];
    for (const t of bad) await rejectsWith(env.auth.authenticate(t), "unauthenticated", INVALID_TOKEN);
  });

  test("an API token works until its ttl passes, even with a principal cache longer than the ttl", async () => {
    const env = await setup();
    const { token, record } = await env.auth.createToken(env.actor, env.admin, { name: "ci", ttlSeconds: 120 });
    const text = token.exposeText();
    assert.match(text, TOKEN_RE);
    assert.equal(record.kind, "api");
    assert.equal(record.userId, env.admin.userId);
    assert.equal(record.hash, hashToken(text));
    const p = await env.auth.authenticate(text);
    assert.equal(p.kind, "token");
    assert.equal(p.name, "ci");
    assert.equal(p.isAdmin, true);
    env.advance(119);
    assert.equal((await env.auth.authenticate(text)).tokenId, record.id);
    env.advance(1);
    await rejectsWith(env.auth.authenticate(text), "unauthenticated", INVALID_TOKEN);
  });

  test("a login session expires after sessionTtlSeconds", async () => {
    const env = await setup();
    const { token } = await userWith(env, "frank", []);
    env.advance(599);
    assert.equal((await env.auth.authenticate(token)).name, "frank");
    env.advance(1);
    await rejectsWith(env.auth.authenticate(token), "unauthenticated", INVALID_TOKEN);
  });

  test("revocation takes effect at once despite the principal cache", async () => {
    const env = await setup();
    const { token, record } = await env.auth.createToken(env.actor, env.admin, { name: "temp" });
    const text = token.exposeText();
    await env.auth.authenticate(text); // now cached for an hour
    await env.auth.revokeToken(env.actor, env.admin, record.id);
    await rejectsWith(env.auth.authenticate(text), "unauthenticated", INVALID_TOKEN);
    await rejectsWith(env.auth.revokeToken(env.actor, env.admin, record.id), "conflict");
    const revoked = await env.store.getToken(record.id);
    assert.notEqual(revoked?.revokedAt, null);
    const [audit] = await env.store.listAudit({ action: "token.revoke" });
    assert.equal(audit?.resource, `token/${record.id}`);
  });

  test("disabling a user ends their sessions and tokens at once; enabling restores them", async () => {
    const env = await setup();
    const { token } = await userWith(env, "gina", []);
    await env.auth.updateUser(env.actor, "gina", { disabled: true });
    await rejectsWith(env.auth.authenticate(token), "unauthenticated", INVALID_TOKEN);
    await env.auth.updateUser(env.actor, "gina", { disabled: false });
    assert.equal((await env.auth.authenticate(token)).name, "gina");
  });

  test("deleting a user ends their tokens", async () => {
    const env = await setup();
    const { token } = await userWith(env, "hank", []);
    await env.auth.deleteUser(env.actor, "hank");
    await rejectsWith(env.auth.authenticate(token), "unauthenticated", INVALID_TOKEN);
    await rejectsWith(env.auth.getUser("hank"), "not_found");
  });

  test("users revoke their own tokens, not other users'; admins revoke any", async () => {
    const env = await setup();
    const ivy = await userWith(env, "ivy", []);
    const jack = await userWith(env, "jack", []);
    const ivyToken = await env.auth.createToken(env.actor, ivy.principal, { name: "ivy-1" });
    const jackToken = await env.auth.createToken(env.actor, jack.principal, { name: "jack-1" });
    await rejectsWith(env.auth.revokeToken(env.actor, ivy.principal, jackToken.record.id), "forbidden");
    await env.auth.revokeToken(env.actor, ivy.principal, ivyToken.record.id);
    await env.auth.revokeToken(env.actor, env.admin, jackToken.record.id);
    const ivyList = await env.auth.listTokens(ivy.principal);
    assert.ok(ivyList.every((t) => t.userId === ivy.principal.userId));
    assert.ok(ivyList.some((t) => t.id === ivyToken.record.id));
    const all = await env.auth.listTokens(env.admin);
    assert.ok(all.some((t) => t.id === jackToken.record.id) && all.some((t) => t.id === ivyToken.record.id));
  });

  test("a non-admin may only scope a token to policies it holds; a scoped token can't widen itself", async () => {
    const env = await setup();
    await env.auth.putPolicy(env.actor, { name: "app-a", rules: [{ resource: "key/app-a-*", actions: ["key:*"] }] });
    await env.auth.putPolicy(env.actor, { name: "app-b", rules: [{ resource: "key/app-b-*", actions: ["key:*"] }] });
    const kim = await userWith(env, "kim", ["app-a", "app-b"]);
    await rejectsWith(env.auth.createToken(env.actor, kim.principal, { name: "x", policies: ["admin"] }), "forbidden");
    const scoped = await env.auth.createToken(env.actor, kim.principal, { name: "only-a", policies: ["app-a"] });
    const sp = await env.auth.authenticate(scoped.token.exposeText());
    assert.deepEqual(sp.policies, ["app-a"]);
    env.auth.authorize(sp, "key:encrypt", "key/app-a-1");
    throwsWith(() => env.auth.authorize(sp, "key:encrypt", "key/app-b-1"), "forbidden");
    await rejectsWith(env.auth.createToken(env.actor, sp, { name: "wider", policies: ["app-b"] }), "forbidden");
    // Without explicit policies, a token made by a scoped token keeps the scope.
    const child = await env.auth.createToken(env.actor, sp, { name: "child" });
    assert.deepEqual(child.record.policies, ["app-a"]);
    // A standalone token needs explicit policies and carries exactly them.
    await rejectsWith(env.auth.createToken(env.actor, kim.principal, { name: "s", forUser: false }), "invalid_request");
    const standalone = await env.auth.createToken(env.actor, kim.principal, {
      name: "svc",
      forUser: false,
      policies: ["app-b"],
    });
    const st = await env.auth.authenticate(standalone.token.exposeText());
    assert.equal(st.userId, null);
    assert.deepEqual(st.policies, ["app-b"]);
    // Losing a policy narrows the user's scoped tokens too.
    await env.auth.updateUser(env.actor, "kim", { policies: ["app-b"] });
    assert.deepEqual((await env.auth.authenticate(scoped.token.exposeText())).policies, []);
  });

  test("revoking a token revokes the tokens it made, and theirs, and the audit record names them", async () => {
    const env = await setup();
    await env.auth.putPolicy(env.actor, { name: "app-a", rules: [{ resource: "key/app-a-*", actions: ["key:*"] }] });
    const lee = await userWith(env, "lee", ["app-a"]);
    // A token made in a login session has no parent: ending the session leaves it.
    const ci = await env.auth.createToken(env.actor, lee.principal, { name: "ci" });
    assert.equal(ci.record.parentId, null);
    const ciPrincipal = await env.auth.authenticate(ci.token.exposeText());
    const job = await env.auth.createToken(env.actor, ciPrincipal, {
      name: "job",
      forUser: false,
      policies: ["app-a"],
    });
    assert.equal(job.record.parentId, ci.record.id);
    const jobPrincipal = await env.auth.authenticate(job.token.exposeText());
    const step = await env.auth.createToken(env.actor, jobPrincipal, { name: "step", policies: ["app-a"] });
    const sibling = await env.auth.createToken(env.actor, lee.principal, { name: "other" });

    // The standalone token's maker sees it, and may revoke it, without any token policy.
    const seen = (await env.auth.listTokens(ciPrincipal)).map((t) => t.name);
    assert.ok(seen.includes("job") && seen.includes("ci"), seen.join(","));
    // The test clock stands still: both were made at the same instant, so their order is their ids'.
    const madeByCi = [job.record.id, step.record.id].sort();
    assert.deepEqual(await env.auth.revokeToken(env.actor, ciPrincipal, ci.record.id), madeByCi);
    for (const t of [ci, job, step]) {
      await rejectsWith(env.auth.authenticate(t.token.exposeText()), "unauthenticated", INVALID_TOKEN);
    }
    assert.equal((await env.auth.authenticate(sibling.token.exposeText())).tokenId, sibling.record.id);
    assert.equal((await env.auth.authenticate(lee.token)).name, "lee");
    const [record] = await env.store.listAudit({ action: "token.revoke", limit: 1, descending: true });
    assert.deepEqual(record?.details.revokedWith, madeByCi);
  });

  test("a token whose maker is revoked before it is written is never made", async () => {
    const env = await setup();
    const maker = await env.auth.createToken(env.actor, env.admin, { name: "maker" });
    // Authenticated before the revocation, as a request in flight while it happens.
    const inFlight = await env.auth.authenticate(maker.token.exposeText());
    assert.deepEqual(await env.auth.revokeToken(env.actor, env.admin, maker.record.id), []);
    await rejectsWith(env.auth.createToken(env.actor, inFlight, { name: "late" }), "unauthenticated", INVALID_TOKEN);
    assert.ok(!(await env.store.listTokens()).some((t) => t.name === "late"));
  });

  test("deleting a user revokes the standalone tokens their tokens and sessions made", async () => {
    const env = await setup();
    await env.auth.putPolicy(env.actor, { name: "app-a", rules: [{ resource: "key/app-a-*", actions: ["key:*"] }] });
    const mo = await userWith(env, "mo", ["app-a"]);
    const ci = await env.auth.createToken(env.actor, mo.principal, { name: "ci" });
    const ciPrincipal = await env.auth.authenticate(ci.token.exposeText());
    const svc = await env.auth.createToken(env.actor, ciPrincipal, {
      name: "svc",
      forUser: false,
      policies: ["app-a"],
    });
    // Made in the login session: no parent, but its maker on record, so it goes with the user too.
    const fromSession = await env.auth.createToken(env.actor, mo.principal, {
      name: "from-session",
      forUser: false,
      policies: ["app-a"],
    });
    await env.auth.deleteUser(env.actor, "mo");
    await rejectsWith(env.auth.authenticate(svc.token.exposeText()), "unauthenticated", INVALID_TOKEN);
    await rejectsWith(env.auth.authenticate(fromSession.token.exposeText()), "unauthenticated", INVALID_TOKEN);
    const [record] = await env.store.listAudit({ action: "user.delete", limit: 1, descending: true });
    assert.deepEqual(new Set(record?.details.revokedWith as string[]), new Set([svc.record.id, fromSession.record.id]));
  });
});

describe("authorisation", () => {
  test("a policy scoped to key/app-a-* can't touch key/app-b-*", async () => {
    const env = await setup();
    await env.auth.putPolicy(env.actor, {
      name: "app-a",
      rules: [{ resource: "key/app-a-*", actions: ["key:encrypt", "key:decrypt"] }],
    });
    const { principal } = await userWith(env, "lena", ["app-a"]);
    env.auth.authorize(principal, "key:encrypt", "key/app-a-db");
    env.auth.authorize(principal, "key:decrypt", "key/app-a-db");
    throwsWith(
      () => env.auth.authorize(principal, "key:encrypt", "key/app-b-db"),
      "forbidden",
      "not allowed: key:encrypt on key/app-b-db",
    );
    throwsWith(() => env.auth.authorize(principal, "key:sign", "key/app-a-db"), "forbidden");
    throwsWith(() => env.auth.authorize(principal, "user:read", "user/lena"), "forbidden");
  });

  test("privileged actions need admin: a non-admin '*' policy does not reach them", async () => {
    const env = await setup();
    await env.auth.putPolicy(env.actor, { name: "everything", rules: [{ resource: "*", actions: ["*"] }] });
    await rejectsWith(
      env.auth.putPolicy(env.actor, { name: "destroyer", rules: [{ resource: "key/*", actions: ["key:destroy"] }] }),
      "invalid_request",
    );
    const { principal } = await userWith(env, "mona", ["everything"]);
    env.auth.authorize(principal, "key:rotate", "key/any");
    env.auth.authorize(principal, "user:write", "user/any");
    for (const action of [
      "key:destroy",
      "policy:write",
      "sudo:grant",
      "sudo:read",
      "audit:read",
      "audit:verify",
    ] as const) {
      throwsWith(() => env.auth.authorize(principal, action, "audit"), "forbidden");
      env.auth.authorize(env.admin, action, "audit");
    }
  });

  test("group membership grants the group's policies, and losing it takes them away at once", async () => {
    const env = await setup();
    await env.auth.putPolicy(env.actor, { name: "ops", rules: [{ resource: "key/*", actions: ["key:read"] }] });
    const { token } = await userWith(env, "nora", []);
    let p = await env.auth.authenticate(token);
    throwsWith(() => env.auth.authorize(p, "key:read", "key/x"), "forbidden");
    const group = await env.auth.createGroup(env.actor, { name: "Operators", members: ["nora"], policies: ["ops"] });
    assert.equal(group.name, "operators");
    assert.deepEqual(await env.auth.userNames(group.members), ["nora"]);
    p = await env.auth.authenticate(token);
    assert.deepEqual(p.policies, ["ops"]);
    env.auth.authorize(p, "key:read", "key/x");
    await env.auth.updateGroup(env.actor, "operators", { removeMembers: ["nora"] });
    p = await env.auth.authenticate(token);
    throwsWith(() => env.auth.authorize(p, "key:read", "key/x"), "forbidden");
    await env.auth.updateGroup(env.actor, "operators", { addMembers: ["nora"] });
    env.auth.authorize(await env.auth.authenticate(token), "key:read", "key/x");
    await env.auth.deleteGroup(env.actor, "operators");
    throwsWith(() => env.auth.authorize(p, "key:read", "key/x"), "forbidden");
    assert.deepEqual((await env.auth.authenticate(token)).policies, []);
  });

  test("a group holding admin makes its members admin", async () => {
    const env = await setup();
    const { token } = await userWith(env, "olga", []);
    await env.auth.createGroup(env.actor, { name: "admins", members: ["olga"], policies: ["admin"] });
    const p = await env.auth.authenticate(token);
    assert.equal(p.isAdmin, true);
    env.auth.authorize(p, "audit:read", "audit");
  });

  test("editing a policy changes what its holders may do at once", async () => {
    const env = await setup();
    await env.auth.putPolicy(env.actor, { name: "app", rules: [{ resource: "key/app-*", actions: ["key:encrypt"] }] });
    const { token } = await userWith(env, "pia", ["app"]);
    env.auth.authorize(await env.auth.authenticate(token), "key:encrypt", "key/app-1");
    const replaced = await env.auth.putPolicy(env.actor, {
      name: "app",
      description: "narrowed",
      rules: [{ resource: "key/other-*", actions: ["key:encrypt"] }],
    });
    assert.equal(replaced.revision, 2);
    const p = await env.auth.authenticate(token);
    throwsWith(() => env.auth.authorize(p, "key:encrypt", "key/app-1"), "forbidden");
    env.auth.authorize(p, "key:encrypt", "key/other-1");
    await rejectsWith(env.auth.deletePolicy(env.actor, "app"), "conflict");
  });
});

describe("sudo", () => {
  test("a grant makes the user admin while it lasts and stops when revoked", async () => {
    const env = await setup();
    const { token } = await userWith(env, "quinn", []);
    const before = await env.auth.authenticate(token); // cached for an hour
    assert.equal(before.isAdmin, false);
    throwsWith(() => env.auth.authorize(before, "audit:read", "audit"), "forbidden");

    const grant = await env.auth.grantSudo(env.actor, { user: "quinn", ttlSeconds: 900, reason: "incident 42" });
    assert.deepEqual(grant.policies, ["admin"]);
    assert.equal(grant.grantedBy, env.actor.principal);
    assert.equal(await env.auth.subjectName(grant), "quinn");
    const during = await env.auth.authenticate(token);
    assert.equal(during.isAdmin, true);
    assert.equal(during.sudoUntil, grant.expiresAt);
    env.auth.authorize(during, "audit:read", "audit");
    assert.equal((await env.auth.listSudoGrants(true)).length, 1);

    await env.auth.revokeSudo(env.actor, grant.id);
    const afterRevoke = await env.auth.authenticate(token);
    assert.equal(afterRevoke.isAdmin, false);
    throwsWith(() => env.auth.authorize(afterRevoke, "audit:read", "audit"), "forbidden");
    assert.equal((await env.auth.listSudoGrants(true)).length, 0);
    assert.equal((await env.auth.listSudoGrants()).length, 1);
    await rejectsWith(env.auth.revokeSudo(env.actor, grant.id), "conflict");
  });

  test("a grant ends at its expiry with no background job, cache or not", async () => {
    const env = await setup();
    const { token } = await userWith(env, "rosa", []);
    await env.auth.grantSudo(env.actor, { user: "rosa", ttlSeconds: 60, reason: "deploy" });
    const held = await env.auth.authenticate(token);
    assert.equal(held.isAdmin, true);
    env.advance(59);
    env.auth.authorize(held, "sudo:read", "sudo");
    env.advance(1);
    // A principal still held by a long request loses admin at the expiry...
    throwsWith(() => env.auth.authorize(held, "sudo:read", "sudo"), "forbidden");
    // ...and the hour-long principal cache does not keep serving it.
    const fresh = await env.auth.authenticate(token);
    assert.equal(fresh.isAdmin, false);
    assert.equal(fresh.sudoUntil, null);
  });

  test("a grant to a group elevates its members; other policies can be granted too", async () => {
    const env = await setup();
    await env.auth.putPolicy(env.actor, { name: "reader", rules: [{ resource: "key/*", actions: ["key:read"] }] });
    const sam = await userWith(env, "sam", []);
    await env.auth.createGroup(env.actor, { name: "oncall", members: ["sam"] });
    await env.auth.grantSudo(env.actor, { group: "oncall", ttlSeconds: 300, reason: "r", policies: ["reader"] });
    const p = await env.auth.authenticate(sam.token);
    assert.deepEqual(p.policies, ["reader"]);
    assert.equal(p.isAdmin, false);
    env.auth.authorize(p, "key:read", "key/a");
    await env.auth.grantSudo(env.actor, { group: "oncall", ttlSeconds: 600, reason: "r2" });
    assert.equal((await env.auth.authenticate(sam.token)).isAdmin, true);
  });

  test("a standalone token may carry only policies its creator holds without a sudo grant", async () => {
    const env = await setup();
    for (const name of ["reader", "writer"]) {
      await env.auth.putPolicy(env.actor, { name, rules: [{ resource: `${name}/*`, actions: ["key:read"] }] });
    }
    const holder = await userWith(env, "holder", ["reader"]);
    await env.auth.grantSudo(env.actor, { user: "holder", ttlSeconds: 600, reason: "r", policies: ["writer"] });
    await env.auth.grantSudo(env.actor, { user: "holder", ttlSeconds: 600, reason: "r2" });
    const during = await env.auth.authenticate(holder.token);
    assert.equal(during.isAdmin, true);
    const standalone = (policies: string[]) =>
      env.auth.createToken(env.actor, during, { name: "svc", forUser: false, policies });
    for (const policy of ["admin", "writer"]) {
      await rejectsWith(
        standalone([policy]),
        "forbidden",
        `cannot give a standalone token policy "${policy}": you hold it only through a sudo grant, which the token would outlive`,
      );
    }
    assert.deepEqual((await standalone(["reader"])).record.policies, ["reader"]);
    // A token acting for the user may carry them: it loses them with the grants.
    const mine = await env.auth.createToken(env.actor, during, { name: "mine", policies: ["admin", "writer"] });
    assert.equal((await env.auth.authenticate(mine.token.exposeText())).isAdmin, true);
    env.advance(600);
    assert.deepEqual((await env.auth.authenticate(mine.token.exposeText())).policies, []);
  });

  test("grants are validated", async () => {
    const env = await setup();
    await userWith(env, "tara", []);
    const g = env.auth.grantSudo.bind(env.auth, env.actor);
    await rejectsWith(g({ user: "tara", ttlSeconds: 59, reason: "r" }), "invalid_request");
    await rejectsWith(g({ user: "tara", ttlSeconds: 86_401, reason: "r" }), "invalid_request");
    await rejectsWith(g({ user: "tara", ttlSeconds: 60, reason: " " }), "invalid_request");
    await rejectsWith(g({ ttlSeconds: 60, reason: "r" }), "invalid_request");
    await rejectsWith(g({ user: "tara", group: "x", ttlSeconds: 60, reason: "r" }), "invalid_request");
    await rejectsWith(g({ user: "nobody", ttlSeconds: 60, reason: "r" }), "not_found");
    await rejectsWith(g({ user: "tara", ttlSeconds: 60, reason: "r", policies: ["nope"] }), "invalid_request");
  });
});

describe("escalation guards for user:write and group:write holders", () => {
  test("a non-admin user manager can't hand out admin or take over an admin account", async () => {
    const env = await setup();
    await env.auth.putPolicy(env.actor, {
      name: "user-admin",
      rules: [{ resource: "*", actions: ["user:*", "group:*"] }],
    });
    const uma = await userWith(env, "uma", ["user-admin"]);
    const asUma: Actor = { principal: uma.principal.display, requestId: "r", source: "x" };
    env.auth.authorize(uma.principal, "user:write", "user/root");
    await rejectsWith(env.auth.createUser(asUma, { name: "evil", policies: ["admin"] }), "forbidden");
    await rejectsWith(env.auth.updateUser(asUma, "root", { password: "taken over now!" }), "forbidden");
    await rejectsWith(env.auth.updateUser(asUma, "uma", { policies: ["user-admin", "admin"] }), "forbidden");
    await rejectsWith(env.auth.createGroup(asUma, { name: "g", members: ["uma"], policies: ["admin"] }), "forbidden");
    await rejectsWith(env.auth.deleteUser(asUma, "root"), "forbidden");
    // What it does hold, it may manage.
    const made = await env.auth.createUser(asUma, { name: "helper", policies: ["user-admin"] });
    assert.deepEqual(made.policies, ["user-admin"]);
    await loginAs(env, "root", ROOT_PASSWORD);
  });

  test("a user manager can't hand out for good a policy it holds only through a sudo grant", async () => {
    const env = await setup();
    const manager = await userManager(env, "manager");
    await env.auth.putPolicy(env.actor, { name: "reader", rules: [{ resource: "key/*", actions: ["key:read"] }] });
    await env.auth.grantSudo(env.actor, { user: "manager", ttlSeconds: 600, reason: "r", policies: ["reader"] });
    const lapsing = `cannot grant policy "reader": you hold it only through a sudo grant, which what you grant would outlive`;
    await rejectsWith(
      env.auth.createUser(manager.actor, { name: "friend", policies: ["reader"] }),
      "forbidden",
      lapsing,
    );
    await rejectsWith(
      env.auth.createGroup(manager.actor, { name: "friends", policies: ["reader"] }),
      "forbidden",
      lapsing,
    );
    await rejectsWith(
      env.auth.updateUser(manager.actor, "manager", { policies: ["user-admin", "reader"] }),
      "forbidden",
      lapsing,
    );
    // Through a token acting for the manager, the same.
    const token = await env.auth.createToken(env.actor, manager.principal, { name: "cli" });
    const asToken: Actor = { principal: `token:${token.record.id}`, requestId: "r", source: "x" };
    await rejectsWith(env.auth.createUser(asToken, { name: "friend", policies: ["reader"] }), "forbidden", lapsing);
    assert.equal((await env.store.listUsers()).filter((u) => u.name === "friend").length, 0);
    // Once the manager holds it without a grant, it may pass it on.
    await env.auth.updateUser(env.actor, "manager", { policies: ["user-admin", "reader"] });
    assert.deepEqual((await env.auth.createUser(manager.actor, { name: "friend", policies: ["reader"] })).policies, [
      "reader",
    ]);
  });

  test("a user manager can't manage a user or group that holds a sudo grant it lacks, until the grant ends", async () => {
    const env = await setup();
    const manager = await userManager(env, "manager");
    await env.auth.putPolicy(env.actor, { name: "reader", rules: [{ resource: "key/*", actions: ["key:read"] }] });
    await env.auth.createUser(env.actor, { name: "oncall", password: "oncall-password-1234" });
    await env.auth.createGroup(env.actor, { name: "oncall-team", members: ["oncall"] });
    await env.auth.grantSudo(env.actor, { group: "oncall-team", ttlSeconds: 600, reason: "r", policies: ["reader"] });
    const viaSudo = (subject: string) =>
      `cannot manage ${subject}: it holds policy "reader" through a sudo grant, you don't`;
    await rejectsWith(
      env.auth.updateGroup(manager.actor, "oncall-team", { addMembers: ["manager"] }),
      "forbidden",
      viaSudo("group oncall-team"),
    );
    await rejectsWith(env.auth.deleteGroup(manager.actor, "oncall-team"), "forbidden", viaSudo("group oncall-team"));
    // Its members receive the group's grant.
    await rejectsWith(
      env.auth.updateUser(manager.actor, "oncall", { password: "taken over now!" }),
      "forbidden",
      viaSudo("user oncall"),
    );
    env.advance(600); // the group's grant ends; now one on the user alone
    await env.auth.grantSudo(env.actor, { user: "oncall", ttlSeconds: 900, reason: "r" });
    await rejectsWith(
      env.auth.updateUser(manager.actor, "oncall", { password: "taken over now!" }),
      "forbidden",
      `cannot manage user oncall: it holds policy "admin" through a sudo grant, you don't`,
    );
    await env.auth.updateGroup(manager.actor, "oncall-team", { addMembers: ["manager"] });
    env.advance(900); // the user's grant ends
    await env.auth.updateUser(manager.actor, "oncall", { disabled: true });
  });

  test("a user manager manages an app's owners, direct or through a group, only as a co-owner", async () => {
    const env = await setup();
    const manager = await userManager(env, "manager");
    const owner = await env.auth.createUser(env.actor, { name: "owner", password: "owner-password-1234" });
    const team = await env.auth.createGroup(env.actor, { name: "team" });
    await env.auth.createUser(env.actor, { name: "member" });
    await appOwnedBy(env, "acme", [owner.id], [team.id]);
    const owns = (subject: string) => `cannot manage ${subject}: it owns app acme/prod/web, you don't`;
    await rejectsWith(
      env.auth.updateUser(manager.actor, "owner", { password: "taken over now!" }),
      "forbidden",
      owns("user owner"),
    );
    await rejectsWith(env.auth.deleteUser(manager.actor, "owner"), "forbidden", owns("user owner"));
    await rejectsWith(
      env.auth.updateGroup(manager.actor, "team", { addMembers: ["manager"] }),
      "forbidden",
      owns("group team"),
    );
    // Joining an owner group makes its members owners.
    await env.auth.updateUser(manager.actor, "member", { password: "member-password-1234" });
    await env.auth.updateGroup(env.actor, "team", { addMembers: ["member"] });
    await rejectsWith(
      env.auth.updateUser(manager.actor, "member", { disabled: true }),
      "forbidden",
      owns("user member"),
    );

    // A co-owner (here through the group) gains nothing by managing them...
    await env.auth.updateGroup(env.actor, "team", { addMembers: ["manager"] });
    await env.auth.updateUser(manager.actor, "owner", { password: "a co-owner's reset" });
    await env.auth.updateGroup(manager.actor, "team", { removeMembers: ["member"] });
    assert.equal((await loginAs(env, "owner", "a co-owner's reset")).principal.name, "owner");
    // ...but a standalone token of the same manager owns nothing.
    const svc = await env.auth.createToken(env.actor, manager.principal, {
      name: "svc",
      forUser: false,
      policies: ["user-admin"],
    });
    const asSvc: Actor = { principal: `token:${svc.record.id}`, requestId: "r", source: "x" };
    await rejectsWith(env.auth.updateUser(asSvc, "owner", { disabled: true }), "forbidden", owns("user owner"));
    // Nor does a token of the manager's user scoped to explicit policies: it acts only through them.
    const scoped = await env.auth.createToken(env.actor, manager.principal, { name: "cli", policies: ["user-admin"] });
    const asScoped: Actor = { principal: `token:${scoped.record.id}`, requestId: "r", source: "x" };
    await rejectsWith(env.auth.updateUser(asScoped, "owner", { disabled: true }), "forbidden", owns("user owner"));
    const unscoped = await env.auth.createToken(env.actor, manager.principal, { name: "full" });
    const asUnscoped: Actor = { principal: `token:${unscoped.record.id}`, requestId: "r", source: "x" };
    await env.auth.updateUser(asUnscoped, "owner", { disabled: true });
  });

  test("a user manager can't manage a user holding an SSH sudo grant it lacks", async () => {
    const env = await setup();
    const manager = await userManager(env, "manager");
    const oncall = await env.auth.createUser(env.actor, { name: "oncall", password: "oncall-password-1234" });
    const app = await appOwnedBy(env, "acme", [], []);
    await env.store.ssh.createSudoGrant(
      {
        id: randomUUID(),
        appId: app.id,
        org: app.org,
        space: app.space,
        app: app.name,
        subjectType: "user",
        subjectId: oncall.id,
        account: "root",
        reason: "incident",
        grantedBy: env.actor.principal,
        createdAt: "2030-01-01T00:00:00.000Z",
        expiresAt: "2030-01-01T01:00:00.000Z",
        revokedAt: null,
      },
      auditEntry(env.actor, "ssh.sudo.grant", `ssh/sudo/${app.org}/${app.space}/${app.name}`),
    );
    await rejectsWith(
      env.auth.updateUser(manager.actor, "oncall", { password: "taken over now!" }),
      "forbidden",
      "cannot manage user oncall: it holds SSH sudo as root on app acme/prod/web, you don't",
    );
    env.advance(3600);
    await env.auth.updateUser(manager.actor, "oncall", { disabled: true });
  });
});

describe("the last administrator", () => {
  const LAST = "this change would leave no enabled administrator";

  test("can't be deleted, disabled or stripped of admin", async () => {
    const env = await setup();
    await rejectsWith(env.auth.deleteUser(env.actor, "root"), "conflict", LAST);
    await rejectsWith(env.auth.updateUser(env.actor, "root", { disabled: true }), "conflict", LAST);
    await rejectsWith(env.auth.updateUser(env.actor, "root", { policies: [] }), "conflict", LAST);
    assert.deepEqual((await env.auth.getUser("root")).policies, ["admin"]);
  });

  test("an admin through a group counts, and then the group is what must stay", async () => {
    const env = await setup();
    await env.auth.createUser(env.actor, { name: "gwen", password: "gwen-password-1234" });
    await env.auth.createGroup(env.actor, { name: "admins", members: ["gwen"], policies: ["admin"] });
    await env.auth.updateUser(env.actor, "root", { disabled: true });
    const gwen = { principal: "user:gwen", requestId: "req-gwen", source: "local" };
    await rejectsWith(env.auth.updateGroup(gwen, "admins", { removeMembers: ["gwen"] }), "conflict", LAST);
    await rejectsWith(env.auth.deleteGroup(gwen, "admins"), "conflict", LAST);
    await rejectsWith(env.auth.updateUser(gwen, "gwen", { disabled: true }), "conflict", LAST);
    await env.auth.updateUser(gwen, "root", { disabled: false });
    await env.auth.deleteGroup(gwen, "admins");
    assert.equal((await env.auth.listGroups()).length, 0);
  });
});

describe("policies", () => {
  test("admin is built in: listed, readable, never replaced or deleted", async () => {
    const env = await setup();
    assert.deepEqual((await env.auth.getPolicy("admin")).rules, [{ resource: "*", actions: ["*"] }]);
    assert.ok((await env.auth.listPolicies()).some((p) => p.name === "admin"));
    await rejectsWith(
      env.auth.putPolicy(env.actor, { name: "admin", rules: [{ resource: "x", actions: ["*"] }] }),
      "forbidden",
    );
    await rejectsWith(env.auth.deletePolicy(env.actor, "admin"), "forbidden");
    await rejectsWith(env.auth.getPolicy("missing"), "not_found");
  });

  test("policies in use can't be deleted; unused ones can; users can't be given unknown policies", async () => {
    const env = await setup();
    await env.auth.putPolicy(env.actor, { name: "p1", rules: [{ resource: "key/*", actions: ["key:read"] }] });
    await rejectsWith(env.auth.createUser(env.actor, { name: "v", policies: ["p2"] }), "invalid_request");
    await env.auth.createUser(env.actor, { name: "v", policies: ["p1"] });
    await rejectsWith(env.auth.deletePolicy(env.actor, "p1"), "conflict");
    await env.auth.updateUser(env.actor, "v", { policies: [] });
    await env.auth.deletePolicy(env.actor, "p1");
    await rejectsWith(env.auth.getPolicy("p1"), "not_found");
    const [audit] = await env.store.listAudit({ action: "policy.delete" });
    assert.equal(audit?.resource, "policy/p1");
  });
});

describe("secrets at rest", () => {
  test("no password, token, password hash or token hash reaches the audit log; none in clear in the db files", async () => {
    const env = await setup();
    const password = "planted-password-Zq9xW4";
    await env.auth.createUser(env.actor, { name: "wendy", password });
    await env.auth.updateUser(env.actor, "wendy", { password: `${password}-2` });
    const session = await env.auth.login(
      { principal: "anonymous", requestId: "r", source: "x" },
      "wendy",
      `${password}-2`,
    );
    const sessionToken = session.token.exposeText();
    const wendy = await env.auth.authenticate(sessionToken);
    const api = await env.auth.createToken(env.actor, wendy, { name: "planted" });
    const apiToken = api.token.exposeText();
    await env.auth.revokeToken(env.actor, wendy, api.record.id);
    const user = await env.store.getUserByName("wendy");
    assert.ok(user?.passwordHash?.startsWith("$argon2id$"));

    // The audit journal: no credential in any form.
    const audit = JSON.stringify(await env.store.listAudit({ limit: 10_000 }));
    for (const banned of [
      password,
      sessionToken,
      apiToken,
      env.adminToken,
      hashToken(sessionToken),
      hashToken(apiToken),
    ]) {
      assert.ok(!audit.includes(banned), "a credential reached the audit journal");
    }
    assert.ok(!audit.includes("$argon2"), "a password hash reached the audit journal");
    assert.ok(audit.includes(api.record.id), "the token id should be audited");

    // The database files, while open (db, WAL, shm) and once closed and checkpointed.
    const readFiles = (): { names: string[]; bytes: Buffer } => {
      const names = readdirSync(env.dir).filter((f) => f.startsWith("custos.db"));
      return { names, bytes: Buffer.concat(names.map((f) => readFileSync(join(env.dir, f)))) };
    };
    const open = readFiles();
    assert.ok(open.names.includes("custos.db-wal"), `expected a WAL file, found ${open.names.join(", ")}`);
    await env.store.close();
    stores.splice(stores.indexOf(env.store), 1);
    const closed = readFiles();
    const bytes = Buffer.concat([open.bytes, closed.bytes]);
    const planted = [password, `${password}-2`, sessionToken, apiToken, env.adminToken, ROOT_PASSWORD];
    for (const secret of planted) {
      assert.equal(bytes.indexOf(secret), -1, "a secret is in the database files");
      if (secret.startsWith("cst_"))
        assert.equal(bytes.indexOf(secret.slice(21)), -1, "a token's secret part is stored");
    }
    // Sanity: the scan can see what is there.
    assert.notEqual(bytes.indexOf(hashToken(apiToken)), -1);
    assert.notEqual(bytes.indexOf("wendy"), -1);
  });
});
