// A pure leaf of auth (no state): the same wildcard rule as policies' resources.
import { globMatch } from "../auth/glob.js";
import { CustosError } from "../errors/index.js";
import { ipOctets, parseCidr } from "../net/ip.js";
import type { SshCaKind, SshRoleRecord } from "../store/index.js";
import type { KeyFamily, SubjectKey } from "./keys.js";

/** The extensions OpenSSH defines for user certificates. */
export const EXTENSIONS = [
  "permit-X11-forwarding",
  "permit-agent-forwarding",
  "permit-port-forwarding",
  "permit-pty",
  "permit-user-rc",
] as const;

/** The critical options OpenSSH defines (verify-required needs FIDO keys, which Custos doesn't sign). */
export const CRITICAL_OPTIONS = ["force-command", "source-address"] as const;
type CriticalOption = (typeof CRITICAL_OPTIONS)[number];

/** Principal templates, expanded from the requester at signing time (docs/ssh-ca.md). */
export const TEMPLATES = {
  user: ["{{username}}", "{{groups}}", "{{owned-instances}}", "{{sudo-instances}}"],
  host: ["{{registered-instances}}"],
} as const;
export type Template = (typeof TEMPLATES)[SshCaKind][number];

/** A role as the service applies it. */
export interface SshRole {
  readonly name: string;
  readonly certType: SshCaKind;
  /** Literals, `*` patterns and templates. */
  readonly principals: readonly string[];
  readonly selfService: boolean;
  readonly ttlSeconds: number;
  readonly maxTtlSeconds: number;
  readonly extensions: readonly string[];
  readonly allowedExtensions: readonly string[];
  readonly criticalOptions: Readonly<Record<string, string>>;
  readonly allowedCriticalOptions: readonly string[];
  /** Allowed key families and their minimum sizes in bits. */
  readonly keyTypes: Readonly<Partial<Record<KeyFamily, number>>>;
  readonly builtin: boolean;
  readonly revision: number;
  readonly createdAt: string;
  readonly updatedAt: string;
}

/** A role's JSON, as stored and as the API takes it. */
export type RoleSpec = Omit<SshRole, "name" | "builtin" | "revision" | "createdAt" | "updatedAt">;

export const MAX_TTL_SECONDS = 366 * 86_400;
const MAX_PRINCIPALS = 256;
const MAX_PRINCIPAL_LENGTH = 255;
const MAX_COMMAND_LENGTH = 4096;
const DEFAULT_KEY_TYPES = { ed25519: 256, ecdsa: 256, rsa: 3072 } as const;
const ECDSA_SIZES = [256, 384, 521];
const ROLE_FIELDS = new Set([
  "certType",
  "principals",
  "selfService",
  "ttlSeconds",
  "maxTtlSeconds",
  "extensions",
  "allowedExtensions",
  "criticalOptions",
  "allowedCriticalOptions",
  "keyTypes",
]);

const invalid = (message: string) => new CustosError("invalid_request", message);

const MAX_REASON = 1024;

/** A revocation's or grant's reason: 1-1024 characters, not blank. */
export function checkReason(reason: unknown): string {
  if (typeof reason !== "string" || reason.trim() === "" || reason.length > MAX_REASON) {
    throw invalid(`a reason of 1-${MAX_REASON} characters is required`);
  }
  return reason;
}

export function isPrincipalTemplate(entry: string): entry is Template {
  return entry.startsWith("{{");
}

/** A principal or principal pattern: printable, no comma (OpenSSH's list separator), no space. */
export function checkPrincipalText(value: unknown, what: string): string {
  if (typeof value !== "string" || value.length === 0 || value.length > MAX_PRINCIPAL_LENGTH) {
    throw invalid(`${what} must be a string of 1-${MAX_PRINCIPAL_LENGTH} characters`);
  }
  if (!/^[\x21-\x7e]+$/.test(value) || value.includes(",")) {
    throw invalid(`${what} "${value.slice(0, 64)}" may hold only printable ASCII without spaces or commas`);
  }
  return value;
}

