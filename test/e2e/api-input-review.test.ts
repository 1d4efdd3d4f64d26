import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { gzipSync } from "node:zlib";
import Database from "better-sqlite3";
import { type CustosInstance, fetchRaw, type HttpAnswer, httpsRaw, ok, startCustos } from "../helpers/custos.js";
import { selfSignedCert } from "../helpers/x509.js";

/**
 * Bad input on every HTTP route of Custos, against a real server. Each route is one
 * row of ROUTES: a well-formed example body (the mutations go against each of its
 * members, with the others left well-formed), its required members, the query
 * parameters it reads and their malformed values, its path parameters. Every answer
 * is held to docs/api.md: a 4xx with the code's own status, exactly
 * `{ error: { code, message } }`, a message that names what to fix and holds no stack,
 * no internal path and no secret that was sent, `cache-control: no-store`, an
 * `x-request-id`, and one audit record of the refusal. After each route's refusals
 * every table but the audit log is as it was (read from the database file directly).
 */

type Json = Record<string, unknown>;
type Answer = HttpAnswer & { readonly headers: IncomingHttpHeaders };

/** Every code a refusal here may get, with the HTTP status docs/api.md gives it. */
const STATUS = {
  invalid_request: 400,
  unauthenticated: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  payload_too_large: 413,
  decryption_failed: 400,
  ttl_too_long: 400,
  csr_invalid: 400,
  name_not_allowed: 400,
  key_type_not_allowed: 400,
  principal_not_allowed: 403,
  extension_not_allowed: 400,
  option_not_allowed: 400,
} as const;
type Code = keyof typeof STATUS;

/** Sent where a secret goes (passwords, secret values, tokens): never to come back in an answer, log or record. */
const MARK = `Mk${randomBytes(12).toString("hex")}`;
const HUNDRED_KB = "x".repeat(100_000);
const UNKNOWN = "zzUnknownMember";

/** Who a route takes: the admin's bearer token, nothing (public), or an instance's own credential. */
type Who = "admin" | "public" | "instance";

interface Route {
  readonly method: string;
  /** The path, `:name` for a parameter and a final `*` for a wildcard. */
  readonly template: string;
  readonly who: Who;
  /** The well-formed body; "none" for a POST or DELETE that takes none; absent for a GET. */
  readonly body?: Json | "none";
  readonly required?: readonly string[];
  /** Members for which `null` is well-formed. */
  readonly nullable?: readonly string[];
  /** Members that are base64. */
  readonly base64?: readonly string[];
  /** Labels of generated mutations that are well-formed for this route: never sent. */
  readonly allow?: readonly string[];
  /** Labels of mutations whose documented answer is another code than invalid_request. */
  readonly expect?: Readonly<Record<string, Code | readonly Code[]>>;
  /** Labels of mutations whose answer is wrong at present: each its own `todo` test. */
  readonly bugs?: Readonly<Record<string, string>>;
  /** The query parameters the route reads, each with values it must refuse. */
  readonly query?: Readonly<Record<string, readonly string[]>>;
  /** Further malformed bodies: a label, and the members that replace the well-formed ones. */
  readonly extra?: Readonly<Record<string, Json>>;
  /** Path parameter values (a `$name` is a fixture made in `before`). */
  readonly at?: Readonly<Record<string, string>>;
  /** The kind of wildcard path, for its malformed values. */
  readonly wild?: "secret" | "prefix" | "grant" | "instance-secret";
}

/** One row: "METHOD /path", then what the route takes. */
function r(line: string, o: Omit<Route, "method" | "template" | "who"> & { who?: Who } = {}): Route {
  const [method = "", template = ""] = line.split(" ");
  return { method, template, who: o.who ?? "admin", ...o };
}

const LIMIT = ["-1", "1.5", "abc", "", "1e3", " 1", MARK];
const BOOL = ["yes", "TRUE", "1", "", MARK];
const NONE = "none" as const;
const pw = "correct horse battery staple";
const fp = "0".repeat(64);

/** docs/api.md: at most 64 entries, each name and value 1–256 characters, no lone surrogate. */
const CONTEXT_LIMITS: Readonly<Record<string, Json>> = {
  "context=65 entries": { context: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, "v"])) },
  "context name=''": { context: { "": "v" } },
  "context value=''": { context: { app: "" } },
  "context name=257 chars": { context: { ["n".repeat(257)]: "v" } },
  "context value=257 chars": { context: { app: "v".repeat(257) } },
  "context value=257 UTF-16 units": { context: { app: `${"v".repeat(255)}\u{1f511}` } },
};

/** DNS names, IPs and URIs that are no names at all: invalid_request (docs/pki.md), not name_not_allowed. */
const SAN_SYNTAX: Readonly<Record<string, Json>> = {
  "dnsNames=[a..example.com]": { dnsNames: ["a..example.com"] },
  "dnsNames=[-a.example.com]": { dnsNames: ["-a.example.com"] },
  "dnsNames=[*]": { dnsNames: ["*"] },
  "dnsNames=[10.0.0.1]": { dnsNames: ["10.0.0.1"] },
  "dnsNames=[\u212Aey.example.com]": { dnsNames: ["\u212Aey.example.com"] },
  "ipAddresses=[10.0.0.256]": { ipAddresses: ["10.0.0.256"] },
  "ipAddresses=[10.0.0.1/8]": { ipAddresses: ["10.0.0.1/8"] },
  "ipAddresses=[fe80::1%eth0]": { ipAddresses: ["fe80::1%eth0"] },
  "uris=[not a uri]": { uris: ["not a uri"] },
  "uris=[spiffe://]": { uris: ["spiffe://"] },
  "commonName=65 chars": { commonName: `${"c".repeat(53)}.example.com`, dnsNames: [`${"c".repeat(53)}.example.com`] },
};

/** The list members of a PKI role: duplicates collapse, so a long list of one name is well-formed. */
const ROLE_LISTS = ["dnsNames", "ipRanges", "uris", "keyUsages", "extKeyUsages", "keyTypes"];

/**
 * Every route of docs/api.md, docs/pki.md, docs/broker.md and docs/ssh-ca.md, as
 * src/api/routes registers it. Adding a route is one line.
 */
