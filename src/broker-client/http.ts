/**
 * JSON over HTTPS for the broker client: TLS verification always on, a capped
 * answer size, and retries with capped, jittered back-off on exactly two kinds of
 * failure: no answer (network) and 503. A request that spends something (the
 * bootstrap token) is retried after a network failure only when it never left:
 * a connection that broke after sending may have been acted on.
 */
import type { IncomingMessage } from "node:http";
import { type Agent, request as httpsRequest } from "node:https";
import { BrokerError } from "./errors.js";

/** How often and how patiently failed calls are tried again. */
export interface RetryOptions {
  /** Retries after the first attempt; 0 disables retrying. Default 4. */
  readonly retries?: number;
  /** Ceiling of the first delay; it doubles with each retry. Default 200 ms. */
  readonly baseDelayMs?: number;
  /** Ceiling no delay exceeds. Default 5000 ms. */
  readonly maxDelayMs?: number;
}

export interface RetryPolicy {
  readonly retries: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

const DEFAULT_RETRY: RetryPolicy = { retries: 4, baseDelayMs: 200, maxDelayMs: 5000 };
/** Far above any answer the broker gives (secrets are capped at 32 KiB each). */
const MAX_ANSWER_BYTES = 64 * 1024 * 1024;
const TLS_ERROR = /CERT|SELF_SIGNED|ISSUER|SIGNATURE|ERR_TLS|ERR_SSL|HOSTNAME/;

/** Fills in defaults and refuses values that would make no sense. */
export function retryPolicy(options: RetryOptions | undefined): RetryPolicy {
  const policy = { ...DEFAULT_RETRY, ...options };
  if (!Number.isSafeInteger(policy.retries) || policy.retries < 0) {
    throw new BrokerError("invalid_argument", `retry.retries must be a non-negative integer, got ${policy.retries}`);
  }
  for (const name of ["baseDelayMs", "maxDelayMs"] as const) {
    if (!Number.isFinite(policy[name]) || policy[name] < 0) {
      throw new BrokerError("invalid_argument", `retry.${name} must be a non-negative number, got ${policy[name]}`);
    }
  }
  return policy;
}

/** Full jitter: a uniform draw below min(max, base·2^retry), so clients that failed together don't return together. */
export function backoffDelay(policy: RetryPolicy, retry: number, random: () => number = Math.random): number {
  return Math.floor(random() * Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** retry));
}

/** Where and how one call goes. */
export interface Call {
  readonly method: "GET" | "POST";
  readonly url: URL;
  readonly body?: unknown;
  /** The agent to use, read afresh for each attempt (a renewal swaps the session's). */
  readonly agent: () => Agent;
  readonly timeoutMs: number;
  readonly retry: RetryPolicy;
  /** The call spends something: after a network failure, retry only if the request never went out. */
  readonly spends?: boolean;
  readonly signal?: AbortSignal;
}

/** Sends `call` (retrying as the policy allows) and returns the parsed JSON of a 2xx answer. */
export async function callJson(call: Call): Promise<unknown> {
  const payload = call.body === undefined ? undefined : Buffer.from(JSON.stringify(call.body), "utf8");
  try {
    for (let attempt = 0; ; attempt++) {
      if (call.signal?.aborted === true) throw new BrokerError("closed", "the broker session is closed");
      let failure: BrokerError;
      let retryable: boolean;
      try {
        return await once(call, payload);
      } catch (e) {
        if (!(e instanceof Attempt)) throw e;
        failure = e.error;
        retryable = e.error.status === 503 || (e.error.code === "unavailable" && (!call.spends || !e.sent));
      }
      if (!retryable || attempt >= call.retry.retries) throw gaveUp(failure, attempt);
      await sleep(backoffDelay(call.retry, attempt), call.signal);
    }
  } finally {
    // The request may have carried the bootstrap token.
    payload?.fill(0);
  }
}

/** One attempt's failure, and whether the request had gone out when it failed. */
class Attempt extends Error {
  constructor(
    readonly error: BrokerError,
    readonly sent: boolean,
  ) {
    super(error.message);
  }
}