/**
 * A host certificate's principal (or a host role's name or pattern): no upper-case
 * letter, because the ssh client lowercases the host name and HostKeyAlias before
 * it matches them against the certificate, so such a principal never matches.
 */
export function checkHostPrincipal(value: string, what: string): void {
  if (/[A-Z]/.test(value)) {
    throw invalid(
      `${what} "${value.slice(0, 64)}" has upper-case letters: ssh clients lowercase the host name they check, so write it in lower case`,
    );
  }
}

function stringList(value: unknown, what: string, max: number): string[] {
  if (!Array.isArray(value) || value.length > max || !value.every((v) => typeof v === "string")) {
    throw invalid(`${what} must be a list of at most ${max} strings`);
  }
  return [...new Set(value as string[])];
}

function ttl(value: unknown, what: string): number {
  if (!Number.isInteger(value) || (value as number) < 1 || (value as number) > MAX_TTL_SECONDS) {
    throw invalid(`${what} must be a whole number of seconds from 1 to ${MAX_TTL_SECONDS}`);
  }
  return value as number;
}

function knownExtensions(list: readonly string[], what: string): void {
  for (const e of list) {
    if (!(EXTENSIONS as readonly string[]).includes(e)) {
      throw invalid(`${what}: unknown extension "${e.slice(0, 64)}" (known: ${EXTENSIONS.join(", ")})`);
    }
  }
}

/** A critical option's value, checked: a CIDR list for source-address, one command line for force-command. */
export function checkOptionValue(name: CriticalOption, value: unknown): string {
  if (typeof value !== "string") throw invalid(`critical option ${name} must be a string`);
  if (name === "force-command") {
    if (value.length === 0 || value.length > MAX_COMMAND_LENGTH || /[\0\r\n]/.test(value)) {
      throw invalid(`force-command must be one line of 1-${MAX_COMMAND_LENGTH} characters`);
    }
    return value;
  }
  const entries = value.split(",");
  if (value.length > 4096 || entries.length > 64 || !entries.every(isSourceAddress)) {
    throw invalid(
      "source-address must be a comma-separated list of IP addresses or CIDR networks (no host bits set past the prefix)",
    );
  }
  return value;
}

/**
 * An entry sshd accepts in a source-address list: an address, or a network whose
 * host bits are clear (sshd refuses "127.0.0.1/8" as an inconsistent mask, and
 * with it the whole certificate); no zone ids.
 */
function isSourceAddress(entry: string): boolean {
  return entry.includes("/") ? parseCidr(entry) !== undefined : ipOctets(entry) !== undefined;
}

function criticalOptions(value: unknown, what: string): Record<string, string> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw invalid(`${what} must be an object of option names to values`);
  }
  const out: Record<string, string> = {};
  for (const [name, v] of Object.entries(value)) {
    if (!(CRITICAL_OPTIONS as readonly string[]).includes(name)) {
      throw invalid(`${what}: unknown critical option "${name.slice(0, 64)}" (known: ${CRITICAL_OPTIONS.join(", ")})`);
    }
    out[name] = checkOptionValue(name as CriticalOption, v);
  }
  return out;
}

function keyTypes(value: unknown): Partial<Record<KeyFamily, number>> {
  if (typeof value !== "object" || value === null || Array.isArray(value) || Object.keys(value).length === 0) {
    throw invalid("keyTypes must name at least one of ed25519, ecdsa, rsa with a minimum size in bits");
  }
  const out: Partial<Record<KeyFamily, number>> = {};
  for (const [family, bits] of Object.entries(value)) {
    const ok =
      (family === "ed25519" && bits === 256) ||
      (family === "ecdsa" && ECDSA_SIZES.includes(bits as number)) ||
      (family === "rsa" && Number.isInteger(bits) && (bits as number) >= 2048 && (bits as number) <= 16_384);
    if (!ok) {
      throw invalid(
        `keyTypes.${family.slice(0, 16)}: allowed are ed25519: 256, ecdsa: 256|384|521, rsa: 2048-16384 (minimum bits)`,
      );
    }
    out[family as KeyFamily] = bits as number;
  }
  return out;
}

