/**
 * A third review of the envelope library and `custos file` / `custos storage rewrap`, as a storage layer uses them:
 * producers that reuse their buffers, pipelines that are aborted or stall, the data-key cache under concurrency,
 * files rewrapped while they are read or written, trees with odd entries, a Custos that restarts. Oracles: the
 * plaintext itself, docs/envelope-format.md read here (not through src/), the file system and the CLI's exit codes.
 * Covers what the files of the first two reviews leave out.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import {
  chmodSync,
  closeSync,
  createReadStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable, type Transform, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { after, before, describe, test } from "node:test";
import { CustosClient } from "../../src/client/index.js";
import { Envelope, type EnvelopeKms, fileSource, httpKms, rewrapFiles } from "../../src/envelope/index.js";
import { Secret } from "../../src/secret/index.js";
import { type CustosInstance, startCustos } from "../helpers/custos.js";
import { alice, type KmsFixture, openFixture } from "../kms/setup.js";
import { collect } from "./collect.js";
import { type CountingKms, serviceKms } from "./service-kms.js";

const TAG = 16;
const codeOf = (e: unknown) => (e as { code?: string } | undefined)?.code;

/** The header fields this file needs, read as docs/envelope-format.md lays them out. */
function docHeader(message: Buffer): { keyVersion: number; wrapped: string; length: number } {
  let at = 0;
  const take = (n: number) => {
    assert.ok(at + n <= message.length, "header runs past the message");
    at += n;
    return message.subarray(at - n, at);
  };
  assert.equal(take(9).toString("latin1"), "CUSTENV\x01\x01");
  take(take(2).readUInt16BE(0));
  const count = take(4).readUInt32BE(0);
  for (let i = 0; i < 2 * count; i++) take(take(4).readUInt32BE(0));
  take(4 + 7 + 32 + 32 + 32); // chunk size, nonce prefix, message id, commitment, header MAC
  const keyVersion = take(4).readUInt32BE(0);
  const wrapped = take(take(2).readUInt16BE(0)).toString("latin1");
  return { keyVersion, wrapped, length: at };
}

/** Lets queued I/O callbacks and stream ticks run. */
const turns = async (n: number) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

/** Writes `data` into `stream` through one buffer of `size` bytes, reused once each write's callback has come. */
async function writeReusing(stream: Transform, data: Buffer, size: number): Promise<void> {
  const reused = Buffer.alloc(size);
  for (let at = 0; at < data.length; at += size) {
    const n = data.copy(reused, 0, at, at + size);
    await new Promise<void>((done, fail) => stream.write(reused.subarray(0, n), (e) => (e ? fail(e) : done())));
  }
  stream.end();
}

