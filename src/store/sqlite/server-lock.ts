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
 *
 * The lock is SQLite's own exclusive file lock on `<database>.lock`, taken by a
 * connection in EXCLUSIVE locking mode that never lets go of it: the kernel drops it
 * when the process ends, however it ends, so a crash leaves no stale lock behind, and
 * it holds across processes that share the file system but not a network namespace.
 */
export function lockForServer(databasePath: string): ServerLock {
  const path = `${databasePath}.lock`;
  let db: Database.Database;
  try {
    closeSync(openSync(path, "a", 0o600));
    db = new Database(path, { timeout: 0 });
  } catch (e) {
    throw new CustosError("store_unavailable", `cannot open ${path}`, { cause: e });
  }
  try {
    db.pragma("locking_mode = EXCLUSIVE");
    // The first write takes the exclusive lock; in this locking mode it is kept.
    db.exec("BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS held (id INTEGER PRIMARY KEY); DELETE FROM held; COMMIT");
  } catch (e) {
    db.close();
    if ((e as { code?: unknown }).code === "SQLITE_BUSY") {
      throw new CustosError(
        "store_unavailable",
        `another Custos server is serving ${databasePath}: one server per database (stop the other first)`,
      );
    }
    throw new CustosError("store_unavailable", `cannot lock ${path}`, { cause: e });
  }
  return { release: () => db.close() };
}
