import { randomUUID } from "node:crypto";
import { type Actor, auditEntry } from "../audit/entry.js";
import { CustosError } from "../errors/index.js";
import { Secret } from "../secret/index.js";
import type {
  GroupRecord,
  PolicyRecord,
  PolicyRule,
  Store,
  SudoGrantRecord,
  TokenRecord,
  UserRecord,
} from "../store/index.js";
import type { Action } from "./actions.js";
import { normalizeName, tryNormalizeName } from "./names.js";
import { hashPassword, verifyPassword } from "./password.js";
import { ADMIN_POLICY, builtinAdminPolicy, PolicySet, validatePolicy } from "./policy.js";
import { type Principal, PrincipalCache, type Resolution } from "./principal.js";
import { generateToken, hashToken, parseTokenId } from "./token.js";
import { groupInfo, tokenInfo, userInfo } from "./views.js";

/** A password as the service accepts it. A string is copied into a `Secret` and zeroed after use. */
export type PasswordInput = Secret | string;

export interface AuthServiceOptions {
  readonly store: Store;
  /** Not used: every change is audited through the store's atomic operations. */
  readonly audit?: unknown;
  /** Source of "now" (tests move it to expire tokens and grants). */
  readonly clock?: () => Date;
  /** Lifetime of login sessions; default 3600. */
  readonly sessionTtlSeconds?: number;
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
  /** Scope of the token; must be policies the creator holds unless it is admin. */
  readonly policies?: readonly string[];
  /** Lifetime (60 s to 10 years); omitted: no expiry. */
  readonly ttlSeconds?: number;
  /** Act for the creator's user (default when the creator is a user) or stand alone. */
  readonly forUser?: boolean;
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

const UNAUTHENTICATED_TOKEN = "invalid or expired token";
const TOKEN_NAME_RE = /^[\x20-\x7e]{1,128}$/;
const MAX_TOKEN_TTL_SECONDS = 10 * 365 * 86_400;
const MIN_TOKEN_TTL_SECONDS = 60;
const MIN_SUDO_TTL_SECONDS = 60;
const MAX_SUDO_TTL_SECONDS = 86_400;
const MAX_REASON_LENGTH = 1024;
const MAX_POLICIES_PER_SUBJECT = 64;

function badToken(): CustosError {
  return new CustosError("unauthenticated", UNAUTHENTICATED_TOKEN);
}

function isPositiveInteger(value: unknown, min: number, max: number): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= min && value <= max;
}

/** Runs `fn` with the password as a Secret, zeroing it afterwards if this call made it. */
async function withPassword<T>(password: PasswordInput, fn: (secret: Secret) => Promise<T>): Promise<T> {
  if (password instanceof Secret) return fn(password);
  if (typeof password !== "string") throw new CustosError("invalid_request", "password must be a string");
  const secret = Secret.fromString(password);
  try {
    return await fn(secret);
  } finally {
    secret.destroy();
  }
}

/** What an actor may hand out, when the actor is a user or token (callers such as `system` are trusted). */
interface CallerRights {
  readonly isAdmin: boolean;
  readonly policies: ReadonlySet<string>;
}

/**
 * Users, groups, tokens, policies and sudo grants; authentication of bearer
 * tokens and authorisation of actions.
 *
 * Methods that take an `actor` expect the caller (the API) to have authorised the
 * action already; they add the rule that stops `user:write`/`group:write` from
 * being an escalation path: when the actor is a user or token (`user:<name>`,
 * `token:<id>`) and not admin, it may only grant policies it holds itself and may
 * only manage users and groups whose policies it holds itself. Actors of any
 * other form (`system`, `cli`, …) are in-process callers and are trusted.
 *
 * Each node caches principals and policy records for `principalCacheMs`; changes
 * made through this instance take effect at once, changes made by another node
 * within that period.
 */
