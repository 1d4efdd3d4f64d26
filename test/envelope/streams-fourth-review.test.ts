/**
 * A fourth review, of the rewritten streaming encoder and decoder (src/envelope/streams.ts, SealingChunk and
 * OpeningChunk): each written piece is encrypted or decrypted as it arrives under the chunk's not-last nonce, and
 * the final chunk is redone under the last-chunk nonce. So every way of cutting the input into writes must give the
 * same result: split at every point, one byte a write, through a buffer the producer overwrites, with the header's
 * end and the body in one write. Oracles: node:crypto following docs/envelope-format.md (not src/), and the buffer
 * API. Covers what the files of the first three reviews leave out (they feed damaged messages in one write).
 */
import assert from "node:assert/strict";
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from "node:crypto";
import type { Transform } from "node:stream";
import { after, before, describe, test } from "node:test";
import { Envelope } from "../../src/envelope/index.js";
import { alice, type KmsFixture, openFixture } from "../kms/setup.js";
import { type CountingKms, serviceKms } from "./service-kms.js";

const TAG = 16;
const PREAMBLE = Buffer.from("CUSTENV\x01\x01", "latin1");
const codeOf = (e: unknown) => (e as { code?: string } | undefined)?.code;

// ---------------------------------------------------------------------------------------------------------------------
// The format as docs/envelope-format.md states it, with node:crypto and nothing from src/
// ---------------------------------------------------------------------------------------------------------------------

function docHeader(message: Buffer) {
  let at = 0;
  const take = (n: number) => {
    if (at + n > message.length) throw new Error("header runs past the message");
    at += n;
    return message.subarray(at - n, at);
  };
  if (!take(9).equals(PREAMBLE)) throw new Error("magic, version, suite");
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
  const wrapped = take(take(2).readUInt16BE(0)).toString("latin1");
  return { keyName, chunkSize, noncePrefix, messageId, commitment, bound, mac, keyVersion, wrapped, length: at };
}

function docKeys(dataKey: Buffer, messageId: Buffer) {
  const okm = Buffer.from(hkdfSync("sha256", dataKey, messageId, PREAMBLE, 96));
  return { content: okm.subarray(0, 32), mac: okm.subarray(32, 64), commitment: okm.subarray(64, 96) };
}

function nonce(prefix: Buffer, index: number, last: boolean): Buffer {
  const n = Buffer.alloc(12);
  prefix.copy(n);
  n.writeUInt32BE(index, 7);
  n[11] = last ? 1 : 0;
  return n;
}

/** Steps 3–4 of "Decrypting", enforcing the chunk layout; throws on anything the document refuses. */
function docOpen(message: Buffer, dataKey: Buffer): Buffer {
  const h = docHeader(message);
  const keys = docKeys(dataKey, h.messageId);
  if (!timingSafeEqual(keys.commitment, h.commitment)) throw new Error("commitment");
  if (!timingSafeEqual(createHmac("sha256", keys.mac).update(h.bound).digest(), h.mac)) throw new Error("MAC");
  const stride = h.chunkSize + TAG;
  const body = message.subarray(h.length);
  const n = Math.max(1, Math.ceil(body.length / stride));
  const last = body.length - (n - 1) * stride;
  if (last < (n === 1 ? TAG : TAG + 1)) throw new Error(`last chunk of ${last} bytes after ${n - 1}`);
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const sealed = body.subarray(i * stride, (i + 1) * stride);
    const d = createDecipheriv("aes-256-gcm", keys.content, nonce(h.noncePrefix, i, i === n - 1));
    d.setAuthTag(sealed.subarray(sealed.length - TAG));
    out.push(d.update(sealed.subarray(0, sealed.length - TAG)), d.final());
  }
  return Buffer.concat(out);
}

/** The canonical context: count, then entries sorted by their keys' UTF-8 bytes, all lengths uint32. */
function docContext(context: Record<string, string>): Buffer {
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n);
    return b;
  };
  const entries = Object.entries(context)
    .map(([k, v]) => [Buffer.from(k, "utf8"), Buffer.from(v, "utf8")] as const)
    .sort((a, b) => Buffer.compare(a[0], b[0]));
  return Buffer.concat([u32(entries.length), ...entries.flatMap(([k, v]) => [u32(k.length), k, u32(v.length), v])]);
}

