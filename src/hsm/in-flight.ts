/**
 * Find-or-create guard: while work for a key is in flight, a second call for the same
 * key shares its outcome instead of starting its own, so two concurrent first calls
 * can't both find nothing and both create.
 */
export class InFlight<T> {
  readonly #pending = new Map<string, Promise<T>>();

  /** The outcome of the work in flight for `key`, or of `start()` when there is none. */
  run(key: string, start: () => Promise<T>): Promise<T> {
    const pending = this.#pending.get(key);
    if (pending) return pending;
    const work = start().finally(() => this.#pending.delete(key));
    this.#pending.set(key, work);
    return work;
  }
}
