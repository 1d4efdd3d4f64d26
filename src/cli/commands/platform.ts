import type { Command } from "commander";
import type { CliContext } from "../context.js";

/** The platform commands (docs/broker.md). */
export function registerPlatformCommands(_program: Command, _ctx: CliContext): void {}
