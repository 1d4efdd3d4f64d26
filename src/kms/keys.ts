import { randomUUID } from "node:crypto";
import { type Actor, auditEntry } from "../audit/index.js";
import { CustosError } from "../errors/index.js";
import type { KeyAlgorithm, KeyRecord, KeyVersionRecord } from "../store/index.js";
import { definitelyNotCommitted, hsmRef, type KeyPlan, type KmsContext, loadKey, mutateKey } from "./internal.js";
import { assertNotDestroyed } from "./state.js";
import type {
  CreateKeyInput,
  KeyDetails,
  KeyInfo,
  ListKeysInput,
  ScheduleDestructionInput,
  UpdateKeyInput,
} from "./types.js";
import {
  checkAlgorithm,
  checkDescription,
  checkListLimit,
  checkName,
  checkPurpose,
  checkRotationPeriod,
  checkVersion,
  checkWaitingSeconds,
} from "./validate.js";
import { auditState, keyDetails, keyInfo } from "./view.js";

/** Waiting period when the caller names none (as AWS KMS). */
export const DEFAULT_DESTRUCTION_WAIT_SECONDS = 30 * 86400;

function addSeconds(at: Date | string, seconds: number): string {
  return new Date(new Date(at).getTime() + seconds * 1000).toISOString();
}

/** HSM label of a signing version's key pair. */
export function keyPairLabel(keyId: string, version: number): string {
  return `custos/key/${keyId}/v${version}`;
}

/** New key material for `version`, generated in the HSM, and how to undo it. */
async function generateVersion(
  ctx: KmsContext,
  keyId: string,
  algorithm: KeyAlgorithm,
  version: number,
  now: Date,
): Promise<{ record: KeyVersionRecord; abandon: () => Promise<void> }> {
  const createdAt = now.toISOString();
  if (algorithm === "aes-256-gcm") {
    const wrappedKey = await ctx.keystore.generateWrappedAesKey();
    const record = {
      keyId,
      version,
      state: "active",
      createdAt,
      wrappedKey,
      hsmLabel: null,
      hsmId: null,
      publicKey: null,
    } as const;
    return { record, abandon: async () => {} };
  }
  const pair = await ctx.keystore.generateKeyPair(algorithm, keyPairLabel(keyId, version));
  const record: KeyVersionRecord = {
    keyId,
    version,
    state: "active",
    createdAt,
    wrappedKey: null,
    hsmLabel: pair.ref.label,
    hsmId: pair.ref.id,
    publicKey: pair.publicKey,
  };
  return { record, abandon: () => ctx.keystore.destroyKeyPair(pair.ref) };
}

/** Creates a key and its version 1; nothing is left behind if the store write fails. */
export async function createKey(ctx: KmsContext, actor: Actor, input: CreateKeyInput): Promise<KeyDetails> {
  if (typeof input !== "object" || input === null) throw new CustosError("invalid_request", "key settings missing");
  const name = checkName(input.name);
  const purpose = checkPurpose(input.purpose);
  const algorithm = checkAlgorithm(purpose, input.algorithm);
  const description = input.description === undefined ? "" : checkDescription(input.description);
  const period = input.rotationPeriodSeconds === undefined ? null : checkRotationPeriod(input.rotationPeriodSeconds);
  // Cheap early answer; the store's unique name is what actually decides.
  if ((await ctx.store.getKey(name)) !== undefined) throw new CustosError("conflict", `key "${name}" already exists`);

  const id = randomUUID();
  const now = ctx.now();
  const v1 = await generateVersion(ctx, id, algorithm, 1, now);
  const createdAt = now.toISOString();
  const key: KeyRecord = {
    id,
    name,
    purpose,
    algorithm,
    state: "enabled",
    description,
    createdAt,
    updatedAt: createdAt,
    revision: 1,
    latestVersion: 1,
    minDecryptionVersion: 1,
    rotationPeriodSeconds: period,
    nextRotationAt: period === null ? null : addSeconds(now, period),
    destroyAt: null,
  };
  const entry = auditEntry(actor, "key.create", `key/${name}`, {
    purpose,
    algorithm,
    before: null,
    after: auditState(key),
  });
  try {
    await ctx.store.createKey(key, v1.record, entry);
  } catch (e) {
    if (definitelyNotCommitted(e)) {
      try {
        await v1.abandon();
      } catch {
        // The store error is what the caller must see; the orphan pair is referenced by nothing.
      }
    }
    throw e;
  }
  return keyDetails(key, [v1.record]);
}

/** Key metadata, name order, paginated by `after`. Not audited here (the API audits reads). */
export async function listKeys(ctx: KmsContext, input: ListKeysInput = {}): Promise<KeyInfo[]> {
  const limit = checkListLimit(input.limit);
  if (input.prefix !== undefined && (typeof input.prefix !== "string" || input.prefix.length > 128)) {
    throw new CustosError("invalid_request", "prefix must be a string of at most 128 characters");
  }
  if (input.after !== undefined && typeof input.after !== "string") {
    throw new CustosError("invalid_request", "after must be a key name");
  }
  const keys = await ctx.store.listKeys({
    limit,
    ...(input.prefix === undefined ? {} : { prefix: input.prefix }),
    ...(input.after === undefined ? {} : { after: input.after }),
  });
  return keys.map(keyInfo);
}

