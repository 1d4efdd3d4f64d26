import { type Actor, auditEntry } from "../audit/entry.js";
import { CustosError } from "../errors/index.js";
import { Secret } from "../secret/index.js";
import type { TokenRecord } from "../store/index.js";
import type { Action } from "./actions.js";
import { type AuthContext, currentPolicies } from "./internal.js";
import { tryNormalizeName } from "./names.js";
import { verifyPassword, withPassword } from "./password.js";
import type { Principal } from "./principal.js";
import { effectivePolicies, resolveToken } from "./resolve.js";
import { generateToken, hashToken, parseTokenId } from "./token.js";
import type { LoginResult, PasswordInput } from "./types.js";

/** Logging in, authenticating bearer tokens and authorising actions. */

const UNAUTHENTICATED_TOKEN = "invalid or expired token";

function badToken(): CustosError {
  return new CustosError("unauthenticated", UNAUTHENTICATED_TOKEN);
}

/**
 * Checks a user's password and opens a session. Every failure (unknown user, no
 * password, wrong password, disabled user) is the same `unauthenticated`
 * "invalid credentials", after the same argon2 work.
 */
export async function login(
  ctx: AuthContext,
  actor: Actor,
  name: string,
  password: PasswordInput,
): Promise<LoginResult> {
  const folded = typeof name === "string" ? tryNormalizeName(name) : undefined;
  const user = folded === undefined ? undefined : await ctx.store.getUserByName(folded);
  const ok = await withPassword(password, (secret) => verifyPassword(user?.passwordHash ?? null, secret));
  if (!ok || !user || user.disabled) throw new CustosError("unauthenticated", "invalid credentials");

  const now = ctx.clock();
  const expiresAt = new Date(now.getTime() + ctx.sessionTtlSeconds * 1000).toISOString();
  const { id, token, hash } = generateToken();
  const record: TokenRecord = {
    id,
    hash,
    kind: "session",
    name: "session",
    userId: user.id,
    policies: null,
    createdAt: now.toISOString(),
    expiresAt,
    revokedAt: null,
    parentId: null,
    makerUserId: null,
    renewal: {
      ttlSeconds: ctx.sessionTtlSeconds,
      maxExpiresAt: new Date(now.getTime() + ctx.sessionMaxTtlSeconds * 1000).toISOString(),
    },
  };
  try {
    const entry = auditEntry(actor, "auth.login", `user/${user.name}`, { tokenId: id, expiresAt });
    await ctx.store.createToken(record, { ...entry, principal: `user:${user.name}` });
  } catch (e) {
    token.destroy();
    throw e;
  }
  return { token, tokenId: id, expiresAt };
}

/**
 * Resolves a bearer token to its principal. Malformed, unknown, expired and
 * revoked tokens and tokens of disabled users all fail the same way.
 */
export async function authenticate(ctx: AuthContext, tokenString: string | Secret): Promise<Principal> {
  const text = tokenString instanceof Secret ? tokenString.exposeText() : tokenString;
  if (typeof text !== "string") throw badToken();
  const tokenId = parseTokenId(text);
  if (tokenId === undefined) throw badToken();
  const hash = hashToken(text);
  const nowMs = ctx.clock().getTime();
  const cached = ctx.principals.get(hash, nowMs);
  if (cached) return cached;

  await currentPolicies(ctx, nowMs);
  const token = await ctx.store.getTokenByHash(hash);
  if (!token || token.id !== tokenId) throw badToken();
  const resolved = await resolveToken(ctx, token, nowMs);
  if (!resolved) throw badToken();
  const { principal, untilMs } = resolved;
  ctx.principals.set(hash, principal, Math.min(untilMs, nowMs + ctx.cacheMs));
  return principal;
}

/** True when the principal's policies allow `action` on `resource` in the current policy snapshot. */
export function isAllowed(ctx: AuthContext, principal: Principal, action: Action, resource: string): boolean {
  return ctx.policies.set.allows(effectivePolicies(ctx, principal), action, resource);
}

/**
 * Throws `forbidden` "not allowed: <action> on <resource>" unless the principal's
 * policies allow it (deny by default; privileged actions need admin, see policy.ts).
 * Sudo-derived policies stop counting the moment their grant expires.
 */
export function authorize(ctx: AuthContext, principal: Principal, action: Action, resource: string): void {
  if (!isAllowed(ctx, principal, action, resource)) {
    throw new CustosError("forbidden", `not allowed: ${action} on ${resource}`);
  }
}
