/**
 * When the client tries a request again. Two cases only, both where the server is
 * known not to have acted on the request:
 * - a 503 whose code says a dependency (HSM, store, audit journal) was down before the
 *   operation ran: retried with exponential back-off and full jitter;
 * - a reset on a reused keep-alive socket before any answer byte: the server closed
 *   the idle socket as the request went out. Retried once, at once, on a fresh socket.
 */
import { configError } from "./errors.js";

/** How often and how patiently 503 `*_unavailable` answers are retried. */
export interface RetryOptions {
  /** Retries after the first attempt; 0 disables retrying. Default 4. */
  retries?: number | undefined;
  /** Ceiling of the first delay; it doubles with each retry. Default 100 ms. */
  baseDelayMs?: number | undefined;
  /** Ceiling no delay exceeds. Default 2000 ms. */
  maxDelayMs?: number | undefined;
}

/** A validated retry policy. */
export interface RetryPolicy {
  readonly retries: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { retries: 4, baseDelayMs: 100, maxDelayMs: 2000 };

/** The 503 codes the API answers when it failed before doing anything. */
export const RETRYABLE_CODES: ReadonlySet<string> = new Set([
  "hsm_unavailable",
  "store_unavailable",
  "audit_unavailable",
  "shutting_down",
]);

/** Socket errors that, on a reused socket with no answer yet, mean the server had closed it. */
const STALE_SOCKET_ERRORS: ReadonlySet<string> = new Set(["ECONNRESET", "EPIPE", "ECONNABORTED"]);

/** Fills in defaults and refuses values that would make no sense. */
export function retryPolicy(options: RetryOptions | undefined): RetryPolicy {
  const policy = {
    retries: options?.retries ?? DEFAULT_RETRY.retries,
    baseDelayMs: options?.baseDelayMs ?? DEFAULT_RETRY.baseDelayMs,
    maxDelayMs: options?.maxDelayMs ?? DEFAULT_RETRY.maxDelayMs,
  };
  if (!Number.isSafeInteger(policy.retries) || policy.retries < 0) {
    throw configError(`retry.retries must be a non-negative integer, got ${policy.retries}`);
  }
  for (const name of ["baseDelayMs", "maxDelayMs"] as const) {
    if (!Number.isFinite(policy[name]) || policy[name] < 0) {
      throw configError(`retry.${name} must be a non-negative number, got ${policy[name]}`);
    }
  }
  return policy;
}

/** True when an error answer may be retried: 503 with a code saying nothing was done. */
export function isRetryableAnswer(status: number, code: string): boolean {
  return status === 503 && RETRYABLE_CODES.has(code);
}

/**
 * The delay before retry number `retry` (0 for the first): full jitter, a uniform
 * draw in [0, min(max, base * 2^retry)), so clients that failed together don't
 * come back together.
 */
export function backoffDelay(policy: RetryPolicy, retry: number, random: () => number = Math.random): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** retry);
  return Math.floor(random() * ceiling);
}

/** What is known about a request that failed without an answer. */
export interface SocketFailure {
  /** `req.reusedSocket`: the request went out on a pooled keep-alive socket. */
  readonly reusedSocket: boolean;
  /** Whether any part of the answer (its status line) had arrived. */
  readonly answered: boolean;
  /** The error's errno-style code, if any. */
  readonly code: string | undefined;
}

/** True for the keep-alive race: a reused socket reset before any answer byte. */
export function isStaleSocket(failure: SocketFailure): boolean {
  return (
    failure.reusedSocket && !failure.answered && failure.code !== undefined && STALE_SOCKET_ERRORS.has(failure.code)
  );
}
