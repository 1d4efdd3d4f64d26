import type { Command } from "commander";
import type { CliContext } from "../context.js";

/** The secrets commands (docs/broker.md). */
export function registerSecretCommands(_program: Command, _ctx: CliContext): void {}
