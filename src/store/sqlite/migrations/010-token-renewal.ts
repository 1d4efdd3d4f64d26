import type { Migration } from "./types.js";

/**
 * How a token may be renewed: the lifetime a renewal gives by default, and the
 * latest expiry renewals may reach. Both null for a token that can't be renewed,
 * as every token made before this step.
 */
export const tokenRenewalSchema: Migration = {
  version: 10,
  name: "token-renewal",
  sql: `
ALTER TABLE tokens ADD COLUMN renew_ttl_seconds INTEGER;
ALTER TABLE tokens ADD COLUMN max_expires_at TEXT;
`,
};
