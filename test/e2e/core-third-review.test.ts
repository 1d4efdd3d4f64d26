import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { auditEntry, systemActor } from "../../src/audit/entry.js";
import { AuthService, buildInitialAdmin } from "../../src/auth/index.js";
import { isCustosError } from "../../src/errors/index.js";
import { SqliteStore } from "../../src/store/sqlite/index.js";
import { parseAsDocumented } from "../helpers/ciphertext.js";
import { type CustosInstance, errorCode, type HttpAnswer, ok, startCustos } from "../helpers/custos.js";

type Json = Record<string, unknown>;
type Answer = HttpAnswer & { readonly headers?: Record<string, unknown> };

/**
 * A third review of the secure core: KMS batches with mixed items, rotation under
 * load, ciphertexts decoded by docs/ciphertext-format.md's layout alone, glob
 * policies on listings, 403 against 404, the token tree, token expiry at its
 * boundary, cache headers, one audit record per change, and the CLI's exit codes
 * for the same refusals. Oracles: the documented layout, node's Buffer reads, the
 * documented codes and statuses, and the audit_log table.
 */

const b64 = (text: string) => Buffer.from(text).toString("base64");
const itemCodes = (r: HttpAnswer) =>
  ((r.body as { items: Json[] }).items ?? []).map((i) => (i.error as Json | undefined)?.code ?? "ok");

