import { closeSync, fdatasync, openSync } from "node:fs";
import type Database from "better-sqlite3";
import type { CustosError } from "../../errors/index.js";
import type { Logger } from "../../log/index.js";
import { isBusy, notCommitted, toStoreError, unavailable } from "./errors.js";

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
  /**
   * The database's WAL file, which the queue fsyncs after each COMMIT (the
   * connection runs `synchronous=NORMAL`); null for an in-memory database.
   */
  readonly walPath: string | null;
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
 * If BEGIN or COMMIT fails, every write of the batch rejects with
 * `store_unavailable` and the transactional state is reloaded.
 *
 * Durability: the connection runs `synchronous=NORMAL`, so COMMIT writes the WAL
 * into the page cache (safe from a process crash) without waiting for the disk;
 * the queue then fdatasyncs the WAL on libuv's thread pool and settles a batch's
 * promises only after a sync that began after its COMMIT. The main thread keeps
 * serving while the disk works, and one sync covers every batch committed while
 * the previous one ran. This is what `synchronous=FULL` guarantees (an
 * acknowledged write survives power loss) without blocking the event loop for
 * each fsync. Readers wait for the same sync (`whenDurable`), so no answer is
 * ever built on a write that could still be lost.
 */
export class WriteQueue<S> {
  readonly #db: Database.Database;
  readonly #state: TransactionalState<S>;
  readonly #options: WriteQueueOptions;
  readonly #begin: Database.Statement;
  readonly #busyWaitOff: Database.Statement;
  readonly #busyWaitOn: Database.Statement;
  readonly #commit: Database.Statement;
  readonly #rollback: Database.Statement;
  readonly #savepoint: Database.Statement;
  readonly #release: Database.Statement;
  readonly #rollbackTo: Database.Statement;
  #items: Pending[] = [];
  #scheduled: NodeJS.Immediate | NodeJS.Timeout | undefined;
  #closed = false;
  #drainWaiters: Array<() => void> = [];
  /** Committed batches whose outcomes wait for the WAL sync. */
  #unsynced: Array<(error?: unknown) => void> = [];
  #syncing = false;
  #walFd: number | undefined;
  /** Batches committed, and batches known durable: a reader waits until the second reaches the first. */
  #committed = 0;
  #durable = 0;
  #durabilityWaiters: Array<{ readonly target: number; resolve(): void; reject(e: unknown): void }> = [];

  constructor(db: Database.Database, state: TransactionalState<S>, options: WriteQueueOptions) {
    this.#db = db;
    this.#state = state;
    this.#options = options;
    this.#begin = db.prepare("BEGIN IMMEDIATE");
    // SQLite's busy handler sleeps on the calling thread, which here is the event loop: BEGIN runs with none,
    // and another process's write lock is waited out by retrying from a timer. Reads keep the connection's wait.
    const busyTimeoutMs = Number(db.pragma("busy_timeout", { simple: true }));
    this.#busyWaitOff = db.prepare("PRAGMA busy_timeout = 0");
    this.#busyWaitOn = db.prepare(`PRAGMA busy_timeout = ${Math.trunc(busyTimeoutMs)}`);
    this.#commit = db.prepare("COMMIT");
    this.#rollback = db.prepare("ROLLBACK");
    this.#savepoint = db.prepare("SAVEPOINT op");
    this.#release = db.prepare("RELEASE op");
    this.#rollbackTo = db.prepare("ROLLBACK TO op");
  }

  /** Queues `op` (which runs synchronously inside the batch transaction); resolves with its result once durable. */
  submit<T>(op: () => T): Promise<T> {
    if (this.#closed) return Promise.reject(notCommitted(undefined, "the store is closed"));
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
    if (this.#idle()) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  /** Releases the WAL file descriptor; after the database is closed. */
  release(): void {
    if (this.#walFd !== undefined) closeSync(this.#walFd);
    this.#walFd = undefined;
  }

  /**
   * Resolves once every batch committed so far is on disk (at once when all are):
   * readers call it so that what they read from a commit still in flight is not
   * answered before the commit is durable. Rejects if that sync failed.
   */
  whenDurable(): Promise<void> | undefined {
    if (this.#durable === this.#committed) return undefined;
    return new Promise((resolve, reject) => this.#durabilityWaiters.push({ target: this.#committed, resolve, reject }));
  }

  #idle(): boolean {
    return this.#items.length === 0 && this.#scheduled === undefined && !this.#syncing && this.#unsynced.length === 0;
  }

  #expire(item: Pending): void {
    if (item.done) return;
    this.#settle(item, { ok: false, error: expired() });
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
    if (!this.#idle()) return;
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
        this.#settle(item, { ok: false, error: expired() });
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
      this.#busyWaitOff.run();
      try {
        this.#begin.run();
      } finally {
        this.#busyWaitOn.run();
      }
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
    // Committed: no deadline may now report the write as failed while its sync runs.
    for (const item of batch) clearTimeout(item.timer);
    this.#committed++;
    this.#unsynced.push((error?: unknown) =>
      batch.forEach((item, i) => {
        this.#settle(
          item,
          error === undefined ? (outcomes[i] ?? { ok: false, error: unavailable() }) : { ok: false, error },
        );
      }),
    );
    if (!this.#syncing) this.#sync();
  }

  /** fdatasyncs the WAL off the main thread, then settles every batch committed before it began. */
  #sync(): void {
    const waiting = this.#unsynced;
    const covers = this.#committed;
    this.#unsynced = [];
    this.#syncing = true;
    const done = (err: unknown): void => {
      this.#syncing = false;
      const error = err ? unavailable(err, "the write could not be made durable") : undefined;
      if (error) this.#options.logger?.error({ err }, "store: WAL sync failed");
      for (const settle of waiting) settle(error);
      this.#durable = covers;
      this.#durabilityWaiters = this.#durabilityWaiters.filter((w) => {
        if (w.target > covers) return true;
        if (error) w.reject(error);
        else w.resolve();
        return false;
      });
      if (this.#unsynced.length > 0) this.#sync();
      else this.#maybeDrained();
    };
    if (this.#options.walPath === null) {
      setImmediate(done, null);
      return;
    }
    try {
      // Opened once, after the first COMMIT created the file, and never closed while SQLite has it open.
      this.#walFd ??= openSync(this.#options.walPath, "r+");
    } catch (e) {
      setImmediate(done, e);
      return;
    }
    fdatasync(this.#walFd, done);
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
    const error = notCommitted(cause, "the write could not be committed");
    for (const item of batch) this.#settle(item, { ok: false, error });
  }
}

/** A write whose deadline passed while it waited in the queue: it never began. */
function expired(): CustosError {
  return notCommitted(undefined, "the write could not be made durable in time");
}
