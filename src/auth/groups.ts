import { randomUUID } from "node:crypto";
import { type Actor, auditEntry } from "../audit/entry.js";
import { CustosError } from "../errors/index.js";
import type { GroupRecord } from "../store/index.js";
import {
  assertAdminRemains,
  assertMayGrant,
  assertMayManageGroup,
  checkPolicyNames,
  groupByName,
  userIds,
} from "./guards.js";
import { type AuthContext, invalidateCache, nowIso } from "./internal.js";
import { normalizeName } from "./names.js";
import { ADMIN_POLICY } from "./policy.js";
import type { CreateGroupInput, UpdateGroupInput } from "./types.js";
import { userNames } from "./users.js";
import { groupInfo } from "./views.js";

/** Creates a group of existing users. */
export async function createGroup(ctx: AuthContext, actor: Actor, input: CreateGroupInput): Promise<GroupRecord> {
  const name = normalizeName("group", input.name);
  const policies = await checkPolicyNames(ctx, input.policies ?? []);
  await assertMayGrant(ctx, actor, policies);
  const members = await userIds(ctx, input.members ?? []);
  const at = nowIso(ctx);
  const group: GroupRecord = {
    id: randomUUID(),
    name,
    members,
    policies,
    createdAt: at,
    updatedAt: at,
    revision: 1,
  };
  const details = { after: await groupInfo(group, (ids) => userNames(ctx, ids)) };
  await ctx.store.createGroup(group, auditEntry(actor, "group.create", `group/${name}`, details));
  invalidateCache(ctx);
  return group;
}

export async function listGroups(ctx: AuthContext): Promise<GroupRecord[]> {
  return ctx.store.listGroups();
}

/** Replaces or edits a group's members, and/or replaces its policies. */
export async function updateGroup(
  ctx: AuthContext,
  actor: Actor,
  name: string,
  changes: UpdateGroupInput,
): Promise<GroupRecord> {
  const before = await groupByName(ctx, name);
  await assertMayManageGroup(ctx, actor, before);
  if (changes.members !== undefined && (changes.addMembers !== undefined || changes.removeMembers !== undefined)) {
    throw new CustosError("invalid_request", "give members, or addMembers/removeMembers, not both");
  }
  const policies = changes.policies === undefined ? before.policies : await checkPolicyNames(ctx, changes.policies);
  if (changes.policies !== undefined) await assertMayGrant(ctx, actor, policies);

  let members: string[];
  if (changes.members !== undefined) {
    members = await userIds(ctx, changes.members);
  } else {
    const set = new Set(before.members);
    for (const id of await userIds(ctx, changes.addMembers ?? [])) set.add(id);
    for (const id of await userIds(ctx, changes.removeMembers ?? [])) set.delete(id);
    members = [...set];
  }
  const after: GroupRecord = {
    ...before,
    members,
    policies,
    updatedAt: nowIso(ctx),
    revision: before.revision + 1,
  };
  if (before.policies.includes(ADMIN_POLICY)) await assertAdminRemains(ctx, { group: [after.id, after] });
  const names = (ids: readonly string[]) => userNames(ctx, ids);
  const details = { before: await groupInfo(before, names), after: await groupInfo(after, names) };
  await ctx.store.updateGroup(
    after,
    before.revision,
    auditEntry(actor, "group.update", `group/${after.name}`, details),
  );
  invalidateCache(ctx);
  return after;
}

export async function deleteGroup(ctx: AuthContext, actor: Actor, name: string): Promise<void> {
  const group = await groupByName(ctx, name);
  await assertMayManageGroup(ctx, actor, group);
  if (group.policies.includes(ADMIN_POLICY)) await assertAdminRemains(ctx, { group: [group.id, undefined] });
  const details = { before: await groupInfo(group, (ids) => userNames(ctx, ids)) };
  await ctx.store.deleteGroup(group.id, auditEntry(actor, "group.delete", `group/${group.name}`, details));
  invalidateCache(ctx);
}