describe("the secure core over HTTPS, third review", () => {
  let custos: CustosInstance;
  const call = (method: string, path: string, body?: unknown, bearer?: string) =>
    custos.call(method, path, body, bearer) as Promise<Answer>;
  const created = async (name: string, purpose = "encrypt") =>
    ok(await call("POST", "/v1/keys", { name, purpose }), 201);
  const encrypt = async (key: string, text: string, extra: Json = {}) =>
    ok(await call("POST", `/v1/keys/${key}/encrypt`, { plaintext: b64(text), ...extra })).ciphertext as string;
  const token = async (name: string, body: Json = {}, bearer?: string) =>
    ok(await call("POST", "/v1/auth/tokens", { name, ...body }, bearer), 201) as { token: string; id: string } & Json;
  const rows = (r: Answer) =>
    custos.query<{ action: string; outcome: string; error_code: string | null; details: string }>(
      "SELECT action, outcome, error_code, details FROM audit_log WHERE request_id = ?",
      r.headers?.["x-request-id"],
    );

  before(async () => {
    custos = await startCustos();
    for (const name of ["app-a-", "app-a-data", "app-ab", "app-b-data"]) await created(name);
    ok(
      await call("PUT", "/v1/policies/app-a", {
        rules: [{ resource: "key/app-a-*", actions: ["key:read", "key:encrypt", "key:rotate", "key:create"] }],
      }),
    );
    ok(await call("PUT", "/v1/policies/middle-b", { rules: [{ resource: "key/*-b-*", actions: ["key:read"] }] }));
    ok(
      await call("PUT", "/v1/policies/maker", {
        rules: [{ resource: "token/*", actions: ["token:create", "token:read"] }],
      }),
    );
  });
  after(async () => {
    await custos?.dispose();
  });

  describe("batches", () => {
    test("a mixed decrypt batch answers each item alone, in order, and its one audit record counts them", async () => {
      await created("mixed");
      await created("mixed-other");
      const v1 = await encrypt("mixed", "one", { context: { doc: "1" } });
      ok(await call("POST", "/v1/keys/mixed/rotate"));
      const v2 = await encrypt("mixed", "two", { context: { doc: "2" } });
      const other = await encrypt("mixed-other", "other");
      const tampered = parseAsDocumented(v2).blob;
      tampered.writeUInt8(tampered.readUInt8(tampered.length - 1) ^ 1, tampered.length - 1);
      const future = Buffer.from(parseAsDocumented(v2).blob);
      future.writeUInt32BE(9, 17);
      const items = [
        { ciphertext: v2, context: { doc: "2" } },
        { ciphertext: v2, context: { doc: "1" } },
        { ciphertext: other },
        { ciphertext: `custos:v1:${tampered.toString("base64")}`, context: { doc: "2" } },
        { ciphertext: `custos:v1:${future.toString("base64")}`, context: { doc: "2" } },
        { ciphertext: v1, context: { doc: "1" } },
      ];
      const before = await call("POST", "/v1/keys/mixed/decrypt", { items });
      assert.deepEqual(itemCodes(before), ["ok", ...Array(4).fill("decryption_failed"), "ok"]);
      ok(await call("PATCH", "/v1/keys/mixed", { minDecryptionVersion: 2 }));
      const r = await call("POST", "/v1/keys/mixed/decrypt", { items });
      assert.deepEqual(itemCodes(r), ["ok", ...Array(4).fill("decryption_failed"), "version_too_old"]);
      const first = (r.body as { items: Json[] }).items[0];
      assert.deepEqual(first, { plaintext: b64("two"), version: 2 });
      const audited = rows(r);
      assert.equal(audited.length, 1);
      const details = JSON.parse(audited[0]?.details ?? "{}") as Json;
      assert.deepEqual([details.items, details.succeeded, details.failed], [6, 1, 5]);
    });

    test("a mixed encrypt batch: an empty plaintext, a retired and an unknown version fail alone; the rest use the version named", async () => {
      await created("mixed-enc");
      ok(await call("POST", "/v1/keys/mixed-enc/rotate"));
      ok(await call("POST", "/v1/keys/mixed-enc/rotate"));
      ok(await call("PATCH", "/v1/keys/mixed-enc", { minDecryptionVersion: 2 }));
      const r = await call("POST", "/v1/keys/mixed-enc/encrypt", {
        items: [
          { plaintext: b64("x"), version: 2 },
          { plaintext: "" },
          { plaintext: b64("x"), version: 1 },
          { plaintext: b64("x"), version: 4 },
          { plaintext: b64("x") },
        ],
      });
      assert.deepEqual(itemCodes(r), ["ok", "invalid_request", "version_too_old", "invalid_request", "ok"]);
      const items = (r.body as { items: Json[] }).items;
      assert.deepEqual(
        [items[0], items[4]].map((i) => [i?.version, parseAsDocumented(i?.ciphertext as string).version]),
        [
          [2, 2],
          [3, 3],
        ],
      );
    });

    test("a ciphertext string that is empty or longer than any ciphertext is decryption_failed, and alone in a batch, as one of 100,000 characters is", async () => {
      await created("uniform");
      const good = await encrypt("uniform", "kept");
      const strings = ["", `custos:v1:${"A".repeat(100_000)}`, `custos:v1:${"A".repeat(200_000)}`];
      const singles = [];
      for (const ciphertext of strings) singles.push(await call("POST", "/v1/keys/uniform/decrypt", { ciphertext }));
      assert.deepEqual(
        singles.map((s) => [s.status, errorCode(s)]),
        strings.map(() => [400, "decryption_failed"]),
        singles.map((s) => s.text).join("\n"),
      );
      const batch = await call("POST", "/v1/keys/uniform/decrypt", {
        items: [{ ciphertext: good }, ...strings.map((ciphertext) => ({ ciphertext }))],
      });
      assert.equal(batch.status, 200, batch.text.slice(0, 300));
      assert.deepEqual(itemCodes(batch), ["ok", ...strings.map(() => "decryption_failed")]);
    });

    test("a rewrap batch's audit record names the versions its items were decrypted under, as a single rewrap's fromVersion does", async () => {
      await created("rewrap-audit");
      const v1 = await encrypt("rewrap-audit", "one");
      ok(await call("POST", "/v1/keys/rewrap-audit/rotate"));
      const v2 = await encrypt("rewrap-audit", "two");
      ok(await call("POST", "/v1/keys/rewrap-audit/rotate"));
      const single = await call("POST", "/v1/keys/rewrap-audit/rewrap", { ciphertext: v1 });
      const singleDetails = JSON.parse(rows(single)[0]?.details ?? "{}") as Json;
      assert.equal(singleDetails.fromVersion, 1, "a single rewrap records the version it came from");
      const batch = await call("POST", "/v1/keys/rewrap-audit/rewrap", {
        items: [{ ciphertext: v1 }, { ciphertext: v2 }],
      });
      assert.deepEqual(itemCodes(batch), ["ok", "ok"]);
      const details = JSON.parse(rows(batch)[0]?.details ?? "{}") as Json;
      assert.deepEqual([details.fromVersions, details.versions], [[1, 2], [3]], JSON.stringify(details));
      assert.deepEqual(
        (ok(batch).items as Json[]).map((i) => Object.keys(i).sort()),
        [
          ["ciphertext", "version"],
          ["ciphertext", "version"],
        ],
        "the answer leaves fromVersion out, as a single rewrap's does",
      );
    });
  });

  test("every ciphertext any route returns decodes by the documented layout: the key's id, the answered version, 34 + n + 16 bytes, a fresh IV", async () => {
    const key = await created("layout");
    ok(await call("POST", "/v1/keys/layout/rotate"));
    const v1 = await encrypt("layout", "hello", { version: 1 });
    const answers: [Json, number][] = [
      [ok(await call("POST", "/v1/keys/layout/encrypt", { plaintext: b64("hello") })), 5],
      [ok(await call("POST", "/v1/keys/layout/rewrap", { ciphertext: v1 })), 5],
    ];
    for (const bytes of [16, 24, 32]) {
      answers.push([ok(await call("POST", "/v1/keys/layout/datakey", { bytes, plaintext: false })), bytes]);
    }
    const batches: [string, Json, number[]][] = [
      ["encrypt", { items: [{ plaintext: b64("a") }, { plaintext: b64("abcdefgh"), version: 1 }] }, [1, 8]],
      ["datakey", { items: [{ bytes: 16 }, { bytes: 24 }, {}] }, [16, 24, 32]],
      ["rewrap", { items: [{ ciphertext: v1 }] }, [5]],
    ];
    for (const [op, body, sizes] of batches) {
      const items = ok(await call("POST", `/v1/keys/layout/${op}`, body)).items as Json[];
      items.forEach((item, i) => {
        answers.push([item, sizes[i] ?? -1]);
      });
    }
    const ivs = new Set<string>();
    for (const [answer, n] of answers) {
      const d = parseAsDocumented(answer.ciphertext as string);
      assert.deepEqual(
        [d.format, d.keyId, d.version, d.algorithm, d.plaintextLength],
        [1, key.id, answer.version, 1, n],
        JSON.stringify(answer),
      );
      ivs.add(d.iv.toString("hex"));
    }
    assert.equal(ivs.size, answers.length, "an IV was used twice");
  });

  test("rotations racing encrypts and data keys: no version lost or repeated, every header names the version answered, all decrypt", async () => {
    await created("race");
    const rotations = Array.from({ length: 3 }, () => call("POST", "/v1/keys/race/rotate"));
    const encrypts = Array.from({ length: 40 }, (_, i) =>
      call("POST", "/v1/keys/race/encrypt", { plaintext: b64(`m${i}`), context: { i: String(i) } }),
    );
    const batches = Array.from({ length: 4 }, () => call("POST", "/v1/keys/race/datakey", { items: [{}, {}] }));
    const rotated = await Promise.all(rotations);
    for (const r of rotated) assert.ok(r.status === 200 || errorCode(r) === "conflict", r.text);
    const served = rotated.filter((r) => r.status === 200).map((r) => (r.body as Json).latestVersion);
    assert.equal(new Set(served).size, served.length, `two rotations answered one version: ${served}`);
    const latest = ok(await call("GET", "/v1/keys/race")).latestVersion as number;
    assert.equal(latest, 1 + served.length, "a rotation was lost or one made a version twice");
    const encrypted = await Promise.all(encrypts);
    for (const [i, r] of encrypted.entries()) {
      const body = ok(r);
      assert.equal(parseAsDocumented(body.ciphertext as string).version, body.version);
      const back = ok(
        await call("POST", "/v1/keys/race/decrypt", { ciphertext: body.ciphertext, context: { i: String(i) } }),
      );
      assert.deepEqual([back.plaintext, back.version], [b64(`m${i}`), body.version]);
    }
    for (const r of await Promise.all(batches)) {
      for (const item of ok(r).items as Json[]) {
        assert.equal(parseAsDocumented(item.ciphertext as string).version, item.version);
        const back = ok(await call("POST", "/v1/keys/race/decrypt", { ciphertext: item.ciphertext }));
        assert.equal(back.plaintext, item.plaintext);
      }
    }
  });

  describe("policies and what a token without a capability sees", () => {
    test("key/app-a-* covers app-a- itself, and lists only under a prefix that keeps within it; key/*-b-* matches mid-name", async () => {
      const appA = (await token("glob-a", { policies: ["app-a"] })).token;
      const midB = (await token("glob-b", { policies: ["middle-b"] })).token;
      ok(await call("GET", "/v1/keys/app-a-", undefined, appA));
      assert.equal((await call("GET", "/v1/keys/app-ab", undefined, appA)).status, 403);
      for (const prefix of ["", "app-", "app-a"]) {
        const r = await call("GET", `/v1/keys?prefix=${prefix}`, undefined, appA);
        assert.deepEqual([r.status, errorCode(r)], [403, "forbidden"], `prefix "${prefix}": ${r.text}`);
      }
      const listed = ok(await call("GET", "/v1/keys?prefix=app-a-", undefined, appA)).keys as Json[];
      assert.deepEqual(
        listed.map((k) => k.name),
        ["app-a-", "app-a-data"],
      );
      ok(await call("GET", "/v1/keys/app-b-data", undefined, midB));
      const mid = ok(await call("GET", "/v1/keys?prefix=app-b-", undefined, midB)).keys as Json[];
      assert.deepEqual(
        mid.map((k) => k.name),
        ["app-b-data"],
      );
      assert.equal((await call("GET", "/v1/keys/app-a-data", undefined, midB)).status, 403);
    });

    test("outside its pattern a token gets 403 whether the key exists or not; inside it a missing key is 404", async () => {
      const appA = (await token("leak", { policies: ["app-a"] })).token;
      const cases: [string, string, (name: string) => Json | undefined][] = [
        ["GET", "", () => undefined],
        ["POST", "/encrypt", () => ({ plaintext: b64("x") })],
        ["POST", "/rotate", () => undefined],
        ["PATCH", "", () => ({ description: "x" })],
        ["POST", "/decrypt", () => ({ ciphertext: "custos:v1:AAAA" })],
      ];
      for (const [method, suffix, body] of cases) {
        const exists = await call(method, `/v1/keys/app-b-data${suffix}`, body("app-b-data"), appA);
        const missing = await call(method, `/v1/keys/app-b-missing${suffix}`, body("app-b-missing"), appA);
        assert.deepEqual(
          [exists.status, missing.status, errorCode(missing)],
          [403, 403, "forbidden"],
          `${method} ${suffix}: ${missing.text}`,
        );
        assert.equal(
          exists.text.replace("app-b-data", "N"),
          missing.text.replace("app-b-missing", "N"),
          `${method} ${suffix}`,
        );
      }
      const inside = await call("POST", "/v1/keys/app-a-missing/encrypt", { plaintext: b64("x") }, appA);
      assert.deepEqual([inside.status, errorCode(inside)], [404, "not_found"]);
      const create = await call("POST", "/v1/keys", { name: "app-b-data", purpose: "encrypt" }, appA);
      assert.deepEqual([create.status, errorCode(create)], [403, "forbidden"], "a taken name outside is not 409");
    });
  });

  describe("the token tree", () => {
    test("revoking a standalone parent revokes child and grandchild; they list as revoked and a second revoke is 409", async () => {
      const parent = await token("tree-parent", { policies: ["maker"], forUser: false });
      const child = await token("tree-child", { policies: ["maker"], forUser: false }, parent.token);
      const grandchild = await token("tree-grandchild", { policies: ["maker"], forUser: false }, child.token);
      assert.deepEqual([child.parentId, grandchild.parentId], [parent.id, child.id]);
      const upward = await call("DELETE", `/v1/auth/tokens/${parent.id}`, undefined, child.token);
      assert.deepEqual([upward.status, errorCode(upward)], [403, "forbidden"], "a child revoked its parent");
      const widen = await call("POST", "/v1/auth/tokens", { name: "w", policies: ["maker", "app-a"] }, child.token);
      assert.deepEqual([widen.status, errorCode(widen)], [403, "forbidden"], "a child out-privileged its parent");
      const revoked = ok(await call("DELETE", `/v1/auth/tokens/${parent.id}`));
      assert.deepEqual(new Set(revoked.revokedWith as string[]), new Set([child.id, grandchild.id]));
      for (const t of [child, grandchild]) {
        const who = await call("GET", "/v1/auth/whoami", undefined, t.token);
        assert.deepEqual([who.status, errorCode(who)], [401, "unauthenticated"]);
      }
      const listed = (ok(await call("GET", "/v1/auth/tokens")).tokens as Json[]).filter((t) =>
        [parent.id, child.id, grandchild.id].includes(t.id as string),
      );
      assert.equal(listed.length, 3);
      for (const t of listed) assert.equal(typeof t.revokedAt, "string", `${t.name} is not listed as revoked`);
      const again = await call("DELETE", `/v1/auth/tokens/${grandchild.id}`);
      assert.deepEqual([again.status, errorCode(again)], [409, "conflict"]);
    });

    test("a child made by a token with a ttl expires with it, even when it asks for longer or for no ttl", async () => {
      const parent = await token("ttl-parent", { ttlSeconds: 600, policies: ["maker"] });
      const longer = await token("ttl-longer", { ttlSeconds: 86_400 }, parent.token);
      const none = await token("ttl-none", {}, parent.token);
      const standalone = await token("ttl-standalone", { forUser: false, policies: ["maker"] }, parent.token);
      for (const child of [longer, none, standalone])
        assert.equal(child.expiresAt, parent.expiresAt, child.name as string);
    });
  });

  test("cache-control: no-store on key and token answers, successes and 401, 403, 404, 409 and 410 errors alike", async () => {
    await created("cache-gone");
    ok(await call("DELETE", "/v1/keys/cache-gone?immediate=true"));
    const none = (await token("cache-none", { policies: [] })).token;
    const answers: [string, Answer][] = [
      ["list", await call("GET", "/v1/keys")],
      ["show", await call("GET", "/v1/keys/app-a-data")],
      ["whoami", await call("GET", "/v1/auth/whoami")],
      ["tokens", await call("GET", "/v1/auth/tokens")],
      ["create token", await call("POST", "/v1/auth/tokens", { name: "cache-made" })],
      ["rotate", await call("POST", "/v1/keys/app-ab/rotate")],
      [
        "401",
        await call("GET", "/v1/keys", undefined, "cst_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"),
      ],
      ["403", await call("GET", "/v1/keys", undefined, none)],
      ["404", await call("GET", "/v1/keys/no-such-key")],
      ["409", await call("POST", "/v1/keys", { name: "app-ab", purpose: "encrypt" })],
      ["410", await call("POST", "/v1/keys/cache-gone/encrypt", { plaintext: b64("x") })],
    ];
    assert.deepEqual(
      answers.map(([what, r]) => [what, r.status < 300 ? "2xx" : String(r.status), r.headers?.["cache-control"]]),
      answers.map(([what, r]) => [what, r.status < 300 ? "2xx" : what, "no-store"]),
    );
  });

  test("every state-changing key and token call leaves one audit record under its request id, and no token in it", async () => {
    await created("audited");
    const made = await call("POST", "/v1/auth/tokens", { name: "audited-parent", policies: ["maker"], forUser: false });
    const parent = ok(made, 201) as { token: string; id: string };
    const childMade = await call(
      "POST",
      "/v1/auth/tokens",
      { name: "audited-child", policies: ["maker"] },
      parent.token,
    );
    const cases: [string, Answer, string, string][] = [
      ["token create", made, "token.create", "success"],
      ["child create", childMade, "token.create", "success"],
      [
        "key create",
        await call("POST", "/v1/keys", { name: "audited-2", purpose: "encrypt" }),
        "key.create",
        "success",
      ],
      ["rotate", await call("POST", "/v1/keys/audited/rotate"), "key.rotate", "success"],
      ["disable", await call("PATCH", "/v1/keys/audited", { enabled: false }), "key.disable", "success"],
      ["disable again", await call("PATCH", "/v1/keys/audited", { enabled: false }), "key.disable", "success"],
      [
        "schedule",
        await call("DELETE", "/v1/keys/audited?waitingSeconds=86400"),
        "key.schedule-destruction",
        "success",
      ],
      ["rotate refused", await call("POST", "/v1/keys/audited/rotate"), "key.rotate", "failure"],
      ["cancel", await call("POST", "/v1/keys/audited/cancel-destruction"), "key.cancel-destruction", "success"],
      ["revoke tree", await call("DELETE", `/v1/auth/tokens/${parent.id}`), "token.revoke", "success"],
      ["revoke again", await call("DELETE", `/v1/auth/tokens/${parent.id}`), "token.revoke", "failure"],
    ];
    const secrets = [parent.token, (childMade.body as Json).token as string];
    for (const [what, r, action, outcome] of cases) {
      const found = rows(r);
      assert.equal(found.length, 1, `${what}: ${found.length} records (${r.status} ${r.text.slice(0, 120)})`);
      assert.deepEqual([found[0]?.action, found[0]?.outcome], [action, outcome], what);
      for (const secret of secrets) assert.ok(!found[0]?.details.includes(secret), `${what}: a token is in the record`);
    }
  });

  test("a PATCHed rotation period is refused with the one bound it breaks; null turns rotation off", async () => {
    await created("period");
    const refused = async (value: unknown) => {
      const r = await call("PATCH", "/v1/keys/period", { rotationPeriodSeconds: value });
      assert.equal(errorCode(r), "invalid_request");
      return (r.body as { error: { message: string } }).error.message;
    };
    assert.equal(await refused(10), "invalid request: body/rotationPeriodSeconds must be >= 3600");
    assert.equal(await refused("1 day"), "invalid request: body/rotationPeriodSeconds must be integer,null");
    assert.match(await refused(10 ** 12), /^rotationPeriodSeconds must be an integer from 3600 to \d+$/);
    assert.equal(
      ok(await call("PATCH", "/v1/keys/period", { rotationPeriodSeconds: 86_400 })).rotationPeriodSeconds,
      86_400,
    );
    assert.equal(
      ok(await call("PATCH", "/v1/keys/period", { rotationPeriodSeconds: null })).rotationPeriodSeconds,
      null,
    );
  });

  test("the CLI prints one error line and exits 1 for forbidden, not_found, key_disabled, conflict, decryption_failed and unauthenticated", async () => {
    await created("cli-off");
    ok(await call("PATCH", "/v1/keys/cli-off", { enabled: false }));
    const appA = (await token("cli-app-a", { policies: ["app-a"] })).token;
    const spent = await token("cli-spent");
    ok(await call("DELETE", `/v1/auth/tokens/${spent.id}`));
    const cases: [string[], string, string | undefined][] = [
      [["key", "show", "app-b-data"], "forbidden", appA],
      [["key", "list"], "forbidden", appA],
      [["key", "show", "app-a-missing"], "not_found", appA],
      [["encrypt", "--key", "cli-off"], "key_disabled", undefined],
      [["datakey", "--key", "cli-off"], "key_disabled", undefined],
      [["token", "revoke", spent.id], "conflict", undefined],
      [["key", "create", "app-a-data"], "conflict", undefined],
      [["decrypt", "--key", "app-a-data", "custos:v1:AAAA"], "decryption_failed", undefined],
      [["whoami"], "unauthenticated", spent.token],
    ];
    for (const [args, code, as] of cases) {
      const r = custos.cli(args, { input: "x", ...(as ? { token: as } : {}) });
      assert.deepEqual(
        [r.status, r.stdout, r.stderr.split("\n").filter(Boolean).length],
        [1, "", 1],
        `${args.join(" ")}: ${r.stderr}`,
      );
      assert.match(r.stderr, new RegExp(`^error: ${code}: `), args.join(" "));
    }
    const missing = custos.cli(["decrypt", "--key", "app-a-data", ""]);
    assert.deepEqual([missing.status, missing.stdout], [64, ""], missing.stderr);
  });
});