/** Validates a role's JSON; every error names the field. */
export function validateRoleSpec(input: unknown): RoleSpec {
  if (typeof input !== "object" || input === null || Array.isArray(input)) throw invalid("a role must be an object");
  const body = input as Record<string, unknown>;
  for (const field of Object.keys(body)) {
    if (!ROLE_FIELDS.has(field)) throw invalid(`unknown role field "${field.slice(0, 64)}"`);
    // A member left out takes its default; null is no value of any member, not a way to ask for the default.
    if (body[field] === null) throw invalid(`${field} must not be null (leave it out for its default)`);
  }
  const certType = body.certType;
  if (certType !== "user" && certType !== "host") throw invalid('certType must be "user" or "host"');
  const principals = stringList(body.principals ?? [], "principals", MAX_PRINCIPALS);
  if (principals.length === 0) throw invalid("principals must name at least one principal, pattern or template");
  const selfService = body.selfService ?? false;
  if (typeof selfService !== "boolean") throw invalid("selfService must be true or false");
  for (const p of principals) {
    if (isPrincipalTemplate(p)) {
      if (!(TEMPLATES[certType] as readonly string[]).includes(p)) {
        throw invalid(`principal template ${p.slice(0, 64)} is not one of ${TEMPLATES[certType].join(", ")}`);
      }
    } else {
      checkPrincipalText(p, "principal");
      if (certType === "host") checkHostPrincipal(p, "principals: host name");
      if (selfService) throw invalid(`a self-service role takes only templates, not "${p.slice(0, 64)}"`);
    }
  }
  const maxTtlSeconds = ttl(body.maxTtlSeconds ?? (certType === "user" ? 3600 : 30 * 86_400), "maxTtlSeconds");
  const ttlSeconds = ttl(body.ttlSeconds ?? Math.min(maxTtlSeconds, certType === "user" ? 300 : 86_400), "ttlSeconds");
  if (ttlSeconds > maxTtlSeconds) throw invalid("ttlSeconds must not exceed maxTtlSeconds");
  const extensions = stringList(body.extensions ?? (certType === "user" ? ["permit-pty"] : []), "extensions", 8);
  const allowedExtensions = stringList(body.allowedExtensions ?? [], "allowedExtensions", 8);
  knownExtensions(extensions, "extensions");
  knownExtensions(allowedExtensions, "allowedExtensions");
  const options = criticalOptions(body.criticalOptions ?? {}, "criticalOptions");
  const allowedCriticalOptions = stringList(body.allowedCriticalOptions ?? [], "allowedCriticalOptions", 8);
  for (const o of allowedCriticalOptions) {
    if (!(CRITICAL_OPTIONS as readonly string[]).includes(o)) {
      throw invalid(`allowedCriticalOptions: unknown critical option "${o.slice(0, 64)}"`);
    }
  }
  const hasUserFields =
    extensions.length + allowedExtensions.length + allowedCriticalOptions.length + Object.keys(options).length > 0;
  if (certType === "host" && hasUserFields) {
    throw invalid("host certificates carry no extensions or critical options");
  }
  return {
    certType,
    principals,
    selfService,
    ttlSeconds,
    maxTtlSeconds,
    extensions: extensions.sort(),
    allowedExtensions: allowedExtensions.sort(),
    criticalOptions: options,
    allowedCriticalOptions: allowedCriticalOptions.sort(),
    keyTypes: keyTypes(body.keyTypes ?? DEFAULT_KEY_TYPES),
  };
}

/** The role a stored record describes (its spec was validated when written). */
export function roleFromRecord(record: SshRoleRecord): SshRole {
  return {
    ...(record.spec as unknown as RoleSpec),
    name: record.name,
    certType: record.certType,
    builtin: record.builtin,
    revision: record.revision,
    createdAt: record.createdAt,
    updatedAt: record.updatedAt,
  };
}

