/**
 * One error model for all of Custos: a `CustosError` carries a stable `code` from
 * one union, which callers (and API clients) can switch on. The HTTP status is a
 * property of the code, not of the throw site, so the same failure always maps to
 * the same answer.
 */

/** Every error code Custos can answer with. Stable: clients depend on these strings. */
export type ErrorCode =
  | "invalid_request"
  | "unauthenticated"
  | "forbidden"
  | "not_found"
  | "conflict"
  | "payload_too_large"
  | "rate_limited"
  | "key_disabled"
  | "key_destroyed"
  | "key_purpose_mismatch"
  | "version_too_old"
  | "decryption_failed"
  | "signature_invalid"
  | "csr_invalid"
  | "name_not_allowed"
  | "ttl_too_long"
  | "key_type_not_allowed"
  | "principal_not_allowed"
  | "extension_not_allowed"
  | "option_not_allowed"
  | "credential_revoked"
  | "key_revoked"
  | "not_initialized"
  | "already_initialized"
  | "root_key_mismatch"
  | "hsm_unavailable"
  | "hsm_error"
  | "audit_unavailable"
  | "store_unavailable"
  | "shutting_down"
  | "internal";

/** HTTP status of each code. Client errors are 4xx; everything the caller can't fix is 5xx. */
export const httpStatusOf: Readonly<Record<ErrorCode, number>> = {
  invalid_request: 400,
  unauthenticated: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  payload_too_large: 413,
  rate_limited: 429,
  key_disabled: 409,
  key_destroyed: 410,
  key_purpose_mismatch: 400,
  version_too_old: 400,
  decryption_failed: 400,
  signature_invalid: 400,
  csr_invalid: 400,
  name_not_allowed: 400,
  ttl_too_long: 400,
  key_type_not_allowed: 400,
  principal_not_allowed: 403,
  extension_not_allowed: 400,
  option_not_allowed: 400,
  credential_revoked: 401,
  key_revoked: 400,
  not_initialized: 503,
  already_initialized: 409,
  root_key_mismatch: 500,
  hsm_unavailable: 503,
  hsm_error: 500,
  audit_unavailable: 503,
  store_unavailable: 503,
  shutting_down: 503,
  internal: 500,
};

export interface CustosErrorOptions {
  cause?: unknown;
  /** PKCS#11 return value name (e.g. `CKR_SESSION_HANDLE_INVALID`) for HSM errors. */
  ckr?: string;
  /** For a failed write: true when it certainly did not commit, so what was made for it may be undone. */
  notCommitted?: boolean;
}

/**
 * The one error class. `message` must never contain secret material: it may be
 * shown to API clients for 4xx codes (5xx messages are replaced at the API edge).
 */
export class CustosError extends Error {
  readonly code: ErrorCode;
  readonly ckr: string | undefined;
  readonly notCommitted: boolean;

  constructor(code: ErrorCode, message: string, options: CustosErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "CustosError";
    this.code = code;
    this.ckr = options.ckr;
    this.notCommitted = options.notCommitted === true;
  }

  /** HTTP status family of this error's code. */
  get status(): number {
    return httpStatusOf[this.code];
  }

  /** True when the caller caused it (4xx) rather than Custos or its dependencies (5xx). */
  get isClientError(): boolean {
    return this.status < 500;
  }
}

/**
 * The single failure every decryption path throws, whatever went wrong (wrong key,
 * wrong context, flipped bit, truncation, destroyed version). A uniform error gives
 * an attacker no oracle to tell the cases apart.
 */
export function decryptionFailed(cause?: unknown): CustosError {
  return new CustosError("decryption_failed", "decryption failed", { cause });
}

/** Narrowing helper for `catch (e)` blocks. */
export function isCustosError(e: unknown, code?: ErrorCode): e is CustosError {
  return e instanceof CustosError && (code === undefined || e.code === code);
}

/** An error's message, or what was thrown as text. */
export function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** What to say of a failed system call: its errno code (ENOENT, EACCES), else the error's message. */
export function errnoOrMessage(e: unknown): string {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : messageOf(e);
}
