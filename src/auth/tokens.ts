import { type Actor, auditEntry } from "../audit/entry.js";
import { CustosError } from "../errors/index.js";
import type { Secret } from "../secret/index.js";
import type { TokenRecord } from "../store/index.js";
import { checkPolicyNames } from "./guards.js";
import { type AuthContext, invalidateCache, isPositiveInteger, MAX_TOKEN_TTL_SECONDS, nowIso } from "./internal.js";
import { ADMIN_POLICY } from "./policy.js";
import type { Principal } from "./principal.js";
import { effectivePolicies, permanentPolicies } from "./resolve.js";
import { generateToken } from "./token.js";
import type { CreateTokenInput } from "./types.js";
import { tokenInfo } from "./views.js";

/** API token records: issuing, listing and revoking (the token string format is token.ts). */

const TOKEN_NAME_RE = /^[\x20-\x7e]{1,128}$/;
const MIN_TOKEN_TTL_SECONDS = 60;

/**
 * Issues an API token for `principal` (acting for its user by default, or
 * standalone with `forUser: false`, which needs explicit policies). A non-admin
 * may only scope a token to policies it holds itself, and a standalone token only
 * to policies held without a sudo grant; a token made by a scoped token is scoped
 * at least as narrowly. The token string is returned once.
 */
export async function createToken(
  ctx: AuthContext,
  actor: Actor,
  principal: Principal,
  input: CreateTokenInput,
): Promise<{ token: Secret; record: TokenRecord }> {
  if (typeof input.name !== "string" || !TOKEN_NAME_RE.test(input.name) || input.name.trim() !== input.name) {
    throw new CustosError("invalid_request", "token name must be 1-128 printable characters without outer spaces");
  }
  const forUser = input.forUser ?? principal.userId !== null;
  if (forUser && principal.userId === null) {
    throw new CustosError("invalid_request", "a standalone token cannot create a token for a user");
  }
  if (
    input.ttlSeconds !== undefined &&
    !isPositiveInteger(input.ttlSeconds, MIN_TOKEN_TTL_SECONDS, MAX_TOKEN_TTL_SECONDS)
  ) {
    throw new CustosError(
      "invalid_request",
      `ttlSeconds must be an integer from ${MIN_TOKEN_TTL_SECONDS} to ${MAX_TOKEN_TTL_SECONDS}`,
    );
  }
  let policies: string[] | null;
  if (input.policies !== undefined) {
    policies = await checkPolicyNames(ctx, input.policies);
    const missing = notHeld(effectivePolicies(ctx, principal), policies);
    if (missing !== undefined) {
      throw new CustosError("forbidden", `cannot give a token policy "${missing}": you don't hold it`);
    }
    // A token acting for its user loses what the user loses, sudo-derived policies
    // included; a standalone token would keep them for good, so it may carry only
    // what its creator holds without a grant.
    const lapsing = forUser ? undefined : notHeld(permanentPolicies(ctx, principal), policies);
    if (lapsing !== undefined) {
      throw new CustosError(
        "forbidden",
        `cannot give a standalone token policy "${lapsing}": you hold it only through a sudo grant, which the token would outlive`,
      );
    }
  } else if (!forUser) {
    throw new CustosError("invalid_request", "a standalone token needs explicit policies");
  } else {
    const scope = ctx.resolutions.get(principal)?.tokenScope ?? null;
    policies = scope === null ? null : [...scope];
  }

  const now = ctx.clock();
  const { id, token, hash } = generateToken();
  const record: TokenRecord = {
    id,
    hash,
    kind: "api",
    name: input.name,
    userId: forUser ? principal.userId : null,
    policies,
    createdAt: now.toISOString(),
    expiresAt: input.ttlSeconds === undefined ? null : new Date(now.getTime() + input.ttlSeconds * 1000).toISOString(),
    revokedAt: null,
  };
  try {
    await ctx.store.createToken(record, auditEntry(actor, "token.create", `token/${id}`, { after: tokenInfo(record) }));
  } catch (e) {
    token.destroy();
    throw e;
  }
  return { token, record };
}

/** The first of `wanted` that `held` lacks (admin lacks nothing), or undefined. */
function notHeld(held: readonly string[], wanted: readonly string[]): string | undefined {
  return held.includes(ADMIN_POLICY) ? undefined : wanted.find((p) => !held.includes(p));
}

/** Tokens `principal` may see: all for admins, else its user's tokens (or, standalone, itself). */
export async function listTokens(ctx: AuthContext, principal: Principal): Promise<TokenRecord[]> {
  if (effectivePolicies(ctx, principal).includes(ADMIN_POLICY)) return ctx.store.listTokens();
  if (principal.userId !== null) return ctx.store.listTokens(principal.userId);
  const own = await ctx.store.getToken(principal.tokenId);
  return own ? [own] : [];
}

/** Revokes a token: its user's own tokens, the token itself, or any token for admins. */
export async function revokeToken(ctx: AuthContext, actor: Actor, principal: Principal, id: string): Promise<void> {
  const token = typeof id === "string" ? await ctx.store.getToken(id) : undefined;
  if (!token) throw new CustosError("not_found", "no such token");
  const mine = token.id === principal.tokenId || (token.userId !== null && token.userId === principal.userId);
  if (!mine && !effectivePolicies(ctx, principal).includes(ADMIN_POLICY)) {
    throw new CustosError("forbidden", `not allowed: token:revoke on token/${token.id}`);
  }
  if (token.revokedAt !== null) throw new CustosError("conflict", "token already revoked");
  const at = nowIso(ctx);
  const details = { before: tokenInfo(token), after: tokenInfo({ ...token, revokedAt: at }) };
  await ctx.store.revokeToken(token.id, at, auditEntry(actor, "token.revoke", `token/${token.id}`, details));
  invalidateCache(ctx);
}
