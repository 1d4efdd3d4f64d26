import type { Migration } from "./types.js";

/**
 * The user whose login session made a standalone token. A session is not a token's
 * parent (the token outlives logout and password changes), so without this nothing
 * records who made such a token: its maker lists and revokes it without a policy,
 * disabling the maker suspends it and deleting the maker revokes it. No foreign
 * key: a revoked token stays as history after its maker is deleted. Tokens made
 * before this step have no maker.
 */
export const tokenMakerSchema: Migration = {
  version: 8,
  name: "token-maker",
  sql: `
ALTER TABLE tokens ADD COLUMN maker_user_id TEXT;
CREATE INDEX tokens_maker_user ON tokens (maker_user_id) WHERE maker_user_id IS NOT NULL;
`,
};
