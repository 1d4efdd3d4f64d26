import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { after, before, describe, test } from "node:test";
import { bufferSource, Envelope, type RangeSource, readHeader } from "../../src/envelope/index.js";
import { alice, type KmsFixture, openFixture } from "../kms/setup.js";
import { collect } from "./collect.js";
import { type CountingKms, serviceKms } from "./service-kms.js";

let f: KmsFixture;
let kms: CountingKms;
const context = { bucket: "photos", object: "cat.jpg" };

before(async () => {
  f = await openFixture("custos-envelope");
  await f.kms.createKey(alice, { name: "storage", purpose: "encrypt" });
  await f.kms.createKey(alice, { name: "other", purpose: "encrypt" });
  kms = serviceKms(f.kms, alice);
});
after(async () => {
  await f?.close();
});

/** Feeds `data` in pieces of random sizes, so chunk boundaries fall anywhere in them. */
function pieces(data: Buffer): Readable {
  const parts: Buffer[] = [];
  for (let at = 0; at < data.length; ) {
    const n = 1 + Math.floor(Math.random() * 40);
    parts.push(data.subarray(at, at + n));
    at += n;
  }
  return Readable.from(parts, { objectMode: false });
}

/** A buffer source that notes every read, to see which bytes a range read touches. */
function loggedSource(bytes: Buffer, log: Array<[number, number]>): RangeSource {
  const source = bufferSource(bytes);
  return {
    size: source.size,
    read: (position, length) => {
      log.push([position, length]);
      return source.read(position, length);
    },
  };
}

const isDecryptionFailed = (e: unknown) => (e as { code?: string }).code === "decryption_failed";

describe("round trips", () => {
  const size = 16;
  const envelope = () => new Envelope({ kms, chunkSize: size });
  const lengths = [0, 1, size - 1, size, size + 1, 2 * size, 3 * size + 5, 1000];

  for (const length of lengths) {
    test(`${length} bytes through buffers and streams`, async () => {
      const e = envelope();
      const plaintext = randomBytes(length);
      const message = await e.encrypt(plaintext, { key: "storage", context });
      assert.deepEqual(await e.decrypt(message, { context }), plaintext);

      const streamed = await collect(pieces(plaintext), e.encryptStream({ key: "storage", context }));
      assert.equal(streamed.error, undefined);
      assert.equal(streamed.out.length, message.length, "the chunking of a plaintext is unique");
      assert.deepEqual(await e.decrypt(streamed.out, { context }), plaintext);
      const back = await collect(pieces(message), e.decryptStream({ context }));
      assert.equal(back.error, undefined);
      assert.deepEqual(back.out, plaintext);
    });
  }

  test("streams agree with the buffer API for every length of a last chunk, shorter than a tag or not", async () => {
    // A last chunk whose ciphertext and tag together are shorter than a chunk has its tag where a
    // longer one has ciphertext: the decoder learns which only when the input ends.
    const chunkSize = 40;
    const e = new Envelope({ kms, chunkSize });
    for (let length = 0; length <= 2 * chunkSize + 1; length++) {
      const plaintext = randomBytes(length);
      const streamed = await collect(pieces(plaintext), e.encryptStream({ key: "storage", context }));
      assert.deepEqual(await e.decrypt(streamed.out, { context }), plaintext, `${length} bytes streamed in`);
      const message = await e.encrypt(plaintext, { key: "storage", context });
      const back = await collect(pieces(message), e.decryptStream({ context }));
      assert.equal(back.error, undefined, `${length} bytes streamed out`);
      assert.deepEqual(back.out, plaintext);
    }
  });

  test("the default 256 KiB chunks, a multi-chunk stream", async () => {
    const e = new Envelope({ kms });
    const plaintext = randomBytes(3 * 262144 + 123);
    const encrypted = await collect(Readable.from([plaintext]), e.encryptStream({ key: "storage" }));
    const header = await readHeader(bufferSource(encrypted.out));
    assert.equal(header.chunkSize, 262144);
    const back = await collect(Readable.from([encrypted.out]), e.decryptStream());
    assert.deepEqual(back.out, plaintext);
  });

  test("byte ranges decrypt only the chunks they need", async () => {
    const e = envelope();
    const plaintext = randomBytes(10 * size + 3);
    const message = await e.encrypt(plaintext, { key: "storage", context });
    const header = await readHeader(bufferSource(message));
    const ranges: Array<[number, number]> = [
      [0, 0],
      [0, 1],
      [0, plaintext.length],
      [size - 1, size + 1],
      [3 * size, 4 * size],
      [5, 9],
      [plaintext.length - 1, plaintext.length],
      [plaintext.length, plaintext.length],
      [7 * size + 2, plaintext.length + 100],
    ];
    for (const [start, end] of ranges) {
      const reads: Array<[number, number]> = [];
      const got = await e.readRange(loggedSource(message, reads), start, end, { context });
      assert.deepEqual(got, plaintext.subarray(start, end), `range ${start}-${end}`);
      const bodyRead = reads.filter(([at]) => at >= header.length).reduce((n, [, len]) => n + len, 0);
      const chunks =
        end > start ? Math.floor((Math.min(end, plaintext.length) - 1) / size) - Math.floor(start / size) + 1 : 0;
      assert.ok(
        bodyRead <= chunks * (size + 16),
        `range ${start}-${end} read ${bodyRead} body bytes for ${chunks} chunks`,
      );
    }
    await assert.rejects(e.readRange(bufferSource(message), plaintext.length + 1, plaintext.length + 2, { context }), {
      code: "invalid_request",
    });
    await assert.rejects(e.readRange(bufferSource(message), 0, 1, { context: {} }), isDecryptionFailed);
  });

  test("bad encryption requests are refused with invalid_request", async () => {
    const e = envelope();
    await assert.rejects(e.encrypt(Buffer.from("x"), { key: "no spaces allowed" }), { code: "invalid_request" });
    await assert.rejects(e.encrypt(Buffer.from("x"), { key: "storage", context: { k: "" } }), {
      code: "invalid_request",
    });
    await assert.rejects(e.encrypt(Buffer.from("x"), { key: "missing" }), { code: "not_found" });
    assert.throws(() => new Envelope({ kms, chunkSize: 0 }), { code: "invalid_request" });
    assert.throws(() => new Envelope({ kms, cache: { maxAgeMs: -1 } }), { code: "invalid_request" });
  });
});

