import type { Actor } from "../audit/entry.js";
import { CustosError } from "../errors/index.js";
import type { GroupRecord, UserRecord } from "../store/index.js";
import type { AuthContext } from "./internal.js";
import { normalizeName, tryNormalizeName } from "./names.js";
import { ADMIN_POLICY } from "./policy.js";
import { resolveToken, sudoPolicies, userPolicies } from "./resolve.js";

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
  /** Those of `policies` held without a sudo grant. */
  readonly permanent: ReadonlySet<string>;
  /** The user whose platform rights it holds: none for a standalone token or a scoped one (`Principal.scoped`). */
  readonly userId: string | null;
}

/** What a user/token actor may grant, or undefined for trusted in-process actors. */
async function callerRights(ctx: AuthContext, actor: Actor): Promise<CallerRights | undefined> {
  const who = actor.principal;
  const nowMs = ctx.clock().getTime();
  let held: { base: ReadonlySet<string>; sudo: ReadonlyMap<string, number> } | undefined;
  let userId: string | null = null;
  if (who.startsWith("user:")) {
    const user = await ctx.store.getUserByName(who.slice("user:".length));
    if (user && !user.disabled) {
      held = await userPolicies(ctx, user, nowMs);
      userId = user.id;
    }
  } else if (who.startsWith("token:")) {
    const token = await ctx.store.getToken(who.slice("token:".length));
    const resolved = token ? await resolveToken(ctx, token, nowMs) : undefined;
    if (resolved) {
      held = ctx.resolutions.get(resolved.principal);
      userId = resolved.principal.scoped ? null : resolved.principal.userId;
    }
  } else if (who !== "anonymous" && who !== "") {
    return undefined;
  }
  if (!held) throw new CustosError("forbidden", "the acting principal is no longer valid");
  const policies = new Set([...held.base, ...held.sudo.keys()]);
  return { isAdmin: policies.has(ADMIN_POLICY), policies, permanent: held.base, userId };
}

/**
 * User/token actors other than lasting admins may only grant policies they hold,
 * and only those they hold without a sudo grant: what they grant lasts, theirs
 * would lapse. An admin through a sudo grant holds every policy, but only while it
 * lasts, so it too may give for good only what it holds without one.
 */
export async function assertMayGrant(ctx: AuthContext, actor: Actor, policies: readonly string[]): Promise<void> {
  if (policies.length === 0) return;
  const rights = await callerRights(ctx, actor);
  if (!rights || rights.permanent.has(ADMIN_POLICY)) return;
  const missing = rights.isAdmin ? undefined : policies.find((p) => !rights.policies.has(p));
  if (missing !== undefined) throw new CustosError("forbidden", `cannot grant policy "${missing}": you don't hold it`);
  const lapsing = policies.find((p) => !rights.permanent.has(p));
  if (lapsing !== undefined) {
    throw new CustosError(
      "forbidden",
      `cannot grant policy "${lapsing}": you hold it only through a sudo grant, which what you grant would outlive`,
    );
  }
}

/**
 * Non-admin user/token actors may only manage users whose every right they hold
 * themselves (see `assertHoldsAll`): a password reset hands over all of them.
 */
export async function assertMayManageUser(ctx: AuthContext, actor: Actor, user: UserRecord): Promise<void> {
  const rights = await callerRights(ctx, actor);
  if (!rights || rights.isAdmin) return;
  const groups = await ctx.store.groupsOfUser(user.id);
  const groupIds = groups.map((g) => g.id);
  const base = [...user.policies, ...groups.flatMap((g) => g.policies)];
  const sudo = await sudoPolicies(ctx, { userId: user.id, groupIds }, ctx.clock().getTime());
  await assertHoldsAll(ctx, rights, `user ${user.name}`, { base, sudo: sudo.keys() }, { userIds: [user.id], groupIds });
}

/**
 * Non-admin user/token actors may only manage groups whose every right they hold
 * themselves (see `assertHoldsAll`): whoever they add as a member gets all of them.
 */
