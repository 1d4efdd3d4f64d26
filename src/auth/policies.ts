import { type Actor, auditEntry } from "../audit/entry.js";
import { CustosError } from "../errors/index.js";
import type { PolicyRecord } from "../store/index.js";
import { type AuthContext, currentPolicies, invalidateCache, nowIso } from "./internal.js";
import { tryNormalizeName } from "./names.js";
import { ADMIN_POLICY, builtinAdminPolicy, validatePolicy } from "./policy.js";
import type { PutPolicyInput } from "./types.js";

/**
 * Policy records: creating, reading and deleting them (validation and evaluation
 * of rules is policy.ts). Each change reloads this node's policy snapshot at once.
 */

/** Creates or replaces a policy. `admin` is built in: `forbidden`. */
export async function putPolicy(ctx: AuthContext, actor: Actor, input: PutPolicyInput): Promise<PolicyRecord> {
  const valid = validatePolicy(input);
  const before = await ctx.store.getPolicy(valid.name);
  const at = nowIso(ctx);
  const after: PolicyRecord = {
    name: valid.name,
    description: valid.description,
    rules: valid.rules,
    createdAt: before?.createdAt ?? at,
    updatedAt: at,
    revision: (before?.revision ?? 0) + 1,
  };
  const details = { before: before ?? null, after };
  await ctx.store.putPolicy(
    after,
    before?.revision ?? null,
    auditEntry(actor, "policy.put", `policy/${after.name}`, details),
  );
  invalidateCache(ctx);
  await currentPolicies(ctx, ctx.clock().getTime());
  return after;
}

/** The policy named `name` (the built-in admin policy included); `not_found` otherwise. */
export async function getPolicy(ctx: AuthContext, name: string): Promise<PolicyRecord> {
  const folded = typeof name === "string" ? tryNormalizeName(name) : undefined;
  const record = folded === undefined ? undefined : await ctx.store.getPolicy(folded);
  if (record) return record;
  if (folded === ADMIN_POLICY) return builtinAdminPolicy(new Date(0).toISOString());
  throw new CustosError("not_found", "no such policy");
}

/** Every policy, the built-in admin policy included, by name. */
export async function listPolicies(ctx: AuthContext): Promise<PolicyRecord[]> {
  const records = await ctx.store.listPolicies();
  if (!records.some((p) => p.name === ADMIN_POLICY)) records.push(builtinAdminPolicy(new Date(0).toISOString()));
  return records.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Deletes a policy no user, group, live token or active sudo grant refers to (`conflict` otherwise). */
export async function deletePolicy(ctx: AuthContext, actor: Actor, name: string): Promise<void> {
  const folded = tryNormalizeName(typeof name === "string" ? name : "");
  if (folded === ADMIN_POLICY) throw new CustosError("forbidden", "the admin policy is built in and cannot be deleted");
  const policy = folded === undefined ? undefined : await ctx.store.getPolicy(folded);
  if (!policy) throw new CustosError("not_found", "no such policy");
  const user = (await ctx.store.listUsers()).find((u) => u.policies.includes(policy.name));
  if (user) throw new CustosError("conflict", `policy is held by user ${user.name}`);
  const group = (await ctx.store.listGroups()).find((g) => g.policies.includes(policy.name));
  if (group) throw new CustosError("conflict", `policy is held by group ${group.name}`);
  const now = nowIso(ctx);
  const token = (await ctx.store.listTokens()).find(
    (t) => t.revokedAt === null && (t.expiresAt === null || t.expiresAt > now) && t.policies?.includes(policy.name),
  );
  if (token) throw new CustosError("conflict", `policy is held by token ${token.id}`);
  const grant = (await ctx.store.listSudoGrants(now)).find((g) => g.policies.includes(policy.name));
  if (grant) throw new CustosError("conflict", `policy is held by sudo grant ${grant.id}`);
  await ctx.store.deletePolicy(
    policy.name,
    auditEntry(actor, "policy.delete", `policy/${policy.name}`, { before: policy }),
  );
  invalidateCache(ctx);
  await currentPolicies(ctx, ctx.clock().getTime());
}
