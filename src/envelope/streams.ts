/**
 * The streaming encoder and decoder as Node Transforms, so they sit in a
 * `pipeline()` and respect back-pressure. Each holds back one chunk's worth of input:
 * whether a chunk is the last is only known when the input ends, and the last-chunk
 * flag is part of the nonce.
 */
import { Transform, type TransformCallback } from "node:stream";
import { ByteQueue } from "./chunks.js";
import type { Opening, Sealing } from "./envelope.js";
import { decryptionFailed } from "./errors.js";
import { type Header, IncompleteHeader, parseHeader, TAG_BYTES } from "./format.js";

export class EncryptStream extends Transform {
  readonly #begin: () => Promise<Sealing>;
  readonly #queue = new ByteQueue();
  #sealing: Sealing | undefined;
  #index = 0;

  constructor(begin: () => Promise<Sealing>) {
    super();
    this.#begin = begin;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.#queue.push(chunk);
    if (this.#sealing !== undefined) {
      settle(done, () => this.#sealFull(chunk.length));
      return;
    }
    this.#start().then(() => settle(done, () => this.#sealFull(chunk.length)), done);
  }

  override _flush(done: TransformCallback): void {
    this.#start().then(
      () =>
        settle(done, () => {
          this.#sealFull(0);
          this.#emit(this.#queue.take(this.#queue.length), true);
        }),
      done,
    );
  }

  async #start(): Promise<void> {
    if (this.#sealing !== undefined) return;
    this.#sealing = await this.#begin();
    this.push(this.#sealing.header);
  }

  /**
   * Seals every chunk known not to be the last (those with more input after them),
   * then copies what is held back: the write's callback comes next.
   */
  #sealFull(added: number): void {
    const sealing = this.#sealing as Sealing;
    sealing.addBytes(added);
    while (this.#queue.length > sealing.chunkSize) this.#emit(this.#queue.take(sealing.chunkSize), false);
    this.#queue.keep();
  }

  #emit(pieces: Buffer[], last: boolean): void {
    const out: Buffer[] = [];
    (this.#sealing as Sealing).sealer.seal(this.#index++, pieces, last, out);
    for (const b of out) this.push(b);
  }
}

export class DecryptStream extends Transform {
  readonly #begin: (header: Header) => Promise<Opening>;
  readonly #queue = new ByteQueue();
  #opening: Opening | undefined;
  /** Bytes the header needs before parsing is worth retrying. */
  #headerNeeds = 0;
  #index = 0;

  constructor(begin: (header: Header) => Promise<Opening>) {
    super();
    this.#begin = begin;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.#queue.push(chunk);
    if (this.#opening !== undefined) {
      settle(done, () => this.#openFull());
      return;
    }
    // A header still incomplete is held back past the write's callback too.
    this.#tryHeader().then(
      () => settle(done, () => (this.#opening !== undefined ? this.#openFull() : this.#queue.keep())),
      done,
    );
  }

  override _flush(done: TransformCallback): void {
    settle(done, () => {
      // An input that ends inside the header (or is empty) is a damaged message.
      if (this.#opening === undefined) throw decryptionFailed();
      this.#openFull();
      const { header } = this.#opening;
      const left = this.#queue.length;
      if (left < TAG_BYTES || (this.#index > 0 && left === TAG_BYTES) || left > header.chunkSize + TAG_BYTES) {
        throw decryptionFailed();
      }
      this.#openChunk(left, true);
    });
  }

  async #tryHeader(): Promise<void> {
    if (this.#queue.length < this.#headerNeeds) return;
    let header: Header;
    try {
      header = parseHeader(this.#queue.peek(this.#queue.length));
    } catch (e) {
      if (e instanceof IncompleteHeader) {
        this.#headerNeeds = e.needed;
        return;
      }
      throw e;
    }
    this.#queue.take(header.length);
    this.#opening = await this.#begin(header);
  }

  /** Opens every chunk known not to be the last, then copies what is held back (see `ByteQueue.keep`). */
  #openFull(): void {
    const stride = (this.#opening as Opening).header.chunkSize + TAG_BYTES;
    while (this.#queue.length > stride) this.#openChunk(stride, false);
    this.#queue.keep();
  }

  #openChunk(length: number, last: boolean): void {
    const pieces = this.#queue.take(length);
    const tag = Buffer.concat(tail(pieces, TAG_BYTES), TAG_BYTES);
    for (const plain of (this.#opening as Opening).opener.open(this.#index++, pieces, tag, last)) this.push(plain);
  }
}

/** Calls `done` after `work`, with the error it threw if it threw. */
function settle(done: TransformCallback, work: () => void): void {
  try {
    work();
    done();
  } catch (e) {
    done(e as Error);
  }
}

/** Cuts the last `n` bytes off a list of pieces (in place) and returns them as pieces. */
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
