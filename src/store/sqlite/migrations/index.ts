import { initialSchema } from "./001-initial.js";
import { pkiSchema } from "./002-pki.js";
import type { Migration } from "./types.js";

export type { Migration } from "./types.js";

/** Every migration, in order. Append only: a released migration is never edited. */
export const migrations: readonly Migration[] = [initialSchema, pkiSchema];
