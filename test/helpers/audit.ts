import type Database from "better-sqlite3";
import { type AuditChainKey, type AuditEntry, auditRecordHash, canonicalJson } from "../../src/store/index.js";

/** The audit_log columns in the order `forgeAfter` writes them. */
export const AUDIT_COLUMNS =
  "seq, time, request_id, principal, source, action, resource, outcome, error_code, details, prev_hash, hash";

/**
 * Appends `e` after `last` straight into the file, as an attacker with write access
 * would: hashed by the public rule, or under `chain` where the attacker holds a key.
 * Answers the hash written.
 */
export function forgeAfter(
  sql: Database.Database,
  last: { seq: number; hash: string },
  e: AuditEntry,
  chain?: AuditChainKey,
): string {
  const seq = last.seq + 1;
  const details = canonicalJson(e.details);
  const hash = auditRecordHash(seq, last.hash, e, details, chain);
  sql
    .prepare(`INSERT INTO audit_log (${AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
    .run(
      seq,
      e.time,
      e.requestId,
      e.principal,
      e.source,
      e.action,
      e.resource,
      e.outcome,
      e.errorCode,
      details,
      last.hash,
      hash,
    );
  return hash;
}
