/**
 * Chunk encryption with a message's content key: AES-256-GCM from node:crypto (about
 * 2 GB/s here), one cipher per chunk under the nonce that binds its index and the
 * last-chunk flag. Streams encrypt and decrypt each piece as it arrives (see
 * `SealingChunk`); whole buffers go straight into one output buffer.
 */
import {
  type CipherGCM,
  createCipheriv,
  createDecipheriv,
  createSecretKey,
  type DecipherGCM,
  type KeyObject,
} from "node:crypto";
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
    const cipher = this.cipher(index, last);
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
    const cipher = this.cipher(index, last);
    let to = at;
    for (let from = 0; from < data.length; from += SLICE) {
      to += cipher.update(data.subarray(from, from + SLICE)).copy(out, to);
    }
    cipher.final();
    return to + cipher.getAuthTag().copy(out, to);
  }

  /** A cipher for chunk `index`, under the nonce that binds its index and the last-chunk flag. */
  cipher(index: number, last: boolean): CipherGCM {
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
    const decipher = this.decipher(index, last, tag);
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
    const decipher = this.decipher(index, last, sealed.subarray(end));
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

  /** A decipher for chunk `index`; its tag is set before `final()`, here or by the caller. */
  decipher(index: number, last: boolean, tag?: Buffer): DecipherGCM {
    if (index >= MAX_CHUNKS || (tag !== undefined && tag.length !== TAG_BYTES)) throw decryptionFailed();
    const decipher = createDecipheriv("aes-256-gcm", this.#key, chunkNonce(this.#prefix, index, last));
    return tag === undefined ? decipher : decipher.setAuthTag(tag);
  }

  /** A cipher under chunk `index`'s not-last nonce: it turns that nonce's plaintext back into ciphertext. */
  recipher(index: number): CipherGCM {
    return createCipheriv("aes-256-gcm", this.#key, chunkNonce(this.#prefix, index, false));
  }
}

/**
 * A stream's chunk, encrypted as its bytes arrive so that no input is held past its
 * write (a writer may reuse its buffer once the write's callback has come). Whether
 * the chunk is the last is known only when more input comes or the input ends, so it
 * is encrypted under the not-last nonce and redone if it turns out to be the last.
 */
export class SealingChunk {
  readonly #sealer: ChunkSealer;
  readonly #index: number;
  readonly #cipher: CipherGCM;
  readonly #sealed = new Pieces();
  #length = 0;

  constructor(sealer: ChunkSealer, index: number) {
    this.#sealer = sealer;
    this.#index = index;
    this.#cipher = sealer.cipher(index, false);
  }

  /** Plaintext bytes added so far. */
  get length(): number {
    return this.#length;
  }

  add(plain: Buffer): void {
    const sealed = this.#cipher.update(plain);
    this.#sealed.add(sealed);
    this.#length += plain.length;
  }

  /** Ends the chunk as not the last: its ciphertext, then its tag. */
  finish(): Buffer[] {
    this.#cipher.final();
    this.#sealed.add(this.#cipher.getAuthTag());
    return this.#sealed.take();
  }

  /**
   * Ends the chunk as the last. GCM encrypts in counter mode, so encrypting the
   * ciphertext again under the same nonce gives back the plaintext, which is then
   * sealed under the last-chunk nonce. Only the last chunk pays these two passes.
   */
  finishLast(): Buffer[] {
    const undo = this.#sealer.cipher(this.#index, false);
    const plain = this.#sealed.take().map((b) => undo.update(b));
    const out: Buffer[] = [];
    this.#sealer.seal(this.#index, plain, true, out);
    for (const b of plain) b.fill(0);
    return out;
  }
}

/**
 * A stream's chunk (ciphertext, then tag), decrypted as its bytes arrive under the
 * not-last nonce and held until its tag verifies; nothing unverified leaves it. Only
 * the tag's bytes are copied. If the input ends inside or right after it, it is the
 * last and shorter than a stride, so its tag is its last 16 bytes, which were
 * decrypted as ciphertext: `finishLast` encrypts the held plaintext back to the
 * ciphertext (counter mode, same nonce), splits off the tag and opens the rest under
 * the last-chunk nonce.
 */
export class OpeningChunk {
  readonly #opener: ChunkOpener;
  readonly #index: number;
  readonly #chunkSize: number;
  readonly #decipher: DecipherGCM;
  readonly #plain = new Pieces();
  readonly #tag = Buffer.alloc(TAG_BYTES);
  #received = 0;

  constructor(opener: ChunkOpener, index: number, chunkSize: number) {
    this.#opener = opener;
    this.#index = index;
    this.#chunkSize = chunkSize;
    this.#decipher = opener.decipher(index, false);
  }

  /** Bytes received so far: up to a chunk of ciphertext, then up to a tag. */
  get received(): number {
    return this.#received;
  }

  /** Takes `sealed`, at most the bytes left of this chunk's stride (chunk size + tag). */
  add(sealed: Buffer): void {
    const body = Math.max(0, Math.min(sealed.length, this.#chunkSize - this.#received));
    if (body > 0) {
      const plain = this.#decipher.update(body === sealed.length ? sealed : sealed.subarray(0, body));
      this.#plain.add(plain);
    }
    if (body < sealed.length) sealed.copy(this.#tag, this.#received + body - this.#chunkSize, body);
    this.#received += sealed.length;
  }

  /** Ends a whole stride as not the last: its plaintext once the tag verifies. */
  finish(): Buffer[] {
    this.#decipher.setAuthTag(this.#tag);
    try {
      this.#decipher.final();
    } catch {
      this.#wipe();
      throw decryptionFailed();
    }
    return this.#plain.take();
  }

  /** Ends the chunk as the last (see the class comment). */
  finishLast(): Buffer[] {
    const redo = this.#opener.recipher(this.#index);
    const sealed = [
      ...this.#plain.take().map((b) => redo.update(b)),
      this.#tag.subarray(0, Math.max(0, this.#received - this.#chunkSize)),
    ];
    this.#wipe();
    const tag = Buffer.concat(tail(sealed, TAG_BYTES), TAG_BYTES);
    return this.#opener.open(this.#index, sealed, tag, true);
  }

  #wipe(): void {
    for (const b of this.#plain.take()) b.fill(0);
  }
}

/** Outputs below this size are packed into blocks (see `Pieces`). */
const PACK_BELOW = 4096;
const BLOCK = 16 * 1024;

/**
 * A chunk's output pieces, in order. Small ones (the output of small writes) are
 * packed into blocks, so that a chunk written a byte at a time holds about its size
 * in memory and leaves in a few pieces, not one Buffer per byte; larger ones are kept
 * as they are, uncopied.
 */
class Pieces {
  readonly #list: Buffer[] = [];
  #block: Buffer | undefined;
  #used = 0;

  add(piece: Buffer): void {
    if (piece.length === 0) return;
    if (piece.length >= PACK_BELOW) {
      this.#close();
      this.#list.push(piece);
      return;
    }
    if (this.#block === undefined || this.#used + piece.length > this.#block.length) {
      this.#close();
      this.#block = Buffer.allocUnsafe(BLOCK);
    }
    this.#used += piece.copy(this.#block, this.#used);
  }

  /** Everything added so far, in order (the list itself: adding after it is not expected). */
  take(): Buffer[] {
    this.#close();
    return this.#list;
  }

  #close(): void {
    if (this.#block !== undefined && this.#used > 0) this.#list.push(this.#block.subarray(0, this.#used));
    this.#block = undefined;
    this.#used = 0;
  }
}

/** Cuts the last `n` bytes (n ≤ their total) off a list of pieces, in place, and returns them as pieces. */
function tail(pieces: Buffer[], n: number): Buffer[] {
  const cut: Buffer[] = [];
  let left = n;
  while (left > 0) {
    const piece = pieces.pop() as Buffer;
    if (piece.length <= left) {
      cut.unshift(piece);
      left -= piece.length;
    } else {
      cut.unshift(piece.subarray(piece.length - left));
      pieces.push(piece.subarray(0, piece.length - left));
      left = 0;
    }
  }
  return cut;
}
