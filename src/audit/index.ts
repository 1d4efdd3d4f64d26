export { type Actor, auditEntry, markAudited, systemActor, wasAudited } from "./entry.js";
export {
  AUDIT_CHECKPOINT_KEY_LABEL,
  AUDIT_HMAC_KEY_LABEL,
  AuditLog,
  type AuditLogDeps,
  HMAC_PREFIX,
} from "./log.js";
export {
  type AuditProblem,
  type AuditProblemKind,
  type AuditVerifyReport,
  CHECKPOINT_SCHEME,
  MAX_PROBLEMS,
  type VerifyDeps,
  verifyAuditLog,
} from "./verify.js";
