import { createHash, randomBytes } from "node:crypto";
import {
  closeSync,
  existsSync,
  fsyncSync,
  linkSync,
  openSync,
  readdirSync,
  readSync,
  renameSync,
  rmSync,
  type Stats,
  statSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import Database from "better-sqlite3";
import { CustosError } from "../../errors/index.js";
import { databaseFiles } from "./connection.js";
import { unavailable } from "./errors.js";
import { migrations } from "./migrations/index.js";
import { lockForServer } from "./server-lock.js";

/**
 * A store's database copied out whole (a backup) and put back (a restore). The copy
 * is one self-contained file: SQLite's online backup of the serving connection,
 * switched out of WAL mode so that it needs no -wal or -shm beside it.
 */

/** What a copy holds: its newest audit record, which ties the file to the log. */
export interface SnapshotInfo {
  readonly auditSeq: number;
}

const PRIVATE_MODE = 0o600;

/** The name part that marks a backup's copy beside its database. */
const COPY_INFIX = ".backup-";

/**
 * Copies `db` as of one moment into a new file (created 0600) beside it, while the
 * server goes on: where the database's space was planned, not the system's temp
 * directory (often a small tmpfs). The backup runs in steps with the event loop
 * turning between them, and a write committed on this same connection meanwhile is
 * carried into the copy by SQLite, so the copy is of the moment it finishes.
 */
export async function copyDatabase(db: Database.Database): Promise<SnapshotInfo & { path: string }> {
  const beside = db.memory ? join(tmpdir(), "custos.db") : db.name;
  const path = `${beside}${COPY_INFIX}${randomBytes(8).toString("hex")}`;
  try {
    closeSync(openSync(path, "wx", PRIVATE_MODE));
    await db.backup(path);
    const copy = new Database(path);
    try {
      copy.pragma("journal_mode = DELETE");
      return { path, auditSeq: newestAuditSeq(copy) };
    } finally {
      copy.close();
    }
  } catch (e) {
    rmSync(path, { force: true });
    throw e instanceof CustosError ? e : unavailable(e, "cannot copy the database");
  }
}

/** Removes the backup copies beside `databasePath` that a crash left behind. */
export function removeStaleCopies(databasePath: string): void {
  const prefix = `${basename(databasePath)}${COPY_INFIX}`;
  for (const name of readdirSync(dirname(databasePath))) {
    if (name.startsWith(prefix)) rmSync(join(dirname(databasePath), name), { force: true });
  }
}

/** What a restore did: the database it installed (its newest record the restore's own), and where the one it replaced was kept. */
export interface RestoreResult extends SnapshotInfo {
  readonly database: string;
  /** The replaced database, kept under a new name with its -wal and -shm; null when there was none. */
  readonly replaced: string | null;
  readonly schemaVersion: number;
  /** SHA-256 (hex) of the backup file as read. */
  readonly backupSha256: string;
}

/** What `restoreDatabase` knows when it hands the checked copy to its `record` step. */
export interface RestoreFacts {
  readonly backupSha256: string;
  /** The newest audit record in the copy. */
  readonly backupSeq: number;
  /** The name the current database will be kept under, and its newest audit record (null if unreadable). */
  readonly replaced: { readonly file: string; readonly newestSeq: number | null } | null;
}

/**
 * Writes the restore's own audit record into the checked private copy (`copy`), with
 * the server lock held, before anything changes at the database's name; answers the
 * record's seq. A failure abandons the restore.
 */
export type RecordRestore = (copy: string, facts: RestoreFacts) => Promise<number>;

/**
 * Installs the copy at `backupFile` as the database at `databasePath`, with no server
 * running on it (the server lock is held throughout). The copy is checked first, on
 * a private copy of its own: an intact SQLite file, an initialised Custos store, a
 * schema this build knows. The current database is never deleted: it is kept as
 * `<database>.replaced-<time>`, by a hard link made before the new file is renamed
 * over the old name, so a crash at any moment leaves the old database or the new one
 * at that name, and the old one reachable either way.
 */
export async function restoreDatabase(
  databasePath: string,
  backupFile: string,
  record: RecordRestore,
  now = new Date(),
): Promise<RestoreResult> {
  const lock = lockForServer(databasePath);
  const incoming = `${databasePath}.restoring`;
  try {
    const stat = statOf(backupFile);
    if (!stat.isFile()) throw invalid(`${backupFile} is not a regular file`);
    const backupSha256 = sha256Of(backupFile);
    removeDatabase(incoming);
    copyFileDurably(backupFile, incoming);
    const checked = checkCopy(incoming, backupFile);
    const aside = existsSync(databasePath) ? asideName(databasePath, now) : null;
    const replaced = aside === null ? null : { file: basename(aside), newestSeq: readableAuditSeq(databasePath) };
    const auditSeq = await record(incoming, { backupSha256, backupSeq: checked.auditSeq, replaced });
    settle(incoming);
    if (aside !== null) keepAside(databasePath, aside);
    renameSync(incoming, databasePath);
    syncPath(dirname(databasePath));
    return {
      database: databasePath,
      replaced: aside,
      auditSeq,
      schemaVersion: checked.schemaVersion,
      backupSha256,
    };
  } catch (e) {
    removeDatabase(incoming);
    if (e instanceof CustosError) throw e;
    throw unavailable(e, `cannot restore ${databasePath}: ${(e as Error).message}`);
  } finally {
    lock.release();
  }
}

function statOf(file: string): Stats {
  try {
    return statSync(file);
  } catch (e) {
    throw invalid(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

function copyFileDurably(from: string, to: string): void {
  const source = new Database(from, { readonly: true, fileMustExist: true });
  try {
    // Through SQLite rather than as bytes: a database copied while in WAL mode comes out whole too.
    closeSync(openSync(to, "wx", PRIVATE_MODE));
    source.prepare("VACUUM INTO ?").run(to);
  } catch (e) {
    throw invalid(`${from} is not a SQLite database (${(e as Error).message})`);
  } finally {
    source.close();
  }
  syncPath(to);
}

/** Checks the private copy of a backup; refusals name the file the operator gave. */
function checkCopy(path: string, named: string): { auditSeq: number; schemaVersion: number } {
  const db = new Database(path);
  try {
    const problems = (db.pragma("integrity_check") as Array<{ integrity_check: string }>).map((r) => r.integrity_check);
    if (problems[0] !== "ok") throw invalid(`${named} is damaged: ${problems.slice(0, 3).join("; ")}`);
    const tables = new Set(
      (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as Array<{ name: string }>).map(
        (r) => r.name,
      ),
    );
    const isStore = ["schema_migrations", "store_meta", "audit_log", "keys"].every((t) => tables.has(t));
    const initialised =
      isStore && db.prepare("SELECT 1 FROM store_meta WHERE name = 'initialized_at'").get() !== undefined;
    if (!initialised) throw invalid(`${named} is not an initialised Custos store`);
    const schemaVersion = (db.prepare("SELECT max(version) AS v FROM schema_migrations").get() as { v: number }).v;
    const known = Math.max(...migrations.map((m) => m.version));
    if (schemaVersion > known) {
      throw invalid(`${named} has schema version ${schemaVersion}, newer than this build understands (${known})`);
    }
    return { auditSeq: newestAuditSeq(db), schemaVersion };
  } finally {
    db.close();
  }
}

/**
 * Keeps the current database under a new name: its WAL folded into the file first
 * where it can be (a damaged database stays as it is, -wal and -shm moved with it).
 */
function keepAside(databasePath: string, aside: string): void {
  try {
    const db = new Database(databasePath, { fileMustExist: true });
    try {
      db.pragma("wal_checkpoint(TRUNCATE)");
    } finally {
      db.close();
    }
  } catch {
    // Not openable: it is kept as it is, with whatever WAL it has.
  }
  const [, wal, shm] = databaseFiles(databasePath);
  const [, asideWal, asideShm] = databaseFiles(aside);
  if (existsSync(wal as string)) renameSync(wal as string, asideWal as string);
  if (existsSync(shm as string)) renameSync(shm as string, asideShm as string);
  linkSync(databasePath, aside);
  syncPath(dirname(databasePath));
}

/** `<database>.replaced-<UTC time>`, with a counter where that name is taken. */
function asideName(databasePath: string, now: Date): string {
  const stamp = now
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d+Z$/, "Z");
  let aside = `${databasePath}.replaced-${stamp}`;
  for (let n = 2; databaseFiles(aside).some(existsSync); n++) aside = `${databasePath}.replaced-${stamp}-${n}`;
  return aside;
}

/**
 * The newest audit record of the database at `path`, or null if it can't be read.
 * Opened for writing, though only read: a read-only connection to a WAL database
 * leaves -wal and -shm files behind, where the last writer's close removes them.
 */
function readableAuditSeq(path: string): number | null {
  try {
    const db = new Database(path, { fileMustExist: true });
    try {
      return newestAuditSeq(db);
    } finally {
      db.close();
    }
  } catch {
    return null;
  }
}

/** Takes a copy the record step wrote to out of WAL mode, so it is one file again, and makes it durable. */
function settle(path: string): void {
  const db = new Database(path, { fileMustExist: true });
  try {
    db.pragma("journal_mode = DELETE");
  } finally {
    db.close();
  }
  syncPath(path);
}

function sha256Of(file: string): string {
  const hash = createHash("sha256");
  const fd = openSync(file, "r");
  try {
    const buffer = Buffer.allocUnsafe(1 << 20);
    for (let n = readSync(fd, buffer); n > 0; n = readSync(fd, buffer)) hash.update(buffer.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hash.digest("hex");
}

/** Removes a database file with its -wal, -shm and -journal, where they exist. */
function removeDatabase(path: string): void {
  for (const f of [...databaseFiles(path), `${path}-journal`]) rmSync(f, { force: true });
}

function newestAuditSeq(db: Database.Database): number {
  return (db.prepare("SELECT coalesce(max(seq), 0) AS seq FROM audit_log").get() as { seq: number }).seq;
}

/** fsyncs a file, or a directory (which makes renames and new entries in it durable). */
function syncPath(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function invalid(message: string): CustosError {
  return new CustosError("invalid_request", message);
}
