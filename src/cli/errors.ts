/**
 * How the CLI fails. Every failure becomes one line on stderr, `error: <code>: <message>`,
 * and an exit code a script can branch on: 1 when the caller is at fault (an API 4xx),
 * 2 when the server or the path to it is (5xx, refused, TLS), 64 for a bad invocation.
 */
import { isCustosError } from "../errors/index.js";

/** The exit codes `custos` uses. 64 is sysexits' EX_USAGE. */
export type ExitCode = 0 | 1 | 2 | 64;

export const EXIT_OK = 0;
export const EXIT_CLIENT = 1;
export const EXIT_SERVER = 2;
export const EXIT_USAGE = 64;

/**
 * A failure with a stable `code`, shaped like `CustosError` but open to codes this
 * build doesn't know (a newer server may answer with them). `status` is the HTTP
 * status when there was an answer, 0 when there was none.
 */
export class CliError extends Error {
  readonly code: string;
  readonly exitCode: ExitCode;
  readonly status: number;
  readonly requestId: string | undefined;

  constructor(code: string, message: string, exitCode: ExitCode, options: CliErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "CliError";
    this.code = code;
    this.exitCode = exitCode;
    this.status = options.status ?? 0;
    this.requestId = options.requestId;
  }
}

export interface CliErrorOptions {
  cause?: unknown;
  status?: number;
  requestId?: string;
}

/** A bad invocation: wrong or missing arguments, unusable environment. Exit 64. */
export function usageError(message: string, cause?: unknown): CliError {
  return new CliError("usage", message, EXIT_USAGE, cause === undefined ? {} : { cause });
}

/** An error answer from the API: exit 1 for 4xx, 2 for everything else. */
export function apiError(status: number, code: string, message: string, requestId?: string): CliError {
  const exit = status >= 400 && status < 500 ? EXIT_CLIENT : EXIT_SERVER;
  return new CliError(code, message, exit, requestId === undefined ? { status } : { status, requestId });
}

/** No answer at all (refused, reset, timed out, TLS failure). Exit 2. */
export function transportError(code: string, message: string, cause?: unknown): CliError {
  return new CliError(code, message, EXIT_SERVER, cause === undefined ? {} : { cause });
}

/** Commander's own errors, duck-typed so this file needn't import commander. */
export function isCommanderError(e: unknown): e is Error & { code: string; exitCode: number } {
  if (!(e instanceof Error)) return false;
  const { code, exitCode } = e as Error & { code?: unknown; exitCode?: unknown };
  return typeof code === "string" && code.startsWith("commander.") && typeof exitCode === "number";
}

/** The exit code for any thrown value. */
export function exitCodeOf(e: unknown): ExitCode {
  if (e instanceof CliError) return e.exitCode;
  // --help and --version are "errors" to commander's exitOverride, but succeed.
  if (isCommanderError(e)) return e.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
  if (isCustosError(e)) return e.isClientError ? EXIT_CLIENT : EXIT_SERVER;
  return EXIT_SERVER;
}

/**
 * The stderr line for an error. Control characters are replaced so a hostile or
 * broken server can't drive the terminal through an error message.
 */
export function formatError(e: unknown): string {
  if (e instanceof CliError || isCustosError(e)) return `error: ${e.code}: ${printable(e.message)}`;
  const message = e instanceof Error ? e.message : String(e);
  return `error: internal: ${printable(message)}`;
}

/** Replaces C0/C1 control characters (other than tab) with U+FFFD. */
export function printable(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: stripping them is the point
  return text.replace(/[\u0000-\u0008\u000a-\u001f\u007f-\u009f]/g, "\ufffd");
}