const ROUTES: readonly Route[] = [
  r("GET /v1/health", { who: "public" }),
  r("GET /v1/docs", { who: "public" }),
  // ---- auth
  r("POST /v1/auth/login", {
    who: "public",
    body: { username: "admin", password: MARK },
    required: ["username", "password"],
  }),
  r("GET /v1/auth/whoami"),
  r("POST /v1/auth/tokens", {
    body: { name: "t-new", policies: ["p1"], ttlSeconds: 3600, forUser: true },
    required: ["name"],
    extra: {
      "ttlSeconds=59": { ttlSeconds: 59 },
      "ttlSeconds=10y+1": { ttlSeconds: 315_360_001 },
      "maxTtlSeconds=59": { maxTtlSeconds: 59 },
      "maxTtlSeconds below ttlSeconds": { maxTtlSeconds: 3599 },
      "maxTtlSeconds=1.5": { maxTtlSeconds: 1.5 },
      "policies=[x101]": { policies: Array(101).fill("p1") },
    },
    allow: ["name:=100KB"],
  }),
  r("GET /v1/auth/tokens"),
  r("POST /v1/auth/tokens/:id/renew", {
    at: { id: "$token" },
    body: { ttlSeconds: 3600 },
    allow: ["body=empty"],
    extra: {
      "ttlSeconds=59": { ttlSeconds: 59 },
      "ttlSeconds=10y+1": { ttlSeconds: 315_360_001 },
    },
  }),
  r("DELETE /v1/auth/tokens/:id", { body: NONE, at: { id: "$token" } }),
  // ---- users, groups, policies, sudo
  r("GET /v1/users"),
  r("POST /v1/users", {
    body: { name: "nu", password: MARK, policies: ["p1"] },
    required: ["name"],
    extra: {
      "name=65 chars": { name: "n".repeat(65) },
      "name=-nu": { name: "-nu" },
      "name=n u": { name: "n u" },
      "name=nü": { name: "nü" },
      "password=11 chars": { password: "x".repeat(11) },
      "password=1026 bytes in 513 characters": { password: "é".repeat(513) },
      "policies=[unknown]": { policies: ["no-such-policy"] },
    },
  }),
  r("GET /v1/users/:name", { at: { name: "u1" } }),
  r("PATCH /v1/users/:name", {
    at: { name: "u1" },
    body: { password: MARK, policies: ["p1"], disabled: false },
    extra: {
      "password=11 chars": { password: "x".repeat(11) },
      "password=1026 bytes in 513 characters": { password: "é".repeat(513) },
    },
  }),
  r("DELETE /v1/users/:name", { body: NONE, at: { name: "u1" } }),
  r("GET /v1/groups"),
  r("POST /v1/groups", {
    body: { name: "ng", members: ["u1"], policies: ["p1"] },
    required: ["name"],
    extra: {
      "name=65 chars": { name: "n".repeat(65) },
      "name=.ng": { name: ".ng" },
      "members=[unknown]": { members: ["nobody"] },
    },
  }),
  r("GET /v1/groups/:name", { at: { name: "g1" } }),
  r("PATCH /v1/groups/:name", {
    at: { name: "g1" },
    body: { members: ["u1"], addMembers: ["u1"], removeMembers: ["u1"], policies: ["p1"] },
  }),
  r("DELETE /v1/groups/:name", { body: NONE, at: { name: "g1" } }),
  r("GET /v1/policies"),
  r("GET /v1/policies/:name", { at: { name: "p1" } }),
  r("PUT /v1/policies/:name", {
    at: { name: "p-new" },
    body: { description: "d", rules: [{ resource: "key/x", actions: ["key:read"] }] },
    required: ["rules", "rules[0].resource", "rules[0].actions"],
    extra: {
      "description=1025 chars": { description: "d".repeat(1025) },
      "rules[0].actions=[privileged]": { rules: [{ resource: "key/x", actions: ["key:destroy"] }] },
      "rules[0].actions=[unknown]": { rules: [{ resource: "key/x", actions: ["key:juggle"] }] },
      "rules[0].actions=[]": { rules: [{ resource: "key/x", actions: [] }] },
      "rules=[x257]": { rules: Array(257).fill({ resource: "key/x", actions: ["key:read"] }) },
    },
    allow: ["description:=''"],
  }),
  r("DELETE /v1/policies/:name", { body: NONE, at: { name: "p1" } }),
  r("GET /v1/sudo/grants", { query: { active: BOOL } }),
  r("POST /v1/sudo/grants", {
    body: { user: "u1", ttlSeconds: 600, reason: "because", policies: ["p1"] },
    required: ["ttlSeconds", "reason"],
    allow: ["missing:user"],
    extra: {
      "user and group": { group: "g1" },
      "ttlSeconds=59": { ttlSeconds: 59 },
      "ttlSeconds=86401": { ttlSeconds: 86_401 },
      "reason=blank": { reason: "   " },
      "reason=1025 chars": { reason: "r".repeat(1025) },
      "policies=[]": { policies: [] },
    },
  }),
  r("DELETE /v1/sudo/grants/:id", { body: NONE, at: { id: "$sudo" } }),
  // ---- keys
  r("GET /v1/keys", {
    query: { prefix: ["x".repeat(129), MARK.repeat(6)], after: ["x".repeat(129)], limit: [...LIMIT, "0", "1001"] },
  }),
  r("POST /v1/keys", {
    body: { name: "nk", purpose: "encrypt", algorithm: "aes-256-gcm", description: "d", rotationPeriodSeconds: 3600 },
    required: ["name", "purpose"],
    extra: {
      "name=129 chars": { name: "n".repeat(129) },
      "name=-nk": { name: "-nk" },
      "name=n/k": { name: "n/k" },
      "name=nk\u0000": { name: "nk\u0000" },
      "description=1025 chars": { description: "d".repeat(1025) },
      "rotationPeriodSeconds=3599": { rotationPeriodSeconds: 3599 },
      "rotationPeriodSeconds=10y+1": { rotationPeriodSeconds: 315_360_001 },
      "purpose=encrypt, algorithm=ed25519": { algorithm: "ed25519" },
      "purpose=sign, algorithm=aes-256-gcm": { purpose: "sign" },
    },
    allow: ["description:=''"],
  }),
  r("GET /v1/keys/:name", { at: { name: "k" } }),
  r("PATCH /v1/keys/:name", {
    at: { name: "k" },
    body: { description: "d", rotationPeriodSeconds: 3600, minDecryptionVersion: 1, enabled: true },
    nullable: ["rotationPeriodSeconds"],
    extra: {
      "description=1025 chars": { description: "d".repeat(1025) },
      "rotationPeriodSeconds=3599": { rotationPeriodSeconds: 3599 },
      "rotationPeriodSeconds=10y+1": { rotationPeriodSeconds: 315_360_001 },
      "minDecryptionVersion=0": { minDecryptionVersion: 0 },
      "minDecryptionVersion=2^31": { minDecryptionVersion: 2 ** 31 },
    },
    allow: ["description:=''"],
  }),
  r("DELETE /v1/keys/:name", {
    body: NONE,
    at: { name: "k" },
    query: { waitingSeconds: ["-1", "1.5", "abc", "", "1e3", "9999999999", MARK], immediate: BOOL },
  }),
  r("POST /v1/keys/:name/cancel-destruction", { body: NONE, at: { name: "k" } }),
  r("POST /v1/keys/:name/rotate", { body: NONE, at: { name: "k" } }),
  r("POST /v1/keys/:name/encrypt", {
    at: { name: "k" },
    body: { plaintext: "aGk=", context: { app: "a" }, version: 1 },
    base64: ["plaintext"],
    allow: ["missing:plaintext"],
    extra: {
      "plaintext=64 KiB+1": { plaintext: Buffer.alloc(65_537).toString("base64") },
      "version=0": { version: 0 },
      ...CONTEXT_LIMITS,
    },
  }),
  r("POST /v1/keys/:name/encrypt", {
    at: { name: "k" },
    body: { items: [{ plaintext: "aGk=", context: { app: "a" } }] },
    required: ["items[0].plaintext"],
    base64: ["items[0].plaintext"],
    extra: {
      "items=[]": { items: [] },
      "items and plaintext": { plaintext: "aGk=" },
      ...Object.fromEntries(
        Object.entries(CONTEXT_LIMITS).map(([l, o]) => [`items[0].${l}`, { items: [{ plaintext: "aGk=", ...o }] }]),
      ),
    },
    // docs/api.md: an empty or oversized plaintext in a well-formed batch is that item's error.
    allow: ["items[0].plaintext:=''", "items[0].plaintext:=100KB"],
  }),
  r("POST /v1/keys/:name/decrypt", {
    at: { name: "k" },
    body: { ciphertext: "$ciphertext", context: { app: "a" } },
    expect: { "ciphertext:=''": "decryption_failed", "ciphertext:=100KB": "decryption_failed" },
    extra: CONTEXT_LIMITS,
  }),
  r("POST /v1/keys/:name/decrypt", {
    at: { name: "k" },
    body: { items: [{ ciphertext: "$ciphertext", context: { app: "a" } }] },
    required: ["items[0].ciphertext"],
    allow: ["items[0].ciphertext:=''", "items[0].ciphertext:=100KB"],
  }),
  r("POST /v1/keys/:name/rewrap", {
    at: { name: "k" },
    body: { ciphertext: "$ciphertext", context: { app: "a" } },
    expect: { "ciphertext:=''": "decryption_failed", "ciphertext:=100KB": "decryption_failed" },
  }),
  r("POST /v1/keys/:name/datakey", {
    at: { name: "k" },
    body: { context: { app: "a" }, bytes: 32, plaintext: true },
    extra: { "bytes=8": { bytes: 8 }, "bytes=33": { bytes: 33 }, ...CONTEXT_LIMITS },
  }),
  r("POST /v1/keys/:name/datakey", { at: { name: "k" }, body: { items: [{ bytes: 16, context: { app: "a" } }] } }),
  r("POST /v1/keys/:name/sign", {
    at: { name: "s" },
    body: { message: "aGk=", version: 1 },
    required: ["message"],
    base64: ["message"],
    allow: ["message:=''"],
    extra: { "message=64 KiB+1": { message: Buffer.alloc(65_537).toString("base64") }, "version=0": { version: 0 } },
  }),
  r("POST /v1/keys/:name/verify", {
    at: { name: "s" },
    body: { message: "aGk=", signature: "aGk=", version: 1 },
    required: ["message", "signature"],
    base64: ["message", "signature"],
    allow: ["message:=''", "signature:=''"],
  }),
  r("POST /v1/random", {
    body: { bytes: 16 },
    required: ["bytes"],
    extra: { "bytes=0": { bytes: 0 }, "bytes=1025": { bytes: 1025 } },
  }),
  // ---- audit
  r("GET /v1/audit", {
    query: {
      after: ["-1", "abc", "1.5", "", MARK],
      limit: [...LIMIT, "0", "10000"],
      principal: ["x".repeat(257)],
      action: ["x".repeat(129)],
      resource: ["x".repeat(1025)],
      order: ["up", "DESC", "", MARK],
    },
  }),
  r("POST /v1/audit/hash", {
    body: { value: MARK },
    required: ["value"],
    extra: { "value=32 KiB+1 bytes": { value: `${MARK}${"é".repeat(16_384)}` } },
  }),
  r("POST /v1/audit/verify", { body: NONE }),
  r("GET /v1/store/backup"),
  r("GET /v1/metrics"),
  // ---- PKI (public routes first)
  r("GET /v1/pki/ca.pem", { who: "public" }),
  r("GET /v1/pki/ca", { who: "public" }),
  r("GET /v1/pki/chain.pem", { who: "public" }),
  r("GET /v1/pki/issuers", { who: "public" }),
  r("GET /v1/pki/issuers/:id/cert", { who: "public", at: { id: "int-1" } }),
  r("GET /v1/pki/issuers/:id/cert.pem", { who: "public", at: { id: "int-1" } }),
  r("GET /v1/pki/issuers/:id/crl", { who: "public", at: { id: "int-1" } }),
  r("GET /v1/pki/issuers/:id/crl.pem", { who: "public", at: { id: "int-1" } }),
  r("GET /v1/pki/crl", { who: "public" }),
  r("GET /v1/pki/crl.pem", { who: "public" }),
  r("PUT /v1/pki/roles/:name", {
    at: { name: "web" },
    body: {
      dnsNames: ["*.example.com"],
      allowWildcardNames: false,
      ipRanges: ["10.0.0.0/8"],
      uris: ["spiffe://custos/*"],
      keyUsages: ["digitalSignature"],
      extKeyUsages: ["serverAuth"],
      keyTypes: ["ec-p256"],
      maxTtlSeconds: 86_400,
      ttlSeconds: 3600,
    },
    allow: ROLE_LISTS.map((f) => `${f}:=[1001 items]`),
  }),
  r("GET /v1/pki/roles"),
  r("GET /v1/pki/roles/:name", { at: { name: "web" } }),
  r("DELETE /v1/pki/roles/:name", { body: NONE, at: { name: "web" } }),
  r("POST /v1/pki/roles/:name/sign", {
    at: { name: "web" },
    body: {
      csr: "$csr",
      ttlSeconds: 3600,
      commonName: "a.example.com",
      dnsNames: ["a.example.com"],
      ipAddresses: ["10.0.0.1"],
      uris: ["spiffe://custos/a"],
    },
    required: ["csr"],
    extra: {
      ...SAN_SYNTAX,
      "csr=PEM of garbage": {
        csr: "-----BEGIN CERTIFICATE REQUEST-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE REQUEST-----\n",
      },
    },
    expect: {
      "ttlSeconds:=1e308": "ttl_too_long",
      "csr:=100KB": "invalid_request",
      "csr=PEM of garbage": "csr_invalid",
      "csr:=''": "invalid_request",
    },
  }),
  r("POST /v1/pki/roles/:name/issue", {
    at: { name: "web" },
    body: {
      ttlSeconds: 3600,
      keyType: "ec-p256",
      commonName: "b.example.com",
      dnsNames: ["b.example.com"],
      ipAddresses: ["10.0.0.2"],
      uris: ["spiffe://custos/b"],
    },
    extra: { ...SAN_SYNTAX, "keyType=dsa-1024": { keyType: "dsa-1024" } },
    expect: {
      "ttlSeconds:=1e308": "ttl_too_long",
      "keyType=dsa-1024": ["invalid_request", "key_type_not_allowed"],
      "keyType:=''": ["invalid_request", "key_type_not_allowed"],
    },
  }),
  r("GET /v1/pki/certs", {
    query: {
      role: ["x".repeat(65)],
      status: ["good", "VALID", "", MARK],
      after: ["XYZ", "AB", "-1", MARK],
      limit: LIMIT,
    },
  }),
  r("GET /v1/pki/certs/:serial", { at: { serial: "$serial" } }),
  // These three take no body as well as one (docs/pki.md: `{ reason? }` and the like).
  r("POST /v1/pki/certs/:serial/revoke", {
    at: { serial: "$serial" },
    body: { reason: "keyCompromise" },
    allow: ["body=empty"],
  }),
  r("POST /v1/pki/certs/:serial/renew", {
    at: { serial: "$serial" },
    body: { ttlSeconds: 3600 },
    expect: { "ttlSeconds:=1e308": "ttl_too_long" },
    allow: ["body=empty"],
  }),
  r("POST /v1/pki/issuers/rotate", { body: { algorithm: "ecdsa-p256" }, allow: ["body=empty"] }),
  r("PUT /v1/pki/consumers/:name", {
    at: { name: "c-new" },
    body: {
      role: "web",
      commonName: "c.example.com",
      dnsNames: ["c.example.com"],
      ipAddresses: ["10.0.0.3"],
      ttlSeconds: 3600,
      keyType: "ec-p256",
    },
    required: ["role", "dnsNames"],
    extra: { ...SAN_SYNTAX, "role=unknown": { role: "nope" }, "keyType=dsa-1024": { keyType: "dsa-1024" } },
    expect: {
      "ttlSeconds:=1e308": "ttl_too_long",
      "role=unknown": "not_found",
      "role:=100KB": ["invalid_request", "not_found"],
      "keyType=dsa-1024": ["invalid_request", "key_type_not_allowed"],
      "keyType:=''": ["invalid_request", "key_type_not_allowed"],
    },
  }),
  r("GET /v1/pki/consumers"),
  r("GET /v1/pki/consumers/:name", { at: { name: "c1" } }),
  r("POST /v1/pki/consumers/:name/rotate", { body: NONE, at: { name: "c1" } }),
  r("POST /v1/pki/consumers/:name/rollback", { body: NONE, at: { name: "c1" } }),
  r("GET /v1/pki/consumers/:name/certificate", {
    at: { name: "c1" },
    query: { role: ["x".repeat(65)], known: ["zz", "A".repeat(64), "0".repeat(63), MARK] },
  }),
  r("POST /v1/pki/consumers/:name/renew", { at: { name: "c1" }, body: { fingerprint: fp }, required: ["fingerprint"] }),
  r("PUT /v1/pki/consumers/:name/agents/:agent", {
    at: { name: "c1", agent: "agent-1" },
    body: { fingerprint: fp },
    required: ["fingerprint"],
  }),
  // ---- platform
  r("POST /v1/platform/orgs", {
    body: { name: "o-new" },
    required: ["name"],
    extra: {
      "name=O-new": { name: "O-new" },
      "name=o-": { name: "o-" },
      "name=64 chars": { name: "o".repeat(64) },
      "name=o.new": { name: "o.new" },
    },
  }),
  r("GET /v1/platform/orgs"),
  r("DELETE /v1/platform/orgs/:org", { body: NONE, at: { org: "o1" } }),
  r("POST /v1/platform/orgs/:org/spaces", { at: { org: "o1" }, body: { name: "s-new" }, required: ["name"] }),
  r("GET /v1/platform/orgs/:org/spaces", { at: { org: "o1" } }),
  r("DELETE /v1/platform/orgs/:org/spaces/:space", { body: NONE, at: { org: "o1", space: "s1" } }),
  r("POST /v1/platform/orgs/:org/spaces/:space/apps", {
    at: { org: "o1", space: "s1" },
    body: { name: "a-new", owners: { users: ["u1"], groups: ["g1"] } },
    required: ["name"],
    extra: { "owners.users=[unknown]": { owners: { users: ["nobody"] } }, "name=64 chars": { name: "a".repeat(64) } },
  }),
  r("GET /v1/platform/orgs/:org/spaces/:space/apps", { at: { org: "o1", space: "s1" } }),
  r("GET /v1/platform/apps/:org/:space/:app", { at: { org: "o1", space: "s1", app: "a1" } }),
  r("PATCH /v1/platform/apps/:org/:space/:app", {
    at: { org: "o1", space: "s1", app: "a1" },
    body: { owners: { users: ["u1"], groups: ["g1"] } },
    required: ["owners"],
    extra: { "owners.groups=[unknown]": { owners: { groups: ["nobody"] } } },
  }),
  r("DELETE /v1/platform/apps/:org/:space/:app", { body: NONE, at: { org: "o1", space: "s1", app: "a1" } }),
  // ---- secrets
  r("PUT /v1/secrets/data/*", {
    at: { "*": "o1/s1/a1/db" },
    wild: "secret",
    body: { value: MARK, cas: 1 },
    required: ["value"],
    expect: { "cas:=1e308": "conflict" },
    extra: { "value=32 KiB+1 bytes": { value: `${MARK}${"é".repeat(16_384)}` } },
  }),
  r("POST /v1/secrets/generate/*", {
    at: { "*": "o1/s1/a1/gen" },
    wild: "secret",
    body: { length: 16, alphabet: "hex", cas: 0 },
    expect: { "cas:=1e308": "conflict" },
    extra: {
      "length=7": { length: 7 },
      "length=1025": { length: 1025 },
      "alphabet=one character": { alphabet: "a" },
      "alphabet=257 distinct": {
        alphabet: Array.from({ length: 257 }, (_, i) => String.fromCodePoint(0x100 + i)).join(""),
      },
      "alphabet=control characters": { alphabet: "\u0001\u0002\u0003" },
      "alphabet=unknown name": { alphabet: "alnum-emoji" },
    },
  }),
  r("GET /v1/secrets/data/*", {
    at: { "*": "o1/s1/a1/db" },
    wild: "secret",
    query: { version: ["0", "-1", "1.5", "abc", "", "99999999999", MARK] },
  }),
  r("GET /v1/secrets/metadata/*", { at: { "*": "o1/s1/a1/db" }, wild: "secret" }),
  r("PATCH /v1/secrets/metadata/*", {
    at: { "*": "o1/s1/a1/db" },
    wild: "secret",
    body: { maxVersions: 10, casRequired: false, customMetadata: { owner: "team" } },
    extra: {
      "maxVersions=0": { maxVersions: 0 },
      "maxVersions=101": { maxVersions: 101 },
      "customMetadata=17 entries": {
        customMetadata: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, "v"])),
      },
      "customMetadata name=''": { customMetadata: { "": "v" } },
      "customMetadata name=129 chars": { customMetadata: { ["k".repeat(129)]: "v" } },
      "customMetadata value=513 chars": { customMetadata: { owner: "v".repeat(513) } },
    },
    allow: ["customMetadata:={1000 members}"],
  }),
  r("DELETE /v1/secrets/metadata/*", { body: NONE, at: { "*": "o1/s1/a1/db" }, wild: "secret" }),
  r("GET /v1/secrets/list/*", { at: { "*": "o1/s1/a1" }, wild: "prefix", query: { after: ["x".repeat(257)] } }),
  r("POST /v1/secrets/delete/*", {
    at: { "*": "o1/s1/a1/db" },
    wild: "secret",
    body: { versions: [1] },
    expect: { "versions:=[1e308]": "not_found" },
  }),
  r("POST /v1/secrets/undelete/*", {
    at: { "*": "o1/s1/a1/db" },
    wild: "secret",
    body: { versions: [1] },
    required: ["versions"],
    expect: { "versions:=[1e308]": "not_found" },
  }),
  r("POST /v1/secrets/destroy/*", {
    at: { "*": "o1/s1/a1/db" },
    wild: "secret",
    body: { versions: [1] },
    required: ["versions"],
    expect: { "versions:=[1e308]": "not_found" },
  }),
  r("PUT /v1/secrets/grants/*", {
    at: { "*": "shared/x" },
    wild: "grant",
    body: { apps: ["o1/s1/a1"] },
    required: ["apps"],
    extra: { "apps=[]": { apps: [] }, "apps=[o1/s1]": { apps: ["o1/s1"] }, "apps=[../s1/a1]": { apps: ["../s1/a1"] } },
    expect: { "apps:=[100KB]": "invalid_request" },
  }),
  r("GET /v1/secrets/grants"),
  // ---- broker: agents, then instances (own credential) and public routes
  r("POST /v1/broker/instances", {
    body: { org: "o1", space: "s1", app: "a1", instance: "i-new", ttlSeconds: 600 },
    required: ["org", "space", "app", "instance"],
    extra: {
      "ttlSeconds=9": { ttlSeconds: 9 },
      "ttlSeconds=366 days": { ttlSeconds: 366 * 86_400 },
      "instance=I-new": { instance: "I-new" },
      "instance=i_new": { instance: "i_new" },
    },
  }),
  r("GET /v1/broker/instances", {
    query: {
      org: ["O1", "-o", "o".repeat(64), "o/s", "", MARK],
      space: ["S1", "s_1", ""],
      app: ["A1", "a.1", ""],
      state: ["all", "Running", "", MARK],
      after: ["I-1", "i_1", ""],
      limit: [...LIMIT, "0", "1001"],
    },
  }),
  r("GET /v1/broker/instances/:id", { at: { id: "$instance" } }),
  r("POST /v1/broker/instances/:id/lease", {
    at: { id: "$instance" },
    body: { ttlSeconds: 600 },
    required: ["ttlSeconds"],
    extra: { "ttlSeconds=9": { ttlSeconds: 9 }, "ttlSeconds=366 days": { ttlSeconds: 366 * 86_400 } },
  }),
  r("DELETE /v1/broker/instances/:id", { body: NONE, at: { id: "$instance" } }),
  r("POST /v1/broker/exchange", {
    who: "public",
    body: { token: MARK, instance: "i1", csr: "x" },
    required: ["token", "instance", "csr"],
  }),
  r("POST /v1/broker/renew", { who: "instance", body: { csr: "x" }, required: ["csr"] }),
  r("POST /v1/broker/jwt", { who: "instance", body: NONE }),
  r("GET /v1/broker/secrets", { who: "instance" }),
  r("GET /v1/broker/secrets/*", { who: "instance", at: { "*": "db" }, wild: "instance-secret" }),
  r("GET /v1/broker/whoami", { who: "instance" }),
  r("GET /v1/broker/jwks", { who: "public" }),
  r("POST /v1/broker/introspect", { who: "public", body: { token: MARK }, required: ["token"] }),
  // ---- SSH CA
  r("GET /v1/ssh/ca", { who: "public" }),
  r("GET /v1/ssh/trusted-user-ca-keys", { who: "public" }),
  r("GET /v1/ssh/known-hosts", { who: "public" }),
  r("GET /v1/ssh/krl", { who: "public" }),
  r("POST /v1/ssh/sign", {
    body: {
      role: "ops",
      publicKey: "$sshKey",
      principals: ["deploy"],
      ttlSeconds: 60,
      extensions: ["permit-pty"],
      criticalOptions: { "source-address": "10.0.0.0/8" },
    },
    required: ["role", "publicKey"],
    extra: {
      "publicKey=truncated": { publicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5" },
      "publicKey=type only": { publicKey: "ssh-ed25519" },
      "publicKey=ssh-dss": { publicKey: "ssh-dss AAAAB3NzaC1kc3MAAACBAP" },
      "publicKey=two lines": { publicKey: "$sshKey\n$sshKey" },
      "extensions=[unknown]": { extensions: ["permit-everything"] },
      "criticalOptions=unknown": { criticalOptions: { bogus: "x" } },
      "criticalOptions source-address=host bits": { criticalOptions: { "source-address": "10.0.0.1/8" } },
      "criticalOptions source-address=garbage": { criticalOptions: { "source-address": "not an address" } },
      "role=unknown": { role: "nope" },
    },
    expect: {
      "ttlSeconds:=1e308": "ttl_too_long",
      "role=unknown": ["not_found", "invalid_request"],
      "role:=100KB": ["invalid_request", "not_found"],
      "publicKey=ssh-dss": ["invalid_request", "key_type_not_allowed"],
      "extensions=[unknown]": ["invalid_request", "extension_not_allowed"],
      "extensions:=[100KB]": ["invalid_request", "extension_not_allowed"],
      "criticalOptions=unknown": ["invalid_request", "option_not_allowed"],
    },
  }),
  r("GET /v1/ssh/certificates", { query: { status: ["good", "VALID", "", MARK], limit: [...LIMIT, "0"] } }),
  r("GET /v1/ssh/certificates/:serial", { at: { serial: "$sshSerial" } }),
  r("POST /v1/ssh/revoke", {
    body: { serial: "$sshSerial", reason: "lost" },
    extra: {
      "neither serial nor publicKey": { serial: undefined },
      "serial and publicKey": { publicKey: "$sshKey" },
      "serial=0": { serial: "0" },
      "serial=2^64": { serial: "18446744073709551616" },
      "publicKey=the user CA's own": { serial: undefined, publicKey: "$userCa" },
      "publicKey=the host CA's own": { serial: undefined, publicKey: "$hostCa" },
      "publicKey=garbage": { serial: undefined, publicKey: "ssh-ed25519 AAAA" },
    },
    expect: { "serial=2^64": ["invalid_request", "not_found"] },
  }),
  r("GET /v1/ssh/roles"),
  r("GET /v1/ssh/roles/:name", { at: { name: "ops" } }),
  r("PUT /v1/ssh/roles/:name", {
    at: { name: "ops" },
    body: {
      certType: "user",
      principals: ["deploy"],
      selfService: false,
      ttlSeconds: 300,
      maxTtlSeconds: 3600,
      extensions: ["permit-pty"],
      allowedExtensions: ["permit-pty"],
      criticalOptions: { "source-address": "10.0.0.0/8" },
      allowedCriticalOptions: ["force-command"],
      keyTypes: { ed25519: 256, ecdsa: 256, rsa: 3072 },
    },
    required: ["certType", "principals"],
    extra: {
      "certType=admin": { certType: "admin" },
      "principals=[]": { principals: [] },
      "principals=257": { principals: Array.from({ length: 257 }, (_, i) => `p${i}`) },
      "maxTtlSeconds=367 days": { maxTtlSeconds: 367 * 86_400 },
      "ttlSeconds above maxTtlSeconds": { ttlSeconds: 7200 },
      "keyTypes.rsa=1024": { keyTypes: { rsa: 1024 } },
      "keyTypes.dsa": { keyTypes: { dsa: 1024 } },
      "keyTypes.ecdsa=300": { keyTypes: { ecdsa: 300 } },
      "selfService with a literal": { selfService: true },
      "extensions=[unknown]": { extensions: ["permit-everything"], allowedExtensions: [] },
      "allowedCriticalOptions=[unknown]": { allowedCriticalOptions: ["bogus"] },
      "host role with extensions": { certType: "host", principals: ["h.example.com"] },
      "template=unknown": { principals: ["{{nope}}"] },
    },
  }),
  r("DELETE /v1/ssh/roles/:name", { body: NONE, at: { name: "ops" } }),
  r("POST /v1/ssh/sudo", {
    body: { org: "o1", space: "s1", app: "a1", user: "u1", ttlSeconds: 600, reason: "because", account: "root" },
    required: ["org", "space", "app", "ttlSeconds", "reason"],
    allow: ["missing:user"],
    extra: {
      "user and group": { group: "g1" },
      "ttlSeconds=59": { ttlSeconds: 59 },
      "ttlSeconds=86401": { ttlSeconds: 86_401 },
      "account=Root!": { account: "Root!" },
      "account=a b": { account: "a b" },
      "account=-rf": { account: "-rf" },
      "account=33 chars": { account: "a".repeat(33) },
      "reason=blank": { reason: "   " },
    },
  }),
  r("GET /v1/ssh/sudo", { query: { active: BOOL } }),
  r("DELETE /v1/ssh/sudo/:id", { body: NONE, at: { id: "$sshSudo" } }),
];

