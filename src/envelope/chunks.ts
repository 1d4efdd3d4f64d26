/**
 * Chunk encryption with a message's content key: AES-256-GCM from node:crypto (about
 * 2 GB/s here), one cipher per chunk under the nonce that binds its index and the
 * last-chunk flag. Streams hand chunks over as lists of buffers, so nothing is copied
 * on its way through; whole buffers go straight into one output buffer.
 */
import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject } from "node:crypto";
import { CustosError } from "../errors/index.js";
import { decryptionFailed } from "./errors.js";
import { chunkNonce, MAX_CHUNKS, TAG_BYTES } from "./format.js";

/**
 * Cipher input per call on the whole-buffer paths: pieces that stay in the CPU cache
 * run faster than one big update (measured here: 2.3 GB/s at 64 KiB, 1.6 at 1 MiB).
 */
const SLICE = 64 * 1024;

export class ChunkSealer {
  readonly #key: KeyObject;
  readonly #prefix: Buffer;

  constructor(contentKey: Buffer, noncePrefix: Buffer) {
    // createSecretKey copies the bytes: the caller zeroes its buffer once both exist.
    this.#key = createSecretKey(contentKey);
    this.#prefix = noncePrefix;
  }

  /** Encrypts chunk `index` (given as pieces) and appends its ciphertext, then its tag, to `out`. */
  seal(index: number, pieces: readonly Buffer[], last: boolean, out: Buffer[]): void {
    const cipher = this.#cipher(index, last);
    for (const piece of pieces) {
      const sealed = cipher.update(piece);
      if (sealed.length > 0) out.push(sealed);
    }
    cipher.final();
    out.push(cipher.getAuthTag());
  }

  /**
   * Encrypts chunk `index` into `out` at `at` (ciphertext, then tag) and returns the
   * offset after it. The whole-buffer path: one output buffer, no list to join.
   */
  sealInto(index: number, data: Buffer, last: boolean, out: Buffer, at: number): number {
    const cipher = this.#cipher(index, last);
    let to = at;
    for (let from = 0; from < data.length; from += SLICE) {
      to += cipher.update(data.subarray(from, from + SLICE)).copy(out, to);
    }
    cipher.final();
    return to + cipher.getAuthTag().copy(out, to);
  }

  #cipher(index: number, last: boolean) {
    if (index >= MAX_CHUNKS) throw new CustosError("invalid_request", "message has more chunks than the format allows");
    return createCipheriv("aes-256-gcm", this.#key, chunkNonce(this.#prefix, index, last));
  }
}

export class ChunkOpener {
  readonly #key: KeyObject;
  readonly #prefix: Buffer;

  constructor(contentKey: Buffer, noncePrefix: Buffer) {
    this.#key = createSecretKey(contentKey);
    this.#prefix = noncePrefix;
  }

  /**
   * Decrypts chunk `index` (ciphertext pieces, then its tag) and returns its plaintext
   * pieces, only once the tag has verified. A bad tag is `decryption_failed`, and the
   * unverified plaintext is zeroed, never returned.
   */
  open(index: number, pieces: readonly Buffer[], tag: Buffer, last: boolean): Buffer[] {
    const decipher = this.#decipher(index, last, tag);
    const out: Buffer[] = [];
    for (const piece of pieces) {
      const opened = decipher.update(piece);
      if (opened.length > 0) out.push(opened);
    }
    try {
      decipher.final();
    } catch {
      for (const b of out) b.fill(0);
      throw decryptionFailed();
    }
    return out;
  }

  /**
   * Decrypts chunk `index` (`sealed` = ciphertext ‖ tag) into `out` at `at` and returns
   * the offset after it. On a bad tag the bytes written are zeroed before the error.
   */
  openInto(index: number, sealed: Buffer, last: boolean, out: Buffer, at: number): number {
    if (sealed.length < TAG_BYTES) throw decryptionFailed();
    const end = sealed.length - TAG_BYTES;
    const decipher = this.#decipher(index, last, sealed.subarray(end));
    let to = at;
    for (let from = 0; from < end; from += SLICE) {
      to += decipher.update(sealed.subarray(from, Math.min(end, from + SLICE))).copy(out, to);
    }
    try {
      decipher.final();
    } catch {
      out.fill(0, at, to);
      throw decryptionFailed();
    }
    return to;
  }

  #decipher(index: number, last: boolean, tag: Buffer) {
    if (tag.length !== TAG_BYTES) throw decryptionFailed();
    return createDecipheriv("aes-256-gcm", this.#key, chunkNonce(this.#prefix, index, last)).setAuthTag(tag);
  }
}

/**
 * A FIFO of buffers that hands out byte counts as lists of views. It copies only on
 * `keep()`: what a stream holds back past a write's callback.
 */
export class ByteQueue {
  readonly #pieces: Buffer[] = [];
  #head = 0;
  #length = 0;
  /** How many pieces at the end were pushed since the last `keep()`: views of their writers' buffers. */
  #borrowed = 0;

  get length(): number {
    return this.#length;
  }

  push(piece: Buffer): void {
    if (piece.length === 0) return;
    this.#pieces.push(piece);
    this.#length += piece.length;
    this.#borrowed++;
  }

  /**
   * Copies the bytes still borrowed from writers. A Writable's writer may reuse its
   * buffer once the write's callback has come (Node's contract), so a stream calls
   * this before that callback for whatever it holds back: at most a chunk's worth,
   * while the bytes taken before are sealed or opened straight from the writer's buffer.
   */
  keep(): void {
    const n = this.#borrowed;
    if (n === 0) return;
    const end = this.#pieces.length;
    this.#pieces.splice(end - n, n, Buffer.concat(this.#pieces.slice(end - n)));
    this.#borrowed = 0;
  }

  /** Removes the first `n` bytes (n ≤ length) and returns them as views. */
  take(n: number): Buffer[] {
    const out: Buffer[] = [];
    let left = n;
    while (left > 0) {
      const piece = this.#pieces[this.#head] as Buffer;
      if (piece.length <= left) {
        out.push(piece);
        this.#pieces[this.#head++] = EMPTY;
        left -= piece.length;
      } else {
        out.push(piece.subarray(0, left));
        this.#pieces[this.#head] = piece.subarray(left);
        left = 0;
      }
    }
    this.#length -= n;
    if (this.#head > 64 && this.#head * 2 > this.#pieces.length) {
      this.#pieces.splice(0, this.#head);
      this.#head = 0;
    }
    this.#borrowed = Math.min(this.#borrowed, this.#pieces.length - this.#head);
    return out;
  }

  /** The first `n` bytes (n ≤ length) as one buffer, without removing them. */
  peek(n: number): Buffer {
    const first = this.#pieces[this.#head];
    if (first !== undefined && first.length >= n) return first.subarray(0, n);
    const views: Buffer[] = [];
    let left = n;
    for (let i = this.#head; left > 0; i++) {
      const piece = this.#pieces[i] as Buffer;
      views.push(piece.subarray(0, Math.min(left, piece.length)));
      left -= Math.min(left, piece.length);
    }
    return Buffer.concat(views, n);
  }
}

const EMPTY = Buffer.alloc(0);
