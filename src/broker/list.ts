/** An instance listing's query: checked, and the policy resource it is authorised on. */
import { CustosError } from "../errors/index.js";
import type { InstanceListQuery } from "../store/index.js";
import { checkLabel } from "./names.js";

const STATES = ["registered", "running", "stopped", "live"] as const;
const DEFAULT_LIMIT = 100;
const MAX_LIMIT = 1000;

/** A listing as callers ask for it: each part unchecked. */
export interface InstanceListInput {
  readonly org?: unknown;
  readonly space?: unknown;
  readonly app?: unknown;
  readonly state?: unknown;
  readonly after?: unknown;
  readonly limit?: unknown;
}

/** The names narrowing a listing: an org, a space in it, an app in that. */
export type InstanceScope = Pick<InstanceListQuery, "org" | "space" | "app">;

/** `invalid_request` for any part that is malformed, or a space without its org, an app without its space. */
export function checkListQuery(input: InstanceListInput): InstanceListQuery {
  if (input.space !== undefined && input.org === undefined) throw invalid("space needs org");
  if (input.app !== undefined && input.space === undefined) throw invalid("app needs space");
  const { state } = input;
  if (state !== undefined && !isListState(state)) throw invalid(`state must be one of ${STATES.join(", ")}`);
  const limit = input.limit ?? DEFAULT_LIMIT;
  if (typeof limit !== "number" || !Number.isSafeInteger(limit) || limit < 1 || limit > MAX_LIMIT) {
    throw invalid(`limit must be an integer from 1 to ${MAX_LIMIT}`);
  }
  return {
    ...(input.org === undefined ? {} : { org: checkLabel("org", input.org) }),
    ...(input.space === undefined ? {} : { space: checkLabel("space", input.space) }),
    ...(input.app === undefined ? {} : { app: checkLabel("app", input.app) }),
    ...(state === undefined ? {} : { state }),
    ...(input.after === undefined ? {} : { after: checkLabel("after", input.after) }),
    limit,
  };
}

/**
 * What listing `scope` is authorised on: every instance it can show, as one pattern
 * (`instance/<org>/<space>/<app>/*`, shorter for a wider scope), so that a policy
 * allows it only if it allows each of them.
 */
export function instanceScopeResource(scope: InstanceScope): string {
  const names = [scope.org, scope.space, scope.app].filter((n) => n !== undefined);
  return ["instance", ...names, "*"].join("/");
}

function isListState(value: unknown): value is (typeof STATES)[number] {
  return (STATES as readonly unknown[]).includes(value);
}

function invalid(message: string): CustosError {
  return new CustosError("invalid_request", message);
}
