/**
 * Runs tasks one at a time per key, in the order they were submitted, within this
 * process (one server process serves a store). For read-then-write changes that
 * would otherwise find each other's revisions stale.
 */
export class KeyedSerial {
  /** Per key, the end of the last task queued; removed once nothing is queued. */
  readonly #tails = new Map<string, Promise<void>>();

  /** Runs `task` once every task queued before it under `key` has settled. */
  async run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const before = this.#tails.get(key);
    let done!: () => void;
    const mine = new Promise<void>((resolve) => {
      done = resolve;
    });
    const tail = before === undefined ? mine : before.then(() => mine);
    this.#tails.set(key, tail);
    try {
      await before;
      return await task();
    } finally {
      done();
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }
}
