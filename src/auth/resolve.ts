import type { TokenRecord, UserRecord } from "../store/index.js";
import type { AuthContext } from "./internal.js";
import { ADMIN_POLICY } from "./policy.js";
import type { Principal } from "./principal.js";

/**
 * Principal resolution: which policies a user or token holds, and for how long
 * (sudo-derived ones only while their grant lasts).
 */

/**
 * A user's policies: own and groups' (`base`), plus those of active sudo grants
 * on the user or its groups (`sudo`, with each policy's latest end).
 */
export async function userPolicies(
  ctx: AuthContext,
  user: UserRecord,
  nowMs: number,
): Promise<{ base: Set<string>; sudo: Map<string, number> }> {
  const groups = await ctx.store.groupsOfUser(user.id);
  const base = new Set(user.policies);
  for (const g of groups) for (const p of g.policies) base.add(p);
  const sudo = await sudoPolicies(ctx, { userId: user.id, groupIds: groups.map((g) => g.id) }, nowMs);
  return { base, sudo };
}

/**
 * Policies of the sudo grants active at `nowMs` on the user `userId` (if given)
 * or on one of `groupIds`, each with the latest end of a grant conferring it.
 */
export async function sudoPolicies(
  ctx: AuthContext,
  subject: { readonly userId?: string; readonly groupIds: readonly string[] },
  nowMs: number,
): Promise<Map<string, number>> {
  const groupIds = new Set(subject.groupIds);
  const sudo = new Map<string, number>();
  for (const grant of await ctx.store.listSudoGrants(new Date(nowMs).toISOString())) {
    const applies =
      (grant.subjectType === "user" && grant.subjectId === subject.userId) ||
      (grant.subjectType === "group" && groupIds.has(grant.subjectId));
    const untilMs = Date.parse(grant.expiresAt);
    if (!applies || grant.revokedAt !== null || !(untilMs > nowMs)) continue;
    for (const p of grant.policies) sudo.set(p, Math.max(sudo.get(p) ?? 0, untilMs));
  }
  return sudo;
}

/**
 * Builds the principal of a live token, or undefined when the token is revoked,
 * expired or its user (or, standalone, its makers' user) gone or disabled.
 * `untilMs` is how long the result may be cached: never past the token's expiry
 * or the first sudo grant change.
 */
export async function resolveToken(
  ctx: AuthContext,
  token: TokenRecord,
  nowMs: number,
): Promise<{ principal: Principal; untilMs: number } | undefined> {
  if (token.revokedAt !== null) return undefined;
  const tokenExpiresAtMs = token.expiresAt === null ? null : Date.parse(token.expiresAt);
  if (tokenExpiresAtMs !== null && !(tokenExpiresAtMs > nowMs)) return undefined;
  let untilMs = tokenExpiresAtMs ?? Number.POSITIVE_INFINITY;
  let user: UserRecord | undefined;
  let base: Set<string>;
  let sudo = new Map<string, number>();
  if (token.userId !== null) {
    user = await ctx.store.getUser(token.userId);
    if (!user || user.disabled) return undefined;
    ({ base, sudo } = await userPolicies(ctx, user, nowMs));
    if (token.policies !== null) {
      // A scoped token holds what its scope names and its user still holds. An
      // admin holds every policy, so an admin's scoped token is exactly its scope
      // (for as long as the admin right lasts, when that comes from sudo).
      const adminBase = base.has(ADMIN_POLICY);
      const adminSudoEnd = sudo.get(ADMIN_POLICY);
      const scopedBase = new Set(token.policies.filter((p) => adminBase || base.has(p)));
      const scopedSudo = new Map<string, number>();
      for (const p of token.policies) {
        const end = sudo.get(p) ?? adminSudoEnd;
        if (!scopedBase.has(p) && end !== undefined) scopedSudo.set(p, end);
      }
      base = scopedBase;
      sudo = scopedSudo;
    }
  } else {
    if (await makerSuspended(ctx, token)) return undefined;
    base = new Set(token.policies ?? []);
  }
  for (const p of base) sudo.delete(p);

  const policies = [...new Set([...base, ...sudo.keys()])].sort();
  let sudoUntilMs: number | null = null;
  for (const end of sudo.values()) {
    untilMs = Math.min(untilMs, end);
    sudoUntilMs = Math.max(sudoUntilMs ?? 0, end);
  }
  const sessionUser = token.kind === "session" ? user : undefined;
  const principal: Principal = {
    kind: sessionUser ? "user" : "token",
    id: sessionUser ? sessionUser.id : token.id,
    name: sessionUser ? sessionUser.name : token.name,
    userId: token.userId,
    tokenId: token.id,
    policies,
    scoped: token.policies !== null,
    isAdmin: policies.includes(ADMIN_POLICY),
    sudoUntil: sudoUntilMs === null ? null : new Date(sudoUntilMs).toISOString(),
    display: sessionUser ? `user:${sessionUser.name}` : `token:${token.id}`,
  };
  ctx.resolutions.set(principal, { base, sudo, tokenScope: token.policies, tokenExpiresAtMs });
  return { principal, untilMs };
}

/**
 * Whether a standalone token's line of makers starts at a user who is gone or
 * disabled: the user whose login session made it or one of its makers
 * (`makerUserId`), or the user of the nearest API-token maker acting for one.
 * Deleting the user revokes those tokens, so disabling suspends them. A line made
 * by none (the first admin's, or one made before makers were recorded) has no such user.
 */
async function makerSuspended(ctx: AuthContext, token: TokenRecord): Promise<boolean> {
  let current: TokenRecord | undefined = token;
  while (current) {
    // The token itself is standalone (userId null); an ancestor may act for a user.
    const makerId = current.makerUserId ?? current.userId;
    if (makerId !== null) {
      const user = await ctx.store.getUser(makerId);
      return !user || user.disabled;
    }
    current = current.parentId === null ? undefined : await ctx.store.getToken(current.parentId);
  }
  return false;
}

/** Policies in force for `principal` now: sudo-derived ones drop out when their grant ends. */
export function effectivePolicies(ctx: AuthContext, principal: Principal): string[] {
  const resolution = ctx.resolutions.get(principal);
  if (!resolution) return [...principal.policies];
  const nowMs = ctx.clock().getTime();
  const out = [...resolution.base];
  for (const [policy, untilMs] of resolution.sudo)
    if (untilMs > nowMs && !resolution.base.has(policy)) out.push(policy);
  return out;
}

/**
 * Policies `principal` holds without any sudo grant: all it may pass on to
 * something that outlives the grants, such as a standalone token.
 */
export function permanentPolicies(ctx: AuthContext, principal: Principal): string[] {
  const resolution = ctx.resolutions.get(principal);
  if (resolution) return [...resolution.base];
  // Not resolved here: without its make-up, only a principal with no sudo grant is known permanent.
  return principal.sudoUntil === null ? [...principal.policies] : [];
}
