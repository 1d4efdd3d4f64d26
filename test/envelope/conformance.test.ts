/**
 * Conformance of the envelope library and its CLI commands with docs/envelope-format.md and the issue that
 * specified them, checked against oracles of their own: node:crypto following the document (not src/), the file
 * system, the KMS's own answers and the CLI's exit codes. Covers what envelope.test.ts, cache.test.ts, the
 * independent decoder and e2e/envelope-cli.test.ts leave out.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from "node:crypto";
import {
  chmodSync,
  chownSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, test } from "node:test";
import { inspect } from "node:util";
import { bufferSource, Envelope, type EnvelopeKms, type RangeSource } from "../../src/envelope/index.js";
import type { Secret } from "../../src/secret/index.js";
import { type CustosInstance, startCustos } from "../helpers/custos.js";
import { alice, type KmsFixture, openFixture } from "../kms/setup.js";
import { collect } from "./collect.js";
import { type CountingKms, serviceKms } from "./service-kms.js";

const ROOT = resolve(import.meta.dirname, "../..");
const isDecryptionFailed = (e: unknown) => (e as { code?: string }).code === "decryption_failed";

// ---------------------------------------------------------------------------------------------------------------------
// The format as docs/envelope-format.md states it, with node:crypto and nothing from src/
// ---------------------------------------------------------------------------------------------------------------------

const PREAMBLE = Buffer.from("CUSTENV\x01\x01", "latin1");
const TAG = 16;

interface DocHeader {
  keyName: string;
  contextBytes: Buffer;
  chunkSize: number;
  noncePrefix: Buffer;
  messageId: Buffer;
  commitment: Buffer;
  bound: Buffer;
  mac: Buffer;
  keyVersion: number;
  wrapped: string;
  length: number;
}

function docParse(message: Buffer): DocHeader {
  let at = 0;
  const take = (n: number) => {
    assert.ok(at + n <= message.length, "header runs past the message");
    at += n;
    return message.subarray(at - n, at);
  };
  assert.deepEqual(take(9), PREAMBLE, "magic, version 1, suite 1");
  const keyName = take(take(2).readUInt16BE(0)).toString("ascii");
  const contextAt = at;
  const count = take(4).readUInt32BE(0);
  for (let i = 0; i < 2 * count; i++) take(take(4).readUInt32BE(0));
  const contextBytes = message.subarray(contextAt, at);
  const chunkSize = take(4).readUInt32BE(0);
  const noncePrefix = take(7);
  const messageId = take(32);
  const commitment = take(32);
  const bound = message.subarray(0, at);
  const mac = take(32);
  const keyVersion = take(4).readUInt32BE(0);
  const wrapped = take(take(2).readUInt16BE(0)).toString("latin1");
  return {
    keyName,
    contextBytes,
    chunkSize,
    noncePrefix,
    messageId,
    commitment,
    bound,
    mac,
    keyVersion,
    wrapped,
    length: at,
  };
}

/** The canonical context: count, then entries sorted by the UTF-8 bytes of their keys, all lengths uint32. */
function docContext(context: Record<string, string>): Buffer {
  const entries = Object.entries(context)
    .map(([k, v]) => [Buffer.from(k, "utf8"), Buffer.from(v, "utf8")] as const)
    .sort((a, b) => Buffer.compare(a[0], b[0]));
  const parts = [u32(entries.length)];
  for (const [k, v] of entries) parts.push(u32(k.length), k, u32(v.length), v);
  return Buffer.concat(parts);
}

function docKeys(dataKey: Buffer, messageId: Buffer) {
  const okm = Buffer.from(hkdfSync("sha256", dataKey, messageId, PREAMBLE, 96));
  return { content: okm.subarray(0, 32), mac: okm.subarray(32, 64), commitment: okm.subarray(64, 96) };
}

function docNonce(prefix: Buffer, index: number, last: boolean): Buffer {
  return Buffer.concat([prefix, u32(index), Buffer.from([last ? 1 : 0])]);
}

