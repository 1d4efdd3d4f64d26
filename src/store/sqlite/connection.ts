import { chmodSync, closeSync, existsSync, openSync } from "node:fs";
import Database from "better-sqlite3";
import { CustosError } from "../../errors/index.js";
import { migrations as allMigrations, type Migration } from "./migrations/index.js";

/** The longest a single statement may wait for another process's lock; writes retry past it until their deadline. */
export const MAX_BUSY_TIMEOUT_MS = 250;

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
  if (!inMemory) {
    // Create the file 0600 before SQLite does, so no moment exists where it is world-readable.
    closeSync(openSync(path, "a", PRIVATE_MODE));
    restrictFileModes(path);
  }
  let db: Database.Database;
  try {
    db = new Database(path, { timeout: busyTimeoutMs });
  } catch (e) {
    throw new CustosError("store_unavailable", "cannot open the database", { cause: e });
  }
  try {
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = FULL");
    db.pragma("foreign_keys = ON");
    db.pragma(`busy_timeout = ${Math.trunc(busyTimeoutMs)}`);
    // Free pages are zeroed, so deleted rows (wrapped keys, hashes) don't linger in the file.
    db.pragma("secure_delete = ON");
    migrate(db, allMigrations);
    // From here on, COMMIT leaves the WAL fsync to the write queue, which runs it off the main thread.
    db.pragma("synchronous = NORMAL");
    if (!inMemory) restrictFileModes(path);
  } catch (e) {
    db.close();
    if (e instanceof CustosError) throw e;
    throw new CustosError("store_unavailable", "cannot prepare the database", { cause: e });
  }
  return db;
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
  for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
    if (applied.has(m.version)) continue;
    db.transaction(() => {
      db.exec(m.sql);
      record.run(m.version, m.name, new Date().toISOString());
    }).immediate();
  }
}