interface DocMessage {
  keyName: string;
  context: Record<string, string>;
  chunkSize: number;
  dataKey: Buffer;
  keyVersion: number;
  wrapped: string;
  /** The chunks to seal, in order, each with the last-chunk flag its nonce gets (docChunks gives the document's chunking). */
  chunks: { plain: Buffer; last: boolean }[];
}

/** A message built from the document; `chunks` may break its rules on purpose. */
function docBuild(m: DocMessage): Buffer {
  const noncePrefix = randomBytes(7);
  const messageId = randomBytes(32);
  const keys = docKeys(m.dataKey, messageId);
  const size = Buffer.alloc(4);
  size.writeUInt32BE(m.chunkSize);
  const name = Buffer.from(m.keyName, "ascii");
  const nameLength = Buffer.alloc(2);
  nameLength.writeUInt16BE(name.length);
  const bound = Buffer.concat([
    PREAMBLE,
    nameLength,
    name,
    docContext(m.context),
    size,
    noncePrefix,
    messageId,
    keys.commitment,
  ]);
  const tail = Buffer.alloc(6);
  tail.writeUInt32BE(m.keyVersion);
  tail.writeUInt16BE(m.wrapped.length, 4);
  const parts = [bound, createHmac("sha256", keys.mac).update(bound).digest(), tail, Buffer.from(m.wrapped, "ascii")];
  m.chunks.forEach(({ plain, last }, i) => {
    const c = createCipheriv("aes-256-gcm", keys.content, nonce(noncePrefix, i, last));
    parts.push(c.update(plain), c.final(), c.getAuthTag());
  });
  return Buffer.concat(parts);
}

/** The document's unique chunking of `plaintext`: n = max(1, ceil(L / S)), the last flag on chunk n-1 only. */
function docChunks(plaintext: Buffer, size: number): { plain: Buffer; last: boolean }[] {
  const n = Math.max(1, Math.ceil(plaintext.length / size));
  return Array.from({ length: n }, (_, i) => ({
    plain: plaintext.subarray(i * size, (i + 1) * size),
    last: i === n - 1,
  }));
}

// ---------------------------------------------------------------------------------------------------------------------
// Driving a stream write by write, recording everything it does
// ---------------------------------------------------------------------------------------------------------------------

interface Run {
  /** What the stream emitted as 'data', copied as it came. */
  out: Buffer;
  error?: unknown;
  errors: number;
  /** 'data' or 'end' events after the first 'error'. */
  afterError: number;
  ended: boolean;
  /** Exceptions thrown by write() or end() themselves. */
  thrown: unknown[];
}

interface Feed {
  /** Copy each piece into one buffer, overwritten with junk as soon as that write's callback has come. */
  reuse?: boolean;
  /** The consumer overwrites each buffer it receives, once it has copied it. */
  scribble?: boolean;
}

/** Writes `pieces` one at a time, each after the previous write's callback, then ends; resolves once closed. */
async function feed(stream: Transform, pieces: Iterable<Buffer>, options: Feed = {}): Promise<Run> {
  const got: Buffer[] = [];
  const run: Run = { out: Buffer.alloc(0), errors: 0, afterError: 0, ended: false, thrown: [] };
  stream.on("data", (b: Buffer) => {
    if (run.errors > 0) run.afterError++;
    got.push(Buffer.from(b));
    if (options.scribble) b.fill(0x5a);
  });
  stream.on("end", () => {
    if (run.errors > 0) run.afterError++;
    run.ended = true;
  });
  stream.on("error", (e) => {
    if (run.errors++ === 0) run.error = e;
  });
  const closed = new Promise((r) => stream.once("close", r));
  const scratch = Buffer.alloc(4096);
  for (const piece of pieces) {
    if (stream.destroyed) break;
    const data = options.reuse ? scratch.subarray(0, piece.copy(scratch)) : piece;
    let ok = false;
    try {
      ok = await new Promise<boolean>((r) => stream.write(data, (e) => r(!e)));
    } catch (e) {
      run.thrown.push(e);
    }
    if (options.reuse) scratch.fill(0xa5);
    if (!ok) break;
  }
  try {
    if (!stream.destroyed) stream.end();
  } catch (e) {
    run.thrown.push(e);
  }
  await closed;
  run.out = Buffer.concat(got);
  return run;
}

const bytewise = (b: Buffer) => Array.from({ length: b.length }, (_, i) => b.subarray(i, i + 1));
const splitAt = (b: Buffer, p: number) => [b.subarray(0, p), b.subarray(p)];
/** Pieces of `size` bytes (the last may be shorter). */
const pieces = (b: Buffer, size: number) =>
  Array.from({ length: Math.ceil(b.length / size) }, (_, i) => b.subarray(i * size, (i + 1) * size));

