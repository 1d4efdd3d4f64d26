import { randomUUID } from "node:crypto";
import { type Actor, auditEntry } from "../audit/entry.js";
import { CustosError } from "../errors/index.js";
import type { SudoGrantRecord } from "../store/index.js";
import { assertMayGrant, checkPolicyNames, groupByName, userByName } from "./guards.js";
import { type AuthContext, invalidateCache, isPositiveInteger, nowIso } from "./internal.js";
import { ADMIN_POLICY } from "./policy.js";
import type { GrantSudoInput } from "./types.js";

const MIN_SUDO_TTL_SECONDS = 60;
const MAX_SUDO_TTL_SECONDS = 86_400;
const MAX_REASON_LENGTH = 1024;

/**
 * Grants a user or a group extra policies (admin by default) for `ttlSeconds`.
 * The grant ends by itself: authentication compares its expiry with the clock.
 */
export async function grantSudo(ctx: AuthContext, actor: Actor, input: GrantSudoInput): Promise<SudoGrantRecord> {
  if ((input.user === undefined) === (input.group === undefined)) {
    throw new CustosError("invalid_request", "name exactly one of user or group");
  }
  if (!isPositiveInteger(input.ttlSeconds, MIN_SUDO_TTL_SECONDS, MAX_SUDO_TTL_SECONDS)) {
    throw new CustosError(
      "invalid_request",
      `ttlSeconds must be an integer from ${MIN_SUDO_TTL_SECONDS} to ${MAX_SUDO_TTL_SECONDS}`,
    );
  }
  if (typeof input.reason !== "string" || input.reason.trim() === "" || input.reason.length > MAX_REASON_LENGTH) {
    throw new CustosError("invalid_request", `a reason of 1-${MAX_REASON_LENGTH} characters is required`);
  }
  const policies = await checkPolicyNames(ctx, input.policies ?? [ADMIN_POLICY]);
  if (policies.length === 0) throw new CustosError("invalid_request", "a sudo grant needs at least one policy");
  await assertMayGrant(ctx, actor, policies);
  const subject =
    input.user !== undefined
      ? { type: "user" as const, record: await userByName(ctx, input.user) }
      : { type: "group" as const, record: await groupByName(ctx, input.group ?? "") };
  const now = ctx.clock();
  const grant: SudoGrantRecord = {
    id: randomUUID(),
    subjectType: subject.type,
    subjectId: subject.record.id,
    policies,
    reason: input.reason,
    grantedBy: actor.principal,
    createdAt: now.toISOString(),
    expiresAt: new Date(now.getTime() + input.ttlSeconds * 1000).toISOString(),
    revokedAt: null,
  };
  const resource = `${subject.type}/${subject.record.name}`;
  await ctx.store.createSudoGrant(grant, auditEntry(actor, "sudo.grant", resource, { after: grant }));
  invalidateCache(ctx);
  return grant;
}

/** Sudo grants, newest state from the store; only unrevoked, unexpired ones with `activeOnly`. */
export async function listSudoGrants(ctx: AuthContext, activeOnly: boolean): Promise<SudoGrantRecord[]> {
  return ctx.store.listSudoGrants(activeOnly ? nowIso(ctx) : undefined);
}

/** Ends a grant now. */
export async function revokeSudo(ctx: AuthContext, actor: Actor, id: string): Promise<void> {
  const grant = typeof id === "string" ? await ctx.store.getSudoGrant(id) : undefined;
  if (!grant) throw new CustosError("not_found", "no such sudo grant");
  if (grant.revokedAt !== null) throw new CustosError("conflict", "sudo grant already revoked");
  const at = nowIso(ctx);
  const details = { before: grant, after: { ...grant, revokedAt: at } };
  await ctx.store.revokeSudoGrant(grant.id, at, auditEntry(actor, "sudo.revoke", `sudo/${grant.id}`, details));
  invalidateCache(ctx);
}

/** The name of a grant's subject (its id if the subject is gone). */
export async function subjectName(ctx: AuthContext, grant: SudoGrantRecord): Promise<string> {
  if (grant.subjectType === "user") return (await ctx.store.getUser(grant.subjectId))?.name ?? grant.subjectId;
  const group = (await ctx.store.listGroups()).find((g) => g.id === grant.subjectId);
  return group?.name ?? grant.subjectId;
}
