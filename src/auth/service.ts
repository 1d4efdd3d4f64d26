import type { Actor } from "../audit/entry.js";
import type { Secret } from "../secret/index.js";
import type { GroupRecord, PolicyRecord, SudoGrantRecord, TokenRecord, UserRecord } from "../store/index.js";
import type { Action } from "./actions.js";
import * as authn from "./authenticate.js";
import * as groups from "./groups.js";
import { groupByName, userByName } from "./guards.js";
import { type AuthContext, createContext, invalidateCache } from "./internal.js";
import * as policies from "./policies.js";
import type { Principal } from "./principal.js";
import * as sudo from "./sudo.js";
import * as tokens from "./tokens.js";
import type {
  AuthServiceOptions,
  CreateGroupInput,
  CreateTokenInput,
  CreateUserInput,
  GrantSudoInput,
  LoginResult,
  PasswordInput,
  PutPolicyInput,
  RenewTokenInput,
  UpdateGroupInput,
  UpdateUserInput,
} from "./types.js";
import * as users from "./users.js";

/**
 * Users, groups, tokens, policies and sudo grants; authentication of bearer
 * tokens and authorisation of actions.
 *
 * Methods that take an `actor` expect the caller (the API) to have authorised the
 * action already (except `revokeToken`, which alone knows whose token it is); they
 * add the rule that stops `user:write`/`group:write` from being an escalation
 * path: when the actor is a user or token (`user:<name>`, `token:<id>`) and not
 * admin, it may only grant policies it holds itself and may only manage users and
 * groups whose rights it holds itself: their policies, those of their active sudo
 * grants, the apps they own and their SSH sudo grants (a password reset or a new
 * member would hand all of these over; a scoped token holds no ownership rights).
 * Actors of any other form (`system`, `cli`, …) are in-process callers and are
 * trusted.
 *
 * Each node caches principals and policy records for `principalCacheMs`; changes
 * made through this instance take effect at once, changes made by another node
 * within that period.
 */
export class AuthService {
  readonly #ctx: AuthContext;

  constructor(options: AuthServiceOptions) {
    this.#ctx = createContext(options);
  }

  // ---- authentication ---------------------------------------------------------

