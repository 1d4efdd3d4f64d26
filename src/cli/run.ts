/** One CLI run, from arguments to exit code. */

import type { Command } from "commander";
import { VERSION } from "../version.js";
import { CliContext } from "./context.js";
import {
  EXIT_OK,
  EXIT_USAGE,
  type ExitCode,
  exitCodeOf,
  formatError,
  isBrokenPipe,
  isCommanderError,
  printable,
} from "./errors.js";
import type { CliIo } from "./io.js";
import { buildProgram } from "./program.js";

/**
 * Runs `custos` with `args` (without the node and script paths) against `io`, and
 * returns the exit code: 0 done, 1 refused (4xx, "invalid", audit problems),
 * 2 server failure or unreachable, 64 usage error, 141 stdout's reader gone. It never
 * exits the process (but an interrupted `file` command removes its temporary file and
 * ends with 128 + the signal's number).
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
    const help = helpRequest(program, args);
    if (help !== undefined && "unknown" in help) {
      // Commander answers `help <unknown>` with the whole help and no word of what was wrong.
      io.stderr.write(`error: unknown command '${printable(help.unknown)}' (add --help for usage)\n`);
      return EXIT_USAGE;
    }
    await program.parseAsync(help?.args ?? [...args], { from: "user" });
    return ctx.exitCode;
  } catch (e) {
    // Commander has already reported its own errors (and printed help); a reader that
    // left (`| head`) is no error, and quiet, as for a process SIGPIPE ends.
    if (!isCommanderError(e) && !isBrokenPipe(e)) io.stderr.write(`${formatError(e)}\n`);
    return exitCodeOf(e);
  } finally {
    ctx.close();
  }
}

/**
 * `help <topic…>` at any level of the command tree: the arguments that show that
 * command's help (commander's own help command takes one word, so `help key create`
 * would show the key group's), or the first word that names no command.
 */
function helpRequest(program: Command, args: readonly string[]): { args: string[] } | { unknown: string } | undefined {
  let command = program;
  for (const [i, word] of args.entries()) {
    if (word.startsWith("-")) continue;
    const named = subcommand(command, word);
    // Only where there are subcommands: elsewhere "help" is an argument (a secret may be called help).
    if (word === "help" && named === undefined && command.commands.length > 0) {
      const topic = args.slice(i + 1);
      for (const t of topic) {
        if (t.startsWith("-")) continue;
        const next = subcommand(command, t);
        if (next === undefined) return { unknown: t };
        command = next;
      }
      return { args: [...args.slice(0, i), ...topic, "--help"] };
    }
    if (named === undefined) return undefined;
    command = named;
  }
  return undefined;
}

function subcommand(command: Command, name: string): Command | undefined {
  return command.commands.find((c) => c.name() === name || c.aliases().includes(name));
}
