/**
 * The broker's answers, checked and turned into the shapes the client hands out.
 * Credentials (the private key, the JWT, secret values) are non-enumerable
 * properties: they are there for the code that asks for them by name, but
 * `JSON.stringify`, `console.log` and `util.inspect` of an answer leave them out,
 * so a stray debug line doesn't print them.
 */
import { BrokerError } from "./errors.js";

/** The instance's identity: certificate, chain and the key that goes with them. */
export interface Identity {
  /** The leaf certificate (PEM). */
  readonly certificate: string;
  /** The issuing intermediate(s) (PEM), to send after the leaf. */
  readonly chain: string;
  /** Intermediate(s) and root (PEM): what peers holding Custos identities are checked against. */
  readonly caChain: string;
  /** The private key (PKCS#8 PEM). Non-enumerable. */
  readonly privateKeyPem: string;
  readonly notAfter: Date;
  /** When to renew: half-way through the certificate's life. */
  readonly renewAt: Date;
  /** `spiffe://<trust-domain>/org/<org>/space/<space>/app/<app>/instance/<id>`. */
  readonly spiffeId: string;
}

/** One secret the instance may read. */
export interface BrokerSecret {
  /** The whole path: `<org>/<space>/<app>/<name>` or `shared/<path>`. */
  readonly path: string;
  /** Relative to the app (`db/password`), or `shared/<path>` for a shared secret. */
  readonly name: string;
  readonly version: number;
  /** The value. Non-enumerable. */
  readonly value: string;
}

/** Who the instance is, as the broker said at the exchange. */
export interface InstanceInfo {
  readonly instance: string;
  readonly org: string;
  readonly space: string;
  readonly app: string;
}

/** Everything an exchange gives an instance. */
export interface Credentials extends InstanceInfo {
  readonly identity: Identity;
  /** The JWT (compact JWS). Non-enumerable. */
  readonly jwt: string;
  readonly jwtExpiresAt: Date;
  readonly secrets: readonly BrokerSecret[];
  /** When the instance's lease ends unless its platform agent extends it. */
  readonly leaseExpiresAt: Date | undefined;
}

/** What a renewal gives: a new identity and JWT. */
export interface Renewed {
  readonly identity: Identity;
  readonly jwt: string;
  readonly jwtExpiresAt: Date;
}

/** A fresh JWT. */
export interface FreshJwt {
  readonly jwt: string;
  readonly jwtExpiresAt: Date;
}

type Json = Record<string, unknown>;

/** An exchange answer, with the private key the client generated for it. */
export function credentialsFrom(body: unknown, privateKeyPem: string): Credentials {
  const o = object(body, "exchange answer");
  const credentials = {
    instance: text(o, "instance"),
    org: text(o, "org"),
    space: text(o, "space"),
    app: text(o, "app"),
    identity: identityFrom(o, privateKeyPem),
    jwtExpiresAt: date(o, "jwtExpiresAt"),
    secrets: secretsFrom(o.secrets, "exchange answer"),
    leaseExpiresAt: o.leaseExpiresAt === undefined || o.leaseExpiresAt === null ? undefined : date(o, "leaseExpiresAt"),
  };
  return hide(credentials, "jwt", text(o, "jwt"));
}

/** A renewal answer, with the private key the client generated for it. */
export function renewedFrom(body: unknown, privateKeyPem: string): Renewed {
  const o = object(body, "renew answer");
  return hide(
    { identity: identityFrom(o, privateKeyPem), jwtExpiresAt: date(o, "jwtExpiresAt") },
    "jwt",
    text(o, "jwt"),
  );
}

/** A `POST /v1/broker/jwt` answer. */
export function freshJwtFrom(body: unknown): FreshJwt {
  const o = object(body, "jwt answer");
  return hide({ jwtExpiresAt: expiry(o) }, "jwt", text(o, "jwt"));
}

/** A `GET /v1/broker/secrets` answer: `{secrets: [...]}` (a bare list is taken too). */
export function secretListFrom(body: unknown): BrokerSecret[] {
  return secretsFrom(Array.isArray(body) ? body : object(body, "secrets answer").secrets, "secrets answer");
}

/** A `GET /v1/broker/secrets/:path` answer: the secret itself, or `{secret: {...}}`. */
export function secretFrom(body: unknown): BrokerSecret {
  const o = object(body, "secret answer");
  return secretOf(o.secret !== undefined ? o.secret : o, "secret answer");
}

function identityFrom(o: Json, privateKeyPem: string): Identity {
  const identity = {
    certificate: pemText(o, "certificate"),
    chain: typeof o.chain === "string" ? o.chain : "",
    caChain: pemText(o, "caChain"),
    notAfter: date(o, "notAfter"),
    renewAt: date(o, "renewAt"),
    spiffeId: text(o, "spiffeId"),
  };
  if (!identity.spiffeId.startsWith("spiffe://")) throw invalid(`spiffeId is not a SPIFFE id`);
  return hide(identity, "privateKeyPem", privateKeyPem);
}

function secretsFrom(list: unknown, what: string): BrokerSecret[] {
  if (!Array.isArray(list)) throw invalid(`${what}: secrets is not a list`);
  return list.map((item) => secretOf(item, what));
}

function secretOf(item: unknown, what: string): BrokerSecret {
  const o = object(item, `${what}: a secret`);
  const version = o.version;
  if (typeof version !== "number" || !Number.isSafeInteger(version) || version < 1) {
    throw invalid(`${what}: a secret's version is not a positive integer`);
  }
  const path = text(o, "path");
  return hide({ path, name: typeof o.name === "string" ? o.name : path, version }, "value", text(o, "value", true));
}

/** `jwtExpiresAt`, or `expiresAt` as a JWT endpoint may call it. */
function expiry(o: Json): Date {
  return date(o, o.jwtExpiresAt === undefined && o.expiresAt !== undefined ? "expiresAt" : "jwtExpiresAt");
}

/** Adds `key` to `target` as a read-only, non-enumerable property. */
function hide<T extends object, K extends string, V>(target: T, key: K, value: V): T & { readonly [P in K]: V } {
  Object.defineProperty(target, key, { value, enumerable: false, writable: false, configurable: false });
  return target as T & { readonly [P in K]: V };
}

function object(value: unknown, what: string): Json {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw invalid(`${what} is not an object`);
  return value as Json;
}

function text(o: Json, key: string, emptyAllowed = false): string {
  const value = o[key];
  if (typeof value !== "string" || (!emptyAllowed && value.length === 0)) throw invalid(`${key} is missing`);
  return value;
}

function pemText(o: Json, key: string): string {
  const value = text(o, key);
  if (!value.includes("-----BEGIN CERTIFICATE-----")) throw invalid(`${key} holds no PEM certificate`);
  return value;
}

function date(o: Json, key: string): Date {
  const value = o[key];
  const d = typeof value === "string" || typeof value === "number" ? new Date(value) : undefined;
  if (d === undefined || Number.isNaN(d.getTime())) throw invalid(`${key} is not a date`);
  return d;
}

function invalid(message: string): BrokerError {
  // Never quote the answer: it may hold credentials.
  return new BrokerError("invalid_answer", `unexpected answer from the broker: ${message}`);
}
