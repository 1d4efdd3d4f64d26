import { type Logger, type LoggerOptions, pino } from "pino";

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

/** The process logger: JSON lines, redacted. */
export function createLogger(options: LogOptions = {}): Logger {
  const config: LoggerOptions = {
    level: options.level ?? process.env.CUSTOS_LOG_LEVEL ?? "info",
    redact: { paths: [...REDACT_PATHS], censor: "[REDACTED]" },
    base: { service: "custos" },
  };
  return options.destination ? pino(config, options.destination) : pino(config);
}
