import { closeSync, openSync } from "node:fs";
import Database from "better-sqlite3";
import { CustosError } from "../../errors/index.js";

/** A lock one process holds until it releases it or dies. */
export interface ServerLock {
  release(): void;
}

/**
 * One server per database. A store keeps the audit chain's head and a read cache in
 * memory, so a second server on the same file would fork the chain (its appends fail
 * on the sequence number) and serve keys another process has changed.
 */
export function lockForServer(databasePath: string): ServerLock {
  return fileLock(
    `${databasePath}.lock`,
    0,
    `another Custos server is serving ${databasePath}: one server per database (stop the other first)`,
  );
}

/** How long a `custos init` waits for another one on the same database to finish. */
const INIT_WAIT_MS = 120_000;

/**
 * One `custos init` at a time per database; a second waits for the first, then finds
 * the store initialised. PKCS#11 has no create-if-absent, and the HSM can't referee
 * two processes making the root key at once: SoftHSM's process that has just made an
 * object does not see one another process made meanwhile, so both kept theirs.
 * A lock of its own, not the server's: init runs beside a serving server (it checks
 * the root key and rewrites the CA file).
 */
export function lockForInit(databasePath: string): ServerLock {
  return fileLock(
    `${databasePath}.init-lock`,
    INIT_WAIT_MS,
    `another custos init on ${databasePath} held it for ${INIT_WAIT_MS / 1000} s`,
  );
}

/**
 * SQLite's own exclusive file lock on `path`, taken by a connection in EXCLUSIVE
 * locking mode that never lets go of it: the kernel drops it when the process ends,
 * however it ends, so a crash leaves no stale lock behind, and it holds across
 * processes that share the file system but not a network namespace. Waits up to
 * `waitMs` for another holder (blocking this thread: only for commands that do
 * nothing else meanwhile).
 */
function fileLock(path: string, waitMs: number, busy: string): ServerLock {
  let db: Database.Database;
  try {
    closeSync(openSync(path, "a", 0o600));
    db = new Database(path, { timeout: waitMs });
  } catch (e) {
    throw new CustosError("store_unavailable", `cannot open ${path}`, { cause: e });
  }
  try {
    db.pragma("locking_mode = EXCLUSIVE");
    // The first write takes the exclusive lock; in this locking mode it is kept.
    db.exec("BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS held (id INTEGER PRIMARY KEY); DELETE FROM held; COMMIT");
  } catch (e) {
    db.close();
    if ((e as { code?: unknown }).code === "SQLITE_BUSY") throw new CustosError("store_unavailable", busy);
    throw new CustosError("store_unavailable", `cannot lock ${path}`, { cause: e });
  }
  return { release: () => db.close() };
}