  /** Checks a user's password and opens a session; every failure is `unauthenticated` "invalid credentials". */
  login(actor: Actor, name: string, password: PasswordInput): Promise<LoginResult> {
    return authn.login(this.#ctx, actor, name, password);
  }

  /** Resolves a bearer token to its principal; every bad token fails the same way. */
  authenticate(tokenString: string | Secret): Promise<Principal> {
    return authn.authenticate(this.#ctx, tokenString);
  }

  /** Throws `forbidden` "not allowed: <action> on <resource>" unless the principal's policies allow it. */
  authorize(principal: Principal, action: Action, resource: string): void {
    authn.authorize(this.#ctx, principal, action, resource);
  }

  /** True when `authorize` would not throw. */
  isAllowed(principal: Principal, action: Action, resource: string): boolean {
    return authn.isAllowed(this.#ctx, principal, action, resource);
  }

  /** Drops every cached principal and policy record (also done after each change this service makes). */
  invalidateCache(): void {
    invalidateCache(this.#ctx);
  }

  // ---- users --------------------------------------------------------------------

  /** Creates a user; `conflict` if the name is taken. */
  createUser(actor: Actor, input: CreateUserInput): Promise<UserRecord> {
    return users.createUser(this.#ctx, actor, input);
  }

  /** The user named `name`; `not_found` otherwise. */
  getUser(name: string): Promise<UserRecord> {
    return userByName(this.#ctx, name);
  }

  listUsers(): Promise<UserRecord[]> {
    return users.listUsers(this.#ctx);
  }

  /** Changes a user's password (ending their login sessions), policies or disabled flag. */
  updateUser(actor: Actor, name: string, changes: UpdateUserInput): Promise<UserRecord> {
    return users.updateUser(this.#ctx, actor, name, changes);
  }

  /** Deletes a user; the store revokes their tokens and drops them from groups. */
  deleteUser(actor: Actor, name: string): Promise<void> {
    return users.deleteUser(this.#ctx, actor, name);
  }

  /** Names of the given user ids, in order; ids of users that no longer exist are left out. */
  userNames(ids: readonly string[]): Promise<string[]> {
    return users.userNames(this.#ctx, ids);
  }

  // ---- groups -------------------------------------------------------------------

  /** Creates a group of existing users. */
  createGroup(actor: Actor, input: CreateGroupInput): Promise<GroupRecord> {
    return groups.createGroup(this.#ctx, actor, input);
  }

  /** The group named `name`; `not_found` otherwise. Members are user ids (see `userNames`). */
  getGroup(name: string): Promise<GroupRecord> {
    return groupByName(this.#ctx, name);
  }

  listGroups(): Promise<GroupRecord[]> {
    return groups.listGroups(this.#ctx);
  }

  /** Replaces or edits a group's members, and/or replaces its policies. */
  updateGroup(actor: Actor, name: string, changes: UpdateGroupInput): Promise<GroupRecord> {
    return groups.updateGroup(this.#ctx, actor, name, changes);
  }

  deleteGroup(actor: Actor, name: string): Promise<void> {
    return groups.deleteGroup(this.#ctx, actor, name);
  }

  // ---- API tokens -----------------------------------------------------------------

  /** Issues an API token for `principal`; the token string is returned once. */
  createToken(
    actor: Actor,
    principal: Principal,
    input: CreateTokenInput,
  ): Promise<{ token: Secret; record: TokenRecord }> {
    return tokens.createToken(this.#ctx, actor, principal, input);
  }

  /** Tokens `principal` may see: all for admins, else its user's tokens (or, standalone, itself). */
  listTokens(principal: Principal): Promise<TokenRecord[]> {
    return tokens.listTokens(this.#ctx, principal);
  }

  /**
   * Revokes a token and the tokens it made (answering their ids): the caller's own
   * token, another of its user's or one its token made with no policy, any other
   * with `token:revoke` and admin rights (checked here, unlike other methods).
   */
  revokeToken(actor: Actor, principal: Principal, id: string): Promise<string[]> {
    return tokens.revokeToken(this.#ctx, actor, principal, id);
  }

  /** Renews a renewable token, by the same rule as `revokeToken` (checked here too). */
  renewToken(actor: Actor, principal: Principal, id: string, input: RenewTokenInput = {}): Promise<TokenRecord> {
    return tokens.renewToken(this.#ctx, actor, principal, id, input);
  }

  // ---- policies -------------------------------------------------------------------

  /** Creates or replaces a policy. `admin` is built in: `forbidden`. */
  putPolicy(actor: Actor, input: PutPolicyInput): Promise<PolicyRecord> {
    return policies.putPolicy(this.#ctx, actor, input);
  }

  /** The policy named `name` (the built-in admin policy included); `not_found` otherwise. */
  getPolicy(name: string): Promise<PolicyRecord> {
    return policies.getPolicy(this.#ctx, name);
  }

  /** Every policy, the built-in admin policy included, by name. */
  listPolicies(): Promise<PolicyRecord[]> {
    return policies.listPolicies(this.#ctx);
  }

  /** Deletes a policy no user, group, live token or active sudo grant refers to (`conflict` otherwise). */
  deletePolicy(actor: Actor, name: string): Promise<void> {
    return policies.deletePolicy(this.#ctx, actor, name);
  }

  // ---- sudo -----------------------------------------------------------------------

  /** Grants a user or a group extra policies (admin by default) for `ttlSeconds`. */
  grantSudo(actor: Actor, input: GrantSudoInput): Promise<SudoGrantRecord> {
    return sudo.grantSudo(this.#ctx, actor, input);
  }

  /** Sudo grants, newest state from the store; only unrevoked, unexpired ones with `activeOnly`. */
  listSudoGrants(activeOnly = false): Promise<SudoGrantRecord[]> {
    return sudo.listSudoGrants(this.#ctx, activeOnly);
  }

  /** Ends a grant now. */
  revokeSudo(actor: Actor, id: string): Promise<void> {
    return sudo.revokeSudo(this.#ctx, actor, id);
  }

  /** The name of a grant's subject (its id if the subject is gone). */
  subjectName(grant: SudoGrantRecord): Promise<string> {
    return sudo.subjectName(this.#ctx, grant);
  }
}
