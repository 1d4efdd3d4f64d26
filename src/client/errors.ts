/**
 * How the API client fails: one `ClientError` with a stable `code` callers can switch
 * on. What a failure means to a process (an exit code, a retry, a log line) is the
 * caller's business, so nothing here knows about exit codes.
 */
import type { ErrorCode } from "../errors/index.js";

/**
 * The codes a `ClientError` carries: the server's own codes (a newer server may answer
 * with codes this build doesn't know, so the union stays open), plus the client's:
 * - `unavailable`: no answer (refused, reset, timed out);
 * - `tls_error`: the server's certificate failed verification;
 * - `http_error`: an error answer without a Custos error body (a proxy's, say);
 * - `invalid_config`: unusable address, CA, token or retry settings;
 * - `unauthenticated` with status 0: no token is configured, nothing was sent;
 * - `internal`: an answer the client can't use (not JSON, too large).
 */
export type ClientErrorCode =
  | ErrorCode
  | "unavailable"
  | "tls_error"
  | "http_error"
  | "invalid_config"
  // Keeps editor completion for the known codes while accepting any string.
  | (string & {});

export interface ClientErrorOptions {
  /** HTTP status of the answer; 0 (the default) when there was none. */
  status?: number;
  requestId?: string | undefined;
  cause?: unknown;
}

/** A failed call to the Custos API, or a client that can't be built. */
export class ClientError extends Error {
  readonly code: ClientErrorCode;
  /** HTTP status of the error answer, 0 when there was no answer. */
  readonly status: number;
  /** The server's `x-request-id`, for finding the request in its logs. */
  readonly requestId: string | undefined;

  constructor(code: ClientErrorCode, message: string, options: ClientErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "ClientError";
    this.code = code;
    this.status = options.status ?? 0;
    this.requestId = options.requestId;
  }
}

/** Narrowing helper for `catch (e)` blocks. */
export function isClientError(e: unknown, code?: ClientErrorCode): e is ClientError {
  return e instanceof ClientError && (code === undefined || e.code === code);
}

/** An error answer from the API, with the server's code, message and request id. */
export function apiError(status: number, code: string, message: string, requestId?: string): ClientError {
  return new ClientError(code, message, { status, requestId });
}

/** No usable answer at all: `unavailable`, `tls_error`, `internal`. */
export function transportError(code: ClientErrorCode, message: string, cause?: unknown): ClientError {
  return new ClientError(code, message, cause === undefined ? {} : { cause });
}

/** Settings the client can't work with (address, CA file, token file, retry policy). */
export function configError(message: string, cause?: unknown): ClientError {
  return new ClientError("invalid_config", message, cause === undefined ? {} : { cause });
}
