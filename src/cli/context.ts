/**
 * What every command's action gets: the run's streams, a lazily built API client,
 * the `--json` switch, and an exit code an action may lower to 1 without throwing
 * (`verify` saying "invalid", `audit verify` finding problems).
 */
import { type Command, InvalidArgumentError } from "commander";
import { type CustosClient, clientFromEnv } from "../client/index.js";
import { CliError, EXIT_OK, type ExitCode } from "./errors.js";
import { type CliIo, writeTo } from "./io.js";
import { renderRecord } from "./output.js";

/** Per-run state shared by the commands. */
export class CliContext {
  readonly io: CliIo;
  /** The run's exit code when no error is thrown. */
  exitCode: ExitCode = EXIT_OK;
  #client: CustosClient | undefined;
  #program: Command | undefined;

  constructor(io: CliIo) {
    this.io = io;
  }

  /** Tells the context which program it serves, so it can read global options. */
  attach(program: Command): void {
    this.#program = program;
  }

  /** The API client, built from the environment on first use (local commands never build one). */
  client(): CustosClient {
    this.#client ??= clientFromEnv(this.io.env);
    return this.#client;
  }

  /** True when `--json` was given. */
  get json(): boolean {
    return this.#program?.opts<{ json?: boolean }>().json === true;
  }

  /** Writes text to stdout. */
  out(text: string | Uint8Array): Promise<void> {
    return writeTo(this.io.stdout, text);
  }

  /** Writes an informational line to stderr (kept off stdout so pipes see only data). */
  note(text: string): Promise<void> {
    return writeTo(this.io.stderr, `${text}\n`);
  }

  /**
   * Prints an answer: raw JSON with `--json`, else `human(answer)` (by default as
   * `key: value` lines). An empty list prints nothing on stdout, so pipes see no
   * rows, and says so on stderr, so a person sees the command worked.
   */
  emit<T>(answer: T, human: (answer: T) => string = (a) => renderRecord(a as Record<string, unknown>)): Promise<void> {
    if (this.json) return this.out(`${JSON.stringify(answer, null, 2)}\n`);
    const text = human(answer);
    return text === "" ? this.note("no results") : this.out(text);
  }

  /** Releases the client's connections and token. */
  close(): void {
    this.#client?.close();
    this.#client = undefined;
  }
}

/**
 * Adapts a parser that throws `CliError` into a commander argument parser, so
 * commander reports the bad option by name and the run exits 64.
 */
export function arg<T, P = T>(parse: (text: string, previous: P) => T): (text: string, previous: P) => T {
  return (text, previous) => {
    try {
      return parse(text, previous);
    } catch (e) {
      if (e instanceof CliError) throw new InvalidArgumentError(e.message);
      throw e;
    }
  };
}

/** A path segment, escaped (names may hold `/`, `?` or `#`). */
export function seg(value: string | number): string {
  return encodeURIComponent(String(value));
}
