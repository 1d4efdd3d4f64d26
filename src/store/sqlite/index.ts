export { lockForInit } from "./server-lock.js";
export { type RestoreResult, restoreDatabase } from "./snapshot.js";
export { AUDIT_DEFAULT_LIMIT, AUDIT_MAX_LIMIT, SqliteStore, type SqliteStoreOptions } from "./store.js";
