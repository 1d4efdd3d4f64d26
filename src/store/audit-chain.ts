import { createHash } from "node:crypto";
import type { AuditEntry } from "./types.js";

/** `prevHash` of the first record. */
export const GENESIS_HASH = "0".repeat(64);

/**
 * Canonical JSON: object keys sorted, no whitespace. The chain hashes bytes, so the
 * same record must always serialise to the same bytes, whatever order its fields
 * were built in.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== "object") return JSON.stringify(value) ?? "null";
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
}

/**
 * The hash of record `seq`: SHA-256 over the previous hash and the canonical JSON of
 * every field of the entry. Editing any field, deleting a record or swapping two
 * changes a hash that every later record depends on.
 */
export function auditRecordHash(seq: number, prevHash: string, entry: AuditEntry): string {
  const body = canonicalJson({
    seq,
    prevHash,
    time: entry.time,
    requestId: entry.requestId,
    principal: entry.principal,
    source: entry.source,
    action: entry.action,
    resource: entry.resource,
    outcome: entry.outcome,
    errorCode: entry.errorCode,
    details: entry.details,
  });
  return createHash("sha256").update(body).digest("hex");
}

/** The bytes a checkpoint signature covers. */
export function auditCheckpointMessage(seq: number, hash: string, time: string): Buffer {
  return Buffer.from(`custos-audit-checkpoint:v1:${seq}:${hash}:${time}`, "utf8");
}
