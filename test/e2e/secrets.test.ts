import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type CustosInstance, type HttpAnswer, startCustos } from "../helpers/custos.js";

type Json = Record<string, unknown>;

const code = (r: HttpAnswer) => (r.body as { error?: { code?: string } } | null)?.error?.code;
const ok = (r: HttpAnswer): Json => {
  assert.ok(r.status < 300, r.text);
  return r.body as Json;
};

describe("secrets over HTTPS and the CLI, against a real Custos", () => {
  let custos: CustosInstance;
  let ann: string;
  let bob: string;
  let carl: string;
  let scoped: string;
  const planted: string[] = [];
  const plant = (what: string) => {
    const v = `PLANTED-${what}-${randomBytes(8).toString("hex")}`;
    planted.push(v);
    return v;
  };

  const login = async (name: string): Promise<string> => {
    const password = `pw-${name}-correct-horse`;
    ok(await custos.call("POST", "/v1/users", { name, password, policies: [] }));
    return ok(await custos.call("POST", "/v1/auth/login", { username: name, password }, null)).token as string;
  };

  before(async () => {
    custos = await startCustos();
    ann = await login("ann");
    bob = await login("bob");
    carl = await login("carl");
    ok(await custos.call("POST", "/v1/groups", { name: "api-team", members: ["bob"] }));
    scoped = ok(await custos.call("POST", "/v1/auth/tokens", { name: "no-policy", policies: [] })).token as string;
    ok(await custos.call("POST", "/v1/platform/orgs", { name: "acme" }));
    ok(await custos.call("POST", "/v1/platform/orgs/acme/spaces", { name: "prod" }));
    const web = ok(
      await custos.call("POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name: "web", owners: { users: ["ann"] } }),
    );
    assert.equal((web.app as Json).keyName, "app.acme.prod.web");
    ok(
      await custos.call("POST", "/v1/platform/orgs/acme/spaces/prod/apps", {
        name: "api",
        owners: { groups: ["api-team"] },
      }),
    );
  });
  after(async () => {
    await custos?.dispose();
  });

  test("an app owner manages the app's secrets without a policy, and not another app's (403, audited)", async () => {
    const value = plant("web-db");
    const put = await custos.call("PUT", "/v1/secrets/data/acme/prod/web/db/password", { value }, ann);
    assert.equal(put.status, 200, put.text);
    assert.equal(((put.body as Json).secret as Json).version, 1);
    assert.ok(!put.text.includes(value), "a write never echoes the value");
    const got = ok(await custos.call("GET", "/v1/secrets/data/acme/prod/web/db/password", undefined, ann));
    assert.equal(got.value, value);
    assert.equal(got.version, 1);
    ok(await custos.call("GET", "/v1/secrets/list/acme/prod/web", undefined, ann));
    ok(await custos.call("GET", "/v1/secrets/metadata/acme/prod/web/db/password", undefined, ann));
    ok(await custos.call("GET", "/v1/platform/apps/acme/prod/web", undefined, ann));

    // bob owns api through his group.
    ok(await custos.call("PUT", "/v1/secrets/data/acme/prod/api/token", { value: plant("api-token") }, bob));

    for (const [method, path, body] of [
      ["GET", "/v1/secrets/data/acme/prod/api/token", undefined],
      ["PUT", "/v1/secrets/data/acme/prod/api/token", { value: "x" }],
      ["GET", "/v1/secrets/list/acme/prod/api", undefined],
      ["POST", "/v1/secrets/destroy/acme/prod/api/token", { versions: [1] }],
      ["GET", "/v1/platform/apps/acme/prod/api", undefined],
      ["PUT", "/v1/secrets/data/shared/x", { value: "x" }],
    ] as const) {
      const r = await custos.call(method, path, body, ann);
      assert.equal(r.status, 403, `${method} ${path}: ${r.text}`);
      assert.equal(code(r), "forbidden");
    }
    // Owners may not manage the app itself or grant shared secrets.
    assert.equal((await custos.call("DELETE", "/v1/platform/apps/acme/prod/web", undefined, ann)).status, 403);
    assert.equal(
      (await custos.call("PUT", "/v1/secrets/grants/shared/x", { apps: ["acme/prod/web"] }, ann)).status,
      403,
    );

    const audit = ok(await custos.call("GET", "/v1/audit?order=desc&limit=200")).records as Json[];
    const denied = audit.find(
      (x) =>
        x.outcome === "denied" &&
        x.action === "secret.read" &&
        x.resource === "secret/acme/prod/api/token" &&
        x.principal === "user:ann",
    );
    assert.ok(denied, "the refused read is audited");
    assert.equal(denied.errorCode, "forbidden");
    assert.ok(
      audit.some((x) => x.outcome === "denied" && x.action === "secret.destroy" && x.principal === "user:ann"),
      "so is the refused destroy",
    );
    const read = audit.find((x) => x.action === "secret.read" && x.outcome === "success" && x.principal === "user:ann");
    assert.deepEqual(read?.details, { path: "acme/prod/web/db/password", version: 1 });
    assert.ok(!JSON.stringify(audit).includes(value), "no value in the audit log");
  });

  test("a token without policy that owns nothing gets 403, and so does a non-owner user", async () => {
    for (const bearer of [scoped, carl]) {
      for (const [method, path, body] of [
        ["GET", "/v1/secrets/data/acme/prod/web/db/password", undefined],
        ["PUT", "/v1/secrets/data/acme/prod/web/db/password", { value: "x" }],
        ["GET", "/v1/secrets/metadata/acme/prod/web/db/password", undefined],
        ["GET", "/v1/platform/orgs", undefined],
      ] as const) {
        const r = await custos.call(method, path, body, bearer);
        assert.equal(r.status, 403, `${method} ${path}: ${r.text}`);
      }
    }
  });

  test("check-and-set, versions, soft delete, undelete and destroy over the API", async () => {
    const p = "/v1/secrets/data/acme/prod/web/cas";
    assert.equal((await custos.call("PUT", p, { value: "a", cas: 0 }, ann)).status, 200);
    const stale = await custos.call("PUT", p, { value: "b", cas: 0 }, ann);
    assert.equal(stale.status, 409);
    assert.equal(code(stale), "conflict");
    ok(await custos.call("PUT", p, { value: "b", cas: 1 }, ann));
    ok(await custos.call("POST", "/v1/secrets/delete/acme/prod/web/cas", {}, ann));
    assert.equal((await custos.call("GET", p, undefined, ann)).status, 404);
    assert.equal(ok(await custos.call("GET", `${p}?version=1`, undefined, ann)).value, "a");
    ok(await custos.call("POST", "/v1/secrets/undelete/acme/prod/web/cas", { versions: [2] }, ann));
    assert.equal(ok(await custos.call("GET", p, undefined, ann)).value, "b");
    const meta = ok(await custos.call("POST", "/v1/secrets/destroy/acme/prod/web/cas", { versions: [1] }, ann));
    const versions = (meta.metadata as Json).versions as Json[];
    assert.deepEqual(
      versions.map((v) => [v.version, v.state]),
      [
        [1, "destroyed"],
        [2, "live"],
      ],
    );
    assert.equal((await custos.call("GET", `${p}?version=1`, undefined, ann)).status, 404);
    // Bad input answers invalid_request.
    for (const [method, path, body] of [
      ["PUT", "/v1/secrets/data/acme/prod/web/../x", { value: "v" }],
      ["PUT", "/v1/secrets/data/acme/prod/web/x", { value: "v", extra: 1 }],
      ["PUT", "/v1/secrets/data/acme/prod/web/x", { value: "x".repeat(32 * 1024 + 1) }],
      ["GET", `${p}?version=0`, undefined],
      ["POST", "/v1/secrets/generate/acme/prod/web/g", { length: 4 }],
      ["PATCH", "/v1/secrets/metadata/acme/prod/web/cas", { maxVersions: 1000 }],
    ] as const) {
      const r = await custos.call(method, path, body, ann);
      assert.equal(r.status, 400, `${method} ${path}: ${r.text}`);
      assert.equal(code(r), "invalid_request");
    }
  });

  test("the CLI: put from stdin, get a field, generate, metadata, list, destroy", () => {
    const value = plant("cli");
    const put = custos.cli(["secret", "put", "acme/prod/web/cli/one"], { input: `${value}\n`, token: ann });
    assert.equal(put.status, 0, put.stderr);
    assert.ok(!put.stdout.includes(value) && !put.stderr.includes(value), "put never echoes the value");
    assert.match(put.stdout, /version:\s+1/);
    const get = custos.cli(["secret", "get", "acme/prod/web/cli/one", "--field", "value"], { token: ann });
    assert.equal(get.status, 0, get.stderr);
    assert.equal(get.stdout, value, "stdin's trailing newline is dropped, the value printed as is");

    const file = join(custos.dir, "value.txt");
    writeFileSync(file, "line1\nline2\n");
    assert.equal(
      custos.cli(["secret", "put", "acme/prod/web/cli/one", "--from-file", file, "--cas", "1"], { token: ann }).status,
      0,
    );
    assert.equal(
      custos.cli(["secret", "get", "acme/prod/web/cli/one", "--field", "value"], { token: ann }).stdout,
      "line1\nline2\n",
    );
    const casFail = custos.cli(["secret", "put", "acme/prod/web/cli/one", "v", "--cas", "1"], { token: ann });
    assert.notEqual(casFail.status, 0);
    assert.match(casFail.stderr, /conflict|check-and-set/);
    assert.match(casFail.stderr, /warning: a value on the command line/);

    const gen = custos.cli(["secret", "generate", "acme/prod/web/cli/gen", "--length", "40", "--alphabet", "hex"], {
      token: ann,
    });
    assert.equal(gen.status, 0, gen.stderr);
    const generated = custos.cli(["secret", "get", "acme/prod/web/cli/gen", "--field", "value"], { token: ann }).stdout;
    assert.match(generated, /^[0-9a-f]{40}$/);
    assert.ok(!gen.stdout.includes(generated), "generate doesn't print the value");

    const list = custos.cli(["secret", "list", "acme/prod/web/cli"], { token: ann });
    assert.deepEqual(list.stdout.trim().split("\n"), ["gen", "one"]);
    const older = custos.cli(["secret", "get", "acme/prod/web/cli/one", "--version", "1", "--json"], { token: ann });
    assert.equal((JSON.parse(older.stdout) as Json).value, value);
    const destroyed = custos.cli(["secret", "destroy", "acme/prod/web/cli/one", "--versions", "1"], { token: ann });
    assert.equal(destroyed.status, 0, destroyed.stderr);
    assert.match(destroyed.stdout, /destroyed/);
    const meta = custos.cli(["secret", "metadata", "acme/prod/web/cli/one", "--max-versions", "5", "--json"], {
      token: ann,
    });
    assert.equal(((JSON.parse(meta.stdout) as Json).metadata as Json).maxVersions, 5);
    const denied = custos.cli(["secret", "get", "acme/prod/api/token"], { token: ann });
    assert.notEqual(denied.status, 0);
    assert.match(denied.stderr, /forbidden|not allowed/);
  });

  test("platform CLI: org, space and app with owners", () => {
    assert.equal(custos.cli(["org", "create", "beta"]).status, 0);
    assert.equal(custos.cli(["space", "create", "beta/dev"]).status, 0);
    const created = custos.cli(["app", "create", "beta/dev/svc", "--owner-user", "carl", "--owner-group", "api-team"]);
    assert.equal(created.status, 0, created.stderr);
    const got = JSON.parse(custos.cli(["app", "get", "beta/dev/svc", "--json"]).stdout) as { app: Json };
    assert.deepEqual(got.app.owners, { users: ["carl"], groups: ["api-team"] });
    assert.equal(got.app.keyName, "app.beta.dev.svc");
    assert.match(custos.cli(["app", "list", "beta/dev"]).stdout, /beta\/dev\/svc/);
    assert.equal(custos.cli(["app", "owners", "beta/dev/svc", "--owner-user", "ann"]).status, 0);
    const owners = JSON.parse(custos.cli(["app", "get", "beta/dev/svc", "--json"]).stdout) as { app: Json };
    assert.deepEqual(owners.app.owners, { users: ["ann"], groups: [] });
    const busy = custos.cli(["space", "delete", "beta/dev"]);
    assert.notEqual(busy.status, 0);
    assert.match(busy.stderr, /still has apps/);
    assert.equal(custos.cli(["app", "delete", "beta/dev/svc"]).status, 0);
    assert.equal(custos.cli(["space", "delete", "beta/dev"]).status, 0);
    assert.equal(custos.cli(["org", "delete", "beta"]).status, 0);
    assert.doesNotMatch(custos.cli(["org", "list"]).stdout, /beta/);
    const bad = custos.cli(["app", "create", "beta/dev"]);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /<org>\/<space>\/<app>/);
  });

  test("a shared secret granted to two apps is listed for both; only admins grant", async () => {
    const bundle = plant("bundle");
    ok(await custos.call("PUT", "/v1/secrets/data/shared/tls/ca-bundle", { value: bundle }));
    const grant = custos.cli(["secret", "grant", "shared/tls/", "--app", "acme/prod/web", "--app", "acme/prod/api"]);
    assert.equal(grant.status, 0, grant.stderr);
    const grants = ok(await custos.call("GET", "/v1/secrets/grants")).grants as Json[];
    assert.deepEqual(grants.map((g) => `${g.target} ${g.app}`).sort(), [
      "shared/tls/ acme/prod/api",
      "shared/tls/ acme/prod/web",
    ]);
    const bad = await custos.call("PUT", "/v1/secrets/grants/acme/prod/web/db/password", { apps: ["acme/prod/api"] });
    assert.equal(bad.status, 400);
  });

  test("nothing planted reaches the database file, its WAL or the log", async () => {
    const files = ["custos.db", "custos.db-wal", "server.log"].map((f) => join(custos.dir, f));
    assert.ok(existsSync(files[0]!) && existsSync(files[1]!), "the database and its WAL exist");
    assert.ok(planted.length >= 4);
    for (const file of files.filter(existsSync)) {
      const bytes = readFileSync(file);
      for (const value of planted) {
        for (const form of [value, Buffer.from(value).toString("base64"), Buffer.from(value).toString("hex")]) {
          assert.equal(bytes.indexOf(form), -1, `a planted value found in ${file}`);
        }
      }
    }
  });

  test("destroying an app's key makes its secrets unreadable with key_destroyed; deleting the app shreds the rest", async () => {
    const destroy = custos.cli(["key", "destroy", "app.acme.prod.api", "--now"]);
    assert.equal(destroy.status, 0, destroy.stderr);
    const r = await custos.call("GET", "/v1/secrets/data/acme/prod/api/token");
    assert.equal(r.status, 410, r.text);
    assert.deepEqual((r.body as Json).error, {
      code: "key_destroyed",
      message: "the key of app acme/prod/api was destroyed; its secrets are unrecoverable",
    });
    const cli = custos.cli(["secret", "get", "acme/prod/api/token"], { token: bob });
    assert.notEqual(cli.status, 0);
    assert.match(cli.stderr, /the key of app acme\/prod\/api was destroyed; its secrets are unrecoverable/);

    ok(await custos.call("DELETE", "/v1/platform/apps/acme/prod/web"));
    const key = ok(await custos.call("GET", "/v1/keys/app.acme.prod.web"));
    assert.equal(key.state, "destroyed");
    assert.equal((await custos.call("GET", "/v1/secrets/data/acme/prod/web/db/password")).status, 404);
    const grants = ok(await custos.call("GET", "/v1/secrets/grants")).grants as Json[];
    assert.deepEqual(
      grants.map((g) => g.app),
      ["acme/prod/api"],
      "the deleted app's grants went with it",
    );
  });
});
