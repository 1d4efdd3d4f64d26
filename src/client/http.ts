/**
 * The HTTPS client for the Custos API: keep-alive, JSON in and out, TLS verification
 * always on, a capped answer size, buffers zeroed after use, retries where the server
 * is known not to have acted, and every failure turned into a `ClientError`.
 */
import type { IncomingHttpHeaders, IncomingMessage } from "node:http";
import { Agent, type RequestOptions as HttpsRequestOptions, request as httpsRequest } from "node:https";
import { pipeline } from "node:stream/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { parseHttpsAddress } from "../net/address.js";
import type { Secret } from "../secret/index.js";
import { apiError, ClientError, configError, transportError } from "./errors.js";
import {
  backoffDelay,
  isRetryableAnswer,
  isStaleSocket,
  type RetryOptions,
  type RetryPolicy,
  retryPolicy,
} from "./retry.js";

/** Where the API listens unless told otherwise. */
export const DEFAULT_ADDR = "https://127.0.0.1:8443";

const DEFAULT_TIMEOUT_MS = 60_000;
/** Far above any answer the API gives (its request bodies are capped at 1 MiB by default). */
const MAX_ANSWER_BYTES = 256 * 1024 * 1024;

export interface ClientOptions {
  /** `https://host[:port][/prefix]`. Plain `http://` is refused: the token would travel in clear. */
  address: string;
  /** Bearer token; the client owns it from here on and zeroes it on `close()`. */
  token?: Secret | undefined;
  /** PEM certificate(s) to trust instead of the system store. */
  ca?: Buffer | undefined;
  /** Socket inactivity limit. Default 60 s. */
  timeoutMs?: number | undefined;
  /** Retries of 503 `hsm_unavailable` / `store_unavailable` / `audit_unavailable`. */
  retry?: RetryOptions | undefined;
}

export type QueryValue = string | number | boolean | undefined;

export interface RequestOptions {
  /** JSON body. POST, PUT and PATCH always send one (`{}` when absent) so JSON-typed routes accept them. */
  body?: unknown;
  /** Query parameters; `undefined` values are left out. */
  query?: Readonly<Record<string, QueryValue>>;
  /** Send the bearer token (default true). Login and health go without. */
  auth?: boolean;
  /** Non-2xx statuses whose body is an answer rather than an error (health answers 503 when degraded). */
  answerStatuses?: readonly number[];
}

/** A parsed answer with its status and request id. */
export interface Answer<T> {
  readonly status: number;
  readonly body: T;
  readonly requestId: string | undefined;
}

const TLS_ERROR = /CERT|SELF_SIGNED|ISSUER|SIGNATURE|ERR_TLS|ERR_SSL|HOSTNAME/;

/** An answer's raw bytes, or the keep-alive race that earns one immediate retry. */
type Exchange = { readonly response: IncomingMessage; readonly raw: Buffer } | { readonly stale: ClientError };

/** A small client for the Custos HTTP API. Call `close()` when done so the process can exit. */
export class CustosClient {
  /** The API's base address. */
  readonly address: URL;
  /** The PEM certificates it trusts instead of the system's, if given. */
  readonly ca: Buffer | undefined;
  readonly #token: Secret | undefined;
  readonly #agent: Agent;
  readonly #timeoutMs: number;
  readonly #retry: RetryPolicy;
  #closed = false;

