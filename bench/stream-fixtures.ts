/**
 * The streams the envelope benchmark runs its contenders between, shared with the RSS
 * child (bench/envelope-rss-child.ts): a source, a counting sink, and the limit as
 * Transforms. Only node modules here: the child runs compiled, without tsx.
 */
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { Readable, Transform, Writable } from "node:stream";

/** Sources emit pieces of this size, as fs.createReadStream does. */
export const PIECE = 64 * 1024;

/** `total` bytes in PIECE-sized pieces, the same random piece each time (no generator cost in the figure). */
export function source(total: number): Readable {
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

/** Discards, but counts, so that a short stream can't pass for a fast one. */
export function sink(expected: number): Writable {
  let seen = 0;
  return new Writable({
    write(chunk: Buffer, _encoding, done) {
      seen += chunk.length;
      done();
    },
    final(done) {
      done(expected < 0 || seen === expected ? null : new Error(`sink saw ${seen} bytes, expected ${expected}`));
    },
  });
}

/** The limit as Transforms: one cipher over the whole stream, `update` per piece; the tag passes from one to the other. */
export function rawStreams(): { seal: Transform; open: Transform } {
  const key = randomBytes(32);
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", key, iv);
  const decipher = createDecipheriv("aes-256-gcm", key, iv);
  const seal = new Transform({
    transform: (chunk: Buffer, _e, done) => done(null, cipher.update(chunk)),
    flush: (done) => done(null, cipher.final()),
  });
  const open = new Transform({
    transform: (chunk: Buffer, _e, done) => done(null, decipher.update(chunk)),
    flush(done) {
      decipher.setAuthTag(cipher.getAuthTag());
      done(null, decipher.final());
    },
  });
  return { seal, open };
}
