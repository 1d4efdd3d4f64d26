/** Who a request acts as, once its token is authenticated. */
export interface Principal {
  /** `user` for a login session, `token` for an API token (standalone or acting for a user). */
  readonly kind: "user" | "token";
  /** The user's id for sessions, the token's id for API tokens. */
  readonly id: string;
  /** The user's name for sessions, the token's name for API tokens. */
  readonly name: string;
  /** The user the request acts for, or null for a standalone API token. */
  readonly userId: string | null;
  readonly tokenId: string;
  /** Effective policy names at authentication: own, groups', active sudo grants', narrowed by the token's scope. */
  readonly policies: readonly string[];
  /**
   * True for an API token given its own policies when it was made (every standalone
   * token, and a user's token created with `policies`): it acts only through them,
   * so it has none of its user's ownership rights (app owner). False for a login
   * session and a user's unscoped token, which carry the user's full rights.
   */
  readonly scoped: boolean;
  readonly isAdmin: boolean;
  /** When the last active sudo grant that adds something ends (ISO), or null without one. */
  readonly sudoUntil: string | null;
  /** How audit records name it: `user:<name>` or `token:<id>`. */
  readonly display: string;
}

/**
 * How a principal's policies were made up, kept beside it (never in it) so that
 * `authorize` can drop sudo-derived policies the moment their grant expires,
 * even while the principal is still held by a long request or the cache.
 */
export interface Resolution {
  /** Policies that don't depend on a sudo grant. */
  readonly base: ReadonlySet<string>;
  /** Sudo-derived policies and when (epoch ms) the last grant conferring each ends. */
  readonly sudo: ReadonlyMap<string, number>;
  /** The token's own scope (null: the user's own policies). */
  readonly tokenScope: readonly string[] | null;
  /** When the token expires (epoch ms; null: never): the latest a token it makes may expire. */
  readonly tokenExpiresAtMs: number | null;
}

interface CacheEntry {
  readonly principal: Principal;
  readonly untilMs: number;
}

/**
 * Principals by token hash, each kept until its own deadline (the cache period,
 * capped by the token's expiry and the earliest sudo grant expiry). Bounded: the
 * oldest entries go first when full.
 */
export class PrincipalCache {
  readonly #entries = new Map<string, CacheEntry>();
  readonly #maxEntries: number;

  constructor(maxEntries = 10_000) {
    this.#maxEntries = maxEntries;
  }

  get(tokenHash: string, nowMs: number): Principal | undefined {
    const entry = this.#entries.get(tokenHash);
    if (!entry) return undefined;
    if (nowMs >= entry.untilMs) {
      this.#entries.delete(tokenHash);
      return undefined;
    }
    return entry.principal;
  }

  set(tokenHash: string, principal: Principal, untilMs: number): void {
    this.#entries.delete(tokenHash);
    if (this.#entries.size >= this.#maxEntries) {
      const oldest = this.#entries.keys().next();
      if (!oldest.done) this.#entries.delete(oldest.value);
    }
    this.#entries.set(tokenHash, { principal, untilMs });
  }

  clear(): void {
    this.#entries.clear();
  }

  get size(): number {
    return this.#entries.size;
  }
}
