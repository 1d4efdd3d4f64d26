import { type Actor, auditEntry } from "../audit/index.js";
import { CustosError, isCustosError } from "../errors/index.js";
import type { Keystore } from "../hsm/index.js";
import type { KeyRecord, KeyVersionRecord, Store } from "../store/index.js";
import type { KeyCipher } from "./gather.js";
import type { AuditSink } from "./types.js";
import { auditState } from "./view.js";

/** What every KMS operation works with. */
export interface KmsContext {
  readonly keystore: Keystore;
  /** The keystore's AES-GCM, with the calls of concurrent operations gathered into HSM jobs. */
  readonly cipher: KeyCipher;
  readonly store: Store;
  readonly audit: AuditSink;
  readonly now: () => Date;
  readonly minDestructionWaitSeconds: number;
}

/** The key named `name`, or `not_found`. */
export async function loadKey(ctx: KmsContext, name: string): Promise<KeyRecord> {
  const key = await ctx.store.getKey(name);
  if (key === undefined) throw new CustosError("not_found", `key "${name}" not found`);
  return key;
}

/** Records a completed crypto operation; throws (`audit_unavailable`) if it can't be written. */
export async function recordOp(
  ctx: KmsContext,
  actor: Actor,
  action: string,
  name: string,
  details: Record<string, unknown>,
): Promise<void> {
  await ctx.audit.record(auditEntry(actor, action, `key/${name}`, details));
}

/** The HSM reference of a signing version. */
export function hsmRef(v: KeyVersionRecord): { label: string; id: string } {
  if (v.hsmLabel === null || v.hsmId === null) {
    throw new CustosError("internal", `key version ${v.version} has no HSM key pair`);
  }
  return { label: v.hsmLabel, id: v.hsmId };
}

/** What a mutation wants to commit, computed from the current record. */
export interface KeyPlan {
  readonly action: string;
  /** The fields that change; revision and updatedAt are filled in. */
  readonly changes: Partial<Omit<KeyRecord, "id" | "name" | "revision" | "updatedAt">>;
  readonly addVersion?: KeyVersionRecord;
  readonly destroyVersions?: readonly number[];
  readonly details?: Record<string, unknown>;
  /** Undoes side effects (HSM objects) when the plan is not committed. */
  readonly abandon?: () => Promise<void>;
}

/** How often a mutation retries after losing a revision race. */
const MAX_ATTEMPTS = 6;

/**
 * Read-modify-write of one key with revision CAS: `plan` sees the current record
 * and returns what to change (or null for nothing to do). On `conflict` the plan is
 * abandoned and recomputed from a fresh read, so two concurrent rotations produce
 * versions n+1 and n+2 rather than one lost update. The change and its audit entry
 * commit atomically in the store.
 */
export async function mutateKey(
  ctx: KmsContext,
  actor: Actor,
  name: string,
  plan: (key: KeyRecord, now: Date) => Promise<KeyPlan | null>,
  noopAction?: string,
): Promise<{ before: KeyRecord; after: KeyRecord; committed: boolean }> {
  for (let attempt = 1; ; attempt++) {
    const before = await loadKey(ctx, name);
    const now = ctx.now();
    const p = await plan(before, now);
    if (p === null) {
      // The API leaves auditing of these routes to us, so a request that changed
      // nothing is still recorded (once), as unchanged.
      if (noopAction !== undefined) {
        await recordOp(ctx, actor, noopAction, name, { unchanged: true, state: auditState(before) });
      }
      return { before, after: before, committed: false };
    }
    const after: KeyRecord = {
      ...before,
      ...p.changes,
      revision: before.revision + 1,
      updatedAt: now.toISOString(),
    };
    const entry = auditEntry(actor, p.action, `key/${name}`, {
      ...p.details,
      before: auditState(before),
      after: auditState(after),
    });
    try {
      await ctx.store.updateKey(
        {
          key: after,
          expectedRevision: before.revision,
          ...(p.addVersion === undefined ? {} : { addVersion: p.addVersion }),
          ...(p.destroyVersions === undefined ? {} : { destroyVersions: p.destroyVersions }),
        },
        entry,
      );
      return { before, after, committed: true };
    } catch (e) {
      if (definitelyNotCommitted(e)) await abandonQuietly(p);
      if (!isCustosError(e, "conflict") || attempt >= MAX_ATTEMPTS) throw e;
    }
  }
}

/**
 * Whether a failed store write certainly did not commit. Only then may HSM objects
 * made for it be destroyed: after an ambiguous failure (a sync that failed after the
 * commit, a lost connection) the record might exist and point at them, and an
 * orphaned key pair is harmless where a referenced-but-destroyed one breaks a key version.
 */
export function definitelyNotCommitted(e: unknown): boolean {
  return (
    isCustosError(e, "conflict") ||
    isCustosError(e, "not_found") ||
    isCustosError(e, "invalid_request") ||
    (isCustosError(e, "store_unavailable") && e.notCommitted)
  );
}

async function abandonQuietly(p: KeyPlan): Promise<void> {
  try {
    await p.abandon?.();
  } catch {
    // The commit failed already; that error is the one the caller must see. A key pair
    // left behind is unreferenced and unusable (no record points at it).
  }
}
