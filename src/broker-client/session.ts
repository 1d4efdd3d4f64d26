/**
 * An instance's dealings with the broker: one `bootstrap` (the one-time token and a
 * CSR for a key made here, in exchange for identity, JWT and secrets) and then a
 * `BrokerSession` that speaks mutual TLS with that identity.
 */
import { Agent } from "node:https";
import { parseHttpsAddress } from "../net/address.js";
import {
  type BrokerSecret,
  type Credentials,
  credentialsFrom,
  type FreshJwt,
  freshJwtFrom,
  type Identity,
  type Renewed,
  renewedFrom,
  secretFrom,
  secretListFrom,
} from "./answers.js";
import { BrokerError } from "./errors.js";
import { type Call, callJson, type RetryOptions, type RetryPolicy, retryPolicy } from "./http.js";
import { generateKeyAndCsr, isKeyType, type KeyType } from "./keys.js";

const DEFAULT_TIMEOUT_MS = 30_000;
/** A renewal swaps the agent; calls already on the old one get this long to finish. */
const RETIRE_AFTER_MS = 30_000;

/** Where Custos is and how to reach it. */
export interface ConnectOptions {
  /** `https://host[:port][/prefix]`. */
  readonly address: string;
  /** PEM certificate(s) to trust for the server (Custos's CA). Default: the system store. */
  readonly ca?: string | Buffer | undefined;
  /** Socket inactivity limit per attempt. Default 30 s. */
  readonly timeoutMs?: number | undefined;
  /** Retries of network failures and 503s. */
  readonly retry?: RetryOptions | undefined;
}

export interface BootstrapOptions extends ConnectOptions {
  /** The one-time bootstrap token the platform agent gave this instance. */
  readonly token: string;
  /** The instance id it was registered under. */
  readonly instance: string;
  /** The identity key's type. Default `ec-p256`. */
  readonly keyType?: KeyType | undefined;
}

/** What `bootstrap` needs beyond the options: a CSR made earlier (so the exchange is all that's left). */
export interface PreparedKey {
  readonly privateKeyPem: string;
  readonly csrPem: string;
}

interface Endpoint {
  readonly address: URL;
  readonly ca: string | Buffer | undefined;
  readonly timeoutMs: number;
  readonly retry: RetryPolicy;
}

/** Generates the key and CSR `bootstrap` will present (split out so callers can prepare before they need it). */
export function prepareKey(instance: string, keyType: KeyType = "ec-p256"): Promise<PreparedKey> {
  if (!isKeyType(keyType)) throw new BrokerError("invalid_argument", `unknown key type ${String(keyType)}`);
  return generateKeyAndCsr(keyType, instance);
}

/**
 * Exchanges the bootstrap token for the instance's credentials: generates a key
 * here, sends a CSR for it, and returns the identity (with that key), a JWT and
 * the app's secrets. The token is single use: a network failure after it was
 * sent is not retried (the server may have spent it).
 * @throws BrokerError `unauthenticated` for a used, expired, unknown or foreign token.
 */
export async function bootstrap(options: BootstrapOptions, prepared?: PreparedKey): Promise<Credentials> {
  const endpoint = endpointOf(options);
  if (typeof options.token !== "string" || options.token.trim() === "") {
    throw new BrokerError("invalid_argument", "the bootstrap token is empty");
  }
  if (typeof options.instance !== "string" || options.instance === "") {
    throw new BrokerError("invalid_argument", "the instance id is empty");
  }
  const key = prepared ?? (await prepareKey(options.instance, options.keyType ?? "ec-p256"));
  // A plain TLS agent: the instance has no identity yet.
  const agent = new Agent({ keepAlive: false, ...(endpoint.ca === undefined ? {} : { ca: endpoint.ca }) });
  try {
    const body = await callJson(
      call(endpoint, () => agent, "POST", "/v1/broker/exchange", {
        body: { token: options.token.trim(), instance: options.instance, csr: key.csrPem },
        spends: true,
      }),
    );
    return credentialsFrom(body, key.privateKeyPem);
  } finally {
    agent.destroy();
  }
}

/**
 * A running instance's connection to the broker, authenticated by its identity
 * certificate (mutual TLS, keep-alive). It keeps the current identity and JWT:
 * `renew()` and `refreshJwt()` replace them. Call `close()` when done.
 */
export class BrokerSession {
  readonly #endpoint: Endpoint;
  readonly #keyType: KeyType;
  readonly #closing = new AbortController();
  #identity: Identity;
  #jwt: string;
  #jwtExpiresAt: Date;
  #agent: Agent;
  readonly #retired = new Set<Agent>();

