/**
 * Second-pass conformance review of the platform model and the broker as a
 * platform agent and an app's owners use them over HTTPS (docs/broker.md): owners
 * whose names fold to one user, leases changed after credentials were issued, an
 * app deleted while its agent registers instances, agents scoped to one org, and
 * what an instance's JWT reaches beyond the broker. Oracles: jose with the served
 * JWK set, the instance and app read back through the API, the audit log.
 * What earlier reviews check (test/platform/*.test.ts, test/broker/*.test.ts,
 * test/e2e/broker.test.ts) is not repeated.
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createLocalJWKSet, type JSONWebKeySet, jwtVerify } from "jose";
import { prepareKey } from "../../src/broker-client/index.js";
import { type CustosInstance, errorCode, type HttpAnswer, httpsJson, ok, startCustos } from "../helpers/custos.js";

type Json = Record<string, unknown>;

describe("platform and broker as agents and owners use them: second review", () => {
  let custos: CustosInstance;
  let agent: string;

  const call = (method: string, path: string, body?: unknown, bearer?: string | null): Promise<HttpAnswer> =>
    custos.call(method, path, body, bearer);
  const createApp = (space: string, body: Json) => call("POST", `/v1/platform/orgs/acme/spaces/${space}/apps`, body);
  const register = (body: Json, bearer = agent) => call("POST", "/v1/broker/instances", body, bearer);
  const login = async (name: string): Promise<string> => {
    const password = `pw-${name}-correct-horse`;
    ok(await call("POST", "/v1/users", { name, password, policies: [] }), 201);
    return String(ok(await call("POST", "/v1/auth/login", { username: name, password }, null)).token);
  };
  /** Registers and exchanges an instance of acme/prod/<app>; the exchange answer. */
  const start = async (app: string, instance: string, ttlSeconds?: number): Promise<Json> => {
    const reg = ok(
      await register({ org: "acme", space: "prod", app, instance, ...(ttlSeconds ? { ttlSeconds } : {}) }),
      201,
    );
    const key = await prepareKey(instance);
    const ex = await call(
      "POST",
      "/v1/broker/exchange",
      { token: reg.bootstrapToken, instance, csr: key.csrPem },
      null,
    );
    return ok(ex);
  };
  const requestId = (r: HttpAnswer): string => String((r as HttpAnswer & { headers: Json }).headers["x-request-id"]);
  let betaAgent: string | undefined;
  /** A token allowed only the instances of org beta. */
  const scopedAgent = async (): Promise<string> => {
    if (betaAgent !== undefined) return betaAgent;
    const rules = [
      { resource: "instance/beta/*", actions: ["instance:register", "instance:read", "instance:deregister"] },
    ];
    ok(await call("PUT", "/v1/policies/beta-agent", { rules }));
    betaAgent = String(
      ok(await call("POST", "/v1/auth/tokens", { name: "beta-agent", policies: ["beta-agent"] }), 201).token,
    );
    return betaAgent;
  };
  const auditRecords = async (query: string): Promise<Json[]> =>
    (ok(await call("GET", `/v1/audit?${query}&limit=1000`)).records as Json[]) ?? [];
  /** The records `query` finds that request `r` wrote. */
  const auditOf = async (r: HttpAnswer, query: string): Promise<Json[]> =>
    (await auditRecords(query)).filter((x) => x.requestId === requestId(r));

  before(async () => {
    // No sweep during the tests: a lapse is the doing of the request that finds it.
    custos = await startCustos({ broker: { sweepSeconds: 3600 } });
    ok(await call("POST", "/v1/platform/orgs", { name: "acme" }), 201);
    ok(await call("POST", "/v1/platform/orgs/acme/spaces", { name: "prod" }), 201);
    ok(await createApp("prod", { name: "web" }), 201);
    ok(await call("PUT", "/v1/secrets/data/acme/prod/web/db/password", { value: "web-db-password-review2" }));
    const made = ok(
      await call("POST", "/v1/auth/tokens", { name: "review2-agent", policies: ["platform-agent"] }),
      201,
    );
    agent = String(made.token);
  });

  after(async () => {
    await custos?.dispose();
  });

  test("owners named twice in different case are one owner: the answer, the app read back and the audit record agree", async () => {
    const created = ok(await createApp("prod", { name: "dup", owners: { users: ["admin", "ADMIN"] } }), 201);
    const readBack = ok(await call("GET", "/v1/platform/apps/acme/prod/dup")).app as Json;
    assert.deepEqual(readBack.owners, { users: ["admin"], groups: [] }, "control: the store keeps one owner");
    const [record] = await auditRecords("action=platform.app.create&resource=org/acme/space/prod/app/dup");
    assert.deepEqual(
      ((record?.details as Json | undefined)?.owners as Json | undefined)?.users,
      ["admin"],
      "audit record",
    );
    assert.deepEqual((created.app as Json).owners, readBack.owners, "create answer");
    const patched = ok(
      await call("PATCH", "/v1/platform/apps/acme/prod/dup", { owners: { users: ["Admin", "admin"] } }),
    );
    assert.deepEqual((patched.app as Json).owners, readBack.owners, "PATCH answer");
  });

  test("a lease can't be cut short: refused and audited, and no certificate or JWT issued under it outlives it", async () => {
    const answer = await start("web", "web-cut", 3600);
    const cut = await call("POST", "/v1/broker/instances/web-cut/lease", { ttlSeconds: 10 }, agent);
    assert.equal(cut.status, 400, cut.text);
    assert.equal(errorCode(cut), "invalid_request");
    assert.match(String(((cut.body as Json).error as Json).message), /can only be extended.*deregister/);
    const [record] = await auditOf(cut, "action=broker.lease.extend&resource=instance/acme/prod/web/web-cut");
    assert.deepEqual([record?.outcome, record?.errorCode], ["failure", "invalid_request"]);
    const view = ok(await call("GET", "/v1/broker/instances/web-cut", undefined, agent));
    assert.equal(view.leaseExpiresAt, answer.leaseExpiresAt, "the lease is unchanged");
    const leaseEnd = Date.parse(String(view.leaseExpiresAt));
    const keySet = createLocalJWKSet(
      ok(await call("GET", "/v1/broker/jwks", undefined, null)) as unknown as JSONWebKeySet,
    );
    // A relying party checking the JWT a second after the lease ended, as jose does it offline.
    const verified = await jwtVerify(String(answer.jwt), keySet, {
      audience: "custos",
      currentDate: new Date(leaseEnd + 1000),
    }).then(
      () => "accepted",
      (e: { code?: string }) => String(e.code),
    );
    const certEnd = Date.parse(new X509Certificate(String(answer.certificate)).validTo);
    const live = [
      ...(view.certificates as Json[]).filter((c) => c.status === "valid" && Date.parse(String(c.notAfter)) > leaseEnd),
      ...(view.jwts as Json[]).filter((j) => j.denied === false && Date.parse(String(j.expiresAt)) > leaseEnd),
    ];
    assert.deepEqual(
      { jwtAfterLease: verified, certificateOutlivesLease: certEnd > leaseEnd, listedPastLease: live.length },
      { jwtAfterLease: "ERR_JWT_EXPIRED", certificateOutlivesLease: false, listedPastLease: 0 },
    );
    const longer = ok(await call("POST", "/v1/broker/instances/web-cut/lease", { ttlSeconds: 7200 }, agent));
    assert.ok(Date.parse(String(longer.leaseExpiresAt)) > leaseEnd, "control: extending still works");
  });

  test("an app deleted while its agent registers instances leaves no live instance of a deleted app", async () => {
    ok(await call("POST", "/v1/platform/orgs/acme/spaces", { name: "race" }), 201);
    const orphans: Json[] = [];
    for (let round = 0; round < 10 && orphans.length === 0; round++) {
      const app = `r${round}`;
      ok(await createApp("race", { name: app }), 201);
      const ids = Array.from({ length: 10 }, (_, i) => `${app}-${i}`);
      const [removal, ...registrations] = await Promise.all([
        call("DELETE", `/v1/platform/apps/acme/race/${app}`),
        ...ids.map((instance, i) => sleep(i * 2).then(() => register({ org: "acme", space: "race", app, instance }))),
      ]);
      // A refused deletion leaves the app, and its instances are rightly live.
      if (removal?.status !== 200) continue;
      for (const [i, r] of registrations.entries()) {
        if (r.status !== 201) continue;
        const view = ok(await call("GET", `/v1/broker/instances/${ids[i]}`, undefined, agent));
        const appNow = await call("GET", `/v1/platform/apps/acme/race/${app}`);
        const key = await prepareKey(String(ids[i]));
        const token = (r.body as Json).bootstrapToken;
        const ex = await call("POST", "/v1/broker/exchange", { token, instance: ids[i], csr: key.csrPem }, null);
        orphans.push({ instance: ids[i], state: view.state, app: appNow.status, exchange: errorCode(ex) });
      }
    }
    assert.deepEqual(orphans, []);
  });

  test("an agent scoped to one org can't read, deregister or extend another org's instance; each refusal is audited", async () => {
    const beta = await scopedAgent();
    await start("web", "web-scoped");
    const resource = "instance/acme/prod/web/web-scoped";
    const tries: [string, string, unknown, string][] = [
      ["GET", "/v1/broker/instances/web-scoped", undefined, "instance.read"],
      ["DELETE", "/v1/broker/instances/web-scoped", undefined, "broker.deregister"],
      ["POST", "/v1/broker/instances/web-scoped/lease", { ttlSeconds: 60 }, "broker.lease.extend"],
    ];
    for (const [method, path, body, action] of tries) {
      const r = await call(method, path, body, beta);
      assert.equal(r.status, 403, `${method} ${path}: ${r.text}`);
      assert.equal(errorCode(r), "forbidden");
      const [record] = await auditOf(r, `resource=${resource}&action=${action}`);
      assert.deepEqual([record?.outcome, record?.errorCode], ["denied", "forbidden"], `${method} ${path}`);
    }
    const view = ok(await call("GET", "/v1/broker/instances/web-scoped", undefined, agent));
    assert.equal(view.state, "running");
  });

  test("an agent scoped to one org can't tell another org's instance ids from unknown ones", async () => {
    const beta = await scopedAgent();
    await start("web", "web-hidden");
    for (const [method, path, body] of [
      ["GET", "", undefined],
      ["DELETE", "", undefined],
      ["POST", "/lease", { ttlSeconds: 60 }],
    ] as const) {
      const taken = await call(method, `/v1/broker/instances/web-hidden${path}`, body, beta);
      const unknown = await call(method, `/v1/broker/instances/no-such-instance${path}`, body, beta);
      assert.deepEqual([unknown.status, errorCode(unknown)], [taken.status, errorCode(taken)], `${method} ${path}`);
      // As the platform's app routes answer a caller without rights: forbidden, whether it exists or not.
      assert.equal(errorCode(unknown), "forbidden", `${method} ${path}`);
      // An agent allowed every org's instances learns that the id is unknown.
      const everywhere = await call(method, `/v1/broker/instances/no-such-instance${path}`, body, agent);
      assert.equal(errorCode(everywhere), "not_found", `${method} ${path}`);
    }
    const view = ok(await call("GET", "/v1/broker/instances/web-hidden", undefined, agent));
    assert.equal(view.state, "running", "the refused calls changed nothing");
  });

  test("an owner taken off the app, or out of the owning group, loses the app and its secrets at once", async () => {
    const direct = await login("cart-owner");
    const member = await login("cart-member");
    ok(await call("POST", "/v1/groups", { name: "cart-team", members: ["cart-member"] }), 201);
    ok(await createApp("prod", { name: "cart", owners: { users: ["cart-owner"], groups: ["cart-team"] } }), 201);
    ok(await call("PUT", "/v1/secrets/data/acme/prod/cart/token", { value: "cart-token-value" }));
    const reads = async (bearer: string) => [
      (await call("GET", "/v1/platform/apps/acme/prod/cart", undefined, bearer)).status,
      (await call("GET", "/v1/secrets/data/acme/prod/cart/token", undefined, bearer)).status,
      (await call("PUT", "/v1/secrets/data/acme/prod/cart/token", { value: "changed" }, bearer)).status,
    ];
    assert.deepEqual(await reads(direct), [200, 200, 200], "control: the owner");
    assert.deepEqual(await reads(member), [200, 200, 200], "control: the group member");
    ok(await call("PATCH", "/v1/platform/apps/acme/prod/cart", { owners: { groups: ["cart-team"] } }));
    ok(await call("PATCH", "/v1/groups/cart-team", { removeMembers: ["cart-member"] }));
    assert.deepEqual(await reads(direct), [403, 403, 403], "the former owner");
    assert.deepEqual(await reads(member), [403, 403, 403], "the former member");
    const value = ok(await call("GET", "/v1/secrets/data/acme/prod/cart/token"));
    assert.equal(value.value, "changed", "the refused write changed nothing");
  });

  test("an instance's JWT is a broker credential only: the secrets, platform and KMS routes refuse it", async () => {
    const answer = await start("web", "web-bearer");
    const jwt = String(answer.jwt);
    assert.equal((await call("GET", "/v1/broker/secrets/acme/prod/web/db/password", undefined, jwt)).status, 200);
    for (const [method, path, body] of [
      ["GET", "/v1/secrets/data/acme/prod/web/db/password", undefined],
      ["GET", "/v1/secrets/list/acme/prod/web", undefined],
      ["GET", "/v1/platform/apps/acme/prod/web", undefined],
      ["POST", "/v1/keys/app.acme.prod.web/decrypt", { ciphertext: "x" }],
      ["POST", "/v1/keys/app.acme.prod.web/datakey", {}],
    ] as const) {
      const r = await call(method, path, body, jwt);
      assert.equal(r.status, 401, `${method} ${path}: ${r.text}`);
      assert.equal(errorCode(r), "unauthenticated");
    }
  });

  test("a stopped instance can't be stopped again nor its lease extended: 409, audited, and nothing changes", async () => {
    await start("web", "web-twice");
    const first = ok(await call("DELETE", "/v1/broker/instances/web-twice", undefined, agent));
    assert.equal(first.state, "stopped");
    for (const [method, path, body, action] of [
      ["DELETE", "/v1/broker/instances/web-twice", undefined, "broker.deregister"],
      ["POST", "/v1/broker/instances/web-twice/lease", { ttlSeconds: 3600 }, "broker.lease.extend"],
    ] as const) {
      const r = await call(method, path, body, agent);
      assert.equal(r.status, 409, `${method} ${path}: ${r.text}`);
      assert.equal(errorCode(r), "conflict");
      const [record] = await auditOf(r, `action=${action}`);
      assert.deepEqual([record?.outcome, record?.errorCode], ["failure", "conflict"], `${method} ${path}`);
    }
    const after_ = ok(await call("GET", "/v1/broker/instances/web-twice", undefined, agent));
    assert.deepEqual(
      [after_.state, after_.stoppedAt, after_.leaseExpiresAt, after_.stopReason],
      [first.state, first.stoppedAt, first.leaseExpiresAt, "deregistered"],
    );
    const stops = await auditRecords("action=broker.deregister&resource=instance/acme/prod/web/web-twice");
    assert.equal(stops.filter((s) => s.outcome === "success").length, 1, "one stop recorded");
  });

  test("a user deleted while an app naming it as owner is created: the refused creation leaves the app's name free", async () => {
    ok(await call("POST", "/v1/platform/orgs/acme/spaces", { name: "burn" }), 201);
    const burned: Json[] = [];
    for (const [round, delay] of [0, 1, 1, 2, 2, 3, 4, 5].entries()) {
      const [user, app] = [`leaver-${round}`, `b${round}`];
      ok(await call("POST", "/v1/users", { name: user, password: "pw-leaver-correct-horse", policies: [] }), 201);
      const [made] = await Promise.all([
        createApp("burn", { name: app, owners: { users: [user] } }),
        sleep(delay).then(() => call("DELETE", `/v1/users/${user}`)),
      ]);
      if (made.status === 201) continue;
      // Refused as if the user had been deleted first: nothing was created, so the name must still be free.
      assert.deepEqual(
        [errorCode(made), ((made.body as Json).error as Json).message],
        ["invalid_request", `owner: no user named ${user}`],
      );
      const again = await createApp("burn", { name: app });
      if (again.status !== 201) burned.push({ app, refused: made.text, again: again.text });
    }
    assert.deepEqual(burned, []);
  });

  test("JWT refreshes and renewals racing the deregistration: every credential handed out is refused or revoked after it", async () => {
    const key = await prepareKey("web-racing");
    const reg = ok(await register({ org: "acme", space: "prod", app: "web", instance: "web-racing" }), 201);
    const answer = ok(
      await call(
        "POST",
        "/v1/broker/exchange",
        { token: reg.bootstrapToken, instance: "web-racing", csr: key.csrPem },
        null,
      ),
    );
    const client = { key: key.privateKeyPem, cert: `${String(answer.certificate)}${String(answer.chain)}` };
    const renew = () =>
      httpsJson({
        port: custos.port,
        ca: custos.ca,
        method: "POST",
        path: "/v1/broker/renew",
        body: { csr: key.csrPem },
        client,
      });
    const results = await Promise.all([
      ...Array.from({ length: 4 }, () => call("POST", "/v1/broker/jwt", undefined, String(answer.jwt))),
      ...Array.from({ length: 3 }, renew),
      sleep(5).then(() => call("DELETE", "/v1/broker/instances/web-racing", undefined, agent)),
    ]);
    assert.equal(results.at(-1)?.status, 200, results.at(-1)?.text);
    const jwts = [String(answer.jwt)];
    const serials = [new X509Certificate(String(answer.certificate)).serialNumber];
    for (const r of results.slice(0, -1)) {
      if (r.status !== 200) {
        assert.equal(errorCode(r), "credential_revoked", r.text);
        continue;
      }
      const body = r.body as Json;
      jwts.push(String(body.jwt));
      if (typeof body.certificate === "string") serials.push(new X509Certificate(body.certificate).serialNumber);
    }
    for (const jwt of jwts) {
      const seen = ok(await call("POST", "/v1/broker/introspect", { token: jwt }, null));
      assert.equal(seen.active, false, `a JWT handed out survives the stop (${jwts.length} in all)`);
    }
    const view = ok(await call("GET", "/v1/broker/instances/web-racing", undefined, agent));
    const status = new Map((view.certificates as Json[]).map((c) => [String(c.serial).toLowerCase(), c.status]));
    for (const serial of serials) {
      assert.equal(status.get(serial.toLowerCase().replace(/^0+/, "")), "revoked", `certificate ${serial}`);
    }
  });

  test("an instance deregistered before its exchange: the token is void, the exchange refused and audited as void", async () => {
    ok(await createApp("prod", { name: "batch" }), 201);
    const counts = async () => (ok(await call("GET", "/v1/platform/apps/acme/prod/batch")).app as Json).instances;
    const reg = ok(await register({ org: "acme", space: "prod", app: "batch", instance: "batch-1" }), 201);
    assert.deepEqual(await counts(), { registered: 1 });
    const stopped = ok(await call("DELETE", "/v1/broker/instances/batch-1", undefined, agent));
    assert.deepEqual(stopped.bootstrapToken, { state: "void", expiresAt: reg.tokenExpiresAt });
    assert.deepEqual(await counts(), { stopped: 1 });
    const key = await prepareKey("batch-1");
    const ex = await call(
      "POST",
      "/v1/broker/exchange",
      { token: reg.bootstrapToken, instance: "batch-1", csr: key.csrPem },
      null,
    );
    assert.equal(ex.status, 401, ex.text);
    assert.equal(errorCode(ex), "unauthenticated");
    const tokenId = String(reg.bootstrapToken).split(".")[1];
    const [record] = await auditOf(ex, "action=broker.exchange&resource=instance/acme/prod/batch/batch-1");
    assert.deepEqual(
      [
        record?.outcome,
        record?.errorCode,
        (record?.details as Json | undefined)?.reason,
        (record?.details as Json | undefined)?.tokenId,
      ],
      ["denied", "unauthenticated", "void", tokenId],
    );
    const after_ = ok(await call("GET", "/v1/broker/instances/batch-1", undefined, agent));
    assert.deepEqual([after_.certificates, after_.jwts], [[], []]);
  });
});
