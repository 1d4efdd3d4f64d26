import { type Actor, auditEntry } from "../audit/entry.js";
import { CustosError } from "../errors/index.js";
import type { Secret } from "../secret/index.js";
import type { TokenRecord } from "../store/index.js";
import { authorize } from "./authenticate.js";
import { checkPolicyNames } from "./guards.js";
import { type AuthContext, invalidateCache, isPositiveInteger, MAX_TOKEN_TTL_SECONDS, nowIso } from "./internal.js";
import { ADMIN_POLICY } from "./policy.js";
import type { Principal } from "./principal.js";
import { effectivePolicies, permanentPolicies } from "./resolve.js";
import { generateToken } from "./token.js";
import type { CreateTokenInput, RenewTokenInput } from "./types.js";
import { tokenInfo } from "./views.js";

/** API token records: issuing, listing, revoking and renewing (the token string format is token.ts). */

const TOKEN_NAME_RE = /^[\x20-\x7e]{1,128}$/;
const MIN_TOKEN_TTL_SECONDS = 60;

/**
 * Issues an API token for `principal` (acting for its user by default, or
 * standalone with `forUser: false`, which needs explicit policies). A non-admin
 * may only scope a token to policies it holds itself, and a standalone token only
 * to policies held without a sudo grant; a token made by a scoped token is scoped
 * at least as narrowly. The token string is returned once.
 *
 * A token made by an API token (user-bound or standalone) expires no later than
 * its creator: a creator with an expiry caps the requested one, and an omitted
 * `ttlSeconds` means the creator's expiry (clamped, not refused, as Vault caps a
 * child's TTL; the record shows the result). Otherwise a short-lived token, a CI
 * job's say, could mint itself a successor and its expiry would bound nothing. A
 * login session is not bound so: it was proven by the user's password, minting a
 * user's API tokens is what it is for, and a password change ends sessions, not
 * the API tokens made in them.
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
  checkTtl("ttlSeconds", input.ttlSeconds);
  checkTtl("maxTtlSeconds", input.maxTtlSeconds);
  if (input.maxTtlSeconds !== undefined) {
    if (input.ttlSeconds === undefined) throw new CustosError("invalid_request", "maxTtlSeconds needs ttlSeconds");
    if (input.maxTtlSeconds < input.ttlSeconds) {
      throw new CustosError("invalid_request", "maxTtlSeconds must be at least ttlSeconds");
    }
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
  let expiresMs = input.ttlSeconds === undefined ? null : now.getTime() + input.ttlSeconds * 1000;
  let maxMs = input.maxTtlSeconds === undefined ? null : now.getTime() + input.maxTtlSeconds * 1000;
  const creatorMs = await creatorExpiry(ctx, principal);
  if (creatorMs !== null) {
    expiresMs = Math.min(expiresMs ?? creatorMs, creatorMs);
    if (maxMs !== null) maxMs = Math.min(maxMs, creatorMs);
  }
  const { id, token, hash } = generateToken();
  const record: TokenRecord = {
    id,
    hash,
    kind: "api",
    name: input.name,
    userId: forUser ? principal.userId : null,
    policies,
    createdAt: now.toISOString(),
    expiresAt: expiresMs === null ? null : new Date(expiresMs).toISOString(),
    revokedAt: null,
    parentId: principal.kind === "token" ? principal.tokenId : null,
    // A session is no parent (the token outlives logout), so its user is recorded instead.
    makerUserId: principal.kind === "user" && !forUser ? principal.userId : null,
    renewal:
      maxMs === null || input.ttlSeconds === undefined
        ? null
        : { ttlSeconds: input.ttlSeconds, maxExpiresAt: new Date(maxMs).toISOString() },
  };
  try {
    await ctx.store.createToken(record, auditEntry(actor, "token.create", `token/${id}`, { after: tokenInfo(record) }));
  } catch (e) {
    token.destroy();
    throw e;
  }
  return { token, record };
}

function checkTtl(what: string, value: number | undefined): void {
  if (value !== undefined && !isPositiveInteger(value, MIN_TOKEN_TTL_SECONDS, MAX_TOKEN_TTL_SECONDS)) {
    throw new CustosError(
      "invalid_request",
      `${what} must be an integer from ${MIN_TOKEN_TTL_SECONDS} to ${MAX_TOKEN_TTL_SECONDS}`,
    );
  }
}

/**
 * When the token `principal` authenticated with expires (epoch ms), if it is an
 * API token that expires; null for a login session or a token without expiry.
 */
async function creatorExpiry(ctx: AuthContext, principal: Principal): Promise<number | null> {
  if (principal.kind !== "token") return null;
  const resolution = ctx.resolutions.get(principal);
  if (resolution) return resolution.tokenExpiresAtMs;
  // Resolved elsewhere: the token's record says (a gone token makes nothing).
  const own = await ctx.store.getToken(principal.tokenId);
  if (!own) throw new CustosError("unauthenticated", "invalid or expired token");
  return own.expiresAt === null ? null : Date.parse(own.expiresAt);
}

/** The first of `wanted` that `held` lacks (admin lacks nothing), or undefined. */
function notHeld(held: readonly string[], wanted: readonly string[]): string | undefined {
  return held.includes(ADMIN_POLICY) ? undefined : wanted.find((p) => !held.includes(p));
}

