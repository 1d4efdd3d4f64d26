import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { AuditLog, HMAC_PREFIX } from "../../src/audit/index.js";
import { isCustosError } from "../../src/errors/index.js";
import type { App } from "../../src/platform/index.js";
import { ALPHABETS, Secrets } from "../../src/secrets/index.js";
import { admin, openPlatformFixture, type PlatformFixture } from "../platform/setup.js";

const code = (c: string) => (e: unknown) => isCustosError(e, c as never);

describe("secrets service", () => {
  let f: PlatformFixture;
  let web: App;
  let api: App;
  before(async () => {
    f = await openPlatformFixture("secrets");
    await f.platform.createOrg(admin, "acme");
    await f.platform.createSpace(admin, "acme", "prod");
    await f.platform.createApp(admin, { org: "acme", space: "prod", app: "web" });
    await f.platform.createApp(admin, { org: "acme", space: "prod", app: "api" });
    web = await f.platform.getApp({ org: "acme", space: "prod", app: "web" });
    api = await f.platform.getApp({ org: "acme", space: "prod", app: "api" });
  });
  after(async () => {
    await f?.close();
  });

  test("versions: each put is a new version; latest and named versions read back; reads are audited without the value", async () => {
    const p = "acme/prod/web/db/password";
    assert.equal((await f.secrets.put(admin, p, "one")).version, 1);
    assert.equal((await f.secrets.put(admin, p, "two ✓")).version, 2);
    assert.equal((await f.secrets.read(admin, p)).value, "two ✓");
    assert.equal((await f.secrets.read(admin, p, 1)).value, "one");
    const reads = await f.records("secret.read");
    assert.deepEqual(reads.at(-1)?.details, { path: p, version: 1 });
    assert.equal(JSON.stringify(reads).includes("one"), false);
    const writes = await f.records("secret.write");
    assert.equal(writes.at(-1)?.resource, `secret/${p}`);
    assert.equal(JSON.stringify(writes).includes("two"), false);
  });

  test("check-and-set: 0 means must not exist; a stale version is a conflict; casRequired refuses writes without it", async () => {
    const p = "acme/prod/web/cas";
    assert.equal((await f.secrets.put(admin, p, "a", 0)).version, 1);
    await assert.rejects(f.secrets.put(admin, p, "b", 0), code("conflict"));
    await assert.rejects(f.secrets.put(admin, p, "b", 2), code("conflict"));
    assert.equal((await f.secrets.put(admin, p, "b", 1)).version, 2);
    await f.secrets.updateMetadata(admin, p, { casRequired: true });
    await assert.rejects(f.secrets.put(admin, p, "c"), code("invalid_request"));
    assert.equal((await f.secrets.put(admin, p, "c", 2)).version, 3);
  });

  test("soft delete, undelete and destroy", async () => {
    const p = "acme/prod/web/life";
    await f.secrets.put(admin, p, "v1");
    await f.secrets.put(admin, p, "v2");
    await f.secrets.deleteVersions(admin, p);
    await assert.rejects(f.secrets.read(admin, p), code("not_found"), "the latest is deleted");
    assert.equal((await f.secrets.read(admin, p, 1)).value, "v1");
    const meta = await f.secrets.undeleteVersions(admin, p, [2]);
    assert.equal(meta.versions.find((v) => v.version === 2)?.state, "live");
    assert.equal((await f.secrets.read(admin, p)).value, "v2");
    const destroyed = await f.secrets.destroyVersions(admin, p, [1]);
    assert.equal(destroyed.versions.find((v) => v.version === 1)?.state, "destroyed");
    await assert.rejects(f.secrets.read(admin, p, 1), code("not_found"));
    assert.equal((await f.store.secrets.getSecretVersion(p, 1))?.ciphertext, null, "ciphertext erased");
    await f.secrets.undeleteVersions(admin, p, [1]);
    await assert.rejects(f.secrets.read(admin, p, 1), code("not_found"), "a destroyed version stays destroyed");
    await assert.rejects(f.secrets.destroyVersions(admin, p, [9]), code("not_found"));
    await f.secrets.deleteAll(admin, p);
    await assert.rejects(f.secrets.metadata(p), code("not_found"));
    assert.equal((await f.secrets.put(admin, p, "again", 0)).version, 1, "deleted for good: starts over");
  });

  test("maxVersions: the oldest versions beyond it are destroyed on write, and when it is lowered", async () => {
    const p = "acme/prod/web/rolling";
    for (let i = 1; i <= 12; i++) await f.secrets.put(admin, p, `value-${i}`);
    let meta = await f.secrets.metadata(p);
    assert.equal(meta.maxVersions, 10);
    assert.deepEqual(
      meta.versions.map((v) => v.version),
      [3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    );
    await assert.rejects(f.secrets.read(admin, p, 2), code("not_found"));
    meta = await f.secrets.updateMetadata(admin, p, { maxVersions: 3, customMetadata: { team: "web" } });
    assert.deepEqual(
      meta.versions.map((v) => v.version),
      [10, 11, 12],
    );
    assert.deepEqual(meta.customMetadata, { team: "web" });
    await f.secrets.put(admin, p, "value-13");
    assert.deepEqual(
      (await f.secrets.metadata(p)).versions.map((v) => v.version),
      [11, 12, 13],
    );
    const tooMany = Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, "v"]));
    await assert.rejects(f.secrets.updateMetadata(admin, p, { customMetadata: tooMany }), code("invalid_request"));
    await assert.rejects(f.secrets.updateMetadata(admin, p, { maxVersions: 0 }), code("invalid_request"));
  });

  test("generate respects length and alphabet", async () => {
    const cases: [unknown, number, RegExp][] = [
      [undefined, 32, /^[A-Za-z0-9]{32}$/],
      ["hex", 64, /^[0-9a-f]{64}$/],
      ["base64url", 8, /^[A-Za-z0-9_-]{8}$/],
      ["alnum-symbols", 1024, /^[\x21-\x7e]{1024}$/],
      ["xyz", 200, /^[xyz]{200}$/],
      ["αβ", 50, /^[αβ]{50}$/u],
    ];
    for (const [alphabet, length, re] of cases) {
      const p = `acme/prod/web/gen-${length}`;
      await f.secrets.generate(admin, p, { length, ...(alphabet === undefined ? {} : { alphabet }) });
      const { value } = await f.secrets.read(admin, p);
      assert.match(value, re, String(alphabet));
      assert.equal([...value].length, length);
    }
    // 200 draws from 3 characters: each appears (the chance one doesn't is below 1e-34).
    const { value } = await f.secrets.read(admin, "acme/prod/web/gen-200");
    for (const c of "xyz") assert.ok(value.includes(c));
    assert.equal(ALPHABETS.hex, "0123456789abcdef");
    for (const bad of [{ length: 7 }, { length: 1025 }, { alphabet: "aa" }, { alphabet: "a" }, { alphabet: "a b" }]) {
      await assert.rejects(f.secrets.generate(admin, "acme/prod/web/gen-bad", bad), code("invalid_request"));
    }
  });

  test("values and paths are validated", async () => {
    await assert.rejects(f.secrets.put(admin, "acme/prod/web/big", "x".repeat(32 * 1024 + 1)), code("invalid_request"));
    assert.equal((await f.secrets.put(admin, "acme/prod/web/big", "x".repeat(32 * 1024))).version, 1);
    await assert.rejects(f.secrets.put(admin, "acme/prod/web/empty", ""), code("invalid_request"));
    await assert.rejects(f.secrets.put(admin, "acme/prod/web/bad", "\ud800"), code("invalid_request"));
    for (const bad of ["acme/prod/web", "acme/prod/web/../x", "acme/prod/web/a//b", "ACME/prod/web/x", "shared"]) {
      await assert.rejects(f.secrets.put(admin, bad, "v"), code("invalid_request"), bad);
    }
    await assert.rejects(f.secrets.put(admin, "acme/prod/nope/x", "v"), code("not_found"));
  });

  test("list shows names and folders under an app or folder", async () => {
    const listed = await f.secrets.list("acme/prod/web");
    assert.ok(listed.keys.includes("db/"));
    assert.ok(listed.keys.includes("cas"));
    assert.deepEqual((await f.secrets.list("acme/prod/web/db")).keys, ["password"]);
  });

  test("list names each name once however many secrets a folder holds, and pages by `after`", async () => {
    // Metadata alone makes a secret that lists (no HSM call), so many are quick to make.
    const make = async (paths: readonly string[]) => {
      for (let i = 0; i < paths.length; i += 500) {
        await Promise.all(paths.slice(i, i + 500).map((p) => f.secrets.updateMetadata(admin, p, {})));
      }
    };
    // More secrets in one folder than the 10,000 paths the listing once read: its siblings after it still list.
    const crowd = Array.from({ length: 10_001 }, (_, i) => `shared/crowd/big/s${i}`);
    await make([...crowd, "shared/crowd/a", "shared/crowd/big.txt", "shared/crowd/big0", "shared/crowd/z/deep/er"]);
    assert.deepEqual(await f.secrets.list("shared/crowd"), {
      prefix: "shared/crowd/",
      keys: ["a", "big.txt", "big/", "big0", "z/"],
    });
    assert.deepEqual((await f.secrets.list("shared/crowd/", "big/")).keys, ["big0", "z/"]);
    assert.deepEqual((await f.secrets.list("shared/crowd/", "big")).keys, ["big.txt", "big/", "big0", "z/"]);
    assert.deepEqual((await f.secrets.list("shared/crowd/", "zz")).keys, []);

    // 1,001 names, the 1,000th a folder: a full page names it as the cursor, the next page goes on past it.
    const names = Array.from({ length: 999 }, (_, i) => `s${String(i).padStart(3, "0")}`);
    await make([...names.map((n) => `shared/pages/${n}`), "shared/pages/t/1", "shared/pages/t/2", "shared/pages/u"]);
    const first = await f.secrets.list("shared/pages");
    assert.deepEqual([first.keys.length, first.keys.at(-1), first.next], [1000, "t/", "t/"]);
    assert.deepEqual(first.keys, [...names, "t/"]);
    assert.deepEqual(await f.secrets.list("shared/pages", first.next), { prefix: "shared/pages/", keys: ["u"] });

    for (const bad of [5, "", ".", "../", "a/b", "a b", "x".repeat(65), "t//"]) {
      await assert.rejects(f.secrets.list("shared/pages", bad), (e: unknown) => {
        assert.ok(isCustosError(e, "invalid_request"), String(e));
        assert.match((e as Error).message, /^after must be a name from a listing/);
        return true;
      });
    }
  });

  test("shared secrets granted to two apps reach both through forApp; readForApp refuses the rest", async () => {
    await f.secrets.put(admin, "shared/ca-bundle", "BUNDLE");
    await f.secrets.put(admin, "shared/certs/a", "CERT-A");
    await f.secrets.put(admin, "shared/other", "NOT-GRANTED");
    await f.secrets.grant(admin, "shared/ca-bundle", ["acme/prod/web", "acme/prod/api"]);
    await f.secrets.grant(admin, "shared/certs/", ["acme/prod/api"]);
    await f.secrets.put(admin, "acme/prod/api/token", "API-TOKEN");
    await f.secrets.put(admin, "acme/prod/web/gone", "GONE");
    await f.secrets.deleteVersions(admin, "acme/prod/web/gone");

    const forWeb = await f.secrets.forApp(web);
    const forApi = await f.secrets.forApp(api);
    assert.deepEqual(
      forApi.map((s) => [s.path, s.name, s.value]),
      [
        ["acme/prod/api/token", "token", "API-TOKEN"],
        ["shared/ca-bundle", "shared/ca-bundle", "BUNDLE"],
        ["shared/certs/a", "shared/certs/a", "CERT-A"],
      ],
    );
    assert.ok(forWeb.some((s) => s.path === "shared/ca-bundle" && s.value === "BUNDLE"));
    assert.ok(forWeb.some((s) => s.name === "db/password" && s.value === "two ✓" && s.version === 2));
    assert.ok(!forWeb.some((s) => s.path.startsWith("shared/certs/") || s.path === "shared/other"));
    assert.ok(!forWeb.some((s) => s.path === "acme/prod/web/gone"), "nothing live: not delivered");

    assert.equal((await f.secrets.readForApp(api, "shared/certs/a")).value, "CERT-A");
    await assert.rejects(f.secrets.readForApp(web, "shared/certs/a"), code("forbidden"));
    await assert.rejects(f.secrets.readForApp(web, "shared/other"), code("forbidden"));
    await assert.rejects(f.secrets.readForApp(web, "acme/prod/api/token"), (e) => {
      assert.ok(isCustosError(e, "forbidden"));
      assert.match(e.message, /acme\/prod\/web may read only its own secrets/);
      return true;
    });
    assert.equal((await f.secrets.readForApp(web, "acme/prod/web/db/password")).name, "db/password");
    const grants = await f.secrets.listGrants();
    assert.equal(grants.length, 3);
    const key = await f.kms.getKey(admin, "secrets.shared");
    assert.equal(key.purpose, "encrypt");
  });

  test("a ciphertext is bound to its path and version", async () => {
    const v1 = await f.store.secrets.getSecretVersion("acme/prod/web/db/password", 1);
    assert.ok(v1?.ciphertext);
    await assert.rejects(
      f.kms.openFor(web.keyName, v1.ciphertext, { secret: "acme/prod/web/db/password", version: "2" }),
      code("decryption_failed"),
    );
  });

  test("openManyFor opens several ciphertexts of one key in order, and fails whole on one bad item", async () => {
    const path = "acme/prod/web/db/password";
    const v1 = await f.store.secrets.getSecretVersion(path, 1);
    const v2 = await f.store.secrets.getSecretVersion(path, 2);
    assert.ok(v1?.ciphertext && v2?.ciphertext);
    const good = [
      { ciphertext: v2.ciphertext, context: { secret: path, version: "2" } },
      { ciphertext: v1.ciphertext, context: { secret: path, version: "1" } },
    ];
    const opened = await f.kms.openManyFor(web.keyName, good);
    assert.deepEqual(
      opened.map((s) => s.exposeText()),
      ["two ✓", "one"],
    );
    const bad = [...good, { ciphertext: v1.ciphertext, context: { secret: path, version: "2" } }];
    await assert.rejects(f.kms.openManyFor(web.keyName, bad), code("decryption_failed"));
    await assert.rejects(f.kms.openManyFor("no-such-key", good), code("not_found"));
  });

  test("a destroyed app key makes its secrets unreadable with key_destroyed", async () => {
    await f.kms.destroyKey(admin, api.keyName);
    const expected = (e: unknown) => {
      assert.ok(isCustosError(e, "key_destroyed"));
      assert.equal(e.message, "the key of app acme/prod/api was destroyed; its secrets are unrecoverable");
      return true;
    };
    await assert.rejects(f.secrets.read(admin, "acme/prod/api/token"), expected);
    await assert.rejects(f.secrets.forApp(api), expected);
    await assert.rejects(f.secrets.put(admin, "acme/prod/api/token", "new"), expected);
    assert.equal((await f.secrets.read(admin, "acme/prod/web/db/password")).value, "two ✓", "other apps unaffected");
  });

  test("with the audit log, a write's record carries the value's HMAC under the HSM audit key, generate's too", async () => {
    const audited = new Secrets({ store: f.store, kms: f.kms, platform: f.platform, audit: f.audit.log });
    // The keys the fixture's audit log was given (provisionKeys finds them again).
    const { hmacKey } = await AuditLog.provisionKeys(f.keystore);
    const macOf = async (value: string) =>
      HMAC_PREFIX +
      (await f.keystore.hmac(hmacKey, Buffer.from(`custos-audit-value:v1\0${value}`, "utf8"))).toString("hex");
    const p = "acme/prod/web/hmaced";
    await audited.put(admin, p, "searchable ✓");
    await audited.generate(admin, p, { length: 16 });
    const generated = (await audited.read(admin, p)).value;
    const writes = (await f.records("secret.write")).filter((r) => r.resource === `secret/${p}`);
    assert.deepEqual(
      writes.map((r) => (r.details as { valueHmac?: unknown }).valueHmac),
      [await macOf("searchable ✓"), await macOf(generated)],
    );
    const text = JSON.stringify(writes);
    assert.ok(!text.includes("searchable") && !text.includes(generated), "the value itself is not recorded");
  });
});
