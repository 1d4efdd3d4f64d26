import assert from "node:assert/strict";
import { createCipheriv, createDecipheriv, randomBytes, randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import { canonicalContext, validateContext } from "../../src/context/index.js";
import { isCustosError } from "../../src/errors/index.js";
import {
  ALG_AES_256_GCM,
  additionalData,
  bytesToUuid,
  CIPHERTEXT_PREFIX,
  encodeCiphertext,
  HEADER_BYTES,
  parseCiphertext,
  uuidToBytes,
} from "../../src/kms/format.js";

const isDecryptionFailed = (e: unknown) => isCustosError(e, "decryption_failed") && e.message === "decryption failed";
const isInvalid = (e: unknown) => isCustosError(e, "invalid_request");

/** Seals with node:crypto exactly as the HSM would, so the format is checked against an independent AES-GCM. */
function nodeSeal(key: Buffer, header: { keyId: string; keyVersion: number; algorithm: number }, pt: Buffer, ctx = {}) {
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", key, iv);
  c.setAAD(additionalData(header, ctx));
  const sealed = Buffer.concat([c.update(pt), c.final(), c.getAuthTag()]);
  return encodeCiphertext(header, iv, sealed);
}

function nodeOpen(key: Buffer, text: string, ctx = {}): Buffer {
  const p = parseCiphertext(text);
  const d = createDecipheriv("aes-256-gcm", key, p.iv);
  d.setAAD(p.aad(ctx));
  d.setAuthTag(p.sealed.subarray(p.sealed.length - 16));
  return Buffer.concat([d.update(p.sealed.subarray(0, p.sealed.length - 16)), d.final()]);
}

describe("ciphertext format", () => {
  const header = { keyId: randomUUID(), keyVersion: 7, algorithm: ALG_AES_256_GCM };

  test("encode then parse gives back every header field", () => {
    const iv = randomBytes(12);
    const sealed = randomBytes(40);
    const text = encodeCiphertext(header, iv, sealed);
    assert.ok(text.startsWith(CIPHERTEXT_PREFIX));
    const p = parseCiphertext(text);
    assert.equal(p.keyId, header.keyId);
    assert.equal(p.keyVersion, 7);
    assert.equal(p.algorithm, ALG_AES_256_GCM);
    assert.deepEqual(p.iv, iv);
    assert.deepEqual(p.sealed, sealed);
    assert.deepEqual(p.aad({ a: "b" }), additionalData(header, { a: "b" }));
  });

  test("the blob layout is fmt|keyId|version|alg|iv|sealed", () => {
    const iv = Buffer.alloc(12, 0xaa);
    const sealed = Buffer.alloc(17, 0xbb);
    const blob = Buffer.from(encodeCiphertext(header, iv, sealed).slice(CIPHERTEXT_PREFIX.length), "base64");
    assert.equal(blob[0], 1);
    assert.deepEqual(blob.subarray(1, 17), uuidToBytes(header.keyId));
    assert.equal(blob.readUInt32BE(17), 7);
    assert.equal(blob[21], 1);
    assert.deepEqual(blob.subarray(22, 34), iv);
    assert.deepEqual(blob.subarray(HEADER_BYTES), sealed);
  });

  test("uuid bytes round trip", () => {
    const id = randomUUID();
    assert.equal(bytesToUuid(uuidToBytes(id)), id);
    assert.throws(() => uuidToBytes("not-a-uuid"));
  });

  test("node:crypto AES-GCM interoperates through the format and AAD", () => {
    const key = randomBytes(32);
    const pt = Buffer.from("attack at dawn");
    const text = nodeSeal(key, header, pt, { tenant: "a", app: "b" });
    assert.deepEqual(nodeOpen(key, text, { app: "b", tenant: "a" }), pt);
    assert.throws(() => nodeOpen(key, text, { tenant: "a", app: "c" }));
    assert.throws(() => nodeOpen(key, text, {}));
  });

  test("changing any header byte changes the AAD (node:crypto refuses it)", () => {
    const key = randomBytes(32);
    const text = nodeSeal(key, header, Buffer.from("x"));
    const blob = Buffer.from(text.slice(CIPHERTEXT_PREFIX.length), "base64");
    for (const i of [1, 16, 20]) {
      const bad = Buffer.from(blob);
      bad[i] = (bad[i] ?? 0) ^ 1;
      const badText = CIPHERTEXT_PREFIX + bad.toString("base64");
      assert.throws(() => nodeOpen(key, badText));
    }
  });

  test("malformed ciphertexts are all the one decryption_failed", () => {
    const good = encodeCiphertext(header, randomBytes(12), randomBytes(20));
    const blob = Buffer.from(good.slice(CIPHERTEXT_PREFIX.length), "base64");
    const withByte = (i: number, v: number) => {
      const b = Buffer.from(blob);
      b[i] = v;
      return CIPHERTEXT_PREFIX + b.toString("base64");
    };
    const cases: unknown[] = [
      "",
      `custos:v2:${good.slice(CIPHERTEXT_PREFIX.length)}`,
      "vault:v1:abcd",
      `${good}=`,
      `${good.slice(0, -4)}`.slice(0, CIPHERTEXT_PREFIX.length + 20),
      good.replace(/.$/, "*"),
      CIPHERTEXT_PREFIX + blob.subarray(0, HEADER_BYTES + 16).toString("base64"),
      withByte(0, 2),
      withByte(21, 9),
      CIPHERTEXT_PREFIX + Buffer.concat([blob.subarray(0, 17), Buffer.alloc(4), blob.subarray(21)]).toString("base64"),
      CIPHERTEXT_PREFIX + "A".repeat(100_000),
      42,
      null,
    ];
    for (const c of cases) assert.throws(() => parseCiphertext(c), isDecryptionFailed, String(c).slice(0, 40));
  });

  test("non-canonical base64 (padding bits set) is refused", () => {
    // A 52-byte blob (52 mod 3 = 1) ends in "==": its last character carries 4 unused bits.
    const text = encodeCiphertext(header, randomBytes(12), randomBytes(18));
    assert.ok(text.endsWith("=="));
    const last = text.at(-3) ?? "A";
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const tweaked = `${text.slice(0, -3)}${alphabet[alphabet.indexOf(last) ^ 1]}==`;
    assert.deepEqual(Buffer.from(tweaked.slice(10), "base64"), Buffer.from(text.slice(10), "base64"));
    assert.throws(() => parseCiphertext(tweaked), isDecryptionFailed);
    assert.doesNotThrow(() => parseCiphertext(text));
  });
});

describe("encryption context", () => {
  test("canonical bytes ignore insertion order", () => {
    assert.deepEqual(canonicalContext({ a: "1", b: "2" }), canonicalContext({ b: "2", a: "1" }));
  });

  test("the encoding is length-prefixed, so look-alike contexts differ", () => {
    const pairs: [Record<string, string>, Record<string, string>][] = [
      [{ ab: "c" }, { a: "bc" }],
      [{ "a=b": "c" }, { a: "b=c" }],
      [{ a: "b", c: "d" }, { a: "b\u0000c\u0000d" }],
      [{ '{"a":"b"}': "x" }, { a: '"b"}x' }],
      [{}, { a: "b" }],
    ];
    for (const [x, y] of pairs) assert.notDeepEqual(canonicalContext(x), canonicalContext(y));
  });

  test("the exact bytes: count, then sorted length-prefixed pairs", () => {
    const bytes = canonicalContext({ b: "xy", a: "z" });
    assert.equal(
      bytes.toString("hex"),
      "00000002" + "00000001" + "61" + "00000001" + "7a" + "00000001" + "62" + "00000002" + "7879",
    );
  });

  test("limits and types are enforced with invalid_request", () => {
    const many = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, "v"]));
    const ok64 = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${i}`, "v"]));
    assert.equal(Object.keys(validateContext(ok64)).length, 64);
    assert.throws(() => validateContext(many), isInvalid);
    assert.throws(() => validateContext({ "": "v" }), isInvalid);
    assert.throws(() => validateContext({ k: "" }), isInvalid);
    assert.throws(() => validateContext({ k: "v".repeat(257) }), isInvalid);
    assert.throws(() => validateContext({ ["k".repeat(257)]: "v" }), isInvalid);
    assert.throws(() => validateContext({ k: 1 }), isInvalid);
    assert.throws(() => validateContext(["a"]), isInvalid);
    assert.throws(() => validateContext("a=b"), isInvalid);
    assert.throws(() => validateContext({ k: "\uD800" }), isInvalid);
    assert.deepEqual(validateContext({ k: "v".repeat(256), "😀": "ok" }), { k: "v".repeat(256), "😀": "ok" });
    assert.deepEqual(validateContext(undefined), {});
  });
});
