import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { type CustosInstance, errorCode, type HttpAnswer, ok, startCustos } from "../helpers/custos.js";

type Json = Record<string, unknown>;
type Answer = HttpAnswer & { readonly headers?: Record<string, unknown> };

/**
 * A third review of authentication and authorisation over HTTPS, for what the first
 * two (service, conformance, authz, second review, the core's token tree) leave
 * out: who may see and revoke a standalone token made in a login session, what
 * disabling a user does to the tokens their tokens made, whether a sudo grant can
 * be made to outlast itself, names given in another case (authorised, audited),
 * rule union and refused action names, group and group-sudo changes on the next
 * request, exact lifetimes, and failed logins as the audit log and the database
 * hold them. Oracles: docs/api.md's words, the audit_log and tokens tables read
 * directly, node:crypto's SHA-256 and the server's log.
 */

const sha256 = (text: string) => createHash("sha256").update(text, "utf8").digest("hex");
const b64 = (text: string) => Buffer.from(text).toString("base64");
const SESSION_TTL_SECONDS = 900;

describe("auth over HTTPS, third review", () => {
  let custos: CustosInstance;
  const call = (method: string, path: string, body?: unknown, bearer?: string | null) =>
    custos.call(method, path, body, bearer) as Promise<Answer>;
  const whoami = (token: string) => call("GET", "/v1/auth/whoami", undefined, token);
  const login = (username: string, password: string) => call("POST", "/v1/auth/login", { username, password }, null);
  /** A user with a password and policies, logged in: the session's answer. */
  async function userSession(name: string, policies: string[] = []) {
    const password = `${name} password 1234`;
    ok(await call("POST", "/v1/users", { name, password, policies }), 201);
    const session = ok(await login(name, password)) as { token: string; tokenId: string; expiresAt: string };
    return { ...session, password };
  }
  const token = async (body: Json, bearer?: string) =>
    ok(await call("POST", "/v1/auth/tokens", body, bearer), 201) as { token: string; id: string } & Json;
  /** The audit_log rows a request left, read from the database file. */
  const rowsOf = (r: Answer) =>
    custos.query<{
      principal: string;
      action: string;
      resource: string;
      outcome: string;
      error_code: string | null;
      details: string;
    }>(
      "SELECT principal, action, resource, outcome, error_code, details FROM audit_log WHERE request_id = ?",
      r.headers?.["x-request-id"],
    );

  before(async () => {
    custos = await startCustos({
      // Many logins below: the login limit is not what these tests are about.
      auth: { loginAttemptsPerMinute: 1000, sessionTtlSeconds: SESSION_TTL_SECONDS },
    });
    ok(
      await call("PUT", "/v1/policies/maker", {
        rules: [{ resource: "token/*", actions: ["token:create", "token:read"] }],
      }),
    );
  });
  after(async () => {
    await custos?.dispose();
  });

  describe("the tokens a user makes", () => {
    test("a standalone token made in a login session is listed for its maker and revoked by it without a policy", async () => {
      const session = await userSession("st-maker", ["maker"]);
      const standalone = await token({ name: "svc", forUser: false, policies: ["maker"] }, session.token);
      // api.md: parentId is null for tokens made with a login session, as the answer says.
      assert.equal(standalone.parentId, null);
      const listed = (ok(await call("GET", "/v1/auth/tokens", undefined, session.token)).tokens as Json[]).map(
        (t) => t.id,
      );
      const revoke = await call("DELETE", `/v1/auth/tokens/${standalone.id}`, undefined, session.token);
      const later = await whoami(standalone.token);
      // api.md: GET lists "the standalone tokens their user made with a login session"; DELETE of "a
      // standalone one your user made with a login session" needs no policy.
      assert.deepEqual(
        {
          listed: listed.includes(standalone.id),
          revoke: [revoke.status, errorCode(revoke) ?? "ok"],
          afterwards: later.status,
        },
        { listed: true, revoke: [200, "ok"], afterwards: 401 },
      );
    });

    test("the tokens table records the session's user as maker_user_id of a standalone token made in it, and only there", async () => {
      const session = await userSession("st-row", ["maker"]);
      const userId = (ok(await whoami(session.token)) as Json).id;
      const standalone = await token({ name: "svc", forUser: false, policies: ["maker"] }, session.token);
      const bound = await token({ name: "laptop" }, session.token);
      const child = await token({ name: "job", policies: ["maker"] }, standalone.token);
      const rowOf = (id: string) =>
        custos.query<{ user_id: string | null; parent_id: string | null; maker_user_id: string | null }>(
          "SELECT user_id, parent_id, maker_user_id FROM tokens WHERE id = ?",
          id,
        );
      assert.equal(typeof userId, "string");
      assert.deepEqual(
        {
          answer: [standalone.makerUserId, bound.makerUserId, child.makerUserId],
          standalone: rowOf(standalone.id),
          bound: rowOf(bound.id),
          child: rowOf(child.id),
          session: rowOf(session.tokenId),
        },
        {
          answer: [userId, null, null],
          standalone: [{ user_id: null, parent_id: null, maker_user_id: userId }],
          bound: [{ user_id: userId, parent_id: null, maker_user_id: null }],
          child: [{ user_id: null, parent_id: standalone.id, maker_user_id: null }],
          session: [{ user_id: userId, parent_id: null, maker_user_id: null }],
        },
      );
      const listed = (ok(await call("GET", "/v1/auth/tokens", undefined, session.token)).tokens as Json[]).find(
        (t) => t.id === standalone.id,
      );
      assert.equal(listed?.makerUserId, userId);
    });

    test("disabling the maker suspends a token made in their login session, and the tokens it made; enabling them restores both", async () => {
      const session = await userSession("st-disabled", ["maker"]);
      const standalone = await token({ name: "svc", forUser: false, policies: ["maker"] }, session.token);
      const child = await token({ name: "job", policies: ["maker"] }, standalone.token);
      const statuses = async () => [(await whoami(standalone.token)).status, (await whoami(child.token)).status];
      const before = await statuses();
      ok(await call("PATCH", "/v1/users/st-disabled", { disabled: true }));
      const during = await statuses();
      // What deletion would forbid for good it can't do while its maker is suspended.
      const made = await call("POST", "/v1/auth/tokens", { name: "more", policies: ["maker"] }, standalone.token);
      ok(await call("PATCH", "/v1/users/st-disabled", { disabled: false }));
      const enabled = await statuses();
      assert.deepEqual(
        { before, during, made: made.status, enabled },
        { before: [200, 200], during: [401, 401], made: 401, enabled: [200, 200] },
      );
    });

    test("deleting the maker revokes a token made in their login session and the token it made, named in the audit record", async () => {
      const session = await userSession("st-deleted", ["maker"]);
      const standalone = await token({ name: "svc", forUser: false, policies: ["maker"] }, session.token);
      const child = await token({ name: "job", policies: ["maker"] }, standalone.token);
      assert.equal((await whoami(child.token)).status, 200);
      const deleted = await call("DELETE", "/v1/users/st-deleted");
      ok(deleted);
      const record = rowsOf(deleted).find((r) => r.action === "user.delete");
      const revoked = custos.query<{ id: string; revoked_at: string | null }>(
        "SELECT id, revoked_at FROM tokens WHERE id IN (?, ?, ?) ORDER BY created_at, id",
        session.tokenId,
        standalone.id,
        child.id,
      );
      assert.deepEqual(
        {
          statuses: [(await whoami(standalone.token)).status, (await whoami(child.token)).status],
          revoked: revoked.map((r) => [r.id, r.revoked_at !== null]),
          revokedWith: new Set(JSON.parse(record?.details ?? "{}").revokedWith as string[]),
        },
        {
          statuses: [401, 401],
          revoked: [
            [session.tokenId, true],
            [standalone.id, true],
            [child.id, true],
          ],
          revokedWith: new Set([standalone.id, child.id]),
        },
      );
      // Revoked for good: a user made again under the same name makes none of it live again.
      await userSession("st-deleted", ["maker"]);
      assert.equal((await whoami(standalone.token)).status, 401);
    });

    test("the maker's logout and a new password leave a token made in their login session working", async () => {
      const first = await userSession("st-logout", ["maker"]);
      const fromFirst = await token({ name: "svc-1", forUser: false, policies: ["maker"] }, first.token);
      // Logging out: the session revokes itself, and revokes nothing with it.
      const logout = ok(await call("DELETE", `/v1/auth/tokens/${first.tokenId}`, undefined, first.token));
      const second = ok(await login("st-logout", first.password)) as { token: string };
      const fromSecond = await token({ name: "svc-2", forUser: false, policies: ["maker"] }, second.token);
      ok(await call("PATCH", "/v1/users/st-logout", { password: "st-logout's new password" }));
      const statuses = {
        firstSession: (await whoami(first.token)).status,
        secondSession: (await whoami(second.token)).status,
        fromFirst: (await whoami(fromFirst.token)).status,
        fromSecond: (await whoami(fromSecond.token)).status,
      };
      // Still the maker's: a new session lists and revokes them.
      const third = ok(await login("st-logout", "st-logout's new password")) as { token: string };
      const listed = (ok(await call("GET", "/v1/auth/tokens", undefined, third.token)).tokens as Json[]).map(
        (t) => t.id,
      );
      const revoke = await call("DELETE", `/v1/auth/tokens/${fromFirst.id}`, undefined, third.token);
      assert.deepEqual(
        {
          revokedWithLogout: logout.revokedWith,
          statuses,
          listed: [listed.includes(fromFirst.id), listed.includes(fromSecond.id)],
          revoke: revoke.status,
          afterwards: (await whoami(fromFirst.token)).status,
        },
        {
          revokedWithLogout: [],
          statuses: { firstSession: 401, secondSession: 401, fromFirst: 200, fromSecond: 200 },
          listed: [true, true],
          revoke: 200,
          afterwards: 401,
        },
      );
    });

    test("another non-admin user can neither list nor revoke a token made in someone else's login session", async () => {
      const maker = await userSession("st-owner", ["maker"]);
      const standalone = await token({ name: "svc", forUser: false, policies: ["maker"] }, maker.token);
      const other = await userSession("st-other", ["maker"]);
      const otherApi = await token({ name: "other-laptop" }, other.token);
      const tries = [];
      for (const bearer of [other.token, otherApi.token]) {
        const listed = (ok(await call("GET", "/v1/auth/tokens", undefined, bearer)).tokens as Json[]).map((t) => t.id);
        const revoke = await call("DELETE", `/v1/auth/tokens/${standalone.id}`, undefined, bearer);
        tries.push([listed.includes(standalone.id), revoke.status, errorCode(revoke)]);
      }
      // The maker's own API token acts for the same user: it may.
      const makerApi = await token({ name: "owner-laptop" }, maker.token);
      const makerListed = (ok(await call("GET", "/v1/auth/tokens", undefined, makerApi.token)).tokens as Json[]).map(
        (t) => t.id,
      );
      assert.deepEqual(
        {
          tries,
          stillWorks: (await whoami(standalone.token)).status,
          revokedAt: custos.query("SELECT revoked_at FROM tokens WHERE id = ?", standalone.id),
          makerListed: makerListed.includes(standalone.id),
        },
        {
          tries: [
            [false, 403, "forbidden"],
            [false, 403, "forbidden"],
          ],
          stillWorks: 200,
          revokedAt: [{ revoked_at: null }],
          makerListed: true,
        },
      );
    });

    test("disabling a user stops the standalone tokens their API tokens made, as deleting them revokes them", async () => {
      const session = await userSession("suspended", ["maker"]);
      const api = await token({ name: "laptop" }, session.token);
      const child = await token({ name: "job", forUser: false, policies: ["maker"] }, api.token);
      assert.equal(child.parentId, api.id);
      for (const t of [session.token, api.token, child.token]) assert.equal((await whoami(t)).status, 200);
      ok(await call("PATCH", "/v1/users/suspended", { disabled: true }));
      const during = [];
      for (const t of [session.token, api.token, child.token]) during.push((await whoami(t)).status);
      // A standalone child can't do while its maker is suspended what deletion would forbid it for good.
      const grandchild = await call("POST", "/v1/auth/tokens", { name: "more", policies: ["maker"] }, child.token);
      ok(await call("PATCH", "/v1/users/suspended", { disabled: false }));
      const enabled = [];
      for (const t of [session.token, api.token, child.token]) enabled.push((await whoami(t)).status);
      assert.deepEqual(
        { during, grandchild: grandchild.status, enabled },
        { during: [401, 401, 401], grandchild: 401, enabled: [200, 200, 200] },
      );
    });
  });

  test("a sudo admin grant can't be made to outlast itself: its holder can't give admin for good, itself included", async () => {
    const session = await userSession("temp-admin");
    const grant = ok(
      await call("POST", "/v1/sudo/grants", { user: "temp-admin", ttlSeconds: 600, reason: "incident 7" }),
      201,
    );
    assert.equal((ok(await whoami(session.token)) as Json).isAdmin, true);
    const attempts = {
      self: await call("PATCH", "/v1/users/temp-admin", { policies: ["admin"] }, session.token),
      twin: await call(
        "POST",
        "/v1/users",
        { name: "temp-admin-twin", password: "the twin's own password", policies: ["admin"] },
        session.token,
      ),
      group: await call(
        "POST",
        "/v1/groups",
        { name: "temp-admins", members: ["temp-admin"], policies: ["admin"] },
        session.token,
      ),
    };
    ok(await call("DELETE", `/v1/sudo/grants/${grant.id as string}`));
    const afterwards = ok(await whoami(session.token)) as Json;
    // The same rule as a standalone token's: what is given lasts, a grant lapses (api.md, users and groups).
    assert.deepEqual(
      {
        self: [attempts.self.status, errorCode(attempts.self)],
        twin: [attempts.twin.status, errorCode(attempts.twin)],
        group: [attempts.group.status, errorCode(attempts.group)],
        isAdminAfterRevoke: afterwards.isAdmin,
      },
      {
        self: [403, "forbidden"],
        twin: [403, "forbidden"],
        group: [403, "forbidden"],
        isAdminAfterRevoke: false,
      },
    );
  });

  describe("names given in another case", () => {
    test("are folded wherever they are given: user, group and policy names, members, policies, sudo subjects", async () => {
      ok(await call("PUT", "/v1/policies/Fold-Reader", { rules: [{ resource: "key/*", actions: ["key:read"] }] }));
      const user = ok(await call("POST", "/v1/users", { name: "Fold-User", policies: ["FOLD-READER"] }), 201);
      const group = ok(
        await call("POST", "/v1/groups", { name: "Fold-Group", members: ["FOLD-USER"], policies: ["fold-READER"] }),
        201,
      );
      const grant = ok(
        await call("POST", "/v1/sudo/grants", {
          group: "FOLD-GROUP",
          ttlSeconds: 60,
          reason: "fold",
          policies: ["Fold-Reader"],
        }),
        201,
      );
      const made = await token({ name: "fold", policies: ["FOLD-reader"] });
      assert.deepEqual(
        [
          user.name,
          user.policies,
          group.name,
          group.members,
          group.policies,
          grant.subject,
          grant.policies,
          made.policies,
        ],
        [
          "fold-user",
          ["fold-reader"],
          "fold-group",
          ["fold-user"],
          ["fold-reader"],
          "fold-group",
          ["fold-reader"],
          ["fold-reader"],
        ],
      );
      // What the database holds, read directly.
      const stored = custos.query<{ name: string; policies: string }>(
        "SELECT name, policies FROM users WHERE name LIKE 'fold%' COLLATE NOCASE",
      );
      assert.deepEqual(stored, [{ name: "fold-user", policies: '["fold-reader"]' }]);
      assert.deepEqual(custos.query("SELECT name FROM policies WHERE name LIKE 'fold%' COLLATE NOCASE"), [
        { name: "fold-reader" },
      ]);
      ok(await call("DELETE", `/v1/sudo/grants/${grant.id as string}`));
    });

    test("a name given in another case is authorised as the user, group or policy it finds", async () => {
      await userSession("case-target");
      ok(await call("POST", "/v1/groups", { name: "case-group" }), 201);
      ok(
        await call("PUT", "/v1/policies/case-read", {
          rules: [
            { resource: "user/case-target", actions: ["user:read"] },
            { resource: "group/case-group", actions: ["group:read"] },
            { resource: "policy/case-read", actions: ["policy:read"] },
          ],
        }),
      );
      const reader = await userSession("case-reader", ["case-read"]);
      const statuses: Record<string, number> = {};
      for (const path of [
        "/v1/users/case-target",
        "/v1/users/CASE-TARGET",
        "/v1/groups/case-group",
        "/v1/groups/Case-Group",
        "/v1/policies/case-read",
        "/v1/policies/CASE-READ",
      ]) {
        statuses[path] = (await call("GET", path, undefined, reader.token)).status;
      }
      // api.md: "a name given in any case finds the same user, group or policy".
      assert.deepEqual(statuses, {
        "/v1/users/case-target": 200,
        "/v1/users/CASE-TARGET": 200,
        "/v1/groups/case-group": 200,
        "/v1/groups/Case-Group": 200,
        "/v1/policies/case-read": 200,
        "/v1/policies/CASE-READ": 200,
      });
    });

    test("a login in another case opens a session of the folded user, audited under its name", async () => {
      const { password } = await userSession("case-login");
      const r = await login("CASE-Login", password);
      const session = ok(r) as { token: string; tokenId: string };
      const who = ok(await whoami(session.token));
      assert.deepEqual([who.kind, who.name], ["user", "case-login"]);
      const [row] = rowsOf(r);
      assert.deepEqual(
        [row?.principal, row?.action, row?.resource, row?.outcome],
        ["user:case-login", "auth.login", "user/case-login", "success"],
      );
      assert.equal(JSON.parse(row?.details ?? "{}").tokenId, session.tokenId);
    });

    test("a failed login typed in another case is audited under the account's name, so a query for it finds the attempt", async () => {
      await userSession("case-target-2");
      const failed = await login("Case-Target-2", "not the password at all");
      assert.equal(failed.status, 401);
      const [row] = rowsOf(failed);
      assert.deepEqual([row?.action, row?.outcome, row?.error_code], ["auth.login", "denied", "unauthenticated"]);
      const found = ok(await call("GET", "/v1/audit?resource=user/case-target-2&action=auth.login&limit=50"));
      const outcomes = (found.records as Json[]).map((r) => r.outcome).sort();
      assert.deepEqual(
        { resource: row?.resource, outcomes },
        {
          resource: "user/case-target-2",
          outcomes: ["denied", "success"],
        },
      );
    });
  });

  describe("policy evaluation", () => {
    test("rules add up across rules and policies: a narrower rule naming other actions takes nothing away", async () => {
      for (const name of ["pe-alpha", "pe-alpha-x", "pe-beta"]) {
        ok(await call("POST", "/v1/keys", { name, purpose: "encrypt" }), 201);
      }
      ok(
        await call("PUT", "/v1/policies/pe-broad", {
          rules: [
            { resource: "key/pe-*", actions: ["key:read"] },
            { resource: "key/pe-alpha*", actions: ["key:encrypt"] },
          ],
        }),
      );
      ok(
        await call("PUT", "/v1/policies/pe-narrow", { rules: [{ resource: "key/pe-beta", actions: ["key:rotate"] }] }),
      );
      const t = (await token({ name: "pe", forUser: false, policies: ["pe-broad", "pe-narrow"] })).token;
      const encrypt = (key: string) => call("POST", `/v1/keys/${key}/encrypt`, { plaintext: b64("x") }, t);
      const rotate = (key: string) => call("POST", `/v1/keys/${key}/rotate`, undefined, t);
      const outcome = {
        readAlphaX: (await call("GET", "/v1/keys/pe-alpha-x", undefined, t)).status,
        readBeta: (await call("GET", "/v1/keys/pe-beta", undefined, t)).status,
        encryptAlphaX: (await encrypt("pe-alpha-x")).status,
        encryptBeta: (await encrypt("pe-beta")).status,
        rotateBeta: (await rotate("pe-beta")).status,
        rotateAlpha: (await rotate("pe-alpha")).status,
        destroyAlpha: (await call("DELETE", "/v1/keys/pe-alpha?immediate=true", undefined, t)).status,
      };
      assert.deepEqual(outcome, {
        readAlphaX: 200,
        readBeta: 200,
        encryptAlphaX: 200,
        encryptBeta: 403,
        rotateBeta: 200,
        rotateAlpha: 403,
        destroyAlpha: 403,
      });
    });

    test("a Vault-style 'deny', an action in capitals or an unknown one is refused by name, and nothing is stored", async () => {
      for (const actions of [["deny"], ["KEY:READ"], ["key:read", "key:frobnicate"], ["read"], ["key:read:*"]]) {
        const r = await call("PUT", "/v1/policies/pe-refused", { rules: [{ resource: "key/*", actions }] });
        assert.deepEqual([r.status, errorCode(r)], [400, "invalid_request"], JSON.stringify(actions));
        const named = actions[actions.length - 1] ?? "";
        assert.ok(r.text.includes(named), `${r.text} doesn't name ${named}`);
      }
      assert.equal((await call("GET", "/v1/policies/pe-refused")).status, 404);
      assert.deepEqual(custos.query("SELECT name FROM policies WHERE name = 'pe-refused'"), []);
    });
  });

  test("group membership, a group's policies, its deletion and its sudo grant count from the very next request", async () => {
    ok(await call("PUT", "/v1/policies/gm-read", { rules: [{ resource: "key/gm-*", actions: ["key:read"] }] }));
    ok(await call("POST", "/v1/keys", { name: "gm-key", purpose: "encrypt" }), 201);
    const { token: s } = await userSession("gm-user");
    const read = async () => (await call("GET", "/v1/keys/gm-key", undefined, s)).status;
    const steps: [string, unknown][] = [];
    steps.push(["before", await read()]);
    ok(await call("POST", "/v1/groups", { name: "gm-readers", members: ["gm-user"], policies: ["gm-read"] }), 201);
    steps.push(["group made with the member", await read()]);
    ok(await call("PATCH", "/v1/groups/gm-readers", { policies: [] }));
    steps.push(["group's policies emptied", await read()]);
    ok(await call("PATCH", "/v1/groups/gm-readers", { policies: ["gm-read"] }));
    steps.push(["policies back", await read()]);
    ok(await call("PATCH", "/v1/groups/gm-readers", { removeMembers: ["gm-user"] }));
    steps.push(["member removed", await read()]);
    ok(await call("PATCH", "/v1/groups/gm-readers", { members: ["gm-user"] }));
    steps.push(["members replaced", await read()]);
    ok(await call("DELETE", "/v1/groups/gm-readers"));
    steps.push(["group deleted", await read()]);

    ok(await call("POST", "/v1/groups", { name: "gm-oncall" }), 201);
    const grant = ok(
      await call("POST", "/v1/sudo/grants", { group: "gm-oncall", ttlSeconds: 600, reason: "pager" }),
      201,
    );
    const sudo = async () => {
      const who = ok(await whoami(s));
      const grants = (await call("GET", "/v1/sudo/grants", undefined, s)).status;
      return [who.isAdmin, who.sudoUntil, grants];
    };
    steps.push(["grant to an empty group", await sudo()]);
    ok(await call("PATCH", "/v1/groups/gm-oncall", { addMembers: ["gm-user"] }));
    steps.push(["added after the grant", await sudo()]);
    ok(await call("PATCH", "/v1/groups/gm-oncall", { removeMembers: ["gm-user"] }));
    steps.push(["removed again", await sudo()]);
    ok(await call("DELETE", `/v1/sudo/grants/${grant.id as string}`));
    assert.deepEqual(steps, [
      ["before", 403],
      ["group made with the member", 200],
      ["group's policies emptied", 403],
      ["policies back", 200],
      ["member removed", 403],
      ["members replaced", 200],
      ["group deleted", 403],
      ["grant to an empty group", [false, null, 403]],
      ["added after the grant", [true, grant.expiresAt, 200]],
      ["removed again", [false, null, 403]],
    ]);
  });

  test("a sudo grant that adds nothing the user lacks shows no sudoUntil; one that adds a policy shows its end", async () => {
    ok(await call("PUT", "/v1/policies/sg-extra", { rules: [{ resource: "key/sg-*", actions: ["key:read"] }] }));
    const { token: s } = await userSession("sg-user", ["maker"]);
    const same = ok(
      await call("POST", "/v1/sudo/grants", { user: "sg-user", ttlSeconds: 600, reason: "r", policies: ["maker"] }),
      201,
    );
    const whoSame = ok(await whoami(s));
    const extra = ok(
      await call("POST", "/v1/sudo/grants", { user: "sg-user", ttlSeconds: 300, reason: "r", policies: ["sg-extra"] }),
      201,
    );
    const whoExtra = ok(await whoami(s));
    ok(await call("DELETE", `/v1/sudo/grants/${same.id as string}`));
    ok(await call("DELETE", `/v1/sudo/grants/${extra.id as string}`));
    const whoAfter = ok(await whoami(s));
    assert.deepEqual(
      [
        whoSame.sudoUntil,
        whoSame.policies,
        whoExtra.sudoUntil,
        whoExtra.policies,
        whoAfter.policies,
        whoAfter.sudoUntil,
      ],
      [null, ["maker"], extra.expiresAt, ["maker", "sg-extra"], ["maker"], null],
    );
  });

  test("lifetimes are exact: a session lives auth.sessionTtlSeconds, a token its ttlSeconds, a sudo grant its ttlSeconds", async () => {
    const session = await userSession("ttl-user", ["maker"]);
    const made = await token({ name: "ttl", ttlSeconds: 3_600 }, session.token);
    const grant = ok(await call("POST", "/v1/sudo/grants", { user: "ttl-user", ttlSeconds: 75, reason: "r" }), 201);
    ok(await call("DELETE", `/v1/sudo/grants/${grant.id as string}`));
    const listed = (ok(await call("GET", "/v1/auth/tokens", undefined, session.token)).tokens as Json[]).find(
      (t) => t.id === session.tokenId,
    );
    const span = (o: Json | undefined) => Date.parse(String(o?.expiresAt)) - Date.parse(String(o?.createdAt));
    assert.equal(listed?.expiresAt, session.expiresAt);
    assert.deepEqual(
      [listed?.kind, span(listed), span(made), span(grant)],
      ["session", SESSION_TTL_SECONDS * 1000, 3_600_000, 75_000],
    );
  });

  test("a wrong password, an unknown user and a disabled user leave alike audit records, no log line and no password", async () => {
    const known = await userSession("al-known");
    const off = await userSession("al-off");
    ok(await call("PATCH", "/v1/users/al-off", { disabled: true }));
    const tries = [
      ["al-known", "al-known wrong password 1"],
      ["al-unknown", "al-unknown password 12"],
      ["al-off", off.password],
    ] as const;
    const answers: Answer[] = [];
    for (const [name, password] of tries) answers.push(await login(name, password));
    const seen = answers.map((a, i) => {
      const rows = rowsOf(a);
      assert.equal(rows.length, 1, `attempt ${i}: ${rows.length} audit records`);
      const { resource, ...rest } = rows[0] ?? ({} as Record<string, unknown>);
      assert.equal(resource, `user/${tries[i]?.[0]}`);
      return rest;
    });
    assert.deepEqual(seen[1], seen[0]);
    assert.deepEqual(seen[2], seen[0]);
    assert.deepEqual(
      [seen[0]?.principal, seen[0]?.action, seen[0]?.outcome, seen[0]?.error_code],
      ["anonymous", "auth.login", "denied", "unauthenticated"],
    );
    // The server's log says nothing of any of them: no line under their request ids, none naming the names tried.
    const log = readFileSync(custos.logFile, "utf8");
    for (const a of answers)
      assert.ok(!log.includes(String(a.headers?.["x-request-id"])), "a refused login was logged");
    for (const [name] of tries) assert.ok(!log.includes(name), `the log names ${name}`);
    const everywhere = JSON.stringify(custos.query("SELECT * FROM audit_log")) + log;
    for (const [, password] of tries) assert.ok(!everywhere.includes(password), "a tried password was recorded");
    assert.ok(!everywhere.includes(known.password), "a password was recorded");
  });

  test("the tokens table holds SHA-256 of each token string, never the string or its secret part", async () => {
    const session = await userSession("db-user", ["maker"]);
    const api = await token({ name: "db-api", ttlSeconds: 600 }, session.token);
    const child = await token({ name: "db-child", forUser: false, policies: ["maker"] }, api.token);
    const all = [
      [session.tokenId, session.token],
      [api.id, api.token],
      [child.id, child.token],
    ] as const;
    const dump =
      JSON.stringify(custos.query("SELECT * FROM tokens")) + JSON.stringify(custos.query("SELECT * FROM audit_log"));
    for (const [id, text] of all) {
      // cst_<16-character id>_<43 characters of secret>
      assert.match(text, /^cst_[a-z2-7]{16}_[A-Za-z0-9_-]{43}$/);
      assert.equal(text.slice(4, 20), id, "the public id is the token's id");
      const rows = custos.query<{ hash: string }>("SELECT hash FROM tokens WHERE id = ?", id);
      assert.deepEqual(rows, [{ hash: sha256(text) }]);
      assert.ok(!dump.includes(text.slice(21)), "a token's secret part is in the database");
    }
  });
});
