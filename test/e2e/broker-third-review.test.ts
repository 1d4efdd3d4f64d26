/**
 * Third conformance review of the audit log, app secrets and the container broker,
 * against a real Custos over HTTPS. Oracles: RFC 3986 (a URL is percent-decoded
 * once) and the broker's own route, which decodes once; the documented limits
 * (a secret path of 256 characters, the audit filters); the documented audit
 * reasons of a refused bootstrap token; the HMAC of docs/broker.md recomputed with
 * pkcs11js on the HSM token from another process; the SQLite file and its WAL,
 * read as bytes. What earlier reviews check (test/e2e/broker.test.ts,
 * test/broker/*, test/secrets/*, test/audit/*, test/platform/*) is not repeated.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { AUDIT_HMAC_KEY_LABEL } from "../../src/audit/index.js";
import { type PreparedKey, prepareKey } from "../../src/broker-client/index.js";
import { type CustosInstance, errorCode, type HttpAnswer, ok, startCustos } from "../helpers/custos.js";

type Json = Record<string, unknown>;

const REPO = resolve(import.meta.dirname, "../..");
const APP = "acme/prod/web";

/** HMAC-SHA256 under the token's audit HMAC key, computed by plain pkcs11js in a process of its own. */
const HMAC_SCRIPT = `
import pkcs11js from "pkcs11js";
const [modulePath, tokenLabel, pin, keyLabel, hex] = process.argv.slice(1);
const p = new pkcs11js.PKCS11();
p.load(modulePath);
p.C_Initialize();
try {
  const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === tokenLabel);
  const session = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
  p.C_Login(session, pkcs11js.CKU_USER, pin);
  p.C_FindObjectsInit(session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_LABEL, value: keyLabel },
  ]);
  const key = p.C_FindObjects(session);
  p.C_FindObjectsFinal(session);
  p.C_SignInit(session, { mechanism: pkcs11js.CKM_SHA256_HMAC }, key);
  process.stdout.write(p.C_Sign(session, Buffer.from(hex, "hex"), Buffer.alloc(32)).toString("hex"));
} finally {
  p.C_Finalize();
}`;