/** One key's metadata and versions (public keys for sign keys, never material). */
export async function getKey(ctx: KmsContext, name: string): Promise<KeyDetails> {
  return withVersions(ctx, await loadKey(ctx, checkName(name)));
}

function rotationPlan(ctx: KmsContext, details: Record<string, unknown>) {
  return async (key: KeyRecord, now: Date): Promise<KeyPlan> => {
    assertNotDestroyed(key);
    if (key.state === "pending_destruction") {
      throw new CustosError("conflict", `key "${key.name}" is pending destruction`);
    }
    const version = key.latestVersion + 1;
    const fresh = await generateVersion(ctx, key.id, key.algorithm, version, now);
    return {
      action: "key.rotate",
      changes: {
        latestVersion: version,
        nextRotationAt: key.rotationPeriodSeconds === null ? null : addSeconds(now, key.rotationPeriodSeconds),
      },
      addVersion: fresh.record,
      details: { ...details, version },
      abandon: fresh.abandon,
    };
  };
}

/** Adds version latest+1 (enabled or disabled keys). */
export async function rotateKey(ctx: KmsContext, actor: Actor, name: string): Promise<KeyDetails> {
  const { after } = await mutateKey(ctx, actor, checkName(name), rotationPlan(ctx, { automatic: false }));
  return withVersions(ctx, after);
}

async function withVersions(ctx: KmsContext, key: KeyRecord): Promise<KeyDetails> {
  return keyDetails(key, await ctx.store.listKeyVersions(key.id));
}

/**
 * Changes description, rotation period or minDecryptionVersion. The rotation
 * schedule restarts from the latest version's creation, so shortening the period of
 * an old key makes it due at once (as AWS KMS does). minDecryptionVersion only goes up.
 */
export async function updateKey(
  ctx: KmsContext,
  actor: Actor,
  name: string,
  input: UpdateKeyInput,
): Promise<KeyDetails> {
  if (typeof input !== "object" || input === null) throw new CustosError("invalid_request", "update missing");
  const description = input.description === undefined ? undefined : checkDescription(input.description);
  const period =
    input.rotationPeriodSeconds === undefined || input.rotationPeriodSeconds === null
      ? input.rotationPeriodSeconds
      : checkRotationPeriod(input.rotationPeriodSeconds);
  const { enabled } = input;
  if (enabled !== undefined && typeof enabled !== "boolean") {
    throw new CustosError("invalid_request", "enabled must be true or false");
  }
  const settings = description !== undefined || period !== undefined || input.minDecryptionVersion !== undefined;
  if (!settings && enabled === undefined) throw new CustosError("invalid_request", "nothing to update");
  // A state change alone keeps its own audit action; with settings it is part of one key.update.
  const action = settings ? "key.update" : enabled ? "key.enable" : "key.disable";
  const { after } = await mutateKey(
    ctx,
    actor,
    checkName(name),
    // Every check runs before anything is written: the update commits whole or not at all.
    async (key) => {
      assertNotDestroyed(key);
      const changes: { -readonly [K in keyof KeyRecord]?: KeyRecord[K] } = {};
      if (description !== undefined && description !== key.description) changes.description = description;
      if (period !== undefined && period !== key.rotationPeriodSeconds) {
        changes.rotationPeriodSeconds = period;
        changes.nextRotationAt = period === null ? null : addSeconds(await latestCreatedAt(ctx, key), period);
      }
      if (input.minDecryptionVersion !== undefined) {
        if (key.purpose !== "encrypt") {
          throw new CustosError("invalid_request", "minDecryptionVersion applies to encrypt keys only");
        }
        const min = checkVersion(input.minDecryptionVersion, key.latestVersion);
        if (min < key.minDecryptionVersion) {
          throw new CustosError(
            "invalid_request",
            `minDecryptionVersion can only be raised (it is ${key.minDecryptionVersion})`,
          );
        }
        if (min !== key.minDecryptionVersion) changes.minDecryptionVersion = min;
      }
      if (enabled !== undefined) {
        const state = stateFor(key, enabled);
        if (state !== key.state) changes.state = state;
      }
      return Object.keys(changes).length === 0 ? null : { action, changes };
    },
    action,
  );
  return withVersions(ctx, after);
}

/**
 * The state `enabled` asks for: enabled or disabled, either way idempotent. A pending
 * destruction must be cancelled instead.
 */
function stateFor(key: KeyRecord, enabled: boolean): KeyRecord["state"] {
  if (key.state === "pending_destruction") {
    throw new CustosError("conflict", `key "${key.name}" is pending destruction${enabled ? "; cancel it first" : ""}`);
  }
  return enabled ? "enabled" : "disabled";
}

async function latestCreatedAt(ctx: KmsContext, key: KeyRecord): Promise<string> {
  const v = await ctx.store.getKeyVersion(key.id, key.latestVersion);
  return v?.createdAt ?? key.createdAt;
}

