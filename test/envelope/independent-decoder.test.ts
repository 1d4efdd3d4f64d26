/**
 * A second decoder for the envelope format, written from docs/envelope-format.md alone, run against the vectors at the
 * end of that document. It imports nothing from src/ on purpose: when the library's vectors pass through a decoder
 * that only knows the document, the document is complete enough to implement, and the library follows it.
 */
import assert from "node:assert/strict";
import { createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

// ---------------------------------------------------------------------------------------------------------------------
// The decoder
// ---------------------------------------------------------------------------------------------------------------------

const MAGIC = Buffer.from("CUSTENV", "ascii");
const FORMAT_VERSION = 0x01;
const SUITE = 0x01;
const HKDF_INFO = Buffer.concat([MAGIC, Buffer.from([FORMAT_VERSION, SUITE])]);
const TAG_BYTES = 16;
const MAX_CHUNK_SIZE = 16 * 1024 * 1024;
const MAX_CONTEXT_ENTRIES = 64;
const MAX_CONTEXT_CHARS = 256;
const MAX_KEY_NAME = 128;
const MAX_WRAPPED = 1024;
const KEY_NAME = /^[a-zA-Z0-9][a-zA-Z0-9._-]*$/;

type Context = Record<string, string>;
type RawEntry = [Buffer | string, Buffer | string];

/** The document allows one error and no detail, whatever the damage. */
class DecryptionFailed extends Error {
  constructor() {
    super("decryption_failed");
  }
}

function fail(): never {
  throw new DecryptionFailed();
}

interface Header {
  keyName: string;
  /** In header order, which the parser has checked is the one canonical order. */
  context: [string, string][];
  contextBytes: Buffer;
  chunkSize: number;
  noncePrefix: Buffer;
  messageId: Buffer;
  commitment: Buffer;
  mac: Buffer;
  /** Magic through commitment: exactly what the header MAC covers. */
  bound: Buffer;
  keyVersion: number;
  wrappedKey: Buffer;
  /** Where the fields that the MAC does not cover start: only the KMS protects them. */
  keyVersionAt: number;
  wrappedLengthAt: number;
  wrappedKeyAt: number;
  length: number;
}

class Reader {
  at = 0;
  constructor(private readonly buf: Buffer) {}

  bytes(n: number): Buffer {
    if (n > this.buf.length - this.at) fail();
    const out = this.buf.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }
  u8(): number {
    return this.bytes(1).readUInt8(0);
  }
  u16(): number {
    return this.bytes(2).readUInt16BE(0);
  }
  u32(): number {
    return this.bytes(4).readUInt32BE(0);
  }
}

// ignoreBOM: a leading U+FEFF is a character of the text; stripping it would give one context two spellings.
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** "1 to 256 characters of well-formed Unicode … counted as UTF-16 code units". */
function contextText(bytes: Buffer): string {
  // No code point takes more than 4 bytes: refuse a huge length before decoding it.
  if (bytes.length > 4 * MAX_CONTEXT_CHARS) fail();
  let text: string;
  try {
    text = strictUtf8.decode(bytes);
  } catch {
    fail();
  }
  const chars = text.length;
  if (chars < 1 || chars > MAX_CONTEXT_CHARS) fail();
  return text;
}

function parseContext(r: Reader): [string, string][] {
  const count = r.u32();
  if (count > MAX_CONTEXT_ENTRIES) fail();
  const entries: [string, string][] = [];
  let previous: Buffer | undefined;
  for (let i = 0; i < count; i++) {
    const key = r.bytes(r.u32());
    // Strictly ascending bytes: keys are distinct and the encoding of a context is unique.
    if (previous && Buffer.compare(previous, key) >= 0) fail();
    previous = key;
    entries.push([contextText(key), contextText(r.bytes(r.u32()))]);
  }
  return entries;
}

function parseHeader(message: Buffer): Header {
  const r = new Reader(message);
  if (!r.bytes(MAGIC.length).equals(MAGIC)) fail();
  if (r.u8() !== FORMAT_VERSION || r.u8() !== SUITE) fail();
  const nameLength = r.u16();
  if (nameLength < 1 || nameLength > MAX_KEY_NAME) fail();
  // latin1 keeps one character per byte, so a non-ASCII byte can't slip past the ASCII-only pattern.
  const keyName = r.bytes(nameLength).toString("latin1");
  if (!KEY_NAME.test(keyName)) fail();
  const contextAt = r.at;
  const context = parseContext(r);
  const contextBytes = message.subarray(contextAt, r.at);
  const chunkSize = r.u32();
  if (chunkSize < 1 || chunkSize > MAX_CHUNK_SIZE) fail();
  const noncePrefix = r.bytes(7);
  const messageId = r.bytes(32);
  const commitment = r.bytes(32);
  const bound = message.subarray(0, r.at);
  const mac = r.bytes(32);
  const keyVersionAt = r.at;
  const keyVersion = r.u32();
  if (keyVersion < 1) fail();
  const wrappedLengthAt = r.at;
  const wrappedLength = r.u16();
  if (wrappedLength < 1 || wrappedLength > MAX_WRAPPED) fail();
  const wrappedKeyAt = r.at;
  const wrappedKey = r.bytes(wrappedLength);
  if (wrappedKey.some((b) => b > 0x7f)) fail();
  return {
    keyName,
    context,
    contextBytes,
    chunkSize,
    noncePrefix,
    messageId,
    commitment,
    mac,
    bound,
    keyVersion,
    wrappedKey,
    keyVersionAt,
    wrappedLengthAt,
    wrappedKeyAt,
    length: r.at,
  };
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

/** Writes entries as given, valid or not, so that tests can also spell contexts the parser must refuse. */
function rawContext(entries: RawEntry[]): Buffer {
  const parts = [u32(entries.length)];
  for (const [key, value] of entries) {
    for (const text of [key, value]) {
      const bytes = Buffer.from(text);
      parts.push(u32(bytes.length), bytes);
    }
  }
  return Buffer.concat(parts);
}

/** The one canonical spelling of a context, to compare with the header's bytes. */
function encodeContext(context: Context): Buffer {
  const entries = Object.entries(context).map(([key, value]): [Buffer, Buffer] => [utf8Of(key), utf8Of(value)]);
  if (entries.length > MAX_CONTEXT_ENTRIES) fail();
  entries.sort((a, b) => Buffer.compare(a[0], b[0]));
  return rawContext(entries);
}

/** Buffer.from would turn a lone surrogate into U+FFFD and so match a header that really holds U+FFFD. */
function utf8Of(text: string): Buffer {
  const bytes = Buffer.from(text, "utf8");
  if (contextText(bytes) !== text) fail();
  return bytes;
}

interface DerivedKeys {
  contentKey: Buffer;
  macKey: Buffer;
  commitment: Buffer;
}

function deriveKeys(dataKey: Buffer, messageId: Buffer): DerivedKeys {
  if (dataKey.length !== 32) fail();
  const okm = Buffer.from(hkdfSync("sha256", dataKey, messageId, HKDF_INFO, 96));
  return { contentKey: okm.subarray(0, 32), macKey: okm.subarray(32, 64), commitment: okm.subarray(64, 96) };
}

interface DecodeOptions {
  /** What the KMS would return on unwrapping: this decoder has no KMS. */
  dataKey: Buffer;
  /** The context the caller expects. */
  context: Context;
  /** The key version the KMS reported when it unwrapped the data key. */
  keyVersion: number;
}

interface Opened {
  header: Header;
  keys: DerivedKeys;
  chunkCount: number;
  lastChunkBytes: number;
  plaintextLength: number;
}

/** Steps 1–3 of "Decrypting", then the body-length check that a byte range needs before it picks chunks. */
function open(message: Buffer, options: DecodeOptions): Opened {
  const header = parseHeader(message);
  if (!encodeContext(options.context).equals(header.contextBytes)) fail();
  if (header.keyVersion !== options.keyVersion) fail();
  const keys = deriveKeys(options.dataKey, header.messageId);
  if (!timingSafeEqual(keys.commitment, header.commitment)) fail();
  const mac = createHmac("sha256", keys.macKey).update(header.bound).digest();
  if (!timingSafeEqual(mac, header.mac)) fail();

  const body = message.length - header.length;
  const stride = header.chunkSize + TAG_BYTES;
  const chunkCount = Math.ceil(body / stride);
  if (chunkCount < 1 || chunkCount > 2 ** 32) fail();
  const lastChunkBytes = body - (chunkCount - 1) * stride;
  // An empty last chunk after full ones would give one plaintext two chunkings.
  if (lastChunkBytes < TAG_BYTES || (chunkCount > 1 && lastChunkBytes < TAG_BYTES + 1)) fail();
  const plaintextLength = (chunkCount - 1) * header.chunkSize + lastChunkBytes - TAG_BYTES;
  return { header, keys, chunkCount, lastChunkBytes, plaintextLength };
}

function decryptChunk(message: Buffer, opened: Opened, index: number): Buffer {
  const { header, chunkCount, lastChunkBytes } = opened;
  const stride = header.chunkSize + TAG_BYTES;
  const start = header.length + index * stride;
  const last = index === chunkCount - 1;
  const sealed = message.subarray(start, start + (last ? lastChunkBytes : stride));
  // The index and the last flag in the nonce are what make reordering, dropping and cutting fail a tag.
  const nonce = Buffer.concat([header.noncePrefix, u32(index), Buffer.from([last ? 0x01 : 0x00])]);
  const decipher = createDecipheriv("aes-256-gcm", opened.keys.contentKey, nonce, { authTagLength: TAG_BYTES });
  decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
  const plain = decipher.update(sealed.subarray(0, sealed.length - TAG_BYTES));
  try {
    return Buffer.concat([plain, decipher.final()]);
  } catch {
    fail();
  }
}

function decode(message: Buffer, options: DecodeOptions): Buffer {
  const opened = open(message, options);
  const chunks: Buffer[] = [];
  for (let i = 0; i < opened.chunkCount; i++) chunks.push(decryptChunk(message, opened, i));
  return Buffer.concat(chunks);
}

/** Plaintext bytes [start, end), decrypting only the chunks that hold them. */
function decodeRange(
  message: Buffer,
  options: DecodeOptions,
  start: number,
  end: number,
  onChunk?: (index: number) => void,
): Buffer {
  const opened = open(message, options);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || start > end) {
    throw new RangeError(`bad range [${start}, ${end})`);
  }
  if (end > opened.plaintextLength) throw new RangeError(`[${start}, ${end}) ends past ${opened.plaintextLength}`);
  // Taken literally, floor(a / S) .. floor((b - 1) / S) names one chunk for an empty range inside a chunk; it needs none.
  if (start === end) return Buffer.alloc(0);
  const size = opened.header.chunkSize;
  const first = Math.floor(start / size);
  const last = Math.floor((end - 1) / size);
  const parts: Buffer[] = [];
  for (let i = first; i <= last; i++) {
    onChunk?.(i);
    parts.push(decryptChunk(message, opened, i));
  }
  return Buffer.concat(parts).subarray(start - first * size, end - first * size);
}

// ---------------------------------------------------------------------------------------------------------------------
// The vectors
// ---------------------------------------------------------------------------------------------------------------------

interface Vector {
  name: string;
  keyName: string;
  keyVersion: number;
  chunkSize: number;
  context: Context;
  dataKey: string;
  plaintext: string;
  message: string;
  contentKey: string;
  macKey: string;
  commitment: string;
}

const DOC = new URL("../../docs/envelope-format.md", import.meta.url);
const VECTORS_MARKER = "<!-- vectors:";

function readVectors(): Vector[] {
  const doc = readFileSync(DOC, "utf8");
  const at = doc.indexOf(VECTORS_MARKER);
  if (at < 0) return [];
  const blocks = doc.slice(at).matchAll(/^```json[ \t]*\r?\n([\s\S]*?)^```[ \t]*$/gm);
  return [...blocks].map((m) => JSON.parse(m[1]!) as Vector);
}

function checkShape(v: Vector): void {
  const hex = /^(?:[0-9a-fA-F]{2})*$/;
  assert.equal(typeof v.name, "string");
  assert.equal(typeof v.keyName, "string");
  assert.ok(Number.isSafeInteger(v.keyVersion), "keyVersion");
  assert.ok(Number.isSafeInteger(v.chunkSize), "chunkSize");
  assert.ok(v.context !== null && typeof v.context === "object" && !Array.isArray(v.context), "context");
  for (const value of Object.values(v.context)) assert.equal(typeof value, "string");
  for (const field of ["dataKey", "plaintext", "message", "contentKey", "macKey", "commitment"] as const) {
    assert.ok(typeof v[field] === "string" && hex.test(v[field]), `${field} is hex`);
  }
}

const isRefused = (e: unknown) => e instanceof DecryptionFailed;

function refused(fn: () => unknown, what: string): void {
  assert.throws(fn, isRefused, what);
}

function sameBytes(actual: Buffer, expected: Buffer, what: string): void {
  // assert.deepEqual would print megabytes on a mismatch.
  assert.ok(actual.equals(expected), `${what}: ${actual.length} bytes differ from the expected ${expected.length}`);
}

function flipBit(message: Buffer, at: number): Buffer {
  const damaged = Buffer.from(message);
  damaged[at]! ^= 1 << (at % 8);
  return damaged;
}

function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
}

