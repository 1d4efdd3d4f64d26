import { CustosError } from "../errors/index.js";

const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/**
 * Case-folds and checks a user, group or policy name. Names appear in resource
 * strings (`user/<name>`) and audit records, so they are kept to a plain,
 * unambiguous alphabet.
 */
export function normalizeName(kind: string, name: unknown): string {
  if (typeof name !== "string") throw new CustosError("invalid_request", `${kind} name is required`);
  const folded = name.toLowerCase();
  if (!NAME_RE.test(folded)) {
    throw new CustosError("invalid_request", `${kind} name must match ^[a-z0-9][a-z0-9._-]{0,63}$`);
  }
  return folded;
}

/** Like `normalizeName`, but answers undefined instead of throwing (for lookups that must not leak why they failed). */
export function tryNormalizeName(name: string): string | undefined {
  const folded = name.toLowerCase();
  return NAME_RE.test(folded) ? folded : undefined;
}
