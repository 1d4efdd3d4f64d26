import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type CustosInstance, startCustos } from "../helpers/custos.js";

type Json = Record<string, unknown>;

describe("authentication and authorisation over HTTPS", () => {
  let custos: CustosInstance;
  const code = (r: { body: unknown }) => (r.body as { error?: { code?: string } }).error?.code;
  before(async () => {
    custos = await startCustos();
    for (const name of ["app-a-data", "app-b-data"]) {
      const r = await custos.call("POST", "/v1/keys", { name, purpose: "encrypt" });
      assert.equal(r.status, 201, r.text);
    }
    const p = await custos.call("PUT", "/v1/policies/app-a", {
      description: "app A's keys only",
      rules: [{ resource: "key/app-a-*", actions: ["key:encrypt", "key:decrypt", "key:datakey", "key:read"] }],
    });
    assert.equal(p.status, 200, p.text);
  });
  after(async () => {
    await custos?.dispose();
  });

  const tokenWith = async (policies: string[]) => {
    const r = await custos.call("POST", "/v1/auth/tokens", { name: `t-${policies.join("-") || "none"}`, policies });
    assert.equal(r.status, 201, r.text);
    return (r.body as Json).token as string;
  };

  test("no token, a malformed token or an unknown token: 401", async () => {
    for (const bearer of [null, "not-a-token", "cst_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"]) {
      const r = await custos.call("GET", "/v1/keys", undefined, bearer);
      assert.equal(r.status, 401, r.text);
      assert.equal(code(r), "unauthenticated");
    }
  });

  test("a token whose policy doesn't cover the key: 403", async () => {
    const none = await tokenWith([]);
    const r = await custos.call("POST", "/v1/keys/app-a-data/datakey", {}, none);
    assert.equal(r.status, 403, r.text);
    assert.equal(code(r), "forbidden");
  });

  test("a policy scoped to app-a-* keys can use them and can't touch app-b-*", async () => {
    const appA = await tokenWith(["app-a"]);
    const ok = await custos.call("POST", "/v1/keys/app-a-data/datakey", { context: { app: "a" } }, appA);
    assert.equal(ok.status, 200, ok.text);
    for (const [method, path, body] of [
      ["POST", "/v1/keys/app-b-data/datakey", {}],
      ["POST", "/v1/keys/app-b-data/encrypt", { plaintext: "aGk=" }],
      ["GET", "/v1/keys/app-b-data", undefined],
      ["POST", "/v1/keys/app-a-data/rotate", undefined],
      ["DELETE", "/v1/keys/app-a-data?immediate=true", undefined],
    ] as const) {
      const r = await custos.call(method, path, body, appA);
      assert.equal(r.status, 403, `${method} ${path}: ${r.text}`);
    }
    // The denial is audited with its principal and outcome.
    const audit = await custos.call("GET", "/v1/audit?order=desc&limit=20");
    const records = (audit.body as { records: Json[] }).records;
    assert.ok(records.some((x) => x.outcome === "denied" && String(x.resource).startsWith("key/app-b-data")));
  });

  test("sudo: elevation works while granted and stops when revoked", async () => {
    const password = "correct horse battery staple";
    assert.equal((await custos.call("POST", "/v1/users", { name: "operator", password, policies: [] })).status, 201);
    const login = await custos.call("POST", "/v1/auth/login", { username: "operator", password }, null);
    assert.equal(login.status, 200, login.text);
    const token = (login.body as Json).token as string;

    const before = await custos.call("GET", "/v1/audit?limit=1", undefined, token);
    assert.equal(before.status, 403, "reading the audit log is privileged");

    const grant = await custos.call("POST", "/v1/sudo/grants", {
      user: "operator",
      ttlSeconds: 600,
      reason: "incident 42",
    });
    assert.equal(grant.status, 201, grant.text);
    const during = await custos.call("GET", "/v1/audit?limit=1", undefined, token);
    assert.equal(during.status, 200, during.text);
    const whoami = await custos.call("GET", "/v1/auth/whoami", undefined, token);
    assert.equal((whoami.body as Json).isAdmin, true);

    const revoke = await custos.call("DELETE", `/v1/sudo/grants/${(grant.body as Json).id as string}`);
    assert.equal(revoke.status, 200, revoke.text);
    const afterRevoke = await custos.call("GET", "/v1/audit?limit=1", undefined, token);
    assert.equal(afterRevoke.status, 403, afterRevoke.text);
  });

  test("a revoked token stops working at once", async () => {
    const created = await custos.call("POST", "/v1/auth/tokens", { name: "short-lived", policies: ["app-a"] });
    const { token, id } = created.body as { token: string; id: string };
    assert.equal((await custos.call("GET", "/v1/keys/app-a-data", undefined, token)).status, 200);
    assert.equal((await custos.call("DELETE", `/v1/auth/tokens/${id}`)).status, 200);
    assert.equal((await custos.call("GET", "/v1/keys/app-a-data", undefined, token)).status, 401);
  });
});
