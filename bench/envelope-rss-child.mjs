/**
 * Peak RSS of a storage layer's process streaming through the envelope: plain node
 * running the compiled library (as `custos/envelope` is installed), data keys from a
 * Custos server over HTTPS (CUSTOS_ADDR, CUSTOS_TOKEN, CUSTOS_CACERT), nothing else
 * loaded. `raw` streams through one node:crypto cipher instead, for what node streams
 * cost by themselves. Prints one JSON line of VmHWM readings in KiB.
 *
 *   node bench/envelope-rss-child.mjs <compiled src dir> envelope|raw <bytes>
 */
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Readable, Transform, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { pathToFileURL } from "node:url";

const PIECE = 64 * 1024;
const CONTEXT = { bucket: "bench", object: "data" };
const SEAL = { key: "bench", context: CONTEXT };
const OPEN = { context: CONTEXT };
const [dist = "", what = "", size = ""] = process.argv.slice(2);
const total = Number(size);

/** This process's own high-water mark (getrusage's maxRSS would carry the parent's over exec). */
const peak = () => Number(/^VmHWM:\s+(\d+) kB$/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1]);

function source() {
  const piece = randomBytes(PIECE);
  let left = total;
  return new Readable({
    read() {
      const n = Math.min(PIECE, left);
      left -= n;
      this.push(n > 0 ? piece.subarray(0, n) : null);
    },
  });
}

function sink(expected) {
  let seen = 0;
  return new Writable({
    write(chunk, _encoding, done) {
      seen += chunk.length;
      done();
    },
    final(done) {
      done(expected < 0 || seen === expected ? null : new Error(`sink saw ${seen} bytes, expected ${expected}`));
    },
  });
}

function rawStreams() {
  const key = randomBytes(32);
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", key, iv);
  const decipher = createDecipheriv("aes-256-gcm", key, iv);
  return {
    seal: new Transform({
      transform: (chunk, _e, done) => done(null, cipher.update(chunk)),
      flush: (done) => done(null, cipher.final()),
    }),
    open: new Transform({
      transform: (chunk, _e, done) => done(null, decipher.update(chunk)),
      flush(done) {
        decipher.setAuthTag(cipher.getAuthTag());
        done(null, decipher.final());
      },
    }),
  };
}

const atRest = peak();
let streams = rawStreams;
let close = () => {};
if (what === "envelope") {
  const { Envelope, httpKmsFromEnv } = await import(pathToFileURL(join(dist, "envelope/index.js")).href);
  const client = httpKmsFromEnv();
  close = client.close;
  const envelope = new Envelope({ kms: client.kms });
  // One small message first, so that the first KMS calls (TLS, the client's agent) count as set-up.
  await envelope.decrypt(await envelope.encrypt(Buffer.alloc(1), SEAL), OPEN);
  streams = () => ({ seal: envelope.encryptStream(SEAL), open: envelope.decryptStream(OPEN) });
} else if (what !== "raw") {
  throw new Error(`unknown child ${what}`);
}
const afterSetup = peak();
await pipeline(source(), streams().seal, sink(-1));
const afterEncrypt = peak();
const pair = streams();
await pipeline(source(), pair.seal, pair.open, sink(total));
console.log(JSON.stringify({ atRest, afterSetup, afterEncrypt, peak: peak() }));
close();