describe("audit, secrets and broker: third review", () => {
  let custos: CustosInstance;
  let agent: string;
  /** Every credential and value handed out here: none may be found at rest. */
  const planted: Array<[string, string]> = [];

  const records = async (query: string): Promise<Json[]> =>
    ok(await custos.call("GET", `/v1/audit?limit=9999&${query}`)).records as Json[];
  const put = (path: string, value: string) => {
    planted.push([`value of ${path}`, value]);
    return custos.call("PUT", `/v1/secrets/data/${path}`, { value });
  };
  const register = async (instance: string): Promise<Json> => {
    const body = { org: "acme", space: "prod", app: "web", instance };
    const reg = ok(await custos.call("POST", "/v1/broker/instances", body, agent), 201);
    planted.push([`bootstrap token of ${instance}`, String(reg.bootstrapToken).split(".")[2] ?? "-"]);
    return reg;
  };
  /** The exchange of `reg`'s token, with a key made beforehand (so a race starts both requests at once). */
  const exchange = async (reg: Json, instance: string, made?: PreparedKey): Promise<HttpAnswer> => {
    const key = made ?? (await prepareKey(instance));
    const body = { token: reg.bootstrapToken, instance, csr: key.csrPem };
    const answer = await custos.call("POST", "/v1/broker/exchange", body, null);
    if (answer.status === 200) {
      const a = answer.body as Json;
      planted.push([`JWT of ${instance}`, String(a.jwt).split(".")[2] ?? "-"]);
      planted.push([`private key of ${instance}`, key.privateKeyPem.split("\n")[1] ?? "-"]);
    }
    return answer;
  };
  const view = async (instance: string): Promise<Json> =>
    ok(await custos.call("GET", `/v1/broker/instances/${instance}`, undefined, agent));
  /** HMAC-SHA256 of `data` under the HSM audit key, not through Custos. */
  const hsmHmac = (data: Buffer): string =>
    execFileSync(
      process.execPath,
      [
        "--input-type=module",
        "-e",
        HMAC_SCRIPT,
        custos.token.modulePath,
        custos.token.label,
        custos.token.pin,
        AUDIT_HMAC_KEY_LABEL,
        data.toString("hex"),
      ],
      { cwd: REPO, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
    );

  before(async () => {
    // No sweep: whatever stops an instance here is the request's doing.
    custos = await startCustos({ broker: { sweepSeconds: 3600 } });
    for (const [path, name] of [
      ["/v1/platform/orgs", "acme"],
      ["/v1/platform/orgs/acme/spaces", "prod"],
      ["/v1/platform/orgs/acme/spaces/prod/apps", "web"],
    ] as const) {
      ok(await custos.call("POST", path, { name }), 201);
    }
    const made = ok(
      await custos.call("POST", "/v1/auth/tokens", { name: "node-agent", policies: ["platform-agent"] }),
      201,
    );
    agent = String(made.token);
    planted.push(["agent token", agent.slice(-40)]);
  });

  after(async () => {
    await custos?.dispose();
  });

  test("a secret URL is percent-decoded once: `%2541` names the invalid `%41`, and never destroys the secret `A`", async () => {
    ok(await put(`${APP}/pctA`, "pct-a-value"));
    // Decoded once (RFC 3986 2.4), `pct%2541` is `pct%41`: no secret path holds a `%`.
    const destroy = await custos.call("POST", `/v1/secrets/destroy/${APP}/pct%2541`, { versions: [1] });
    assert.equal(destroy.status, 400, destroy.text);
    assert.equal(errorCode(destroy), "invalid_request");
    assert.equal(ok(await custos.call("GET", `/v1/secrets/data/${APP}/pctA`)).value, "pct-a-value");
  });

  test("a once-encoded secret path names the same secret on the secrets routes and the broker's", async () => {
    ok(await put(`${APP}/encB`, "enc-b-value"));
    const read = ok(await custos.call("GET", `/v1/secrets/data/${APP.replaceAll("/", "%2F")}%2Fenc%42`));
    assert.equal(read.path, `${APP}/encB`);
    const reg = await register("enc-1");
    const jwt = String(ok(await exchange(reg, "enc-1")).jwt);
    const delivered = ok(await custos.call("GET", `/v1/broker/secrets/${APP}/enc%42`, undefined, jwt));
    assert.deepEqual([delivered.path, delivered.value], [`${APP}/encB`, "enc-b-value"]);
    // The broker's route decodes once: `%2542` is the invalid name `enc%42`.
    const twice = await custos.call("GET", `/v1/broker/secrets/${APP}/enc%2542`, undefined, jwt);
    assert.equal(errorCode(twice), "invalid_request", twice.text);
  });

  test("the audit log can be filtered by the resource of a secret whose path has the documented 256 characters", async () => {
    // 14 + 60 + 1 + 60 + 1 + 60 + 1 + 59 = 256 characters, segments of at most 64.
    const path = `${APP}/${"a".repeat(60)}/${"b".repeat(60)}/${"c".repeat(60)}/${"d".repeat(59)}`;
    assert.equal(path.length, 256);
    ok(await put(path, "longest-path-value"));
    const found = await custos.call("GET", `/v1/audit?resource=secret/${path}`);
    assert.equal(found.status, 200, found.text);
    const actions = ((found.body as { records: Json[] }).records ?? []).map((r) => r.action);
    assert.deepEqual(actions, ["secret.write"]);
  });

  test("a deregistration racing the exchange: what a won exchange got is refused after; a lost one got nothing", async () => {
    for (let i = 0; i < 6; i++) {
      const id = `race-${i}`;
      const [reg, key] = await Promise.all([register(id), prepareKey(id)]);
      const [ex, stop] = await Promise.all([
        exchange(reg, id, key),
        custos.call("DELETE", `/v1/broker/instances/${id}`, undefined, agent),
      ]);
      ok(stop);
      const state = await view(id);
      assert.equal(state.state, "stopped");
      if (ex.status === 200) {
        const jwt = String((ex.body as Json).jwt);
        assert.equal(errorCode(await custos.call("GET", "/v1/broker/whoami", undefined, jwt)), "credential_revoked");
        const certs = state.certificates as Json[];
        assert.deepEqual(
          certs.map((c) => c.status),
          ["revoked"],
        );
        assert.equal((state.bootstrapToken as Json).state, "used");
      } else {
        assert.equal(ex.status, 401, ex.text);
        assert.equal(errorCode(ex), "unauthenticated");
        assert.deepEqual(state.certificates, [], "a refused exchange issued no certificate");
        assert.equal((state.bootstrapToken as Json).state, "void");
      }
    }
  });

  test("an exchange refused because a racing deregistration voided its token is audited as void, not replay", async () => {
    const refusedIds: string[] = [];
    for (let i = 0; i < 6; i++) {
      const id = `void-${i}`;
      const [reg, key] = await Promise.all([register(id), prepareKey(id)]);
      const [ex] = await Promise.all([
        exchange(reg, id, key),
        custos.call("DELETE", `/v1/broker/instances/${id}`, undefined, agent),
      ]);
      if (ex.status === 401) refusedIds.push(String(reg.bootstrapToken).split(".")[1] ?? "-");
    }
    assert.ok(refusedIds.length > 0, "no exchange lost the race: nothing shown");
    const denied = (await records("action=broker.exchange")).filter(
      (r) => r.outcome === "denied" && refusedIds.includes(String((r.details as Json).tokenId)),
    );
    // Each token was never used: docs/broker.md names this refusal `void` (the instance was stopped).
    assert.deepEqual(
      denied.map((r) => (r.details as Json).reason),
      refusedIds.map(() => "void"),
    );
  });

  test("an exchange the app's disabled key refuses spends nothing: key_disabled, audited, the token works after", async () => {
    ok(await put(`${APP}/db/password`, "db-password-value"));
    const reg = await register("keyoff-1");
    const key = "/v1/keys/app.acme.prod.web";
    ok(await custos.call("PATCH", key, { enabled: false }));
    try {
      const refused = await exchange(reg, "keyoff-1");
      assert.equal(refused.status, 409, refused.text);
      assert.equal(errorCode(refused), "key_disabled");
      assert.doesNotMatch(refused.text, /db-password-value/);
      const state = await view("keyoff-1");
      assert.deepEqual(
        [state.state, (state.bootstrapToken as Json).state, state.certificates],
        ["registered", "unused", []],
      );
      const failures = (await records("principal=instance:keyoff-1&action=broker.exchange")).map((r) => [
        r.outcome,
        r.errorCode,
      ]);
      assert.deepEqual(failures, [["failure", "key_disabled"]]);
    } finally {
      ok(await custos.call("PATCH", key, { enabled: true }));
    }
    const later = ok(await exchange(reg, "keyoff-1"));
    const delivered = (later.secrets as Json[]).find((s) => s.name === "db/password");
    assert.equal(delivered?.value, "db-password-value");
  });

  test("maxVersions 1: a write removes the soft-deleted version whole; an instance then gets nothing of it", async () => {
    const path = `${APP}/rotating`;
    ok(await custos.call("PATCH", `/v1/secrets/metadata/${path}`, { maxVersions: 1 }));
    ok(await put(path, "rotating-one"));
    ok(await custos.call("POST", `/v1/secrets/delete/${path}`, {}));
    ok(await put(path, "rotating-two"));
    const undelete = await custos.call("POST", `/v1/secrets/undelete/${path}`, { versions: [1] });
    assert.equal(errorCode(undelete), "not_found", undelete.text);
    const rows = custos.query<{ version: number }>("SELECT version FROM secret_versions WHERE path = ?", path);
    assert.deepEqual(
      rows.map((r) => r.version),
      [2],
    );
    const write = (await records(`action=secret.write&resource=secret/${path}`)).at(-1);
    assert.deepEqual((write?.details as Json | undefined)?.destroyedVersions, [1]);
    // Version 2 soft-deleted: nothing live is left, so an instance is given none.
    ok(await custos.call("POST", `/v1/secrets/delete/${path}`, {}));
    const reg = await register("rot-1");
    const answer = ok(await exchange(reg, "rot-1"));
    assert.ok(!(answer.secrets as Json[]).some((s) => s.path === path));
    const one = await custos.call("GET", `/v1/broker/secrets/${path}`, undefined, String(answer.jwt));
    assert.equal(errorCode(one), "not_found", one.text);
  });

  test("writes, deletes, undeletes and destroys racing on one secret: each version keeps its own value", async () => {
    const path = `${APP}/contended`;
    const ops: Array<{ value?: string; answer: Promise<HttpAnswer> }> = [];
    for (let n = 1; n <= 8; n++) {
      const value = `contended-value-${n}`;
      ops.push({ value, answer: put(path, value) });
      if (n % 2 === 0) {
        ops.push({ answer: custos.call("POST", `/v1/secrets/delete/${path}`, {}) });
        ops.push({ answer: custos.call("POST", `/v1/secrets/undelete/${path}`, { versions: [1, 2, 3] }) });
        ops.push({ answer: custos.call("POST", `/v1/secrets/destroy/${path}`, { versions: [n - 1] }) });
      }
    }
    const versionValue = new Map<number, string>();
    for (const op of ops) {
      const a = await op.answer;
      // A version named before it exists is not_found; nothing else may fail.
      assert.ok(a.status === 200 || errorCode(a) === "not_found", a.text);
      const written = (a.body as { secret?: { version: number } }).secret;
      if (written !== undefined && op.value !== undefined) {
        assert.ok(!versionValue.has(written.version), `version ${written.version} answered twice`);
        versionValue.set(written.version, op.value);
      }
    }
    const versions = (ok(await custos.call("GET", `/v1/secrets/metadata/${path}`)).metadata as Json).versions as Json[];
    assert.deepEqual(
      versions.map((v) => v.version),
      [1, 2, 3, 4, 5, 6, 7, 8],
    );
    const rows = custos.query<{ version: number; ciphertext: string | null }>(
      "SELECT version, ciphertext FROM secret_versions WHERE path = ?",
      path,
    );
    for (const v of versions) {
      const n = Number(v.version);
      const row = rows.find((r) => r.version === n);
      assert.equal(row?.ciphertext === null, v.state === "destroyed", `version ${n} is ${String(v.state)}`);
      if (v.state === "destroyed") continue;
      if (v.state === "deleted") ok(await custos.call("POST", `/v1/secrets/undelete/${path}`, { versions: [n] }));
      const read = ok(await custos.call("GET", `/v1/secrets/data/${path}?version=${n}`));
      assert.equal(read.value, versionValue.get(n), `version ${n}`);
    }
  });

  test("a write's valueHmac is the documented HMAC, recomputed on the HSM token outside Custos; audit/hash agrees", async () => {
    const value = "hmac-oracle-value \u2713 \u{1F511}";
    const path = `${APP}/hmaced`;
    ok(await put(path, value));
    const label = Buffer.from("custos-audit-value:v1\0", "utf8");
    const expected = `hmac-sha256:${hsmHmac(Buffer.concat([label, Buffer.from(value, "utf8")]))}`;
    const write = (await records(`action=secret.write&resource=secret/${path}`)).at(-1);
    assert.equal((write?.details as Json | undefined)?.valueHmac, expected);
    assert.equal(ok(await custos.call("POST", "/v1/audit/hash", { value })).hmac, expected);
    const bare = `hmac-sha256:${hsmHmac(Buffer.from(value, "utf8"))}`;
    assert.notEqual(expected, bare, "the label is part of what is MACed");
    const hashedOnly = "a-value-only-ever-hashed";
    planted.push(["a value sent to audit/hash", hashedOnly]);
    ok(await custos.call("POST", "/v1/audit/hash", { value: hashedOnly }));
  });

  test("granting a shared secret again answers the grant as it stands: the first createdAt, as the listing shows", async () => {
    ok(await put("shared/ca-bundle", "shared-bundle-value"));
    const grant = async () =>
      (ok(await custos.call("PUT", "/v1/secrets/grants/shared/ca-bundle", { apps: [APP] })).grants as Json[])[0];
    const first = await grant();
    await new Promise((r) => setTimeout(r, 20));
    const again = await grant();
    const listed = (ok(await custos.call("GET", "/v1/secrets/grants")).grants as Json[]).filter(
      (g) => g.target === "shared/ca-bundle",
    );
    assert.deepEqual(
      listed.map((g) => g.createdAt),
      [first?.createdAt],
    );
    assert.equal(again?.createdAt, first?.createdAt);
  });

  test("no secret value, bootstrap token, JWT, agent token or instance key is in the database, its WAL or the log", () => {
    assert.ok(planted.length > 20, `only ${planted.length} things planted`);
    for (const file of ["custos.db", "custos.db-wal", "server.log"]) {
      let bytes: Buffer;
      try {
        bytes = readFileSync(join(custos.dir, file));
      } catch {
        continue;
      }
      for (const [what, needle] of planted) {
        assert.ok(!bytes.includes(Buffer.from(needle, "utf8")), `${what} is in ${file}`);
      }
    }
  });

  test("records deleted in a run across a signed checkpoint are one `deleted` problem at the first missing seq", async () => {
    // Each clean stop signs a checkpoint over the head: one before and one after some more records.
    await custos.stop();
    await custos.start();
    for (let i = 0; i < 4; i++) ok(await custos.call("GET", "/v1/auth/whoami"));
    await custos.stop();
    const checkpoints = custos.query<{ seq: number }>("SELECT seq FROM audit_checkpoints ORDER BY seq");
    assert.ok(checkpoints.length >= 2, JSON.stringify(checkpoints));
    const signed = checkpoints.at(-2)?.seq ?? 0;
    const db = new Database(join(custos.dir, "custos.db"));
    try {
      db.prepare("DELETE FROM audit_log WHERE seq BETWEEN ? AND ?").run(signed - 2, signed + 2);
    } finally {
      db.close();
    }
    await custos.start();
    const report = ok(await custos.call("POST", "/v1/audit/verify"));
    assert.equal(report.ok, false);
    assert.deepEqual(
      (report.problems as Json[]).map((p) => [p.seq, p.kind]),
      [[signed - 2, "deleted"]],
    );
  });
});
