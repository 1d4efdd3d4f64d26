import { chmodSync, closeSync, existsSync, openSync } from "node:fs";
import Database from "better-sqlite3";
import { CustosError } from "../../errors/index.js";
import { isBusy } from "./errors.js";
import { migrations as allMigrations, type Migration } from "./migrations/index.js";

/** The longest a read or a checkpoint may wait for another process's lock. Writes never wait in SQLite: they retry from a timer until their deadline. */
export const MAX_BUSY_TIMEOUT_MS = 250;

/**
 * How long opening waits for another process's lock: two processes opening a new
 * database migrate it one after the other, each migration an fsynced transaction,
 * which on a loaded disk takes longer than a request may wait. Opening blocks anyway.
 */
const OPEN_BUSY_TIMEOUT_MS = 10_000;

const PRIVATE_MODE = 0o600;

/** The database file and the two files SQLite keeps beside it in WAL mode. */
export function databaseFiles(path: string): string[] {
  return [path, `${path}-wal`, `${path}-shm`];
}

/**
 * Makes the database files readable by their owner only. SQLite creates `-wal` and
 * `-shm` with the main file's mode, so creating that one 0600 first covers them;
 * the chmod repairs files created earlier with a wider mode.
 */
function restrictFileModes(path: string): void {
  for (const file of databaseFiles(path)) {
    if (existsSync(file)) chmodSync(file, PRIVATE_MODE);
  }
}

/**
 * Opens (creating if needed) the database at `path` with the settings durability
 * depends on, and brings its schema up to date.
 */
export function openDatabase(path: string, busyTimeoutMs: number): Database.Database {
  const inMemory = path === ":memory:";
  let db: Database.Database;
  try {
    if (!inMemory) {
      // Create the file 0600 before SQLite does, so no moment exists where it is world-readable.
      closeSync(openSync(path, "a", PRIVATE_MODE));
      restrictFileModes(path);
    }
    db = new Database(path, { timeout: OPEN_BUSY_TIMEOUT_MS });
  } catch (e) {
    throw new CustosError("store_unavailable", "cannot open the database", { cause: e });
  }
  try {
    db.pragma("synchronous = FULL");
    db.pragma("foreign_keys = ON");
    // Free pages are zeroed, so deleted rows (wrapped keys, hashes) don't linger in the file.
    db.pragma("secure_delete = ON");
    retryWhileBusy(() => {
      db.pragma("journal_mode = WAL");
      migrate(db, allMigrations);
    });
    db.pragma(`busy_timeout = ${Math.trunc(busyTimeoutMs)}`);
    // From here on, COMMIT leaves the WAL fsync to the write queue, which runs it off the main thread.
    db.pragma("synchronous = NORMAL");
    if (!inMemory) {
      restrictFileModes(path);
      eraseFromWal(db);
    }
  } catch (e) {
    db.close();
    if (e instanceof CustosError) throw e;
    throw new CustosError("store_unavailable", "cannot prepare the database", { cause: e });
  }
  return db;
}

/**
 * Runs `step` (which must be safe to run again) until it is not refused as busy, for
 * up to OPEN_BUSY_TIMEOUT_MS. SQLite's busy handler covers most waits, but not all:
 * on a new database, a connection that would deadlock (switching to WAL, a reader
 * that must write) is answered SQLITE_BUSY at once, and several processes opening
 * the same new database meet exactly that. Opening is synchronous, so the pause is.
 */
function retryWhileBusy(step: () => void): void {
  const deadline = Date.now() + OPEN_BUSY_TIMEOUT_MS;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (let wait = 5; ; wait = Math.min(100, wait * 2)) {
    try {
      step();
      return;
    } catch (e) {
      if (!isBusy(e) || Date.now() >= deadline) throw e;
      Atomics.wait(pause, 0, 0, wait);
    }
  }
}

/** Retries of a checkpoint that found the WAL in use: the first after a second, then doubling up to a minute. */
const WAL_RETRY_FIRST_MS = 1000;
const WAL_RETRY_MAX_MS = 60_000;

