/**
 * The envelope library's front door: encrypt and decrypt buffers and streams, read
 * byte ranges, with data keys from the KMS through the data-key cache.
 */
import { randomBytes } from "node:crypto";
import type { Transform } from "node:stream";
import { canonicalContext, type EncryptionContext, validateContext } from "../context/index.js";
import { CustosError } from "../errors/index.js";
import { CachedKeys, type CacheLimits, DEFAULT_CACHE_LIMITS, DirectKeys, type KeySource } from "./cache.js";
import { ChunkOpener, ChunkSealer } from "./chunks.js";
import { decryptionFailed } from "./errors.js";
import {
  checkKeyName,
  DEFAULT_CHUNK_SIZE,
  deriveKeys,
  encodeHeader,
  type Header,
  MAX_CHUNK_SIZE,
  MESSAGE_ID_BYTES,
  MIN_CHUNK_SIZE,
  NONCE_PREFIX_BYTES,
  parseHeader,
  TAG_BYTES,
  verifyHeader,
} from "./format.js";
import type { EnvelopeKms } from "./kms.js";
import { bufferSource, type RangeSource, readAll, readHeader, readRange } from "./range.js";
import { DecryptStream, EncryptStream } from "./streams.js";

export interface EnvelopeOptions {
  readonly kms: EnvelopeKms;
  /** Data-key cache limits (defaults in `DEFAULT_CACHE_LIMITS`), or `false` for one KMS call per message. */
  readonly cache?: Partial<CacheLimits> | false;
  /** Plaintext bytes per chunk, 1 B to 16 MiB; 256 KiB by default. */
  readonly chunkSize?: number;
}

export interface EncryptOptions {
  /** The KMS key that wraps the data key. */
  readonly key: string;
  /** Bound to the message and stored in its header, in clear. */
  readonly context?: EncryptionContext;
}

export interface DecryptOptions {
  /** The context the message must carry; a different one is `decryption_failed`. */
  readonly context?: EncryptionContext;
}

/** A message in progress: its header, and the sealer for its chunks. */
export interface Sealing {
  readonly header: Buffer;
  readonly sealer: ChunkSealer;
  readonly chunkSize: number;
  addBytes(bytes: number): void;
}

/** An authenticated header and the opener for its chunks. */
export interface Opening {
  readonly header: Header;
  readonly opener: ChunkOpener;
}

export class Envelope {
  readonly #keys: KeySource;
  readonly #chunkSize: number;

