/**
 * A second conformance review of the envelope library and `custos file`, against docs/envelope-format.md, the README
 * and the semantics of the streaming peers (AWS Encryption SDK framed messages, the STREAM construction of age and
 * Tink): a message cut anywhere, or spliced from two messages under one data key, must fail; a whole-message
 * decryption must verify every tag it stands behind. Oracles: node:crypto following the document, the KMS's own
 * answers, the file system and the CLI's exit codes. Covers what the first review's files leave out.
 */
import assert from "node:assert/strict";
import { createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from "node:crypto";
import { chownSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, test } from "node:test";
import { CustosClient } from "../../src/client/index.js";
import { CachedKeys, DEFAULT_CACHE_LIMITS } from "../../src/envelope/cache.js";
import { bufferSource, Envelope, httpKms, MAX_CHUNK_SIZE, rewrapFiles } from "../../src/envelope/index.js";
import { Secret } from "../../src/secret/index.js";
import { type CustosInstance, startCustos } from "../helpers/custos.js";
import { alice, type KmsFixture, openFixture } from "../kms/setup.js";
import { collect } from "./collect.js";
import { type CountingKms, serviceKms } from "./service-kms.js";

const TAG = 16;
const PREAMBLE = Buffer.from("CUSTENV\x01\x01", "latin1");
const codeOf = (e: unknown) => (e as { code?: string } | undefined)?.code;
const isDecryptionFailed = (e: unknown) => codeOf(e) === "decryption_failed";

/** The header as docs/envelope-format.md lays it out, read with nothing from src/. */
function docHeader(message: Buffer) {
  let at = 0;
  const take = (n: number) => {
    assert.ok(at + n <= message.length, "header runs past the message");
    at += n;
    return message.subarray(at - n, at);
  };
  assert.deepEqual(take(9), PREAMBLE);
  const keyName = take(take(2).readUInt16BE(0)).toString("latin1");
  const count = take(4).readUInt32BE(0);
  for (let i = 0; i < 2 * count; i++) take(take(4).readUInt32BE(0));
  const chunkSize = take(4).readUInt32BE(0);
  const noncePrefix = take(7);
  const messageId = take(32);
  const commitment = take(32);
  const bound = message.subarray(0, at);
  const mac = take(32);
  const keyVersion = take(4).readUInt32BE(0);
  const wrappedLength = take(2).readUInt16BE(0);
  const wrapped = take(wrappedLength).toString("latin1");
  return { keyName, chunkSize, noncePrefix, messageId, commitment, bound, mac, keyVersion, wrapped, length: at };
}

/** Steps 3–4 of "Decrypting" with node:crypto: the plaintext and each chunk's plaintext length. */
function docOpen(message: Buffer, dataKey: Buffer): { plaintext: Buffer; chunkLengths: number[] } {
  const h = docHeader(message);
  const okm = Buffer.from(hkdfSync("sha256", dataKey, h.messageId, PREAMBLE, 96));
  assert.ok(timingSafeEqual(okm.subarray(64, 96), h.commitment), "commitment");
  assert.ok(timingSafeEqual(createHmac("sha256", okm.subarray(32, 64)).update(h.bound).digest(), h.mac), "MAC");
  const stride = h.chunkSize + TAG;
  const body = message.subarray(h.length);
  const n = Math.max(1, Math.ceil(body.length / stride));
  const out: Buffer[] = [];
  const chunkLengths: number[] = [];
  for (let i = 0; i < n; i++) {
    const sealed = body.subarray(i * stride, (i + 1) * stride);
    const nonce = Buffer.alloc(12);
    h.noncePrefix.copy(nonce);
    nonce.writeUInt32BE(i, 7);
    nonce[11] = i === n - 1 ? 1 : 0;
    const d = createDecipheriv("aes-256-gcm", okm.subarray(0, 32), nonce).setAuthTag(sealed.subarray(-TAG));
    out.push(d.update(sealed.subarray(0, -TAG)), d.final());
    chunkLengths.push(sealed.length - TAG);
  }
  return { plaintext: Buffer.concat(out), chunkLengths };
}

/** Splits a message into its header and its chunks (each ciphertext ‖ tag). */
function split(message: Buffer): { header: Buffer; chunks: Buffer[] } {
  const h = docHeader(message);
  const stride = h.chunkSize + TAG;
  const chunks: Buffer[] = [];
  for (let at = h.length; at < message.length; at += stride) chunks.push(message.subarray(at, at + stride));
  return { header: message.subarray(0, h.length), chunks };
}

describe("envelope library, second review", () => {
  let f: KmsFixture;
  let kms: CountingKms;
  const context = { bucket: "b", object: "o" };

  before(async () => {
    f = await openFixture("custos-env-review2");
    await f.kms.createKey(alice, { name: "storage", purpose: "encrypt" });
    kms = serviceKms(f.kms, alice);
  });
  after(async () => {
    await f?.close();
  });

  const dataKeyOf = async (message: Buffer, ctx: Record<string, string>) => {
    const h = docHeader(message);
    return Buffer.from((await kms.decryptDataKey(h.keyName, h.wrapped, ctx)).plaintext.expose());
  };

  test("decrypt() refuses a message whose body was cut or replaced to 16 bytes, as the stream does", async () => {
    const e = new Envelope({ kms, chunkSize: 16 });
    const accepted: string[] = [];
    for (const length of [0, 40]) {
      const plaintext = randomBytes(length);
      const message = await e.encrypt(plaintext, { key: "storage", context });
      assert.deepEqual(await e.decrypt(message, { context }), plaintext, `L=${length} intact`);
      const h = docHeader(message).length;
      const cutOrFlipped = Buffer.from(message.subarray(0, h + TAG)); // 3 chunks cut after 16 body bytes
      if (length === 0) cutOrFlipped[h] = (cutOrFlipped[h] as number) ^ 1; // the empty chunk's tag, one bit off
      const forged = {
        [`L=${length}, body replaced by 16 random bytes`]: Buffer.concat([message.subarray(0, h), randomBytes(TAG)]),
        [length === 0 ? "L=0, a bit of the tag flipped" : `L=${length}, cut after 16 body bytes`]: cutOrFlipped,
      };
      for (const [what, damaged] of Object.entries(forged)) {
        const streamed = await collect(Readable.from([damaged]), e.decryptStream({ context }));
        assert.ok(isDecryptionFailed(streamed.error), `${what}: the stream checks the only chunk's tag`);
        try {
          const got = await e.decrypt(damaged, { context });
          accepted.push(`${what}: decrypt() gave ${got.length} bytes`);
        } catch (err) {
          assert.ok(isDecryptionFailed(err), String(err));
        }
      }
    }
    assert.deepEqual(accepted, []);
    e.close();
  });

  test("a message cut at any byte fails (buffer and stream), and the stream releases only genuine whole chunks", async () => {
    const size = 8;
    const e = new Envelope({ kms, chunkSize: size });
    const plaintext = randomBytes(3 * size + 3);
    const message = await e.encrypt(plaintext, { key: "storage", context });
    for (let cut = 0; cut < message.length; cut++) {
      const short = message.subarray(0, cut);
      const streamed = await collect(Readable.from([short]), e.decryptStream({ context }));
      assert.ok(isDecryptionFailed(streamed.error), `stream, cut at ${cut}: ${String(streamed.error)}`);
      assert.equal(streamed.out.length % size, 0, `cut at ${cut}: only whole chunks released`);
      assert.deepEqual(streamed.out, plaintext.subarray(0, streamed.out.length));
      await assert.rejects(e.decrypt(short, { context }), isDecryptionFailed, `cut at ${cut}`);
    }
  });

  test("two messages sharing a cached data key have their own ids and keys: chunks and headers do not splice", async () => {
    const size = 16;
    const e = new Envelope({ kms, chunkSize: size });
    const pa = randomBytes(3 * size + 5);
    const pb = randomBytes(3 * size + 5);
    const a = await e.encrypt(pa, { key: "storage", context });
    const b = await e.encrypt(pb, { key: "storage", context });
    assert.equal(e.kmsCalls, 1, "one data key for both");
    const ha = docHeader(a);
    const hb = docHeader(b);
    assert.equal(ha.wrapped, hb.wrapped);
    assert.notDeepEqual(ha.messageId, hb.messageId, "a message id per message");
    assert.notDeepEqual(ha.noncePrefix, hb.noncePrefix, "a nonce prefix per message");
    const dataKey = await dataKeyOf(a, context);
    assert.deepEqual(docOpen(a, dataKey).plaintext, pa);
    assert.deepEqual(docOpen(b, dataKey).plaintext, pb);

    const sa = split(a);
    const sb = split(b);
    for (let i = 0; i < sa.chunks.length; i++) {
      const spliced = Buffer.concat([sa.header, ...sa.chunks.map((c, j) => (j === i ? (sb.chunks[j] as Buffer) : c))]);
      await assert.rejects(e.decrypt(spliced, { context }), isDecryptionFailed, `chunk ${i} of b in a`);
      await assert.rejects(e.readRange(bufferSource(spliced), i * size, i * size + 1, { context }), isDecryptionFailed);
      const streamed = await collect(Readable.from([spliced]), e.decryptStream({ context }));
      assert.ok(isDecryptionFailed(streamed.error));
      assert.deepEqual(streamed.out, pa.subarray(0, i * size), "only a's chunks before the splice came out");
    }
    await assert.rejects(e.decrypt(Buffer.concat([sa.header, ...sb.chunks]), { context }), isDecryptionFailed);
    e.close();
  });

  test("random byte ranges equal slices of the whole plaintext, across reads of more than 64 chunks", async () => {
    for (const size of [1, 3, 64]) {
      const e = new Envelope({ kms, chunkSize: size });
      const plaintext = randomBytes(size * 150 + (size > 1 ? 1 : 0));
      const message = await e.encrypt(plaintext, { key: "storage", context });
      assert.deepEqual(await e.decrypt(message, { context }), plaintext);
      const len = plaintext.length;
      const edges = [0, 1, size - 1, size, size + 1, len - size, len - 1, len].filter((x) => x >= 0 && x <= len);
      const pairs: Array<[number, number]> = [];
      for (const a of edges) for (const b of edges) if (b >= a) pairs.push([a, b]);
      for (let i = 0; i < 60; i++) {
        const a = Math.floor(Math.random() * (len + 1));
        pairs.push([a, a + Math.floor(Math.random() * (len + 10 - a))]);
      }
      for (const [a, b] of pairs) {
        const got = await e.readRange(bufferSource(message), a, b, { context });
        assert.deepEqual(got, plaintext.subarray(a, b), `S=${size} [${a}, ${b})`);
      }
      for (const [a, b] of [
        [len + 1, len + 2],
        [-1, 2],
        [3, 2],
        [0.5, 2],
      ] as const) {
        await assert.rejects(e.readRange(bufferSource(message), a, b, { context }), { code: "invalid_request" });
      }
      e.close();
    }
  });

  test("the largest chunk size, 16 MiB: S and S + 1 bytes stream into one and two chunks as the document lays out", async () => {
    assert.equal(MAX_CHUNK_SIZE, 16 * 1024 * 1024);
    const e = new Envelope({ kms, chunkSize: MAX_CHUNK_SIZE });
    for (const [length, chunks] of [
      [MAX_CHUNK_SIZE, [MAX_CHUNK_SIZE]],
      [MAX_CHUNK_SIZE + 1, [MAX_CHUNK_SIZE, 1]],
    ] as const) {
      const plaintext = randomBytes(length);
      const half = Math.floor(length / 2);
      const encrypted = await collect(
        Readable.from([plaintext.subarray(0, half), plaintext.subarray(half)]),
        e.encryptStream({ key: "storage", context }),
      );
      assert.equal(encrypted.error, undefined);
      const h = docHeader(encrypted.out);
      assert.equal(h.chunkSize, MAX_CHUNK_SIZE);
      const opened = docOpen(encrypted.out, await dataKeyOf(encrypted.out, context));
      assert.deepEqual(opened.chunkLengths, chunks);
      assert.ok(opened.plaintext.equals(plaintext));
      const back = await collect(Readable.from([encrypted.out]), e.decryptStream({ context }));
      assert.ok(back.out.equals(plaintext));
    }
    for (const chunkSize of [MAX_CHUNK_SIZE + 1, 1.5, Number.NaN]) {
      assert.throws(() => new Envelope({ kms, chunkSize }), { code: "invalid_request" }, String(chunkSize));
    }
    e.close();
  });

  test("header fields of real output keep the document's ranges; the wrapped key is printable ASCII", async () => {
    const e = new Envelope({ kms, cache: false });
    const message = await e.encrypt(Buffer.from("x"), { key: "storage", context });
    const h = docHeader(message);
    assert.equal(h.keyName, "storage");
    assert.equal(h.chunkSize, 262_144, "the encoder's default");
    assert.ok(h.keyVersion >= 1);
    assert.ok(h.wrapped.length >= 1 && h.wrapped.length <= 1024);
    assert.match(h.wrapped, /^custos:v1:[\x21-\x7e]+$/);
    assert.equal(message.length, h.length + 1 + TAG, "one chunk of 1 byte and its tag");
  });

  test("a message under a key pending destruction says key_disabled, like a disabled key", async () => {
    await f.kms.createKey(alice, { name: "doomed", purpose: "encrypt" });
    const e = new Envelope({ kms, cache: false });
    const message = await e.encrypt(Buffer.from("hello"), { key: "doomed", context });
    await f.kms.scheduleDestruction(alice, "doomed", { waitingSeconds: 30 * 86_400 });
    await assert.rejects(e.decrypt(message, { context }), { code: "key_disabled" });
    await assert.rejects(e.readRange(bufferSource(message), 0, 1, { context }), { code: "key_disabled" });
    const streamed = await collect(Readable.from([message]), e.decryptStream({ context }));
    assert.equal(codeOf(streamed.error), "key_disabled");
    await f.kms.cancelDestruction(alice, "doomed");
  });

  test("a message whose key version was retired by minDecryptionVersion says version_too_old, like the KMS", async () => {
    await f.kms.createKey(alice, { name: "retiring", purpose: "encrypt" });
    const e = new Envelope({ kms, cache: false });
    const message = await e.encrypt(Buffer.from("hello"), { key: "retiring", context });
    await f.kms.rotateKey(alice, "retiring");
    await f.kms.updateKey(alice, "retiring", { minDecryptionVersion: 2 });
    const isTooOld = (e: unknown) => codeOf(e) === "version_too_old";
    const streamed = await collect(Readable.from([message]), e.decryptStream({ context }));
    assert.ok(isTooOld(streamed.error), String(streamed.error));
    assert.equal(streamed.out.length, 0);
    await assert.rejects(e.decrypt(message, { context }), isTooOld);
    await assert.rejects(e.readRange(bufferSource(message), 0, 0, { context }), isTooOld);
    await assert.rejects(e.readRange(bufferSource(message), 0, 5, { context }), isTooOld);
    // Damage still outranks the key's state: a header claiming another context is decryption_failed.
    await assert.rejects(e.decrypt(message, { context: { bucket: "b" } }), isDecryptionFailed);
  });

  test("a context beyond the document's limits is refused before any KMS call", async () => {
    const e = new Envelope({ kms, cache: false });
    const calls = e.kmsCalls;
    const many: Record<string, string> = {};
    for (let i = 0; i < 65; i++) many[`k${i}`] = "v";
    for (const bad of [many, { k: "\uD800" }, { "\uDC00": "v" }, { ["x".repeat(257)]: "v" }]) {
      await assert.rejects(e.encrypt(Buffer.from("x"), { key: "storage", context: bad }), { code: "invalid_request" });
    }
    assert.equal(e.kmsCalls, calls);
    const max: Record<string, string> = {};
    for (let i = 0; i < 64; i++) max[`k${String(i).padStart(2, "0")}`] = "v";
    const message = await e.encrypt(Buffer.from("x"), { key: "storage", context: max });
    assert.deepEqual(await e.decrypt(message, { context: max }), Buffer.from("x"));
    const { k63: _dropped, ...fewer } = max;
    await assert.rejects(e.decrypt(message, { context: fewer }), isDecryptionFailed);
  });

  test("maxMessages holds under concurrency: no data key serves more messages than the limit", async () => {
    const e = new Envelope({ kms, cache: { maxMessages: 4 } });
    const messages = await Promise.all(
      Array.from({ length: 25 }, (_, i) => e.encrypt(Buffer.from(`m${i}`), { key: "storage", context })),
    );
    const uses = new Map<string, number>();
    for (const m of messages) {
      const w = docHeader(m).wrapped;
      uses.set(w, (uses.get(w) ?? 0) + 1);
    }
    assert.ok(
      [...uses.values()].every((n) => n <= 4),
      JSON.stringify([...uses.values()]),
    );
    assert.equal(uses.size, Math.ceil(25 / 4));
    assert.equal(e.kmsCalls, uses.size);
    e.close();
  });

  test("a header whose commitment alone is wrong, under a valid MAC, is refused (step 3 compares both)", async () => {
    const e = new Envelope({ kms, cache: false });
    const plaintext = randomBytes(20);
    const message = await e.encrypt(plaintext, { key: "storage", context });
    const h = docHeader(message);
    const okm = Buffer.from(hkdfSync("sha256", await dataKeyOf(message, context), h.messageId, PREAMBLE, 96));
    const forged = Buffer.from(message);
    const commitmentAt = h.bound.length - 32;
    forged[commitmentAt] = (forged[commitmentAt] as number) ^ 1;
    createHmac("sha256", okm.subarray(32, 64))
      .update(forged.subarray(0, h.bound.length))
      .digest()
      .copy(forged, h.bound.length);
    await assert.rejects(e.decrypt(forged, { context }), isDecryptionFailed);
    await assert.rejects(e.readRange(bufferSource(forged), 0, 0, { context }), isDecryptionFailed);
    const streamed = await collect(Readable.from([forged]), e.decryptStream({ context }));
    assert.ok(isDecryptionFailed(streamed.error));
    assert.equal(streamed.out.length, 0);
  });

  test("a cache limit below one entry is refused, or still encrypts with one KMS call", async () => {
    let calls = 0;
    const guarded: CountingKms = {
      ...kms,
      generateDataKey: async (name, ctx) => {
        if (++calls > 5) throw Object.assign(new Error("runaway KMS calls"), { code: "runaway" });
        return kms.generateDataKey(name, ctx);
      },
    };
    let e: Envelope;
    try {
      e = new Envelope({ kms: guarded, cache: { maxEntries: 0.5 } });
    } catch (err) {
      assert.equal(codeOf(err), "invalid_request");
      return;
    }
    const message = await e.encrypt(Buffer.from("x"), { key: "storage", context });
    assert.equal(calls, 1);
    assert.deepEqual(await new Envelope({ kms, cache: false }).decrypt(message, { context }), Buffer.from("x"));
  });

  test("cache limits: counts are integers from 1, bytes and age positive and bounded; anything else names the option", () => {
    const bad = (name: string, values: unknown[]) => values.map((value) => [name, value] as const);
    const notCounts = [0.5, 0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53, "10"];
    const refused = [
      ...bad("maxEntries", notCounts),
      ...bad("maxMessages", notCounts),
      ...bad("maxBytes", [0, -1, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53, "10"]),
      ...bad("maxAgeMs", [0, -1, Number.NaN, Number.POSITIVE_INFINITY, 86_400_001]),
      ...bad("maxEntry", [10]),
    ];
    for (const [name, value] of refused) {
      assert.throws(
        () => new Envelope({ kms, cache: { [name]: value } }),
        (e: unknown) => codeOf(e) === "invalid_request" && String((e as Error).message).includes(name),
        `${name}: ${String(value)}`,
      );
    }
    for (const cache of [
      { maxEntries: 1, maxMessages: 1, maxBytes: 1, maxAgeMs: 1 },
      { maxEntries: 2 ** 53 - 1, maxMessages: 2 ** 53 - 1, maxBytes: 2 ** 53 - 1, maxAgeMs: 86_400_000 },
      { maxBytes: 0.5, maxAgeMs: 0.5 },
    ]) {
      assert.doesNotThrow(() => new Envelope({ kms, cache }).close(), JSON.stringify(cache));
    }
  });

  test("the cache ends with one KMS call per caller at worst, even under limits checkLimits would refuse", async () => {
    // Every limit degenerate at once: nothing could be lent from the cache, and each new key would evict itself.
    const degenerate = { maxEntries: 0.5, maxMessages: 0, maxBytes: 0, maxAgeMs: 0 };
    let calls = 0;
    const guarded: CountingKms = {
      ...kms,
      generateDataKey: async (name, ctx) => {
        if (++calls > 20) throw Object.assign(new Error("runaway KMS calls"), { code: "runaway" });
        return kms.generateDataKey(name, ctx);
      },
      decryptDataKey: async (name, wrapped, ctx) => {
        if (++calls > 20) throw Object.assign(new Error("runaway KMS calls"), { code: "runaway" });
        return kms.decryptDataKey(name, wrapped, ctx);
      },
    };
    const cache = new CachedKeys(guarded, degenerate);
    const copy = (k: Buffer) => Buffer.from(k);
    const keys = await Promise.all(Array.from({ length: 5 }, () => cache.forEncryption("storage", context, copy)));
    assert.equal(calls, 5);
    assert.equal(cache.kmsCalls, 5);
    const wrapped = keys[0]?.wrapped as string;
    const opened = await Promise.all(
      Array.from({ length: 5 }, () => cache.forDecryption("storage", wrapped, context, copy)),
    );
    assert.ok(opened.every((o) => o.value.equals(keys[0]?.value as Buffer)));
    assert.equal(calls, 10, "one decryption per caller: with maxAgeMs 0 no key is reused");
    cache.clear();
  });

  test("the decryption cache serves a data key for exactly maxAgeMs, then asks the KMS again", async () => {
    const key = await kms.generateDataKey("storage", context);
    const expected = Buffer.from(key.plaintext.expose());
    key.plaintext.destroy();
    let now = 0;
    const cache = new CachedKeys(kms, { ...DEFAULT_CACHE_LIMITS, maxAgeMs: 1000 }, () => now);
    const open = () => cache.forDecryption("storage", key.wrapped, context, (k) => Buffer.from(k));
    const before = kms.calls.decrypt;
    for (const t of [0, 500, 999]) {
      now = t;
      assert.deepEqual((await open()).value, expected);
    }
    assert.equal(kms.calls.decrypt - before, 1, "one KMS call until the age limit");
    now = 1000;
    assert.deepEqual((await open()).value, expected);
    assert.equal(kms.calls.decrypt - before, 2, "at maxAgeMs the key is fetched again");
    cache.clear();
  });

  test("rewrapFiles as root keeps another user's file: owner, group, mode, bound header, MAC and chunks", async (t) => {
    if (process.getuid?.() !== 0) {
      t.skip("needs root to give the file to another user");
      return;
    }
    const dir = mkdtempSync(join(tmpdir(), "custos-env-review2-"));
    try {
      const e = new Envelope({ kms, chunkSize: 32, cache: false });
      const plaintext = randomBytes(100);
      const path = join(dir, "object");
      writeFileSync(path, await e.encrypt(plaintext, { key: "storage", context }), { mode: 0o640 });
      chownSync(path, 65534, 65533);
      const before = readFileSync(path);
      await f.kms.rotateKey(alice, "storage");
      const [outcome] = await rewrapFiles(kms, [path]);
      assert.equal(outcome?.status, "rewrapped", JSON.stringify(outcome));
      const after = readFileSync(path);
      const st = statSync(path);
      assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [65534, 65533, 0o640]);
      const [hb, ha] = [docHeader(before), docHeader(after)];
      assert.equal(ha.keyVersion, hb.keyVersion + 1);
      assert.deepEqual(
        after.subarray(0, ha.length - ha.wrapped.length - 6),
        before.subarray(0, hb.length - hb.wrapped.length - 6),
      );
      assert.deepEqual(after.subarray(ha.length), before.subarray(hb.length), "chunks byte for byte");
      assert.deepEqual(await e.decrypt(after, { context }), plaintext);
      assert.deepEqual(readdirSync(dir), ["object"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a rewrap the KMS refuses (key disabled) leaves the file byte for byte and nothing beside it", async () => {
    const dir = mkdtempSync(join(tmpdir(), "custos-env-review2-"));
    try {
      await f.kms.createKey(alice, { name: "frozen", purpose: "encrypt" });
      const e = new Envelope({ kms, cache: false });
      const path = join(dir, "object");
      writeFileSync(path, await e.encrypt(randomBytes(50), { key: "frozen", context }));
      const before = readFileSync(path);
      const mtime = statSync(path).mtimeMs;
      await f.kms.rotateKey(alice, "frozen");
      await f.kms.disableKey(alice, "frozen");
      const [outcome] = await rewrapFiles(kms, [path]);
      assert.equal(outcome?.status, "failed");
      assert.equal(outcome?.status === "failed" ? outcome.error.code : undefined, "key_disabled");
      assert.deepEqual(readFileSync(path), before);
      assert.equal(statSync(path).mtimeMs, mtime);
      assert.deepEqual(readdirSync(dir), ["object"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("custos file, second review", () => {
  let custos: CustosInstance;
  let work: string;
  const ctx = ["--context", "app=photos"];

  before(async () => {
    custos = await startCustos();
    work = mkdtempSync(join(tmpdir(), "custos-env-review2-cli-"));
    const created = custos.cli(["key", "create", "storage"]);
    assert.equal(created.status, 0, created.stderr);
  });
  after(async () => {
    await custos?.dispose();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  function ok(args: string[], input?: Buffer) {
    const r = custos.cli(args, input === undefined ? {} : { input });
    assert.equal(r.status, 0, `custos ${args.join(" ")}: ${r.stderr}`);
    return r;
  }

  test("concurrent decryptions over HTTP, which the client batches: a forged one fails alone, as decryption_failed", async () => {
    const client = new CustosClient({
      address: custos.url,
      token: Secret.fromString(custos.adminToken),
      ca: Buffer.from(custos.ca),
    });
    try {
      const e = new Envelope({ kms: httpKms(client), cache: false });
      const plaintexts = Array.from({ length: 12 }, () => randomBytes(30));
      const messages = await Promise.all(plaintexts.map((p) => e.encrypt(p, { key: "storage", context: { n: "1" } })));
      // Message 5's header claims another context (its data key was wrapped under {n: "1"}); message 7's wrapped key
      // is another message's, which the KMS unwraps, so only the commitment can tell.
      const forgedContext = Buffer.from(messages[5] as Buffer);
      forgedContext[forgedContext.indexOf(Buffer.from("\x00\x00\x00\x011", "latin1")) + 4] = "2".charCodeAt(0);
      const other = docHeader(messages[8] as Buffer);
      const seven = messages[7] as Buffer;
      const h7 = docHeader(seven);
      const swappedKey = Buffer.concat([
        seven.subarray(0, h7.length - h7.wrapped.length),
        Buffer.from(other.wrapped, "latin1"),
        seven.subarray(h7.length),
      ]);
      const inputs = messages.map((m, i) => (i === 5 ? forgedContext : i === 7 ? swappedKey : m));
      const results = await Promise.allSettled(
        inputs.map((m, i) => e.decrypt(m, { context: { n: i === 5 ? "2" : "1" } })),
      );
      results.forEach((r, i) => {
        if (i === 5 || i === 7) {
          assert.equal(r.status, "rejected", `message ${i}`);
          assert.equal(codeOf(r.status === "rejected" ? r.reason : undefined), "decryption_failed", `message ${i}`);
        } else {
          assert.equal(r.status, "fulfilled", `message ${i}: ${r.status === "rejected" ? String(r.reason) : ""}`);
          assert.deepEqual(r.status === "fulfilled" ? r.value : undefined, plaintexts[i]);
        }
      });
    } finally {
      client.close();
    }
  });

  test("an empty stdin encrypts to one chunk of 0 bytes, and decrypts to nothing", () => {
    const message = ok(["file", "encrypt", "--key", "storage", ...ctx], Buffer.alloc(0)).stdoutBytes;
    assert.equal(message.length, docHeader(message).length + TAG);
    const r = ok(["file", "decrypt", ...ctx], message);
    assert.equal(r.stdoutBytes.length, 0);
  });

  test("file decrypt refuses a body of 16 bytes that is not the message's last chunk, from stdin and from --in", () => {
    const empty = ok(["file", "encrypt", "--key", "storage", ...ctx], Buffer.alloc(0)).stdoutBytes;
    const long = ok(["file", "encrypt", "--key", "storage", ...ctx, "--chunk-size", "16"], randomBytes(40)).stdoutBytes;
    const flipped = Buffer.from(empty);
    flipped[flipped.length - 1] = (flipped[flipped.length - 1] as number) ^ 1;
    const headerOfLong = long.subarray(0, docHeader(long).length);
    const replaced = join(work, "sixteen-random");
    writeFileSync(replaced, Buffer.concat([headerOfLong, randomBytes(TAG)]));
    for (const [what, r] of [
      ["the empty chunk's tag flipped", custos.cli(["file", "decrypt", ...ctx], { input: flipped })],
      [
        "cut after 16 body bytes",
        custos.cli(["file", "decrypt", ...ctx], { input: long.subarray(0, headerOfLong.length + TAG) }),
      ],
      ["body replaced by 16 random bytes", custos.cli(["file", "decrypt", ...ctx, "--in", replaced])],
    ] as const) {
      assert.equal(r.status, 1, `${what}: ${r.stderr}`);
      assert.match(r.stderr, /decryption_failed/, what);
      assert.equal(r.stdoutBytes.length, 0, what);
    }
  });

  test("a decryption failing in its last chunk leaves an existing --out file as it was, and no part file", () => {
    writeFileSync(join(work, "plain"), randomBytes(1000));
    const message = join(work, "message");
    ok([
      "file",
      "encrypt",
      "--key",
      "storage",
      ...ctx,
      "--chunk-size",
      "100",
      "--in",
      join(work, "plain"),
      "--out",
      message,
    ]);
    const damaged = readFileSync(message);
    damaged[damaged.length - 1] = (damaged[damaged.length - 1] as number) ^ 1;
    const bad = join(work, "damaged");
    writeFileSync(bad, damaged);
    const out = join(work, "existing");
    writeFileSync(out, "previous contents", { mode: 0o644 });
    const r = custos.cli(["file", "decrypt", ...ctx, "--in", bad, "--out", out]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /decryption_failed/);
    assert.equal(readFileSync(out, "utf8"), "previous contents");
    assert.deepEqual(
      readdirSync(work).filter((n) => n.endsWith(".part")),
      [],
    );
    // The same command on the intact message replaces the file, with the plaintext's mode 0600.
    ok(["file", "decrypt", ...ctx, "--in", message, "--out", out]);
    assert.deepEqual(readFileSync(out), readFileSync(join(work, "plain")));
    assert.equal(statSync(out).mode & 0o777, 0o600);
  });

  test("input that fails at once (not an envelope, a cut header) leaves no part file beside --out", () => {
    const dir = mkdtempSync(join(work, "fast-"));
    const garbage = join(dir, "garbage");
    for (const bytes of [Buffer.from("not an envelope message at all"), Buffer.from("CUSTENV\x01\x01\x00")]) {
      writeFileSync(garbage, bytes);
      for (let i = 0; i < 2; i++) {
        const r = custos.cli(["file", "decrypt", "--in", garbage, "--out", join(dir, "out")]);
        assert.equal(r.status, 1, r.stderr);
        assert.match(r.stderr, /decryption_failed/);
        assert.deepEqual(readdirSync(dir), ["garbage"]);
      }
    }
  });

  test("--chunk-size: 16 MiB is accepted, one more byte and 0 are refused without an output file", () => {
    const plain = join(work, "small");
    writeFileSync(plain, randomBytes(10));
    const big = join(work, "big-chunks");
    ok(["file", "encrypt", "--key", "storage", "--chunk-size", String(MAX_CHUNK_SIZE), "--in", plain, "--out", big]);
    assert.equal(docHeader(readFileSync(big)).chunkSize, MAX_CHUNK_SIZE);
    assert.deepEqual(ok(["file", "decrypt", "--in", big]).stdoutBytes, readFileSync(plain));
    for (const size of [MAX_CHUNK_SIZE + 1, 0]) {
      const out = join(work, `refused-${size}`);
      const r = custos.cli([
        "file",
        "encrypt",
        "--key",
        "storage",
        "--chunk-size",
        String(size),
        "--in",
        plain,
        "--out",
        out,
      ]);
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, /chunk/i);
      assert.ok(!readdirSync(work).some((n) => n.includes(`refused-${size}`)));
    }
  });
});
