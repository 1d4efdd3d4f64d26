/**
 * Parsers for the CLI's argument syntaxes. Each throws a usage error (exit 64)
 * naming what was wrong, so a typo never reaches the server.
 */
import { usageError } from "./errors.js";

const UNIT_SECONDS: Readonly<Record<string, number>> = { s: 1, m: 60, h: 3600, d: 86_400 };

/** Longer than any waiting period, rotation period or TTL could sensibly be. */
const MAX_DURATION_SECONDS = 100 * 365 * 86_400;

/**
 * Parses a duration such as `90s`, `30m`, `1h`, `7d` or `1h30m` into whole seconds.
 * A bare number is refused: "30" could mean seconds or days, and guessing wrong
 * on a destruction waiting period is not a mistake to make quietly.
 */
export function parseDuration(text: string): number {
  const trimmed = text.trim();
  if (!/^(\d+[smhd])+$/.test(trimmed)) {
    throw usageError(`invalid duration "${text}": use a number and a unit s, m, h or d (e.g. 90s, 30m, 1h, 7d)`);
  }
  let seconds = 0;
  for (const match of trimmed.matchAll(/(\d+)([smhd])/g)) {
    seconds += Number(match[1]) * (UNIT_SECONDS[match[2] ?? ""] ?? Number.NaN);
  }
  if (!Number.isSafeInteger(seconds) || seconds <= 0 || seconds > MAX_DURATION_SECONDS) {
    throw usageError(`invalid duration "${text}": must be more than 0 and at most 100 years`);
  }
  return seconds;
}

/**
 * Parses one `--context k=v` pair. The value may itself contain `=` (it splits at
 * the first one); the key may not be empty, nor `__proto__`, which the API refuses
 * (JSON parsers drop that member) and an object built here would silently lose.
 */
export function parseContextPair(text: string): [key: string, value: string] {
  const at = text.indexOf("=");
  if (at < 0) throw usageError(`invalid context "${text}": expected key=value`);
  const key = text.slice(0, at);
  if (key.length === 0) throw usageError(`invalid context "${text}": the key is empty`);
  if (key === "__proto__") throw usageError("context key __proto__ is reserved");
  return [key, text.slice(at + 1)];
}

/** Adds one `k=v` pair to an encryption context; a repeated key is a usage error. */
export function addContextPair(
  text: string,
  previous: Readonly<Record<string, string>> | undefined,
): Record<string, string> {
  const [key, value] = parseContextPair(text);
  const context: Record<string, string> = { ...previous };
  if (Object.hasOwn(context, key)) throw usageError(`context key "${key}" given twice`);
  context[key] = value;
  return context;
}

/** One policy rule as the API takes it. */
export interface PolicyRule {
  resource: string;
  actions: string[];
}

/**
 * Parses `--rule 'key/app-a-*=key:encrypt,key:decrypt'`. It splits at the last `=`
 * because actions never contain one, while a resource pattern might.
 */
export function parsePolicyRule(text: string): PolicyRule {
  const at = text.lastIndexOf("=");
  if (at < 0) throw usageError(`invalid rule "${text}": expected resource=action[,action...]`);
  const resource = text.slice(0, at).trim();
  const actions = text
    .slice(at + 1)
    .split(",")
    .map((a) => a.trim())
    .filter((a) => a.length > 0);
  if (resource.length === 0) throw usageError(`invalid rule "${text}": the resource is empty`);
  if (actions.length === 0) throw usageError(`invalid rule "${text}": no actions`);
  return { resource, actions };
}

/** Parses a whole number in `min..max` (decimal digits only, so `1e3` and `0x10` are refused). */
export function parseInteger(text: string, what: string, min = 1, max = Number.MAX_SAFE_INTEGER): number {
  const trimmed = text.trim();
  const n = /^\d+$/.test(trimmed) ? Number(trimmed) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw usageError(`invalid ${what} "${text}": expected a whole number from ${min} to ${max}`);
  }
  return n;
}

/** Appends to a repeatable option's list. */
export function collect(value: string, previous: readonly string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

// ---- the platform's names (docs/broker.md) ----

const LABEL_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/** `<org>/<space>/<app>`, each a DNS label. */
export function parseAppRef(text: string): { org: string; space: string; app: string } {
  const parts = text.split("/");
  if (parts.length !== 3 || !parts.every((p) => LABEL_RE.test(p))) {
    throw usageError(`"${text}" is not an app: write <org>/<space>/<app>, each a DNS label (a-z, 0-9, '-')`);
  }
  const [org, space, app] = parts as [string, string, string];
  return { org, space, app };
}

/** `<org>[/<space>[/<app>]]`, each a DNS label: the names narrowing a listing. */
export function parseScope(text: string): { org: string; space?: string; app?: string } {
  const parts = text.split("/");
  if (parts.length > 3 || !parts.every((p) => LABEL_RE.test(p))) {
    throw usageError(`"${text}" is not a scope: write <org>, <org>/<space> or <org>/<space>/<app>, each a DNS label`);
  }
  const [org, space, app] = parts as [string, string?, string?];
  return { org, ...(space === undefined ? {} : { space }), ...(app === undefined ? {} : { app }) };
}

/** An instance id: a DNS label. */
export function checkInstance(id: string): string {
  if (!LABEL_RE.test(id)) throw usageError(`"${id}" is not an instance id: a DNS label (a-z, 0-9, '-', 1-63)`);
  return id;
}
