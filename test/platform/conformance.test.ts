import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { type CustosInstance, type HttpAnswer, startCustos } from "../helpers/custos.js";

/**
 * The platform model (docs/broker.md "Names", "Authorisation", "Platform") against a
 * real Custos over HTTPS, with the SQLite files and the audit journal as oracles.
 */

type Json = Record<string, unknown>;

const code = (r: HttpAnswer) => (r.body as { error?: { code?: string } } | null)?.error?.code;
const message = (r: HttpAnswer) => (r.body as { error?: { message?: string } } | null)?.error?.message ?? "";
const ok = (r: HttpAnswer): Json => {
  assert.ok(r.status < 300, r.text);
  return r.body as Json;
};
const requestId = (r: HttpAnswer): string => String((r as HttpAnswer & { headers: Json }).headers["x-request-id"]);

describe("platform model conformance", () => {
  let custos: CustosInstance;
  let owner: string;
  let agent: string;

  const query = <T>(sql: string, ...args: unknown[]): T[] => custos.query<T>(sql, ...args);
  const auditOf = (r: HttpAnswer) =>
    query<{ action: string; outcome: string; error_code: string | null; resource: string }>(
      "SELECT action, outcome, error_code, resource FROM audit_log WHERE request_id = ? ORDER BY seq",
      requestId(r),
    );
  const login = async (name: string): Promise<string> => {
    const password = `pw-${name}-correct-horse`;
    ok(await custos.call("POST", "/v1/users", { name, password, policies: [] }));
    return ok(await custos.call("POST", "/v1/auth/login", { username: name, password }, null)).token as string;
  };
  const space = async (org: string, name: string) => {
    if ((await custos.call("GET", `/v1/platform/orgs/${org}/spaces`)).status === 404) {
      ok(await custos.call("POST", "/v1/platform/orgs", { name: org }));
    }
    ok(await custos.call("POST", `/v1/platform/orgs/${org}/spaces`, { name }));
  };
  const createApp = (org: string, sp: string, body: Json) =>
    custos.call("POST", `/v1/platform/orgs/${org}/spaces/${sp}/apps`, body);

  before(async () => {
    // Lapsed leases are found on the requests that touch them, not by a sweep during the test.
    custos = await startCustos({ broker: { sweepSeconds: 3600 } });
    owner = await login("web-owner");
    const made = custos.cli(["broker", "agent-token", "conformance-agent"]);
    assert.equal(made.status, 0, made.stderr);
    agent = made.stdout.trim();
    await space("acme", "prod");
  });
  after(async () => {
    await custos?.dispose();
  });

  test("names: 63-character labels pass and 64 fail; case, dots, Unicode and a trailing newline are refused", async () => {
    const long = "o".repeat(63);
    ok(await custos.call("POST", "/v1/platform/orgs", { name: long }));
    for (const bad of ["o".repeat(64), "Acme", "ac.me", "acmé", "\u212Acme", "acme\n", "ａcme", "-acme", ""]) {
      const r = await custos.call("POST", "/v1/platform/orgs", { name: bad });
      assert.equal(r.status, 400, `${JSON.stringify(bad)}: ${r.text}`);
      assert.equal(code(r), "invalid_request");
    }
    const orgs = (ok(await custos.call("GET", "/v1/platform/orgs")).orgs as Json[]).map((o) => o.name);
    assert.deepEqual(orgs.sort(), ["acme", long].sort());
    ok(await custos.call("DELETE", `/v1/platform/orgs/${long}`));
  });

  test("org, space and app names together: 122 characters pass, 123 are refused and leave no key behind", async () => {
    const org = "a".repeat(61);
    const sp = "b".repeat(60);
    await space(org, sp);
    const fits = await createApp(org, sp, { name: "c" });
    assert.equal(fits.status, 201, fits.text);
    assert.equal(((fits.body as Json).app as Json).keyName, `app.${org}.${sp}.c`);
    assert.equal(`app.${org}.${sp}.c`.length, 128);
    const over = await createApp(org, sp, { name: "cc" });
    assert.equal(over.status, 400, over.text);
    assert.equal(code(over), "invalid_request");
    assert.match(message(over), /122/);
    const keys = ok(await custos.call("GET", `/v1/keys?prefix=app.${org}.&limit=100`)).keys as Json[];
    assert.deepEqual(
      keys.map((k) => k.name),
      [`app.${org}.${sp}.c`],
    );
  });

  test("each failure answers its documented code: 404 for a missing parent or app, 409 for a duplicate or children", async () => {
    ok(await createApp("acme", "prod", { name: "web" }));
    const cases: [string, string, unknown, number, string][] = [
      ["POST", "/v1/platform/orgs/nope/spaces", { name: "x" }, 404, "not_found"],
      ["GET", "/v1/platform/orgs/nope/spaces", undefined, 404, "not_found"],
      ["GET", "/v1/platform/orgs/acme/spaces/nope/apps", undefined, 404, "not_found"],
      ["POST", "/v1/platform/orgs/acme/spaces/nope/apps", { name: "x" }, 404, "not_found"],
      ["GET", "/v1/platform/apps/acme/prod/nope", undefined, 404, "not_found"],
      ["PATCH", "/v1/platform/apps/acme/prod/nope", { owners: {} }, 404, "not_found"],
      ["DELETE", "/v1/platform/apps/acme/prod/nope", undefined, 404, "not_found"],
      ["DELETE", "/v1/platform/orgs/acme/spaces/nope", undefined, 404, "not_found"],
      ["DELETE", "/v1/platform/orgs/nope", undefined, 404, "not_found"],
      ["POST", "/v1/platform/orgs", { name: "acme" }, 409, "conflict"],
      ["POST", "/v1/platform/orgs/acme/spaces", { name: "prod" }, 409, "conflict"],
      ["POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name: "web" }, 409, "conflict"],
      ["DELETE", "/v1/platform/orgs/acme", undefined, 409, "conflict"],
      ["DELETE", "/v1/platform/orgs/acme/spaces/prod", undefined, 409, "conflict"],
      ["POST", "/v1/platform/orgs", { name: "shared" }, 400, "invalid_request"],
      ["POST", "/v1/platform/orgs/acme/spaces", { name: "Prod" }, 400, "invalid_request"],
    ];
    for (const [method, path, body, status, expected] of cases) {
      const r = await custos.call(method, path, body);
      assert.equal(r.status, status, `${method} ${path}: ${r.text}`);
      assert.equal(code(r), expected, `${method} ${path}`);
      const rows = auditOf(r);
      assert.equal(rows.length, 1, `${method} ${path}: ${JSON.stringify(rows)}`);
      assert.equal(rows[0]?.outcome, "failure", `${method} ${path}`);
      assert.equal(rows[0]?.error_code, expected, `${method} ${path}`);
    }
  });

  test("each successful org, space and owner change writes exactly one platform record under its request id", async () => {
    const steps: [string, string, unknown, string, string][] = [
      ["POST", "/v1/platform/orgs", { name: "audited" }, "platform.org.create", "org/audited"],
      ["POST", "/v1/platform/orgs/audited/spaces", { name: "dev" }, "platform.space.create", "org/audited/space/dev"],
      ["DELETE", "/v1/platform/orgs/audited/spaces/dev", undefined, "platform.space.delete", "org/audited/space/dev"],
      ["DELETE", "/v1/platform/orgs/audited", undefined, "platform.org.delete", "org/audited"],
      [
        "PATCH",
        "/v1/platform/apps/acme/prod/web",
        { owners: { users: ["web-owner"] } },
        "platform.app.update",
        "org/acme/space/prod/app/web",
      ],
    ];
    for (const [method, path, body, action, resource] of steps) {
      const r = await custos.call(method, path, body);
      assert.ok(r.status < 300, `${method} ${path}: ${r.text}`);
      assert.deepEqual(
        auditOf(r).map((x) => [x.action, x.outcome, x.resource]),
        [[action, "success", resource]],
        `${method} ${path}`,
      );
    }
  });

  test("creating an app writes one platform record, deleting it two (its mark, its end), beside the KMS's", async () => {
    const made = await createApp("acme", "prod", { name: "audited-app" });
    assert.equal(made.status, 201, made.text);
    const gone = await custos.call("DELETE", "/v1/platform/apps/acme/prod/audited-app");
    assert.equal(gone.status, 200, gone.text);
    for (const [r, actions] of [
      [made, ["platform.app.create"]],
      [gone, ["platform.app.delete.begin", "platform.app.delete"]],
    ] as const) {
      const rows = auditOf(r);
      assert.deepEqual(
        rows.filter((x) => x.action.startsWith("platform.")).map((x) => [x.action, x.outcome, x.resource]),
        actions.map((action) => [action, "success", "org/acme/space/prod/app/audited-app"]),
      );
      const others = rows.filter((x) => !x.action.startsWith("platform."));
      assert.ok(
        others.length >= 1 && others.every((x) => x.resource.includes("app.acme.prod.audited-app")),
        JSON.stringify(rows),
      );
    }
  });

  test("a refused platform change is 403 naming the action and resource, audited once as denied, and changes nothing", async () => {
    ok(
      await custos.call("PUT", "/v1/policies/acme-writer", {
        rules: [{ resource: "org/acme/*", actions: ["platform:write", "platform:read"] }],
      }),
    );
    const writer = await login("acme-writer-user");
    ok(await custos.call("PATCH", "/v1/users/acme-writer-user", { policies: ["acme-writer"] }));
    ok(await custos.call("POST", "/v1/platform/orgs/acme/spaces", { name: "scoped" }, writer));
    // Refusals are audited under the action a success is audited under.
    const cases: [string, string, unknown, string, string][] = [
      ["POST", "/v1/platform/orgs", { name: "other" }, "org/other", "platform.org.create"],
      ["DELETE", "/v1/platform/orgs/acme", undefined, "org/acme", "platform.org.delete"],
    ];
    for (const [method, path, body, resource, action] of cases) {
      const r = await custos.call(method, path, body, writer);
      assert.equal(r.status, 403, `${method} ${path}: ${r.text}`);
      assert.equal(code(r), "forbidden");
      assert.ok(message(r).includes("platform:write") && message(r).includes(resource), message(r));
      assert.deepEqual(
        auditOf(r).map((x) => [x.action, x.outcome, x.error_code, x.resource]),
        [[action, "denied", "forbidden", resource]],
      );
    }
    assert.equal((await custos.call("GET", "/v1/platform/orgs/other/spaces")).status, 404);
    ok(await custos.call("DELETE", "/v1/platform/orgs/acme/spaces/scoped", undefined, writer));
  });

  test("an owner reads its own app and nothing else of the platform: not the space, its list of apps, nor the app's owners", async () => {
    ok(await createApp("acme", "prod", { name: "billing" }));
    ok(await custos.call("PATCH", "/v1/platform/apps/acme/prod/web", { owners: { users: ["web-owner"] } }));
    ok(await custos.call("GET", "/v1/platform/apps/acme/prod/web", undefined, owner));
    const refused: [string, string, unknown][] = [
      ["GET", "/v1/platform/apps/acme/prod/billing", undefined],
      ["GET", "/v1/platform/orgs/acme/spaces/prod/apps", undefined],
      ["GET", "/v1/platform/orgs/acme/spaces", undefined],
      ["GET", "/v1/platform/orgs", undefined],
      ["PATCH", "/v1/platform/apps/acme/prod/web", { owners: { users: ["web-owner", "admin"] } }],
      ["POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name: "sneaky" }],
      ["DELETE", "/v1/platform/apps/acme/prod/billing", undefined],
      ["GET", "/v1/platform/apps/acme/prod/ghost", undefined],
    ];
    for (const [method, path, body] of refused) {
      const r = await custos.call(method, path, body, owner);
      assert.equal(r.status, 403, `${method} ${path}: ${r.text}`);
      assert.equal(code(r), "forbidden");
    }
    const web = ok(await custos.call("GET", "/v1/platform/apps/acme/prod/web")).app as Json;
    assert.deepEqual(web.owners, { users: ["web-owner"], groups: [] });
  });

  test("owner names are user and group names, compared without case", async () => {
    ok(await custos.call("POST", "/v1/groups", { name: "web-team", members: ["web-owner"] }));
    const r = await custos.call("PATCH", "/v1/platform/apps/acme/prod/web", {
      owners: { users: ["WEB-OWNER"], groups: ["Web-Team"] },
    });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(((r.body as Json).app as Json).owners, { users: ["web-owner"], groups: ["web-team"] });
  });

  test("an unknown owner is refused with invalid_request and leaves the owners and revision as they were", async () => {
    const before = ok(await custos.call("GET", "/v1/platform/apps/acme/prod/web")).app as Json;
    for (const owners of [{ users: ["web-owner", "nobody"] }, { groups: ["no-such-group"] }]) {
      const r = await custos.call("PATCH", "/v1/platform/apps/acme/prod/web", { owners });
      assert.equal(r.status, 400, r.text);
      assert.equal(code(r), "invalid_request");
      assert.match(message(r), /nobody|no-such-group/);
    }
    const afterwards = ok(await custos.call("GET", "/v1/platform/apps/acme/prod/web")).app as Json;
    assert.deepEqual([afterwards.owners, afterwards.revision], [before.owners, before.revision]);
  });

  test("a deleted user or group owns nothing, and a new user of the same name inherits nothing", async () => {
    const holder = await login("ledger-owner");
    ok(await custos.call("POST", "/v1/groups", { name: "ops", members: ["web-owner"] }));
    ok(await createApp("acme", "prod", { name: "ledger", owners: { users: ["ledger-owner"], groups: ["ops"] } }));
    ok(await custos.call("GET", "/v1/platform/apps/acme/prod/ledger", undefined, holder));
    ok(await custos.call("DELETE", "/v1/users/ledger-owner"));
    ok(await custos.call("DELETE", "/v1/groups/ops"));
    const app = ok(await custos.call("GET", "/v1/platform/apps/acme/prod/ledger")).app as Json;
    assert.deepEqual(app.owners, { users: [], groups: [] });
    assert.equal(query("SELECT 1 FROM platform_app_owners WHERE app_id = ?", app.id).length, 0);
    const newHolder = await login("ledger-owner");
    for (const path of ["/v1/platform/apps/acme/prod/ledger", "/v1/secrets/list/acme/prod/ledger"]) {
      const r = await custos.call("GET", path, undefined, newHolder);
      assert.equal(r.status, 403, `${path}: ${r.text}`);
    }
    assert.equal((await custos.call("GET", "/v1/platform/apps/acme/prod/ledger", undefined, owner)).status, 403);
  });

  test("deleting an app leaves no owners, secrets, ciphertext or grants in the database or its WAL", async () => {
    await space("acme", "tmp");
    const made = ok(await createApp("acme", "tmp", { name: "gone", owners: { users: ["web-owner"] } })).app as Json;
    ok(await custos.call("PUT", "/v1/secrets/data/acme/tmp/gone/db/password", { value: "gone-app-secret-value" }));
    ok(await custos.call("PUT", "/v1/secrets/data/shared/conformance/bundle", { value: "shared-value" }));
    ok(await custos.call("PUT", "/v1/secrets/grants/shared/conformance/bundle", { apps: ["acme/tmp/gone"] }));
    const [row] = query<{ ciphertext: string }>(
      "SELECT ciphertext FROM secret_versions WHERE path = ?",
      "acme/tmp/gone/db/password",
    );
    assert.ok(row && row.ciphertext.length > 40);
    ok(await custos.call("DELETE", "/v1/platform/apps/acme/tmp/gone"));
    for (const table of ["platform_app_owners", "secrets", "secret_grants"]) {
      assert.equal(query(`SELECT 1 FROM ${table} WHERE app_id = ?`, made.id).length, 0, table);
    }
    assert.equal(query("SELECT 1 FROM secret_versions WHERE path LIKE 'acme/tmp/gone/%'").length, 0);
    assert.equal((ok(await custos.call("GET", "/v1/keys/app.acme.tmp.gone")) as Json).state, "destroyed");
    for (const file of ["custos.db", "custos.db-wal"].map((f) => join(custos.dir, f)).filter(existsSync)) {
      assert.equal(readFileSync(file).indexOf(row.ciphertext), -1, `the deleted app's ciphertext is in ${file}`);
    }
    const again = await createApp("acme", "tmp", { name: "gone" });
    assert.equal(again.status, 409, again.text);
    assert.match(message(again), /keeps its name/);
    ok(await custos.call("DELETE", "/v1/platform/orgs/acme/spaces/tmp"));
  });

  test("an app creation racing its space's deletion never burns the app's name", async () => {
    // Whichever of the two wins, the app must be creatable once the space exists again.
    for (let i = 0; i < 10; i++) {
      await space("acme", "race");
      const [made, deleted] = await Promise.all([
        createApp("acme", "race", { name: `r${i}` }),
        custos.call("DELETE", "/v1/platform/orgs/acme/spaces/race"),
      ]);
      if (made.status === 201) {
        assert.equal(deleted.status, 409, "a space with an app can't be deleted");
      } else {
        assert.equal(made.status, 404, made.text);
        await space("acme", "race");
        ok(await createApp("acme", "race", { name: `r${i}` }));
      }
      ok(await custos.call("DELETE", `/v1/platform/apps/acme/race/r${i}`));
      ok(await custos.call("DELETE", "/v1/platform/orgs/acme/spaces/race"));
    }
  });

  test("a stopped instance of a deleted app stays readable as history, and its id is not reusable", async () => {
    await space("acme", "hist");
    ok(await createApp("acme", "hist", { name: "old" }));
    const reg = { org: "acme", space: "hist", app: "old", instance: "old-1" };
    assert.equal((await custos.call("POST", "/v1/broker/instances", reg, agent)).status, 201);
    ok(await custos.call("DELETE", "/v1/broker/instances/old-1", undefined, agent));
    ok(await custos.call("DELETE", "/v1/platform/apps/acme/hist/old"));
    const view = await custos.call("GET", "/v1/broker/instances/old-1", undefined, agent);
    assert.equal(view.status, 200, view.text);
    assert.equal((view.body as Json).state, "stopped");
    const gone = await custos.call("POST", "/v1/broker/instances", { ...reg, instance: "old-2" }, agent);
    assert.equal(gone.status, 404, gone.text);
  });

  test("an instance whose lease lapsed no longer blocks deleting its app", async () => {
    await space("acme", "lapse");
    ok(await createApp("acme", "lapse", { name: "brief" }));
    const reg = { org: "acme", space: "lapse", app: "brief", instance: "brief-1", ttlSeconds: 10 };
    assert.equal((await custos.call("POST", "/v1/broker/instances", reg, agent)).status, 201);
    await sleep(11_000);
    const app = ok(await custos.call("GET", "/v1/platform/apps/acme/lapse/brief")).app as Json;
    const removal = await custos.call("DELETE", "/v1/platform/apps/acme/lapse/brief");
    assert.equal(removal.status, 200, `${removal.text}; instances then: ${JSON.stringify(app.instances)}`);
    const view = ok(await custos.call("GET", "/v1/broker/instances/brief-1", undefined, agent));
    assert.deepEqual([view.state, view.stopReason], ["stopped", "lease-lapsed"]);
  });
});