// ---- mutations -------------------------------------------------------------------------

interface Mutation {
  readonly label: string;
  /** The bytes sent; undefined: no body. */
  readonly raw?: string | Buffer;
  /** Content-Type; null: none. */
  readonly type?: string | null;
  readonly headers?: OutgoingHttpHeaders;
  readonly want: Code;
  /** What the message must name. */
  readonly names?: string;
  /** A query string put after the route's path. */
  readonly query?: string;
}

type Kind = "string" | "integer" | "boolean" | "array" | "object";

function kindOf(v: unknown): Kind {
  if (typeof v === "string") return "string";
  if (typeof v === "number") return "integer";
  if (typeof v === "boolean") return "boolean";
  if (Array.isArray(v)) return "array";
  return "object";
}

/** Values of the wrong JSON type for a member of `kind`. */
function wrongTypes(kind: Kind, example: unknown): [string, unknown][] {
  const all: Record<Kind, [string, unknown][]> = {
    string: [
      ["42", 42],
      ["true", true],
      ["[]", []],
      ["{}", {}],
    ],
    integer: [
      ['"1"', "1"],
      ["1.5", 1.5],
      ["true", true],
      ["[]", []],
      ["{}", {}],
    ],
    boolean: [
      ['"true"', "true"],
      ["1", 1],
      ["[]", []],
      ["{}", {}],
    ],
    array: [
      ['"x"', "x"],
      ["{}", {}],
      ["1", 1],
    ],
    object: [
      ["[]", []],
      ['"x"', "x"],
      ["1", 1],
    ],
  };
  const out = [...all[kind], ["null", null] as [string, unknown]];
  if (kind === "array" && Array.isArray(example) && example.length > 0) {
    const first = example[0];
    const element: Record<Kind, [string, unknown]> = {
      string: ["[42]", [42]],
      integer: ['["1"]', ["1"]],
      boolean: ['["x"]', ["x"]],
      array: ['["x"]', ["x"]],
      object: ['["x"]', ["x"]],
    };
    out.push(element[kindOf(first)], ["[null]", [null]]);
    if (typeof first === "string") out.push(["[100KB]", [HUNDRED_KB]]);
    if (typeof first === "number") out.push(["[1e308]", [1e308]], ["[-1]", [-1]]);
    out.push(["[1001 items]", Array.from({ length: 1001 }, () => first)]);
  }
  if (kind === "object" && example !== null && typeof example === "object") {
    const values = Object.values(example);
    if (values.every((v) => typeof v === "string")) {
      out.push(['{"a":1}', { a: 1 }], ['{"a":null}', { a: null }], ['{"a":{}}', { a: {} }]);
      out.push(["{1000 members}", Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`k${i}`, "v"]))]);
    } else if (values.every((v) => typeof v === "number")) {
      out.push(['{"…":"1"}', Object.fromEntries(Object.keys(example).map((k) => [k, "1"]))]);
    }
  }
  return out;
}