  /** Opens a session for credentials from `bootstrap` (or a later renewal). */
  constructor(
    options: ConnectOptions & { readonly keyType?: KeyType | undefined },
    credentials: { readonly identity: Identity; readonly jwt: string; readonly jwtExpiresAt: Date },
  ) {
    this.#endpoint = endpointOf(options);
    this.#keyType = options.keyType ?? "ec-p256";
    if (!isKeyType(this.#keyType)) throw new BrokerError("invalid_argument", `unknown key type ${this.#keyType}`);
    this.#identity = credentials.identity;
    this.#jwt = credentials.jwt;
    this.#jwtExpiresAt = credentials.jwtExpiresAt;
    this.#agent = this.#agentFor(credentials.identity);
  }

  /** The current identity (the latest renewal's). */
  get identity(): Identity {
    return this.#identity;
  }

  /** The current JWT. */
  get jwt(): string {
    return this.#jwt;
  }

  get jwtExpiresAt(): Date {
    return this.#jwtExpiresAt;
  }

  /**
   * Renews the identity: a new key made here, a CSR for it, `POST /v1/broker/renew`
   * over mutual TLS with the current certificate. The session switches to the new
   * identity and JWT.
   * @throws BrokerError `credential_revoked` once the instance is stopped or the certificate has expired.
   */
  async renew(): Promise<Renewed> {
    const key = await generateKeyAndCsr(this.#keyType, this.#identity.spiffeId.split("/").pop() ?? "instance");
    const body = await this.#call("POST", "/v1/broker/renew", { csr: key.csrPem });
    const renewed = renewedFrom(body, key.privateKeyPem);
    this.#throwIfClosed();
    const old = this.#agent;
    this.#agent = this.#agentFor(renewed.identity);
    this.#retire(old);
    this.#identity = renewed.identity;
    this.#jwt = renewed.jwt;
    this.#jwtExpiresAt = renewed.jwtExpiresAt;
    return renewed;
  }

  /** A fresh JWT (`POST /v1/broker/jwt`); the session keeps it as its current one. */
  async refreshJwt(): Promise<FreshJwt> {
    const fresh = freshJwtFrom(await this.#call("POST", "/v1/broker/jwt", {}));
    this.#jwt = fresh.jwt;
    this.#jwtExpiresAt = fresh.jwtExpiresAt;
    return fresh;
  }

  /** Every secret the instance may read, latest versions. */
  async secrets(): Promise<BrokerSecret[]> {
    return secretListFrom(await this.#call("GET", "/v1/broker/secrets"));
  }

  /**
   * One secret by its whole path (`<org>/<space>/<app>/<name>` or `shared/<path>`).
   * @throws BrokerError `forbidden` when it is neither the instance's app's nor granted to it.
   */
  async secret(path: string): Promise<BrokerSecret> {
    if (typeof path !== "string" || path === "" || path.split("/").some((s) => s === "" || s === "." || s === "..")) {
      throw new BrokerError("invalid_argument", "a secret path is segments joined by /, none empty, . or ..");
    }
    const escaped = path.split("/").map(encodeURIComponent).join("/");
    return secretFrom(await this.#call("GET", `/v1/broker/secrets/${escaped}`));
  }

  /** The identity Custos sees on this session's connection. */
  async whoami(): Promise<Record<string, unknown>> {
    const body = await this.#call("GET", "/v1/broker/whoami");
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      throw new BrokerError("invalid_answer", "unexpected answer from the broker: whoami is not an object");
    }
    return body as Record<string, unknown>;
  }

  /** Ends the session: pending retries stop and connections close. */
  close(): void {
    this.#closing.abort();
    this.#agent.destroy();
    for (const agent of this.#retired) agent.destroy();
    this.#retired.clear();
  }

  #call(method: Call["method"], path: string, body?: unknown): Promise<unknown> {
    this.#throwIfClosed();
    return callJson(
      call(this.#endpoint, () => this.#agent, method, path, {
        ...(body === undefined ? {} : { body }),
        signal: this.#closing.signal,
      }),
    );
  }

  #agentFor(identity: Identity): Agent {
    const chain = identity.chain.trim() === "" ? "" : `\n${identity.chain}`;
    return new Agent({
      keepAlive: true,
      maxSockets: 4,
      key: identity.privateKeyPem,
      cert: `${identity.certificate.trimEnd()}${chain}`,
      ...(this.#endpoint.ca === undefined ? {} : { ca: this.#endpoint.ca }),
    });
  }

  #retire(agent: Agent): void {
    this.#retired.add(agent);
    setTimeout(() => {
      agent.destroy();
      this.#retired.delete(agent);
    }, RETIRE_AFTER_MS).unref();
  }

  #throwIfClosed(): void {
    if (this.#closing.signal.aborted) throw new BrokerError("closed", "the broker session is closed");
  }
}

function call(
  endpoint: Endpoint,
  agent: () => Agent,
  method: Call["method"],
  path: string,
  extra: { body?: unknown; spends?: boolean; signal?: AbortSignal },
): Call {
  const base = endpoint.address.pathname.replace(/\/+$/, "");
  return {
    method,
    url: new URL(`${base}${path}`, endpoint.address),
    agent,
    timeoutMs: endpoint.timeoutMs,
    retry: endpoint.retry,
    ...extra,
  };
}

function endpointOf(options: ConnectOptions): Endpoint {
  const parsed = parseHttpsAddress(options.address);
  if ("problem" in parsed) throw new BrokerError("invalid_argument", parsed.problem);
  const address = parsed.url;
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    throw new BrokerError("invalid_argument", `timeoutMs must be a positive number, got ${timeoutMs}`);
  }
  if (options.ca !== undefined && !String(options.ca).includes("-----BEGIN CERTIFICATE-----")) {
    throw new BrokerError("invalid_argument", "ca holds no PEM certificate");
  }
  return { address, ca: options.ca, timeoutMs, retry: retryPolicy(options.retry) };
}