export async function assertMayManageGroup(ctx: AuthContext, actor: Actor, group: GroupRecord): Promise<void> {
  const rights = await callerRights(ctx, actor);
  if (!rights || rights.isAdmin) return;
  const sudo = await sudoPolicies(ctx, { groupIds: [group.id] }, ctx.clock().getTime());
  await assertHoldsAll(
    ctx,
    rights,
    `group ${group.name}`,
    { base: group.policies, sudo: sudo.keys() },
    { userIds: [], groupIds: [group.id] },
  );
}

/** Users and groups, by id: who holds a right. */
interface Holders {
  readonly userIds: readonly string[];
  readonly groupIds: readonly string[];
}

/**
 * The rule that keeps user and group management from being an escalation path:
 * a non-admin manager must itself hold every right of the subject it manages.
 * Rights are the subject's policies (own and groups'), the policies of its active
 * sudo grants, and what the platform gives outside policies (`platformRights`).
 * Owning an app (as the user or through a group) is a right like any other: only
 * an admin or a co-owner of each of its apps may manage an app's owner.
 */
async function assertHoldsAll(
  ctx: AuthContext,
  rights: CallerRights,
  subject: string,
  policies: { base: Iterable<string>; sudo: Iterable<string> },
  holders: Holders,
): Promise<void> {
  const refuse = (what: string) => new CustosError("forbidden", `cannot manage ${subject}: it ${what}, you don't`);
  const missing = [...policies.base].find((p) => !rights.policies.has(p));
  if (missing !== undefined) throw refuse(`holds policy "${missing}"`);
  const lent = [...policies.sudo].find((p) => !rights.policies.has(p));
  if (lent !== undefined) throw refuse(`holds policy "${lent}" through a sudo grant`);

  const theirs = await platformRights(ctx, holders);
  if (theirs.length === 0) return;
  const mine: Holders =
    rights.userId === null
      ? { userIds: [], groupIds: [] }
      : { userIds: [rights.userId], groupIds: (await ctx.store.groupsOfUser(rights.userId)).map((g) => g.id) };
  const notMine = theirs.find((r) => !heldBy(r, mine));
  if (notMine !== undefined) throw refuse(notMine.what);
}

/** A right the platform gives users and groups outside policies, and who holds it. */
interface PlatformRight {
  /** How a refusal names it: "owns app <org>/<space>/<app>", "holds SSH sudo as root on app …". */
  readonly what: string;
  readonly userIds: readonly string[];
  readonly groupIds: readonly string[];
}

function heldBy(right: PlatformRight, holders: Holders): boolean {
  return (
    right.userIds.some((id) => holders.userIds.includes(id)) ||
    right.groupIds.some((id) => holders.groupIds.includes(id))
  );
}

/**
 * The rights the platform gives `holders` outside policies: owning an app (its
 * secrets, its instances over SSH: docs/broker.md, docs/ssh-ca.md) and active SSH
 * sudo grants (root, or another account, on an app's instances). Read through the
 * store's platform and SSH areas, the seam the platform and SSH CA modules
 * themselves decide these through.
 */
async function platformRights(ctx: AuthContext, holders: Holders): Promise<PlatformRight[]> {
  const rights: PlatformRight[] = [];
  for (const app of await ctx.store.platform.appsOwnedBy(holders.userIds, holders.groupIds)) {
    rights.push({
      what: `owns app ${app.org}/${app.space}/${app.name}`,
      userIds: app.ownerUsers,
      groupIds: app.ownerGroups,
    });
  }
  for (const grant of await ctx.store.ssh.listSudoGrants(ctx.clock().toISOString())) {
    const what = `holds SSH sudo as ${grant.account} on app ${grant.org}/${grant.space}/${grant.app}`;
    const byUser = grant.subjectType === "user";
    const right = { what, userIds: byUser ? [grant.subjectId] : [], groupIds: byUser ? [] : [grant.subjectId] };
    if (heldBy(right, holders)) rights.push(right);
  }
  return rights;
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
