import { createHash, createHmac, type KeyObject } from "node:crypto";
import type { AuditEntry } from "./types.js";

/** `prevHash` of the first record. */
export const GENESIS_HASH = "0".repeat(64);

/**
 * What keys the chain: from record `keyedFrom` on, a record's hash is
 * HMAC-SHA256 under `key` (a key derived from the HSM that never leaves memory),
 * so nobody without the HSM can compute the hash of a rewritten or forged
 * record. Records below `keyedFrom` were written before the chain was keyed and
 * keep their plain SHA-256 hashes; the keyed record after them covers their
 * hash through its `prevHash`.
 */
export interface AuditChainKey {
  readonly key: KeyObject;
  /** The first seq hashed with `key`: 1 on a store keyed from the start. */
  readonly keyedFrom: number;
}

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
 * The hash of record `seq`: over the previous hash, every field of the entry and
 * `detailsJson`, the details text exactly as stored; HMAC-SHA256 under the chain
 * key from `chain.keyedFrom` on, SHA-256 below it (and without `chain`). Editing
 * any field or a single byte of the details text, deleting a record or swapping
 * two changes a hash that every later record depends on.
 */
export function auditRecordHash(
  seq: number,
  prevHash: string,
  entry: Omit<AuditEntry, "details">,
  detailsJson: string,
  chain?: AuditChainKey,
): string {
  const mac = chain !== undefined && seq >= chain.keyedFrom ? createHmac("sha256", chain.key) : createHash("sha256");
  return mac.update(recordBody(seq, prevHash, entry, detailsJson)).digest("hex");
}

/**
 * Canonical JSON of the record with the stored details text spliced in as it is.
 * The store writes that text as canonical JSON, so for every record it wrote these
 * are the very bytes `canonicalJson` gives for the parsed record (the rule before
 * the text was covered, so older hashes still hold); any other text, even one
 * that parses to the same value, gives other bytes. Keys in sorted order.
 */
function recordBody(seq: number, prevHash: string, e: Omit<AuditEntry, "details">, detailsJson: string): string {
  const s = JSON.stringify;
  return (
    `{"action":${s(e.action)},"details":${detailsJson},"errorCode":${s(e.errorCode)},"outcome":${s(e.outcome)},` +
    `"prevHash":${s(prevHash)},"principal":${s(e.principal)},"requestId":${s(e.requestId)},` +
    `"resource":${s(e.resource)},"seq":${s(seq)},"source":${s(e.source)},"time":${s(e.time)}}`
  );
}

/** The bytes a checkpoint signature covers. */
export function auditCheckpointMessage(seq: number, hash: string, time: string): Buffer {
  return Buffer.from(`custos-audit-checkpoint:v1:${seq}:${hash}:${time}`, "utf8");
}