/** Every byte of a small message; of a big one, every header byte and evenly spread body bytes. */
function flipPositions(length: number, headerLength: number): number[] {
  if (length <= 16 * 1024) return range(0, length);
  const samples = 128;
  const body = length - headerLength;
  const spread = range(0, samples).map((i) => headerLength + Math.floor((i * (body - 1)) / (samples - 1)));
  return [...new Set([...range(0, headerLength), ...spread])];
}

function chunksOf(message: Buffer, opened: Opened): Buffer[] {
  const stride = opened.header.chunkSize + TAG_BYTES;
  return range(0, opened.chunkCount).map((i) =>
    message.subarray(opened.header.length + i * stride, opened.header.length + (i + 1) * stride),
  );
}

const vectors = readVectors();

test("the document holds at least 4 vectors after the vectors comment", () => {
  assert.ok(vectors.length >= 4, `found ${vectors.length} json blocks after ${VECTORS_MARKER} in ${DOC.pathname}`);
  assert.equal(new Set(vectors.map((v) => v.name)).size, vectors.length, "vector names are distinct");
});

for (const v of vectors) {
  describe(`vector ${v.name}`, () => {
    const dataKey = Buffer.from(v.dataKey, "hex");
    const plaintext = Buffer.from(v.plaintext, "hex");
    const message = Buffer.from(v.message, "hex");
    const options: DecodeOptions = { dataKey, context: v.context, keyVersion: v.keyVersion };

    test("decodes to the plaintext, with the header fields and derived keys the vector states", () => {
      checkShape(v);
      sameBytes(decode(message, options), plaintext, "plaintext");
      const opened = open(message, options);
      const { header, keys } = opened;
      assert.equal(header.keyName, v.keyName);
      assert.equal(header.keyVersion, v.keyVersion);
      assert.equal(header.chunkSize, v.chunkSize);
      const sorted = Object.entries(v.context).sort((a, b) => Buffer.compare(Buffer.from(a[0]), Buffer.from(b[0])));
      assert.deepEqual(header.context, sorted);
      assert.equal(keys.contentKey.toString("hex"), v.contentKey.toLowerCase());
      assert.equal(keys.macKey.toString("hex"), v.macKey.toLowerCase());
      assert.equal(keys.commitment.toString("hex"), v.commitment.toLowerCase());
      assert.equal(header.commitment.toString("hex"), v.commitment.toLowerCase());
      assert.equal(opened.plaintextLength, plaintext.length);
      assert.equal(opened.chunkCount, Math.max(1, Math.ceil(plaintext.length / v.chunkSize)), "n = max(1, ceil(L/S))");
    });

    test("byte ranges decode to slices of the plaintext, decrypting only the chunks that hold them", () => {
      const total = plaintext.length;
      const size = v.chunkSize;
      const half = Math.floor(total / 2);
      const ranges: [number, number][] = [
        [0, 0],
        [0, Math.min(total, 1)],
        [0, Math.min(total, 7)],
        [Math.floor(total / 3), Math.floor((2 * total) / 3)],
        [half, half],
        [Math.max(0, total - 1), total],
        [total, total],
        [0, total],
      ];
      if (total > size) ranges.push([size - 1, size + 1], [size, size]);
      if (total > 2 * size) ranges.push([size - 1, 2 * size + 1]);
      if (total > 2 * size && size > 2) ranges.push([size + 1, 2 * size - 1]);
      for (const [a, b] of ranges) {
        const decrypted: number[] = [];
        sameBytes(
          decodeRange(message, options, a, b, (i) => decrypted.push(i)),
          plaintext.subarray(a, b),
          `[${a}, ${b})`,
        );
        const needed = a === b ? [] : range(Math.floor(a / size), Math.floor((b - 1) / size) + 1);
        assert.deepEqual(decrypted, needed, `chunks decrypted for [${a}, ${b})`);
      }
      assert.throws(() => decodeRange(message, options, 0, total + 1), RangeError);
      assert.throws(() => decodeRange(message, options, 1, 0), RangeError);
      // Steps 1–3 come first, so header damage stops a range whatever chunks it needs.
      const keyNameAt = MAGIC.length + 4;
      refused(() => decodeRange(flipBit(message, keyNameAt), options, 0, 0), "damaged key name");
      refused(() => decodeRange(message, { ...options, context: { ...v.context, extra: "1" } }, 0, 0), "context");
    });

    test("a flipped bit is refused anywhere the decoder can see it", () => {
      const header = parseHeader(message);
      const positions = flipPositions(message.length, header.length);
      if (message.length > 16 * 1024) assert.ok(positions.length - header.length >= 64, "at least 64 body positions");
      for (const at of positions) {
        const damaged = flipBit(message, at);
        if (at >= header.wrappedKeyAt && at < header.length) {
          // The MAC does not cover the wrapped data key; the KMS detects damage to it (it is AES-GCM with the context
          // as AAD), and this decoder has no KMS. So instead of expecting a refusal, show that the KMS would be handed
          // different bytes, and that a flip to a non-ASCII byte is refused on its own.
          if (damaged[at]! > 0x7f) refused(() => parseHeader(damaged), `non-ASCII wrapped key at byte ${at}`);
          else assert.notDeepEqual(parseHeader(damaged).wrappedKey, header.wrappedKey);
          continue;
        }
        refused(() => decode(damaged, options), `bit flipped at byte ${at}`);
        if (at >= header.keyVersionAt && at < header.wrappedLengthAt) {
          // Nor does the MAC cover the key version: the only thing that catches it is the version the KMS reports.
          const parsed = damaged.readUInt32BE(header.keyVersionAt);
          if (parsed >= 1) sameBytes(decode(damaged, { ...options, keyVersion: parsed }), plaintext, "version check");
        }
      }
    });

    test("a message cut short or extended is refused", () => {
      const opened = open(message, options);
      const stride = v.chunkSize + TAG_BYTES;
      const start = opened.header.length;
      const cuts = new Set([0, 1, MAGIC.length, start - 1, start, start + TAG_BYTES - 1, start + TAG_BYTES]);
      for (let i = 1; i < opened.chunkCount; i++) cuts.add(start + i * stride);
      cuts.add(start + (opened.chunkCount - 1) * stride + Math.floor(opened.lastChunkBytes / 2));
      cuts.add(message.length - 1);
      for (const cut of cuts) {
        if (cut < message.length) refused(() => decode(message.subarray(0, cut), options), `cut at ${cut}`);
      }
      const chunks = chunksOf(message, opened);
      refused(() => decode(Buffer.concat([message, Buffer.from([0])]), options), "one byte appended");
      refused(() => decode(Buffer.concat([message, chunks.at(-1)!]), options), "last chunk appended again");
    });

    test("reordered, dropped or duplicated chunks are refused", (t) => {
      const opened = open(message, options);
      const head = message.subarray(0, opened.header.length);
      const chunks = chunksOf(message, opened);
      if (chunks.length < 2) {
        t.skip("a single chunk");
        return;
      }
      const [c0, c1, ...rest] = chunks as [Buffer, Buffer, ...Buffer[]];
      refused(() => decode(Buffer.concat([head, c1, c0, ...rest]), options), "chunks 0 and 1 swapped");
      refused(() => decode(Buffer.concat([head, c1, ...rest]), options), "chunk 0 dropped");
      refused(() => decode(Buffer.concat([head, c0, c0, c1, ...rest]), options), "chunk 0 twice");
      if (chunks.length >= 3) {
        const swapped = [...chunks.slice(0, -2), chunks.at(-1)!, chunks.at(-2)!];
        refused(() => decode(Buffer.concat([head, ...swapped]), options), "last two chunks swapped");
        refused(
          () => decode(Buffer.concat([head, ...chunks.slice(0, -2), chunks.at(-1)!]), options),
          "chunk n-2 dropped",
        );
      }
    });

    test("a wrong data key, context or key version is refused", () => {
      refused(() => decode(message, { ...options, dataKey: flipBit(dataKey, 5) }), "data key with a flipped bit");
      refused(() => decode(message, { ...options, dataKey: randomBytes(32) }), "random data key");
      refused(() => decode(message, { ...options, dataKey: dataKey.subarray(0, 31) }), "short data key");
      refused(() => decode(message, { ...options, keyVersion: v.keyVersion + 1 }), "KMS reports another version");

      let extra = "extra";
      while (Object.hasOwn(v.context, extra)) extra += "x";
      refused(() => decode(message, { ...options, context: { ...v.context, [extra]: "1" } }), "an added entry");
      const [first] = Object.entries(v.context);
      if (first) {
        const [key, value] = first;
        const changed = [...value].length < MAX_CONTEXT_CHARS ? `${value}x` : "x";
        refused(() => decode(message, { ...options, context: { ...v.context, [key]: changed } }), "a changed value");
        const { [key]: _, ...fewer } = v.context;
        refused(() => decode(message, { ...options, context: fewer }), "a missing entry");
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------------------------------
// Headers re-sealed with a vector's data key: the MAC passes, so only the parser's own checks stand in the way.
// ---------------------------------------------------------------------------------------------------------------------

interface HeaderFields {
  magic: Buffer;
  version: number;
  suite: number;
  keyName: Buffer;
  context: Buffer;
  chunkSize: number;
  noncePrefix: Buffer;
  messageId: Buffer;
  commitment: Buffer;
  keyVersion: number;
  wrappedKey: Buffer;
}

function sealHeader(f: HeaderFields, macKey: Buffer): Buffer {
  const bound = Buffer.concat([
    f.magic,
    Buffer.from([f.version, f.suite]),
    u16(f.keyName.length),
    f.keyName,
    f.context,
    u32(f.chunkSize),
    f.noncePrefix,
    f.messageId,
    f.commitment,
  ]);
  const mac = createHmac("sha256", macKey).update(bound).digest();
  return Buffer.concat([bound, mac, u32(f.keyVersion), u16(f.wrappedKey.length), f.wrappedKey]);
}

const base = vectors[0];
if (base) {
  describe(`headers re-sealed with the data key of vector ${base.name}`, () => {
    const dataKey = Buffer.from(base.dataKey, "hex");
    const message = Buffer.from(base.message, "hex");
    const plaintext = Buffer.from(base.plaintext, "hex");
    const header = parseHeader(message);
    const body = message.subarray(header.length);
    const { macKey } = deriveKeys(dataKey, header.messageId);
    const fields: HeaderFields = {
      magic: MAGIC,
      version: FORMAT_VERSION,
      suite: SUITE,
      keyName: Buffer.from(header.keyName, "latin1"),
      context: header.contextBytes,
      chunkSize: header.chunkSize,
      noncePrefix: header.noncePrefix,
      messageId: header.messageId,
      commitment: header.commitment,
      keyVersion: header.keyVersion,
      wrappedKey: header.wrappedKey,
    };
    const reseal = (change: Partial<HeaderFields>) =>
      Buffer.concat([sealHeader({ ...fields, ...change }, macKey), body]);
    const options: DecodeOptions = { dataKey, context: base.context, keyVersion: base.keyVersion };

    function accepted(change: Partial<HeaderFields>, context: Context, what: string): void {
      const keyVersion = change.keyVersion ?? options.keyVersion;
      sameBytes(decode(reseal(change), { dataKey, context, keyVersion }), plaintext, what);
    }

    function rejected(change: Partial<HeaderFields>, what: string): void {
      const resealed = reseal(change);
      // The parser alone must refuse it: a refusal from the context comparison would hide a lax parser.
      refused(() => parseHeader(resealed), what);
      refused(() => decode(resealed, { ...options, keyVersion: change.keyVersion ?? options.keyVersion }), what);
    }

    test("re-sealing the unchanged fields gives back the vector's message byte for byte", () => {
      sameBytes(reseal({}), message, "re-sealed message");
    });

    test("the edges of every range are accepted", () => {
      const many = Object.fromEntries(
        range(0, MAX_CONTEXT_ENTRIES).map((i) => [`k${String(i).padStart(2, "0")}`, "v"]),
      );
      accepted({ context: encodeContext(many) }, many, "64 entries");
      accepted({ context: rawContext([]) }, {}, "empty context");
      const long = { ["a".repeat(256)]: "b".repeat(256) };
      accepted({ context: encodeContext(long) }, long, "256-character key and value");
      // An emoji counts 2 UTF-16 units: 128 of them are the limit, 129 too many.
      const astral = { ["😀".repeat(128)]: "😀".repeat(128) };
      accepted({ context: encodeContext(astral) }, astral, "128 astral characters");
      // U+FF61 sorts before U+1F600 by UTF-8 bytes, after it by UTF-16 units (JavaScript's string order).
      const order = { "\u{1F600}": "b", "\uFF61": "a" };
      accepted(
        {
          context: rawContext([
            ["\uFF61", "a"],
            ["\u{1F600}", "b"],
          ]),
        },
        order,
        "UTF-8 byte order",
      );
      const bom = { k: "\uFEFFx" };
      accepted({ context: encodeContext(bom) }, bom, "a leading U+FEFF is kept");
      refused(() => decode(reseal({ context: encodeContext(bom) }), { ...options, context: { k: "x" } }), "BOM");
      accepted({ keyName: Buffer.from("a".repeat(MAX_KEY_NAME)) }, base.context, "128-character key name");
      accepted({ keyName: Buffer.from("A") }, base.context, "1-character key name");
      accepted({ keyName: Buffer.from("0a.b_c-d") }, base.context, "key name punctuation");
      accepted({ wrappedKey: Buffer.from("x") }, base.context, "1-byte wrapped key");
      accepted({ wrappedKey: Buffer.alloc(MAX_WRAPPED, "y") }, base.context, "1,024-byte wrapped key");
      accepted({ keyVersion: 0xffffffff }, base.context, "largest key version");
    });

    test("a well-MACed header outside the format is refused by the parser", () => {
      rejected({ magic: Buffer.from("CUSTENW") }, "magic");
      rejected({ version: 0x02 }, "format version");
      rejected({ suite: 0x02 }, "suite");
      rejected({ keyName: Buffer.alloc(0) }, "empty key name");
      rejected({ keyName: Buffer.from("a".repeat(MAX_KEY_NAME + 1)) }, "129-character key name");
      for (const name of ["-a", ".a", "_a", "a b", "a/b", "a:b", "caf\u00e9"]) {
        rejected({ keyName: Buffer.from(name, "latin1") }, `key name ${JSON.stringify(name)}`);
      }
      rejected({ keyName: Buffer.from("café", "utf8") }, "UTF-8 key name");
      rejected({ chunkSize: 0 }, "chunk size 0");
      rejected({ chunkSize: MAX_CHUNK_SIZE + 1 }, "chunk size over 16 MiB");
      rejected({ keyVersion: 0 }, "key version 0");
      rejected({ wrappedKey: Buffer.alloc(0) }, "empty wrapped key");
      rejected({ wrappedKey: Buffer.alloc(MAX_WRAPPED + 1, "y") }, "1,025-byte wrapped key");
      rejected({ wrappedKey: Buffer.from([0x63, 0xc3, 0xa9]) }, "non-ASCII wrapped key");
    });

    test("every spelling of a context but the canonical one is refused", () => {
      const tooMany = range(0, MAX_CONTEXT_ENTRIES + 1).map((i): RawEntry => [`k${String(i).padStart(2, "0")}`, "v"]);
      const cases: [RawEntry[], string][] = [
        [tooMany, "65 entries"],
        [
          [
            ["b", "1"],
            ["a", "2"],
          ],
          "keys out of order",
        ],
        [
          [
            ["\u{1F600}", "b"],
            ["\uFF61", "a"],
          ],
          "keys in UTF-16 order",
        ],
        [
          [
            ["a", "1"],
            ["a", "2"],
          ],
          "a repeated key",
        ],
        [[["", "1"]], "an empty key"],
        [[["a", ""]], "an empty value"],
        [[["a".repeat(257), "1"]], "a 257-character key"],
        [[["a", "b".repeat(257)]], "a 257-character value"],
        [[["a", "😀".repeat(129)]], "129 astral characters (258 UTF-16 units)"],
        [[["a", Buffer.from([0xff])]], "a byte that is never UTF-8"],
        [[["a", Buffer.from([0xc0, 0xaf])]], "an overlong encoding"],
        [[["a", Buffer.from([0xed, 0xa0, 0x80])]], "an encoded surrogate"],
        [[["a", Buffer.from([0xe2, 0x82])]], "a cut-off sequence"],
      ];
      for (const [entries, what] of cases) rejected({ context: rawContext(entries) }, what);
    });
  });
}