/** A number no example holds: where it stands in a body's text, `1e400` goes (JSON.stringify can't write it). */
const SENTINEL = 7_654_321.5;

/**
 * The mutations of each member of `example` (the body, or an object nested in it at
 * `where`), the rest left well-formed; `wrap` puts a mutated object back into the body.
 */
function memberMutations(route: Route, example: Json, wrap: (inner: Json) => Json, where: string): Mutation[] {
  const out: Mutation[] = [];
  const json = (label: string, inner: Json, names?: string): Mutation => ({
    label: `${where}${label}`,
    raw: JSON.stringify(wrap(inner)),
    want: "invalid_request",
    ...(names !== undefined ? { names } : {}),
  });
  if (where !== "") out.push(json("unknown-member", { ...example, [UNKNOWN]: 1 }, UNKNOWN));
  for (const required of route.required ?? []) {
    if (!required.startsWith(where) || required.slice(where.length).includes(".")) continue;
    const field = required.slice(where.length);
    const { [field]: _gone, ...rest } = example;
    out.push(json(`missing:${field}`, rest, field));
  }
  for (const [field, value] of Object.entries(example)) {
    const path = `${where}${field}`;
    const kind = kindOf(value);
    const set = (label: string, bad: unknown, names?: string) =>
      out.push(json(`${field}:=${label}`, { ...example, [field]: bad }, names));
    for (const [label, bad] of wrongTypes(kind, value)) {
      if (bad === null && route.nullable?.includes(path)) continue;
      set(label, bad, field);
    }
    if (kind === "string") {
      set("''", "");
      set("100KB", HUNDRED_KB);
    }
    if (kind === "integer") {
      set("-1", -1);
      set("1e308", 1e308);
      out.push({
        label: `${path}:=1e400`,
        raw: JSON.stringify(wrap({ ...example, [field]: SENTINEL })).replace(String(SENTINEL), "1e400"),
        want: "invalid_request",
      });
    }
    if (route.base64?.includes(path)) {
      for (const bad of ["%%%%", "aGk", "aGl=", "aR==", "aGk=\n", "aG k=", "a-_b", "aGk==", "=aGk"])
        set(JSON.stringify(bad), bad, field);
    }
    // Objects inside: an array's first element, and objects that are not string maps (those take any member name).
    const first = Array.isArray(value) ? value[0] : undefined;
    if (kindOf(first) === "object" && first !== null && first !== undefined) {
      const rest = (value as unknown[]).slice(1);
      out.push(
        ...memberMutations(
          route,
          first as Json,
          (inner) => wrap({ ...example, [field]: [inner, ...rest] }),
          `${path}[0].`,
        ),
      );
    } else if (
      kind === "object" &&
      value !== null &&
      !Object.values(value as Json).every((v) => typeof v === "string")
    ) {
      out.push(...memberMutations(route, value as Json, (inner) => wrap({ ...example, [field]: inner }), `${path}.`));
    }
  }
  return out;
}

