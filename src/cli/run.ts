/** One CLI run, from arguments to exit code. */

import { VERSION } from "../version.js";
import { CliContext } from "./context.js";
import { EXIT_OK, type ExitCode, exitCodeOf, formatError, isCommanderError } from "./errors.js";
import type { CliIo } from "./io.js";
import { buildProgram } from "./program.js";

/**
 * Runs `custos` with `args` (without the node and script paths) against `io`, and
 * returns the exit code: 0 done, 1 refused (4xx, "invalid", audit problems),
 * 2 server failure or unreachable, 64 usage error. It never exits the process.
 */
export async function run(args: readonly string[], io: CliIo): Promise<ExitCode> {
  // Only as the whole command line: commands have a --version option of their own
  // (a secret's version), and commander would take a program-wide one wherever it stood.
  if (args.length === 1 && (args[0] === "--version" || args[0] === "-V")) {
    io.stdout.write(`${VERSION}\n`);
    return EXIT_OK;
  }
  const ctx = new CliContext(io);
  try {
    await buildProgram(ctx).parseAsync([...args], { from: "user" });
    return ctx.exitCode;
  } catch (e) {
    // Commander has already reported its own errors (and printed help).
    if (!isCommanderError(e)) io.stderr.write(`${formatError(e)}\n`);
    return exitCodeOf(e);
  } finally {
    ctx.close();
  }
}
