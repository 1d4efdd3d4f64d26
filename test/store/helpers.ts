import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type AuditEntry,
  auditRecordHash,
  GENESIS_HASH,
  type GroupRecord,
  type KeyRecord,
  type KeyVersionRecord,
  type PolicyRecord,
  type Store,
  type SudoGrantRecord,
  type TokenRecord,
  type UserRecord,
} from "../../src/store/index.js";

/** A temp directory for one test file's databases. */
export function tempDir(): { dir: string; path(name?: string): string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), "custos-store-"));
  return {
    dir,
    path: (name = "custos.db") => join(dir, name),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

let counter = 0;

export function entry(action: string, overrides: Partial<AuditEntry> = {}): AuditEntry {
  counter++;
  return {
    time: new Date(Date.UTC(2025, 0, 1, 0, 0, 0, counter)).toISOString(),
    requestId: `req-${counter}`,
    principal: "user:alice",
    source: "127.0.0.1",
    action,
    resource: "key/app-a",
    outcome: "success",
    errorCode: null,
    details: { n: counter, nested: { b: [1, "two", null], a: true } },
    ...overrides,
  };
}

const T0 = "2025-01-01T00:00:00.000Z";
const T1 = "2025-01-02T00:00:00.000Z";

export function keyRecord(name: string, overrides: Partial<KeyRecord> = {}): KeyRecord {
  return {
    id: randomUUID(),
    name,
    purpose: "encrypt",
    algorithm: "aes-256-gcm",
    state: "enabled",
    description: `key ${name}`,
    createdAt: T0,
    updatedAt: T0,
    revision: 1,
    latestVersion: 1,
    minDecryptionVersion: 1,
    rotationPeriodSeconds: null,
    nextRotationAt: null,
    destroyAt: null,
    ...overrides,
  };
}

export function aesVersion(keyId: string, version: number): KeyVersionRecord {
  return {
    keyId,
    version,
    state: "active",
    createdAt: T0,
    wrappedKey: Buffer.from(Array.from({ length: 40 }, (_, i) => (i * 7 + version) & 0xff)),
    hsmLabel: null,
    hsmId: null,
    publicKey: null,
  };
}

export function signingVersion(keyId: string, version: number): KeyVersionRecord {
  return {
    keyId,
    version,
    state: "active",
    createdAt: T1,
    wrappedKey: null,
    hsmLabel: `custos-sign-${version}`,
    hsmId: "0a0b0c",
    publicKey: Buffer.from("3059301306072a8648ce3d020106082a8648ce3d03010703420004", "hex"),
  };
}

export function userRecord(name: string, overrides: Partial<UserRecord> = {}): UserRecord {
  return {
    id: randomUUID(),
    name,
    passwordHash: "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
    policies: ["reader", "writer"],
    disabled: false,
    createdAt: T0,
    updatedAt: T0,
    revision: 1,
    ...overrides,
  };
}

export function groupRecord(name: string, members: string[], overrides: Partial<GroupRecord> = {}): GroupRecord {
  return {
    id: randomUUID(),
    name,
    members,
    policies: ["ops"],
    createdAt: T0,
    updatedAt: T0,
    revision: 1,
    ...overrides,
  };
}

export function tokenRecord(userId: string | null, overrides: Partial<TokenRecord> = {}): TokenRecord {
  return {
    id: `tok_${randomUUID().slice(0, 8)}`,
    hash: randomUUID().replaceAll("-", "").padEnd(64, "0"),
    kind: "api",
    name: "ci",
    userId,
    policies: null,
    createdAt: T0,
    expiresAt: T1,
    revokedAt: null,
    parentId: null,
    makerUserId: null,
    renewal: null,
    ...overrides,
  };
}

export function policyRecord(name: string, overrides: Partial<PolicyRecord> = {}): PolicyRecord {
  return {
    name,
    description: `policy ${name}`,
    rules: [{ resource: "key/app-a-*", actions: ["key.encrypt", "key.decrypt"] }],
    createdAt: T0,
    updatedAt: T0,
    revision: 1,
    ...overrides,
  };
}

export function sudoGrant(subjectId: string, overrides: Partial<SudoGrantRecord> = {}): SudoGrantRecord {
  return {
    id: randomUUID(),
    subjectType: "user",
    subjectId,
    policies: ["admin"],
    reason: "incident 42",
    grantedBy: "user:root",
    createdAt: T0,
    expiresAt: "2025-01-01T01:00:00.000Z",
    revokedAt: null,
    ...overrides,
  };
}

/** The whole chain as stored, checked link by link; returns the head seq. */
export async function assertChainIntact(store: Store): Promise<number> {
  const head = await store.auditHead();
  const records = await store.readAuditRange(1, head.seq);
  assert.equal(records.length, head.seq, "gap-free");
  let prevHash = GENESIS_HASH;
  for (const [i, r] of records.entries()) {
    assert.equal(r.seq, i + 1);
    assert.equal(r.prevHash, prevHash, `link at ${r.seq}`);
    assert.equal(r.hash, auditRecordHash(r.seq, r.prevHash, r, r.detailsJson), `hash at ${r.seq}`);
    prevHash = r.hash;
  }
  return head.seq;
}
