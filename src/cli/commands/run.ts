import type { Command } from "commander";
import type { CliContext } from "../context.js";

/** The run commands (docs/broker.md). */
export function registerRunCommand(_program: Command, _ctx: CliContext): void {}
