/**
 * How the CLI fails. Every failure becomes one line on stderr, `error: <code>: <message>`,
 * and an exit code a script can branch on: 1 when the caller is at fault (an API 4xx),
 * 2 when the server or the path to it is (5xx, refused, TLS), 64 for a bad invocation
 * or unusable client settings. The API client's errors carry no exit codes: they are
 * given theirs here. A command cut short by a signal ends with 128 + its number, as a
 * shell reports a process the signal ended; that includes 141 (SIGPIPE) for output
 * whose reader has gone, which is no failure to report.
 */
import { ClientError } from "../client/index.js";
import { isCustosError, messageOf } from "../errors/index.js";

/** The exit codes `custos` uses. 64 is sysexits' EX_USAGE; 141 is 128 + SIGPIPE. */
export type ExitCode = 0 | 1 | 2 | 64 | 141;

export const EXIT_OK = 0;
export const EXIT_CLIENT = 1;
export const EXIT_SERVER = 2;
export const EXIT_USAGE = 64;
/** Stdout's reader went away (`| head`): the status a shell gives a process SIGPIPE ended. */
export const EXIT_BROKEN_PIPE = 141;

/** A failure of the CLI's own (bad arguments, unwritable output file), with its exit code. */
export class CliError extends Error {
  readonly code: string;
  readonly exitCode: ExitCode;

  constructor(code: string, message: string, exitCode: ExitCode, options: CliErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "CliError";
    this.code = code;
    this.exitCode = exitCode;
  }
}

export interface CliErrorOptions {
  cause?: unknown;
}

/** A bad invocation: wrong or missing arguments, unusable environment. Exit 64. */
export function usageError(message: string, cause?: unknown): CliError {
  return new CliError("usage", message, EXIT_USAGE, cause === undefined ? {} : { cause });
}

/**
 * The exit code of an API client failure: unusable settings are a bad invocation (64);
 * a 4xx answer, or no token to send, the caller's fault (1); the rest, no answer or a
 * 5xx, the server's or the network's (2).
 */
export function clientExitCode(e: ClientError): ExitCode {
  if (e.code === "invalid_config") return EXIT_USAGE;
  if (e.status >= 400 && e.status < 500) return EXIT_CLIENT;
  // Refused before sending: no token is configured.
  if (e.status === 0 && e.code === "unauthenticated") return EXIT_CLIENT;
  return EXIT_SERVER;
}

/** Commander's own errors, duck-typed so this file needn't import commander. */
export function isCommanderError(e: unknown): e is Error & { code: string; exitCode: number } {
  if (!(e instanceof Error)) return false;
  const { code, exitCode } = e as Error & { code?: unknown; exitCode?: unknown };
  return typeof code === "string" && code.startsWith("commander.") && typeof exitCode === "number";
}

/**
 * A write into a pipe nobody reads any more (stdout under `| head -c1`). Node ignores
 * SIGPIPE, so what would have ended the process quietly arrives as this error.
 */
export function isBrokenPipe(e: unknown): boolean {
  return (
    e instanceof Error &&
    (e as { code?: unknown }).code === "EPIPE" &&
    !(e instanceof CliError || e instanceof ClientError || isCustosError(e))
  );
}

/**
 * A failed system call the command's own code did not name (a write to stdout on a full
 * disk): an `io_error` of this machine's, exit 1, not an internal failure.
 */
function isSystemError(e: unknown): e is Error {
  const { code, syscall } = e as { code?: unknown; syscall?: unknown };
  return e instanceof Error && typeof code === "string" && typeof syscall === "string";
}

/** The exit code for any thrown value. */
export function exitCodeOf(e: unknown): ExitCode {
  if (e instanceof CliError) return e.exitCode;
  if (isBrokenPipe(e)) return EXIT_BROKEN_PIPE;
  if (isSystemError(e)) return EXIT_CLIENT;
  if (e instanceof ClientError) return clientExitCode(e);
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
  if (e instanceof CliError || e instanceof ClientError || isCustosError(e)) {
    return `error: ${e.code}: ${printable(e.message)}`;
  }
  const message = messageOf(e);
  return `error: ${isSystemError(e) ? "io_error" : "internal"}: ${printable(message)}`;
}

/** Replaces C0/C1 control characters (other than tab) with U+FFFD. */
export function printable(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: stripping them is the point
  return text.replace(/[\u0000-\u0008\u000a-\u001f\u007f-\u009f]/g, "\ufffd");
}