function once(call: Call, payload: Buffer | undefined): Promise<unknown> {
  const { url } = call;
  return new Promise((resolve, reject) => {
    let sent = false;
    const headers: Record<string, string> = { accept: "application/json" };
    if (payload !== undefined) {
      headers["content-type"] = "application/json";
      headers["content-length"] = String(payload.length);
    }
    const req = httpsRequest(
      {
        protocol: "https:",
        hostname: url.hostname.replace(/^\[(.*)\]$/, "$1"),
        port: url.port === "" ? 443 : Number(url.port),
        path: `${url.pathname}${url.search}`,
        method: call.method,
        headers,
        agent: call.agent(),
        // Explicit, so NODE_TLS_REJECT_UNAUTHORIZED=0 can't switch verification off.
        rejectUnauthorized: true,
        timeout: call.timeoutMs,
        ...(call.signal === undefined ? {} : { signal: call.signal }),
      },
      (response) => {
        const chunks: Buffer[] = [];
        let size = 0;
        response.on("data", (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_ANSWER_BYTES) {
            response.destroy(new BrokerError("invalid_answer", `answer exceeds ${MAX_ANSWER_BYTES} bytes`));
            return;
          }
          chunks.push(chunk);
        });
        response.on("end", () => {
          const raw = Buffer.concat(chunks);
          for (const c of chunks) c.fill(0);
          try {
            resolve(interpret(response, raw));
          } catch (e) {
            reject(e instanceof BrokerError ? new Attempt(e, true) : e);
          } finally {
            // The answer may hold secrets or a private credential.
            raw.fill(0);
          }
        });
        response.on("error", (e) => {
          for (const c of chunks) c.fill(0);
          reject(new Attempt(transportFailure(e, url), true));
        });
      },
    );
    req.on("socket", (socket) => {
      // A pooled socket is already connected: the request leaves as soon as it is written.
      if (!socket.connecting) sent = true;
      else socket.once("secureConnect", () => (sent = true));
    });
    req.on("timeout", () => {
      req.destroy(new BrokerError("unavailable", `no answer from ${url.origin} within ${call.timeoutMs} ms`));
    });
    req.on("error", (e) => {
      if (e.name === "AbortError") reject(new BrokerError("closed", "the broker session is closed"));
      else reject(new Attempt(transportFailure(e, url), sent));
    });
    req.end(payload);
  });
}

function interpret(response: IncomingMessage, raw: Buffer): unknown {
  const status = response.statusCode ?? 0;
  const header = response.headers["x-request-id"];
  const requestId = typeof header === "string" ? header : undefined;
  let body: unknown;
  let parsed = true;
  try {
    body = raw.length === 0 ? undefined : JSON.parse(raw.toString("utf8"));
  } catch {
    parsed = false;
  }
  if (status >= 200 && status < 300) {
    if (!parsed || body === undefined) {
      throw new BrokerError("invalid_answer", `answer is not JSON (HTTP ${status})`, { status, requestId });
    }
    return body;
  }
  const error = parsed ? (body as { error?: { code?: unknown; message?: unknown } } | undefined)?.error : undefined;
  if (error !== undefined && typeof error.code === "string") {
    const message = typeof error.message === "string" ? error.message : error.code;
    throw new BrokerError(error.code, message, { status, requestId });
  }
  throw new BrokerError("http_error", `HTTP ${status} ${response.statusMessage ?? ""}`.trim(), { status, requestId });
}

function transportFailure(e: unknown, url: URL): BrokerError {
  if (e instanceof BrokerError) return e;
  const code = (e as { code?: unknown } | null)?.code;
  const errno = typeof code === "string" ? code : "";
  const detail = e instanceof Error ? e.message : String(e);
  if (TLS_ERROR.test(errno)) {
    return new BrokerError("tls_error", `TLS verification of ${url.origin} failed: ${detail}`, { cause: e });
  }
  const cause = errno === "" || detail.includes(errno) ? detail : `${errno}: ${detail}`;
  return new BrokerError("unavailable", `cannot reach ${url.origin}: ${cause}`, { cause: e });
}

function gaveUp(last: BrokerError, retries: number): BrokerError {
  if (retries === 0) return last;
  const message = `${last.message} (still failing after ${retries} ${retries === 1 ? "retry" : "retries"})`;
  return new BrokerError(last.code, message, { status: last.status, requestId: last.requestId, cause: last });
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(new BrokerError("closed", "the broker session is closed"));
      return;
    }
    const timer = setTimeout(done, ms);
    function done(): void {
      signal?.removeEventListener("abort", aborted);
      resolve();
    }
    function aborted(): void {
      clearTimeout(timer);
      reject(new BrokerError("closed", "the broker session is closed"));
    }
    signal?.addEventListener("abort", aborted, { once: true });
  });
}
