/**
 * Records read on every KMS call (a key by name, one of its versions), kept in
 * memory between the writes that change them. It is correct because this
 * connection is the only writer of those tables (one server process per database
 * file) and every write to them clears the cache from inside its transaction:
 * reads and batches run on the same thread, so no read falls between a commit and
 * its clear, and a hit is never older than the last commit. A rolled-back write
 * only costs a miss.
 */
export class ReadCache<V extends object> {
  readonly #entries = new Map<string, V>();
  readonly #limit: number;

  constructor(limit: number) {
    this.#limit = limit;
  }

  get(id: string): V | undefined {
    return this.#entries.get(id);
  }

  /** Keeps `value` (frozen: every caller gets the same object), dropping the oldest entry past the limit. */
  set(id: string, value: V): V {
    if (this.#entries.size >= this.#limit && !this.#entries.has(id)) {
      const oldest = this.#entries.keys().next();
      if (!oldest.done) this.#entries.delete(oldest.value);
    }
    this.#entries.set(id, Object.freeze(value));
    return value;
  }

  clear(): void {
    this.#entries.clear();
  }
}