  /** @throws ClientError `invalid_config` for an unusable address, timeout or retry policy. */
  constructor(options: ClientOptions) {
    this.address = parseAddress(options.address);
    this.#retry = retryPolicy(options.retry);
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!Number.isFinite(this.#timeoutMs) || this.#timeoutMs <= 0) {
      throw configError(`timeoutMs must be a positive number, got ${this.#timeoutMs}`);
    }
    this.#token = options.token;
    this.ca = options.ca;
    // rejectUnauthorized is explicit so NODE_TLS_REJECT_UNAUTHORIZED=0 can't switch verification off.
    this.#agent = new Agent({
      keepAlive: true,
      maxSockets: 8,
      rejectUnauthorized: true,
      ...(options.ca === undefined ? {} : { ca: options.ca }),
    });
  }

  /** True when a bearer token is configured. */
  get hasToken(): boolean {
    return this.#token !== undefined;
  }

  /** Sends a request and returns the parsed JSON body of a successful answer. */
  async request<T = unknown>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    return (await this.send<T>(method, path, options)).body;
  }

  /**
   * Sends a request and returns status, body and request id.
   * @throws ClientError for error answers (after any retries) and for failures to get one.
   */
  async send<T = unknown>(method: string, path: string, options: RequestOptions = {}): Promise<Answer<T>> {
    const headers = this.#headers(options.auth ?? true);
    const hasBody = method === "POST" || method === "PUT" || method === "PATCH";
    const payload = hasBody ? Buffer.from(JSON.stringify(options.body ?? {}), "utf8") : undefined;
    if (payload !== undefined) {
      headers["content-type"] = "application/json";
      headers["content-length"] = String(payload.length);
    }
    const url = this.#url(path, options.query);
    const answerStatuses = options.answerStatuses ?? [];
    let staleRetried = false;
    let retries = 0;
    try {
      for (;;) {
        const exchange = await this.#exchange(method, url, headers, payload);
        if ("stale" in exchange) {
          if (staleRetried || this.#closed) throw exchange.stale;
          staleRetried = true;
          continue;
        }
        let failure: ClientError;
        try {
          return this.#interpret<T>(exchange.response, exchange.raw, answerStatuses);
        } catch (e) {
          if (!(e instanceof ClientError) || !isRetryableAnswer(e.status, e.code)) throw e;
          failure = e;
        } finally {
          // The answer may hold plaintext or a token; don't leave it lying in the heap.
          exchange.raw.fill(0);
        }
        if (retries >= this.#retry.retries || this.#closed) throw gaveUp(failure, retries);
        await sleep(backoffDelay(this.#retry, retries));
        retries += 1;
      }
    } finally {
      // The request may have carried a password or plaintext.
      payload?.fill(0);
    }
  }

  /**
   * GETs `path` with the token and pipes a successful answer's body into `into`,
   * which it ends; answers the response's headers. An error answer is thrown as
   * `send` throws it. Never retried: `into` may hold part of a body by then. A
   * failure of `into` itself (a full disk) is thrown as it is.
   */
  download(path: string, into: NodeJS.WritableStream): Promise<IncomingHttpHeaders> {
    const headers = this.#headers(true);
    const url = this.#url(path, undefined);
    return new Promise((resolve, reject) => {
      let intoFailed: unknown;
      into.once("error", (e) => {
        intoFailed = e;
      });
      const req = httpsRequest(this.#requestOptions("GET", url, headers), (response) => {
        const status = response.statusCode ?? 0;
        if (status >= 200 && status < 300) {
          // An answer cut short fails `into` too, with the same error: which side failed first decides.
          let answerFailed = false;
          response.once("error", () => {
            answerFailed = true;
          });
          pipeline(response, into).then(
            () => resolve(response.headers),
            (e: unknown) => reject(answerFailed ? this.#transportFailure(e, url) : (intoFailed ?? e)),
          );
          return;
        }
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.length < 64 && chunks.push(chunk));
        response.on("error", (e) => reject(this.#transportFailure(e, url)));
        response.on("end", () => {
          try {
            this.#interpret(response, Buffer.concat(chunks), []);
            reject(apiError(status, "http_error", `HTTP ${status}`, undefined));
          } catch (e) {
            reject(e);
          }
        });
      });
      req.on("timeout", () => {
        req.destroy(transportError("unavailable", `no answer from ${url.origin} within ${this.#timeoutMs} ms`));
      });
      req.on("error", (e) => reject(this.#transportFailure(e, url)));
      req.end();
    });
  }

  /** Closes pooled connections, stops further retries and zeroes the token. */
  close(): void {
    this.#closed = true;
    this.#agent.destroy();
    this.#token?.destroy();
  }

  #url(path: string, query: Readonly<Record<string, QueryValue>> | undefined): URL {
    const base = this.address.pathname.replace(/\/+$/, "");
    const url = new URL(`${base}${path}`, this.address);
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined) url.searchParams.set(key, String(value));
    }
    return url;
  }

  /** The request's headers: JSON accepted, and the bearer token when `auth`. */
  #headers(auth: boolean): Record<string, string> {
    const headers: Record<string, string> = { accept: "application/json" };
    if (!auth) return headers;
    if (this.#token === undefined) {
      throw new ClientError(
        "unauthenticated",
        "no token: set CUSTOS_TOKEN or CUSTOS_TOKEN_FILE (custos login --token-file FILE writes one)",
      );
    }
    headers.authorization = `Bearer ${this.#token.exposeText()}`;
    return headers;
  }

  #requestOptions(method: string, url: URL, headers: Record<string, string>): HttpsRequestOptions {
    return {
      protocol: url.protocol,
      hostname: url.hostname.replace(/^\[(.*)\]$/, "$1"),
      port: url.port === "" ? 443 : Number(url.port),
      path: `${url.pathname}${url.search}`,
      method,
      headers,
      agent: this.#agent,
      rejectUnauthorized: true,
      timeout: this.#timeoutMs,
    };
  }

  #exchange(method: string, url: URL, headers: Record<string, string>, payload: Buffer | undefined): Promise<Exchange> {
    return new Promise((resolve, reject) => {
      let answered = false;
      const req = httpsRequest(this.#requestOptions(method, url, headers), (response) => {
        answered = true;
        const chunks: Buffer[] = [];
        let size = 0;
        response.on("data", (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_ANSWER_BYTES) {
            response.destroy(transportError("internal", `answer from ${url.origin} exceeds ${MAX_ANSWER_BYTES} bytes`));
            return;
          }
          chunks.push(chunk);
        });
        response.on("end", () => {
          const raw = Buffer.concat(chunks);
          for (const c of chunks) c.fill(0);
          resolve({ response, raw });
        });
        response.on("error", (e) => {
          for (const c of chunks) c.fill(0);
          reject(this.#transportFailure(e, url));
        });
      });
      req.on("timeout", () => {
        req.destroy(transportError("unavailable", `no answer from ${url.origin} within ${this.#timeoutMs} ms`));
      });
      req.on("error", (e) => {
        const failure = this.#transportFailure(e, url);
        if (isStaleSocket({ reusedSocket: req.reusedSocket, answered, code: errnoCode(e) })) {
          resolve({ stale: failure });
        } else {
          reject(failure);
        }
      });
      req.end(payload);
    });
  }

  #transportFailure(e: unknown, url: URL): ClientError {
    if (e instanceof ClientError) return e;
    const code = errnoCode(e) ?? "";
    const detail = e instanceof Error ? e.message : String(e);
    if (TLS_ERROR.test(code)) {
      const hint = this.ca !== undefined ? "" : " (set CUSTOS_CACERT to the Custos CA certificate file)";
      return transportError("tls_error", `TLS verification of ${url.origin} failed: ${detail}${hint}`, e);
    }
    const cause = code === "" || detail.includes(code) ? detail : `${code}: ${detail}`;
    return transportError("unavailable", `cannot reach ${url.origin}: ${cause}`, e);
  }

  #interpret<T>(response: IncomingMessage, raw: Buffer, answerStatuses: readonly number[]): Answer<T> {
    const status = response.statusCode ?? 0;
    const header = response.headers["x-request-id"];
    const requestId = typeof header === "string" ? header : undefined;
    const body = parseJson(raw);
    if ((status >= 200 && status < 300) || answerStatuses.includes(status)) {
      if (body === INVALID) {
        throw new ClientError("internal", `answer from the server is not JSON (HTTP ${status})`, { status, requestId });
      }
      return { status, body: body as T, requestId };
    }
    const error = body === INVALID ? undefined : (body as { error?: { code?: unknown; message?: unknown } }).error;
    if (error !== undefined && typeof error.code === "string") {
      const message = typeof error.message === "string" ? error.message : error.code;
      throw apiError(status, error.code, message, requestId);
    }
    throw apiError(status, "http_error", `HTTP ${status} ${response.statusMessage ?? ""}`.trim(), requestId);
  }
}

/** The last retryable answer, saying how long the client kept trying. */
function gaveUp(last: ClientError, retries: number): ClientError {
  if (retries === 0) return last;
  const message = `${last.message} (still failing after ${retries} ${retries === 1 ? "retry" : "retries"})`;
  return new ClientError(last.code, message, { status: last.status, requestId: last.requestId, cause: last });
}

function errnoCode(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

const INVALID = Symbol("invalid JSON");

function parseJson(raw: Buffer): unknown {
  if (raw.length === 0) return undefined;
  try {
    return JSON.parse(raw.toString("utf8"));
  } catch {
    return INVALID;
  }
}

function parseAddress(address: string): URL {
  const parsed = parseHttpsAddress(address);
  if ("problem" in parsed) throw configError(parsed.problem);
  return parsed.url;
}