/** Decrypts a whole message given its data key, as the document's steps 1 and 3–4 say; returns the chunk lengths too. */
function docDecrypt(message: Buffer, dataKey: Buffer): { plaintext: Buffer; chunks: number[] } {
  const h = docParse(message);
  const keys = docKeys(dataKey, h.messageId);
  assert.ok(timingSafeEqual(keys.commitment, h.commitment), "commitment");
  assert.ok(timingSafeEqual(createHmac("sha256", keys.mac).update(h.bound).digest(), h.mac), "header MAC");
  const stride = h.chunkSize + TAG;
  const body = message.subarray(h.length);
  const n = Math.max(1, Math.ceil(body.length / stride));
  const out: Buffer[] = [];
  const chunks: number[] = [];
  for (let i = 0; i < n; i++) {
    const sealed = body.subarray(i * stride, (i + 1) * stride);
    const d = createDecipheriv("aes-256-gcm", keys.content, docNonce(h.noncePrefix, i, i === n - 1));
    d.setAuthTag(sealed.subarray(sealed.length - TAG));
    out.push(d.update(sealed.subarray(0, sealed.length - TAG)), d.final());
    chunks.push(sealed.length - TAG);
  }
  return { plaintext: Buffer.concat(out), chunks };
}

/** Builds a whole message from a data key and its wrapped form, as the document describes the encoder. */
function docEncrypt(o: {
  keyName: string;
  context: Record<string, string>;
  chunkSize: number;
  dataKey: Buffer;
  keyVersion: number;
  wrapped: string;
  plaintext: Buffer;
}): Buffer {
  const noncePrefix = randomBytes(7);
  const messageId = randomBytes(32);
  const keys = docKeys(o.dataKey, messageId);
  const name = Buffer.from(o.keyName, "ascii");
  const bound = Buffer.concat([
    PREAMBLE,
    u16(name.length),
    name,
    docContext(o.context),
    u32(o.chunkSize),
    noncePrefix,
    messageId,
    keys.commitment,
  ]);
  const wrapped = Buffer.from(o.wrapped, "ascii");
  const parts = [
    bound,
    createHmac("sha256", keys.mac).update(bound).digest(),
    u32(o.keyVersion),
    u16(wrapped.length),
    wrapped,
  ];
  const n = Math.max(1, Math.ceil(o.plaintext.length / o.chunkSize));
  for (let i = 0; i < n; i++) {
    const c = createCipheriv("aes-256-gcm", keys.content, docNonce(noncePrefix, i, i === n - 1));
    parts.push(c.update(o.plaintext.subarray(i * o.chunkSize, (i + 1) * o.chunkSize)), c.final(), c.getAuthTag());
  }
  return Buffer.concat(parts);
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/** The same message with the header's key name replaced (and its length field with it). */
function renamed(message: Buffer, name: string): Buffer {
  const old = message.readUInt16BE(9);
  return Buffer.concat([message.subarray(0, 9), u16(name.length), Buffer.from(name), message.subarray(11 + old)]);
}

/** A buffer source that counts the bytes it hands out for chunks. */
function countingSource(bytes: Buffer, headerLength: number): RangeSource & { bodyBytes: number } {
  const inner = bufferSource(bytes);
  const source = {
    size: inner.size,
    bodyBytes: 0,
    read: async (position: number, length: number) => {
      const got = await inner.read(position, length);
      // The header read may take a few body bytes with it (it reads ahead); only reads for chunks count.
      if (position >= headerLength) source.bodyBytes += got.length;
      return got;
    },
  };
  return source;
}

// ---------------------------------------------------------------------------------------------------------------------
// The library, over the real KMS service (SoftHSM token, SQLite store, audit)
// ---------------------------------------------------------------------------------------------------------------------

describe("envelope library", () => {
  let f: KmsFixture;
  let kms: CountingKms;
  const context = { bucket: "photos", object: "cat.jpg" };

  before(async () => {
    f = await openFixture("custos-env-conf");
    await f.kms.createKey(alice, { name: "storage", purpose: "encrypt" });
    await f.kms.createKey(alice, { name: "signing", purpose: "sign" });
    kms = serviceKms(f.kms, alice);
  });
  after(async () => {
    await f?.close();
  });

  /** The data key of a message, from the KMS, to hand to the node:crypto oracle. */
  async function dataKeyOf(message: Buffer, ctx: Record<string, string>): Promise<Buffer> {
    const h = docParse(message);
    const key = await kms.decryptDataKey(h.keyName, h.wrapped, ctx);
    assert.equal(key.version, h.keyVersion, "the header's key version is the one the KMS reports");
    return Buffer.from(key.plaintext.expose());
  }

  test("messages at every chunk edge decrypt with node:crypto following the document", async () => {
    for (const size of [1, 16]) {
      const e = new Envelope({ kms, chunkSize: size, cache: false });
      for (const length of [0, 1, size - 1, size, size + 1, 2 * size, 3 * size + 1].filter((n) => n >= 0)) {
        const plaintext = randomBytes(length);
        const whole = await e.encrypt(plaintext, { key: "storage", context });
        const streamed = await collect(Readable.from([plaintext]), e.encryptStream({ key: "storage", context }));
        assert.equal(streamed.error, undefined);
        for (const message of [whole, streamed.out]) {
          const h = docParse(message);
          assert.equal(h.keyName, "storage");
          assert.equal(h.chunkSize, size);
          assert.deepEqual(h.contextBytes, docContext(context));
          const opened = docDecrypt(message, await dataKeyOf(message, context));
          assert.deepEqual(opened.plaintext, plaintext, `S=${size} L=${length}`);
          const n = Math.max(1, Math.ceil(length / size));
          assert.equal(opened.chunks.length, n, `n = max(1, ceil(L/S)) for S=${size} L=${length}`);
          assert.ok(
            opened.chunks.slice(0, -1).every((c) => c === size),
            "every chunk but the last is S bytes",
          );
        }
      }
    }
  });

  test("a message built with node:crypto from the document decrypts, its context sorted by UTF-8 bytes", async () => {
    // U+FF21 sorts after U+1F600 in UTF-16 code units (FF21 > D83D) but before it in UTF-8 bytes (EF < F0).
    const ctx = { "\u{1F600}": "smile", "\uFF21": "fullwidth", b: "café" };
    const key = await kms.generateDataKey("storage", ctx);
    const plaintext = randomBytes(23);
    const message = docEncrypt({
      keyName: "storage",
      context: ctx,
      chunkSize: 5,
      dataKey: Buffer.from(key.plaintext.expose()),
      keyVersion: key.version,
      wrapped: key.wrapped,
      plaintext,
    });
    const e = new Envelope({ kms, cache: false });
    assert.deepEqual(
      await e.decrypt(message, { context: { b: "café", "\uFF21": "fullwidth", "\u{1F600}": "smile" } }),
      plaintext,
    );
    // The library's own header spells the same context byte for byte.
    const own = await e.encrypt(plaintext, { key: "storage", context: ctx });
    assert.deepEqual(docParse(own).contextBytes, docContext(ctx));
  });

  test("a stream releases a chunk only once a byte after it shows it is not the last", async () => {
    const size = 8;
    const e = new Envelope({ kms, chunkSize: size });
    const plaintext = randomBytes(3 * size + 3);
    const message = await e.encrypt(plaintext, { key: "storage", context });
    const h = docParse(message).length;
    const stride = size + TAG;
    const stream = e.decryptStream({ context });
    const got: Buffer[] = [];
    stream.on("data", (b: Buffer) => got.push(b));
    let fed = 0;
    const feedTo = async (end: number) => {
      const piece = message.subarray(fed, end);
      fed = end;
      await new Promise<void>((done, fail) => stream.write(piece, (err) => (err ? fail(err) : done())));
      await new Promise((r) => setImmediate(r));
      return Buffer.concat(got);
    };
    assert.equal((await feedTo(h + stride)).length, 0, "chunk 0 whole, but it might be the last");
    assert.deepEqual(await feedTo(h + stride + 1), plaintext.subarray(0, size));
    assert.deepEqual(await feedTo(h + 3 * stride), plaintext.subarray(0, 2 * size));
    assert.deepEqual(await feedTo(message.length - 1), plaintext.subarray(0, 3 * size), "the short last chunk is held");
    await feedTo(message.length);
    stream.end();
    await new Promise((r) => stream.once("end", r));
    assert.deepEqual(Buffer.concat(got), plaintext);
  });

  test("range reads at the edges: empty plaintext, a full last chunk, start = size, end past it", async () => {
    const size = 16;
    const e = new Envelope({ kms, chunkSize: size, cache: false });
    const empty = await e.encrypt(Buffer.alloc(0), { key: "storage", context });
    for (const [a, b] of [
      [0, 0],
      [0, 10],
    ] as const) {
      assert.equal((await e.readRange(bufferSource(empty), a, b, { context })).length, 0, `empty [${a}, ${b})`);
    }
    await assert.rejects(e.readRange(bufferSource(empty), 1, 1, { context }), { code: "invalid_request" });

    const plaintext = randomBytes(3 * size); // the last chunk is full: S + 16 bytes, decrypted with the last flag
    const message = await e.encrypt(plaintext, { key: "storage", context });
    const h = docParse(message).length;
    const cases: Array<[number, number, number]> = [
      [2 * size, 3 * size, 1],
      [size, 2 * size, 1],
      [size - 1, size, 1],
      [size, size + 1, 1],
      [3 * size - 1, 10 * size, 1],
      [3 * size, 3 * size, 0],
      [3 * size, Number.MAX_SAFE_INTEGER, 0],
    ];
    for (const [a, b, chunks] of cases) {
      const source = countingSource(message, h);
      assert.deepEqual(await e.readRange(source, a, b, { context }), plaintext.subarray(a, b), `[${a}, ${b})`);
      assert.equal(source.bodyBytes, chunks * (size + TAG), `[${a}, ${b}) reads ${chunks} chunks`);
    }
    await assert.rejects(e.readRange(bufferSource(message), 3 * size + 1, 3 * size + 2, { context }), {
      code: "invalid_request",
    });
    // An empty range decrypts nothing, yet the header is authenticated.
    await assert.rejects(e.readRange(bufferSource(message), 0, 0, { context: {} }), isDecryptionFailed);
    const badMac = Buffer.from(message);
    const macAt = docParse(message).bound.length;
    badMac[macAt] = (badMac[macAt] as number) ^ 0x80;
    await assert.rejects(e.readRange(bufferSource(badMac), 3 * size, 3 * size, { context }), isDecryptionFailed);
  });

  test("a header renamed to a signing key fails as decryption_failed, like any other damage", async () => {
    const e = new Envelope({ kms, cache: false });
    const message = await e.encrypt(Buffer.from("hello"), { key: "storage", context });
    const forged = renamed(message, "signing");
    await assert.rejects(e.decrypt(forged, { context }), isDecryptionFailed);
    await assert.rejects(e.readRange(bufferSource(forged), 0, 0, { context }), isDecryptionFailed);
    const streamed = await collect(Readable.from([forged]), e.decryptStream({ context }));
    assert.ok(isDecryptionFailed(streamed.error), String(streamed.error));
  });

  test("a message under a disabled key says key_disabled: the key's state, not damage to the message", async () => {
    await f.kms.createKey(alice, { name: "paused", purpose: "encrypt" });
    const e = new Envelope({ kms, cache: false });
    const message = await e.encrypt(Buffer.from("hello"), { key: "paused", context });
    await f.kms.disableKey(alice, "paused");
    await assert.rejects(e.decrypt(message, { context }), { code: "key_disabled" });
    await assert.rejects(e.readRange(bufferSource(message), 0, 0, { context }), { code: "key_disabled" });
    const streamed = await collect(Readable.from([message]), e.decryptStream({ context }));
    assert.equal((streamed.error as { code?: string } | undefined)?.code, "key_disabled", String(streamed.error));
    await f.kms.enableKey(alice, "paused");
    assert.deepEqual(await e.decrypt(message, { context }), Buffer.from("hello"));
  });

  test("an unknown format version or suite is decryption_failed for buffers, streams and ranges", async () => {
    const e = new Envelope({ kms, cache: false });
    const message = await e.encrypt(randomBytes(40), { key: "storage", context });
    for (const [at, value] of [
      [7, 0x02],
      [7, 0x00],
      [8, 0x02],
    ] as const) {
      const future = Buffer.from(message);
      future[at] = value;
      await assert.rejects(e.decrypt(future, { context }), isDecryptionFailed, `byte ${at} = ${value}`);
      await assert.rejects(e.readRange(bufferSource(future), 0, 1, { context }), isDecryptionFailed);
      const streamed = await collect(Readable.from([future]), e.decryptStream({ context }));
      assert.ok(isDecryptionFailed(streamed.error), String(streamed.error));
      assert.equal(streamed.out.length, 0);
    }
  });

  test("a context given in another order decrypts; in another Unicode form it fails uniformly", async () => {
    const e = new Envelope({ kms, cache: false });
    const nfc = { "r\u00e9gion": "\u00eele", a: "1" };
    const message = await e.encrypt(Buffer.from("x"), { key: "storage", context: nfc });
    assert.deepEqual(await e.decrypt(message, { context: { a: "1", "r\u00e9gion": "\u00eele" } }), Buffer.from("x"));
    const nfd = { "re\u0301gion": "i\u0302le", a: "1" };
    assert.equal(nfd["re\u0301gion"].normalize("NFC"), nfc["r\u00e9gion"]);
    await assert.rejects(e.decrypt(message, { context: nfd }), isDecryptionFailed);
  });

  test("a key name and a context at the document's limits go through buffers, streams and ranges", async () => {
    const longName = `k${"x".repeat(127)}`;
    await f.kms.createKey(alice, { name: longName, purpose: "encrypt" });
    // 64 entries; keys and values of 256 UTF-16 code units, an emoji counting 2: a header far past one 4 KiB read.
    const big: Record<string, string> = {};
    for (let i = 0; i < 64; i++) big[`${String(i).padStart(2, "0")}${"\u{1F600}".repeat(127)}`] = "\u00e9".repeat(256);
    const e = new Envelope({ kms, chunkSize: 7, cache: false });
    const plaintext = randomBytes(20);
    const message = await e.encrypt(plaintext, { key: longName, context: big });
    const h = docParse(message);
    assert.equal(h.keyName, longName);
    assert.deepEqual(h.contextBytes, docContext(big));
    assert.ok(h.length > 64 * 1024);
    assert.deepEqual(docDecrypt(message, await dataKeyOf(message, big)).plaintext, plaintext);
    assert.deepEqual(await e.readRange(bufferSource(message), 7, 14, { context: big }), plaintext.subarray(7, 14));
    const streamed = await collect(Readable.from([message]), e.decryptStream({ context: big }));
    assert.deepEqual(streamed.out, plaintext);
    const tooLong = { ...big };
    delete tooLong[Object.keys(big)[0] as string];
    tooLong.z = `${"\u{1F600}".repeat(128)}a`;
    await assert.rejects(e.encrypt(plaintext, { key: longName, context: tooLong }), { code: "invalid_request" });
    await assert.rejects(e.encrypt(plaintext, { key: `${longName}y`, context: {} }), { code: "invalid_request" });
  });

  test("the data-key cache is keyed by key name and context, order aside", async () => {
    const writer = new Envelope({ kms });
    const one = await writer.encrypt(Buffer.from("1"), { key: "storage", context: { a: "1", b: "2" } });
    const two = await writer.encrypt(Buffer.from("2"), { key: "storage", context: { b: "2", a: "1" } });
    assert.equal(writer.kmsCalls, 1, "the same context in another order is the same cache entry");
    assert.equal(docParse(one).wrapped, docParse(two).wrapped);

    const reader = new Envelope({ kms });
    await reader.decrypt(one, { context: { a: "1", b: "2" } });
    await reader.decrypt(two, { context: { b: "2", a: "1" } });
    assert.equal(reader.kmsCalls, 1);
    // The same wrapped data key under a header that states another context: the cache must not answer for it.
    const forged = Buffer.from(one);
    const valueAt = forged.indexOf(Buffer.from("\x00\x00\x00\x012\x00", "latin1")) + 4;
    forged[valueAt] = "3".charCodeAt(0);
    await assert.rejects(reader.decrypt(forged, { context: { a: "1", b: "3" } }), isDecryptionFailed);
    assert.equal(reader.kmsCalls, 2, "another context is another KMS call");
    writer.close();
    reader.close();
  });

  test("every data key the KMS hands over is zeroed: at once without a cache, on eviction or close() with one", async () => {
    const given: Secret[] = [];
    const recording: EnvelopeKms = {
      generateDataKey: async (name, ctx) => {
        const key = await kms.generateDataKey(name, ctx);
        given.push(key.plaintext);
        return key;
      },
      decryptDataKey: async (name, wrapped, ctx) => {
        const key = await kms.decryptDataKey(name, wrapped, ctx);
        given.push(key.plaintext);
        return key;
      },
      rewrapDataKeys: (name, items) => kms.rewrapDataKeys(name, items),
    };
    const direct = new Envelope({ kms: recording, cache: false });
    const message = await direct.encrypt(Buffer.from("x"), { key: "storage", context });
    await direct.decrypt(message, { context });
    await collect(Readable.from([message]), direct.decryptStream({ context }));
    assert.equal(given.length, 3);
    assert.ok(
      given.every((s) => s.destroyed),
      "no cache: zeroed as soon as the message has its keys",
    );

    given.length = 0;
    const cached = new Envelope({ kms: recording, cache: { maxMessages: 1 } });
    await cached.encrypt(Buffer.from("1"), { key: "storage", context });
    await cached.encrypt(Buffer.from("2"), { key: "storage", context });
    await cached.decrypt(message, { context });
    assert.deepEqual(
      given.map((s) => s.destroyed),
      [true, false, false],
      "the used-up key is zeroed when it is replaced",
    );
    assert.equal(inspect(cached, { showHidden: true, depth: 10 }).includes("Secret"), false);
    cached.close();
    assert.ok(
      given.every((s) => s.destroyed),
      "close() zeroes the rest",
    );
  });

  test("cache limits hold exactly at the boundary, and streams count their bytes", async () => {
    const e = new Envelope({ kms, cache: { maxBytes: 1000 } });
    const streamed = await collect(Readable.from([randomBytes(999)]), e.encryptStream({ key: "storage", context }));
    const a = await e.encrypt(Buffer.alloc(1), { key: "storage", context }); // 999 < 1000: same key
    const b = await e.encrypt(Buffer.alloc(1), { key: "storage", context }); // 1000 reached: a new key
    assert.equal(e.kmsCalls, 2);
    assert.equal(docParse(a).wrapped, docParse(streamed.out).wrapped);
    assert.notEqual(docParse(b).wrapped, docParse(a).wrapped);

    const once = new Envelope({ kms, cache: { maxMessages: 1 } });
    const wrapped = new Set<string>();
    for (let i = 0; i < 3; i++) wrapped.add(docParse(await once.encrypt(Buffer.alloc(1), { key: "storage" })).wrapped);
    assert.equal(once.kmsCalls, 3);
    assert.equal(wrapped.size, 3, "one message per data key");
    e.close();
    once.close();
  });
});

// ---------------------------------------------------------------------------------------------------------------------
// The CLI against a real Custos server
// ---------------------------------------------------------------------------------------------------------------------

describe("custos file and custos storage rewrap", () => {
  let custos: CustosInstance;
  let work: string;
  const context = ["--context", "app=photos"];

  before(async () => {
    custos = await startCustos();
    work = mkdtempSync(join(tmpdir(), "custos-envelope-conformance-"));
    for (const name of ["storage", "spare"]) {
      const created = custos.cli(["key", "create", name]);
      assert.equal(created.status, 0, created.stderr);
    }
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

  /** An envelope file at `path`, made by the CLI, and its plaintext. */
  function encryptedFile(path: string, plaintext = randomBytes(1000), key = "storage"): Buffer {
    writeFileSync(`${path}.plain`, plaintext);
    ok(["file", "encrypt", "--key", key, ...context, "--chunk-size", "64", "--in", `${path}.plain`, "--out", path]);
    return plaintext;
  }

  const versionOf = (path: string) => docParse(readFileSync(path)).keyVersion;

  test("file decrypt --offset/--length: start = size is empty, past it invalid_request, end past it clamped", () => {
    const path = join(work, "ranges");
    const plaintext = encryptedFile(path, randomBytes(200));
    const range = (offset: number, length?: number) =>
      custos.cli([
        "file",
        "decrypt",
        ...context,
        "--in",
        path,
        "--offset",
        String(offset),
        ...(length === undefined ? [] : ["--length", String(length)]),
      ]);
    assert.deepEqual(range(192).stdoutBytes, plaintext.subarray(192), "the last chunk");
    assert.deepEqual(range(64, 64).stdoutBytes, plaintext.subarray(64, 128), "exactly one chunk");
    const atEnd = range(200);
    assert.equal(atEnd.status, 0, atEnd.stderr);
    assert.equal(atEnd.stdoutBytes.length, 0);
    assert.deepEqual(range(150, 1000).stdoutBytes, plaintext.subarray(150));
    const past = range(201, 1);
    assert.equal(past.status, 1);
    assert.match(past.stderr, /error: invalid_request/, "a wrong question, not a damaged message");
  });

  test("file decrypt --length larger than any file is clamped to the end", () => {
    const path = join(work, "huge-length");
    const plaintext = encryptedFile(path, randomBytes(100));
    const r = custos.cli([
      "file",
      "decrypt",
      ...context,
      "--in",
      path,
      "--offset",
      "10",
      "--length",
      String(Number.MAX_SAFE_INTEGER),
    ]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(r.stdoutBytes, plaintext.subarray(10));
  });

  test("file inspect shows the header's fields and no key material", async () => {
    const path = join(work, "inspect-me");
    const plaintext = encryptedFile(path, randomBytes(130));
    const h = docParse(readFileSync(path));
    const shown = ok(["--json", "file", "inspect", "--in", path]).stdout;
    const fields = JSON.parse(shown);
    assert.equal(fields.key, "storage");
    assert.equal(fields.keyVersion, h.keyVersion);
    assert.deepEqual(fields.context, { app: "photos" });
    assert.equal(fields.chunkSize, 64);
    assert.equal(fields.headerBytes, h.length);
    assert.equal(fields.plaintextBytes, plaintext.length);
    assert.equal(fields.chunks, 3);
    const answer = await custos.call("POST", "/v1/keys/storage/decrypt", {
      ciphertext: h.wrapped,
      context: { app: "photos" },
    });
    const dataKey = Buffer.from((answer.body as { plaintext: string }).plaintext, "base64");
    assert.equal(dataKey.length, 32);
    const keys = docKeys(dataKey, h.messageId);
    const human = ok(["file", "inspect", "--in", path]).stdout;
    for (const secret of [dataKey, keys.content, keys.mac]) {
      for (const text of [shown, human]) {
        assert.ok(!text.includes(secret.toString("hex")) && !text.includes(secret.toString("base64")));
      }
    }
  });

  test("file rewrap keeps the file's mode", () => {
    for (const mode of [0o640, 0o400]) {
      const path = join(work, `mode-${mode.toString(8)}`);
      const plaintext = encryptedFile(path);
      chmodSync(path, mode);
      const before = versionOf(path);
      ok(["key", "rotate", "storage"]);
      ok(["file", "rewrap", path]);
      assert.equal(versionOf(path), before + 1);
      assert.equal(statSync(path).mode & 0o7777, mode);
      assert.deepEqual(ok(["file", "decrypt", ...context, "--in", path]).stdoutBytes, plaintext);
    }
  });

  test("file rewrap by its owner of a read-only file in a directory they own", () => {
    // Storage layers often keep objects read-only (0444). The owner may replace it (the directory is theirs),
    // but root, which runs the rest of this suite, would not notice a permission problem: run as nobody.
    const dir = join(work, "nobody");
    mkdirSync(dir);
    const path = join(dir, "object");
    encryptedFile(path);
    const caFile = join(work, "ca.pem");
    writeFileSync(caFile, custos.ca);
    chmodSync(work, 0o755);
    for (const p of [dir, path]) chownSync(p, 65534, 65534);
    chmodSync(path, 0o444);
    ok(["key", "rotate", "storage"]);
    const before = versionOf(path);
    const r = spawnSync(process.execPath, [join(ROOT, "bin/custos.js"), "file", "rewrap", path], {
      env: {
        PATH: process.env.PATH,
        HOME: dir,
        CUSTOS_ADDR: custos.url,
        CUSTOS_CACERT: caFile,
        CUSTOS_TOKEN: custos.adminToken,
      },
      uid: 65534,
      gid: 65534,
      encoding: "utf8",
      timeout: 120_000,
    });
    assert.deepEqual(readdirSync(dir).sort(), ["object", "object.plain"], "no temporary file left, whatever happened");
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    assert.equal(versionOf(path), before + 1);
    assert.equal(statSync(path).mode & 0o7777, 0o444);
  });

  test("file rewrap of a symbolic link rewraps the file it points to and keeps the link", () => {
    const target = join(work, "link-target");
    const link = join(work, "link");
    encryptedFile(target);
    symlinkSync(target, link);
    const before = versionOf(target);
    ok(["key", "rotate", "storage"]);
    const r = custos.cli(["file", "rewrap", link]);
    assert.equal(lstatSync(link).isSymbolicLink(), true, "the link is still a link");
    assert.equal(readlinkSync(link), target);
    assert.equal(versionOf(target), before + 1, `the message behind the link moved (${r.stdout.trim()})`);
  });

  test("file rewrap refuses a FIFO at once and a hard-linked file, whose other name a rename would leave behind", () => {
    const fifo = join(work, "fifo");
    execFileSync("mkfifo", [fifo]);
    const piped = custos.cli(["file", "rewrap", fifo]);
    assert.equal(piped.status, 1, piped.stderr);
    assert.match(piped.stdout, /fifo: failed: invalid_request: not a regular file/);
    const inspected = custos.cli(["file", "inspect", "--in", fifo]);
    assert.match(inspected.stderr, /cannot read .*fifo: not a regular file/);

    const path = join(work, "linked");
    encryptedFile(path);
    linkSync(path, `${path}-twin`);
    const message = readFileSync(path);
    ok(["key", "rotate", "storage"]);
    const linked = custos.cli(["file", "rewrap", path]);
    assert.equal(linked.status, 1, linked.stderr);
    assert.match(linked.stdout, /linked: failed: invalid_request: the file has 2 hard links/);
    assert.deepEqual(readFileSync(path), message);
    assert.equal(statSync(path).ino, statSync(`${path}-twin`).ino, "still one file under two names");
  });

  test("a rewrap the KMS refuses and an encryption under an unknown key leave files as they were, nothing beside", () => {
    const dir = join(work, "leftovers");
    mkdirSync(dir);
    const path = join(dir, "unknown-key");
    encryptedFile(path, randomBytes(10), "spare");
    const message = readFileSync(path);
    writeFileSync(path, renamed(message, "missing"));
    const forged = readFileSync(path);
    const r = custos.cli(["file", "rewrap", path]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stdout, /unknown-key: failed: not_found/);
    assert.deepEqual(readFileSync(path), forged);
    const enc = custos.cli(["file", "encrypt", "--key", "absent", "--in", `${path}.plain`, "--out", join(dir, "out")]);
    assert.equal(enc.status, 1, enc.stderr);
    assert.deepEqual(readdirSync(dir).sort(), ["unknown-key", "unknown-key.plain"]);
  });

  test("storage rewrap names a file under an unknown key and another of a future version, rewraps the rest, exits 1", () => {
    const dir = join(work, "tree");
    mkdirSync(join(dir, "sub"), { recursive: true });
    const good = [join(dir, "a"), join(dir, "sub", "b")];
    const plaintexts = good.map((p) => encryptedFile(p));
    for (const p of good) writeFileSync(`${p}.plain`, ""); // plain files: "not envelope", not failures
    const unknown = join(dir, "sub", "unknown");
    encryptedFile(unknown);
    writeFileSync(unknown, renamed(readFileSync(unknown), "missing"));
    const future = join(dir, "future");
    encryptedFile(future);
    const bytes = readFileSync(future);
    bytes[7] = 0x02;
    writeFileSync(future, bytes);
    const before = good.map(versionOf);
    ok(["key", "rotate", "storage"]);

    const r = custos.cli(["--json", "storage", "rewrap", dir]);
    assert.equal(r.status, 1, r.stderr);
    const summary = JSON.parse(r.stdout);
    assert.equal(summary.rewrapped, 2);
    assert.equal(summary.failed, 2);
    assert.deepEqual(summary.failures.map((x: { path: string }) => x.path).sort(), [future, unknown].sort());
    assert.deepEqual(
      good.map(versionOf),
      before.map((v) => v + 1),
    );
    good.forEach((p, i) => {
      assert.deepEqual(ok(["file", "decrypt", ...context, "--in", p]).stdoutBytes, plaintexts[i]);
    });
  });

  test("storage rewrap leaves a symbolic link to a file outside the tree, and that file, alone", () => {
    const outside = join(work, "outside");
    encryptedFile(outside);
    const dir = join(work, "linked-tree");
    mkdirSync(dir);
    const inside = join(dir, "inside");
    encryptedFile(inside);
    symlinkSync(outside, join(dir, "escape"));
    const before = readFileSync(outside);
    ok(["key", "rotate", "storage"]);
    const r = custos.cli(["--json", "storage", "rewrap", dir]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(readFileSync(outside), before, "the file outside the tree is untouched");
    assert.ok(lstatSync(join(dir, "escape")).isSymbolicLink());
    assert.equal(versionOf(inside), docParse(before).keyVersion + 1);
  });
});
