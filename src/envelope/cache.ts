/**
 * The data-key cache. Without it every message costs a KMS round trip (and an HSM
 * operation and an audit record); with it, messages under one key and context share
 * a data key within limits on age, message count and bytes, as in the AWS Encryption
 * SDK's caching materials manager. Sharing is safe because each message derives its
 * own content key from a fresh message id (docs/envelope-format.md). Cached keys are
 * `Secret`s (never printed or serialised) and are zeroed when evicted.
 */
import { canonicalContext, type EncryptionContext } from "../context/index.js";
import type { Secret } from "../secret/index.js";
import type { DataKey, EnvelopeKms, UnwrappedKey } from "./kms.js";

export interface CacheLimits {
  /** A cached data key is used for new messages for at most this long. */
  readonly maxAgeMs: number;
  /** … for at most this many messages. */
  readonly maxMessages: number;
  /** … while fewer than this many plaintext bytes have been encrypted under it (checked when a message starts). */
  readonly maxBytes: number;
  /** Data keys held at once for encryption, and again for decryption; the least recently used goes first. */
  readonly maxEntries: number;
}

export const DEFAULT_CACHE_LIMITS: CacheLimits = {
  maxAgeMs: 5 * 60_000,
  maxMessages: 10_000,
  maxBytes: 16 * 1024 ** 3,
  maxEntries: 1_000,
};

interface EncryptEntry {
  readonly key: DataKey;
  readonly createdAt: number;
  messages: number;
  bytes: number;
}

interface DecryptEntry {
  readonly key: UnwrappedKey;
  readonly createdAt: number;
}

/** What a message gets from a key source: what it derived from the data key, and the wrapped form. */
export interface Derived<T> {
  readonly value: T;
  readonly wrapped: string;
  readonly version: number;
  /** Counts plaintext bytes encrypted under this data key (streams call it as they go). */
  addBytes(bytes: number): void;
}

/**
 * Where data keys come from: straight from the KMS, or through the cache. The data
 * key is lent to `derive` synchronously and never leaves: a message derives its own
 * keys from it at once, so eviction (which zeroes it) can never pull it from under a
 * message in progress.
 */
export interface KeySource {
  forEncryption<T>(keyName: string, context: EncryptionContext, derive: (dataKey: Buffer) => T): Promise<Derived<T>>;
  forDecryption<T>(
    keyName: string,
    wrapped: string,
    context: EncryptionContext,
    derive: (dataKey: Buffer) => T,
  ): Promise<{ value: T; version: number }>;
  /** Data-key requests made to the KMS so far. */
  readonly kmsCalls: number;
  /** Zeroes every key held. */
  clear(): void;
}

const noBytes = () => {};

/** No cache: one KMS call per message, and the data key is zeroed as soon as the message has its keys. */
export class DirectKeys implements KeySource {
  #calls = 0;
  constructor(private readonly kms: EnvelopeKms) {}

  get kmsCalls(): number {
    return this.#calls;
  }

  async forEncryption<T>(keyName: string, context: EncryptionContext, derive: (dataKey: Buffer) => T) {
    this.#calls++;
    const key = await this.kms.generateDataKey(keyName, context);
    return { value: lendOnce(key.plaintext, derive), wrapped: key.wrapped, version: key.version, addBytes: noBytes };
  }

  async forDecryption<T>(keyName: string, wrapped: string, context: EncryptionContext, derive: (dataKey: Buffer) => T) {
    this.#calls++;
    const key = await this.kms.decryptDataKey(keyName, wrapped, context);
    return { value: lendOnce(key.plaintext, derive), version: key.version };
  }

  clear(): void {}
}

function lendOnce<T>(secret: Secret, fn: (bytes: Buffer) => T): T {
  try {
    return secret.use(fn);
  } finally {
    secret.destroy();
  }
}

/** Data keys shared within `limits`; concurrent requests for the same key wait for one KMS call. */
export class CachedKeys implements KeySource {
  readonly #encrypting = new Map<string, EncryptEntry>();
  readonly #decrypting = new Map<string, DecryptEntry>();
  readonly #inFlight = new Map<string, Promise<unknown>>();
  readonly #now: () => number;
  #calls = 0;

  constructor(
    private readonly kms: EnvelopeKms,
    private readonly limits: CacheLimits,
    now: () => number = Date.now,
  ) {
    this.#now = now;
  }

  get kmsCalls(): number {
    return this.#calls;
  }

