/**
 * Listing instances: `GET /v1/broker/instances` and `custos broker instances`.
 * Filters by org, space and app (the names an instance was registered under) and
 * by state (a lapsed lease shows as stopped), paging by `after` and `limit` in
 * byte order of the instance id, authorization on `instance/<org>/<space>/<app>/*`
 * built from the filter, the input checks, the audit record and the CLI.
 * Oracles: the ids this file registered (tracked as it goes) and
 * `GET /v1/broker/instances/:id`, which an item must agree with.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { prepareKey } from "../../src/broker-client/index.js";
import { type CustosInstance, errorCode, type HttpAnswer, startCustos } from "../helpers/custos.js";
import { exchangeToken } from "./instances.js";

type Json = Record<string, unknown>;
type State = "registered" | "running" | "stopped";

/** Exactly the fields of a listed instance. */
const FIELDS = [
  "app",
  "createdAt",
  "instance",
  "leaseExpiresAt",
  "org",
  "registeredBy",
  "space",
  "spiffeId",
  "state",
  "stopReason",
  "stoppedAt",
  "updatedAt",
];

/** Orgs, spaces and apps; "web" lives in two spaces of acme and in globex, so a filter must use every part. */
const APPS = [
  ["acme", "prod", "web"],
  ["acme", "prod", "api"],
  ["acme", "dev", "web"],
  ["globex", "prod", "web"],
  ["initech", "ops", "worker"],
  ["initech", "ops", "cron"],
  ["umbrella", "ops", "job"],
  ["bulk", "b", "many"],
] as const;

/**
 * The instances registered before the tests, in a shuffled order. Their ids
 * interleave across apps and include ones that byte order and a locale's order
 * sort differently ('-' < '0' < '9' < 'a').
 */
const FIXTURE: ReadonlyArray<readonly [string, string, string, string]> = [
  ["acme", "prod", "web", "web2"],
  ["globex", "prod", "web", "web-0"],
  ["acme", "prod", "api", "zz-api"],
  ["acme", "prod", "web", "web10"],
  ["acme", "dev", "web", "dev-web-1"],
  ["acme", "prod", "web", "web-1"],
  ["acme", "prod", "api", "b9"],
  ["globex", "prod", "web", "globex-web"],
  ["acme", "prod", "web", "web1"],
  ["acme", "dev", "web", "0dev"],
  ["acme", "prod", "api", "api-1"],
];

interface Known {
  readonly org: string;
  readonly space: string;
  readonly app: string;
  state: State;
}

/** `path` with `params` as its query string (values URL-encoded; none: no query). */
function withQuery(path: string, params: Record<string, string | number> = {}): string {
  const q = new URLSearchParams(Object.entries(params).map(([k, v]): [string, string] => [k, String(v)])).toString();
  return q ? `${path}?${q}` : path;
}

/** Byte order of ASCII ids: what JS string comparison is. */
const sorted = (ids: Iterable<string>): string[] => [...ids].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));

/** Asserts the error answer's status, code and shape `{ error: { code, message } }`. */
function assertError(a: HttpAnswer, status: number, code: string, what: string): void {
  assert.equal(a.status, status, `${what}: ${a.text}`);
  assert.equal(errorCode(a), code, `${what}: ${a.text}`);
  const error = (a.body as { error?: Json }).error;
  assert.equal(typeof error?.message, "string", `${what}: no message: ${a.text}`);
  assert.ok(String(error?.message).length > 0, `${what}: empty message`);
}

/** Every key anywhere in `value`. */
function keysDeep(value: unknown, into: string[] = []): string[] {
  if (Array.isArray(value)) for (const v of value) keysDeep(v, into);
  else if (value !== null && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      into.push(k);
      keysDeep(v, into);
    }
  }
  return into;
}