/** The malformed bodies of a route that takes one. */
function bodyMutations(route: Route, body: Json): Mutation[] {
  const json = (label: string, value: unknown, names?: string): Mutation => ({
    label,
    raw: JSON.stringify(value),
    want: "invalid_request",
    ...(names !== undefined ? { names } : {}),
  });
  const text = JSON.stringify(body);
  const firstString = Object.entries(body).find(([, v]) => typeof v === "string")?.[0];
  const out: Mutation[] = [
    { label: "body=empty", raw: "", want: "invalid_request" },
    json("body=[]", []),
    json("body=[body]", [body]),
    json('body="x"', "x"),
    json("body=1", 1),
    json("body=null", null),
    json("body=true", true),
    { label: "json:truncated", raw: text.slice(0, -1), want: "invalid_request" },
    { label: "json:trailing-comma", raw: `${text.slice(0, -1)},}`, want: "invalid_request" },
    { label: "json:single-quotes", raw: text.replaceAll('"', "'"), want: "invalid_request" },
    { label: "json:unquoted-names", raw: text.replace(/"([A-Za-z]+)":/g, "$1:"), want: "invalid_request" },
    { label: "json:trailing-garbage", raw: `${text} x`, want: "invalid_request" },
    { label: "json:two-objects", raw: `${text}${text}`, want: "invalid_request" },
    { label: "json:NaN", raw: `{"${Object.keys(body)[0]}":NaN}`, want: "invalid_request" },
    { label: "json:comment", raw: `/* c */${text}`, want: "invalid_request" },
    {
      label: "utf8:invalid-byte",
      raw: Buffer.concat([Buffer.from(`{"${UNKNOWN}":"`), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]),
      want: "invalid_request",
    },
    {
      label: "utf8:overlong-nul",
      raw: Buffer.concat([Buffer.from(`{"${UNKNOWN}":"`), Buffer.from([0xc0, 0x80]), Buffer.from('"}')]),
      want: "invalid_request",
    },
    {
      label: "utf16:lone-surrogate",
      raw:
        firstString !== undefined
          ? JSON.stringify({ ...body, [firstString]: "@@" }).replace('"@@"', '"a\\ud800b"')
          : `{"\\udfff":1}`,
      want: "invalid_request",
      names: "surrogate",
    },
    { label: "member:__proto__", raw: `{"__proto__":{"isAdmin":true},${text.slice(1)}`, want: "invalid_request" },
    {
      label: "member:constructor.prototype",
      raw: `{"constructor":{"prototype":{"isAdmin":true}},${text.slice(1)}`,
      want: "invalid_request",
    },
    {
      label: "json:deep-nesting",
      raw: `{"${UNKNOWN}":${"[".repeat(100_000)}${"]".repeat(100_000)}}`,
      want: "invalid_request",
    },
    { label: "type:text/plain", raw: text, type: "text/plain", want: "invalid_request" },
    {
      label: "type:form",
      raw: "name=x&purpose=encrypt",
      type: "application/x-www-form-urlencoded",
      want: "invalid_request",
      names: "application/json",
    },
    {
      // Only POST /v1/pki/ocsp reads this type; every other route refuses it like any type but JSON.
      label: "type:application/ocsp-request",
      raw: text,
      type: "application/ocsp-request",
      want: "invalid_request",
      names: "application/json",
    },
    { label: "type:none", raw: text, type: null, want: "invalid_request", names: "application/json" },
    {
      label: "encoding:gzip",
      raw: gzipSync(text),
      headers: { "content-encoding": "gzip" },
      want: "invalid_request",
      names: "gzip",
    },
    {
      label: "size:1.1MiB",
      raw: JSON.stringify({ ...body, [firstString ?? UNKNOWN]: "A".repeat(1_150_000) }),
      want: "payload_too_large",
    },
    json("unknown-member", { ...body, [UNKNOWN]: 1 }, UNKNOWN),
    json("unknown-member:100KB name", { ...body, [`${UNKNOWN}${HUNDRED_KB}`]: 1 }, UNKNOWN),
  ];
  // A PATCH changes something: an empty one is a mistake, not a no-op.
  if (route.method === "PATCH") out.push(json("body={}", {}));
  out.push(...memberMutations(route, body, (inner) => inner, ""));
  for (const [label, override] of Object.entries(route.extra ?? {})) out.push(json(label, { ...body, ...override }));
  return out.filter((m) => !route.allow?.includes(m.label));
}

/** A POST or DELETE that takes no body: anything but none or `{}` is refused. */
function noBodyMutations(): Mutation[] {
  return [
    { label: "body={x}", raw: JSON.stringify({ [UNKNOWN]: true }), want: "invalid_request", names: UNKNOWN },
    { label: "body=[]", raw: "[]", want: "invalid_request" },
    { label: "body=null", raw: "null", want: "invalid_request" },
    { label: 'body="x"', raw: '"x"', want: "invalid_request" },
    { label: "json:broken", raw: "{", want: "invalid_request" },
    { label: "type:text/plain", raw: "hello", type: "text/plain", want: "invalid_request" },
    { label: "utf16:lone-surrogate", raw: '{"\\ud800":1}', want: "invalid_request", names: "surrogate" },
    {
      label: "size:1.1MiB",
      raw: JSON.stringify({ [UNKNOWN]: "A".repeat(1_150_000) }),
      want: "payload_too_large",
    },
  ];
}

/** Malformed query strings: a parameter the route doesn't read, and the bad values of those it does. */
function queryMutations(route: Route): Mutation[] {
  const out: Mutation[] = [
    { label: `query:${UNKNOWN}`, query: `?${UNKNOWN}=1`, want: "invalid_request", names: UNKNOWN },
    { label: "query:secret-valued unknown", query: `?token=${MARK}`, want: "invalid_request", names: "token" },
  ];
  for (const [name, values] of Object.entries(route.query ?? {})) {
    for (const value of values) {
      const shown = value.length > 20 ? `${value.slice(0, 8)}…(${value.length})` : value;
      out.push({
        label: `query:${name}=${shown}`,
        query: `?${name}=${encodeURIComponent(value)}`,
        want: "invalid_request",
      });
    }
    out.push({ label: `query:${name} twice`, query: `?${name}=1&${name}=2`, want: "invalid_request" });
    out.push({ label: `query:${name}[]`, query: `?${name}[]=1`, want: "invalid_request" });
  }
  return out;
}

