import type { PKCS11 } from "pkcs11js";
import { ckrOf } from "./ckr.js";
import { pk } from "./constants.js";

/**
 * One pkcs11js instance per module path for the whole process. PKCS#11 state
 * (initialisation, login) is per application, so two instances of the same library
 * would share it anyway; the registry makes that explicit and counts users so that
 * C_Finalize only ever runs when nobody else can be using the library.
 */
export interface LoadedModule {
  readonly path: string;
  readonly p: PKCS11;
  /** Keystores holding this module. */
  readonly users: number;
}

interface Entry {
  path: string;
  p: PKCS11;
  users: number;
}

const registry = new Map<string, Entry>();

function initialize(p: PKCS11): void {
  try {
    p.C_Initialize({ flags: pk.CKF_OS_LOCKING_OK });
  } catch (e) {
    if (ckrOf(e)?.name !== "CKR_CRYPTOKI_ALREADY_INITIALIZED") throw e;
  }
}

/** Loads (once) and initialises the module at `path`, counting one more user. */
export function acquireModule(path: string): LoadedModule {
  let entry = registry.get(path);
  if (!entry) {
    const p = new pk.PKCS11();
    p.load(path);
    entry = { path, p, users: 0 };
    registry.set(path, entry);
  }
  initialize(entry.p);
  entry.users++;
  return entry;
}

/** Re-runs C_Initialize after someone finalized the library under us. */
export function reinitializeModule(m: LoadedModule): void {
  initialize(m.p);
}

/**
 * Finalizes and re-initialises the library so that it rescans its tokens (SoftHSM,
 * for one, only notices a re-initialised or re-inserted token this way). Refused
 * (returns false) unless the caller is the only user: finalizing would pull every
 * other user's sessions out from under it.
 */
export function resetModule(m: LoadedModule): boolean {
  const entry = registry.get(m.path);
  if (entry !== m || entry.users !== 1) return false;
  try {
    entry.p.C_Finalize();
  } catch {
    // Already finalized or broken: initialising again is what matters.
  }
  initialize(entry.p);
  return true;
}

/** Drops one user; the last one finalizes and unloads the library. */
export function releaseModule(m: LoadedModule): void {
  const entry = registry.get(m.path);
  if (entry !== m || entry.users === 0) return;
  entry.users--;
  if (entry.users > 0) return;
  registry.delete(m.path);
  try {
    entry.p.C_Finalize();
  } catch {
    // Nothing useful to do: the process is letting go of the library either way.
  }
  try {
    entry.p.close();
  } catch {
    // As above.
  }
}