describe("GET /v1/broker/instances and custos broker instances", () => {
  let custos: CustosInstance;
  /** The platform agent's token and how audit records and registeredBy name it. */
  let agent: string;
  let agentDisplay: string;
  /** Every instance this file registered, by id, with the state it should be in. */
  const known = new Map<string, Known>();
  /** Every bootstrap token handed out: none may show up in a listing. */
  const bootstrapTokens: string[] = [];

  const register = async (org: string, space: string, app: string, instance: string, ttlSeconds?: number) => {
    const body = { org, space, app, instance, ...(ttlSeconds ? { ttlSeconds } : {}) };
    const a = await custos.call("POST", "/v1/broker/instances", body, agent);
    assert.equal(a.status, 201, a.text);
    const answer = a.body as Json;
    bootstrapTokens.push(String(answer.bootstrapToken));
    known.set(instance, { org, space, app, state: "registered" });
    return answer;
  };

  /** The list answer for `params` as `bearer` (the admin by default); fails unless 200. */
  const list = async (params: Record<string, string | number> = {}, bearer?: string): Promise<Json[]> => {
    const a = await custos.call("GET", withQuery("/v1/broker/instances", params), undefined, bearer);
    assert.equal(a.status, 200, `${JSON.stringify(params)}: ${a.text}`);
    const body = a.body as Json;
    assert.deepEqual(Object.keys(body), ["instances"], a.text);
    assert.ok(Array.isArray(body.instances), a.text);
    return body.instances as Json[];
  };
  const ids = (items: Json[]): string[] => items.map((i) => String(i.instance));
  const listIds = async (params: Record<string, string | number> = {}, bearer?: string) =>
    ids(await list(params, bearer));

  /** The ids this file registered that match the filter, sorted. */
  const expected = (f: { org?: string; space?: string; app?: string; state?: State | "live" } = {}): string[] =>
    sorted(
      [...known.entries()]
        .filter(
          ([, k]) =>
            (f.org === undefined || k.org === f.org) &&
            (f.space === undefined || k.space === f.space) &&
            (f.app === undefined || k.app === f.app) &&
            (f.state === undefined ||
              (f.state === "live" ? k.state === "registered" || k.state === "running" : k.state === f.state)),
        )
        .map(([id]) => id),
    );

  const tokenWith = async (name: string, policies: string[]): Promise<{ token: string; id: string }> => {
    const r = await custos.call("POST", "/v1/auth/tokens", { name, policies });
    assert.equal(r.status, 201, r.text);
    return { token: String((r.body as Json).token), id: String((r.body as Json).id) };
  };

  /** Registers and exchanges with a CSR made by the client library: the instance is then running. */
  const startInstance = async (org: string, space: string, app: string, instance: string) => {
    const key = await prepareKey(instance);
    const reg = await register(org, space, app, instance);
    const ex = await exchangeToken(custos, reg.bootstrapToken, instance, key.csrPem);
    assert.equal(ex.status, 200, ex.text);
    const k = known.get(instance);
    if (k) k.state = "running";
  };

  const deregister = async (instance: string) => {
    const a = await custos.call("DELETE", `/v1/broker/instances/${instance}`, undefined, agent);
    assert.equal(a.status, 200, a.text);
    assert.equal((a.body as Json).state, "stopped", a.text);
    const k = known.get(instance);
    if (k) k.state = "stopped";
  };

  before(async () => {
    // No sweep while the file runs: a lapsed lease is shown as such by the listing's own doing.
    custos = await startCustos({ broker: { sweepSeconds: 3600 } });
    const made = new Set<string>();
    for (const [org, space, app] of APPS) {
      const steps: Array<[string, string]> = [];
      if (!made.has(org)) steps.push(["/v1/platform/orgs", org]);
      if (!made.has(`${org}/${space}`)) steps.push([`/v1/platform/orgs/${org}/spaces`, space]);
      steps.push([`/v1/platform/orgs/${org}/spaces/${space}/apps`, app]);
      for (const [path, name] of steps) {
        const a = await custos.call("POST", path, { name });
        assert.equal(a.status, 201, `${path} ${name}: ${a.text}`);
      }
      made.add(org);
      made.add(`${org}/${space}`);
    }
    const agentToken = await tokenWith("node-agent", ["platform-agent"]);
    agent = agentToken.token;
    agentDisplay = `token:${agentToken.id}`;
    for (const [org, space, app, id] of FIXTURE) await register(org, space, app, id);
    for (const [name, rules] of [
      ["web-reader", [{ resource: "instance/acme/prod/web/*", actions: ["instance:read"] }]],
      ["acme-reader", [{ resource: "instance/acme/*", actions: ["instance:read"] }]],
      ["registrar", [{ resource: "instance/*", actions: ["instance:register", "instance:deregister"] }]],
    ] as const) {
      const p = await custos.call("PUT", `/v1/policies/${name}`, { description: name, rules });
      assert.equal(p.status, 200, p.text);
    }
  });

  after(async () => {
    await custos?.dispose();
  });

  test("filters by org, org+space and org+space+app list exactly the matching ids in byte order, no filter lists all", async () => {
    // Controls on the oracle: the fixture's order is not the sorted one, and byte order is what is meant.
    assert.notDeepEqual(
      FIXTURE.map((f) => f[3]),
      sorted(FIXTURE.map((f) => f[3])),
    );
    assert.deepEqual(expected({ org: "acme", space: "prod", app: "web" }), ["web-1", "web1", "web10", "web2"]);

    assert.deepEqual(await listIds({ limit: 1000 }), expected());
    assert.deepEqual(await listIds({ org: "acme" }), expected({ org: "acme" }));
    assert.deepEqual(await listIds({ org: "globex" }), ["globex-web", "web-0"]);
    assert.deepEqual(await listIds({ org: "acme", space: "prod" }), [
      "api-1",
      "b9",
      "web-1",
      "web1",
      "web10",
      "web2",
      "zz-api",
    ]);
    assert.deepEqual(await listIds({ org: "acme", space: "dev" }), ["0dev", "dev-web-1"]);
    assert.deepEqual(await listIds({ org: "acme", space: "prod", app: "web" }), ["web-1", "web1", "web10", "web2"]);
    assert.deepEqual(await listIds({ org: "acme", space: "prod", app: "api" }), ["api-1", "b9", "zz-api"]);
    assert.deepEqual(await listIds({ org: "acme", space: "dev", app: "web" }), ["0dev", "dev-web-1"]);
    assert.deepEqual(await listIds({ org: "globex", space: "prod", app: "web" }), ["globex-web", "web-0"]);
    // Names that match nothing (an app of another space, a space of another org): an empty list.
    assert.deepEqual(await listIds({ org: "acme", space: "dev", app: "api" }), []);
    assert.deepEqual(await listIds({ org: "globex", space: "dev" }), []);
  });

  test("each item has exactly the documented fields, agrees with GET /v1/broker/instances/:id, and carries nothing secret", async () => {
    const answer = await custos.call("GET", "/v1/broker/instances?limit=1000");
    assert.equal(answer.status, 200, answer.text);
    const items = (answer.body as { instances: Json[] }).instances;
    assert.deepEqual(ids(items), expected(), "control: every fixture instance is listed");
    for (const item of items) {
      const id = String(item.instance);
      assert.deepEqual(Object.keys(item).sort(), FIELDS, `${id}: ${JSON.stringify(item)}`);
      const k = known.get(id);
      assert.ok(k, id);
      assert.equal(item.org, k.org, id);
      assert.equal(item.space, k.space, id);
      assert.equal(item.app, k.app, id);
      assert.equal(item.spiffeId, `spiffe://custos/org/${k.org}/space/${k.space}/app/${k.app}/instance/${id}`);
      assert.equal(item.state, "registered", id);
      assert.equal(item.stoppedAt, null, id);
      assert.equal(item.stopReason, null, id);
      assert.equal(item.registeredBy, agentDisplay, id);
      for (const t of ["leaseExpiresAt", "createdAt", "updatedAt"]) {
        assert.ok(!Number.isNaN(Date.parse(String(item[t]))), `${id}.${t}: ${String(item[t])}`);
      }
      const view = await custos.call("GET", `/v1/broker/instances/${id}`, undefined, agent);
      assert.equal(view.status, 200, view.text);
      const fromView = Object.fromEntries(FIELDS.map((f) => [f, (view.body as Json)[f]]));
      assert.deepEqual(item, fromView, `${id}: the list and GET /v1/broker/instances/${id} disagree`);
    }
    const names = keysDeep(answer.body);
    const secretive = names.filter((n) => /token|hash|secret|cert|jwt|key|chain|csr/i.test(n));
    assert.deepEqual(secretive, [], `fields like a credential: ${secretive.join(", ")}`);
    assert.equal(bootstrapTokens.length, FIXTURE.length, "control");
    for (const token of bootstrapTokens) {
      const [, tokenId, secret] = token.split(".");
      assert.ok(tokenId && secret, token.slice(0, 4));
      assert.ok(!answer.text.includes(secret), "a bootstrap token's secret is in the listing");
      assert.ok(!answer.text.includes(tokenId), "a bootstrap token's id is in the listing");
    }
  });

  test("paging with limit=2 (and 3) by `after` visits every instance once, in order, ending with a short or empty page", async () => {
    const walk = async (filter: Record<string, string>, limit: number): Promise<string[]> => {
      const seen: string[] = [];
      let afterId: string | undefined;
      for (let page = 0; page < 100; page++) {
        const items = await list({ ...filter, limit, ...(afterId !== undefined ? { after: afterId } : {}) });
        assert.ok(items.length <= limit, `page ${page}: ${items.length} items > limit ${limit}`);
        seen.push(...ids(items));
        if (items.length < limit) return seen;
        afterId = String(items[items.length - 1]?.instance);
      }
      assert.fail(`no short page after 100 pages: ${seen.join(",")}`);
    };
    for (const [filter, limit] of [
      [{}, 2],
      [{}, 3],
      [{ org: "acme" }, 2],
      [{ org: "acme", space: "prod" }, 2],
      [{ org: "acme", space: "prod", app: "web" }, 2],
    ] as const) {
      const want = expected(filter);
      assert.ok(want.length >= 4, "control: enough instances to need several pages");
      const seen = await walk(filter, limit);
      assert.deepEqual(seen, want, `${JSON.stringify(filter)} by ${limit}`);
      assert.equal(new Set(seen).size, seen.length, "an instance was listed twice");
    }
    // One page, exactly: the pages are what limit and after say.
    const all = expected();
    assert.deepEqual(await listIds({ limit: 2 }), all.slice(0, 2));
    assert.deepEqual(await listIds({ limit: 2, after: all[1] ?? "-" }), all.slice(2, 4));
    // `after` need not name an existing instance; what sorts after it is listed ('-' < '0' < 'a').
    assert.deepEqual(await listIds({ org: "acme", space: "prod", app: "web", after: "web" }), [
      "web-1",
      "web1",
      "web10",
      "web2",
    ]);
    assert.deepEqual(await listIds({ org: "acme", space: "prod", app: "web", after: "web-1" }), [
      "web1",
      "web10",
      "web2",
    ]);
    assert.deepEqual(await listIds({ org: "acme", space: "prod", app: "web", after: "web1" }), ["web10", "web2"]);
    assert.deepEqual(await listIds({ org: "acme", space: "prod", app: "web", after: "web2" }), []);
    assert.deepEqual(await listIds({ after: "z".repeat(63) }), [], "a 63-character label is a valid `after`");
  });

  test("limit defaults to 100 and goes up to 1000", async () => {
    const bulk = Array.from({ length: 101 }, (_, i) => `bulk-${String(i).padStart(3, "0")}`);
    for (const id of bulk) await register("bulk", "b", "many", id);
    const byDefault = await listIds({ org: "bulk" });
    assert.equal(byDefault.length, 100);
    assert.deepEqual(byDefault, bulk.slice(0, 100));
    assert.deepEqual(await listIds({ org: "bulk", limit: 1000 }), bulk);
    assert.deepEqual(await listIds({ org: "bulk", after: "bulk-099" }), ["bulk-100"]);
    assert.equal((await listIds()).length, 100, "no filter, no limit: 100");
    assert.deepEqual(await listIds({ limit: 1000 }), expected());
    assert.deepEqual(await listIds({ org: "bulk", limit: 1 }), ["bulk-000"]);
  });

  test("state=running, registered, stopped and live list exactly the instances in that state", async () => {
    await register("initech", "ops", "worker", "st-reg");
    await startInstance("initech", "ops", "worker", "st-run");
    await register("initech", "ops", "worker", "st-stop");
    await deregister("st-stop");
    await startInstance("initech", "ops", "worker", "st-both");
    await deregister("st-both");
    await startInstance("initech", "ops", "cron", "st-cron-run");

    const scope = { org: "initech" };
    assert.deepEqual(await listIds(scope), ["st-both", "st-cron-run", "st-reg", "st-run", "st-stop"]);
    assert.deepEqual(await listIds({ ...scope, state: "running" }), ["st-cron-run", "st-run"]);
    assert.deepEqual(await listIds({ ...scope, state: "registered" }), ["st-reg"]);
    assert.deepEqual(await listIds({ ...scope, state: "stopped" }), ["st-both", "st-stop"]);
    assert.deepEqual(await listIds({ ...scope, state: "live" }), ["st-cron-run", "st-reg", "st-run"]);
    const app = { org: "initech", space: "ops", app: "worker" };
    assert.deepEqual(await listIds({ ...app, state: "running" }), ["st-run"]);
    assert.deepEqual(await listIds({ ...app, state: "live" }), ["st-reg", "st-run"]);
    assert.deepEqual(await listIds({ ...scope, state: "live", after: "st-reg" }), ["st-run"]);
    assert.deepEqual(await listIds({ ...scope, state: "stopped", limit: 1 }), ["st-both"]);

    // Without a scope: the same, over everything this file registered.
    for (const state of ["running", "registered", "stopped", "live"] as const) {
      assert.deepEqual(await listIds({ state, limit: 1000 }), expected({ state }), state);
    }

    const byId = new Map((await list(scope)).map((i) => [String(i.instance), i]));
    for (const [id, state, stopReason] of [
      ["st-reg", "registered", null],
      ["st-run", "running", null],
      ["st-cron-run", "running", null],
      ["st-stop", "stopped", "deregistered"],
      ["st-both", "stopped", "deregistered"],
    ] as const) {
      const item = byId.get(id);
      assert.ok(item, id);
      assert.equal(item.state, state, id);
      assert.equal(item.stopReason, stopReason, id);
      if (state === "stopped") assert.ok(!Number.isNaN(Date.parse(String(item.stoppedAt))), `${id}: stoppedAt`);
      else assert.equal(item.stoppedAt, null, id);
      const view = (await custos.call("GET", `/v1/broker/instances/${id}`, undefined, agent)).body as Json;
      assert.deepEqual(item, Object.fromEntries(FIELDS.map((f) => [f, view[f]])), id);
    }
  });

  test("an instance whose lease ended is listed as stopped/lease-lapsed and not under state=live", async () => {
    await register("umbrella", "ops", "job", "lapse-ctl");
    const reg = await register("umbrella", "ops", "job", "lapse-1", 10);
    const scope = { org: "umbrella", space: "ops", app: "job" };
    const fresh = (await list(scope)).find((i) => i.instance === "lapse-1");
    assert.equal(fresh?.state, "registered", "control: live before its lease ends");
    assert.deepEqual(await listIds({ ...scope, state: "live" }), ["lapse-1", "lapse-ctl"], "control");

    // The shortest lease there is (10 s); wait it out, no longer than needed. The sweep is off.
    const wait = Date.parse(String(reg.leaseExpiresAt)) + 1500 - Date.now();
    assert.ok(wait < 15_000, `lease ends in ${wait} ms`);
    await sleep(Math.max(0, wait));
    const k = known.get("lapse-1");
    if (k) k.state = "stopped";

    // Listed before anything else looked at it: the listing shows the lapse itself.
    const items = await list(scope);
    assert.deepEqual(ids(items), ["lapse-1", "lapse-ctl"]);
    const lapsed = items[0] ?? {};
    assert.equal(lapsed.state, "stopped", JSON.stringify(lapsed));
    assert.equal(lapsed.stopReason, "lease-lapsed", JSON.stringify(lapsed));
    assert.ok(!Number.isNaN(Date.parse(String(lapsed.stoppedAt))), `stoppedAt: ${String(lapsed.stoppedAt)}`);
    assert.equal(items[1]?.state, "registered", "control: the other one's lease runs on");
    assert.deepEqual(await listIds({ ...scope, state: "live" }), ["lapse-ctl"]);
    assert.deepEqual(await listIds({ ...scope, state: "registered" }), ["lapse-ctl"]);
    assert.deepEqual(await listIds({ ...scope, state: "stopped" }), ["lapse-1"]);
    assert.ok(!(await listIds({ state: "live", limit: 1000 })).includes("lapse-1"), "no filter, state=live");
    assert.ok((await listIds({ state: "stopped", limit: 1000 })).includes("lapse-1"), "no filter, state=stopped");

    const view = await custos.call("GET", "/v1/broker/instances/lapse-1", undefined, agent);
    assert.equal((view.body as Json).state, "stopped", view.text);
    assert.equal((view.body as Json).stopReason, "lease-lapsed", view.text);
    const again = (await list(scope))[0] ?? {};
    assert.deepEqual(again, Object.fromEntries(FIELDS.map((f) => [f, (view.body as Json)[f]])));
  });

  test("instance:read on instance/acme/prod/web/* lists that app only: 403 without the filter, for org alone, or another app", async () => {
    const web = (await tokenWith("web-reader", ["web-reader"])).token;
    const acme = (await tokenWith("acme-reader", ["acme-reader"])).token;
    const none = (await tokenWith("no-rights", [])).token;
    const registrar = (await tokenWith("registrar", ["registrar"])).token;
    const get = (params: Record<string, string | number>, bearer: string | null) =>
      custos.call("GET", withQuery("/v1/broker/instances", params), undefined, bearer);

    const webApp = { org: "acme", space: "prod", app: "web" };
    assert.deepEqual(await listIds(webApp, web), ["web-1", "web1", "web10", "web2"]);
    assert.deepEqual(await listIds({ ...webApp, state: "live", limit: 2, after: "web-1" }, web), ["web1", "web10"]);
    for (const params of [
      {},
      { org: "acme" },
      { org: "acme", space: "prod" },
      { org: "acme", space: "prod", app: "api" },
      { org: "acme", space: "dev", app: "web" },
      { org: "globex", space: "prod", app: "web" },
      { state: "live" },
    ]) {
      const a = await get(params, web);
      assertError(a, 403, "forbidden", `web-reader ${JSON.stringify(params)}`);
      for (const id of ["api-1", "zz-api", "web-0", "0dev"]) assert.ok(!a.text.includes(id), a.text);
    }

    assert.deepEqual(await listIds({ org: "acme" }, acme), expected({ org: "acme" }));
    assert.deepEqual(await listIds({ org: "acme", space: "dev" }, acme), ["0dev", "dev-web-1"]);
    assert.deepEqual(await listIds({ org: "acme", space: "prod", app: "api" }, acme), ["api-1", "b9", "zz-api"]);
    for (const params of [{}, { org: "globex" }, { org: "globex", space: "prod", app: "web" }]) {
      assertError(await get(params, acme), 403, "forbidden", `acme-reader ${JSON.stringify(params)}`);
    }

    for (const [who, token] of [
      ["no policies", none],
      ["register/deregister only", registrar],
    ] as const) {
      for (const params of [{}, webApp]) {
        assertError(await get(params, token), 403, "forbidden", `${who} ${JSON.stringify(params)}`);
      }
    }

    // The built-in platform-agent policy reads instance/*; the admin can do anything.
    assert.deepEqual(await listIds({ limit: 1000 }, agent), expected());
    assert.deepEqual(await listIds({ limit: 1000 }, custos.adminToken), expected());

    for (const bearer of [null, "cst_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"]) {
      for (const params of [{}, webApp]) {
        const a = await get(params, bearer);
        assertError(a, 401, "unauthenticated", `token ${bearer === null ? "none" : "unknown"}`);
        assert.ok(!a.text.includes("web-1"), a.text);
      }
    }
  });

  test("listing is audited as instance:read like GET /v1/broker/instances/:id, served and refused, with the scope's resource", async () => {
    const reader = await tokenWith("audited-reader", ["web-reader"]);
    // The journal writes a permission's ':' as '.': the action GET /:id is recorded under is the reference.
    const view = await custos.call("GET", "/v1/broker/instances/web-1", undefined, reader.token);
    assert.equal(view.status, 200, view.text);
    await listIds({ org: "acme", space: "prod", app: "web" }, reader.token);
    const refused = await custos.call("GET", "/v1/broker/instances?org=globex", undefined, reader.token);
    assertError(refused, 403, "forbidden", "control");
    const a = await custos.call("GET", withQuery("/v1/audit", { principal: `token:${reader.id}`, limit: 1000 }));
    assert.equal(a.status, 200, a.text);
    const records = (a.body as { records: Json[] }).records;
    const route = (r: Json) => (r.details as Json | null)?.route;
    const single = records.filter((r) => route(r) === "/v1/broker/instances/:id");
    assert.equal(single.length, 1, a.text);
    const readAction = String(single[0]?.action);
    assert.equal(readAction.replaceAll(".", ":"), "instance:read", "control: how GET /:id is recorded");
    const listed = records.filter((r) => route(r) === "/v1/broker/instances");
    assert.deepEqual(
      listed.map((r) => [r.action, r.outcome, r.resource]),
      [
        [readAction, "success", "instance/acme/prod/web/*"],
        [readAction, "denied", "instance/globex/*"],
      ],
      a.text,
    );
  });

  test("bad filters, states, after and limit values are 400 invalid_request with the error shape", async () => {
    const long = "a".repeat(64);
    const bad: string[] = [
      // space needs org, app needs space
      "space=prod",
      "app=web",
      "org=acme&app=web",
      "space=prod&app=web",
      // not DNS labels
      "org=ACME",
      "org=-acme",
      "org=acme-",
      "org=a_b",
      "org=acme.corp",
      "org=",
      `org=${long}`,
      "org=acme&space=Prod",
      "org=acme&space=",
      "org=acme&space=prod&app=web!",
      "org=acme&space=prod&app=",
      `org=acme&space=prod&app=${long}`,
      // states
      "state=bogus",
      "state=RUNNING",
      "state=",
      "state=live%2Crunning",
      // after
      "after=Web-1",
      "after=web_1",
      "after=-web",
      "after=",
      `after=${long}`,
      // limit
      "limit=0",
      "limit=1001",
      "limit=-1",
      "limit=x",
      "limit=",
      "limit=1.5",
      "limit=10abc",
      // unknown parameters
      "foo=bar",
      "instance=web-1",
      "Org=acme",
      "offset=2",
      "org=acme&space=prod&app=web&extra=1",
    ];
    for (const q of bad) {
      assertError(await custos.call("GET", `/v1/broker/instances?${q}`), 400, "invalid_request", q);
    }
    // Controls: the boundaries and each state are accepted.
    assert.equal((await listIds({ limit: 1 })).length, 1);
    assert.equal((await listIds({ limit: 1000 })).length, expected().length);
    for (const state of ["registered", "running", "stopped", "live"]) await list({ state });
    await list({ org: "acme", space: "prod", app: "web", after: "a".repeat(63) });
    await list({ org: "acme", space: "dev" });
  });

  test("custos broker instances: --json is the API's answer, scope, --state, --after and --limit pass through, bad input fails", async () => {
    const json = (args: string[], token?: string): Json => {
      const r = custos.cli(["broker", "instances", ...args, "--json"], token ? { token } : {});
      assert.equal(r.status, 0, `${args.join(" ")}: ${r.stderr}`);
      return JSON.parse(r.stdout) as Json;
    };
    const api = async (params: Record<string, string | number>): Promise<unknown> => {
      const a = await custos.call("GET", withQuery("/v1/broker/instances", params));
      assert.equal(a.status, 200, a.text);
      return a.body;
    };
    const webApp = { org: "acme", space: "prod", app: "web" };
    const web = json(["acme/prod/web"]);
    assert.deepEqual(web, await api(webApp));
    assert.deepEqual(ids(web.instances as Json[]), ["web-1", "web1", "web10", "web2"]);
    assert.deepEqual(json(["acme/prod"]), await api({ org: "acme", space: "prod" }));
    assert.deepEqual(json(["acme"]), await api({ org: "acme" }));
    assert.deepEqual(json([]), await api({}));
    assert.equal((json([]).instances as Json[]).length, 100, "the default limit");

    const running = json(["initech", "--state", "running"]);
    assert.deepEqual(running, await api({ org: "initech", state: "running" }));
    assert.deepEqual(ids(running.instances as Json[]), ["st-cron-run", "st-run"]);
    assert.deepEqual(ids(json(["initech", "--state", "stopped"]).instances as Json[]), ["st-both", "st-stop"]);
    const two = json(["acme/prod/web", "--limit", "2"]);
    assert.deepEqual(ids(two.instances as Json[]), ["web-1", "web1"]);
    const page = json(["acme/prod/web", "--after", "web1", "--limit", "1"]);
    assert.deepEqual(page, await api({ ...webApp, after: "web1", limit: 1 }));
    assert.deepEqual(ids(page.instances as Json[]), ["web10"]);
    assert.equal((json(["--limit", "1000"]).instances as Json[]).length, expected().length);
    // As the platform agent, with its own token.
    assert.deepEqual(json(["globex/prod/web"], agent), await api({ org: "globex", space: "prod", app: "web" }));

    // A table by default: every id and its state on stdout.
    const table = custos.cli(["broker", "instances", "initech"]);
    assert.equal(table.status, 0, table.stderr);
    for (const id of ["st-both", "st-cron-run", "st-reg", "st-run", "st-stop"])
      assert.match(table.stdout, new RegExp(id));
    for (const state of ["registered", "running", "stopped"]) assert.match(table.stdout, new RegExp(state));
    assert.throws(() => JSON.parse(table.stdout), "the default output is a table, not JSON");

    for (const args of [
      ["acme//web"],
      ["ACME"],
      ["acme/prod/web/extra"],
      ["/acme"],
      ["acme/"],
      ["acme/prod/Web"],
      ["acme", "--state", "bogus"],
      ["acme", "--limit", "0"],
      ["acme", "--limit", "1001"],
      ["acme", "--limit", "x"],
      ["acme", "--after", "Bad_Id"],
    ]) {
      const r = custos.cli(["broker", "instances", ...args, "--json"]);
      assert.notEqual(r.status, 0, `${args.join(" ")} succeeded: ${r.stdout}`);
      assert.ok(r.stderr.length > 0, `${args.join(" ")}: nothing on stderr`);
      assert.ok(!r.stdout.includes('"instances"'), `${args.join(" ")}: ${r.stdout}`);
    }
    // A refusal by the server: its error code on stderr.
    const narrow = (await tokenWith("cli-web-reader", ["web-reader"])).token;
    assert.equal(json(["acme/prod/web"], narrow).instances !== undefined, true, "control: the app is allowed");
    const refused = custos.cli(["broker", "instances", "acme"], { token: narrow });
    assert.notEqual(refused.status, 0, refused.stdout);
    assert.match(refused.stderr, /forbidden/);
  });
});
