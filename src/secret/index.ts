import { inspect } from "node:util";

const REDACTED = "[REDACTED]";

/**
 * A value that holds key material or a credential. It prints as `[REDACTED]` in
 * logs, `JSON.stringify` and `util.inspect`; the bytes are reachable only through
 * `use()`/`expose()` and live in a closure-held buffer that `destroy()` zeroes.
 */
export class Secret {
  readonly #bytes: Buffer;
  #destroyed = false;

  private constructor(bytes: Buffer) {
    this.#bytes = bytes;
  }

  /** Takes ownership of `bytes` (the caller must not keep using the buffer). */
  static adopt(bytes: Buffer): Secret {
    return new Secret(bytes);
  }

  /** Copies `bytes`, leaving the caller's buffer untouched. */
  static copy(bytes: Uint8Array): Secret {
    const own = unpooled(bytes.length);
    own.set(bytes);
    return new Secret(own);
  }

  static fromString(value: string): Secret {
    const own = unpooled(Buffer.byteLength(value, "utf8"));
    own.write(value, "utf8");
    return new Secret(own);
  }

  get length(): number {
    return this.#bytes.length;
  }

  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** Lends the bytes to `fn`; they must not escape it. */
  use<T>(fn: (bytes: Buffer) => T): T {
    this.#assertAlive();
    return fn(this.#bytes);
  }

  /**
   * Returns the bytes themselves, for handing plaintext to the one party entitled to
   * it (an API response to the caller that asked). Prefer `use()` everywhere else.
   */
  expose(): Buffer {
    this.#assertAlive();
    return this.#bytes;
  }

  /** The bytes as UTF-8 text (for tokens and passwords). */
  exposeText(): string {
    this.#assertAlive();
    return this.#bytes.toString("utf8");
  }

  /** Zeroes the bytes; later use throws. Idempotent. */
  destroy(): void {
    this.#bytes.fill(0);
    this.#destroyed = true;
  }

  toString(): string {
    return REDACTED;
  }

  toJSON(): string {
    return REDACTED;
  }

  [inspect.custom](): string {
    return REDACTED;
  }

  #assertAlive(): void {
    if (this.#destroyed) throw new Error("secret used after destroy");
  }
}

/**
 * A buffer with memory of its own. Small `Buffer.from` copies are slices of a pool
 * shared with unrelated buffers, whose `.buffer` would expose the secret to whoever
 * holds one of them (an IV handed back to a caller, say).
 */
function unpooled(length: number): Buffer {
  return Buffer.allocUnsafeSlow(length);
}