describe("envelope library, third review", () => {
  let f: KmsFixture;
  let kms: CountingKms;
  let work: string;
  const context = { bucket: "b", object: "o" };

  before(async () => {
    f = await openFixture("custos-env-review3");
    await f.kms.createKey(alice, { name: "storage", purpose: "encrypt" });
    kms = serviceKms(f.kms, alice);
    work = mkdtempSync(join(tmpdir(), "custos-env-review3-"));
  });
  after(async () => {
    await f?.close();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("encryptStream seals the bytes as they were written, when the producer reuses its buffer after each callback", async () => {
    const e = new Envelope({ kms, chunkSize: 16 });
    const plaintext = randomBytes(100);
    const stream = e.encryptStream({ key: "storage", context });
    const out: Buffer[] = [];
    stream.on("data", (b: Buffer) => out.push(b));
    const ended = new Promise((r) => stream.once("end", r));
    await writeReusing(stream, plaintext, 10);
    await ended;
    const sealed = await e.decrypt(Buffer.concat(out), { context });
    const differs = sealed.findIndex((b, i) => b !== plaintext[i]);
    assert.equal(differs, -1, `the message holds other bytes than were written, from offset ${differs}`);
    assert.equal(sealed.length, plaintext.length);
    e.close();
  });

  test("decryptStream opens a sound message fed through a reused buffer, as Writable's callback contract allows", async () => {
    const e = new Envelope({ kms, chunkSize: 16 });
    const plaintext = randomBytes(100);
    const message = await e.encrypt(plaintext, { key: "storage", context });
    const stream = e.decryptStream({ context });
    const out: Buffer[] = [];
    stream.on("data", (b: Buffer) => out.push(b));
    const ended = new Promise<void>((done, fail) => {
      stream.once("end", done);
      stream.once("error", fail);
    });
    await writeReusing(stream, message, 10).catch(() => {});
    await ended;
    assert.deepEqual(Buffer.concat(out), plaintext);
    e.close();
  });

  test("both streams keep what they hold back when writes reuse a buffer of a chunk or more, all bytes sound", async () => {
    const e = new Envelope({ kms, chunkSize: 16 });
    const plaintext = randomBytes(200);
    const message = await e.encrypt(plaintext, { key: "storage", context });
    // A whole chunk (held back: it may be the last), a chunk and a half, several chunks and a piece.
    for (const size of [16, 24, 40, 77]) {
      const sealing = e.encryptStream({ key: "storage", context });
      const sealed: Buffer[] = [];
      sealing.on("data", (b: Buffer) => sealed.push(b));
      const sealedEnd = once(sealing, "end");
      await writeReusing(sealing, plaintext, size);
      await sealedEnd;
      assert.deepEqual(await e.decrypt(Buffer.concat(sealed), { context }), plaintext, `encrypt, writes of ${size}`);

      const opening = e.decryptStream({ context });
      const opened: Buffer[] = [];
      opening.on("data", (b: Buffer) => opened.push(b));
      const openedEnd = once(opening, "end");
      await writeReusing(opening, message, size);
      await openedEnd;
      assert.deepEqual(Buffer.concat(opened), plaintext, `decrypt, writes of ${size}`);
    }
    e.close();
  });

  test("an aborted pipeline, a destroyed stream and a failing source end cleanly, releasing only genuine whole chunks", async () => {
    const rejections: unknown[] = [];
    const onRejection = (r: unknown) => rejections.push(r);
    process.on("unhandledRejection", onRejection);
    try {
      const size = 16;
      const e = new Envelope({ kms, chunkSize: size, cache: false });
      const plaintext = randomBytes(40 * size + 5);
      const message = await e.encrypt(plaintext, { key: "storage", context });

      // Aborted once the sink has three chunks.
      const controller = new AbortController();
      const got: Buffer[] = [];
      const sink = new Writable({
        write(chunk: Buffer, _e, done) {
          got.push(chunk);
          if (got.length === 3) controller.abort();
          done();
        },
      });
      const pieces = Array.from({ length: Math.ceil(message.length / 7) }, (_, i) =>
        message.subarray(i * 7, i * 7 + 7),
      );
      await assert.rejects(
        pipeline(Readable.from(pieces), e.decryptStream({ context }), sink, { signal: controller.signal }),
        { name: "AbortError" },
      );
      const released = Buffer.concat(got);
      assert.equal(released.length % size, 0);
      assert.deepEqual(released, plaintext.subarray(0, released.length));

      // Destroyed while its KMS call is under way, both ways.
      for (const stream of [e.encryptStream({ key: "storage", context }), e.decryptStream({ context })]) {
        const events: string[] = [];
        stream.on("data", () => events.push("data"));
        stream.on("error", (err) => events.push(`error ${String(err)}`));
        stream.on("close", () => events.push("close"));
        stream.write(message);
        stream.destroy();
        await turns(5);
        await kms.generateDataKey("storage", context).then((k) => k.plaintext.destroy()); // one KMS round trip later
        await turns(5);
        assert.deepEqual(events, ["close"]);
      }

      // A source that fails after three pieces.
      let served = 0;
      const failing = new Readable({
        read() {
          if (served < 3) this.push(message.subarray(served++ * 100, served * 100));
          else this.destroy(Object.assign(new Error("disk gone"), { code: "EIO" }));
        },
      });
      const streamed = await collect(failing, e.decryptStream({ context }));
      assert.equal(codeOf(streamed.error), "EIO");
      assert.deepEqual(streamed.out, plaintext.subarray(0, streamed.out.length));
      await turns(5);
      assert.deepEqual(rejections, []);
    } finally {
      process.off("unhandledRejection", onRejection);
    }
  });

  test("a consumer that stops taking data stops the source: both streams hold back-pressure", async () => {
    const size = 1024;
    const e = new Envelope({ kms, chunkSize: size });
    const plaintext = randomBytes(4 * 1024 * 1024);
    const message = await e.encrypt(plaintext, { key: "storage", context });
    for (const [what, input, stream] of [
      ["encrypt", plaintext, e.encryptStream({ key: "storage", context })],
      ["decrypt", message, e.decryptStream({ context })],
    ] as const) {
      let pulled = 0;
      const source = new Readable({
        read() {
          const piece = input.subarray(pulled, pulled + 4096);
          pulled += piece.length;
          this.push(piece.length > 0 ? piece : null);
        },
      });
      let received = 0;
      let firstBytes: () => void = () => {};
      const started = new Promise<void>((r) => {
        firstBytes = r;
      });
      const stuck = new Writable({
        highWaterMark: 1,
        write(chunk: Buffer) {
          received += chunk.length; // never calls back: a consumer that stopped
          firstBytes();
        },
      });
      const running = pipeline(source, stream, stuck).catch(() => {});
      await started;
      let seen = -1;
      for (let i = 0; i < 2000 && seen !== pulled; i++) {
        seen = pulled;
        await turns(20);
      }
      assert.ok(received > 0, `${what}: the first bytes came through`);
      assert.ok(pulled < 256 * 1024, `${what}: pulled ${pulled} of ${input.length} bytes for a stalled consumer`);
      source.destroy();
      stuck.destroy();
      await running;
    }
    e.close();
  });

  test("many concurrent encryptions under maxMessages share data keys exactly up to the limit", async () => {
    const e = new Envelope({ kms, cache: { maxMessages: 3 } });
    const before = kms.calls.generate;
    const objects = Array.from({ length: 10 }, (_, i) => Buffer.from(`object ${i}`));
    const messages = await Promise.all(objects.map((o) => e.encrypt(o, { key: "storage", context })));
    assert.equal(kms.calls.generate - before, 4, "ceil(10 / 3) data keys");
    const uses = new Map<string, number>();
    for (const m of messages) {
      const w = docHeader(m).wrapped;
      uses.set(w, (uses.get(w) ?? 0) + 1);
    }
    assert.deepEqual([...uses.values()].sort(), [1, 3, 3, 3]);
    const reader = new Envelope({ kms, cache: false });
    assert.deepEqual(await Promise.all(messages.map((m) => reader.decrypt(m, { context }))), objects);
    e.close();
  });

  test("contexts equal after Unicode normalisation are different cache entries, each bound to its own spelling", async () => {
    const e = new Envelope({ kms });
    const nfc = { "r\u00e9gion": "\u00eele" };
    const nfd = { "re\u0301gion": "i\u0302le" };
    const concurrent = await Promise.all([
      e.encrypt(Buffer.from("composed"), { key: "storage", context: nfc }),
      e.encrypt(Buffer.from("decomposed"), { key: "storage", context: nfd }),
      e.encrypt(Buffer.from("composed 2"), { key: "storage", context: nfc }),
    ]);
    const [a, b, c] = concurrent as [Buffer, Buffer, Buffer];
    assert.equal(e.kmsCalls, 2);
    assert.notEqual(docHeader(a).wrapped, docHeader(b).wrapped);
    assert.equal(docHeader(a).wrapped, docHeader(c).wrapped);
    assert.deepEqual(await e.decrypt(b, { context: nfd }), Buffer.from("decomposed"));
    await assert.rejects(e.decrypt(b, { context: nfc }), { code: "decryption_failed" });
    await assert.rejects(e.decrypt(a, { context: nfd }), { code: "decryption_failed" });
    e.close();
  });

  test("a file rewrapped while readers hold it open: their reads, ranges and streams still give the plaintext", async () => {
    const size = 64;
    const e = new Envelope({ kms, chunkSize: size, cache: false });
    const plaintext = randomBytes(20 * size + 9);
    const path = join(work, "read-while-rewrapped");
    writeFileSync(path, await e.encrypt(plaintext, { key: "storage", context }));
    const versionBefore = docHeader(readFileSync(path)).keyVersion;
    const source = await fileSource(path);
    const stream = createReadStream(path, { highWaterMark: 100 });
    try {
      await once(stream, "open");
      const decrypting = collect(stream, e.decryptStream({ context }));
      assert.deepEqual(
        await e.readRange(source, size - 1, size + 1, { context }),
        plaintext.subarray(size - 1, size + 1),
      );
      await f.kms.rotateKey(alice, "storage");
      const [outcome] = await rewrapFiles(kms, [path]);
      assert.equal(outcome?.status, "rewrapped", JSON.stringify(outcome));
      assert.equal(docHeader(readFileSync(path)).keyVersion, versionBefore + 1);
      const length = plaintext.length;
      for (const [a, b] of [
        [0, size],
        [19 * size, length],
        [length - 1, length + 5],
        [length, length],
      ] as const) {
        assert.deepEqual(await e.readRange(source, a, b, { context }), plaintext.subarray(a, b), `[${a}, ${b})`);
      }
      const streamed = await decrypting;
      assert.equal(streamed.error, undefined);
      assert.deepEqual(streamed.out, plaintext);
      const fresh = await fileSource(path);
      try {
        assert.deepEqual(await e.readRange(fresh, 5, 7 * size, { context }), plaintext.subarray(5, 7 * size));
      } finally {
        await fresh.close();
      }
    } finally {
      await source.close();
      stream.destroy();
    }
  });

  /** A KMS whose rewrap first lets `meddle` touch the file: a writer at work while rewrap waits for the KMS. */
  const meddling = (meddle: () => void): EnvelopeKms => ({
    ...kms,
    rewrapDataKeys: (name, items) => {
      meddle();
      return kms.rewrapDataKeys(name, items);
    },
  });

  test("a file that shrinks or is replaced while its rewrap waits for the KMS is left as the writer left it", async () => {
    const e = new Envelope({ kms, chunkSize: 32, cache: false });
    const path = join(work, "moving");
    for (const [what, meddle, expected] of [
      ["truncated", () => truncateSync(path, 100), (m: Buffer) => m.subarray(0, 100)],
      ["replaced by rename", () => renameSync(`${path}.next`, path), (_m: Buffer, next: Buffer) => next],
    ] as const) {
      const message = await e.encrypt(randomBytes(300), { key: "storage", context });
      const next = await e.encrypt(randomBytes(300), { key: "storage", context });
      writeFileSync(path, message);
      writeFileSync(`${path}.next`, next);
      await f.kms.rotateKey(alice, "storage");
      const [outcome] = await rewrapFiles(meddling(meddle), [path]);
      assert.equal(outcome?.status, "failed", `${what}: ${JSON.stringify(outcome)}`);
      assert.equal(outcome?.status === "failed" ? outcome.error.code : undefined, "conflict", what);
      assert.deepEqual(readFileSync(path), expected(message, next), what);
      rmSync(`${path}.next`, { force: true });
      assert.deepEqual(
        readdirSync(work).filter((n) => n.startsWith(".custos-rewrap-")),
        [],
        what,
      );
    }
  });

  test("a file overwritten in place (same size, times kept) while its rewrap waits for the KMS keeps the new message", async () => {
    const e = new Envelope({ kms, chunkSize: 32, cache: false });
    const path = join(work, "overwritten");
    const stamp = join(work, "overwritten.times");
    writeFileSync(path, await e.encrypt(randomBytes(300), { key: "storage", context }));
    const newer = randomBytes(300);
    const next = await e.encrypt(newer, { key: "storage", context });
    await f.kms.rotateKey(alice, "storage");
    // As `rsync --inplace --times` or a restore from backup writes: the same inode and length, the old times.
    const [outcome] = await rewrapFiles(
      meddling(() => {
        execFileSync("touch", ["-r", path, stamp]);
        const fd = openSync(path, "r+");
        writeSync(fd, next, 0, next.length, 0);
        closeSync(fd);
        execFileSync("touch", ["-r", stamp, path]);
      }),
      [path],
    );
    const now = readFileSync(path);
    let state: string;
    try {
      state = (await e.decrypt(now, { context })).equals(newer) ? "the new message" : "another plaintext";
    } catch (err) {
      state = `undecryptable (${codeOf(err)})`;
    }
    assert.equal(state, "the new message", `rewrap said ${JSON.stringify(outcome)}`);
  });
});

describe("custos storage rewrap and the HTTP KMS client, third review", () => {
  let custos: CustosInstance;
  let work: string;

  before(async () => {
    custos = await startCustos();
    work = mkdtempSync(join(tmpdir(), "custos-env-review3-cli-"));
    const created = custos.cli(["key", "create", "storage"]);
    assert.equal(created.status, 0, created.stderr);
  });
  after(async () => {
    await custos?.dispose();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  /** An envelope message made by the CLI with 64-byte chunks. */
  function message(plaintext = randomBytes(300)): Buffer {
    writeFileSync(join(work, "plain"), plaintext);
    const r = custos.cli(["file", "encrypt", "--key", "storage", "--chunk-size", "64", "--in", join(work, "plain")]);
    assert.equal(r.status, 0, r.stderr);
    return r.stdoutBytes;
  }

  const versionOf = (path: string | Buffer) => docHeader(readFileSync(path)).keyVersion;

  test("storage rewrap over a tree of odd entries: loops, a FIFO, stubs, read-only files and names with newlines", () => {
    const tree = join(work, "odd");
    mkdirSync(join(tree, "sub"), { recursive: true });
    const good = [join(tree, "line\nbreak"), join(tree, "tab\there"), join(tree, "sub", "read-only")];
    for (const p of good) writeFileSync(p, message());
    chmodSync(join(tree, "sub", "read-only"), 0o444);
    const damaged = join(tree, "bad\nname");
    const bytes = message();
    bytes[bytes.length - TAG - 10] = (bytes[bytes.length - TAG - 10] as number) ^ 1; // a body byte: the header is fine
    writeFileSync(damaged, bytes);
    const broken = Buffer.from(message().subarray(0, 30)); // magic and a cut header
    writeFileSync(join(tree, "cut\nheader"), broken);
    writeFileSync(join(tree, "empty"), "");
    writeFileSync(join(tree, "short"), "CUST");
    symlinkSync("loop", join(tree, "loop"));
    symlinkSync("..", join(tree, "sub", "up"));
    execFileSync("mkfifo", [join(tree, "fifo")]);
    const before = good.map(versionOf);
    assert.equal(custos.cli(["key", "rotate", "storage"]).status, 0);

    const r = custos.cli(["--json", "storage", "rewrap", tree]);
    assert.equal(r.status, 1, r.stderr);
    const summary = JSON.parse(r.stdout);
    assert.equal(summary.rewrapped, 4, "the three good files and the one with a damaged body (its header is sound)");
    assert.equal(summary.not_envelope, 2);
    assert.deepEqual(
      summary.failures.map((x: { path: string; error: { code: string } }) => [x.path, x.error.code]),
      [[join(tree, "cut\nheader"), "decryption_failed"]],
    );
    assert.deepEqual(
      good.map(versionOf),
      before.map((v) => v + 1),
    );
    assert.equal(statSync(join(tree, "sub", "read-only")).mode & 0o777, 0o444);
    assert.equal(versionOf(damaged), (before[0] as number) + 1);

    // The human summary keeps each failure on one line, whatever the name holds.
    writeFileSync(join(tree, "cut\nheader"), broken);
    const human = custos.cli(["storage", "rewrap", tree]);
    assert.equal(human.status, 1);
    const failureLines = human.stdout.split("\n").filter((l) => l.startsWith("failed: "));
    assert.equal(failureLines.length, 1, human.stdout);
    assert.match(failureLines[0] as string, /header: decryption_failed: /);
    assert.ok(existsSync(join(tree, "fifo")) && readdirSync(tree).every((n) => !n.startsWith(".custos-rewrap-")));
  });

  test("storage rewrap over a tree holding a file whose name is not UTF-8 still rewraps the others", () => {
    const tree = join(work, "latin1");
    mkdirSync(tree);
    const good = join(tree, "a");
    writeFileSync(good, message());
    const odd = Buffer.concat([Buffer.from(`${tree}/caf`), Buffer.from([0xe9])]); // "café" in Latin-1
    writeFileSync(odd, message());
    const before = versionOf(good);
    assert.equal(custos.cli(["key", "rotate", "storage"]).status, 0);
    const r = custos.cli(["--json", "storage", "rewrap", tree]);
    assert.equal(versionOf(good), before + 1, `${r.status}: ${r.stderr}`);
    assert.ok(r.status === 0 || r.status === 1, `${r.status}: ${r.stderr}`);
  });

  test("storage rewrap rewraps a file whose name is not UTF-8, and names a subdirectory it cannot read as a failure", () => {
    const tree = join(work, "unreadable");
    mkdirSync(tree);
    const files = [join(tree, "a"), Buffer.concat([Buffer.from(join(tree, "na")), Buffer.from([0xef, 0x76, 0x65])])];
    for (const p of files) writeFileSync(p, message());
    // A subdirectory whose path is longer than PATH_MAX: it cannot be listed by that path, even by root. It is
    // made a directory at a time, by relative names.
    const step = "d".repeat(200);
    try {
      const deepen = `process.chdir(process.argv[1]); for (let i = 0; i < 25; i++) { fs.mkdirSync("${step}"); process.chdir("${step}"); }`;
      execFileSync(process.execPath, ["-e", deepen, tree]);
      const before = files.map(versionOf);
      assert.equal(custos.cli(["key", "rotate", "storage"]).status, 0);
      const r = custos.cli(["--json", "storage", "rewrap", tree]);
      assert.equal(r.status, 1, r.stderr);
      const summary = JSON.parse(r.stdout);
      assert.equal(summary.rewrapped, 2);
      assert.equal(summary.failed, 1);
      assert.deepEqual(
        files.map(versionOf),
        before.map((v) => v + 1),
      );
      const [failure] = summary.failures as { path: string; error: { code: string } }[];
      assert.equal(failure?.error.code, "ENAMETOOLONG");
      assert.ok(failure?.path.startsWith(join(tree, step, step)), failure?.path);
    } finally {
      // Too deep for a removal by full paths: rm -rf descends a directory at a time.
      execFileSync("rm", ["-rf", join(tree, step)]);
    }
  });

  test("the HTTP KMS client through a Custos restart: unavailable (never decryption_failed) while down, then fine", async () => {
    const client = new CustosClient({
      address: custos.url,
      token: Secret.fromString(custos.adminToken),
      ca: Buffer.from(custos.ca),
    });
    const rejections: unknown[] = [];
    const onRejection = (r: unknown) => rejections.push(r);
    process.on("unhandledRejection", onRejection);
    try {
      const e = new Envelope({ kms: httpKms(client), cache: false, chunkSize: 16 });
      const ctx = { object: "restart" };
      const plaintexts = Array.from({ length: 8 }, () => randomBytes(40));
      const messages = await Promise.all(plaintexts.map((p) => e.encrypt(p, { key: "storage", context: ctx })));
      await custos.stop();
      try {
        const down = await Promise.allSettled(messages.map((m) => e.decrypt(m, { context: ctx })));
        assert.deepEqual(
          down.map((r) => (r.status === "rejected" ? codeOf(r.reason) : "decrypted")),
          Array(8).fill("unavailable"),
        );
        const streamed = await collect(Readable.from([messages[0] as Buffer]), e.decryptStream({ context: ctx }));
        assert.equal(codeOf(streamed.error), "unavailable");
        assert.equal(streamed.out.length, 0);
        await assert.rejects(e.encrypt(Buffer.from("x"), { key: "storage", context: ctx }), { code: "unavailable" });
      } finally {
        await custos.start();
      }
      // The pool's keep-alive sockets died with the old process: the next calls must not fail on them.
      const up = await Promise.all(messages.map((m) => e.decrypt(m, { context: ctx })));
      assert.deepEqual(up, plaintexts);
      await custos.stop();
      await custos.start();
      const cached = new Envelope({ kms: httpKms(client) });
      const again = await Promise.all(messages.map((m) => cached.decrypt(m, { context: ctx })));
      assert.deepEqual(again, plaintexts);
      assert.equal(cached.kmsCalls, 8, "one unwrap per data key");
      await turns(5);
      assert.deepEqual(rejections, []);
    } finally {
      process.off("unhandledRejection", onRejection);
      client.close();
    }
  });
});
