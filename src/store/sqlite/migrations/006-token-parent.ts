import type { Migration } from "./types.js";

/**
 * The API token that made each token, so that revoking a token revokes what it
 * made, as Vault revokes a token's children. No foreign key: a revoked parent
 * stays as history. Tokens made before this step have no parent.
 */
export const tokenParentSchema: Migration = {
  version: 6,
  name: "token-parent",
  sql: `
ALTER TABLE tokens ADD COLUMN parent_id TEXT;
CREATE INDEX tokens_parent ON tokens (parent_id);
`,
};