/** enabled → disabled (idempotent). A pending destruction must be cancelled instead. */
export function disableKey(ctx: KmsContext, actor: Actor, name: string): Promise<KeyDetails> {
  return updateKey(ctx, actor, name, { enabled: false });
}

/** disabled → enabled (idempotent). A pending destruction must be cancelled first. */
export function enableKey(ctx: KmsContext, actor: Actor, name: string): Promise<KeyDetails> {
  return updateKey(ctx, actor, name, { enabled: true });
}

/** enabled|disabled → pending_destruction, destroyed by `runDue` once `destroyAt` passes. */
export async function scheduleDestruction(
  ctx: KmsContext,
  actor: Actor,
  name: string,
  input: ScheduleDestructionInput = {},
): Promise<KeyDetails> {
  const waiting =
    input.waitingSeconds === undefined
      ? Math.max(DEFAULT_DESTRUCTION_WAIT_SECONDS, ctx.minDestructionWaitSeconds)
      : checkWaitingSeconds(input.waitingSeconds, ctx.minDestructionWaitSeconds);
  const { after } = await mutateKey(ctx, actor, checkName(name), async (key, now) => {
    assertNotDestroyed(key);
    if (key.state === "pending_destruction") {
      throw new CustosError("conflict", `key "${key.name}" is already pending destruction`);
    }
    return {
      action: "key.schedule-destruction",
      changes: { state: "pending_destruction", destroyAt: addSeconds(now, waiting) },
      details: { waitingSeconds: waiting },
    };
  });
  return withVersions(ctx, after);
}

/** pending_destruction → disabled (as AWS KMS: the owner re-enables deliberately). */
export async function cancelDestruction(ctx: KmsContext, actor: Actor, name: string): Promise<KeyDetails> {
  const { after } = await mutateKey(ctx, actor, checkName(name), async (key) => {
    assertNotDestroyed(key);
    if (key.state !== "pending_destruction") {
      throw new CustosError("conflict", `key "${key.name}" is not pending destruction`);
    }
    return { action: "key.cancel-destruction", changes: { state: "disabled", destroyAt: null } };
  });
  return withVersions(ctx, after);
}

/**
 * Destroys every version now, from any state (an admin action; `runDue` uses it for
 * scheduled destructions). The store erases wrapped material in the same commit as
 * the state change and its audit record; HSM key pairs are destroyed after. Calling
 * it on a destroyed key sweeps the HSM pairs again (idempotent), so a failed sweep
 * can be retried.
 */
export async function destroyKey(ctx: KmsContext, actor: Actor, name: string): Promise<KeyDetails> {
  const { after } = await destroyWhere(ctx, actor, checkName(name), () => true, {}, "key.destroy");
  return withVersions(ctx, after);
}

async function destroyWhere(
  ctx: KmsContext,
  actor: Actor,
  name: string,
  guard: (key: KeyRecord) => boolean,
  details: Record<string, unknown>,
  noopAction?: string,
): Promise<{ after: KeyRecord; committed: boolean }> {
  const result = await mutateKey(
    ctx,
    actor,
    name,
    async (key) => {
      if (key.state === "destroyed" || !guard(key)) return null;
      const versions = await ctx.store.listKeyVersions(key.id);
      return {
        action: "key.destroy",
        changes: { state: "destroyed", destroyAt: null, nextRotationAt: null },
        destroyVersions: versions.filter((v) => v.state !== "destroyed").map((v) => v.version),
        details: { ...details, versions: versions.length },
      };
    },
    noopAction,
  );
  const { after } = result;
  if (after.state === "destroyed" && after.purpose === "sign") {
    for (const v of await ctx.store.listKeyVersions(after.id)) {
      if (v.hsmLabel !== null && v.hsmId !== null) await ctx.keystore.destroyKeyPair(hsmRef(v));
    }
  }
  return result;
}

function isDue(at: string | null, now: Date): boolean {
  return at !== null && Date.parse(at) <= now.getTime();
}

/** Automatic rotation as the scheduler runs it; false when no longer due (someone got there first). */
export async function rotateIfDue(ctx: KmsContext, actor: Actor, name: string, now: Date): Promise<boolean> {
  const plan = rotationPlan(ctx, { automatic: true });
  const { committed } = await mutateKey(ctx, actor, name, async (key) =>
    key.state === "enabled" && isDue(key.nextRotationAt, now) ? plan(key, now) : null,
  );
  return committed;
}

/** Scheduled destruction as the scheduler runs it; the guard is rechecked inside the CAS loop, so a cancel wins. */
export async function destroyIfDue(ctx: KmsContext, actor: Actor, name: string, now: Date): Promise<boolean> {
  const guard = (key: KeyRecord): boolean => key.state === "pending_destruction" && isDue(key.destroyAt, now);
  const { committed } = await destroyWhere(ctx, actor, name, guard, { scheduled: true });
  return committed;
}

/** Whether a key listed as due needs destruction (checked first: it wins over rotation). */
export function destructionDue(key: KeyRecord, now: Date): boolean {
  return key.state === "pending_destruction" && isDue(key.destroyAt, now);
}
