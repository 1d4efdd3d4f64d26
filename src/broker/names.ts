import { CustosError } from "../errors/index.js";

/**
 * Org, space, app and instance ids are DNS labels: they end up in SPIFFE ids and
 * DNS SANs, where anything else would be refused or, worse, mean something else.
 */
const DNS_LABEL_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/** Whether `value` is a DNS label: 1–63 of `[a-z0-9-]`, not starting or ending with `-`. */
export function isDnsLabel(value: unknown): value is string {
  return typeof value === "string" && DNS_LABEL_RE.test(value);
}

/** `value` when it is a DNS label; `invalid_request` naming `what` otherwise. */
export function checkLabel(what: string, value: unknown): string {
  if (!isDnsLabel(value)) {
    throw new CustosError(
      "invalid_request",
      `${what} must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'`,
    );
  }
  return value;
}

/** What an instance is, as its names say it. */
export interface InstanceNames {
  readonly org: string;
  readonly space: string;
  readonly app: string;
  readonly instance: string;
}

/** `spiffe://<trust-domain>/org/<org>/space/<space>/app/<app>/instance/<id>`. */
export function spiffeIdOf(trustDomain: string, n: InstanceNames): string {
  return `spiffe://${trustDomain}/org/${n.org}/space/${n.space}/app/${n.app}/instance/${n.instance}`;
}

/** The policy resource of an instance: `instance/<org>/<space>/<app>/<id>`. */
export function instanceResource(n: InstanceNames): string {
  return `instance/${n.org}/${n.space}/${n.app}/${n.instance}`;
}