/**
 * Tokens `principal` may see: all for admins; else its user's tokens (or,
 * standalone, itself), the standalone tokens its user made with a login session
 * and the tokens its own token made.
 */
export async function listTokens(ctx: AuthContext, principal: Principal): Promise<TokenRecord[]> {
  if (effectivePolicies(ctx, principal).includes(ADMIN_POLICY)) return ctx.store.listTokens();
  const own = await (principal.userId !== null
    ? ctx.store.listTokens(principal.userId)
    : ctx.store.getToken(principal.tokenId).then((t) => (t ? [t] : [])));
  const sessionMade = principal.userId !== null ? await ctx.store.listTokensMadeByUser(principal.userId) : [];
  const made = await ctx.store.listTokensMadeBy(principal.tokenId);
  const byId = new Map<string, TokenRecord>();
  for (const t of [...own, ...sessionMade, ...made]) byId.set(t.id, t);
  return [...byId.values()].sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
}

/**
 * Revokes a token, and with it every token it made and theirs (as Vault revokes a
 * token's children); answers the ids of those. The caller's own token, another
 * token of its user, a standalone token its user made with a login session, or a
 * token its own token made needs no policy (as Vault's
 * default policy allows revoke-self: anyone may give up what they hold or handed
 * on); any other needs `token:revoke` on it and admin rights. The policy is
 * checked here, before saying whether a token that isn't the caller's exists.
 */
export async function revokeToken(ctx: AuthContext, actor: Actor, principal: Principal, id: string): Promise<string[]> {
  const token = await heldToken(ctx, principal, id, "token:revoke");
  if (token.revokedAt !== null) throw new CustosError("conflict", "token already revoked");
  const at = nowIso(ctx);
  const details = { before: tokenInfo(token), after: tokenInfo({ ...token, revokedAt: at }) };
  const revokedWith = await ctx.store.revokeToken(
    token.id,
    at,
    auditEntry(actor, "token.revoke", `token/${token.id}`, details),
  );
  invalidateCache(ctx);
  return revokedWith;
}

/**
 * The token `id` if `principal` holds it or handed it on (its own token, another token
 * of its user, a standalone token its user made with a login session, a token its own
 * token made) or has `action` on it and admin rights. Refused alike whether or not the
 * token exists otherwise, so the answer can't be used to probe ids.
 */
async function heldToken(
  ctx: AuthContext,
  principal: Principal,
  id: string,
  action: "token:revoke" | "token:renew",
): Promise<TokenRecord> {
  const token = typeof id === "string" ? await ctx.store.getToken(id) : undefined;
  const mine =
    token !== undefined &&
    (token.id === principal.tokenId ||
      token.parentId === principal.tokenId ||
      (token.userId !== null && token.userId === principal.userId) ||
      (token.makerUserId !== null && token.makerUserId === principal.userId));
  if (!mine) {
    authorize(ctx, principal, action, `token/${String(id)}`);
    if (!effectivePolicies(ctx, principal).includes(ADMIN_POLICY)) {
      throw new CustosError("forbidden", `not allowed: ${action} on token/${String(id)}`);
    }
  }
  if (!token) throw new CustosError("not_found", "no such token");
  return token;
}

/**
 * Renews a token made renewable (a login session, or an API token made with
 * `maxTtlSeconds`), by the same rule as revoking: its new expiry is `ttlSeconds` (or
 * the token's own lifetime) from now, but no later than its maximum nor, for a token
 * an expiring API token made, than that token's expiry now. A renewal never shortens:
 * one that would not move the expiry later is `conflict`, as are a revoked, an expired
 * and an unrenewable token.
 */
export async function renewToken(
  ctx: AuthContext,
  actor: Actor,
  principal: Principal,
  id: string,
  input: RenewTokenInput,
): Promise<TokenRecord> {
  checkTtl("ttlSeconds", input.ttlSeconds);
  const token = await heldToken(ctx, principal, id, "token:renew");
  if (token.revokedAt !== null) throw new CustosError("conflict", "token is revoked");
  if (token.renewal === null || token.expiresAt === null) {
    throw new CustosError("conflict", "token is not renewable (made without maxTtlSeconds, or it never expires)");
  }
  const now = ctx.clock().getTime();
  const currentMs = Date.parse(token.expiresAt);
  if (currentMs <= now) throw new CustosError("conflict", "token has expired");
  const ttlSeconds = input.ttlSeconds ?? token.renewal.ttlSeconds;
  // The maximum was capped by the maker's expiry when the token was made, and a renewal
  // never moves an expiry earlier: so the maker's expiry now is never sooner.
  const expiresMs = Math.min(now + ttlSeconds * 1000, Date.parse(token.renewal.maxExpiresAt));
  if (expiresMs <= currentMs) {
    throw new CustosError(
      "conflict",
      `token can't be renewed past ${token.expiresAt}: its maximum, its maker's expiry or the ttlSeconds asked`,
    );
  }
  const expiresAt = new Date(expiresMs).toISOString();
  const renewed: TokenRecord = { ...token, expiresAt };
  await ctx.store.renewToken(
    token.id,
    token.expiresAt,
    expiresAt,
    auditEntry(actor, "token.renew", `token/${token.id}`, { before: tokenInfo(token), after: tokenInfo(renewed) }),
  );
  invalidateCache(ctx);
  return renewed;
}
