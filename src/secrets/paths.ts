import { CustosError } from "../errors/index.js";
import { type AppRef, checkAppRef } from "../platform/index.js";

/** Segments of a secret's name (after the app or `shared/`). */
const SEGMENT = /^[A-Za-z0-9._-]{1,64}$/;
const MAX_SEGMENTS = 8;
/**
 * A whole path is bound into the KMS encryption context, whose values are at most
 * 256 characters: the whole path, app included, must fit.
 */
export const MAX_PATH_CHARS = 256;

/** Where a secret lives: an app's own, or the shared namespace. */
export type SecretTarget =
  | { readonly kind: "app"; readonly path: string; readonly app: AppRef; readonly name: string }
  | { readonly kind: "shared"; readonly path: string; readonly name: string };

function invalid(message: string): CustosError {
  return new CustosError("invalid_request", message);
}

function checkSegments(segments: readonly string[]): void {
  if (segments.length < 1 || segments.length > MAX_SEGMENTS) {
    throw invalid(`a secret name is 1..${MAX_SEGMENTS} segments joined by "/"`);
  }
  for (const s of segments) {
    if (!SEGMENT.test(s) || s === "." || s === "..") {
      throw invalid('each segment of a secret name is 1..64 of [A-Za-z0-9._-], not "." or ".."');
    }
  }
}

/** Parses a whole secret path: `<org>/<space>/<app>/<name>` or `shared/<name>`. */
export function parseSecretPath(value: unknown): SecretTarget {
  if (typeof value !== "string" || value.length === 0) throw invalid("a secret path is required");
  if (value.length > MAX_PATH_CHARS) throw invalid(`a secret path is at most ${MAX_PATH_CHARS} characters`);
  const parts = value.split("/");
  if (parts[0] === "shared") {
    const rest = parts.slice(1);
    checkSegments(rest);
    return { kind: "shared", path: value, name: rest.join("/") };
  }
  if (parts.length < 4) {
    throw invalid("a secret path is <org>/<space>/<app>/<name> or shared/<name>");
  }
  const app = checkAppRef({ org: parts[0], space: parts[1], app: parts[2] });
  const rest = parts.slice(3);
  checkSegments(rest);
  return { kind: "app", path: value, app, name: rest.join("/") };
}

/** A listing prefix: `<org>/<space>/<app>[/folder]` or `shared[/folder]`. */
export type ListTarget =
  | { readonly kind: "app"; readonly prefix: string; readonly app: AppRef }
  | { readonly kind: "shared"; readonly prefix: string };

/** Parses a listing prefix; the returned prefix ends with `/`. */
export function parseListPrefix(value: unknown): ListTarget {
  if (typeof value !== "string" || value.length === 0) throw invalid("a prefix is required");
  const trimmed = value.endsWith("/") ? value.slice(0, -1) : value;
  if (trimmed.length > MAX_PATH_CHARS) throw invalid(`a prefix is at most ${MAX_PATH_CHARS} characters`);
  const parts = trimmed.split("/");
  if (parts[0] === "shared") {
    if (parts.length > 1) checkSegments(parts.slice(1));
    return { kind: "shared", prefix: `${trimmed}/` };
  }
  if (parts.length < 3) throw invalid("a prefix is <org>/<space>/<app>[/folder] or shared[/folder]");
  const app = checkAppRef({ org: parts[0], space: parts[1], app: parts[2] });
  if (parts.length > 3) checkSegments(parts.slice(3));
  return { kind: "app", prefix: `${trimmed}/`, app };
}

/**
 * A grant target: a shared secret (`shared/x/y`) or a folder of them
 * (`shared/x/`, trailing slash). Returned as stored.
 */
export function parseGrantTarget(value: unknown): string {
  if (typeof value !== "string" || !value.startsWith("shared/")) {
    throw invalid("a grant is of a shared secret (shared/<name>) or folder (shared/<folder>/)");
  }
  if (value.endsWith("/")) {
    return parseListPrefix(value).prefix;
  }
  return parseSecretPath(value).path;
}
