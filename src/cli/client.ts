/**
 * The CLI's HTTPS client for the Custos API: keep-alive, JSON in and out, TLS
 * verification always on, and every failure turned into a `CliError` with the
 * exit code it deserves.
 */
import { readFileSync } from "node:fs";
import type { IncomingMessage } from "node:http";
import { Agent, request as httpsRequest } from "node:https";
import { Secret } from "../secret/index.js";
import { apiError, CliError, EXIT_CLIENT, EXIT_SERVER, transportError, usageError } from "./errors.js";

/** Where the API listens when `CUSTOS_ADDR` is not set. */
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
  /** Socket inactivity limit. */
  timeoutMs?: number | undefined;
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

/** A small client for the Custos HTTP API. Call `close()` when done so the process can exit. */
export class CustosClient {
  /** The API's base address. */
  readonly address: URL;
  readonly #token: Secret | undefined;
  readonly #agent: Agent;
  readonly #timeoutMs: number;
  readonly #customCa: boolean;

  constructor(options: ClientOptions) {
    this.address = parseAddress(options.address);
    this.#token = options.token;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#customCa = options.ca !== undefined;
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

  /** Sends a request and returns status, body and request id. Error answers throw `CliError`. */
  async send<T = unknown>(method: string, path: string, options: RequestOptions = {}): Promise<Answer<T>> {
    const headers: Record<string, string> = { accept: "application/json" };
    if (options.auth ?? true) {
      if (this.#token === undefined) {
        throw new CliError(
          "unauthenticated",
          "no token: set CUSTOS_TOKEN or CUSTOS_TOKEN_FILE (custos login --token-file FILE writes one)",
          EXIT_CLIENT,
        );
      }
      headers.authorization = `Bearer ${this.#token.exposeText()}`;
    }
    const hasBody = method === "POST" || method === "PUT" || method === "PATCH";
    const payload = hasBody ? Buffer.from(JSON.stringify(options.body ?? {}), "utf8") : undefined;
    if (payload !== undefined) {
      headers["content-type"] = "application/json";
      headers["content-length"] = String(payload.length);
    }
    try {
      const { response, raw } = await this.#exchange(method, this.#url(path, options.query), headers, payload);
      try {
        return this.#interpret<T>(response, raw, options.answerStatuses ?? []);
      } finally {
        // The answer may hold plaintext or a token; don't leave it lying in the heap.
        raw.fill(0);
      }
    } finally {
      // The request may have carried a password or plaintext.
      payload?.fill(0);
    }
  }

  /** Closes pooled connections and zeroes the token. */
  close(): void {
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

  #exchange(
    method: string,
    url: URL,
    headers: Record<string, string>,
    payload: Buffer | undefined,
  ): Promise<{ response: IncomingMessage; raw: Buffer }> {
    return new Promise((resolve, reject) => {
      const req = httpsRequest(
        {
          protocol: url.protocol,
          hostname: url.hostname.replace(/^\[(.*)\]$/, "$1"),
          port: url.port === "" ? 443 : Number(url.port),
          path: `${url.pathname}${url.search}`,
          method,
          headers,
          agent: this.#agent,
          rejectUnauthorized: true,
          timeout: this.#timeoutMs,
        },
        (response) => {
          const chunks: Buffer[] = [];
          let size = 0;
          response.on("data", (chunk: Buffer) => {
            size += chunk.length;
            if (size > MAX_ANSWER_BYTES) {
              response.destroy(
                transportError("internal", `answer from ${url.origin} exceeds ${MAX_ANSWER_BYTES} bytes`),
              );
              return;
            }
            chunks.push(chunk);
          });
          response.on("end", () => {
            const raw = Buffer.concat(chunks);
            for (const c of chunks) c.fill(0);
            resolve({ response, raw });
          });
          response.on("error", (e) => reject(this.#transportFailure(e, url)));
        },
      );
      req.on("timeout", () => {
        req.destroy(transportError("unavailable", `no answer from ${url.origin} within ${this.#timeoutMs} ms`));
      });
      req.on("error", (e) => reject(this.#transportFailure(e, url)));
      req.end(payload);
    });
  }

  #transportFailure(e: unknown, url: URL): CliError {
    if (e instanceof CliError) return e;
    const code = typeof (e as { code?: unknown }).code === "string" ? (e as { code: string }).code : "";
    const detail = e instanceof Error ? e.message : String(e);
    if (TLS_ERROR.test(code)) {
      const hint = this.#customCa ? "" : " (set CUSTOS_CACERT to the Custos CA certificate file)";
      return transportError("tls_error", `TLS verification of ${url.origin} failed: ${detail}${hint}`, e);
    }
    return transportError("unavailable", `cannot reach ${url.origin}: ${code || detail}`, e);
  }

  #interpret<T>(response: IncomingMessage, raw: Buffer, answerStatuses: readonly number[]): Answer<T> {
    const status = response.statusCode ?? 0;
    const header = response.headers["x-request-id"];
    const requestId = typeof header === "string" ? header : undefined;
    const body = parseJson(raw);
    if ((status >= 200 && status < 300) || answerStatuses.includes(status)) {
      if (body === INVALID) {
        throw new CliError("internal", `answer from the server is not JSON (HTTP ${status})`, EXIT_SERVER, { status });
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
  let url: URL;
  try {
    url = new URL(address);
  } catch (cause) {
    throw usageError(`invalid address "${address}": expected https://host:port`, cause);
  }
  if (url.protocol !== "https:") {
    throw usageError(`invalid address "${address}": only https:// is supported (the token must not travel in clear)`);
  }
  if (url.username !== "" || url.password !== "" || url.search !== "" || url.hash !== "") {
    throw usageError(`invalid address "${address}": no credentials, query or fragment allowed`);
  }
  return url;
}

/**
 * Builds a client from the environment: `CUSTOS_ADDR` (default https://127.0.0.1:8443),
 * `CUSTOS_TOKEN` or else the file named by `CUSTOS_TOKEN_FILE` (whitespace trimmed),
 * and `CUSTOS_CACERT` (a PEM file to trust). Unusable settings are usage errors.
 */
export function clientFromEnv(env: NodeJS.ProcessEnv): CustosClient {
  const address = nonEmpty(env.CUSTOS_ADDR) ?? DEFAULT_ADDR;
  const caFile = nonEmpty(env.CUSTOS_CACERT);
  const ca = caFile === undefined ? undefined : readCa(caFile);
  return new CustosClient({ address, token: tokenFromEnv(env), ca });
}

/** The bearer token from `CUSTOS_TOKEN` or `CUSTOS_TOKEN_FILE`, or undefined when neither is set. */
export function tokenFromEnv(env: NodeJS.ProcessEnv): Secret | undefined {
  const inline = env.CUSTOS_TOKEN?.trim();
  if (inline) return Secret.fromString(inline);
  const file = nonEmpty(env.CUSTOS_TOKEN_FILE);
  if (file === undefined) return undefined;
  let raw: Buffer;
  try {
    raw = readFileSync(file);
  } catch (cause) {
    throw usageError(`cannot read CUSTOS_TOKEN_FILE ${file}: ${errorCode(cause)}`, cause);
  }
  try {
    const text = raw.toString("utf8").trim();
    if (text.length === 0) throw usageError(`CUSTOS_TOKEN_FILE ${file} is empty`);
    return Secret.fromString(text);
  } finally {
    raw.fill(0);
  }
}

function readCa(file: string): Buffer {
  let pem: Buffer;
  try {
    pem = readFileSync(file);
  } catch (cause) {
    throw usageError(`cannot read CUSTOS_CACERT ${file}: ${errorCode(cause)}`, cause);
  }
  if (!pem.includes("-----BEGIN CERTIFICATE-----")) {
    throw usageError(`CUSTOS_CACERT ${file} holds no PEM certificate`);
  }
  return pem;
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === "" ? undefined : value.trim();
}

/** The errno code of a file-system error, else its message. */
export function errorCode(e: unknown): string {
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code === "string") return code;
  return e instanceof Error ? e.message : String(e);
}
