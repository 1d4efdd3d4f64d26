export { type Actor, auditEntry, INIT_ACTION, markAudited, systemActor, wasAudited } from "./entry.js";
export {
  AUDIT_CHECKPOINT_KEY_LABEL,
  AUDIT_HMAC_KEY_LABEL,
  AUDIT_LIST_MAX,
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
