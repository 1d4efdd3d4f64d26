import { isIP } from "node:net";
import { globMatch } from "../auth/index.js";
import { CustosError } from "../errors/index.js";
import { canonicalIp, inCidr, ipOctets, parseCidr } from "../net/ip.js";

/**
 * Roles: the certificate profiles callers issue under, and the checks a request
 * passes before anything is signed. Everything here is pure; the routes audit and
 * store. Syntax errors (a name that is no DNS name, IP or URI at all) are
 * `invalid_request`; well-formed names the role does not cover are
 * `name_not_allowed`, so a client can tell "fix your request" from "ask for a
 * different role".
 */

/** Key types a leaf certificate may have. */
export const KEY_TYPES = ["ec-p256", "ec-p384", "ed25519", "rsa-2048", "rsa-3072", "rsa-4096"] as const;
export type KeyType = (typeof KEY_TYPES)[number];

/** Key usages a role may grant. */
export const KEY_USAGES = ["digitalSignature", "keyEncipherment", "keyAgreement"] as const;
export type KeyUsageName = (typeof KEY_USAGES)[number];

/** Extended key usages a role may grant. */
export const EXT_KEY_USAGES = ["serverAuth", "clientAuth"] as const;
export type ExtKeyUsageName = (typeof EXT_KEY_USAGES)[number];

/** A certificate profile. Patterns are normalised (DNS lowercased, CIDRs canonical). */
export interface Role {
  readonly name: string;
  readonly dnsNames: readonly string[];
  readonly allowWildcardNames: boolean;
  readonly ipRanges: readonly string[];
  readonly uris: readonly string[];
  readonly keyUsages: readonly KeyUsageName[];
  readonly extKeyUsages: readonly ExtKeyUsageName[];
  readonly keyTypes: readonly KeyType[];
  readonly maxTtlSeconds: number;
  readonly ttlSeconds: number;
}

/** The names a caller asks for, as given. */
export interface RequestedNames {
  readonly commonName?: string;
  /**
   * True when the common name is not the caller's but taken from elsewhere (a
   * CSR's subject, the certificate renewed): one too long for a CN is then left
   * out of the subject (it stays a DNS name) instead of refused.
   */
  readonly commonNameDerived?: boolean;
  readonly dnsNames: readonly string[];
  readonly ipAddresses: readonly string[];
  readonly uris: readonly string[];
}

/**
 * Names after checkNames. `commonName` is always present, possibly undefined
 * (`RequestedNames & { commonName: string | undefined }` would narrow it to
 * `string` under exactOptionalPropertyTypes).
 */
export type CheckedNames = Omit<RequestedNames, "commonName" | "commonNameDerived"> & {
  readonly commonName: string | undefined;
};

/** RFC 5280 appendix A, ub-common-name: X520CommonName is SIZE (1..64). */
export const MAX_COMMON_NAME_LENGTH = 64;

const DAY_SECONDS = 86_400;
/** The shortest lifetime worth issuing: below it clock skew eats the certificate. */
export const MIN_TTL_SECONDS = 60;
/** No leaf outlives the root (10 years); a larger maximum can only be a mistake. */
export const MAX_ROLE_TTL_SECONDS = 10 * 365 * DAY_SECONDS;

const DEFAULTS = {
  keyUsages: ["digitalSignature", "keyEncipherment"],
  extKeyUsages: ["serverAuth"],
  keyTypes: ["ec-p256", "rsa-2048", "rsa-3072"],
  maxTtlSeconds: 30 * DAY_SECONDS,
  ttlSeconds: 7 * DAY_SECONDS,
} as const;

const ROLE_FIELDS = new Set([
  "name",
  "dnsNames",
  "allowWildcardNames",
  "ipRanges",
  "uris",
  "keyUsages",
  "extKeyUsages",
  "keyTypes",
  "maxTtlSeconds",
  "ttlSeconds",
]);

const ROLE_NAME_RE = /^[a-z0-9][a-z0-9-]{0,63}$/;
const LABEL_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const ALL_DIGITS_RE = /^[0-9]+$/;
/** RFC 3986 3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then ":". */
const URI_SCHEME_RE = /^[a-zA-Z][a-zA-Z0-9+.-]*:/;
/**
 * RFC 3986 2: unreserved (2.3) and reserved (2.2) characters, and pct-encoded
 * octets, "%" HEXDIG HEXDIG (2.1). Anything else (blanks, controls, non-ASCII,
 * '<', '>', '"', '{', '}', '|', '\', '^', '`', a lone '%') is no URI, however a
 * browser's URL parser would mend it.
 */
