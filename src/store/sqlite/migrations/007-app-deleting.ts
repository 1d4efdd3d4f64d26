import type { Migration } from "./types.js";

/**
 * When an app's deletion began. Its key is destroyed between two transactions, so
 * the deletion first marks the app, in the transaction that finds it has no live
 * instance; from then on no instance of it can be registered (the registration
 * checks the mark in its own transaction), and the final transaction finds none.
 * No foreign key from `broker_instances` to the app does this: a stopped instance
 * stays as history after its app is deleted.
 */
export const appDeletingSchema: Migration = {
  version: 7,
  name: "app-deleting",
  sql: `
ALTER TABLE platform_apps ADD COLUMN deleting_since TEXT;
`,
};
