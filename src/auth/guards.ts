import type { Actor } from "../audit/entry.js";
import { CustosError } from "../errors/index.js";
import type { GroupRecord, UserRecord } from "../store/index.js";
import type { AuthContext } from "./internal.js";
import { normalizeName, tryNormalizeName } from "./names.js";
import { ADMIN_POLICY } from "./policy.js";
import { resolveToken, userPolicies } from "./resolve.js";

/**
 * Checks shared by the management operations: what the acting principal may hand
 * out and manage, that an administrator remains, and lookups of users, groups and
 * policies by name.
 */

const MAX_POLICIES_PER_SUBJECT = 64;

/** What an actor may hand out, when the actor is a user or token (callers such as `system` are trusted). */
interface CallerRights {
  readonly isAdmin: boolean;
  readonly policies: ReadonlySet<string>;
}

/** What a user/token actor may grant, or undefined for trusted in-process actors. */
async function callerRights(ctx: AuthContext, actor: Actor): Promise<CallerRights | undefined> {
  const who = actor.principal;
  const nowMs = ctx.clock().getTime();
  let policies: Set<string> | undefined;
  if (who.startsWith("user:")) {
    const user = await ctx.store.getUserByName(who.slice("user:".length));
    if (user && !user.disabled) {
      const { base, sudo } = await userPolicies(ctx, user, nowMs);
      policies = new Set([...base, ...sudo.keys()]);
    }
  } else if (who.startsWith("token:")) {
    const token = await ctx.store.getToken(who.slice("token:".length));
    const resolved = token ? await resolveToken(ctx, token, nowMs) : undefined;
    if (resolved) policies = new Set(resolved.principal.policies);
  } else if (who !== "anonymous" && who !== "") {
    return undefined;
  }
  if (!policies) throw new CustosError("forbidden", "the acting principal is no longer valid");
  return { isAdmin: policies.has(ADMIN_POLICY), policies };
}

/** Non-admin user/token actors may only grant policies they hold. */
export async function assertMayGrant(ctx: AuthContext, actor: Actor, policies: readonly string[]): Promise<void> {
  if (policies.length === 0) return;
  const rights = await callerRights(ctx, actor);
  if (!rights || rights.isAdmin) return;
  const missing = policies.find((p) => !rights.policies.has(p));
  if (missing !== undefined) throw new CustosError("forbidden", `cannot grant policy "${missing}": you don't hold it`);
}

/** Non-admin user/token actors may only manage users whose own and group policies they hold. */
export async function assertMayManageUser(ctx: AuthContext, actor: Actor, user: UserRecord): Promise<void> {
  const rights = await callerRights(ctx, actor);
  if (!rights || rights.isAdmin) return;
  const held = new Set(user.policies);
  for (const g of await ctx.store.groupsOfUser(user.id)) for (const p of g.policies) held.add(p);
  const missing = [...held].find((p) => !rights.policies.has(p));
  if (missing !== undefined) {
    throw new CustosError("forbidden", `cannot manage user ${user.name}: it holds policy "${missing}", you don't`);
  }
}

/** Normalises policy names and checks they exist (admin always does). */
export async function checkPolicyNames(ctx: AuthContext, names: readonly string[]): Promise<string[]> {
  if (!Array.isArray(names)) throw new CustosError("invalid_request", "policies must be a list of names");
  if (names.length > MAX_POLICIES_PER_SUBJECT) {
    throw new CustosError("invalid_request", `at most ${MAX_POLICIES_PER_SUBJECT} policies`);
  }
  const folded = [...new Set(names.map((n) => normalizeName("policy", n)))];
  const existing = new Set((await ctx.store.listPolicies()).map((p) => p.name));
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
export async function assertAdminRemains(
  ctx: AuthContext,
  change: {
    user?: [string, UserRecord | undefined];
    group?: [string, GroupRecord | undefined];
  },
): Promise<void> {
  const users = new Map((await ctx.store.listUsers()).map((u) => [u.id, u]));
  const groups = new Map((await ctx.store.listGroups()).map((g) => [g.id, g]));
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

function replaceOrDelete<T>(map: Map<string, T>, id: string, value: T | undefined): void {
  if (value === undefined) map.delete(id);
  else map.set(id, value);
}

/** The user named `name`; `not_found` otherwise. */
export async function userByName(ctx: AuthContext, name: string): Promise<UserRecord> {
  const folded = typeof name === "string" ? tryNormalizeName(name) : undefined;
  const user = folded === undefined ? undefined : await ctx.store.getUserByName(folded);
  if (!user) throw new CustosError("not_found", "no such user");
  return user;
}

/** The group named `name`; `not_found` otherwise. */
export async function groupByName(ctx: AuthContext, name: string): Promise<GroupRecord> {
  const folded = typeof name === "string" ? tryNormalizeName(name) : undefined;
  const group = folded === undefined ? undefined : await ctx.store.getGroupByName(folded);
  if (!group) throw new CustosError("not_found", "no such group");
  return group;
}

/** User ids for names, each of which must exist. */
export async function userIds(ctx: AuthContext, names: readonly string[]): Promise<string[]> {
  if (!Array.isArray(names)) throw new CustosError("invalid_request", "members must be a list of user names");
  const ids: string[] = [];
  for (const name of new Set(names.map((n) => normalizeName("user", n)))) {
    const user = await ctx.store.getUserByName(name);
    if (!user) throw new CustosError("invalid_request", `unknown user "${name}"`);
    ids.push(user.id);
  }
  return ids;
}
