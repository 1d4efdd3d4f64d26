/**
 * How the broker client fails: one `BrokerError` with a stable `code` an app can
 * switch on. The codes are the API's own (`credential_revoked`, `forbidden`,
 * `unauthenticated`, …; a newer server may send codes this build doesn't know, so
 * the union stays open) plus the client's:
 * - `unavailable`: no answer (refused, reset, timed out);
 * - `tls_error`: the server's certificate failed verification;
 * - `http_error`: an error answer without a Custos error body (a proxy's, say);
 * - `invalid_answer`: a success answer that isn't what the API promises;
 * - `invalid_argument`: the caller passed options that can't work;
 * - `closed`: the session was closed.
 */

/** The codes a `BrokerError` carries. */
export type BrokerErrorCode =
  | "credential_revoked"
  | "unauthenticated"
  | "forbidden"
  | "not_found"
  | "invalid_request"
  | "csr_invalid"
  | "key_destroyed"
  | "unavailable"
  | "tls_error"
  | "http_error"
  | "invalid_answer"
  | "invalid_argument"
  | "closed"
  | (string & {});

/** A failure of a broker call. `status` is the HTTP status, 0 when there was no answer. */
export class BrokerError extends Error {
  readonly code: BrokerErrorCode;
  readonly status: number;
  /** The server's request id, for finding the call in Custos's log and audit trail. */
  readonly requestId: string | undefined;

  constructor(
    code: BrokerErrorCode,
    message: string,
    options: { status?: number; requestId?: string | undefined; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "BrokerError";
    this.code = code;
    this.status = options.status ?? 0;
    this.requestId = options.requestId;
  }

  /** True for failures worth trying again later: no answer, or a 503. */
  get transient(): boolean {
    return this.code === "unavailable" || this.status === 503;
  }
}

/** True when `e` is a BrokerError with `code`. */
export function isBrokerError(e: unknown, code?: BrokerErrorCode): e is BrokerError {
  return e instanceof BrokerError && (code === undefined || e.code === code);
}
