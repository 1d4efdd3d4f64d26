import { randomUUID } from "node:crypto";
import { type Actor, auditEntry } from "../audit/entry.js";
import { CustosError } from "../errors/index.js";
import type { UserRecord } from "../store/index.js";
import { assertAdminRemains, assertMayGrant, assertMayManageUser, checkPolicyNames, userByName } from "./guards.js";
import { type AuthContext, invalidateCache, nowIso } from "./internal.js";
import { normalizeName } from "./names.js";
import { hashPassword, withPassword } from "./password.js";
import type { CreateUserInput, UpdateUserInput } from "./types.js";
import { userInfo } from "./views.js";

/** Creates a user; `conflict` if the name is taken. */
export async function createUser(ctx: AuthContext, actor: Actor, input: CreateUserInput): Promise<UserRecord> {
  const name = normalizeName("user", input.name);
  const policies = await checkPolicyNames(ctx, input.policies ?? []);
  await assertMayGrant(ctx, actor, policies);
  const passwordHash =
    input.password === undefined ? null : await withPassword(input.password, (secret) => hashPassword(secret));
  const at = nowIso(ctx);
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
  await ctx.store.createUser(user, auditEntry(actor, "user.create", `user/${name}`, { after: userInfo(user) }));
  invalidateCache(ctx);
  return user;
}

export async function listUsers(ctx: AuthContext): Promise<UserRecord[]> {
  return ctx.store.listUsers();
}

/** Changes a user's password (ending their login sessions), policies or disabled flag. */
export async function updateUser(
  ctx: AuthContext,
  actor: Actor,
  name: string,
  changes: UpdateUserInput,
): Promise<UserRecord> {
  const before = await userByName(ctx, name);
  await assertMayManageUser(ctx, actor, before);
  const policies = changes.policies === undefined ? before.policies : await checkPolicyNames(ctx, changes.policies);
  if (changes.policies !== undefined) await assertMayGrant(ctx, actor, policies);
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
    updatedAt: nowIso(ctx),
    revision: before.revision + 1,
  };
  if (after.disabled || changes.policies !== undefined) await assertAdminRemains(ctx, { user: [after.id, after] });
  const details = {
    before: userInfo(before),
    after: userInfo(after),
    passwordChanged: changes.password !== undefined,
  };
  // A new password ends the user's login sessions: whoever knew the old one is out.
  await ctx.store.updateUser(after, before.revision, auditEntry(actor, "user.update", `user/${after.name}`, details), {
    endSessions: changes.password !== undefined,
  });
  invalidateCache(ctx);
  return after;
}

/** Deletes a user; the store revokes their tokens and drops them from groups. */
export async function deleteUser(ctx: AuthContext, actor: Actor, name: string): Promise<void> {
  const user = await userByName(ctx, name);
  await assertMayManageUser(ctx, actor, user);
  await assertAdminRemains(ctx, { user: [user.id, undefined] });
  await ctx.store.deleteUser(
    user.id,
    auditEntry(actor, "user.delete", `user/${user.name}`, { before: userInfo(user) }),
  );
  invalidateCache(ctx);
}

/** Names of the given user ids, in order; ids of users that no longer exist are left out. */
export async function userNames(ctx: AuthContext, ids: readonly string[]): Promise<string[]> {
  const users = await Promise.all(ids.map((id) => ctx.store.getUser(id)));
  return users.flatMap((u) => (u ? [u.name] : []));
}
