/**
 * An unwrapped AES key living as a session object. Session objects die with the
 * session that created them, so an entry remembers that session (by pool serial)
 * and the connection epoch it belongs to.
 */
export interface UnwrappedKey {
  readonly handle: Buffer;
  readonly serial: number;
  readonly epoch: number;
  /** Operations currently using the handle; an evicted key is destroyed when this drops to 0. */
  pins: number;
  evicted: boolean;
}

/**
 * LRU of unwrapped encryption keys, keyed by a hash of the wrapped blob, so a hot key
 * is unwrapped once rather than on every call. The cache never touches the token: it
 * hands back the handles that the caller must destroy (with a session it holds).
 */
export class UnwrapCache {
  readonly capacity: number;
  readonly #map = new Map<string, UnwrappedKey>();

  constructor(capacity: number) {
    this.capacity = capacity;
  }

  get size(): number {
    return this.#map.size;
  }

  /** The live entry for `key`, pinned for the caller; stale-epoch entries are forgotten. */
  lookup(key: string, epoch: number): UnwrappedKey | undefined {
    const entry = this.#map.get(key);
    if (!entry) return undefined;
    this.#map.delete(key);
    if (entry.epoch !== epoch) return undefined;
    this.#map.set(key, entry);
    entry.pins++;
    return entry;
  }

  /**
   * Adds a freshly unwrapped key (pinned for the caller). If another operation got
   * there first, its entry wins and the new handle is returned for destruction.
   * Returns the entry to use and the handles to destroy now.
   */
  insert(key: string, fresh: UnwrappedKey, currentEpoch: number): { entry: UnwrappedKey; destroy: Buffer[] } {
    const destroy: Buffer[] = [];
    if (fresh.epoch !== currentEpoch) {
      // Made on a session of a past epoch: usable by this one call, never cached.
      fresh.evicted = true;
      return { entry: fresh, destroy };
    }
    const existing = this.lookup(key, currentEpoch);
    if (existing) {
      destroy.push(fresh.handle);
      return { entry: existing, destroy };
    }
    this.#map.set(key, fresh);
    while (this.#map.size > this.capacity) {
      const oldest = this.#map.entries().next().value;
      if (!oldest) break;
      const [oldKey, old] = oldest;
      this.#map.delete(oldKey);
      old.evicted = true;
      if (old.pins === 0) destroy.push(old.handle);
    }
    return { entry: fresh, destroy };
  }

  /** Releases the caller's pin; true when the handle is no longer cached and must be destroyed. */
  unpin(entry: UnwrappedKey): boolean {
    entry.pins--;
    return entry.evicted && entry.pins === 0;
  }

  /** Forgets the key, e.g. after its handle turned out to be dead. */
  evict(key: string, entry: UnwrappedKey): void {
    if (this.#map.get(key) === entry) this.#map.delete(key);
    entry.evicted = true;
  }

  /** Forgets the keys created by a session that is being closed (its objects die with it). */
  dropSession(serial: number): void {
    for (const [key, entry] of this.#map) {
      if (entry.serial === serial) {
        this.#map.delete(key);
        entry.evicted = true;
      }
    }
  }

  /** Forgets everything (sessions were lost or the token re-logged-in). */
  clear(): void {
    for (const entry of this.#map.values()) entry.evicted = true;
    this.#map.clear();
  }
}
