import type { Command } from "commander";
import type { CliContext } from "../context.js";

/** The broker commands (docs/broker.md). */
export function registerBrokerCommands(_program: Command, _ctx: CliContext): void {}
