import { CustosError } from "../errors/index.js";

/**
 * Checked before case folding, in either case: `toLowerCase()` maps U+212A KELVIN
 * SIGN onto ASCII "k", so a check after folding would let a look-alike name land
 * on another account.
 */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/**
 * Case-folds and checks a user, group or policy name. Names appear in resource
 * strings (`user/<name>`) and audit records, so they are kept to a plain,
 * unambiguous alphabet.
 */
export function normalizeName(kind: string, name: unknown): string {
  if (typeof name !== "string") throw new CustosError("invalid_request", `${kind} name is required`);
  const folded = tryNormalizeName(name);
  if (folded === undefined) {
    throw new CustosError("invalid_request", `${kind} name must match ^[a-z0-9][a-z0-9._-]{0,63}$`);
  }
  return folded;
}

/** Like `normalizeName`, but answers undefined instead of throwing (for lookups that must not leak why they failed). */
export function tryNormalizeName(name: string): string | undefined {
  return NAME_RE.test(name) ? name.toLowerCase() : undefined;
}

/**
 * A name as resource strings (`user/<name>`) and audit records hold it: folded, so
 * that a policy on `user/alice` covers `ALICE`; a name that is none is kept as
 * given, and its use refused later.
 */
export function foldedName(name: string): string {
  return tryNormalizeName(name) ?? name;
}
