import { CustosError } from "../errors/index.js";
import type { PolicyRecord, PolicyRule } from "../store/index.js";
import { ACTIONS, isAction, isPrivilegedAction } from "./actions.js";
import { globMatch } from "./glob.js";
import { normalizeName } from "./names.js";

/**
 * The rule for privileged actions, kept deliberately simple:
 *
 *   A privileged action is allowed if and only if the principal is admin, that is,
 *   holds the built-in `admin` policy — directly, through a group, or through an
 *   active sudo grant.
 *
 * No other policy can grant a privileged action: `validatePolicy` refuses to name
 * one, and the `*` and `prefix*` action wildcards never cover them. So there is
 * exactly one way to get them and one place (`PolicySet.allows`) that decides.
 * The admin policy itself (`*` on resource `*`) allows every action on everything.
 */

/** Name of the built-in policy that makes its holder admin. */
export const ADMIN_POLICY = "admin";

const MAX_RULES = 100;
const MAX_ACTIONS_PER_RULE = 64;
const MAX_PATTERN_LENGTH = 256;
const MAX_DESCRIPTION_LENGTH = 1024;
const PATTERN_RE = /^[\x21-\x7e]+$/;

/** The built-in admin policy record, stamped `at`. */
export function builtinAdminPolicy(at: string): PolicyRecord {
  return {
    name: ADMIN_POLICY,
    description: "built-in: every action on every resource, including privileged actions",
    rules: [{ resource: "*", actions: ["*"] }],
    createdAt: at,
    updatedAt: at,
    revision: 1,
  };
}

/** The validated parts of a policy a caller supplies. */
export interface PolicyInput {
  readonly name: string;
  readonly description?: string;
  readonly rules: readonly PolicyRule[];
}

const MAX_ACTION_LENGTH = 64;

function invalid(message: string): CustosError {
  return new CustosError("invalid_request", message);
}

/** Checks one entry of a rule's action list; returns it unchanged. */
function validateActionEntry(entry: unknown): string {
  if (typeof entry !== "string" || entry.length === 0) throw invalid("policy actions must be non-empty strings");
  // No action is this long: refused before a message could echo it.
  if (entry.length > MAX_ACTION_LENGTH) throw invalid(`policy actions are at most ${MAX_ACTION_LENGTH} characters`);
  if (entry === "*") return entry;
  const star = entry.indexOf("*");
  if (star !== -1) {
    if (star !== entry.length - 1 || star === 0) {
      throw invalid(`invalid action wildcard "${entry}": only "*" or a prefix followed by "*" (like "key:*")`);
    }
    const prefix = entry.slice(0, -1);
    if (!ACTIONS.some((a) => a.startsWith(prefix) && !isPrivilegedAction(a))) {
      throw invalid(`action wildcard "${entry}" matches no action`);
    }
    return entry;
  }
  if (!isAction(entry)) throw invalid(`unknown action "${entry}"`);
  if (isPrivilegedAction(entry)) {
    throw invalid(`"${entry}" is privileged: only the admin policy grants it`);
  }
  return entry;
}

/**
 * Validates a policy a caller wants to store (name, description, rules) and
 * returns a normalised copy. `admin` is refused: it is built in.
 */
export function validatePolicy(input: PolicyInput): PolicyInput & { readonly description: string } {
  const name = normalizeName("policy", input.name);
  if (name === ADMIN_POLICY) throw new CustosError("forbidden", "the admin policy is built in and cannot be changed");
  const description = input.description ?? "";
  if (typeof description !== "string" || description.length > MAX_DESCRIPTION_LENGTH) {
    throw invalid(`policy description must be a string of at most ${MAX_DESCRIPTION_LENGTH} characters`);
  }
  if (!Array.isArray(input.rules) || input.rules.length === 0) throw invalid("a policy needs at least one rule");
  if (input.rules.length > MAX_RULES) throw invalid(`a policy may have at most ${MAX_RULES} rules`);
  const rules: PolicyRule[] = input.rules.map((rule: unknown) => {
    if (typeof rule !== "object" || rule === null) throw invalid("each policy rule must be an object");
    const { resource, actions } = rule as { resource?: unknown; actions?: unknown };
    if (typeof resource !== "string" || resource.length > MAX_PATTERN_LENGTH || !PATTERN_RE.test(resource)) {
      throw invalid(`resource patterns must be 1-${MAX_PATTERN_LENGTH} printable characters without spaces`);
    }
    if (!Array.isArray(actions) || actions.length === 0 || actions.length > MAX_ACTIONS_PER_RULE) {
      throw invalid(`each rule needs 1-${MAX_ACTIONS_PER_RULE} actions`);
    }
    return { resource, actions: [...new Set(actions.map(validateActionEntry))] };
  });
  return { name, description, rules };
}

/** True when one action-list entry covers `action` (privileged actions never match here). */
function actionEntryCovers(entry: string, action: string): boolean {
  if (entry === action) return true;
  if (!entry.endsWith("*")) return false;
  return action.startsWith(entry.slice(0, -1));
}

/**
 * A snapshot of policy records, ready to answer "may these policies do this?".
 * The built-in admin policy is always present, whatever the store holds.
 */
export class PolicySet {
  readonly #byName: ReadonlyMap<string, PolicyRecord>;

  constructor(records: Iterable<PolicyRecord>) {
    const byName = new Map<string, PolicyRecord>();
    for (const record of records) if (record.name !== ADMIN_POLICY) byName.set(record.name, record);
    this.#byName = byName;
  }

  /** True when a policy of that name exists (admin always does). */
  has(name: string): boolean {
    return name === ADMIN_POLICY || this.#byName.has(name);
  }

  /**
   * Deny by default: true only if a rule of one of `policyNames` covers `action`
   * on `resource`, with privileged actions reserved to admin (see the rule above).
   * Names of policies that no longer exist grant nothing.
   */
  allows(policyNames: readonly string[], action: string, resource: string): boolean {
    if (policyNames.includes(ADMIN_POLICY)) return true;
    if (!isAction(action) || isPrivilegedAction(action)) return false;
    for (const name of policyNames) {
      const policy = this.#byName.get(name);
      if (!policy) continue;
      for (const rule of policy.rules) {
        if (!rule.actions.some((entry) => actionEntryCovers(entry, action))) continue;
        if (globMatch(rule.resource, resource)) return true;
      }
    }
    return false;
  }
}
