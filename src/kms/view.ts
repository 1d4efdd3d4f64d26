import type { KeyRecord, KeyVersionRecord } from "../store/index.js";
import type { KeyDetails, KeyInfo, KeyVersionInfo } from "./types.js";

/** SPKI DER as PEM. */
export function spkiPem(der: Buffer): string {
  const lines = der.toString("base64").match(/.{1,64}/g) ?? [];
  return `-----BEGIN PUBLIC KEY-----\n${lines.join("\n")}\n-----END PUBLIC KEY-----\n`;
}

/** The caller-visible metadata of a key record. */
export function keyInfo(key: KeyRecord): KeyInfo {
  return {
    id: key.id,
    name: key.name,
    purpose: key.purpose,
    algorithm: key.algorithm,
    state: key.state,
    description: key.description,
    createdAt: key.createdAt,
    updatedAt: key.updatedAt,
    revision: key.revision,
    latestVersion: key.latestVersion,
    minDecryptionVersion: key.minDecryptionVersion,
    rotationPeriodSeconds: key.rotationPeriodSeconds,
    nextRotationAt: key.nextRotationAt,
    destroyAt: key.destroyAt,
  };
}

/** One version's metadata; never the wrapped material. */
export function versionInfo(v: KeyVersionRecord): KeyVersionInfo {
  const base = { version: v.version, state: v.state, createdAt: v.createdAt };
  return v.publicKey !== null && v.state === "active" ? { ...base, publicKeyPem: spkiPem(v.publicKey) } : base;
}

export function keyDetails(key: KeyRecord, versions: readonly KeyVersionRecord[]): KeyDetails {
  const sorted = [...versions].sort((a, b) => a.version - b.version);
  return { ...keyInfo(key), versions: sorted.map(versionInfo) };
}

/**
 * The fields of a key that state changes touch, for the audit record's
 * `{ before, after }`: enough to see what changed, nothing secret.
 */
export function auditState(key: KeyRecord): Record<string, unknown> {
  return {
    state: key.state,
    description: key.description,
    revision: key.revision,
    latestVersion: key.latestVersion,
    minDecryptionVersion: key.minDecryptionVersion,
    rotationPeriodSeconds: key.rotationPeriodSeconds,
    nextRotationAt: key.nextRotationAt,
    destroyAt: key.destroyAt,
  };
}
