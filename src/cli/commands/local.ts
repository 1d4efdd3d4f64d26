/**
 * The commands that run Custos itself rather than talk to it: `server`, `init` and
 * `restore`. They load the HSM and store stack only when invoked (dynamic imports),
 * so every other command starts without it.
 */
import type { Command } from "commander";
import type { CustosConfig } from "../../config/index.js";
import { isCustosError } from "../../errors/index.js";
import type { CliContext } from "../context.js";
import { usageError } from "../errors.js";

/**
 * The configuration from the `--config` file if given, and the run's environment. A
 * setting it refuses is a bad invocation (exit 64), like a bad flag.
 */
async function configFor(ctx: CliContext, file: string | undefined): Promise<CustosConfig> {
  const { loadConfig } = await import("../../config/index.js");
  const { logLevelOf } = await import("../../log/index.js");
  try {
    // The log level is configuration too: a wrong one is a usage error, found before anything starts.
    logLevelOf(ctx.io.env);
    return loadConfig(file === undefined ? { env: ctx.io.env } : { configFile: file, env: ctx.io.env });
  } catch (e) {
    throw isCustosError(e) ? usageError(e.message, e) : e;
  }
}

/** Resolves on the first SIGINT or SIGTERM. */
function shutdownSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (signal: NodeJS.Signals): void => {
      process.off("SIGINT", on);
      process.off("SIGTERM", on);
      resolve(signal);
    };
    process.on("SIGINT", on);
    process.on("SIGTERM", on);
  });
}

/** Registers `server`, `init` and `restore`. */
export function registerLocalCommands(program: Command, ctx: CliContext): void {
  program
    .command("server")
    .description("serve the HTTPS API until SIGINT or SIGTERM")
    .option("--config <file>", "JSON configuration file (default: $CUSTOS_CONFIG or var/custos.json)")
    .action(async (o: { config?: string }): Promise<void> => {
      const config = await configFor(ctx, o.config);
      const { serve } = await import("../../main.js");
      const stopped = shutdownSignal();
      const server = await serve(config);
      await ctx.note(`custos: serving on ${server.address}`);
      const signal = await stopped;
      await ctx.note(`custos: ${signal}, shutting down`);
      await server.close();
    });

  program
    .command("init")
    .description("initialise Custos: root key in the HSM, TLS CA, first admin and their token (idempotent)")
    .option("--config <file>", "JSON configuration file (default: $CUSTOS_CONFIG or var/custos.json)")
    .option("--admin <name>", "name of the first admin user", "admin")
    .action(async (o: { config?: string; admin: string }): Promise<void> => {
      const config = await configFor(ctx, o.config);
      const { initialize } = await import("../../main.js");
      const result = await initialize(config, { adminName: o.admin });
      await ctx.emit(result, (r) =>
        [
          r.created ? "initialized" : "already initialized (root key checked, CA file rewritten)",
          `admin token file: ${r.adminTokenFile}`,
          `CA certificate:   ${r.caCertFile}`,
          "",
          "to use it:",
          `  export CUSTOS_CACERT=${r.caCertFile} CUSTOS_TOKEN_FILE=${r.adminTokenFile}`,
          "  npx custos whoami",
          "",
        ].join("\n"),
      );
    });

  program
    .command("restore")
    .description(
      "put a copy made by custos backup in place of the store, with the server stopped; the replaced " +
        "database is kept beside it",
    )
    .argument("<file>", "the copy")
    .option("--config <file>", "JSON configuration file (default: $CUSTOS_CONFIG or var/custos.json)")
    .action(async (file: string, o: { config?: string }): Promise<void> => {
      const config = await configFor(ctx, o.config);
      const { restore } = await import("../../main.js");
      const restored = await restore(config, file);
      await ctx.emit(restored, (r) =>
        [
          `restored: ${r.database} from ${file} (schema version ${r.schemaVersion}, SHA-256 ${r.backupSha256})`,
          `replaced: ${r.replaced ?? "nothing (there was no database)"}${r.replaced ? " (kept: it holds what came after the backup)" : ""}`,
          `recorded: audit record ${r.auditSeq} (store.restore), with a checkpoint signed at it; custos audit verify`,
          "lists the restore and the records lost with it.",
          "lost with the restore, unless done again: every change after the backup. Key versions made since",
          "are gone (what they encrypted can't be decrypted), and certificates and SSH certificates revoked",
          "since are good again until revoked again.",
          "start the server on it: custos server",
          "",
        ].join("\n"),
      );
    });
}
