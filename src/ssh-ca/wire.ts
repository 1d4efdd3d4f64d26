/**
 * The SSH wire encoding (RFC 4251 §5) that OpenSSH keys, certificates and KRLs are
 * made of: big-endian uint32 / uint64, length-prefixed strings, and mpints.
 *
 * The writer fills one buffer in place: callers that know the final size (the
 * certificate builder does) pass it and get that buffer back without a copy; the
 * others let it grow. Every read is bounds-checked and malformed input is a
 * `CustosError("invalid_request")`, because these bytes come from API callers.
 */

import { CustosError } from "../errors/index.js";

/** OpenSSH refuses bignums over 16384 bits (SSHBUF_MAX_BIGNUM, plus the sign byte). */
export const MAX_MPINT_BYTES = 16384 / 8 + 1;

const UINT64_MAX = 0xffff_ffff_ffff_ffffn;

function malformed(what: string): CustosError {
  return new CustosError("invalid_request", `malformed SSH data: ${what}`);
}

/** Bytes that `SshWriter.string(value)` takes, the 4-byte length included. */
export function stringSize(value: Uint8Array | string): number {
  return 4 + (typeof value === "string" ? Buffer.byteLength(value, "utf8") : value.length);
}

/** The unsigned magnitude of `bytes` without its leading zero bytes. */
function stripZeros(bytes: Uint8Array): Uint8Array {
  let i = 0;
  while (i < bytes.length && bytes[i] === 0) i++;
  return i === 0 ? bytes : bytes.subarray(i);
}

/** Bytes that `SshWriter.mpint(magnitude)` takes, the 4-byte length included. */
export function mpintSize(magnitude: Uint8Array): number {
  const m = stripZeros(magnitude);
  return 4 + m.length + (m.length > 0 && (m[0] as number) & 0x80 ? 1 : 0);
}

/** Appends SSH wire fields to one growing buffer. */
export class SshWriter {
  #buf: Buffer;
  #len = 0;

  /** `capacity`: the final size when known (then `bytes()` returns the buffer without copying). */
  constructor(capacity = 256) {
    this.#buf = Buffer.allocUnsafe(Math.max(capacity, 16));
  }

  get length(): number {
    return this.#len;
  }

  #reserve(n: number): void {
    const need = this.#len + n;
    if (need <= this.#buf.length) return;
    let size = this.#buf.length * 2;
    while (size < need) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.#buf.copy(next, 0, 0, this.#len);
    this.#buf = next;
  }

  /** A byte string, or a text as UTF-8, behind its uint32 length. */
  string(value: Uint8Array | string): this {
    if (typeof value === "string") {
      const n = Buffer.byteLength(value, "utf8");
      this.#reserve(4 + n);
      this.#buf.writeUInt32BE(n, this.#len);
      this.#buf.write(value, this.#len + 4, n, "utf8");
      this.#len += 4 + n;
    } else {
      this.#reserve(4 + value.length);
      this.#buf.writeUInt32BE(value.length, this.#len);
      this.#buf.set(value, this.#len + 4);
      this.#len += 4 + value.length;
    }
    return this;
  }

  uint8(n: number): this {
    this.#reserve(1);
    this.#buf[this.#len++] = n & 0xff;
    return this;
  }

  uint32(n: number): this {
    if (!Number.isInteger(n) || n < 0 || n > 0xffff_ffff) throw malformed("uint32 out of range");
    this.#reserve(4);
    this.#buf.writeUInt32BE(n, this.#len);
    this.#len += 4;
    return this;
  }

  uint64(n: bigint): this {
    if (n < 0n || n > UINT64_MAX) throw malformed("uint64 out of range");
    this.#reserve(8);
    this.#buf.writeBigUInt64BE(n, this.#len);
    this.#len += 8;
    return this;
  }

  /**
   * A non-negative integer given as unsigned big-endian bytes: leading zeros are
   * dropped and a 0x00 is put back when the high bit is set, so it reads as positive.
   */
  mpint(magnitude: Uint8Array): this {
    const m = stripZeros(magnitude);
    const pad = m.length > 0 && (m[0] as number) & 0x80 ? 1 : 0;
    this.#reserve(4 + pad + m.length);
    this.#buf.writeUInt32BE(pad + m.length, this.#len);
    this.#len += 4;
    if (pad) this.#buf[this.#len++] = 0;
    this.#buf.set(m, this.#len);
    this.#len += m.length;
    return this;
  }

  /** Bytes as they are, with no length. */
  raw(bytes: Uint8Array): this {
    this.#reserve(bytes.length);
    this.#buf.set(bytes, this.#len);
    this.#len += bytes.length;
    return this;
  }

  /** What was written. Write nothing more afterwards: the result may share the writer's memory. */
  bytes(): Buffer {
    return this.#len === this.#buf.length ? this.#buf : Buffer.from(this.#buf.subarray(0, this.#len));
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Reads SSH wire fields from a buffer, refusing anything truncated or malformed. */
export class SshReader {
  readonly #buf: Buffer;
  #pos = 0;

  constructor(buf: Uint8Array) {
    this.#buf = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.length);
  }

  /** Offset of the next unread byte. */
  get offset(): number {
    return this.#pos;
  }

  get remaining(): number {
    return this.#buf.length - this.#pos;
  }

  #take(n: number, what: string): Buffer {
    if (n > this.#buf.length - this.#pos) throw malformed(`${what} is truncated`);
    const out = this.#buf.subarray(this.#pos, this.#pos + n);
    this.#pos += n;
    return out;
  }

  uint8(): number {
    return this.#take(1, "byte")[0] as number;
  }

  uint32(): number {
    return this.#take(4, "uint32").readUInt32BE(0);
  }

  uint64(): bigint {
    return this.#take(8, "uint64").readBigUInt64BE(0);
  }

  /** A length-prefixed byte string (a view into the input, not a copy). */
  string(): Buffer {
    const n = this.uint32();
    return this.#take(n, "string");
  }

  /** A string that must be UTF-8 text without NUL (as OpenSSH's cstring). */
  text(): string {
    const bytes = this.string();
    if (bytes.includes(0)) throw malformed("text contains NUL");
    try {
      return utf8.decode(bytes);
    } catch {
      throw malformed("text is not UTF-8");
    }
  }

  /**
   * A non-negative mpint as its unsigned big-endian magnitude (no sign byte; zero is
   * empty). Negative and non-minimal encodings are refused, as OpenSSH does.
   */
  mpint(): Buffer {
    const b = this.string();
    if (b.length > MAX_MPINT_BYTES) throw malformed("mpint too large");
    if (b.length === 0) return b;
    if ((b[0] as number) & 0x80) throw malformed("negative mpint");
    if (b[0] === 0) {
      if (b.length === 1 || !((b[1] as number) & 0x80)) throw malformed("mpint has a needless leading zero");
      return b.subarray(1);
    }
    return b;
  }

  /** Everything not read yet. */
  rest(): Buffer {
    return this.#take(this.remaining, "rest");
  }

  /** Refuses trailing bytes: `what` names the structure in the error. */
  end(what = "data"): void {
    if (this.#pos !== this.#buf.length) throw malformed(`trailing bytes after ${what}`);
  }
}