/** Plaintext lengths around every chunk edge up to 3 chunks, and last chunks shorter than a tag. */
function lengthsFor(size: number): number[] {
  const around = [1, 2, 3].flatMap((k) => [k * size - 1, k * size, k * size + 1]);
  const shortLast = [1, 2].flatMap((k) => [k * size + 1, k * size + 7, k * size + 15]).filter((n) => n % size !== 0);
  return [...new Set([0, 1, ...around, ...shortLast])].filter((n) => n >= 0).sort((a, b) => a - b);
}

describe("envelope streams, fourth review", () => {
  let f: KmsFixture;
  let kms: CountingKms;
  const context = { bucket: "b", object: "o" };
  const dataKeys = new Map<string, Buffer>();

  before(async () => {
    f = await openFixture("custos-env-review4");
    await f.kms.createKey(alice, { name: "storage", purpose: "encrypt" });
    kms = serviceKms(f.kms, alice);
  });
  after(async () => {
    await f?.close();
  });

  /** The message's data key, from the KMS, for the node:crypto oracle. */
  async function dataKeyOf(message: Buffer, ctx: Record<string, string> = context): Promise<Buffer> {
    const h = docHeader(message);
    let key = dataKeys.get(h.wrapped);
    if (key === undefined) {
      const unwrapped = await kms.decryptDataKey(h.keyName, h.wrapped, ctx);
      assert.equal(unwrapped.version, h.keyVersion);
      key = Buffer.from(unwrapped.plaintext.expose());
      dataKeys.set(h.wrapped, key);
    }
    return key;
  }

  /** A fresh data key and a message for `plaintext` built from the document alone. */
  async function docMessage(plaintext: Buffer, chunkSize: number, ctx: Record<string, string> = context) {
    const key = await kms.generateDataKey("storage", ctx);
    const fields = {
      keyName: "storage",
      context: ctx,
      chunkSize,
      dataKey: Buffer.from(key.plaintext.expose()),
      keyVersion: key.version,
      wrapped: key.wrapped,
    };
    return { fields, message: docBuild({ ...fields, chunks: docChunks(plaintext, chunkSize) }) };
  }

  test("encryptStream output opens with node:crypto per the document at every chunk edge, split anywhere", async () => {
    for (const size of [1, 15, 16, 17, 31, 32, 33, 64]) {
      const e = new Envelope({ kms, chunkSize: size });
      for (const length of lengthsFor(size)) {
        const plaintext = randomBytes(length);
        const ways = [[plaintext], bytewise(plaintext)];
        for (let p = 0; p <= length; p++) ways.push(splitAt(plaintext, p));
        for (const [w, input] of ways.entries()) {
          const what = `S=${size} L=${length} writes ${input.map((b) => b.length).join("+")}`;
          const run = await feed(e.encryptStream({ key: "storage", context }), input);
          assert.equal(run.error, undefined, what);
          let opened: Buffer;
          try {
            opened = docOpen(run.out, await dataKeyOf(run.out));
          } catch (err) {
            assert.fail(`${what}: the document's decoder refuses it: ${String(err)}`);
          }
          assert.deepEqual(opened, plaintext, what);
          if (w < 2) assert.deepEqual(await e.decrypt(run.out, { context }), plaintext, `${what}: decrypt()`);
        }
      }
      e.close();
    }
  });

  test("decryptStream opens decrypt()'s and the document's messages, split at every body point and byte by byte", async () => {
    for (const size of [1, 15, 16, 17, 31, 32, 33, 64]) {
      const e = new Envelope({ kms, chunkSize: size });
      for (const length of lengthsFor(size)) {
        const plaintext = randomBytes(length);
        const own = await e.encrypt(plaintext, { key: "storage", context });
        const { message: doc } = await docMessage(plaintext, size);
        for (const [who, message] of [
          ["encrypt()", own],
          ["document", doc],
        ] as const) {
          const h = docHeader(message).length;
          const ways = [[message], bytewise(message)];
          for (let p = h - 2; p <= message.length; p++) ways.push(splitAt(message, p));
          for (const input of ways) {
            const what = `${who} S=${size} L=${length} writes ${input.map((b) => b.length).join("+")}`;
            const run = await feed(e.decryptStream({ context }), input);
            assert.equal(run.error, undefined, `${what}: ${String(run.error)}`);
            assert.deepEqual(run.out, plaintext, what);
          }
        }
      }
      e.close();
    }
  });

  /** Feeds a damaged message in several ways; each must fail uniformly, having released only whole chunks before `firstBad`. */
  async function assertRefused(
    e: Envelope,
    damaged: Buffer,
    plaintext: Buffer,
    size: number,
    firstBad: number,
    what: string,
  ) {
    const stride = size + TAG;
    for (const [how, input] of [
      ["1-byte writes", bytewise(damaged)],
      [`writes of ${stride}`, pieces(damaged, stride)],
      ["writes of 7", pieces(damaged, 7)],
    ] as const) {
      const run = await feed(e.decryptStream({ context }), input);
      const label = `${what}, ${how}`;
      assert.equal(codeOf(run.error), "decryption_failed", `${label}: ${String(run.error)}`);
      assert.equal(run.afterError, 0, `${label}: events after the error`);
      assert.equal(run.out.length % size, 0, `${label}: released ${run.out.length} bytes, not whole chunks`);
      assert.ok(
        run.out.length <= firstBad * size,
        `${label}: released ${run.out.length} bytes, damage in chunk ${firstBad}`,
      );
      assert.deepEqual(run.out, plaintext.subarray(0, run.out.length), `${label}: released bytes are genuine`);
    }
  }

  test("a byte flipped anywhere, fed in small writes: decryption_failed, nothing of the damaged chunk or after", async () => {
    const size = 15; // shorter than a tag: the last chunk's tag straddles what was fed to the cipher as ciphertext
    const e = new Envelope({ kms, chunkSize: size });
    for (const length of [3 * size + 4, 3 * size]) {
      const plaintext = randomBytes(length);
      const message = await e.encrypt(plaintext, { key: "storage", context });
      const h = docHeader(message).length;
      for (let i = 0; i < message.length; i++) {
        const damaged = Buffer.from(message);
        damaged[i] = (damaged[i] as number) ^ 0x80;
        const chunk = i < h ? 0 : Math.floor((i - h) / (size + TAG));
        await assertRefused(e, damaged, plaintext, size, chunk, `L=${length} byte ${i} flipped`);
      }
    }
    e.close();
  });

  test("a message cut at every length or extended by 1 to 33 bytes, fed in small writes, is refused", async () => {
    const size = 16;
    const stride = size + TAG;
    const e = new Envelope({ kms, chunkSize: size });
    const plaintext = randomBytes(3 * size + 5);
    const message = await e.encrypt(plaintext, { key: "storage", context });
    const h = docHeader(message).length;
    for (let cut = 0; cut < message.length; cut++) {
      // Chunks wholly before the cut may come out; the cut one, or the one before a cut at a boundary, may not.
      const firstBad = cut <= h ? 0 : Math.max(0, Math.ceil((cut - h) / stride) - 1);
      await assertRefused(e, message.subarray(0, cut), plaintext, size, firstBad, `cut at ${cut}`);
    }
    const last = Math.floor((message.length - h - 1) / stride);
    for (const extra of [1, 15, 16, 17, stride, stride + 1]) {
      await assertRefused(
        e,
        Buffer.concat([message, randomBytes(extra)]),
        plaintext,
        size,
        last,
        `${extra} bytes appended`,
      );
    }
    e.close();
  });

  test("dropped, duplicated, swapped chunks and an empty last chunk with a sound tag are refused in small writes", async () => {
    const size = 17;
    const e = new Envelope({ kms, chunkSize: size });
    const plaintext = randomBytes(3 * size);
    const { fields, message } = await docMessage(plaintext, size);
    assert.deepEqual(await e.decrypt(message, { context }), plaintext, "the document's message is sound");
    const h = docHeader(message).length;
    const stride = size + TAG;
    const header = message.subarray(0, h);
    const [c0, c1, c2] = pieces(message.subarray(h), stride) as [Buffer, Buffer, Buffer];
    const cases: [string, Buffer[], number][] = [
      ["drop 0", [c1, c2], 0],
      ["drop 1", [c0, c2], 1],
      ["drop the last", [c0, c1], 1],
      ["duplicate 0", [c0, c0, c1, c2], 1],
      ["duplicate the last", [c0, c1, c2, c2], 2],
      ["swap 0 and 1", [c1, c0, c2], 0],
      ["swap 1 and 2", [c0, c2, c1], 1],
    ];
    for (const [what, body, firstBad] of cases) {
      await assertRefused(e, Buffer.concat([header, ...body]), plaintext, size, firstBad, what);
    }
    // The same plaintext chunked another way, every tag sound: 3 full chunks, then an empty one marked last.
    const chunks = [0, 1, 2].map((i) => ({ plain: plaintext.subarray(i * size, (i + 1) * size), last: false }));
    const twoChunkings = docBuild({ ...fields, chunks: [...chunks, { plain: Buffer.alloc(0), last: true }] });
    await assertRefused(e, twoChunkings, plaintext, size, 3, "an empty last chunk after full ones");
    await assert.rejects(e.decrypt(twoChunkings, { context }), (err) => codeOf(err) === "decryption_failed");
    e.close();
  });

  test("a producer that overwrites its buffer after each callback, in writes of 1, 3 and 13 bytes: both streams", async () => {
    for (const size of [1, 15, 17]) {
      const e = new Envelope({ kms, chunkSize: size });
      for (const length of [0, size, 2 * size + 1, 2 * size + 9]) {
        const plaintext = randomBytes(length);
        const message = await e.encrypt(plaintext, { key: "storage", context });
        for (const write of [1, 3, 13]) {
          const what = `S=${size} L=${length} reused buffer of ${write}`;
          const sealed = await feed(e.encryptStream({ key: "storage", context }), pieces(plaintext, write), {
            reuse: true,
          });
          assert.equal(sealed.error, undefined, what);
          assert.deepEqual(docOpen(sealed.out, await dataKeyOf(sealed.out)), plaintext, `encrypt, ${what}`);
          const opened = await feed(e.decryptStream({ context }), pieces(message, write), { reuse: true });
          assert.equal(opened.error, undefined, `decrypt, ${what}: ${String(opened.error)}`);
          assert.deepEqual(opened.out, plaintext, `decrypt, ${what}`);
        }
      }
      e.close();
    }
  });

  test("a consumer that overwrites every buffer it is given changes nothing either stream releases after it", async () => {
    const size = 16;
    const e = new Envelope({ kms, chunkSize: size });
    const plaintext = randomBytes(5 * size + 3);
    const message = await e.encrypt(plaintext, { key: "storage", context });
    for (const write of [1, size + TAG + 1, 1000]) {
      const sealed = await feed(e.encryptStream({ key: "storage", context }), pieces(plaintext, write), {
        scribble: true,
      });
      assert.deepEqual(docOpen(sealed.out, await dataKeyOf(sealed.out)), plaintext, `encrypt, writes of ${write}`);
      const opened = await feed(e.decryptStream({ context }), pieces(message, write), { scribble: true });
      assert.equal(opened.error, undefined, String(opened.error));
      assert.deepEqual(opened.out, plaintext, `decrypt, writes of ${write}`);
    }
    e.close();
  });

  test("a header in 1-byte writes, split inside multi-byte UTF-8, then the body in its last write: one KMS call", async () => {
    const ctx = { "\u{1F600}": "smile", b: "café", "\uFF21": "x".repeat(200) };
    const size = 16;
    const e = new Envelope({ kms, chunkSize: size, cache: false });
    const plaintext = randomBytes(2 * size + 3);
    const { message } = await docMessage(plaintext, size, ctx);
    const h = docHeader(message).length;
    for (const [what, input] of [
      [
        "header byte by byte, the body with its last byte",
        [...bytewise(message.subarray(0, h - 1)), message.subarray(h - 1)],
      ],
      ["header byte by byte, then the body byte by byte", bytewise(message)],
      ["header in 3-byte writes, then all the body", [...pieces(message.subarray(0, h), 3), message.subarray(h)]],
    ] as const) {
      const calls = kms.calls.decrypt;
      const run = await feed(e.decryptStream({ context: ctx }), input);
      assert.equal(run.error, undefined, `${what}: ${String(run.error)}`);
      assert.deepEqual(run.out, plaintext, what);
      assert.equal(kms.calls.decrypt - calls, 1, `${what}: KMS calls`);
    }
    // A header one byte short waits: no KMS call, and the end of input is decryption_failed.
    const calls = kms.calls.decrypt;
    const short = await feed(e.decryptStream({ context: ctx }), bytewise(message.subarray(0, h - 1)));
    assert.equal(codeOf(short.error), "decryption_failed");
    assert.equal(kms.calls.decrypt, calls, "no KMS call before the header is whole");
  });

  test("streams interleaved byte by byte under one cached data key, and close() midway, each finish sound", async () => {
    const size = 15;
    const e = new Envelope({ kms, chunkSize: size });
    const plains = [randomBytes(3 * size + 2), randomBytes(2 * size), randomBytes(size - 1)];
    const opened = await Promise.all(plains.map((p) => e.encrypt(p, { key: "storage", context })));
    const sealing = plains.map(() => e.encryptStream({ key: "storage", context }));
    const opening = plains.map(() => e.decryptStream({ context }));
    const runs = [...sealing, ...opening].map((s) => {
      const got: Buffer[] = [];
      s.on("data", (b: Buffer) => got.push(b));
      const done = new Promise<unknown>((r) => {
        s.once("end", () => r(undefined));
        s.once("error", r);
      });
      return { got, done };
    });
    const inputs = [...plains, ...opened];
    const longest = Math.max(...inputs.map((b) => b.length));
    const streams = [...sealing, ...opening];
    for (let at = 0; at < longest; at++) {
      // Every data key the envelope holds is zeroed halfway: streams under way derived their own keys.
      if (at === longest >> 1) e.close();
      await Promise.all(
        streams.map((s, i) => {
          const piece = (inputs[i] as Buffer).subarray(at, at + 1);
          return piece.length === 0 ? undefined : new Promise((r) => s.write(piece, r));
        }),
      );
    }
    for (const s of streams) s.end();
    for (const [i, run] of runs.entries()) assert.equal(await run.done, undefined, `stream ${i}`);
    for (const [i, p] of plains.entries()) {
      const sealed = Buffer.concat((runs[i] as { got: Buffer[] }).got);
      assert.deepEqual(docOpen(sealed, await dataKeyOf(sealed)), p, `encryptStream ${i}`);
      assert.deepEqual(Buffer.concat((runs[plains.length + i] as { got: Buffer[] }).got), p, `decryptStream ${i}`);
    }
  });

  test("errors come as one 'error' event, never thrown by write() or end(), with no data or end after", async () => {
    const size = 16;
    const e = new Envelope({ kms, chunkSize: size });
    const plaintext = randomBytes(6 * size);
    const message = await e.encrypt(plaintext, { key: "storage", context });
    const h = docHeader(message).length;
    const damaged = Buffer.from(message);
    damaged[h + size + TAG + 3] = (damaged[h + size + TAG + 3] as number) ^ 1; // in chunk 1, four sound chunks after
    const cases: [string, () => Transform, Buffer[], string][] = [
      [
        "encrypt under a malformed key name",
        () => e.encryptStream({ key: "no such key!" }),
        [plaintext],
        "invalid_request",
      ],
      ["encrypt under an unknown key", () => e.encryptStream({ key: "missing", context }), [plaintext], "not_found"],
      [
        "encrypt with a context beyond the limits",
        () => e.encryptStream({ key: "storage", context: { k: "v".repeat(257) } }),
        [plaintext],
        "invalid_request",
      ],
      [
        "decrypt under another context",
        () => e.decryptStream({ context: { bucket: "b" } }),
        [message],
        "decryption_failed",
      ],
      ["decrypt not an envelope", () => e.decryptStream({ context }), [randomBytes(500)], "decryption_failed"],
      ["decrypt chunk 1 damaged, one write", () => e.decryptStream({ context }), [damaged], "decryption_failed"],
      [
        "decrypt chunk 1 damaged, 1-byte writes",
        () => e.decryptStream({ context }),
        bytewise(damaged),
        "decryption_failed",
      ],
    ];
    for (const [what, make, input, code] of cases) {
      let stream: Transform | undefined;
      assert.doesNotThrow(() => {
        stream = make();
      }, what);
      // Fed twice: nothing written after the failure may come out either.
      const run = await feed(stream as Transform, [...input, ...input]);
      assert.deepEqual(run.thrown, [], `${what}: thrown synchronously`);
      assert.equal(codeOf(run.error), code, `${what}: ${String(run.error)}`);
      assert.equal(run.errors, 1, `${what}: error events`);
      assert.equal(run.afterError, 0, `${what}: data or end after the error`);
      assert.equal(run.ended, false, `${what}: ended as if sound`);
      assert.ok(run.out.length <= size, `${what}: released ${run.out.length} bytes`);
      if (what.startsWith("decrypt")) assert.deepEqual(run.out, plaintext.subarray(0, run.out.length), what);
      else assert.equal(run.out.length, 0, `${what}: no header without a data key`);
    }
    e.close();
  });
});
