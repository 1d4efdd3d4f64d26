export {
  type AuditChainKey,
  auditCheckpointMessage,
  auditRecordHash,
  canonicalJson,
  GENESIS_HASH,
} from "./audit-chain.js";
export type * from "./broker.js";
export type * from "./platform.js";
export type * from "./secrets.js";
export {
  AUDIT_DEFAULT_LIMIT,
  AUDIT_MAX_LIMIT,
  SqliteStore,
  type SqliteStoreOptions,
} from "./sqlite/index.js";
export type * from "./ssh.js";
export * from "./types.js";
