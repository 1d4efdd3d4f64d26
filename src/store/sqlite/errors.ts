import Database from "better-sqlite3";
import { CustosError } from "../../errors/index.js";

/** SQLite result codes that mean "the database can't take writes right now", not "your request is wrong". */
const UNAVAILABLE = /^SQLITE_(FULL|IOERR|BUSY|LOCKED|READONLY|CORRUPT|NOTADB|CANTOPEN|NOMEM|PROTOCOL|INTERRUPT)/;

/** True for SQLITE_BUSY / SQLITE_LOCKED: another connection holds the lock; worth retrying. */
export function isBusy(e: unknown): boolean {
  return e instanceof Database.SqliteError && /^SQLITE_(BUSY|LOCKED)/.test(e.code);
}

/**
 * Turns whatever an operation threw into the store's error model. Constraint
 * violations are the caller's (a name taken, a dangling reference); I/O-class
 * failures are `store_unavailable`; anything else is a bug and stays `internal`.
 */
export function toStoreError(e: unknown): CustosError {
  if (e instanceof CustosError) return e;
  if (e instanceof Database.SqliteError) {
    if (e.code === "SQLITE_CONSTRAINT_UNIQUE" || e.code === "SQLITE_CONSTRAINT_PRIMARYKEY") {
      return new CustosError("conflict", "a record with that name or id already exists", { cause: e });
    }
    if (e.code === "SQLITE_CONSTRAINT_FOREIGNKEY") {
      return new CustosError("invalid_request", "the record refers to something that does not exist", { cause: e });
    }
    if (e.code.startsWith("SQLITE_CONSTRAINT")) {
      return new CustosError("invalid_request", "the record violates a constraint", { cause: e });
    }
    if (UNAVAILABLE.test(e.code)) return unavailable(e);
  }
  return new CustosError("internal", "unexpected store failure", { cause: e });
}

/** The error for anything that could not be made durable (or read) because the database is unusable. */
export function unavailable(cause?: unknown, message = "the store is unavailable"): CustosError {
  return new CustosError("store_unavailable", message, { cause });
}

/** `unavailable` for a write that certainly did not commit: it never began, or its transaction was rolled back. */
export function notCommitted(cause: unknown, message: string): CustosError {
  return new CustosError("store_unavailable", message, { cause, notCommitted: true });
}