/** The built-in roles (docs/ssh-ca.md): owners into their instances, agents' host keys. */
export const BUILTIN_ROLES: Readonly<Record<string, RoleSpec>> = {
  owner: validateRoleSpec({
    certType: "user",
    principals: ["{{owned-instances}}", "{{sudo-instances}}"],
    selfService: true,
    ttlSeconds: 300,
    maxTtlSeconds: 3600,
    extensions: ["permit-pty"],
    allowedExtensions: [...EXTENSIONS],
    allowedCriticalOptions: [...CRITICAL_OPTIONS],
  }),
  "instance-host": validateRoleSpec({
    certType: "host",
    principals: ["{{registered-instances}}"],
    selfService: true,
    ttlSeconds: 86_400,
    maxTtlSeconds: 30 * 86_400,
  }),
};

// ---- a request against its role ------------------------------------------------

/** key_type_not_allowed unless the role takes the key's family at its size. */
export function checkSubjectKey(role: SshRole, key: SubjectKey): void {
  const minimum = role.keyTypes[key.family];
  if (minimum === undefined) {
    const allowed = Object.entries(role.keyTypes)
      .map(([f, b]) => `${f} ≥ ${b}`)
      .join(", ");
    throw new CustosError(
      "key_type_not_allowed",
      `role ${role.name} does not take ${key.type} keys (allowed: ${allowed})`,
    );
  }
  if (key.bits < minimum) {
    throw new CustosError(
      "key_type_not_allowed",
      `role ${role.name} needs ${key.family} keys of at least ${minimum} bits; this one has ${key.bits}`,
    );
  }
}

/** The requested TTL or the role's default; ttl_too_long above the role's maximum. */
export function ttlFor(role: SshRole, requested: number | undefined): number {
  if (requested === undefined) return role.ttlSeconds;
  if (!Number.isInteger(requested) || requested < 1) throw invalid("ttlSeconds must be a whole number of seconds ≥ 1");
  if (requested > role.maxTtlSeconds) {
    throw new CustosError(
      "ttl_too_long",
      `ttlSeconds ${requested} is above role ${role.name}'s maximum of ${role.maxTtlSeconds}`,
    );
  }
  return requested;
}

/** The requested extensions (replacing the role's defaults) or the defaults. */
export function extensionsFor(role: SshRole, requested: readonly string[] | undefined): string[] {
  if (requested === undefined) return [...role.extensions];
  const wanted = [...new Set(requested)].sort();
  for (const e of wanted) {
    if (role.certType === "host") {
      throw new CustosError("extension_not_allowed", "host certificates carry no extensions");
    }
    if (!role.allowedExtensions.includes(e) && !role.extensions.includes(e)) {
      throw new CustosError("extension_not_allowed", `role ${role.name} does not allow extension "${e.slice(0, 64)}"`);
    }
  }
  return wanted;
}

/** The role's fixed critical options plus the allowed ones the request adds. */
export function criticalOptionsFor(
  role: SshRole,
  requested: Readonly<Record<string, unknown>> | undefined,
): Record<string, string> {
  const options: Record<string, string> = { ...role.criticalOptions };
  for (const [name, value] of Object.entries(requested ?? {})) {
    if (role.certType === "host") throw new CustosError("option_not_allowed", "host certificates carry no options");
    if (!role.allowedCriticalOptions.includes(name)) {
      throw new CustosError(
        "option_not_allowed",
        `role ${role.name} does not allow critical option "${name.slice(0, 64)}"`,
      );
    }
    if (name in role.criticalOptions) {
      throw new CustosError("option_not_allowed", `role ${role.name} sets ${name} itself; it can't be changed`);
    }
    options[name] = checkOptionValue(name as CriticalOption, value);
  }
  return options;
}

/** Whether `entry` (a role principal that is not a template) admits `principal`: itself, or a match of its `*` pattern. */
export function literalAdmits(entry: string, principal: string): boolean {
  return entry.includes("*") ? globMatch(entry, principal) : entry === principal;
}
