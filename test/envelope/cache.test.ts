import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { inspect } from "node:util";
import { CachedKeys, DEFAULT_CACHE_LIMITS } from "../../src/envelope/cache.js";
import type { EnvelopeKms } from "../../src/envelope/index.js";
import { Secret } from "../../src/secret/index.js";

/** Hands out data keys and keeps every Secret it gave, to check that the cache zeroes them. */
function issuingKms(): EnvelopeKms & { issued: Secret[]; fail: boolean } {
  const state = {
    issued: [] as Secret[],
    fail: false,
    async generateDataKey() {
      if (state.fail) throw Object.assign(new Error("down"), { code: "hsm_unavailable" });
      const plaintext = Secret.adopt(randomBytes(32));
      state.issued.push(plaintext);
      return { plaintext, wrapped: `w${state.issued.length}`, version: 1 };
    },
    async decryptDataKey() {
      const plaintext = Secret.adopt(randomBytes(32));
      state.issued.push(plaintext);
      return { plaintext, version: 1 };
    },
    rewrapDataKeys: () => Promise.reject(new Error("unused")),
  };
  return state;
}

const copy = (k: Buffer) => Buffer.from(k);

test("a data key expires with age, and is zeroed when replaced", async () => {
  const kms = issuingKms();
  let now = 0;
  const cache = new CachedKeys(kms, { ...DEFAULT_CACHE_LIMITS, maxAgeMs: 1000 }, () => now);
  const first = await cache.forEncryption("k", {}, copy);
  now = 999;
  assert.deepEqual((await cache.forEncryption("k", {}, copy)).value, first.value);
  now = 1000;
  const second = await cache.forEncryption("k", {}, copy);
  assert.notDeepEqual(second.value, first.value);
  assert.equal(cache.kmsCalls, 2);
  assert.equal(kms.issued[0]?.destroyed, true, "the expired key is zeroed");
  assert.equal(kms.issued[1]?.destroyed, false);
});

test("the least recently used key goes first, zeroed; clear() zeroes all", async () => {
  const kms = issuingKms();
  const cache = new CachedKeys(kms, { ...DEFAULT_CACHE_LIMITS, maxEntries: 2 });
  await cache.forEncryption("k", { n: "1" }, copy);
  await cache.forEncryption("k", { n: "2" }, copy);
  await cache.forEncryption("k", { n: "1" }, copy); // 1 is now the most recent
  await cache.forEncryption("k", { n: "3" }, copy); // evicts 2
  assert.deepEqual(
    kms.issued.map((s) => s.destroyed),
    [false, true, false],
  );
  await cache.forDecryption("k", "w", {}, copy);
  cache.clear();
  assert.ok(kms.issued.every((s) => s.destroyed));
});

test("concurrent requests share one KMS call, and share its failure", async () => {
  const kms = issuingKms();
  const cache = new CachedKeys(kms, DEFAULT_CACHE_LIMITS);
  const keys = await Promise.all(Array.from({ length: 50 }, () => cache.forEncryption("k", { a: "b" }, copy)));
  assert.equal(cache.kmsCalls, 1);
  assert.ok(keys.every((k) => k.value.equals(keys[0]?.value as Buffer)));
  kms.fail = true;
  const failing = Array.from({ length: 5 }, () => cache.forEncryption("k", { a: "other" }, copy));
  for (const f of failing) await assert.rejects(f, { code: "hsm_unavailable" });
  assert.equal(cache.kmsCalls, 2);
});

test("cached keys never show in inspect or JSON", async () => {
  const kms = issuingKms();
  const cache = new CachedKeys(kms, DEFAULT_CACHE_LIMITS);
  const { value } = await cache.forEncryption("k", {}, copy);
  // The ways a buffer's bytes appear in text: hex, inspect's spaced hex, JSON's decimal list.
  const head = value.subarray(0, 8);
  const forms = [
    value.toString("hex"),
    [...head].map((b) => b.toString(16).padStart(2, "0")).join(" "),
    [...head].join(","),
  ];
  assert.ok(
    forms.slice(1).every((f, i) => [inspect(value), JSON.stringify(value)][i]?.includes(f)),
    "the forms are right",
  );
  for (const shown of [
    inspect(cache, { depth: 10, showHidden: true }),
    JSON.stringify(cache),
    inspect(kms.issued),
    JSON.stringify(kms.issued),
  ]) {
    for (const form of forms) assert.ok(!shown.includes(form), shown);
  }
});
