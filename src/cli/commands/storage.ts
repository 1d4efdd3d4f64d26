/**
 * `custos storage rewrap DIR`: after a key rotation, moves every envelope file under
 * DIR to the key's newest version without re-encrypting data. Each file is replaced
 * atomically, so a kill at any moment leaves every file old or new; a rerun skips the
 * files already done (their headers say so), which is what makes it resumable.
 */
import type { Dirent } from "node:fs";
import { lstat, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Command } from "commander";
import { httpKms, type RewrapOutcome, rewrapFiles, TEMP_FILE } from "../../envelope/index.js";
import { errnoOrMessage, messageOf } from "../../errors/index.js";
import { arg, type CliContext } from "../context.js";
import { EXIT_CLIENT, printable, usageError } from "../errors.js";
import { parseInteger } from "../parse.js";
import { formatBytes, Progress } from "../progress.js";

interface Found {
  /** Paths as bytes: a file name need not be UTF-8. */
  readonly files: { path: Buffer; size: number }[];
  readonly bytes: number;
  /** Temporary files an interrupted run left behind, removed. */
  readonly removed: number;
  /** Entries that could not be read or looked at: failures of the run, each named. */
  readonly failures: Failure[];
}

type Status = RewrapOutcome["status"];
type Failure = Extract<RewrapOutcome, { status: "failed" }>;

/** Registers `custos storage …`. */
export function registerStorageCommands(program: Command, ctx: CliContext): void {
  const storage = program.command("storage").description("work on whole trees of envelope files");
  storage
    .command("rewrap <dir>")
    .description("rewrap every envelope file under <dir> to its key's newest version (resumable, crash-safe)")
    .option(
      "--batch <files>",
      "files per KMS call (default 200)",
      arg((t) => parseInteger(t, "batch size", 1, 1000)),
    )
    .action(async (dir: string, o: { batch?: number }) => {
      const started = Date.now();
      const found = await findFiles(dir);
      const kms = httpKms(ctx.client());
      const counts: Record<Status, number> = {
        rewrapped: 0,
        current: 0,
        not_envelope: 0,
        failed: found.failures.length,
      };
      const failures = [...found.failures];
      const progress = new Progress(ctx.io.stderr, found.files.length, found.bytes);
      const batch = o.batch ?? 200;
      for (let at = 0; at < found.files.length; at += batch) {
        const group = found.files.slice(at, at + batch);
        const outcomes = await rewrapFiles(
          kms,
          group.map((f) => f.path),
        );
        for (const outcome of outcomes) {
          counts[outcome.status]++;
          if (outcome.status === "failed") failures.push(outcome);
        }
        progress.advance(
          group.length,
          group.reduce((n, f) => n + f.size, 0),
        );
      }
      progress.finish();
      const seconds = (Date.now() - started) / 1000;
      const summary = {
        ...counts,
        files: found.files.length,
        bytes: found.bytes,
        seconds,
        removedTemporary: found.removed,
        failures,
      };
      await ctx.emit(summary, (s) =>
        [
          `rewrapped ${s.rewrapped}, already current ${s.current}, not envelope files ${s.not_envelope}, failed ${s.failed}`,
          `${s.files} files, ${formatBytes(s.bytes)} in ${s.seconds.toFixed(1)} s`,
          ...(s.removedTemporary > 0
            ? [`removed ${s.removedTemporary} temporary files left by an interrupted run`]
            : []),
          // A file name is anyone's choice, and may hold what would drive the terminal.
          ...s.failures.map(
            (f) => `failed: ${printable(f.path)}: ${printable(f.error.code)}: ${printable(f.error.message)}`,
          ),
          "",
        ].join("\n"),
      );
      if (counts.failed > 0) ctx.exitCode = EXIT_CLIENT;
    });
}

/**
 * Every regular file under `dir`, in a stable order. Symbolic links in the tree are
 * not followed (renaming over one would replace the link, and it may point outside
 * the tree); `dir` itself may be one, as the tree the caller named. Temporary files
 * of an interrupted rewrap are removed.
 */
async function findFiles(dir: string): Promise<Found> {
  try {
    if (!(await stat(dir)).isDirectory()) throw usageError(`${dir} is not a directory`);
  } catch (cause) {
    if ((cause as { code?: unknown }).code === "usage") throw cause;
    throw usageError(`cannot read ${dir}: ${errnoOrMessage(cause)}`, cause);
  }
  const files: { path: Buffer; size: number }[] = [];
  const failures: Failure[] = [];
  let bytes = 0;
  let removed = 0;
  /** A failure of the run for this entry, or nothing for one gone since its directory was listed. */
  const fail = (path: Buffer, e: unknown) => {
    const code = (e as { code?: unknown } | null)?.code;
    if (code === "ENOENT") return;
    failures.push({
      path: path.toString(),
      status: "failed",
      error: { code: typeof code === "string" ? code : "internal", message: messageOf(e) },
    });
  };
  const walk = async (at: Buffer): Promise<void> => {
    let entries: Dirent<Buffer>[];
    try {
      entries = await readdir(at, { withFileTypes: true, encoding: "buffer" });
    } catch (e) {
      fail(at, e);
      return;
    }
    entries.sort((a, b) => Buffer.compare(a.name, b.name));
    for (const entry of entries) {
      const path = joinBytes(at, entry.name);
      if (entry.isDirectory()) {
        await walk(path);
        continue;
      }
      if (!entry.isFile()) continue;
      try {
        if (TEMP_FILE.test(entry.name.toString())) {
          await rm(path, { force: true });
          removed++;
        } else {
          const { size } = await lstat(path);
          files.push({ path, size });
          bytes += size;
        }
      } catch (e) {
        fail(path, e);
      }
    }
  };
  await walk(Buffer.from(dir));
  return { files, bytes, removed, failures };
}

/**
 * `path.join` on names kept as bytes. Latin-1 maps each byte to one character and back, and join only
 * acts on the separator and dots, which are single bytes that no UTF-8 sequence holds: the other bytes
 * come through as they were.
 */
function joinBytes(dir: Buffer, name: Buffer): Buffer {
  return Buffer.from(join(dir.toString("latin1"), name.toString("latin1")), "latin1");
}
