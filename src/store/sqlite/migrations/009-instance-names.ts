import type { Migration } from "./types.js";

/**
 * Instances by the names they were registered under, in id order: what listing an
 * org's, a space's or an app's instances page through.
 */
export const instanceNamesSchema: Migration = {
  version: 9,
  name: "instance-names",
  sql: `
CREATE INDEX broker_instances_names ON broker_instances (org, space, app, id);
`,
};
