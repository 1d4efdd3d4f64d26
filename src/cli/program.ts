/** The `custos` command tree. */
import { Command } from "commander";
import { registerPolicyCommands, registerSudoCommands } from "./commands/admin.js";
import { registerAgentCommands } from "./commands/agent.js";
import { registerAuditCommands } from "./commands/audit.js";
import { registerAuthCommands } from "./commands/auth.js";
import { registerBackupCommands } from "./commands/backup.js";
import { registerBrokerCommands } from "./commands/broker.js";
import { registerCertCommands } from "./commands/cert.js";
import { registerCryptoCommands } from "./commands/crypto.js";
import { registerFileCommands } from "./commands/file.js";
import { registerKeyCommands } from "./commands/keys.js";
import { registerLocalCommands } from "./commands/local.js";
import { registerPkiCommands } from "./commands/pki.js";
import { registerPlatformCommands } from "./commands/platform.js";
import { registerGroupCommands, registerUserCommands } from "./commands/principals.js";
import { registerRunCommand } from "./commands/run.js";
import { registerSecretCommands } from "./commands/secrets.js";
import { registerSshCommands } from "./commands/ssh.js";
import { registerStorageCommands } from "./commands/storage.js";
import type { CliContext } from "./context.js";

/**
 * Builds the program for one run. Commander never exits the process or writes to
 * the real streams itself: errors come back as exceptions and output goes to the
 * run's `io`, which is what makes a run testable in process.
 */
export function buildProgram(ctx: CliContext): Command {
  const program = new Command("custos")
    .description("Custos: a KMS and secrets broker backed by a PKCS#11 HSM")
    .addHelpText(
      "after",
      [
        "",
        "Environment:",
        "  CUSTOS_ADDR        API address (default https://127.0.0.1:8443)",
        "  CUSTOS_TOKEN       bearer token, or CUSTOS_TOKEN_FILE: a file holding it",
        "  CUSTOS_CACERT      PEM file of the CA that signed the server's certificate",
        "",
        "custos --version (or -V) prints the version.",
        "",
        "Exit codes: 0 done, 1 refused (4xx, invalid signature, audit problems),",
        "2 server failure or unreachable, 64 usage error; 128 + N when signal N ends it:",
        "130 Ctrl-C, 143 SIGTERM, 141 (SIGPIPE) when stdout's reader left early (| head).",
      ].join("\n"),
    )
    .option("--json", "print the raw JSON answer (for scripts)")
    // Set before adding commands: subcommands inherit both.
    .exitOverride()
    .configureOutput({
      writeOut: (s) => ctx.io.stdout.write(s),
      // An unknown `--name=value` is a mistyped option whose value may be a secret (`--pin=…`): only its name is shown.
      writeErr: (s) => ctx.io.stderr.write(s.replace(/(unknown option '[^'=]*)=[^']*'/g, "$1=…'")),
    })
    .showHelpAfterError("(add --help for usage)");
  ctx.attach(program);

  registerLocalCommands(program, ctx);
  registerAuthCommands(program, ctx);
  registerKeyCommands(program, ctx);
  registerCryptoCommands(program, ctx);
  registerFileCommands(program, ctx);
  registerStorageCommands(program, ctx);
  registerPkiCommands(program, ctx);
  registerCertCommands(program, ctx);
  registerAgentCommands(program, ctx);
  registerPlatformCommands(program, ctx);
  registerSecretCommands(program, ctx);
  registerBrokerCommands(program, ctx);
  registerRunCommand(program, ctx);
  registerSshCommands(program, ctx);
  registerUserCommands(program, ctx);
  registerGroupCommands(program, ctx);
  registerPolicyCommands(program, ctx);
  registerSudoCommands(program, ctx);
  registerAuditCommands(program, ctx);
  registerBackupCommands(program, ctx);
  return program;
}
