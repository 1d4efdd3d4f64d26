import { CustosError } from "../errors/index.js";

/** A DNS label: it appears in SPIFFE ids and DNS SANs. */
const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/** The key name `app.<org>.<space>.<app>` must fit the KMS's 128 characters. */
const MAX_KEY_NAME = 128;

/**
 * Org names that would make paths ambiguous: `shared/…` is the shared-secret
 * namespace, so an org of that name would collide with it.
 */
const RESERVED_ORGS: ReadonlySet<string> = new Set(["shared"]);

/** Checks an org, space, app or instance id; `what` names it in the error. */
export function checkLabel(value: unknown, what: string): string {
  if (typeof value !== "string" || !LABEL.test(value)) {
    throw new CustosError(
      "invalid_request",
      `${what} must be a DNS label: 1..63 of [a-z0-9-], not starting or ending with "-"`,
    );
  }
  return value;
}

export function checkOrgName(value: unknown): string {
  const org = checkLabel(value, "org name");
  if (RESERVED_ORGS.has(org)) throw new CustosError("invalid_request", `org name "${org}" is reserved`);
  return org;
}

/** The KMS key of an app. */
export function appKeyName(org: string, space: string, app: string): string {
  return `app.${org}.${space}.${app}`;
}

/** Checks that the app's key name fits the KMS's limit (the three names together at most 122 characters). */
export function checkKeyNameFits(org: string, space: string, app: string): void {
  if (appKeyName(org, space, app).length > MAX_KEY_NAME) {
    throw new CustosError(
      "invalid_request",
      `org, space and app names together must be at most ${MAX_KEY_NAME - 6} characters (the app's key is named app.<org>.<space>.<app>)`,
    );
  }
}
