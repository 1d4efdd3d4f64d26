export { AUDIT_DEFAULT_LIMIT, AUDIT_MAX_LIMIT, SqliteStore, type SqliteStoreOptions } from "./store.js";