  constructor(options: EnvelopeOptions) {
    const cache = options.cache ?? {};
    this.#keys =
      cache === false
        ? new DirectKeys(options.kms)
        : new CachedKeys(options.kms, checkLimits({ ...DEFAULT_CACHE_LIMITS, ...cache }));
    this.#chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    if (!Number.isInteger(this.#chunkSize) || this.#chunkSize < MIN_CHUNK_SIZE || this.#chunkSize > MAX_CHUNK_SIZE) {
      throw new CustosError(
        "invalid_request",
        `chunkSize must be an integer from ${MIN_CHUNK_SIZE} to ${MAX_CHUNK_SIZE}`,
      );
    }
  }

  /** Data-key requests this envelope has made to the KMS. */
  get kmsCalls(): number {
    return this.#keys.kmsCalls;
  }

  /** Encrypts a whole buffer into one message. */
  async encrypt(plaintext: Uint8Array, options: EncryptOptions): Promise<Buffer> {
    const sealing = await this.#beginSealing(options);
    const size = this.#chunkSize;
    const data = Buffer.from(plaintext.buffer, plaintext.byteOffset, plaintext.byteLength);
    const chunks = Math.max(1, Math.ceil(data.length / size));
    const out = Buffer.allocUnsafe(sealing.header.length + data.length + chunks * TAG_BYTES);
    let at = sealing.header.copy(out, 0);
    for (let i = 0; i < chunks; i++) {
      at = sealing.sealer.sealInto(i, data.subarray(i * size, (i + 1) * size), i === chunks - 1, out, at);
    }
    sealing.addBytes(data.length);
    return out;
  }

  /** Decrypts a whole message; any damage is `decryption_failed` and returns nothing. */
  async decrypt(message: Uint8Array, options: DecryptOptions = {}): Promise<Buffer> {
    const bytes = Buffer.from(message.buffer, message.byteOffset, message.byteLength);
    let header: Header;
    try {
      header = parseHeader(bytes);
    } catch {
      throw decryptionFailed();
    }
    const { opener } = await this.#beginOpening(header, options);
    return readAll(bufferSource(bytes), { header, opener });
  }

  /** A Transform from plaintext to one message. Back-pressure flows through it. */
  encryptStream(options: EncryptOptions): Transform {
    return new EncryptStream(() => this.#beginSealing(options));
  }

  /** A Transform from a message to its plaintext, released chunk by chunk as each tag verifies. */
  decryptStream(options: DecryptOptions = {}): Transform {
    return new DecryptStream((header) => this.#beginOpening(header, options));
  }

  /**
   * Plaintext bytes [start, end) of the message in `source`, decrypting only the chunks
   * that hold them. `end` past the plaintext is clamped; `start` past it is an error.
   */
  async readRange(source: RangeSource, start: number, end: number, options: DecryptOptions = {}): Promise<Buffer> {
    const header = await readHeader(source);
    const opening = await this.#beginOpening(header, options);
    return readRange(source, opening, start, end);
  }

  /** Zeroes every cached data key. The envelope stays usable (the cache refills). */
  close(): void {
    this.#keys.clear();
  }

  /** Fetches (or reuses) a data key and derives this message's keys from it. */
  async #beginSealing(options: EncryptOptions): Promise<Sealing> {
    const keyName = options.key;
    if (typeof keyName !== "string" || !checkKeyName(keyName)) {
      throw new CustosError("invalid_request", "key must be a KMS key name: 1..128 of [a-zA-Z0-9._-]");
    }
    const context = validateContext(options.context);
    // One draw for both: each call into the RNG costs more than the bytes.
    const random = randomBytes(MESSAGE_ID_BYTES + NONCE_PREFIX_BYTES);
    const messageId = random.subarray(0, MESSAGE_ID_BYTES);
    const noncePrefix = random.subarray(MESSAGE_ID_BYTES);
    const derived = await this.#keys.forEncryption(keyName, context, (dataKey) => deriveKeys(dataKey, messageId));
    const keys = derived.value;
    try {
      const header = encodeHeader(
        {
          keyName,
          context,
          chunkSize: this.#chunkSize,
          noncePrefix,
          messageId,
          keyVersion: derived.version,
          wrappedKey: derived.wrapped,
        },
        keys,
      );
      return {
        header,
        sealer: new ChunkSealer(keys.contentKey, noncePrefix),
        chunkSize: this.#chunkSize,
        addBytes: derived.addBytes,
      };
    } finally {
      keys.destroy();
    }
  }

  /** Checks the expected context, unwraps the data key and authenticates the header. */
  async #beginOpening(header: Header, options: DecryptOptions): Promise<Opening> {
    const expected = validateContext(options.context);
    if (!canonicalContext(expected).equals(canonicalContext(header.context))) throw decryptionFailed();
    let unwrapped: { value: ReturnType<typeof deriveKeys>; version: number };
    try {
      unwrapped = await this.#keys.forDecryption(header.keyName, header.wrappedKey, header.context, (dataKey) =>
        deriveKeys(dataKey, header.messageId),
      );
    } catch (e) {
      const code = (e as { code?: unknown } | null)?.code;
      // A key name that names nothing, or names a key of another purpose, is damage too: the name is only
      // authenticated by the MAC checked below. A disabled key is the key's state, not the message's: it says so.
      // So does a key version retired by minDecryptionVersion (version_too_old): the version is in the header in
      // clear, so naming it tells nothing new, and it tells an operator what to do.
      if (code === "decryption_failed" || code === "not_found" || code === "key_purpose_mismatch") {
        throw decryptionFailed();
      }
      throw e;
    }
    const keys = unwrapped.value;
    try {
      if (unwrapped.version !== header.keyVersion) throw decryptionFailed();
      verifyHeader(header, keys);
      return { header, opener: new ChunkOpener(keys.contentKey, header.noncePrefix) };
    } finally {
      keys.destroy();
    }
  }
}

/**
 * A cached data key serves for at most a day: the age limit is also how long a key disabled in the KMS still
 * encrypts through the cache, and how long a data key stays in memory.
 */
const MAX_CACHE_AGE_MS = 86_400_000;

/**
 * Counts are whole numbers from 1: below one entry or one message the cache holds nothing it could lend. Byte
 * counts stay exact up to the largest safe integer, and no further.
 */
const LIMITS: Record<keyof CacheLimits, { readonly integer: boolean; readonly max: number }> = {
  maxAgeMs: { integer: false, max: MAX_CACHE_AGE_MS },
  maxMessages: { integer: true, max: Number.MAX_SAFE_INTEGER },
  maxBytes: { integer: false, max: Number.MAX_SAFE_INTEGER },
  maxEntries: { integer: true, max: Number.MAX_SAFE_INTEGER },
};

function checkLimits(limits: CacheLimits): CacheLimits {
  for (const [name, value] of Object.entries(limits)) {
    if (!Object.hasOwn(LIMITS, name)) throw new CustosError("invalid_request", `unknown cache limit ${name}`);
    const { integer, max } = LIMITS[name as keyof CacheLimits];
    if (typeof value !== "number" || !(value > 0 && value <= max) || (integer && !Number.isInteger(value))) {
      const range = integer ? `an integer from 1 to ${max}` : `a number above 0, at most ${max}`;
      throw new CustosError("invalid_request", `cache limit ${name} must be ${range}`);
    }
  }
  return limits;
}
