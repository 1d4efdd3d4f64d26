/** One CLI run, from arguments to exit code. */
import { CliContext } from "./context.js";
import { type ExitCode, exitCodeOf, formatError, isCommanderError } from "./errors.js";
import type { CliIo } from "./io.js";
import { buildProgram } from "./program.js";

/**
 * Runs `custos` with `args` (without the node and script paths) against `io`, and
 * returns the exit code: 0 done, 1 refused (4xx, "invalid", audit problems),
 * 2 server failure or unreachable, 64 usage error. It never exits the process.
 */
export async function run(args: readonly string[], io: CliIo): Promise<ExitCode> {
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