describe("tampering", () => {
  const size = 16;
  const e = () => new Envelope({ kms, chunkSize: size });
  let plaintext: Buffer;
  let message: Buffer;
  let headerLength: number;
  const stride = size + 16;

  before(async () => {
    plaintext = randomBytes(4 * size + 7);
    message = await e().encrypt(plaintext, { key: "storage", context });
    headerLength = (await readHeader(bufferSource(message))).length;
  });

  /** Decrypts by stream and checks the failure, and that only whole chunks before `firstBad` came out. */
  async function assertFails(damaged: Buffer, firstBad: number, what: string) {
    await assert.rejects(e().decrypt(damaged, { context }), isDecryptionFailed, what);
    const streamed = await collect(Readable.from([damaged]), e().decryptStream({ context }));
    assert.ok(isDecryptionFailed(streamed.error), `${what}: stream error ${String(streamed.error)}`);
    assert.ok(streamed.out.length <= firstBad * size, `${what}: released ${streamed.out.length} bytes`);
    assert.deepEqual(streamed.out, plaintext.subarray(0, streamed.out.length), `${what}: released bytes are genuine`);
  }

  test("a flipped bit anywhere", async () => {
    for (let i = 0; i < message.length; i++) {
      const damaged = Buffer.from(message);
      damaged[i] = (damaged[i] as number) ^ (1 << (i % 8));
      const chunk = i < headerLength ? 0 : Math.floor((i - headerLength) / stride);
      await assertFails(damaged, chunk, `bit flip at byte ${i}`);
    }
  });

  test("reordered, dropped, duplicated, truncated and appended chunks", async () => {
    const header = message.subarray(0, headerLength);
    const chunks: Buffer[] = [];
    for (let at = headerLength; at < message.length; at += stride) chunks.push(message.subarray(at, at + stride));
    const [c0, c1, c2, c3, c4] = chunks as [Buffer, Buffer, Buffer, Buffer, Buffer];
    const cases: Array<[string, Buffer[], number]> = [
      ["swap 1 and 2", [c0, c2, c1, c3, c4], 1],
      ["drop 2", [c0, c1, c3, c4], 2],
      ["duplicate 1", [c0, c1, c1, c2, c3, c4], 2],
      ["truncate at a chunk boundary", [c0, c1, c2, c3], 3],
      ["truncate inside the last chunk", [c0, c1, c2, c3, c4.subarray(0, 10)], 4],
      ["drop the last chunk's tag byte", [c0, c1, c2, c3, c4.subarray(0, c4.length - 1)], 4],
      ["append a byte", [c0, c1, c2, c3, c4, Buffer.from([0])], 4],
      ["append a copy of the last chunk", [c0, c1, c2, c3, c4, c4], 4],
      ["header only", [], 0],
    ];
    for (const [what, body, firstBad] of cases) await assertFails(Buffer.concat([header, ...body]), firstBad, what);
    await assertFails(header.subarray(0, headerLength - 3), 0, "a cut header");
    await assertFails(Buffer.alloc(0), 0, "nothing at all");
  });

  test("a wrong context or a wrong key", async () => {
    for (const wrong of [{}, { ...context, extra: "x" }, { ...context, object: "dog.jpg" }]) {
      await assert.rejects(e().decrypt(message, { context: wrong }), isDecryptionFailed);
    }
    // The same header naming another key the caller may use: the KMS refuses the wrapped key.
    const other = Buffer.concat([
      message.subarray(0, 9),
      Buffer.from([0, 5]),
      Buffer.from("other"),
      message.subarray(9 + 2 + "storage".length),
    ]);
    await assert.rejects(e().decrypt(other, { context }), isDecryptionFailed);
  });
});

