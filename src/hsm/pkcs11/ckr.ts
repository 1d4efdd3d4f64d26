import { pk } from "./constants.js";

/** A PKCS#11 return value, by name and number. */
export interface CkrInfo {
  readonly name: string;
  readonly code: number;
}

/**
 * How a failure is handled: `session` — the session, login or a cached handle is gone
 * (reopen, re-login, retry); `device` — the token or library is gone (rebuild
 * everything with back-off); `login` — the PIN was refused (back off hard: HSMs lock
 * PINs after a few failures); `other` — a real answer, reported as `hsm_error`.
 */
export type CkrClass = "session" | "device" | "login" | "other";

const names = new Map<number, string>();
for (const [key, value] of Object.entries(pk)) {
  if (key.startsWith("CKR_") && typeof value === "number" && !names.has(value)) names.set(value, key);
}

/** The name of a PKCS#11 return value, as pkcs11js exports it. */
export function ckrName(code: number): string {
  return names.get(code) ?? `CKR_VENDOR_DEFINED_0x${code.toString(16)}`;
}

/** Raised by our own checks to feed a condition into the same recovery path as a real CKR. */
export class CkrError extends Error {
  readonly ckr: string;
  constructor(ckr: string, message: string) {
    super(message);
    this.name = "CkrError";
    this.ckr = ckr;
  }
}

/** Extracts the CKR from a pkcs11js `Pkcs11Error`, a plain `Error("CKR_X:16")`, or a `CkrError`. */
export function ckrOf(e: unknown): CkrInfo | undefined {
  if (e instanceof CkrError) {
    const code = (pk as unknown as Record<string, unknown>)[e.ckr];
    return { name: e.ckr, code: typeof code === "number" ? code : -1 };
  }
  if (!(e instanceof Error)) return undefined;
  const match = /(CKR_[A-Z0-9_]+)(?::(\d+))?/.exec(`${e.message}\n${e.stack ?? ""}`);
  const code = (e as { code?: unknown }).code;
  if (typeof code === "number" && code > 0 && names.has(code)) return { name: names.get(code)!, code };
  if (match?.[1]) return { name: match[1], code: match[2] === undefined ? -1 : Number(match[2]) };
  return undefined;
}

const SESSION = new Set([
  "CKR_SESSION_HANDLE_INVALID",
  "CKR_SESSION_CLOSED",
  "CKR_SESSION_COUNT",
  "CKR_USER_NOT_LOGGED_IN",
  "CKR_OPERATION_ACTIVE",
  "CKR_OBJECT_HANDLE_INVALID",
  "CKR_KEY_HANDLE_INVALID",
  "CKR_WRAPPING_KEY_HANDLE_INVALID",
  "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
]);
const DEVICE = new Set([
  "CKR_DEVICE_ERROR",
  "CKR_DEVICE_MEMORY",
  "CKR_DEVICE_REMOVED",
  "CKR_TOKEN_NOT_PRESENT",
  "CKR_TOKEN_NOT_RECOGNIZED",
  "CKR_SLOT_ID_INVALID",
  "CKR_CRYPTOKI_NOT_INITIALIZED",
  "CKR_GENERAL_ERROR",
  "CKR_FUNCTION_FAILED",
]);
const LOGIN = new Set([
  "CKR_PIN_INCORRECT",
  "CKR_PIN_LOCKED",
  "CKR_PIN_EXPIRED",
  "CKR_PIN_LEN_RANGE",
  "CKR_USER_PIN_NOT_INITIALIZED",
]);

/** Recovery class of a CKR name. */
export function classify(name: string): CkrClass {
  if (SESSION.has(name)) return "session";
  if (DEVICE.has(name)) return "device";
  if (LOGIN.has(name)) return "login";
  return "other";
}