describe("token expiry at its boundary (service, moved clock)", () => {
  test("a token and the child clamped to it work 1 ms before expiresAt and not at it, whatever the principal cache holds", async () => {
    const dir = mkdtempSync(join(tmpdir(), "custos-core3-"));
    const store = await SqliteStore.open(join(dir, "custos.db"));
    try {
      let nowMs = Date.parse("2032-02-29T12:00:00.000Z");
      const clock = () => new Date(nowMs);
      const initial = await buildInitialAdmin({ name: "root", clock });
      await store.initialize(
        { settings: {}, policies: initial.policies, admin: initial.admin, adminToken: initial.adminToken },
        auditEntry(systemActor("init"), "custos.init", ""),
      );
      const auth = new AuthService({ store, clock, principalCacheMs: 3_600_000 });
      const admin = await auth.authenticate(initial.token.exposeText());
      const actor = { principal: admin.display, requestId: "r", source: "local" };
      const made = await auth.createToken(actor, admin, { name: "short", ttlSeconds: 60 });
      const parentText = made.token.exposeText();
      const parent = await auth.authenticate(parentText);
      const child = await auth.createToken({ ...actor, principal: parent.display }, parent, { name: "child" });
      const childText = child.token.exposeText();
      assert.equal(made.record.expiresAt, "2032-02-29T12:01:00.000Z");
      assert.equal(child.record.expiresAt, made.record.expiresAt);
      const works = async (text: string) => {
        try {
          await auth.authenticate(text);
          return true;
        } catch (e) {
          assert.ok(isCustosError(e, "unauthenticated"), String(e));
          return false;
        }
      };
      nowMs += 59_999;
      assert.deepEqual([await works(parentText), await works(childText)], [true, true]);
      nowMs += 1;
      assert.deepEqual([await works(parentText), await works(childText)], [false, false]);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