/** Malformed values of a named path parameter (already percent-encoded as they go on the wire). */
const BAD_PARAMS = [
  "..",
  "%2e%2e",
  ".",
  "a%00b",
  "%00",
  "a%2Fb",
  "a%5Cb",
  "%C3%A9t%C3%A9",
  "%F0%9F%94%91",
  "%ED%A0%80",
  "%FF",
  "%zz",
  "a%",
  "a%20b",
  "a%0Ab",
  "-a",
  "x".repeat(129),
  "x".repeat(1100),
];

/** Malformed wildcard paths, by kind of wildcard. */
const BAD_WILD: Record<NonNullable<Route["wild"]>, readonly string[]> = {
  secret: [
    "o1/s1/a1/..",
    "o1/s1/a1/.",
    "o1/s1/a1/../../../../etc/passwd",
    "../../../etc/passwd",
    "o1/s1/../s1/a1/db",
    "o1/s1/a1/a%00b",
    "o1/s1/a1/%C3%A9",
    "o1/s1/a1/%ED%A0%80",
    "o1/s1/a1/%zz",
    "o1/s1/a1/",
    "o1/s1/a1//db",
    "o1/s1/a1",
    `o1/s1/a1/${"x".repeat(300)}`,
    `o1/s1/a1/${"a/".repeat(9)}b`,
    "O1/s1/a1/db",
    "shared",
    "shared/",
    "shared/../o1/s1/a1/db",
  ],
  prefix: [
    "o1/s1/a1/..",
    "../../../etc",
    "o1/s1",
    "o1/s1/a1/%00",
    "o1/s1/a1/%ED%A0%80",
    "shared/..",
    `o1/s1/a1/${"x".repeat(300)}`,
  ],
  grant: ["o1/s1/a1/db", "shared/..", "shared/a%00b", "shared/%ED%A0%80", "../shared/x", `shared/${"x".repeat(300)}`],
  "instance-secret": ["..", "../../etc/passwd", "a%00b", "%ED%A0%80"],
};

// ---- the oracle ----------------------------------------------------------------------------

