import { CustosError } from "../errors/index.js";
import type { Store } from "../store/index.js";
import { PolicySet } from "./policy.js";
import { type Principal, PrincipalCache, type Resolution } from "./principal.js";
import type { AuthServiceOptions } from "./types.js";

/** Longest lifetime of any token, login sessions included (10 years). */
export const MAX_TOKEN_TTL_SECONDS = 10 * 365 * 86_400;

/** How long after login renewals may keep a session, unless configured (12 hours). */
const DEFAULT_SESSION_MAX_TTL_SECONDS = 12 * 3600;

/** The policy records `authorize` evaluates, reused until `untilMs` (epoch ms). */
export interface PolicySnapshot {
  set: PolicySet;
  untilMs: number;
  /** The reload in progress, shared by everyone who finds the snapshot stale meanwhile. */
  load: Promise<PolicySet> | undefined;
}

/** What every auth operation works with: the store, the clock and this node's caches. */
export interface AuthContext {
  readonly store: Store;
  readonly clock: () => Date;
  readonly sessionTtlSeconds: number;
  readonly sessionMaxTtlSeconds: number;
  readonly cacheMs: number;
  readonly principals: PrincipalCache;
  readonly resolutions: WeakMap<Principal, Resolution>;
  readonly policies: PolicySnapshot;
}

export function isPositiveInteger(value: unknown, min: number, max: number): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= min && value <= max;
}

/** The context for `options`, after checking them. */
export function createContext(options: AuthServiceOptions): AuthContext {
  const sessionTtlSeconds = options.sessionTtlSeconds ?? 3600;
  const cacheMs = options.principalCacheMs ?? 1000;
  if (!isPositiveInteger(sessionTtlSeconds, 1, MAX_TOKEN_TTL_SECONDS)) {
    throw new CustosError("invalid_request", "sessionTtlSeconds must be a positive integer");
  }
  const sessionMaxTtlSeconds =
    options.sessionMaxTtlSeconds ?? Math.max(DEFAULT_SESSION_MAX_TTL_SECONDS, sessionTtlSeconds);
  if (!isPositiveInteger(sessionMaxTtlSeconds, sessionTtlSeconds, MAX_TOKEN_TTL_SECONDS)) {
    throw new CustosError("invalid_request", "sessionMaxTtlSeconds must be an integer no less than sessionTtlSeconds");
  }
  if (!Number.isFinite(cacheMs) || cacheMs < 0) {
    throw new CustosError("invalid_request", "principalCacheMs must be a non-negative number");
  }
  return {
    store: options.store,
    clock: options.clock ?? (() => new Date()),
    sessionTtlSeconds,
    sessionMaxTtlSeconds,
    cacheMs,
    principals: new PrincipalCache(),
    resolutions: new WeakMap(),
    policies: { set: new PolicySet([]), untilMs: 0, load: undefined },
  };
}

/** The clock's "now" as ISO text, as records store it. */
export function nowIso(ctx: AuthContext): string {
  return ctx.clock().toISOString();
}

/** Drops every cached principal and policy record (also done after each change the service makes). */
export function invalidateCache(ctx: AuthContext): void {
  ctx.principals.clear();
  ctx.policies.untilMs = 0;
}

/** The policy snapshot, reloaded from the store once it is older than the cache period. */
export async function currentPolicies(ctx: AuthContext, nowMs: number): Promise<PolicySet> {
  const snapshot = ctx.policies;
  if (nowMs < snapshot.untilMs) return snapshot.set;
  snapshot.load ??= (async () => {
    try {
      const set = new PolicySet(await ctx.store.listPolicies());
      snapshot.set = set;
      snapshot.untilMs = ctx.clock().getTime() + ctx.cacheMs;
      return set;
    } finally {
      snapshot.load = undefined;
    }
  })();
  return snapshot.load;
}
