import { randomUUID } from "node:crypto";
import { systemActor } from "../audit/index.js";
import type { KmsContext } from "./internal.js";
import { destroyIfDue, destructionDue, rotateIfDue } from "./keys.js";
import type { RunDueResult } from "./types.js";

/**
 * One pass of scheduled key work at `now`: due destructions, then due automatic
 * rotations of enabled keys, as the system actor. Each key is rechecked inside its
 * CAS loop, so a cancel or a manual rotation that lands first wins, and several
 * nodes running this at once do each piece of work once. A failing key is counted
 * and left for the next pass; the others still run.
 */
export async function runDue(ctx: KmsContext, now: Date): Promise<RunDueResult> {
  const due = await ctx.store.listKeysDue(now.toISOString());
  let rotated = 0;
  let destroyed = 0;
  let failed = 0;
  for (const key of due) {
    const actor = systemActor(`scheduler-${randomUUID()}`);
    try {
      if (destructionDue(key, now)) {
        if (await destroyIfDue(ctx, actor, key.name, now)) destroyed++;
      } else if (await rotateIfDue(ctx, actor, key.name, now)) {
        rotated++;
      }
    } catch {
      failed++;
    }
  }
  return { rotated, destroyed, failed };
}