/** What a refusal must not contain: a stack, a source or install path, a secret sent, the server's own directories. */
function leaks(message: string, dataDir: string): string | null {
  const patterns: [string, RegExp][] = [
    ["a stack frame", /\bat .+:\d+:\d+|\n\s+at /],
    ["a source path", /\.(?:ts|js|mjs|cjs)\b(?::\d+)?/],
    ["node_modules", /node_modules/],
    ["a JavaScript error name", /\b(?:TypeError|ReferenceError|RangeError|SyntaxError|Error):/],
    ["a property read of nothing", /Cannot read prop|undefined is not|is not a function/],
    ["SQLite", /SQLITE|sqlite/],
    ["a PKCS#11 code", /CKR_/],
    ["an absolute path", /(?:^|[\s"'(])\/(?:tmp|usr|home|var|etc|root|proc|opt)\//],
  ];
  for (const [what, re] of patterns) if (re.test(message)) return what;
  if (message.includes(dataDir) || message.includes(tmpdir())) return "the server's directory";
  if (message.includes(MARK)) return "a secret that was sent";
  return null;
}

describe("bad input on every HTTP API route", () => {
  let custos: CustosInstance;
  let db: Database.Database;
  const fixtures: Record<string, string> = {};

  const resolve = (value: string): string => (value.startsWith("$") ? (fixtures[value.slice(1)] ?? value) : value);
  const resolveBody = (body: Json): Json =>
    JSON.parse(JSON.stringify(body), (_k, v: unknown) => (typeof v === "string" ? resolve(v) : v)) as Json;
  const pathOf = (route: Route, at: Readonly<Record<string, string>> = route.at ?? {}): string =>
    route.template.replace(/:([A-Za-z]+)|\*$/g, (whole, name: string | undefined) =>
      resolve(at[name ?? whole] ?? whole),
    );

  /** One request, exactly as given; a request that gets no answer in 30 s fails as a hang. */
  async function send(
    method: string,
    path: string,
    o: {
      raw?: string | Buffer | undefined;
      type?: string | null;
      headers?: OutgoingHttpHeaders;
      bearer?: string | null;
    } = {},
  ): Promise<Answer> {
    const bearer = o.bearer === undefined ? custos.adminToken : o.bearer;
    const headers: OutgoingHttpHeaders = {
      ...(bearer ? { authorization: `Bearer ${bearer}` } : {}),
      ...(o.raw !== undefined ? { "content-length": Buffer.byteLength(o.raw) } : {}),
      ...(o.raw !== undefined && o.type !== null ? { "content-type": o.type ?? "application/json" } : {}),
      ...o.headers,
    };
    let timer: NodeJS.Timeout | undefined;
    const hang = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${method} ${path.slice(0, 120)}: no answer in 30 s`)), 30_000);
    });
    try {
      return await Promise.race([
        httpsRaw({ port: custos.port, ca: custos.ca, method, path, headers, body: o.raw }),
        hang,
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * What is wrong with `a` as the refusal `want` (a code or a set of them), or null: the
   * status of the code, exactly the documented shape, a message naming `names` and
   * leaking nothing, the headers every answer carries, and one audit record.
   */
  function problemWith(a: Answer, want: Code | readonly Code[], names?: string): string | null {
    const wanted = ([] as Code[]).concat(want);
    const body = a.body as { error?: { code?: unknown; message?: unknown } } | null;
    const code = body?.error?.code;
    if (typeof code !== "string" || !wanted.includes(code as Code)) {
      return `answered ${a.status} ${a.text.slice(0, 300)}, not ${wanted.join(" or ")}`;
    }
    if (a.status !== STATUS[code as Code]) return `${code} came with HTTP ${a.status}`;
    if (body === null || JSON.stringify(Object.keys(body)) !== '["error"]')
      return `not the error shape: ${a.text.slice(0, 200)}`;
    const error = body.error as Json;
    if (JSON.stringify(Object.keys(error).sort()) !== '["code","message"]')
      return `error members: ${Object.keys(error)}`;
    const message = error.message;
    if (typeof message !== "string" || message.trim() === "") return "no message";
    if (message.length > 1024) return `a message of ${message.length} characters`;
    const leak = leaks(message, custos.dir);
    if (leak) return `the message holds ${leak}: ${message.slice(0, 200)}`;
    // "principal must be …" names the member `principals`.
    if (names !== undefined && !message.toLowerCase().includes(names.toLowerCase().replace(/s$/, ""))) {
      return `the message does not name ${JSON.stringify(names)}: ${message.slice(0, 200)}`;
    }
    if (!String(a.headers["content-type"]).startsWith("application/json"))
      return `content-type ${a.headers["content-type"]}`;
    if (a.headers["cache-control"] !== "no-store") return `cache-control ${a.headers["cache-control"]}`;
    const id = a.headers["x-request-id"];
    if (typeof id !== "string" || !/^[0-9a-f-]{36}$/.test(id)) return `x-request-id ${id}`;
    if (a.status === 401 && !String(a.headers["www-authenticate"]).startsWith('Bearer realm="custos"')) {
      return `a 401 with www-authenticate ${a.headers["www-authenticate"]}`;
    }
    const records = db
      .prepare("SELECT outcome, error_code, details, resource FROM audit_log WHERE request_id = ?")
      .all(id) as { outcome: string; error_code: string | null; details: string; resource: string }[];
    if (records.length !== 1) return `${records.length} audit records`;
    const [record] = records;
    if (record?.error_code !== code || !["failure", "denied"].includes(record.outcome)) {
      return `audited as ${record?.outcome} ${record?.error_code}`;
    }
    if (record.details.includes(MARK) || record.resource.includes(MARK))
      return "the audit record holds a secret that was sent";
    return null;
  }

  /** Every table but the audit log's, row by row. */
  function state(): string {
    const tables = db
      .prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN ('audit_log', 'audit_checkpoints') ORDER BY name",
      )
      .all() as { name: string }[];
    return JSON.stringify(
      tables.map(({ name }) => [
        name,
        (db.prepare(`SELECT * FROM "${name}"`).all() as unknown[]).map((row) => JSON.stringify(row)).sort(),
      ]),
    );
  }

  /** The changes between two states, table by table (for a failure's message). */
  function changes(before: string, after: string): string {
    const a = new Map(JSON.parse(before) as [string, string[]][]);
    const b = new Map(JSON.parse(after) as [string, string[]][]);
    const out: string[] = [];
    for (const [table, rows] of b) {
      const was = new Set(a.get(table) ?? []);
      const now = new Set(rows);
      const added = rows.filter((row) => !was.has(row));
      const gone = [...was].filter((row) => !now.has(row));
      if (added.length + gone.length > 0)
        out.push(`${table}: +${added.join(" +").slice(0, 300)} -${gone.join(" -").slice(0, 300)}`);
    }
    return out.join("\n");
  }

  /** A GET whose answer is bytes (OCSP), untouched. */
  async function fetchBytes(path: string): Promise<{ status: number; type: string; body: Buffer }> {
    const a = await fetchRaw(custos, path);
    return { status: a.status, type: a.type, body: a.body };
  }

  function mutationsOf(route: Route): Mutation[] {
    const out: Mutation[] = [];
    if (route.body === NONE) out.push(...noBodyMutations());
    else if (route.body !== undefined) out.push(...bodyMutations(route, resolveBody(route.body)));
    out.push(...queryMutations(route));
    return out.filter((m) => route.bugs?.[m.label] === undefined);
  }

  async function run(route: Route, m: Mutation): Promise<string | null> {
    const path = `${pathOf(route)}${m.query ?? ""}`;
    // A mutation of the query alone keeps the route's well-formed body (or none).
    const keepsBody = m.raw === undefined && route.body !== undefined && route.body !== NONE;
    // A fixture named in a mutated body (`"$sshKey"`) goes in as its JSON string content.
    const fill = (text: string) =>
      text.replace(/\$([A-Za-z]+)/g, (whole, name: string) =>
        fixtures[name] === undefined ? whole : JSON.stringify(fixtures[name]).slice(1, -1),
      );
    const raw = keepsBody
      ? JSON.stringify(resolveBody(route.body as Json))
      : typeof m.raw === "string"
        ? fill(m.raw)
        : m.raw;
    const a = await send(route.method, path, {
      raw,
      ...(m.type !== undefined ? { type: m.type } : {}),
      ...(m.headers ? { headers: m.headers } : {}),
      bearer: route.who === "admin" ? custos.adminToken : null,
    });
    const want = route.expect?.[m.label] ?? m.want;
    return problemWith(a, want, m.names);
  }

  before(async () => {
    custos = await startCustos({ auth: { loginAttemptsPerMinute: 10_000 } });
    db = new Database(join(custos.dir, "custos.db"), { readonly: true, fileMustExist: true });
    const call = async (method: string, path: string, body: unknown, status = 200) =>
      ok(await custos.call(method, path, body), status);
    await call("POST", "/v1/keys", { name: "k", purpose: "encrypt" }, 201);
    await call("POST", "/v1/keys", { name: "s", purpose: "sign" }, 201);
    fixtures.ciphertext = String(
      (await call("POST", "/v1/keys/k/encrypt", { plaintext: "aGk=", context: { app: "a" } })).ciphertext,
    );
    await call("PUT", "/v1/policies/p1", { rules: [{ resource: "key/*", actions: ["key:read"] }] });
    await call("POST", "/v1/users", { name: "u1", password: pw }, 201);
    await call("POST", "/v1/groups", { name: "g1", members: ["u1"] }, 201);
    fixtures.token = String((await call("POST", "/v1/auth/tokens", { name: "t1" }, 201)).id);
    fixtures.sudo = String(
      (
        await call(
          "POST",
          "/v1/sudo/grants",
          { user: "u1", ttlSeconds: 3600, reason: "fixture", policies: ["p1"] },
          201,
        )
      ).id,
    );
    await call("POST", "/v1/platform/orgs", { name: "o1" }, 201);
    await call("POST", "/v1/platform/orgs/o1/spaces", { name: "s1" }, 201);
    await call("POST", "/v1/platform/orgs/o1/spaces/s1/apps", { name: "a1" }, 201);
    await call("PUT", "/v1/secrets/data/o1/s1/a1/db", { value: "fixture value" });
    await call("PUT", "/v1/secrets/data/shared/x", { value: "fixture value" });
    await call("PUT", "/v1/pki/roles/web", {
      dnsNames: ["*.example.com"],
      ipRanges: ["10.0.0.0/8"],
      uris: ["spiffe://custos/*"],
      maxTtlSeconds: 86_400,
    });
    const keyFile = join(custos.dir, "review-csr.key");
    writeFileSync(
      keyFile,
      generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ format: "pem", type: "pkcs8" }),
    );
    const csr = spawnSync("openssl", [
      "req",
      "-new",
      "-key",
      keyFile,
      "-subj",
      "/CN=a.example.com",
      "-addext",
      "subjectAltName=DNS:a.example.com",
    ]);
    assert.equal(csr.status, 0, csr.stderr.toString());
    fixtures.csr = csr.stdout.toString();
    fixtures.serial = String((await call("POST", "/v1/pki/roles/web/issue", { dnsNames: ["a.example.com"] })).serial);
    await call("PUT", "/v1/pki/consumers/c1", { role: "web", dnsNames: ["c1.example.com"] });
    fixtures.instance = String(
      (await call("POST", "/v1/broker/instances", { org: "o1", space: "s1", app: "a1", instance: "i1" }, 201)).instance,
    );
    await call("PUT", "/v1/ssh/roles/ops", {
      certType: "user",
      principals: ["deploy"],
      allowedCriticalOptions: ["source-address"],
    });
    const u32 = (n: number) => Buffer.from([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
    const key = generateKeyPairSync("ed25519").publicKey.export({ format: "der", type: "spki" }).subarray(-32);
    const wire = Buffer.concat([u32(11), Buffer.from("ssh-ed25519"), u32(32), key]);
    fixtures.sshKey = `ssh-ed25519 ${wire.toString("base64")} review`;
    fixtures.sshSerial = String(
      (await call("POST", "/v1/ssh/sign", { role: "ops", publicKey: fixtures.sshKey, principals: ["deploy"] })).serial,
    );
    const cas = ok(await custos.call("GET", "/v1/ssh/ca", undefined, null)) as {
      user: { publicKey: string }[];
      host: { publicKey: string }[];
    };
    fixtures.userCa = cas.user[0]?.publicKey ?? "";
    fixtures.hostCa = cas.host[0]?.publicKey ?? "";
    fixtures.sshSudo = String(
      (
        await call(
          "POST",
          "/v1/ssh/sudo",
          { org: "o1", space: "s1", app: "a1", user: "u1", ttlSeconds: 3600, reason: "fixture" },
          201,
        )
      ).id,
    );
  });
  after(async () => {
    db?.close();
    await custos?.dispose();
  });

  test("the table holds every route the OpenAPI document lists (and the OCSP routes are tested on their own below)", async () => {
    const docs = ok(await send("GET", "/v1/docs", { bearer: null })) as {
      paths: Record<string, Record<string, unknown>>;
    };
    const listed = Object.entries(docs.paths).flatMap(([path, ops]) =>
      Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`),
    );
    const wildcards: Record<string, string> = { "/v1/pki/ocsp/*": "{request}" };
    const ours = new Set(
      ROUTES.map(
        (x) =>
          `${x.method} ${x.template.replace(/:([A-Za-z]+)/g, "{$1}").replace(/\*$/, wildcards[x.template] ?? "{path}")}`,
      ),
    );
    for (const ocsp of ["POST /v1/pki/ocsp", "GET /v1/pki/ocsp/{request}"]) ours.add(ocsp);
    assert.ok(listed.length > 100, `${listed.length} operations`);
    assert.deepEqual(listed.filter((op) => !ours.has(op)).sort(), [], "routes without a row");
    assert.deepEqual(
      [...ours].filter((op) => !listed.includes(op) && op !== "GET /v1/docs").sort(),
      [],
      "rows without a route",
    );
  });

  test("a method a path does not take is not_found, in the error shape, and does nothing", async () => {
    const before = state();
    const problems: string[] = [];
    const byPath = new Map<string, Route[]>();
    for (const x of ROUTES) byPath.set(x.template, [...(byPath.get(x.template) ?? []), x]);
    for (const [template, routes] of byPath) {
      const taken = new Set(routes.map((x) => x.method));
      const [first] = routes;
      if (first === undefined) continue;
      for (const method of ["GET", "POST", "PUT", "PATCH", "DELETE"].filter((m) => !taken.has(m))) {
        const a = await send(method, pathOf(first), { raw: method === "GET" ? undefined : "{}" });
        const problem = problemWith(a, "not_found");
        if (problem) problems.push(`${method} ${template}: ${problem}`);
      }
    }
    assert.deepEqual(problems, []);
    assert.equal(state(), before);
  });

  describe("malformed bodies and query strings, route by route", () => {
    for (const route of ROUTES) {
      test(`${route.method} ${route.template}${route.body !== undefined && route.body !== NONE && "items" in route.body ? " (batch)" : ""}`, async () => {
        const before = state();
        const problems: string[] = [];
        const mutations = mutationsOf(route);
        assert.ok(mutations.length >= 2, "every route has malformed input to refuse");
        for (const m of mutations) {
          const problem = await run(route, m);
          if (problem) problems.push(`${m.label}: ${problem}`);
        }
        assert.deepEqual(problems, [], `${problems.length} of ${mutations.length} malformed requests`);
        const now = state();
        assert.equal(now, before, `refused requests changed the store:\n${changes(before, now)}`);
      });
      for (const [label, todo] of Object.entries(route.bugs ?? {})) {
        test(`${route.method} ${route.template}: ${label}`, { todo }, async () => {
          const body = route.body === NONE || route.body === undefined ? {} : resolveBody(route.body);
          const m = [...bodyMutations(route, body), ...noBodyMutations()].find((x) => x.label === label);
          assert.ok(m, label);
          const before = state();
          assert.equal(await run(route, m), null);
          assert.equal(state(), before, "a refused request changed the store");
        });
      }
    }
  });

  describe("malformed path parameters: a 400 or a 404, never a 500, and nothing written", () => {
    for (const route of ROUTES.filter((x) => x.at !== undefined)) {
      test(`${route.method} ${route.template}`, async () => {
        const before = state();
        const problems: string[] = [];
        const at = route.at ?? {};
        const cases: [string, Record<string, string>][] = [];
        for (const name of Object.keys(at)) {
          const bad = name === "*" ? BAD_WILD[route.wild ?? "secret"] : BAD_PARAMS;
          for (const value of bad)
            cases.push([
              `${name}=${value.length > 40 ? `${value.slice(0, 12)}…(${value.length})` : value}`,
              { ...at, [name]: value },
            ]);
        }
        // The route's instance credential is checked after its path: an unknown or malformed path may say so first.
        const want: Code[] =
          route.who === "instance"
            ? ["invalid_request", "not_found", "unauthenticated"]
            : ["invalid_request", "not_found"];
        for (const [label, values] of cases) {
          const body =
            route.body === undefined || route.body === NONE ? undefined : JSON.stringify(resolveBody(route.body));
          const a = await send(route.method, pathOf(route, values), {
            raw: body,
            bearer: route.who === "admin" ? custos.adminToken : null,
          });
          const problem = problemWith(a, want);
          if (problem) problems.push(`${label}: ${problem}`);
        }
        assert.deepEqual(problems, [], `${problems.length} of ${cases.length} malformed paths`);
        const now = state();
        assert.equal(now, before, `refused requests changed the store:\n${changes(before, now)}`);
      });
    }
  });

  describe("malformed input without credentials", () => {
    /** A body a route's schema refuses and a query string it refuses, for each route. */
    const malformed = (route: Route): { raw?: string; query: string } =>
      route.body === undefined ? { query: `?${UNKNOWN}=1` } : { raw: "{not json", query: "" };

    test("a route behind a bearer token answers 401 before it reads the body or query: no token, a bad one, another scheme", async () => {
      const problems: string[] = [];
      const before = state();
      for (const route of ROUTES.filter((x) => x.who === "admin")) {
        const { raw, query } = malformed(route);
        const path = `${pathOf(route)}${query}`;
        const cases: [string, OutgoingHttpHeaders, string][] = [
          ["no token", {}, 'Bearer realm="custos"'],
          ["an unknown token", { authorization: `Bearer cst_${MARK}` }, 'Bearer realm="custos", error="invalid_token"'],
          ["a malformed token", { authorization: "Bearer a b" }, 'Bearer realm="custos", error="invalid_token"'],
          [
            "Basic",
            { authorization: `Basic ${Buffer.from(`admin:${MARK}`).toString("base64")}` },
            'Bearer realm="custos"',
          ],
        ];
        for (const [what, headers, challenge] of cases) {
          const a = await send(route.method, path, { raw, headers, bearer: null });
          const problem = problemWith(a, "unauthenticated");
          if (problem) problems.push(`${route.method} ${route.template}, ${what}: ${problem}`);
          else if (a.headers["www-authenticate"] !== challenge) {
            problems.push(
              `${route.method} ${route.template}, ${what}: www-authenticate ${a.headers["www-authenticate"]}`,
            );
          }
        }
        if (route.body !== undefined) {
          // Not even a body past the limit is read for a request that can't be served.
          const huge = await send(route.method, pathOf(route), {
            raw: `{"a":"${"A".repeat(1_150_000)}"}`,
            bearer: null,
          });
          const problem = problemWith(huge, "unauthenticated");
          if (problem) problems.push(`${route.method} ${route.template}, an oversized body: ${problem}`);
        }
      }
      assert.deepEqual(problems, []);
      assert.equal(state(), before);
    });

    test("an instance's route checks its body and query before its credential: 400 for malformed input, 401 for well-formed", async () => {
      const problems: string[] = [];
      for (const route of ROUTES.filter((x) => x.who === "instance")) {
        const { raw, query } = malformed(route);
        const bad = await send(route.method, `${pathOf(route)}${query}`, { raw, bearer: null });
        const problem = problemWith(bad, "invalid_request");
        if (problem) problems.push(`${route.method} ${route.template} malformed: ${problem}`);
        const body =
          route.body === undefined || route.body === NONE ? undefined : JSON.stringify(resolveBody(route.body));
        for (const bearer of [null, `not.a.jwt${MARK}`]) {
          const good = await send(route.method, pathOf(route), { raw: body, bearer });
          const refusal = problemWith(good, "unauthenticated");
          if (refusal)
            problems.push(`${route.method} ${route.template} well-formed, bearer ${bearer !== null}: ${refusal}`);
        }
      }
      assert.deepEqual(problems, []);
    });

    test("a public route refuses malformed input with 400, as any route does", async () => {
      const problems: string[] = [];
      for (const route of ROUTES.filter((x) => x.who === "public")) {
        const { raw, query } = malformed(route);
        const a = await send(route.method, `${pathOf(route)}${query}`, { raw, bearer: null });
        const problem = problemWith(a, "invalid_request");
        if (problem) problems.push(`${route.method} ${route.template}: ${problem}`);
      }
      assert.deepEqual(problems, []);
    });
  });

  describe("OCSP, whose own answers are not JSON", () => {
    /** RFC 6960 4.2.1: OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED (malformedRequest = 1) }. */
    const MALFORMED = Buffer.from([0x30, 0x03, 0x0a, 0x01, 0x01]);

    test("POST /v1/pki/ocsp: garbage DER is OCSP malformedRequest, a JSON body invalid_request, past 16 KiB payload_too_large", async () => {
      for (const der of [
        Buffer.from("garbage"),
        Buffer.from([0x30, 0x80]),
        Buffer.from([0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
      ]) {
        const a = await fetchRaw(custos, "/v1/pki/ocsp", { type: "application/ocsp-request", body: der });
        assert.equal(a.status, 200, `${der.toString("hex")}: ${a.body.toString("latin1")}`);
        assert.equal(a.type, "application/ocsp-response");
        assert.deepEqual(a.body, MALFORMED, der.toString("hex"));
      }
      const json = await send("POST", "/v1/pki/ocsp", { raw: '{"request":"x"}', bearer: null });
      assert.equal(problemWith(json, "invalid_request", "application/ocsp-request"), null);
      const big = await send("POST", "/v1/pki/ocsp", {
        raw: Buffer.alloc(17 * 1024, 0x30),
        type: "application/ocsp-request",
        bearer: null,
      });
      assert.equal(problemWith(big, "payload_too_large"), null);
    });

    test("an OCSP malformedRequest answer is not cached (docs/api.md: OCSP's own error answers stay no-store)", async () => {
      const problems: string[] = [];
      for (const [what, a] of [
        [
          "POST garbage",
          await fetchRaw(custos, "/v1/pki/ocsp", { type: "application/ocsp-request", body: Buffer.from("garbage") }),
        ],
        ["GET AAAA", await fetchRaw(custos, "/v1/pki/ocsp/AAAA")],
        ["GET not base64", await fetchRaw(custos, "/v1/pki/ocsp/not-base64!")],
      ] as const) {
        assert.deepEqual(a.body, MALFORMED, what);
        if (a.headers["cache-control"] !== "no-store")
          problems.push(`${what}: cache-control ${a.headers["cache-control"]}`);
      }
      // A well-formed request about a CA that is not Custos's: OCSP `unauthorized` (6), unsigned too.
      const dir = join(custos.dir, "foreign-ca");
      const openssl = (args: string[]) => {
        const r = spawnSync("openssl", args, { cwd: custos.dir });
        assert.equal(r.status, 0, r.stderr.toString());
      };
      selfSignedCert(dir, "/CN=foreign");
      openssl(["ocsp", "-issuer", `${dir}.pem`, "-serial", "0x01", "-no_nonce", "-reqout", `${dir}.req`]);
      const foreign = await fetchRaw(custos, "/v1/pki/ocsp", {
        type: "application/ocsp-request",
        body: readFileSync(`${dir}.req`),
      });
      assert.deepEqual(foreign.body, Buffer.from([0x30, 0x03, 0x0a, 0x01, 0x06]), "unauthorized");
      if (foreign.headers["cache-control"] !== "no-store")
        problems.push(`unauthorized: cache-control ${foreign.headers["cache-control"]}`);
      assert.deepEqual(problems, []);
    });

    test("GET /v1/pki/ocsp/:request: what is not base64 DER is OCSP malformedRequest; an undecodable URL invalid_request", async () => {
      for (const request of ["not-base64!", "AAAA", "MAA%3D", "..%2F..%2Fetc", "%00"]) {
        const a = await fetchBytes(`/v1/pki/ocsp/${request}`);
        assert.equal(a.status, 200, `${request}: ${a.body.toString("latin1")}`);
        assert.equal(a.type, "application/ocsp-response", request);
        assert.deepEqual(a.body, MALFORMED, request);
      }
      for (const request of ["%zz", "%ED%A0%80"]) {
        assert.equal(
          problemWith(await send("GET", `/v1/pki/ocsp/${request}`, { bearer: null }), "invalid_request"),
          null,
          request,
        );
      }
    });
  });

  describe("after all of it", () => {
    test("a PKI role PUT with an empty application/ocsp-request body is refused and creates no role", async () => {
      const a = await send("PUT", "/v1/pki/roles/from-ocsp", { raw: "", type: "application/ocsp-request" });
      const role = await send("GET", "/v1/pki/roles/from-ocsp");
      assert.equal(role.status, 404, `a role was created: ${role.text}`);
      assert.equal(problemWith(a, "invalid_request", "application/json"), null);
    });

    test("no secret that was sent is in the database file, its WAL or the server's log", () => {
      for (const file of ["custos.db", "custos.db-wal"]) {
        const bytes = readFileSync(join(custos.dir, file));
        assert.equal(bytes.includes(MARK), false, `${file} holds a secret that was sent`);
      }
      const log = readFileSync(custos.logFile, "utf8");
      assert.equal(log.includes(MARK), false, "the server log holds a secret that was sent");
      assert.doesNotMatch(log, /"level":(?:50|60)/, "the server logged an error or a fatal");
    });

    test("the server is still healthy, and the audit log still verifies", async () => {
      const health = await send("GET", "/v1/health", { bearer: null });
      assert.equal(health.status, 200, health.text);
      const verified = ok(await custos.call("POST", "/v1/audit/verify"));
      assert.equal(verified.ok, true, JSON.stringify(verified.problems));
    });
  });
});
