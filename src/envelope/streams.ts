/**
 * The streaming encoder and decoder as Node Transforms, so they sit in a
 * `pipeline()` and respect back-pressure. Each piece is encrypted or decrypted as it
 * arrives, so no input is held or copied past its write; what is held is our own
 * output, at most one chunk: whether a chunk is the last is known only when more
 * input comes or the input ends, and the last-chunk flag is part of the nonce (see
 * `SealingChunk` and `OpeningChunk`).
 */
import { Transform, type TransformCallback } from "node:stream";
import { OpeningChunk, SealingChunk } from "./chunks.js";
import type { Opening, Sealing } from "./envelope.js";
import { decryptionFailed } from "./errors.js";
import { type Header, IncompleteHeader, parseHeader, TAG_BYTES } from "./format.js";

export class EncryptStream extends Transform {
  readonly #begin: () => Promise<Sealing>;
  #sealing: Sealing | undefined;
  #chunk: SealingChunk | undefined;
  #index = 0;

  constructor(begin: () => Promise<Sealing>) {
    super();
    this.#begin = begin;
  }

  override _transform(data: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    if (this.#sealing !== undefined) {
      settle(done, () => this.#seal(data));
      return;
    }
    this.#start().then(() => settle(done, () => this.#seal(data)), done);
  }

  override _flush(done: TransformCallback): void {
    this.#start().then(
      () =>
        settle(done, () => {
          if (this.#chunk !== undefined) {
            this.#pushAll(this.#chunk.finishLast());
            return;
          }
          // The empty message: one empty last chunk.
          const out: Buffer[] = [];
          (this.#sealing as Sealing).sealer.seal(0, [], true, out);
          this.#pushAll(out);
        }),
      done,
    );
  }

  async #start(): Promise<void> {
    if (this.#sealing !== undefined) return;
    this.#sealing = await this.#begin();
    this.push(this.#sealing.header);
  }

  #seal(data: Buffer): void {
    const sealing = this.#sealing as Sealing;
    sealing.addBytes(data.length);
    for (let at = 0; at < data.length; ) {
      if (this.#chunk === undefined || this.#chunk.length === sealing.chunkSize) {
        // More input after a full chunk: that chunk was not the last.
        if (this.#chunk !== undefined) this.#pushAll(this.#chunk.finish());
        this.#chunk = new SealingChunk(sealing.sealer, this.#index++);
      }
      const n = Math.min(sealing.chunkSize - this.#chunk.length, data.length - at);
      this.#chunk.add(n === data.length ? data : data.subarray(at, at + n));
      at += n;
    }
  }

  #pushAll(out: Buffer[]): void {
    for (const b of out) this.push(b);
  }
}

export class DecryptStream extends Transform {
  readonly #begin: (header: Header) => Promise<Opening>;
  /**
   * Input received before the header is complete: copied, as it is held past its
   * write. A header may be some 100 KB, so it is parsed again only once the bytes the
   * last attempt said it needs have come, not on every write.
   */
  #headerPieces: Buffer[] = [];
  #headerHeld = 0;
  #headerNeeds = 0;
  #opening: Opening | undefined;
  #chunk: OpeningChunk | undefined;
  #index = 0;

  constructor(begin: (header: Header) => Promise<Opening>) {
    super();
    this.#begin = begin;
  }

  override _transform(data: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    if (this.#opening !== undefined) {
      settle(done, () => this.#open(data));
      return;
    }
    this.#readHeader(data).then((body) => settle(done, () => body !== undefined && this.#open(body)), done);
  }

  override _flush(done: TransformCallback): void {
    settle(done, () => {
      // An input that ends inside the header, or right after it, is a damaged message.
      const chunk = this.#chunk;
      if (chunk === undefined) throw decryptionFailed();
      // The last chunk has its tag; only a message's first chunk may be empty.
      if (chunk.received < TAG_BYTES || (this.#index > 1 && chunk.received === TAG_BYTES)) throw decryptionFailed();
      for (const plain of chunk.finishLast()) this.push(plain);
    });
  }

  /**
   * Adds `data` to the header; once the header parses, begins opening and returns the
   * body bytes that came with it (views of `data` or of our own copy).
   */
  async #readHeader(data: Buffer): Promise<Buffer | undefined> {
    if (this.#headerHeld + data.length < this.#headerNeeds) {
      this.#headerPieces.push(Buffer.from(data));
      this.#headerHeld += data.length;
      return undefined;
    }
    const held = this.#headerHeld > 0 ? Buffer.concat([...this.#headerPieces, data]) : data;
    let header: Header;
    try {
      header = parseHeader(held);
    } catch (e) {
      if (!(e instanceof IncompleteHeader)) throw e;
      this.#headerPieces = [held === data ? Buffer.from(data) : held];
      this.#headerHeld = held.length;
      this.#headerNeeds = e.needed;
      return undefined;
    }
    this.#headerPieces = [];
    this.#opening = await this.#begin(header);
    return held.subarray(header.length);
  }

  #open(data: Buffer): void {
    const stride = (this.#opening as Opening).header.chunkSize + TAG_BYTES;
    for (let at = 0; at < data.length; ) {
      if (this.#chunk === undefined || this.#chunk.received === stride) {
        // More input after a whole stride: that chunk was not the last.
        if (this.#chunk !== undefined) for (const plain of this.#chunk.finish()) this.push(plain);
        const { opener, header } = this.#opening as Opening;
        this.#chunk = new OpeningChunk(opener, this.#index++, header.chunkSize);
      }
      const n = Math.min(stride - this.#chunk.received, data.length - at);
      this.#chunk.add(n === data.length ? data : data.subarray(at, at + n));
      at += n;
    }
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
