import type { Secret } from "../secret/index.js";
import type { PolicyRule, Store } from "../store/index.js";

/** A password as the service accepts it. A string is copied into a `Secret` and zeroed after use. */
export type PasswordInput = Secret | string;

export interface AuthServiceOptions {
  readonly store: Store;
  /** Not used: every change is audited through the store's atomic operations. */
  readonly audit?: unknown;
  /** Source of "now" (tests move it to expire tokens and grants). */
  readonly clock?: () => Date;
  /** Lifetime of login sessions, and what renewing one gives; default 3600. */
  readonly sessionTtlSeconds?: number;
  /** How long after login renewals may keep a session; default 43,200 (at least the lifetime). */
  readonly sessionMaxTtlSeconds?: number;
  /** How long a resolved principal and the policy records are reused; default 1000. */
  readonly principalCacheMs?: number;
}

export interface CreateUserInput {
  readonly name: string;
  readonly password?: PasswordInput;
  readonly policies?: readonly string[];
}

export interface UpdateUserInput {
  readonly password?: PasswordInput;
  readonly policies?: readonly string[];
  readonly disabled?: boolean;
}

export interface CreateGroupInput {
  readonly name: string;
  /** User names. */
  readonly members?: readonly string[];
  readonly policies?: readonly string[];
}

export interface UpdateGroupInput {
  /** Replaces the member list (user names); not together with addMembers/removeMembers. */
  readonly members?: readonly string[];
  readonly addMembers?: readonly string[];
  readonly removeMembers?: readonly string[];
  readonly policies?: readonly string[];
}

export interface PutPolicyInput {
  readonly name: string;
  readonly description?: string;
  readonly rules: readonly PolicyRule[];
}

export interface CreateTokenInput {
  readonly name: string;
  /**
   * Scope of the token; must be policies the creator holds unless it is admin (for
   * a standalone token: holds, or is admin, without a sudo grant).
   */
  readonly policies?: readonly string[];
  /**
   * Lifetime (60 s to 10 years); omitted: no expiry. A token made by an API token
   * expires no later than its creator (omitted: with it); see `createToken`.
   */
  readonly ttlSeconds?: number;
  /**
   * Makes the token renewable, each renewal giving `ttlSeconds` again, until this long
   * after its creation (at least `ttlSeconds`; capped by the creator's expiry).
   */
  readonly maxTtlSeconds?: number;
  /** Act for the creator's user (default when the creator is a user) or stand alone. */
  readonly forUser?: boolean;
}

export interface RenewTokenInput {
  /** The new lifetime, from now (60 s to 10 years); omitted: the token's own. */
  readonly ttlSeconds?: number;
}

export interface GrantSudoInput {
  /** Exactly one of user or group (names). */
  readonly user?: string;
  readonly group?: string;
  /** 60 to 86400. */
  readonly ttlSeconds: number;
  readonly reason: string;
  /** Default `["admin"]`. */
  readonly policies?: readonly string[];
}

export interface LoginResult {
  readonly token: Secret;
  readonly tokenId: string;
  readonly expiresAt: string;
}
