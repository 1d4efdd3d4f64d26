/** One CLI run, from arguments to exit code. */

import type { Command } from "commander";
import { VERSION } from "../version.js";
import { CliContext } from "./context.js";
import { EXIT_OK, EXIT_USAGE, type ExitCode, exitCodeOf, formatError, isCommanderError } from "./errors.js";
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
    const program = buildProgram(ctx);
    const topic = unknownHelpTopic(program, args);
    if (topic !== undefined) {
      // Commander answers `help <unknown>` with the whole help and no word of what was wrong.
      io.stderr.write(`error: unknown command '${topic}' (add --help for usage)\n`);
      return EXIT_USAGE;
    }
    await program.parseAsync([...args], { from: "user" });
    return ctx.exitCode;
  } catch (e) {
    // Commander has already reported its own errors (and printed help).
    if (!isCommanderError(e)) io.stderr.write(`${formatError(e)}\n`);
    return exitCodeOf(e);
  } finally {
    ctx.close();
  }
}

/** The word after `help` (at any level of the command tree) when it names no command there. */
function unknownHelpTopic(program: Command, args: readonly string[]): string | undefined {
  let command = program;
  const words = args.filter((a) => !a.startsWith("-"));
  for (const [i, word] of words.entries()) {
    const named = command.commands.find((c) => c.name() === word || c.aliases().includes(word));
    // Only where there are subcommands: elsewhere "help" is an argument (a secret may be called help).
    if (word === "help" && named === undefined && command.commands.length > 0) {
      const topic = words[i + 1];
      const known =
        topic === undefined || command.commands.some((c) => c.name() === topic || c.aliases().includes(topic));
      return known ? undefined : topic;
    }
    if (named === undefined) return undefined;
    command = named;
  }
  return undefined;
}