describe("data-key cache", () => {
  test("1,000 small objects under one context: one KMS call with the cache, 1,000 without", async () => {
    const cached = new Envelope({ kms });
    const uncached = new Envelope({ kms, cache: false });
    const objects = Array.from({ length: 1000 }, (_, i) => Buffer.from(`object ${i}`));
    const messages = await Promise.all(objects.map((o) => cached.encrypt(o, { key: "storage", context })));
    assert.ok(cached.kmsCalls <= 3, `${cached.kmsCalls} KMS calls with the cache`);
    for (const o of objects.slice(0, 100)) await uncached.encrypt(o, { key: "storage", context });
    const uncachedCalls = uncached.kmsCalls;
    for (const o of objects.slice(100)) await uncached.encrypt(o, { key: "storage", context });
    assert.equal(uncachedCalls, 100);
    assert.equal(uncached.kmsCalls, 1000);

    const reader = new Envelope({ kms });
    const back = await Promise.all(messages.map((m) => reader.decrypt(m, { context })));
    assert.deepEqual(back, objects);
    assert.ok(reader.kmsCalls <= 3, `${reader.kmsCalls} KMS calls to decrypt with the cache`);
    cached.close();
    reader.close();
  });

  test("limits on messages and bytes start a new data key", async () => {
    const few = new Envelope({ kms, cache: { maxMessages: 10 } });
    for (let i = 0; i < 35; i++) await few.encrypt(Buffer.from("x"), { key: "storage", context });
    assert.equal(few.kmsCalls, 4);
    const small = new Envelope({ kms, cache: { maxBytes: 1000 } });
    for (let i = 0; i < 5; i++) await small.encrypt(Buffer.alloc(600), { key: "storage", context });
    assert.equal(small.kmsCalls, 3, "a key is reused until 1000 bytes have passed under it");
    const byContext = new Envelope({ kms });
    await byContext.encrypt(Buffer.from("x"), { key: "storage", context: { a: "1" } });
    await byContext.encrypt(Buffer.from("x"), { key: "storage", context: { a: "2" } });
    await byContext.encrypt(Buffer.from("x"), { key: "other", context: { a: "1" } });
    assert.equal(byContext.kmsCalls, 3, "one data key per key and context");
  });
});
