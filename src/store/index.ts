export * from "./types.js";
export { GENESIS_HASH, auditCheckpointMessage, auditRecordHash, canonicalJson } from "./audit-chain.js";