export class AuthService {
  readonly #store: Store;
  readonly #clock: () => Date;
  readonly #sessionTtlSeconds: number;
  readonly #cacheMs: number;
  readonly #principals = new PrincipalCache();
  readonly #resolutions = new WeakMap<Principal, Resolution>();
  #policySet: PolicySet = new PolicySet([]);
  #policySetUntilMs = 0;
  #policyLoad: Promise<PolicySet> | undefined;

  constructor(options: AuthServiceOptions) {
    this.#store = options.store;
    this.#clock = options.clock ?? (() => new Date());
    this.#sessionTtlSeconds = options.sessionTtlSeconds ?? 3600;
    this.#cacheMs = options.principalCacheMs ?? 1000;
    if (!isPositiveInteger(this.#sessionTtlSeconds, 1, MAX_TOKEN_TTL_SECONDS)) {
      throw new CustosError("invalid_request", "sessionTtlSeconds must be a positive integer");
    }
    if (!Number.isFinite(this.#cacheMs) || this.#cacheMs < 0) {
      throw new CustosError("invalid_request", "principalCacheMs must be a non-negative number");
    }
  }

  // ---- authentication ---------------------------------------------------------

  /**
   * Checks a user's password and opens a session. Every failure (unknown user, no
   * password, wrong password, disabled user) is the same `unauthenticated`
   * "invalid credentials", after the same argon2 work.
   */
  async login(actor: Actor, name: string, password: PasswordInput): Promise<LoginResult> {
    const folded = typeof name === "string" ? tryNormalizeName(name) : undefined;
    const user = folded === undefined ? undefined : await this.#store.getUserByName(folded);
    const ok = await withPassword(password, (secret) => verifyPassword(user?.passwordHash ?? null, secret));
    if (!ok || !user || user.disabled) throw new CustosError("unauthenticated", "invalid credentials");

    const now = this.#clock();
    const expiresAt = new Date(now.getTime() + this.#sessionTtlSeconds * 1000).toISOString();
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
    };
    try {
      const entry = auditEntry(actor, "auth.login", `user/${user.name}`, { tokenId: id, expiresAt });
      await this.#store.createToken(record, { ...entry, principal: `user:${user.name}` });
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
  async authenticate(tokenString: string | Secret): Promise<Principal> {
    const text = tokenString instanceof Secret ? tokenString.exposeText() : tokenString;
    if (typeof text !== "string") throw badToken();
    const tokenId = parseTokenId(text);
    if (tokenId === undefined) throw badToken();
    const hash = hashToken(text);
    const nowMs = this.#clock().getTime();
    const cached = this.#principals.get(hash, nowMs);
    if (cached) return cached;

    await this.#currentPolicies(nowMs);
    const token = await this.#store.getTokenByHash(hash);
    if (!token || token.id !== tokenId) throw badToken();
    const resolved = await this.#resolveToken(token, nowMs);
    if (!resolved) throw badToken();
    const { principal, untilMs } = resolved;
    this.#principals.set(hash, principal, Math.min(untilMs, nowMs + this.#cacheMs));
    return principal;
  }

  /**
   * Throws `forbidden` "not allowed: <action> on <resource>" unless the principal's
   * policies allow it (deny by default; privileged actions need admin, see policy.ts).
   * Sudo-derived policies stop counting the moment their grant expires.
   */
  authorize(principal: Principal, action: Action, resource: string): void {
    if (!this.#policySet.allows(this.#effectivePolicies(principal), action, resource)) {
      throw new CustosError("forbidden", `not allowed: ${action} on ${resource}`);
    }
  }

  /** True when `authorize` would not throw. */
  isAllowed(principal: Principal, action: Action, resource: string): boolean {
    return this.#policySet.allows(this.#effectivePolicies(principal), action, resource);
  }

  /** Drops every cached principal and policy record (also done after each change this service makes). */
  invalidateCache(): void {
    this.#principals.clear();
    this.#policySetUntilMs = 0;
  }

  // ---- users --------------------------------------------------------------------

  /** Creates a user; `conflict` if the name is taken. */
  async createUser(actor: Actor, input: CreateUserInput): Promise<UserRecord> {
    const name = normalizeName("user", input.name);
    const policies = await this.#checkPolicyNames(input.policies ?? []);
    await this.#assertMayGrant(actor, policies);
    const passwordHash =
      input.password === undefined ? null : await withPassword(input.password, (secret) => hashPassword(secret));
    const at = this.#now();
    const user: UserRecord = {
      id: randomUUID(),
      name,
      passwordHash,
      policies,
      disabled: false,
      createdAt: at,
      updatedAt: at,
      revision: 1,
    };
    await this.#store.createUser(user, auditEntry(actor, "user.create", `user/${name}`, { after: userInfo(user) }));
    this.invalidateCache();
    return user;
  }

  /** The user named `name`; `not_found` otherwise. */
  async getUser(name: string): Promise<UserRecord> {
    return this.#userByName(name);
  }

  async listUsers(): Promise<UserRecord[]> {
    return this.#store.listUsers();
  }

  /** Changes a user's password (ending their login sessions), policies or disabled flag. */
  async updateUser(actor: Actor, name: string, changes: UpdateUserInput): Promise<UserRecord> {
    const before = await this.#userByName(name);
    await this.#assertMayManageUser(actor, before);
    const policies = changes.policies === undefined ? before.policies : await this.#checkPolicyNames(changes.policies);
    if (changes.policies !== undefined) await this.#assertMayGrant(actor, policies);
    if (changes.disabled !== undefined && typeof changes.disabled !== "boolean") {
      throw new CustosError("invalid_request", "disabled must be a boolean");
    }
    const passwordHash =
      changes.password === undefined
        ? before.passwordHash
        : await withPassword(changes.password, (secret) => hashPassword(secret));
    const after: UserRecord = {
      ...before,
      passwordHash,
      policies,
      disabled: changes.disabled ?? before.disabled,
      updatedAt: this.#now(),
      revision: before.revision + 1,
    };
    if (after.disabled || changes.policies !== undefined) await this.#assertAdminRemains({ user: [after.id, after] });
    const details = {
      before: userInfo(before),
      after: userInfo(after),
      passwordChanged: changes.password !== undefined,
    };
    // A new password ends the user's login sessions: whoever knew the old one is out.
    await this.#store.updateUser(
      after,
      before.revision,
      auditEntry(actor, "user.update", `user/${after.name}`, details),
      { endSessions: changes.password !== undefined },
    );
    this.invalidateCache();
    return after;
  }

  /** Deletes a user; the store revokes their tokens and drops them from groups. */
  async deleteUser(actor: Actor, name: string): Promise<void> {
    const user = await this.#userByName(name);
    await this.#assertMayManageUser(actor, user);
    await this.#assertAdminRemains({ user: [user.id, undefined] });
    await this.#store.deleteUser(
      user.id,
      auditEntry(actor, "user.delete", `user/${user.name}`, { before: userInfo(user) }),
    );
    this.invalidateCache();
  }

  /** Names of the given user ids, in order; ids of users that no longer exist are left out. */
  async userNames(ids: readonly string[]): Promise<string[]> {
    const users = await Promise.all(ids.map((id) => this.#store.getUser(id)));
    return users.flatMap((u) => (u ? [u.name] : []));
  }

  // ---- groups -------------------------------------------------------------------

  /** Creates a group of existing users. */
  async createGroup(actor: Actor, input: CreateGroupInput): Promise<GroupRecord> {
    const name = normalizeName("group", input.name);
    const policies = await this.#checkPolicyNames(input.policies ?? []);
    await this.#assertMayGrant(actor, policies);
    const members = await this.#userIds(input.members ?? []);
    const at = this.#now();
    const group: GroupRecord = {
      id: randomUUID(),
      name,
      members,
      policies,
      createdAt: at,
      updatedAt: at,
      revision: 1,
    };
    const details = { after: await groupInfo(group, (ids) => this.userNames(ids)) };
    await this.#store.createGroup(group, auditEntry(actor, "group.create", `group/${name}`, details));
    this.invalidateCache();
    return group;
  }

  /** The group named `name`; `not_found` otherwise. Members are user ids (see `userNames`). */
  async getGroup(name: string): Promise<GroupRecord> {
    return this.#groupByName(name);
  }

  async listGroups(): Promise<GroupRecord[]> {
    return this.#store.listGroups();
  }

  /** Replaces or edits a group's members, and/or replaces its policies. */
  async updateGroup(actor: Actor, name: string, changes: UpdateGroupInput): Promise<GroupRecord> {
    const before = await this.#groupByName(name);
    await this.#assertMayGrant(actor, before.policies);
    if (changes.members !== undefined && (changes.addMembers !== undefined || changes.removeMembers !== undefined)) {
      throw new CustosError("invalid_request", "give members, or addMembers/removeMembers, not both");
    }
    const policies = changes.policies === undefined ? before.policies : await this.#checkPolicyNames(changes.policies);
    if (changes.policies !== undefined) await this.#assertMayGrant(actor, policies);

    let members: string[];
    if (changes.members !== undefined) {
      members = await this.#userIds(changes.members);
    } else {
      const set = new Set(before.members);
      for (const id of await this.#userIds(changes.addMembers ?? [])) set.add(id);
      for (const id of await this.#userIds(changes.removeMembers ?? [])) set.delete(id);
      members = [...set];
    }
    const after: GroupRecord = {
      ...before,
      members,
      policies,
      updatedAt: this.#now(),
      revision: before.revision + 1,
    };
    if (before.policies.includes(ADMIN_POLICY)) await this.#assertAdminRemains({ group: [after.id, after] });
    const names = (ids: readonly string[]) => this.userNames(ids);
    const details = { before: await groupInfo(before, names), after: await groupInfo(after, names) };
    await this.#store.updateGroup(
      after,
      before.revision,
      auditEntry(actor, "group.update", `group/${after.name}`, details),
    );
    this.invalidateCache();
    return after;
  }

  async deleteGroup(actor: Actor, name: string): Promise<void> {
    const group = await this.#groupByName(name);
    await this.#assertMayGrant(actor, group.policies);
    if (group.policies.includes(ADMIN_POLICY)) await this.#assertAdminRemains({ group: [group.id, undefined] });
    const details = { before: await groupInfo(group, (ids) => this.userNames(ids)) };
    await this.#store.deleteGroup(group.id, auditEntry(actor, "group.delete", `group/${group.name}`, details));
    this.invalidateCache();
  }

  // ---- API tokens -----------------------------------------------------------------

  /**
   * Issues an API token for `principal` (acting for its user by default, or
   * standalone with `forUser: false`, which needs explicit policies). A non-admin
   * may only scope a token to policies it holds itself; a token made by a scoped
   * token is scoped at least as narrowly. The token string is returned once.
   */
  async createToken(
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
    const held = this.#effectivePolicies(principal);
    const isAdmin = held.includes(ADMIN_POLICY);
    let policies: string[] | null;
    if (input.policies !== undefined) {
      policies = await this.#checkPolicyNames(input.policies);
      const missing = isAdmin ? undefined : policies.find((p) => !held.includes(p));
      if (missing !== undefined) {
        throw new CustosError("forbidden", `cannot give a token policy "${missing}": you don't hold it`);
      }
    } else if (!forUser) {
      throw new CustosError("invalid_request", "a standalone token needs explicit policies");
    } else {
      const scope = this.#resolutions.get(principal)?.tokenScope ?? null;
      policies = scope === null ? null : [...scope];
    }

    const now = this.#clock();
    const { id, token, hash } = generateToken();
    const record: TokenRecord = {
      id,
      hash,
      kind: "api",
      name: input.name,
      userId: forUser ? principal.userId : null,
      policies,
      createdAt: now.toISOString(),
      expiresAt:
        input.ttlSeconds === undefined ? null : new Date(now.getTime() + input.ttlSeconds * 1000).toISOString(),
      revokedAt: null,
    };
    try {
      await this.#store.createToken(
        record,
        auditEntry(actor, "token.create", `token/${id}`, { after: tokenInfo(record) }),
      );
    } catch (e) {
      token.destroy();
      throw e;
    }
    return { token, record };
  }

  /** Tokens `principal` may see: all for admins, else its user's tokens (or, standalone, itself). */
  async listTokens(principal: Principal): Promise<TokenRecord[]> {
    if (this.#effectivePolicies(principal).includes(ADMIN_POLICY)) return this.#store.listTokens();
    if (principal.userId !== null) return this.#store.listTokens(principal.userId);
    const own = await this.#store.getToken(principal.tokenId);
    return own ? [own] : [];
  }

  /** Revokes a token: its user's own tokens, the token itself, or any token for admins. */
  async revokeToken(actor: Actor, principal: Principal, id: string): Promise<void> {
    const token = typeof id === "string" ? await this.#store.getToken(id) : undefined;
    if (!token) throw new CustosError("not_found", "no such token");
    const mine = token.id === principal.tokenId || (token.userId !== null && token.userId === principal.userId);
    if (!mine && !this.#effectivePolicies(principal).includes(ADMIN_POLICY)) {
      throw new CustosError("forbidden", `not allowed: token:revoke on token/${token.id}`);
    }
    if (token.revokedAt !== null) throw new CustosError("conflict", "token already revoked");
    const at = this.#now();
    const details = { before: tokenInfo(token), after: tokenInfo({ ...token, revokedAt: at }) };
    await this.#store.revokeToken(token.id, at, auditEntry(actor, "token.revoke", `token/${token.id}`, details));
    this.invalidateCache();
  }

  // ---- policies -------------------------------------------------------------------

  /** Creates or replaces a policy. `admin` is built in: `forbidden`. */
  async putPolicy(actor: Actor, input: PutPolicyInput): Promise<PolicyRecord> {
    const valid = validatePolicy(input);
    const before = await this.#store.getPolicy(valid.name);
    const at = this.#now();
    const after: PolicyRecord = {
      name: valid.name,
      description: valid.description,
      rules: valid.rules,
      createdAt: before?.createdAt ?? at,
      updatedAt: at,
      revision: (before?.revision ?? 0) + 1,
    };
    const details = { before: before ?? null, after };
    await this.#store.putPolicy(
      after,
      before?.revision ?? null,
      auditEntry(actor, "policy.put", `policy/${after.name}`, details),
    );
    this.invalidateCache();
    await this.#currentPolicies(this.#clock().getTime());
    return after;
  }

  /** The policy named `name` (the built-in admin policy included); `not_found` otherwise. */
  async getPolicy(name: string): Promise<PolicyRecord> {
    const folded = typeof name === "string" ? tryNormalizeName(name) : undefined;
    const record = folded === undefined ? undefined : await this.#store.getPolicy(folded);
    if (record) return record;
    if (folded === ADMIN_POLICY) return builtinAdminPolicy(new Date(0).toISOString());
    throw new CustosError("not_found", "no such policy");
  }

  /** Every policy, the built-in admin policy included, by name. */
  async listPolicies(): Promise<PolicyRecord[]> {
    const records = await this.#store.listPolicies();
    if (!records.some((p) => p.name === ADMIN_POLICY)) records.push(builtinAdminPolicy(new Date(0).toISOString()));
    return records.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** Deletes a policy no user, group, live token or active sudo grant refers to (`conflict` otherwise). */
  async deletePolicy(actor: Actor, name: string): Promise<void> {
    const folded = tryNormalizeName(typeof name === "string" ? name : "");
    if (folded === ADMIN_POLICY)
      throw new CustosError("forbidden", "the admin policy is built in and cannot be deleted");
    const policy = folded === undefined ? undefined : await this.#store.getPolicy(folded);
    if (!policy) throw new CustosError("not_found", "no such policy");
    const user = (await this.#store.listUsers()).find((u) => u.policies.includes(policy.name));
    if (user) throw new CustosError("conflict", `policy is held by user ${user.name}`);
    const group = (await this.#store.listGroups()).find((g) => g.policies.includes(policy.name));
    if (group) throw new CustosError("conflict", `policy is held by group ${group.name}`);
    const nowIso = this.#now();
    const token = (await this.#store.listTokens()).find(
      (t) =>
        t.revokedAt === null && (t.expiresAt === null || t.expiresAt > nowIso) && t.policies?.includes(policy.name),
    );
    if (token) throw new CustosError("conflict", `policy is held by token ${token.id}`);
    const grant = (await this.#store.listSudoGrants(nowIso)).find((g) => g.policies.includes(policy.name));
    if (grant) throw new CustosError("conflict", `policy is held by sudo grant ${grant.id}`);
    await this.#store.deletePolicy(
      policy.name,
      auditEntry(actor, "policy.delete", `policy/${policy.name}`, { before: policy }),
    );
    this.invalidateCache();
    await this.#currentPolicies(this.#clock().getTime());
  }

  // ---- sudo -----------------------------------------------------------------------

  /**
   * Grants a user or a group extra policies (admin by default) for `ttlSeconds`.
   * The grant ends by itself: authentication compares its expiry with the clock.
   */
  async grantSudo(actor: Actor, input: GrantSudoInput): Promise<SudoGrantRecord> {
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
    const policies = await this.#checkPolicyNames(input.policies ?? [ADMIN_POLICY]);
    if (policies.length === 0) throw new CustosError("invalid_request", "a sudo grant needs at least one policy");
    await this.#assertMayGrant(actor, policies);
    const subject =
      input.user !== undefined
        ? { type: "user" as const, record: await this.#userByName(input.user) }
        : { type: "group" as const, record: await this.#groupByName(input.group ?? "") };
    const now = this.#clock();
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
    await this.#store.createSudoGrant(grant, auditEntry(actor, "sudo.grant", resource, { after: grant }));
    this.invalidateCache();
    return grant;
  }

  /** Sudo grants, newest state from the store; only unrevoked, unexpired ones with `activeOnly`. */
  async listSudoGrants(activeOnly = false): Promise<SudoGrantRecord[]> {
    return this.#store.listSudoGrants(activeOnly ? this.#now() : undefined);
  }

  /** Ends a grant now. */
  async revokeSudo(actor: Actor, id: string): Promise<void> {
    const grant = typeof id === "string" ? await this.#store.getSudoGrant(id) : undefined;
    if (!grant) throw new CustosError("not_found", "no such sudo grant");
    if (grant.revokedAt !== null) throw new CustosError("conflict", "sudo grant already revoked");
    const at = this.#now();
    const details = { before: grant, after: { ...grant, revokedAt: at } };
    await this.#store.revokeSudoGrant(grant.id, at, auditEntry(actor, "sudo.revoke", `sudo/${grant.id}`, details));
    this.invalidateCache();
  }

  /** The name of a grant's subject (its id if the subject is gone). */
  async subjectName(grant: SudoGrantRecord): Promise<string> {
    if (grant.subjectType === "user") return (await this.#store.getUser(grant.subjectId))?.name ?? grant.subjectId;
    const group = (await this.#store.listGroups()).find((g) => g.id === grant.subjectId);
    return group?.name ?? grant.subjectId;
  }

  // ---- internals ------------------------------------------------------------------

  #now(): string {
    return this.#clock().toISOString();
  }

  /** The policy snapshot, reloaded from the store once it is older than the cache period. */
  async #currentPolicies(nowMs: number): Promise<PolicySet> {
    if (nowMs < this.#policySetUntilMs) return this.#policySet;
    this.#policyLoad ??= (async () => {
      try {
        const set = new PolicySet(await this.#store.listPolicies());
        this.#policySet = set;
        this.#policySetUntilMs = this.#clock().getTime() + this.#cacheMs;
        return set;
      } finally {
        this.#policyLoad = undefined;
      }
    })();
    return this.#policyLoad;
  }

  /** Policies in force for `principal` now: sudo-derived ones drop out when their grant ends. */
  #effectivePolicies(principal: Principal): string[] {
    const resolution = this.#resolutions.get(principal);
    if (!resolution) return [...principal.policies];
    const nowMs = this.#clock().getTime();
    const out = [...resolution.base];
    for (const [policy, untilMs] of resolution.sudo)
      if (untilMs > nowMs && !resolution.base.has(policy)) out.push(policy);
    return out;
  }

  /**
   * A user's policies: own and groups' (`base`), plus those of active sudo grants
   * on the user or its groups (`sudo`, with each policy's latest end).
   */
  async #userPolicies(user: UserRecord, nowMs: number): Promise<{ base: Set<string>; sudo: Map<string, number> }> {
    const groups = await this.#store.groupsOfUser(user.id);
    const base = new Set(user.policies);
    for (const g of groups) for (const p of g.policies) base.add(p);
    const groupIds = new Set(groups.map((g) => g.id));
    const sudo = new Map<string, number>();
    for (const grant of await this.#store.listSudoGrants(new Date(nowMs).toISOString())) {
      const applies =
        (grant.subjectType === "user" && grant.subjectId === user.id) ||
        (grant.subjectType === "group" && groupIds.has(grant.subjectId));
      const untilMs = Date.parse(grant.expiresAt);
      if (!applies || grant.revokedAt !== null || !(untilMs > nowMs)) continue;
      for (const p of grant.policies) sudo.set(p, Math.max(sudo.get(p) ?? 0, untilMs));
    }
    return { base, sudo };
  }

  /**
   * Builds the principal of a live token, or undefined when the token is revoked,
   * expired or its user gone or disabled. `untilMs` is how long the result may be
   * cached: never past the token's expiry or the first sudo grant change.
   */
  async #resolveToken(
    token: TokenRecord,
    nowMs: number,
  ): Promise<{ principal: Principal; untilMs: number } | undefined> {
    if (token.revokedAt !== null) return undefined;
    let untilMs = Number.POSITIVE_INFINITY;
    if (token.expiresAt !== null) {
      untilMs = Date.parse(token.expiresAt);
      if (!(untilMs > nowMs)) return undefined;
    }
    let user: UserRecord | undefined;
    let base: Set<string>;
    let sudo = new Map<string, number>();
    if (token.userId !== null) {
      user = await this.#store.getUser(token.userId);
      if (!user || user.disabled) return undefined;
      ({ base, sudo } = await this.#userPolicies(user, nowMs));
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
      isAdmin: policies.includes(ADMIN_POLICY),
      sudoUntil: sudoUntilMs === null ? null : new Date(sudoUntilMs).toISOString(),
      display: sessionUser ? `user:${sessionUser.name}` : `token:${token.id}`,
    };
    this.#resolutions.set(principal, { base, sudo, tokenScope: token.policies });
    return { principal, untilMs };
  }

  /** What a user/token actor may grant, or undefined for trusted in-process actors. */
  async #callerRights(actor: Actor): Promise<CallerRights | undefined> {
    const who = actor.principal;
    const nowMs = this.#clock().getTime();
    let policies: Set<string> | undefined;
    if (who.startsWith("user:")) {
      const user = await this.#store.getUserByName(who.slice("user:".length));
      if (user && !user.disabled) {
        const { base, sudo } = await this.#userPolicies(user, nowMs);
        policies = new Set([...base, ...sudo.keys()]);
      }
    } else if (who.startsWith("token:")) {
      const token = await this.#store.getToken(who.slice("token:".length));
      const resolved = token ? await this.#resolveToken(token, nowMs) : undefined;
      if (resolved) policies = new Set(resolved.principal.policies);
    } else if (who !== "anonymous" && who !== "") {
      return undefined;
    }
    if (!policies) throw new CustosError("forbidden", "the acting principal is no longer valid");
    return { isAdmin: policies.has(ADMIN_POLICY), policies };
  }

  /** Non-admin user/token actors may only grant policies they hold. */
  async #assertMayGrant(actor: Actor, policies: readonly string[]): Promise<void> {
    if (policies.length === 0) return;
    const rights = await this.#callerRights(actor);
    if (!rights || rights.isAdmin) return;
    const missing = policies.find((p) => !rights.policies.has(p));
    if (missing !== undefined)
      throw new CustosError("forbidden", `cannot grant policy "${missing}": you don't hold it`);
  }

  /** Non-admin user/token actors may only manage users whose own and group policies they hold. */
  async #assertMayManageUser(actor: Actor, user: UserRecord): Promise<void> {
    const held = new Set(user.policies);
    for (const g of await this.#store.groupsOfUser(user.id)) for (const p of g.policies) held.add(p);
    const rights = await this.#callerRights(actor);
    if (!rights || rights.isAdmin) return;
    const missing = [...held].find((p) => !rights.policies.has(p));
    if (missing !== undefined) {
      throw new CustosError("forbidden", `cannot manage user ${user.name}: it holds policy "${missing}", you don't`);
    }
  }

  /** Normalises policy names and checks they exist (admin always does). */
  async #checkPolicyNames(names: readonly string[]): Promise<string[]> {
    if (!Array.isArray(names)) throw new CustosError("invalid_request", "policies must be a list of names");
    if (names.length > MAX_POLICIES_PER_SUBJECT) {
      throw new CustosError("invalid_request", `at most ${MAX_POLICIES_PER_SUBJECT} policies`);
    }
    const folded = [...new Set(names.map((n) => normalizeName("policy", n)))];
    const existing = new Set((await this.#store.listPolicies()).map((p) => p.name));
    const unknown = folded.find((n) => n !== ADMIN_POLICY && !existing.has(n));
    if (unknown !== undefined) throw new CustosError("invalid_request", `unknown policy "${unknown}"`);
    return folded;
  }

  /**
   * Refuses a change (a user or group replaced, or deleted when undefined) after
   * which no enabled user holds admin directly or through a group: nobody could
   * undo it. Sudo grants don't count; they lapse. A check before the write, not in
   * its transaction: two admins removing each other at the same instant can still
   * both succeed.
   */
  async #assertAdminRemains(change: {
    user?: [string, UserRecord | undefined];
    group?: [string, GroupRecord | undefined];
  }): Promise<void> {
    const users = new Map((await this.#store.listUsers()).map((u) => [u.id, u]));
    const groups = new Map((await this.#store.listGroups()).map((g) => [g.id, g]));
    if (change.user) replaceOrDelete(users, ...change.user);
    if (change.group) replaceOrDelete(groups, ...change.group);
    const viaGroup = new Set(
      [...groups.values()].filter((g) => g.policies.includes(ADMIN_POLICY)).flatMap((g) => g.members),
    );
    const remains = [...users.values()].some(
      (u) => !u.disabled && (u.policies.includes(ADMIN_POLICY) || viaGroup.has(u.id)),
    );
    if (!remains) throw new CustosError("conflict", "this change would leave no enabled administrator");
  }

  async #userByName(name: string): Promise<UserRecord> {
    const folded = typeof name === "string" ? tryNormalizeName(name) : undefined;
    const user = folded === undefined ? undefined : await this.#store.getUserByName(folded);
    if (!user) throw new CustosError("not_found", "no such user");
    return user;
  }

  async #groupByName(name: string): Promise<GroupRecord> {
    const folded = typeof name === "string" ? tryNormalizeName(name) : undefined;
    const group = folded === undefined ? undefined : await this.#store.getGroupByName(folded);
    if (!group) throw new CustosError("not_found", "no such group");
    return group;
  }

  /** User ids for names, each of which must exist. */
  async #userIds(names: readonly string[]): Promise<string[]> {
    if (!Array.isArray(names)) throw new CustosError("invalid_request", "members must be a list of user names");
    const ids: string[] = [];
    for (const name of new Set(names.map((n) => normalizeName("user", n)))) {
      const user = await this.#store.getUserByName(name);
      if (!user) throw new CustosError("invalid_request", `unknown user "${name}"`);
      ids.push(user.id);
    }
    return ids;
  }
}

function replaceOrDelete<T>(map: Map<string, T>, id: string, value: T | undefined): void {
  if (value === undefined) map.delete(id);
  else map.set(id, value);
}