  async forEncryption<T>(keyName: string, context: EncryptionContext, derive: (dataKey: Buffer) => T) {
    const id = `${keyName}\n${canonicalContext(context).toString("base64")}`;
    for (;;) {
      const entry = this.#encrypting.get(id);
      if (entry !== undefined && this.#usable(entry)) return this.#lendForEncryption(id, entry, derive);
      if (entry !== undefined) this.#evict(this.#encrypting, id);
      const served = await this.#once(`e\n${id}`, async () => {
        this.#calls++;
        const key = await this.kms.generateDataKey(keyName, context);
        const fresh: EncryptEntry = { key, createdAt: this.#now(), messages: 0, bytes: 0 };
        this.#insert(this.#encrypting, id, fresh);
        return this.#lendForEncryption(id, fresh, derive);
      });
      if (served !== undefined) return served;
      // Loop: take a share of the key another caller fetched (or, if others used it up first, fetch again).
    }
  }

  async forDecryption<T>(keyName: string, wrapped: string, context: EncryptionContext, derive: (dataKey: Buffer) => T) {
    const id = `${keyName}\n${wrapped}\n${canonicalContext(context).toString("base64")}`;
    for (;;) {
      const entry = this.#decrypting.get(id);
      if (entry !== undefined && this.#now() - entry.createdAt < this.limits.maxAgeMs) {
        return this.#lendForDecryption(id, entry, derive);
      }
      if (entry !== undefined) this.#evict(this.#decrypting, id);
      const served = await this.#once(`d\n${id}`, async () => {
        this.#calls++;
        const key = await this.kms.decryptDataKey(keyName, wrapped, context);
        const fresh: DecryptEntry = { key, createdAt: this.#now() };
        this.#insert(this.#decrypting, id, fresh);
        return this.#lendForDecryption(id, fresh, derive);
      });
      if (served !== undefined) return served;
    }
  }

  clear(): void {
    for (const id of [...this.#encrypting.keys()]) this.#evict(this.#encrypting, id);
    for (const id of [...this.#decrypting.keys()]) this.#evict(this.#decrypting, id);
  }

  #usable(entry: EncryptEntry): boolean {
    return (
      this.#now() - entry.createdAt < this.limits.maxAgeMs &&
      entry.messages < this.limits.maxMessages &&
      entry.bytes < this.limits.maxBytes
    );
  }

  #lendForEncryption<T>(id: string, entry: EncryptEntry, derive: (dataKey: Buffer) => T): Derived<T> {
    entry.messages++;
    touch(this.#encrypting, id, entry);
    return {
      value: entry.key.plaintext.use(derive),
      wrapped: entry.key.wrapped,
      version: entry.key.version,
      addBytes: (n: number) => {
        entry.bytes += n;
      },
    };
  }

  #lendForDecryption<T>(id: string, entry: DecryptEntry, derive: (dataKey: Buffer) => T) {
    touch(this.#decrypting, id, entry);
    return { value: entry.key.plaintext.use(derive), version: entry.key.version };
  }

  /**
   * Runs `fetch` once for concurrent callers with the same id. The caller that ran it gets its result: the fetch lends
   * the fresh key to that caller before anything else can use up, expire or evict it, so every KMS call serves at
   * least its caller and the loops above end whatever the limits. The callers that waited get `undefined` once it is
   * done, and look again; all of them see its failure.
   */
  async #once<R>(id: string, fetch: () => Promise<R>): Promise<R | undefined> {
    const pending = this.#inFlight.get(id);
    if (pending !== undefined) {
      await pending;
      return undefined;
    }
    const fetching = fetch().finally(() => this.#inFlight.delete(id));
    this.#inFlight.set(id, fetching);
    return fetching;
  }

  #insert<E extends { key: { plaintext: { destroy(): void } } }>(map: Map<string, E>, id: string, entry: E): void {
    this.#evict(map, id);
    map.set(id, entry);
    // The least recently used go first, never the entry just inserted (the newest): its caller is about to use it.
    for (const oldest of map.keys()) {
      if (oldest === id || map.size <= this.limits.maxEntries) break;
      this.#evict(map, oldest);
    }
  }

  #evict<E extends { key: { plaintext: { destroy(): void } } }>(map: Map<string, E>, id: string): void {
    const entry = map.get(id);
    if (entry === undefined) return;
    map.delete(id);
    entry.key.plaintext.destroy();
  }
}

/** Moves an entry to the end of the map's order: the most recently used. */
function touch<E>(map: Map<string, E>, id: string, entry: E): void {
  map.delete(id);
  map.set(id, entry);
}