const URI_CHARS_RE = /^(?:[A-Za-z0-9\-._~:/?#[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+$/;
const ASCII_PRINTABLE_RE = /^[\x21-\x7e]*$/;

function invalid(message: string): CustosError {
  return new CustosError("invalid_request", message);
}

/** A refused value as a message quotes it: JSON, cut at 128 characters so a huge one isn't echoed whole. */
function show(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 128 ? `${text.slice(0, 128)}…` : text;
}

/** Validates a role name: 1-64 chars of [a-z0-9-], starting with a letter or digit. invalid_request otherwise. */
export function checkRoleName(name: unknown): string {
  if (typeof name !== "string" || !ROLE_NAME_RE.test(name)) {
    throw invalid(`role name must be 1-64 characters of a-z, 0-9 and '-', starting with a letter or digit`);
  }
  return name;
}

/** Whether `value` is one of KEY_TYPES. */
export function isKeyType(value: unknown): value is KeyType {
  return typeof value === "string" && (KEY_TYPES as readonly string[]).includes(value);
}

// --- DNS names ---------------------------------------------------------------

/**
 * A DNS name as Custos issues it: ASCII labels of letters, digits and inner
 * hyphens, at most 253 characters, and a last label that is not all digits (so
 * "10.0.0.1" can never pass as a host name). IDNs must come as A-labels (xn--).
 */
function isDnsName(name: string): boolean {
  if (name.length === 0 || name.length > 253) return false;
  const labels = name.split(".");
  if (!labels.every((label) => LABEL_RE.test(label))) return false;
  return !ALL_DIGITS_RE.test(labels[labels.length - 1] ?? "");
}

/** Whether `name` (normalised) is a wildcard: "*." followed by a DNS name of at least two labels. */
function isWildcardName(name: string): boolean {
  if (!name.startsWith("*.")) return false;
  const base = name.slice(2);
  return isDnsName(base) && base.includes(".");
}

/**
 * Lowercases and drops one trailing dot, after refusing anything non-ASCII:
 * lowercasing first would let "\u212Aey.example.com" (KELVIN SIGN) become
 * "key.example.com" behind the check's back.
 */
function foldDns(name: string): string | undefined {
  if (!ASCII_PRINTABLE_RE.test(name)) return undefined;
  const lower = name.toLowerCase();
  return lower.endsWith(".") ? lower.slice(0, -1) : lower;
}

function normaliseDnsPattern(field: string, value: unknown): string {
  const folded = typeof value === "string" ? foldDns(value) : undefined;
  if (folded === undefined || !(isDnsName(folded) || isWildcardName(folded))) {
    throw invalid(
      `${field}: ${show(value)} is not a DNS name or "*." followed by a DNS name of at least two labels (IDNs as xn-- A-labels)`,
    );
  }
  return folded;
}

function normaliseRequestedDns(field: string, value: unknown): string {
  const folded = typeof value === "string" ? foldDns(value) : undefined;
  if (folded !== undefined && isIP(folded) !== 0) {
    throw invalid(`${field}: ${show(value)} is an IP address; request it in ipAddresses`);
  }
  if (folded === undefined || !(isDnsName(folded) || isWildcardName(folded))) {
    throw invalid(`${field}: ${show(value)} is not a DNS name (IDNs as xn-- A-labels)`);
  }
  return folded;
}

function dnsAllowed(role: Role, name: string): boolean {
  const patterns = role.dnsNames.map((p) => p.toLowerCase());
  if (name.startsWith("*.")) return role.allowWildcardNames && patterns.includes(name);
  if (patterns.includes(name)) return true;
  const dot = name.indexOf(".");
  // "*.example.com" covers exactly one label in front: the label is everything before the first dot.
  return dot > 0 && patterns.includes(`*.${name.slice(dot + 1)}`);
}

// --- IP addresses --------------------------------------------------------------

function ipAllowed(role: Role, address: string): boolean {
  const bytes = ipOctets(address);
  return (
    bytes !== undefined &&
    role.ipRanges.some((range) => {
      const cidr = parseCidr(range);
      return cidr !== undefined && inCidr(bytes, cidr);
    })
  );
}

// --- URIs ----------------------------------------------------------------------

/**
 * An absolute URI (RFC 3986 4.3) with a scheme-specific part, as RFC 5280
 * 4.2.1.6 wants of a URI SAN: a scheme, only the characters of URI_CHARS_RE, a
 * non-empty hier-part (what comes before any "?" or "#"), and when that starts
 * with "//" an authority ([userinfo "@"] host [":" port], 3.2) with a non-empty host.
 */
function isRfc3986Uri(text: string): boolean {
  const scheme = URI_SCHEME_RE.exec(text);
  if (scheme === null || !URI_CHARS_RE.test(text)) return false;
  const hierPart = text.slice(scheme[0].length).split(/[?#]/, 1)[0] ?? "";
  if (!hierPart.startsWith("//")) return hierPart !== "";
  const authority = hierPart.slice(2).split("/", 1)[0] ?? "";
  const host = authority.slice(authority.lastIndexOf("@") + 1).replace(/:[0-9]*$/, "");
  return host !== "";
}

function uriAllowed(role: Role, uri: string): boolean {
  return role.uris.some((pattern) => globMatch(pattern, uri));
}

// --- parseRole -------------------------------------------------------------------

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function arrayField(body: Record<string, unknown>, field: string): unknown[] | undefined {
  const value = body[field];
  if (value === undefined) return undefined;
  if (!Array.isArray(value)) throw invalid(`${field} must be an array`);
  return value;
}

function enumList<T extends string>(
  body: Record<string, unknown>,
  field: string,
  allowed: readonly T[],
  fallback: readonly T[],
): T[] {
  const list = arrayField(body, field);
  if (list === undefined) return [...fallback];
  list.forEach((v, i) => {
    if (!(allowed as readonly unknown[]).includes(v)) {
      throw invalid(`${field}[${i}]: ${show(v)} is not one of ${allowed.join(", ")}`);
    }
  });
  return [...new Set(list as T[])];
}

function secondsField(body: Record<string, unknown>, field: string): number | undefined {
  const value = body[field];
  if (value === undefined) return undefined;
  if (typeof value !== "number" || !Number.isInteger(value) || value < MIN_TTL_SECONDS) {
    throw invalid(`${field} must be an integer of at least ${MIN_TTL_SECONDS}`);
  }
  if (value > MAX_ROLE_TTL_SECONDS) throw invalid(`${field} must be at most ${MAX_ROLE_TTL_SECONDS} (10 years)`);
  return value;
}

/**
 * Validates the JSON body of PUT /v1/pki/roles/:name (defaults as in docs/pki.md;
 * unknown fields, wrong types, bad patterns, bad CIDRs, ttlSeconds > maxTtlSeconds,
 * empty keyTypes → invalid_request naming the field). DNS patterns are lowercased
 * (and lose a trailing dot); a pattern is an exact DNS name or "*." + a DNS name
 * with at least two labels. CIDRs must have no host bits set and are stored in
 * canonical form. URI patterns must be absolute RFC 3986 URIs possibly containing '*'.
 *
 * A `name` field is accepted when it equals the role's name, so that a role read
 * back from GET can be PUT again unchanged. Without `ttlSeconds`, the default is
 * 7 days or the maximum, whichever is shorter.
 */
export function parseRole(name: string, body: unknown): Role {
  const roleName = checkRoleName(name);
  if (!isPlainObject(body)) throw invalid("the role must be a JSON object");
  for (const field of Object.keys(body)) {
    if (!ROLE_FIELDS.has(field)) throw invalid(`unknown field ${show(field)}`);
    // A member left out takes its default; null is no value of any member, not a way to ask for the default.
    if (body[field] === null) throw invalid(`${field} must not be null (leave it out for its default)`);
  }
  if (body.name !== undefined && body.name !== roleName) {
    throw invalid(`name ${show(body.name)} does not match the role in the path (${roleName})`);
  }

  const dnsNames = (arrayField(body, "dnsNames") ?? []).map((v, i) => normaliseDnsPattern(`dnsNames[${i}]`, v));

  const allowWildcardNames = body.allowWildcardNames ?? false;
  if (typeof allowWildcardNames !== "boolean") throw invalid("allowWildcardNames must be a boolean");

  const ipRanges = (arrayField(body, "ipRanges") ?? []).map((v, i) => {
    const cidr = typeof v === "string" ? parseCidr(v) : undefined;
    if (cidr === undefined) {
      throw invalid(`ipRanges[${i}]: ${show(v)} is not a CIDR network (address/prefix, no host bits set)`);
    }
    return cidr.canonical;
  });

  const uris = (arrayField(body, "uris") ?? []).map((v, i) => {
    if (typeof v !== "string" || !isRfc3986Uri(v.replaceAll("*", "x"))) {
      throw invalid(`uris[${i}]: ${show(v)} is not an absolute RFC 3986 URI (with '*' for any run of characters)`);
    }
    return v;
  });

  const keyUsages = enumList(body, "keyUsages", KEY_USAGES, DEFAULTS.keyUsages);
  const extKeyUsages = enumList(body, "extKeyUsages", EXT_KEY_USAGES, DEFAULTS.extKeyUsages);
  const keyTypes = enumList(body, "keyTypes", KEY_TYPES, DEFAULTS.keyTypes);
  if (keyTypes.length === 0) throw invalid("keyTypes must name at least one key type");
  // A leaf carries the usages its key's algorithm allows: each key type must keep at least one.
  const unusable = keyTypes.filter((t) => keyUsagesFor(t, keyUsages).length === 0);
  if (unusable.length > 0) {
    throw invalid(`keyUsages (${keyUsages.join(", ") || "none"}) allow no usage on a ${unusable.join(" or ")} key`);
  }

  const maxTtlSeconds = secondsField(body, "maxTtlSeconds") ?? DEFAULTS.maxTtlSeconds;
  const ttlSeconds = secondsField(body, "ttlSeconds") ?? Math.min(DEFAULTS.ttlSeconds, maxTtlSeconds);
  if (ttlSeconds > maxTtlSeconds) {
    throw invalid(`ttlSeconds (${ttlSeconds}) must not exceed maxTtlSeconds (${maxTtlSeconds})`);
  }

  return {
    name: roleName,
    dnsNames: [...new Set(dnsNames)],
    allowWildcardNames,
    ipRanges: [...new Set(ipRanges)],
    uris: [...new Set(uris)],
    keyUsages,
    extKeyUsages,
    keyTypes,
    maxTtlSeconds,
    ttlSeconds,
  };
}

// --- request checks --------------------------------------------------------------

function stringList(field: string, value: unknown): string[] {
  if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) {
    throw invalid(`${field} must be an array of strings`);
  }
  return value;
}

/**
 * Normalises (DNS lowercased and trailing dot removed; IPs in canonical text form
 * via node:net; duplicates removed; the common name added in front of dnsNames if
 * missing, and it must be a DNS name) and checks every name against the role:
 * `name_not_allowed` naming the first offending name (DNS names, then IPs, then
 * URIs, each in request order); a request with no name at all, or a name that is
 * no DNS name, IP or absolute RFC 3986 URI, is invalid_request. A common name
 * longer than MAX_COMMON_NAME_LENGTH is invalid_request too, unless it is
 * `commonNameDerived`: then it is left out (and stays among the DNS names).
 *
 * "*.example.com" allows exactly one label in front ("a.example.com", not
 * "a.b.example.com", not "example.com"); a requested wildcard name is allowed
 * only when allowWildcardNames is true and an identical pattern exists. IPs must
 * fall in one of ipRanges; an IPv4-mapped IPv6 address is IPv6 and matches only
 * IPv6 ranges. URI patterns: '*' matches any run of characters, everything else
 * literal, whole-string match.
 */
export function checkNames(role: Role, requested: RequestedNames): CheckedNames {
  const dnsNames = stringList("dnsNames", requested.dnsNames).map((n, i) => normaliseRequestedDns(`dnsNames[${i}]`, n));

  let commonName: string | undefined;
  if (requested.commonName !== undefined) {
    const cn: unknown = requested.commonName;
    if (typeof cn !== "string") throw invalid("commonName must be a string");
    commonName = normaliseRequestedDns("commonName", cn);
    if (!dnsNames.includes(commonName)) dnsNames.unshift(commonName);
    if (commonName.length > MAX_COMMON_NAME_LENGTH) {
      if (requested.commonNameDerived !== true) {
        throw invalid(
          `commonName: ${show(cn)} is longer than ${MAX_COMMON_NAME_LENGTH} characters, the most a common name may have (RFC 5280 ub-common-name); ask for it in dnsNames only`,
        );
      }
      commonName = undefined;
    }
  }

  const ipAddresses = stringList("ipAddresses", requested.ipAddresses).map((a, i) => {
    const canonical = canonicalIp(a);
    if (canonical === undefined) throw invalid(`ipAddresses[${i}]: ${show(a)} is not an IP address`);
    return canonical;
  });

  const uris = stringList("uris", requested.uris).map((u, i) => {
    if (!isRfc3986Uri(u)) throw invalid(`uris[${i}]: ${show(u)} is not an absolute RFC 3986 URI`);
    return u;
  });

  const names: CheckedNames = {
    commonName,
    dnsNames: [...new Set(dnsNames)],
    ipAddresses: [...new Set(ipAddresses)],
    uris: [...new Set(uris)],
  };
  if (names.dnsNames.length + names.ipAddresses.length + names.uris.length === 0) {
    throw invalid("the request names no common name, DNS name, IP address or URI");
  }

  const notAllowed = (kind: string, name: string) =>
    new CustosError("name_not_allowed", `${kind} ${show(name)} is not allowed by role ${role.name}`);
  for (const n of names.dnsNames) if (!dnsAllowed(role, n)) throw notAllowed("DNS name", n);
  for (const a of names.ipAddresses) if (!ipAllowed(role, a)) throw notAllowed("IP address", a);
  for (const u of names.uris) if (!uriAllowed(role, u)) throw notAllowed("URI", u);
  return names;
}

/** The lifetime to issue: role.ttlSeconds when undefined; invalid_request for non-integers or < 60; ttl_too_long above role.maxTtlSeconds. */
export function checkTtl(role: Role, ttlSeconds: number | undefined): number {
  if (ttlSeconds === undefined) return role.ttlSeconds;
  if (typeof ttlSeconds !== "number" || !Number.isInteger(ttlSeconds) || ttlSeconds < MIN_TTL_SECONDS) {
    throw invalid(`ttlSeconds must be an integer of at least ${MIN_TTL_SECONDS}`);
  }
  if (ttlSeconds > role.maxTtlSeconds) {
    throw new CustosError(
      "ttl_too_long",
      `ttlSeconds ${ttlSeconds} is above the maximum of role ${role.name} (${role.maxTtlSeconds})`,
    );
  }
  return ttlSeconds;
}

/**
 * key_type_not_allowed (message names the type and the allowed ones), also when
 * none of the role's key usages may go on a key of this type (a role stored before
 * roles were checked for that).
 */
export function checkKeyType(role: Role, keyType: KeyType): void {
  if (!role.keyTypes.includes(keyType)) {
    throw new CustosError(
      "key_type_not_allowed",
      `key type ${show(keyType)} is not allowed by role ${role.name} (allowed: ${role.keyTypes.join(", ")})`,
    );
  }
  if (keyUsagesFor(keyType, role.keyUsages).length === 0) {
    throw new CustosError(
      "key_type_not_allowed",
      `none of role ${role.name}'s key usages (${role.keyUsages.join(", ")}) is allowed on a ${keyType} key`,
    );
  }
}

/**
 * Which key usages a key's algorithm allows: RFC 3279 §2.3.1 gives RSA no
 * keyAgreement, RFC 5480 §3 forbids keyEncipherment on EC keys, and RFC 8410 §5
 * leaves Ed25519 only signatures.
 */
const USAGES_BY_ALGORITHM: Readonly<Record<KeyAlgorithm, readonly KeyUsageName[]>> = {
  rsa: ["digitalSignature", "keyEncipherment"],
  ec: ["digitalSignature", "keyAgreement"],
  ed25519: ["digitalSignature"],
};

/** The role's key usages that a leaf for a `keyType` key carries: those its algorithm allows. */
export function keyUsagesFor(keyType: KeyType, usages: readonly KeyUsageName[]): KeyUsageName[] {
  return usages.filter((u) => USAGES_BY_ALGORITHM[keyAlgorithmOf(keyType)].includes(u));
}

/** A public-key algorithm family: what a key's usages and a CSR's signatureAlgorithm depend on. */
export type KeyAlgorithm = "rsa" | "ec" | "ed25519";

/** The algorithm family of a key type. */
export function keyAlgorithmOf(keyType: KeyType): KeyAlgorithm {
  return keyType === "ed25519" ? "ed25519" : keyType.startsWith("rsa-") ? "rsa" : "ec";
}
