/** `custos backup`: the whole store copied out through the API (`custos restore` puts it back: local.ts). */
import { createHash } from "node:crypto";
import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { Writable } from "node:stream";
import type { Command } from "commander";
import { syncPath, tempName } from "../../files/index.js";
import type { CliContext } from "../context.js";
import { CliError, EXIT_SERVER } from "../errors.js";
import { cannotWrite, cleanUpOnInterrupt } from "../io.js";

interface BackupResult {
  file: string;
  bytes: number;
  sha256: string;
  auditSeq: number;
}

/** Registers `backup`. */
export function registerBackupCommands(program: Command, ctx: CliContext): void {
  program
    .command("backup")
    .description(
      "copy the whole store, as of one moment, into FILE (mode 0600) while the server goes on serving " +
        "(needs store:backup); the HSM token is backed up on its own",
    )
    .argument("<file>", "where to write the copy; replaced only once the whole copy has arrived and checked out")
    .action(async (file: string): Promise<void> => {
      await ctx.emit(
        await backUp(ctx, file),
        (r) => `backup: ${r.file}, ${r.bytes} bytes, sha256 ${r.sha256}, audit log to record ${r.auditSeq}\n`,
      );
    });
}

/**
 * Downloads the copy into a temporary file beside `file`, checks its SHA-256 against
 * the server's, makes it durable and renames it over `file`: a failure or an
 * interrupt at any point leaves `file` as it was and no temporary file behind.
 */
async function backUp(ctx: CliContext, file: string): Promise<BackupResult> {
  const temp = join(dirname(file), tempName(basename(file), "tmp"));
  let fd: number;
  try {
    fd = openSync(temp, "wx", 0o600);
  } catch (cause) {
    throw cannotWrite(file, cause);
  }
  const stopWatching = cleanUpOnInterrupt(() => rmSync(temp, { force: true }));
  try {
    const sha256 = createHash("sha256");
    let bytes = 0;
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        try {
          for (let at = 0; at < chunk.length; ) at += writeSync(fd, chunk, at);
          sha256.update(chunk);
          bytes += chunk.length;
          done();
        } catch (e) {
          done(cannotWrite(file, e));
        }
      },
    });
    const headers = await ctx.client().download("/v1/store/backup", sink);
    const digest = sha256.digest("hex");
    const sent = headers["x-custos-backup-sha256"];
    if (digest !== sent) {
      throw new CliError(
        "transfer_failed",
        `the copy arrived damaged (${bytes} bytes, sha256 ${digest}; the server sent sha256 ${String(sent)})`,
        EXIT_SERVER,
      );
    }
    fsyncSync(fd);
    closeSync(fd);
    fd = -1;
    try {
      renameSync(temp, file);
    } catch (cause) {
      throw cannotWrite(file, cause);
    }
    await syncPath(dirname(file));
    return { file, bytes, sha256: digest, auditSeq: Number(headers["x-custos-backup-audit-seq"]) };
  } catch (e) {
    rmSync(temp, { force: true });
    throw e;
  } finally {
    if (fd >= 0) closeSync(fd);
    stopWatching();
  }
}
