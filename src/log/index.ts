import { type Logger, type LoggerOptions, pino } from "pino";
import { CustosError } from "../errors/index.js";

export type { Logger } from "pino";

/**
 * Paths pino blanks out wherever they appear in a log line. Secrets are also typed
 * (`Secret` prints as `[REDACTED]`), so this is the second line of defence: it
 * catches credentials that arrive as plain strings in request headers and bodies.
 */
export const REDACT_PATHS: readonly string[] = [
  "req.headers.authorization",
  "req.headers.cookie",
  "headers.authorization",
  "*.password",
  // Credentials only: a token's label (not a secret) is logged as `tokenLabel`.
  "*.token",
  "*.plaintext",
  "*.pin",
  "password",
  "token",
  "plaintext",
  "pin",
];

export interface LogOptions {
  level?: string;
  /** Where lines go; stdout by default. */
  destination?: NodeJS.WritableStream;
}

/** The levels pino knows without custom levels, and `silent`. */
export const LOG_LEVELS: readonly string[] = [...Object.keys(pino.levels.values), "silent"];

/**
 * The log level CUSTOS_LOG_LEVEL names ("info" when unset or empty, as Custos's other
 * variables are). A level pino does not know is `invalid_request` naming the variable:
 * pino's own error for it names neither the variable nor the levels it would take.
 */
export function logLevelOf(env: NodeJS.ProcessEnv): string {
  const level = env.CUSTOS_LOG_LEVEL || "info";
  if (!LOG_LEVELS.includes(level)) {
    throw new CustosError(
      "invalid_request",
      `CUSTOS_LOG_LEVEL must be one of ${LOG_LEVELS.join(", ")}, not ${JSON.stringify(level)}`,
    );
  }
  return level;
}

/** The process logger: JSON lines, redacted. */
export function createLogger(options: LogOptions = {}): Logger {
  const level = options.level ?? logLevelOf(process.env);
  const config: LoggerOptions = {
    level,
    redact: { paths: [...REDACT_PATHS], censor: "[REDACTED]" },
    base: { service: "custos" },
  };
  return options.destination ? pino(config, options.destination) : pino(config);
}
