import type Database from "better-sqlite3";
import type { Logger } from "../../log/index.js";
import { isBusy, toStoreError, unavailable } from "./errors.js";

/**
 * State that lives outside the database but must follow its transactions (the
 * audit chain head). The queue saves it before each operation, restores it when
 * that operation's savepoint rolls back, and asks for a reload from disk when a
 * whole batch is lost.
 */
export interface TransactionalState<S> {
  save(): S;
  restore(saved: S): void;
  reload(): void;
}

export interface WriteQueueOptions {
  /** A write not durable this long after it was submitted rejects with `store_unavailable`. */
  readonly timeoutMs: number;
  readonly logger?: Logger | undefined;
}

interface Pending {
  readonly op: () => unknown;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: unknown) => void;
  readonly deadline: number;
  timer: NodeJS.Timeout | undefined;
  /** Set once the promise is settled (or the op is running), so the deadline timer leaves it alone. */
  done: boolean;
}

type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

/** How long to wait before retrying BEGIN when another process holds the write lock. */
const BUSY_RETRY_MS = 20;

/**
 * Group commit. Writes submitted during one event-loop turn run in a single
 * transaction flushed by `setImmediate`, each inside its own SAVEPOINT: an
 * operation that throws rolls back only itself and rejects only its own promise.
 * Promises settle only after COMMIT returns, which with `synchronous=FULL` means
 * the WAL is fsynced. If BEGIN or COMMIT fails, every write of the batch rejects
 * with `store_unavailable` and the transactional state is reloaded.
 */
export class WriteQueue<S> {
  readonly #db: Database.Database;
  readonly #state: TransactionalState<S>;
  readonly #options: WriteQueueOptions;
  readonly #begin: Database.Statement;
  readonly #commit: Database.Statement;
  readonly #rollback: Database.Statement;
  readonly #savepoint: Database.Statement;
  readonly #release: Database.Statement;
  readonly #rollbackTo: Database.Statement;
  #items: Pending[] = [];
  #scheduled: NodeJS.Immediate | NodeJS.Timeout | undefined;
  #closed = false;
  #drainWaiters: Array<() => void> = [];

  constructor(db: Database.Database, state: TransactionalState<S>, options: WriteQueueOptions) {
    this.#db = db;
    this.#state = state;
    this.#options = options;
    this.#begin = db.prepare("BEGIN IMMEDIATE");
    this.#commit = db.prepare("COMMIT");
    this.#rollback = db.prepare("ROLLBACK");
    this.#savepoint = db.prepare("SAVEPOINT op");
    this.#release = db.prepare("RELEASE op");
    this.#rollbackTo = db.prepare("ROLLBACK TO op");
  }

  /** Queues `op` (which runs synchronously inside the batch transaction); resolves with its result once durable. */
  submit<T>(op: () => T): Promise<T> {
    if (this.#closed) return Promise.reject(unavailable(undefined, "the store is closed"));
    return new Promise<T>((resolve, reject) => {
      const item: Pending = {
        op,
        resolve: resolve as (value: unknown) => void,
        reject,
        deadline: Date.now() + this.#options.timeoutMs,
        timer: undefined,
        done: false,
      };
      // Only an item still waiting in the queue can expire: a running batch is synchronous, so this
      // timer can never fire between an op's execution and its COMMIT.
      item.timer = setTimeout(() => this.#expire(item), this.#options.timeoutMs);
      this.#items.push(item);
      if (this.#scheduled === undefined) this.#scheduled = setImmediate(() => this.#flush());
    });
  }

  /** Stops accepting writes; resolves once every queued write has settled. */
  close(): Promise<void> {
    this.#closed = true;
    if (this.#items.length === 0 && this.#scheduled === undefined) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  #expire(item: Pending): void {
    if (item.done) return;
    this.#settle(item, { ok: false, error: unavailable(undefined, "the write could not be made durable in time") });
    this.#items = this.#items.filter((i) => i !== item);
    this.#maybeDrained();
  }

  #settle(item: Pending, outcome: Outcome): void {
    if (item.done) return;
    item.done = true;
    clearTimeout(item.timer);
    if (outcome.ok) item.resolve(outcome.value);
    else item.reject(outcome.error);
  }

  #maybeDrained(): void {
    if (this.#items.length > 0 || this.#scheduled !== undefined) return;
    for (const resolve of this.#drainWaiters.splice(0)) resolve();
  }

  #flush(): void {
    this.#scheduled = undefined;
    const now = Date.now();
    const batch: Pending[] = [];
    for (const item of this.#items) {
      if (item.done) continue;
      // The event loop may have been blocked past a deadline before its timer could run.
      if (now > item.deadline) {
        this.#settle(item, { ok: false, error: unavailable(undefined, "the write could not be made durable in time") });
      } else {
        batch.push(item);
      }
    }
    this.#items = [];
    if (batch.length > 0) this.#runBatch(batch);
    this.#maybeDrained();
  }

  #runBatch(batch: Pending[]): void {
    try {
      this.#begin.run();
    } catch (e) {
      if (isBusy(e)) {
        // Another process holds the write lock: keep the batch and try again until deadlines expire.
        this.#items = batch.concat(this.#items);
        this.#scheduled ??= setTimeout(() => this.#flush(), BUSY_RETRY_MS);
        return;
      }
      this.#failBatch(batch, e);
      return;
    }

    const outcomes: Outcome[] = [];
    let fatal: { error: unknown } | undefined;
    for (const item of batch) {
      const saved = this.#state.save();
      try {
        this.#savepoint.run();
      } catch (e) {
        fatal = { error: e };
        break;
      }
      try {
        const value = item.op();
        this.#release.run();
        outcomes.push({ ok: true, value });
      } catch (e) {
        this.#state.restore(saved);
        // SQLite rolls the whole transaction back by itself on some errors (I/O, full disk).
        if (!this.#db.inTransaction) {
          fatal = { error: e };
          break;
        }
        try {
          this.#rollbackTo.run();
          this.#release.run();
        } catch (e2) {
          fatal = { error: e2 };
          break;
        }
        outcomes.push({ ok: false, error: toStoreError(e) });
      }
    }

    if (fatal === undefined) {
      try {
        this.#commit.run();
      } catch (e) {
        fatal = { error: e };
      }
    }
    if (fatal !== undefined) {
      this.#failBatch(batch, fatal.error);
      return;
    }
    batch.forEach((item, i) => {
      this.#settle(item, outcomes[i] ?? { ok: false, error: unavailable() });
    });
  }

  #failBatch(batch: readonly Pending[], cause: unknown): void {
    if (this.#db.inTransaction) {
      try {
        this.#rollback.run();
      } catch (e) {
        this.#options.logger?.error({ err: e }, "store: rollback after a failed batch failed");
      }
    }
    try {
      this.#state.reload();
    } catch (e) {
      this.#options.logger?.error({ err: e }, "store: could not reload state after a failed batch");
    }
    this.#options.logger?.error({ err: cause, writes: batch.length }, "store: batch not committed");
    const error = unavailable(cause, "the write could not be committed");
    for (const item of batch) this.#settle(item, { ok: false, error });
  }
}
