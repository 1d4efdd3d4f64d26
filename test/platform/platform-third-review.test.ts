/**
 * Third review of the platform model as a platform team running a private PaaS
 * meets it (docs/broker.md, docs/api.md, README.md): apps created at once, owners
 * through groups and tokens, listings, registrations retried and refused, what
 * deleting an app ends, and the CLI. Oracles: the SQLite database read directly,
 * node:crypto, the audit log, and the documentation's own words. What earlier
 * reviews pin (test/platform/*.test.ts, test/broker/*.test.ts,
 * test/e2e/broker*.test.ts) is not repeated.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { prepareKey } from "../../src/broker-client/index.js";
import { type CustosInstance, errorCode, type HttpAnswer, ok, startCustos } from "../helpers/custos.js";

type Json = Record<string, unknown>;

interface AuditRow {
  seq: number;
  time: string;
  action: string;
  outcome: string;
  error_code: string | null;
  resource: string;
  details: string;
}

const requestId = (r: HttpAnswer): string => String((r as HttpAnswer & { headers: Json }).headers["x-request-id"]);
const message = (r: HttpAnswer): string =>
  String(((r.body as { error?: { message?: unknown } } | null)?.error?.message as string | undefined) ?? "");

describe("platform as a platform team runs it: third review", () => {
  let custos: CustosInstance;
  let agent: string;

  const call = (method: string, path: string, body?: unknown, bearer?: string | null): Promise<HttpAnswer> =>
    custos.call(method, path, body, bearer);
  const createApp = (space: string, body: Json, bearer?: string) =>
    call("POST", `/v1/platform/orgs/acme/spaces/${space}/apps`, body, bearer);
  const register = (body: Json, bearer = agent) => call("POST", "/v1/broker/instances", body, bearer);
  const auditOf = (r: HttpAnswer): AuditRow[] =>
    custos.query<AuditRow>("SELECT * FROM audit_log WHERE request_id = ? ORDER BY seq", requestId(r));
  const login = async (name: string): Promise<string> => {
    const password = `pw-${name}-correct-horse`;
    ok(await call("POST", "/v1/users", { name, password, policies: [] }), 201);
    return String(ok(await call("POST", "/v1/auth/login", { username: name, password }, null)).token);
  };
  const newSpace = async (name: string) => ok(await call("POST", "/v1/platform/orgs/acme/spaces", { name }), 201);

  before(async () => {
    custos = await startCustos({ broker: { sweepSeconds: 3600 } });
    ok(await call("POST", "/v1/platform/orgs", { name: "acme" }), 201);
    await newSpace("prod");
    const made = custos.cli(["broker", "agent-token", "review3-agent"]);
    assert.equal(made.status, 0, made.stderr);
    agent = made.stdout.trim();
  });

  after(async () => {
    await custos?.dispose();
  });

  test("two creations of one app at once: one 201, the others a 409 saying it exists; one app, one key, one record each", async () => {
    await newSpace("dup");
    const answers = await Promise.all(Array.from({ length: 6 }, () => createApp("dup", { name: "web" })));
    const won = answers.filter((a) => a.status === 201);
    const lost = answers.filter((a) => a.status !== 201);
    assert.equal(won.length, 1, answers.map((a) => a.text).join("\n"));
    for (const a of lost) {
      assert.deepEqual([a.status, errorCode(a), message(a)], [409, "conflict", "app acme/dup/web already exists"]);
      assert.deepEqual(
        auditOf(a).map((x) => [x.action, x.outcome, x.error_code, x.resource]),
        [["platform.app.create", "failure", "conflict", "org/acme/space/dup/app/web"]],
      );
    }
    const [winner] = won as [HttpAnswer];
    assert.deepEqual(
      auditOf(winner).map((x) => [x.action, x.outcome, x.resource]),
      [
        ["platform.app.create", "success", "org/acme/space/dup/app/web"],
        ["key.create", "success", "key/app.acme.dup.web"],
      ],
    );
    const rows = custos.query<{ id: string; key_name: string }>(
      "SELECT id, key_name FROM platform_apps WHERE org = 'acme' AND space = 'dup'",
    );
    assert.deepEqual(rows, [{ id: ((winner.body as Json).app as Json).id, key_name: "app.acme.dup.web" }]);
    const keys = custos.query<{ state: string }>("SELECT state FROM keys WHERE name LIKE 'app.acme.dup.%'");
    assert.deepEqual(keys, [{ state: "enabled" }]);
  });

  test("owners replaced by several writers at once: each PATCH is a whole replacement and succeeds, the last one stays", {}, async () => {
    await login("pat-a");
    await login("pat-b");
    ok(await createApp("prod", { name: "pat" }), 201);
    const answers = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        call("PATCH", "/v1/platform/apps/acme/prod/pat", { owners: { users: [i % 2 ? "pat-a" : "pat-b"] } }),
      ),
    );
    const app = ok(await call("GET", "/v1/platform/apps/acme/prod/pat")).app as Json;
    const records = custos.query<AuditRow>(
      "SELECT * FROM audit_log WHERE action = 'platform.app.update' AND resource = 'org/acme/space/prod/app/pat' ORDER BY seq",
    );
    const last = JSON.parse(records.at(-1)?.details ?? "{}") as { after?: { owners?: unknown } };
    assert.deepEqual(
      {
        statuses: answers.map((a) => a.status),
        revision: app.revision,
        recorded: records.map((r) => r.outcome),
        ownersAsLastRecorded: last.after?.owners,
      },
      {
        statuses: Array(8).fill(200),
        revision: 9,
        recorded: Array(8).fill("success"),
        ownersAsLastRecorded: app.owners,
      },
    );
  });

  test("the apps of a space are listed with the same instance counts as each app shows alone", {}, async () => {
    await newSpace("cnt");
    ok(await createApp("cnt", { name: "busy" }), 201);
    ok(await createApp("cnt", { name: "idle" }), 201);
    ok(await register({ org: "acme", space: "cnt", app: "busy", instance: "busy-1" }), 201);
    ok(await register({ org: "acme", space: "cnt", app: "busy", instance: "busy-2" }), 201);
    ok(await call("DELETE", "/v1/broker/instances/busy-2", undefined, agent));
    const alone = ok(await call("GET", "/v1/platform/apps/acme/cnt/busy")).app as Json;
    // The database is the oracle: one registered, one stopped.
    const counted = Object.fromEntries(
      custos
        .query<{ state: string; n: number }>(
          "SELECT state, count(*) AS n FROM broker_instances WHERE app = 'busy' GROUP BY state",
        )
        .map((r) => [r.state, r.n]),
    );
    assert.deepEqual(alone.instances, counted, "control: the app alone");
    assert.deepEqual(counted, { registered: 1, stopped: 1 });
    const listed = ok(await call("GET", "/v1/platform/orgs/acme/spaces/cnt/apps")).apps as Json[];
    assert.deepEqual(
      listed.map((a) => [a.app, a.instances]),
      [
        ["busy", counted],
        ["idle", {}],
      ],
    );
  });

  test("an app creation refused for a malformed name is audited under its route, on the path it named", async () => {
    const bad = await createApp("prod", { name: "Web" });
    assert.deepEqual([bad.status, errorCode(bad)], [400, "invalid_request"]);
    const rows = auditOf(bad);
    assert.equal(rows.length, 1, JSON.stringify(rows));
    // Refused before the route authorised it: docs/api.md says such a request keeps the route's name.
    assert.deepEqual(
      [rows[0]?.action, rows[0]?.outcome, rows[0]?.error_code, rows[0]?.resource],
      [
        "POST /v1/platform/orgs/:org/spaces/:space/apps",
        "failure",
        "invalid_request",
        "/v1/platform/orgs/acme/spaces/prod/apps",
      ],
      JSON.stringify(rows[0]),
    );
  });

  test("a retried registration with the same id is a 409 naming it, audited once; the first token stays the only one and works", async () => {
    ok(await createApp("prod", { name: "retry" }), 201);
    const input = { org: "acme", space: "prod", app: "retry", instance: "retry-1" };
    const first = ok(await register(input), 201);
    const token = String(first.bootstrapToken);
    const again = await register(input);
    assert.deepEqual(
      [again.status, errorCode(again), message(again)],
      [409, "conflict", "instance id retry-1 is taken (ids are never reused)"],
    );
    assert.ok(!again.text.includes("cbt."), "no token in the refusal");
    assert.deepEqual(
      auditOf(again).map((x) => [x.action, x.outcome, x.error_code, x.resource]),
      [["broker.register", "failure", "conflict", "instance/acme/prod/retry/retry-1"]],
    );
    const tokens = custos.query<{ id: string; hash: string; state: string; created_at: string; expires_at: string }>(
      "SELECT id, hash, state, created_at, expires_at FROM broker_tokens WHERE instance_id = 'retry-1'",
    );
    assert.equal(tokens.length, 1);
    const [row] = tokens as [(typeof tokens)[0]];
    assert.equal(row.hash, createHash("sha256").update(token).digest("hex"));
    assert.equal(row.id, token.split(".")[1]);
    assert.equal(row.state, "unused");
    // "a one-time bootstrap token (stored hashed, 5 minutes)" (README), as answered and as stored.
    assert.equal(row.expires_at, first.tokenExpiresAt);
    assert.equal(Date.parse(row.expires_at) - Date.parse(row.created_at), 300_000);
    const key = await prepareKey("retry-1");
    const ex = await call("POST", "/v1/broker/exchange", { token, instance: "retry-1", csr: key.csrPem }, null);
    assert.equal(ex.status, 200, ex.text);
    ok(await call("DELETE", "/v1/broker/instances/retry-1", undefined, agent));
  });

  test("a registration for an app that doesn't exist is a 404 audited under broker.register, and stores nothing", async () => {
    const r = await register({ org: "acme", space: "prod", app: "ghost", instance: "ghost-1" });
    assert.deepEqual([r.status, errorCode(r), message(r)], [404, "not_found", "app acme/prod/ghost not found"]);
    assert.deepEqual(
      auditOf(r).map((x) => [x.action, x.outcome, x.error_code, x.resource]),
      [["broker.register", "failure", "not_found", "instance/acme/prod/ghost/ghost-1"]],
    );
    assert.deepEqual(custos.query("SELECT id FROM broker_instances WHERE id = 'ghost-1'"), []);
    assert.deepEqual(custos.query("SELECT id FROM broker_tokens WHERE instance_id = 'ghost-1'"), []);
  });

  test("a user added to the owning group owns the app on the next request; through an unscoped API token too, not a scoped one", async () => {
    ok(await call("PUT", "/v1/policies/own-tokens", { rules: [{ resource: "token/*", actions: ["token:create"] }] }));
    const late = await login("late-member");
    ok(await call("PATCH", "/v1/users/late-member", { policies: ["own-tokens"] }));
    ok(await call("POST", "/v1/groups", { name: "grp-team", members: [] }), 201);
    ok(await createApp("prod", { name: "grp", owners: { groups: ["grp-team"] } }), 201);
    ok(await call("PUT", "/v1/secrets/data/acme/prod/grp/db/password", { value: "grp-db-password-3" }));
    const reads = async (bearer: string) => [
      (await call("GET", "/v1/platform/apps/acme/prod/grp", undefined, bearer)).status,
      (await call("GET", "/v1/secrets/data/acme/prod/grp/db/password", undefined, bearer)).status,
    ];
    assert.deepEqual(await reads(late), [403, 403], "control: not a member yet");
    ok(await call("PATCH", "/v1/groups/grp-team", { addMembers: ["late-member"] }));
    assert.deepEqual(await reads(late), [200, 200], "a member now");
    const unscoped = String(ok(await call("POST", "/v1/auth/tokens", { name: "late-ci" }, late), 201).token);
    const scoped = String(
      ok(await call("POST", "/v1/auth/tokens", { name: "late-scoped", policies: ["own-tokens"] }, late), 201).token,
    );
    assert.deepEqual(await reads(unscoped), [200, 200], "the user's unscoped token");
    assert.deepEqual(await reads(scoped), [403, 403], "a token scoped to explicit policies");
    const read = await call("GET", "/v1/platform/apps/acme/prod/grp", undefined, late);
    const [record] = auditOf(read);
    assert.deepEqual(
      [record?.action, record?.outcome, (JSON.parse(record?.details ?? "{}") as Json).asOwner],
      ["platform.read", "success", true],
    );
  });

  test("who may create and change apps: a policy on app/team-* allows team-x only; the creator owns nothing; refusals are audited under their action", async () => {
    ok(
      await call("PUT", "/v1/policies/team-apps", {
        rules: [{ resource: "org/acme/space/prod/app/team-*", actions: ["platform:write", "platform:read"] }],
      }),
    );
    const maker = await login("team-maker");
    ok(await call("PATCH", "/v1/users/team-maker", { policies: ["team-apps"] }));
    ok(await createApp("prod", { name: "team-x" }, maker), 201);
    const made = ok(await call("GET", "/v1/platform/apps/acme/prod/team-x", undefined, maker)).app as Json;
    assert.deepEqual(made.owners, { users: [], groups: [] }, "creating an app doesn't make its creator an owner");
    const secret = await call("PUT", "/v1/secrets/data/acme/prod/team-x/pw", { value: "team-x-pw" }, maker);
    assert.equal(secret.status, 403, secret.text);
    ok(await call("POST", "/v1/platform/orgs/acme/spaces", { name: "other" }), 201);
    ok(await createApp("prod", { name: "payments" }), 201);
    const refused: [string, string, unknown, string, string][] = [
      [
        "POST",
        "/v1/platform/orgs/acme/spaces/prod/apps",
        { name: "payments-x" },
        "platform.app.create",
        "org/acme/space/prod/app/payments-x",
      ],
      [
        "POST",
        "/v1/platform/orgs/acme/spaces/other/apps",
        { name: "team-y" },
        "platform.app.create",
        "org/acme/space/other/app/team-y",
      ],
      [
        "PATCH",
        "/v1/platform/apps/acme/prod/payments",
        { owners: { users: ["team-maker"] } },
        "platform.app.update",
        "org/acme/space/prod/app/payments",
      ],
      [
        "DELETE",
        "/v1/platform/apps/acme/prod/payments",
        undefined,
        "platform.app.delete",
        "org/acme/space/prod/app/payments",
      ],
      ["GET", "/v1/platform/apps/acme/prod/payments", undefined, "platform.read", "org/acme/space/prod/app/payments"],
      ["GET", "/v1/platform/orgs/acme/spaces/prod/apps", undefined, "platform.read", "org/acme/space/prod"],
    ];
    for (const [method, path, body, action, resource] of refused) {
      const r = await call(method, path, body, maker);
      assert.deepEqual([r.status, errorCode(r)], [403, "forbidden"], `${method} ${path}: ${r.text}`);
      assert.deepEqual(
        auditOf(r).map((x) => [x.action, x.outcome, x.error_code, x.resource]),
        [[action, "denied", "forbidden", resource]],
        `${method} ${path}`,
      );
    }
    assert.equal(custos.query("SELECT 1 FROM platform_apps WHERE name IN ('payments-x', 'team-y')").length, 0);
    const payments = ok(await call("GET", "/v1/platform/apps/acme/prod/payments")).app as Json;
    assert.deepEqual([payments.owners, payments.revision], [{ users: [], groups: [] }, 1]);
    const gone = await call("DELETE", "/v1/platform/apps/acme/prod/team-x", undefined, maker);
    assert.equal(gone.status, 200, gone.text);
  });

  test("an app's owners are at most 64 in all, users and groups together: 65 is refused and makes nothing", async () => {
    const users = Array.from({ length: 60 }, (_, i) => `cap-user-${i}`);
    for (const name of users) ok(await call("POST", "/v1/users", { name, policies: [] }), 201);
    const groups = Array.from({ length: 5 }, (_, i) => `cap-group-${i}`);
    for (const name of groups) ok(await call("POST", "/v1/groups", { name, members: [] }), 201);
    const over = await createApp("prod", { name: "capped", owners: { users, groups } });
    assert.deepEqual([over.status, errorCode(over)], [400, "invalid_request"], over.text);
    assert.match(message(over), /at most 64 owners/);
    assert.equal(custos.query("SELECT 1 FROM platform_apps WHERE name = 'capped'").length, 0);
    assert.equal(custos.query("SELECT 1 FROM keys WHERE name = 'app.acme.prod.capped'").length, 0);
    const fits = ok(await createApp("prod", { name: "capped", owners: { users, groups: groups.slice(1) } }), 201)
      .app as Json;
    assert.equal(custos.query("SELECT 1 FROM platform_app_owners WHERE app_id = ?", fits.id).length, 64);
    const patched = await call("PATCH", "/v1/platform/apps/acme/prod/capped", { owners: { users, groups } });
    assert.deepEqual([patched.status, errorCode(patched)], [400, "invalid_request"], patched.text);
    assert.equal(custos.query("SELECT 1 FROM platform_app_owners WHERE app_id = ?", fits.id).length, 64);
  });

  test("deleting an app ends its live SSH sudo grants, names them in its record, and erases its key's material", async () => {
    await newSpace("sudo");
    await login("sudo-user");
    const made = ok(await createApp("sudo", { name: "db", owners: { users: ["sudo-user"] } }), 201).app as Json;
    const grant = (reason: string) =>
      call("POST", "/v1/ssh/sudo", {
        org: "acme",
        space: "sudo",
        app: "db",
        user: "sudo-user",
        ttlSeconds: 3600,
        reason,
      });
    const live = ok(await grant("incident 1"), 201);
    const revoked = ok(await grant("incident 2"), 201);
    const ended = (ok(await call("DELETE", `/v1/ssh/sudo/${String(revoked.id)}`)).grant as Json).revokedAt;
    assert.equal(typeof ended, "string");
    const before = custos.query<{ version: number; wrapped: number }>(
      "SELECT v.version, length(v.wrapped_key) AS wrapped FROM key_versions v JOIN keys k ON k.id = v.key_id WHERE k.name = 'app.acme.sudo.db'",
    );
    assert.ok(before.length === 1 && (before[0]?.wrapped ?? 0) > 0, JSON.stringify(before));
    const gone = ok(await call("DELETE", "/v1/platform/apps/acme/sudo/db"));
    assert.deepEqual(gone, { deleted: true });
    const records = custos.query<AuditRow>(
      "SELECT * FROM audit_log WHERE resource IN ('org/acme/space/sudo/app/db', 'key/app.acme.sudo.db') AND action IN ('platform.app.delete.begin', 'key.destroy', 'platform.app.delete') ORDER BY seq",
    );
    assert.deepEqual(
      records.map((r) => [r.action, r.outcome]),
      [
        ["platform.app.delete.begin", "success"],
        ["key.destroy", "success"],
        ["platform.app.delete", "success"],
      ],
    );
    const end = records.at(-1) as AuditRow;
    assert.deepEqual((JSON.parse(end.details) as Json).sshSudoGrantsEnded, [live.id]);
    const grants = ok(await call("GET", "/v1/ssh/sudo")).grants as Json[];
    const byId = new Map(grants.map((g) => [g.id, g]));
    assert.deepEqual(
      [byId.get(live.id)?.revokedAt, byId.get(live.id)?.active],
      [end.time, false],
      "the live grant ends at the deletion's time",
    );
    assert.equal(byId.get(revoked.id)?.revokedAt, ended, "a grant revoked before keeps its own end");
    const active = ok(await call("GET", "/v1/ssh/sudo?active=true")).grants as Json[];
    assert.deepEqual(
      active.filter((g) => g.app === "db" && g.space === "sudo"),
      [],
    );
    const after_ = custos.query<{ state: string; wrapped: number | null }>(
      "SELECT v.state, length(v.wrapped_key) AS wrapped FROM key_versions v JOIN keys k ON k.id = v.key_id WHERE k.name = 'app.acme.sudo.db'",
    );
    assert.deepEqual(after_, [{ state: "destroyed", wrapped: null }]);
    assert.equal(custos.query("SELECT 1 FROM platform_apps WHERE id = ?", made.id).length, 0);
  });

  test("secret writes and grants racing the app's deletion: nothing of the app is left in the database", async () => {
    await newSpace("wipe");
    ok(await call("PUT", "/v1/secrets/data/shared/wipe/bundle", { value: "shared-bundle-value" }));
    const left: Json[] = [];
    for (let round = 0; round < 4; round++) {
      const name = `w${round}`;
      const app = ok(await createApp("wipe", { name }), 201).app as Json;
      const results = await Promise.all([
        ...Array.from({ length: 6 }, (_, i) =>
          call("PUT", `/v1/secrets/data/acme/wipe/${name}/s${i}`, { value: `racing-value-${round}-${i}` }),
        ),
        call("PUT", "/v1/secrets/grants/shared/wipe/bundle", { apps: [`acme/wipe/${name}`] }),
        call("DELETE", `/v1/platform/apps/acme/wipe/${name}`),
      ]);
      assert.equal(results.at(-1)?.status, 200, results.at(-1)?.text);
      for (const r of results.slice(0, -1)) {
        // A write that lost the race is refused, never a server error.
        assert.ok(r.status === 200 || (r.status >= 400 && r.status < 500), r.text);
      }
      const rows = {
        app: custos.query("SELECT id FROM platform_apps WHERE id = ?", app.id).length,
        secrets: custos.query("SELECT path FROM secrets WHERE app_id = ? OR path LIKE ?", app.id, `acme/wipe/${name}/%`)
          .length,
        versions: custos.query("SELECT path FROM secret_versions WHERE path LIKE ?", `acme/wipe/${name}/%`).length,
        grants: custos.query("SELECT 1 FROM secret_grants WHERE app_id = ?", app.id).length,
        owners: custos.query("SELECT 1 FROM platform_app_owners WHERE app_id = ?", app.id).length,
      };
      if (Object.values(rows).some((n) => n !== 0)) left.push({ name, ...rows });
    }
    assert.deepEqual(left, []);
  });

  test("two deletions of one app at once: one 200, the other 404; the key destroyed once, each answer audited once", async () => {
    await newSpace("twice");
    ok(await createApp("twice", { name: "gone" }), 201);
    const answers = await Promise.all([
      call("DELETE", "/v1/platform/apps/acme/twice/gone"),
      call("DELETE", "/v1/platform/apps/acme/twice/gone"),
    ]);
    assert.deepEqual(answers.map((a) => a.status).sort(), [200, 404], answers.map((a) => a.text).join("\n"));
    const lost = answers.find((a) => a.status === 404) as HttpAnswer;
    assert.equal(errorCode(lost), "not_found");
    assert.deepEqual(
      auditOf(lost).map((x) => [x.action, x.outcome, x.error_code]),
      [["platform.app.delete", "failure", "not_found"]],
    );
    const destroyed = custos.query<{ outcome: string }>(
      "SELECT outcome FROM audit_log WHERE action = 'key.destroy' AND resource = 'key/app.acme.twice.gone'",
    );
    assert.deepEqual(destroyed, [{ outcome: "success" }]);
  });

  test("an app whose key an admin destroyed directly: its secrets answer key_destroyed, and the app can still be deleted", async () => {
    await newSpace("shred");
    ok(await createApp("shred", { name: "old" }), 201);
    ok(await call("PUT", "/v1/secrets/data/acme/shred/old/pw", { value: "shredded-value" }));
    ok(await call("DELETE", "/v1/keys/app.acme.shred.old?immediate=true"));
    const read = await call("GET", "/v1/secrets/data/acme/shred/old/pw");
    assert.deepEqual([read.status, errorCode(read)], [410, "key_destroyed"], read.text);
    assert.equal(message(read), "the key of app acme/shred/old was destroyed; its secrets are unrecoverable");
    const gone = await call("DELETE", "/v1/platform/apps/acme/shred/old");
    assert.equal(gone.status, 200, gone.text);
    assert.equal(custos.query("SELECT 1 FROM platform_apps WHERE org = 'acme' AND space = 'shred'").length, 0);
    assert.equal(custos.query("SELECT 1 FROM secret_versions WHERE path LIKE 'acme/shred/%'").length, 0);
    ok(await call("DELETE", "/v1/platform/orgs/acme/spaces/shred"));
  });

  test("owners replaced while the group named is deleted: either the group is refused by name, as a creation refuses it, or it owns nothing once gone", async () => {
    const odd: Json[] = [];
    ok(await createApp("prod", { name: "gdel" }), 201);
    // The two sent a few milliseconds apart either way, so that some deletions land between the look-up and the write.
    const spread: [number, number][] = [
      [0, 0],
      [0, 1],
      [0, 2],
      [0, 3],
      [0, 4],
      [0, 5],
      [0, 6],
      [1, 0],
      [2, 0],
      [3, 0],
    ];
    for (const [round, [patchAfter, deleteAfter]] of spread.entries()) {
      const group = `gdel-${round}`;
      ok(await call("POST", "/v1/groups", { name: group, members: [] }), 201);
      const [patched] = await Promise.all([
        sleep(patchAfter).then(() =>
          call("PATCH", "/v1/platform/apps/acme/prod/gdel", { owners: { groups: [group] } }),
        ),
        sleep(deleteAfter).then(() => call("DELETE", `/v1/groups/${group}`)),
      ]);
      const app = ok(await call("GET", "/v1/platform/apps/acme/prod/gdel")).app as Json;
      assert.deepEqual(app.owners, { users: [], groups: [] }, "a deleted group owns nothing");
      if (patched.status === 200) continue;
      const seen = [patched.status, errorCode(patched), message(patched)];
      const expected = [400, "invalid_request", `owner: no group named ${group}`];
      if (JSON.stringify(seen) !== JSON.stringify(expected)) odd.push({ group, seen });
    }
    assert.deepEqual(odd, []);
  });

  test("orgs, spaces and apps are listed whole and in name order, as the database holds them; listings take no query parameter", async () => {
    await newSpace("many");
    const names = ["zeta", "alpha", "m-1", "m-10", "m-2", "0day", "beta"];
    for (const name of names) ok(await createApp("many", { name }), 201);
    const listed = (ok(await call("GET", "/v1/platform/orgs/acme/spaces/many/apps")).apps as Json[]).map((a) => a.app);
    const stored = custos
      .query<{ name: string }>("SELECT name FROM platform_apps WHERE org = 'acme' AND space = 'many'")
      .map((r) => r.name);
    assert.deepEqual(listed, [...stored].sort());
    assert.deepEqual(listed, [...names].sort());
    const spaces = (ok(await call("GET", "/v1/platform/orgs/acme/spaces")).spaces as Json[]).map((s) => s.name);
    const storedSpaces = custos.query<{ name: string }>("SELECT name FROM platform_spaces WHERE org = 'acme'");
    assert.deepEqual(spaces, storedSpaces.map((r) => r.name).sort());
    for (const path of [
      "/v1/platform/orgs?limit=1",
      "/v1/platform/orgs/acme/spaces?prefix=p",
      "/v1/platform/orgs/acme/spaces/many/apps?after=beta",
      "/v1/platform/apps/acme/many/alpha?owner=x",
    ]) {
      const r = await call("GET", path);
      const param = path.split("?")[1]?.split("=")[0] ?? "";
      assert.deepEqual([r.status, errorCode(r)], [400, "invalid_request"], `${path}: ${r.text}`);
      assert.ok(message(r).includes(`"${param}"`), `${path}: the refusal names the parameter: ${r.text}`);
      const rows = auditOf(r);
      assert.deepEqual(
        rows.map((x) => [x.outcome, x.error_code]),
        [["failure", "invalid_request"]],
        path,
      );
      assert.ok(!rows[0]?.details.includes("?"), `the query is not audited: ${rows[0]?.details}`);
    }
  });

  test("CLI: app owners with no option clears them; a refused app delete exits 1 and claims nothing; a bad reference exits 64", async () => {
    await login("cli-owner");
    const created = custos.cli(["app", "create", "acme/prod/cli-app", "--owner-user", "cli-owner", "--json"]);
    assert.equal(created.status, 0, created.stderr);
    assert.deepEqual(((JSON.parse(created.stdout) as Json).app as Json).owners, { users: ["cli-owner"], groups: [] });
    const cleared = custos.cli(["app", "owners", "acme/prod/cli-app", "--json"]);
    assert.equal(cleared.status, 0, cleared.stderr);
    assert.deepEqual(((JSON.parse(cleared.stdout) as Json).app as Json).owners, { users: [], groups: [] });
    const stored = custos.query<{ n: number }>(
      "SELECT count(*) AS n FROM platform_app_owners o JOIN platform_apps a ON a.id = o.app_id WHERE a.name = 'cli-app'",
    );
    assert.deepEqual(stored, [{ n: 0 }]);
    ok(await register({ org: "acme", space: "prod", app: "cli-app", instance: "cli-app-1" }), 201);
    const busy = custos.cli(["app", "delete", "acme/prod/cli-app"]);
    assert.equal(busy.status, 1, busy.stderr);
    assert.equal(busy.stdout, "", "a refused deletion prints no 'deleted'");
    assert.match(busy.stderr, /^error: conflict: app acme\/prod\/cli-app has 1 live instances/m);
    assert.equal((ok(await call("GET", "/v1/keys/app.acme.prod.cli-app")) as Json).state, "enabled");
    for (const args of [
      ["app", "get", "acme/prod"],
      ["app", "delete", "acme/prod/cli-app/extra"],
      ["app", "create", "acme//cli-b"],
    ]) {
      const r = custos.cli(args);
      assert.equal(r.status, 64, `${args.join(" ")}: ${r.stderr}`);
      assert.equal(r.stdout, "");
    }
    const missing = custos.cli(["app", "get", "acme/prod/no-such-app"]);
    assert.equal(missing.status, 1, missing.stderr);
    assert.match(missing.stderr, /^error: not_found: app acme\/prod\/no-such-app not found/m);
    ok(await call("DELETE", "/v1/broker/instances/cli-app-1", undefined, agent));
    const gone = custos.cli(["app", "delete", "acme/prod/cli-app", "--json"]);
    assert.equal(gone.status, 0, gone.stderr);
    const said = JSON.parse(gone.stdout) as Json;
    const key = ok(await call("GET", `/v1/keys/${String(said.key)}`)) as Json;
    assert.deepEqual(
      [said.deleted, key.name, key.state],
      ["acme/prod/cli-app", "app.acme.prod.cli-app", said.keyState],
    );
  });
});