/**
 * Erasure that reaches the WAL. secure_delete zeroes what a deletion frees, but in
 * WAL mode the zeroed page is a new frame: the older frames that held the value
 * stay in the -wal file, where a copy of the data directory finds them, until
 * SQLite happens to overwrite them. So each transaction that erases key material —
 * a secret version's ciphertext (destroyed, pruned, deleted with its secret or its
 * app) or a KMS key version's wrapped key — is followed, right after its COMMIT, by
 * `wal_checkpoint(TRUNCATE)`: the frames go into the database file (where the
 * erased bytes are zeros) and the -wal file is cut to nothing. Erasures are rare;
 * other writes never pay for this.
 *
 * The triggers are TEMP, on this connection only: the schema is unchanged. They
 * call a function that only queues the checkpoint, since nothing can checkpoint
 * inside a transaction; the write queue runs a batch, COMMIT included, in one
 * synchronous turn, so the queued microtask runs just after the COMMIT, before the
 * write is acknowledged. A checkpoint blocked by a reader in another process (it
 * waits `busy_timeout`, then gives up) is retried with back-off; a checkpoint at
 * open covers a process that ended before one succeeded.
 */
function eraseFromWal(db: Database.Database): void {
  let queued = false;
  let retry: NodeJS.Timeout | undefined;
  let retryMs = WAL_RETRY_FIRST_MS;
  const checkpoint = (): void => {
    queued = false;
    retry = undefined;
    if (!db.open) return;
    if (!db.inTransaction && truncateWal(db)) {
      retryMs = WAL_RETRY_FIRST_MS;
      return;
    }
    retry = setTimeout(checkpoint, retryMs);
    // A pending retry must not keep a process alive that has nothing else to do.
    retry.unref();
    retryMs = Math.min(WAL_RETRY_MAX_MS, retryMs * 2);
  };
  db.function("custos_material_erased", { deterministic: false }, () => {
    if (!queued && retry === undefined) {
      queued = true;
      queueMicrotask(checkpoint);
    }
    return null;
  });
  db.exec(`
    CREATE TEMP TRIGGER custos_erase_secret_destroyed AFTER UPDATE OF ciphertext ON main.secret_versions
      WHEN OLD.ciphertext IS NOT NULL AND NEW.ciphertext IS NULL BEGIN SELECT custos_material_erased(); END;
    CREATE TEMP TRIGGER custos_erase_secret_deleted AFTER DELETE ON main.secret_versions
      WHEN OLD.ciphertext IS NOT NULL BEGIN SELECT custos_material_erased(); END;
    CREATE TEMP TRIGGER custos_erase_key_destroyed AFTER UPDATE OF wrapped_key ON main.key_versions
      WHEN OLD.wrapped_key IS NOT NULL AND NEW.wrapped_key IS NULL BEGIN SELECT custos_material_erased(); END;
    CREATE TEMP TRIGGER custos_erase_key_deleted AFTER DELETE ON main.key_versions
      WHEN OLD.wrapped_key IS NOT NULL BEGIN SELECT custos_material_erased(); END;
  `);
  checkpoint();
}

/** `wal_checkpoint(TRUNCATE)`; false when a reader kept it from completing (or it failed: retried alike). */
function truncateWal(db: Database.Database): boolean {
  try {
    const [result] = db.pragma("wal_checkpoint(TRUNCATE)") as Array<{ busy: number }>;
    return result?.busy === 0;
  } catch {
    return false;
  }
}

/**
 * Applies every migration newer than the database, each in its own transaction
 * together with its row in `schema_migrations`, so a crash leaves the schema at a
 * whole version.
 */
export function migrate(db: Database.Database, migrations: readonly Migration[]): void {
  db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
  ) STRICT`);
  const applied = new Set(
    (db.prepare("SELECT version FROM schema_migrations").all() as Array<{ version: number }>).map((r) => r.version),
  );
  const newest = Math.max(0, ...applied);
  const known = Math.max(0, ...migrations.map((m) => m.version));
  if (newest > known) {
    throw new CustosError(
      "store_unavailable",
      `the database schema (version ${newest}) is newer than this build understands (${known})`,
    );
  }
  const record = db.prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)");
  const isApplied = db.prepare("SELECT 1 FROM schema_migrations WHERE version = ?");
  for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
    if (applied.has(m.version)) continue;
    db.transaction(() => {
      // Asked again under the write lock: another process opening the same new database may have applied it since.
      if (isApplied.get(m.version) !== undefined) return;
      db.exec(m.sql);
      record.run(m.version, m.name, new Date().toISOString());
    }).immediate();
  }
}
