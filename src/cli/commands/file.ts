/**
 * `custos file encrypt|decrypt|inspect|rewrap`: envelope encryption of files and
 * streams (docs/envelope-format.md). Data never travels to Custos: only data keys do.
 * Output files appear whole or not at all (written beside, then renamed).
 */
import { rmSync } from "node:fs";
import { type FileHandle, open, realpath, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { Command } from "commander";
import {
  chunkLayout,
  DEFAULT_CHUNK_SIZE,
  IncompleteHeader,
  MAX_CHUNK_SIZE,
  MIN_CHUNK_SIZE,
  parseHeader,
} from "../../envelope/format.js";
import {
  Envelope,
  fileSource,
  type Header,
  httpKms,
  readHeader,
  rewrapFiles,
  rewrapStream,
} from "../../envelope/index.js";
import { CustosError, errnoOrMessage, isCustosError } from "../../errors/index.js";
import { syncPath, tempName } from "../../files/index.js";
import { arg, type CliContext } from "../context.js";
import { CliError, EXIT_CLIENT, printable, usageError } from "../errors.js";
import { cannotWrite, cleanUpOnInterrupt } from "../io.js";
import { addContextPair, parseInteger } from "../parse.js";

type Context = Record<string, string>;

const contextOption = (cmd: Command, help: string) =>
  cmd.option("--context <key=value>", help, arg<Context, Context | undefined>(addContextPair));

/** Registers `custos file …`. */
export function registerFileCommands(program: Command, ctx: CliContext): void {
  const file = program
    .command("file")
    .description("envelope-encrypt files and streams: data is encrypted here, only data keys go to Custos");

  contextOption(
    file
      .command("encrypt")
      .description("encrypt --in (or stdin) into an envelope message at --out (or stdout)")
      .requiredOption("--key <name>", "the KMS key that wraps the data key"),
    "encryption context (repeatable); stored in the header in clear, needed again to decrypt",
  )
    .option("--in <file>", "the plaintext (default: stdin)")
    .option("--out <file>", "where to write the message (default: stdout)")
    .option(
      "--chunk-size <bytes>",
      `plaintext bytes per chunk (default ${DEFAULT_CHUNK_SIZE})`,
      arg((t) => parseInteger(t, "chunk size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)),
    )
    .action(async (o: { key: string; context?: Context; in?: string; out?: string; chunkSize?: number }) => {
      const envelope = new Envelope({
        kms: httpKms(ctx.client()),
        cache: false,
        ...(o.chunkSize === undefined ? {} : { chunkSize: o.chunkSize }),
      });
      await transfer(
        ctx,
        o.out,
        async () => [await input(ctx, o.in), envelope.encryptStream({ key: o.key, ...contextOf(o) })],
        "an envelope message",
      );
    });

  contextOption(
    file.command("decrypt").description("decrypt an envelope message from --in (or stdin) to --out (or stdout)"),
    "the encryption context the message was made with (repeatable)",
  )
    .option("--in <file>", "the message (default: stdin)")
    .option("--out <file>", "where to write the plaintext, mode 0600 (default: stdout)")
    .option("--offset <bytes>", "decrypt only from this plaintext offset (needs --in)", arg(nonNegative("offset")))
    .option("--length <bytes>", "decrypt only this many plaintext bytes (needs --in)", arg(nonNegative("length")))
    .action(async (o: { context?: Context; in?: string; out?: string; offset?: number; length?: number }) => {
      const envelope = new Envelope({ kms: httpKms(ctx.client()), cache: false });
      if (o.offset === undefined && o.length === undefined) {
        await transfer(ctx, o.out, async () => [await input(ctx, o.in), envelope.decryptStream(contextOf(o))]);
        return;
      }
      const file = o.in;
      if (file === undefined || file === "-") throw usageError("--offset and --length need --in FILE (random access)");
      const start = o.offset ?? 0;
      // Both are safe integers, their sum need not be; readRange clamps any end past the plaintext.
      const end = Math.min(start + (o.length ?? Number.MAX_SAFE_INTEGER), Number.MAX_SAFE_INTEGER);
      await transfer(ctx, o.out, async () => {
        const source = await openSource(file);
        try {
          return [[await envelope.readRange(source, start, end, contextOf(o))]];
        } finally {
          await source.close();
        }
      });
    });

  file
    .command("inspect")
    .description("show an envelope message's header (no KMS call, nothing decrypted)")
    .option("--in <file>", "the message (default: stdin)")
    .action(async (o: { in?: string }) => {
      const { header, size } = await inspect(ctx, o.in);
      const layout = size === undefined ? undefined : layoutOf(header, size);
      await ctx.emit(
        {
          format: "custos envelope v1",
          key: header.keyName,
          keyVersion: header.keyVersion,
          context: header.context,
          chunkSize: header.chunkSize,
          headerBytes: header.length,
          ...(size === undefined ? {} : { messageBytes: size }),
          ...(layout ?? {}),
        },
        undefined,
      );
    });

  file
    .command("rewrap [paths...]")
    .description("move messages' data keys to the key's newest version, data untouched (stdin to stdout without paths)")
    .action(async (paths: string[]) => {
      const kms = httpKms(ctx.client());
      if (paths.length === 0) {
        await transfer(ctx, undefined, async () => [ctx.io.stdin, rewrapStream(kms)], "an envelope message");
        return;
      }
      const outcomes = await rewrapFiles(kms, paths);
      await ctx.emit({ files: outcomes }, ({ files }) =>
        files
          .map((f) => {
            // A file name is anyone's choice, and may hold what would drive the terminal.
            const path = printable(f.path);
            if (f.status === "rewrapped") return `${path}: rewrapped, version ${f.from} -> ${f.to}\n`;
            if (f.status === "current") return `${path}: already on version ${f.version}\n`;
            if (f.status === "not_envelope") return `${path}: not an envelope message, left alone\n`;
            return `${path}: failed: ${printable(f.error.code)}: ${printable(f.error.message)}\n`;
          })
          .join(""),
      );
      if (outcomes.some((f) => f.status === "failed" || f.status === "not_envelope")) ctx.exitCode = EXIT_CLIENT;
    });
}

function contextOf(o: { context?: Context }): { context?: Context } {
  return o.context === undefined ? {} : { context: o.context };
}

function nonNegative(what: string) {
  return (text: string) => parseInteger(text, what, 0);
}

type Stage = NodeJS.ReadableStream | NodeJS.ReadWriteStream | Iterable<Buffer>;
const run = pipeline as (...stages: unknown[]) => Promise<void>;

/** The input stream: the file, or stdin for none or `-`. */
function input(ctx: CliContext, file: string | undefined): Promise<Stage> | Stage {
  return file === undefined || file === "-" ? ctx.io.stdin : openInput(file);
}

/** What the bytes `transfer` writes are, when a terminal must not get them raw. */
type Binary = "an envelope message" | undefined;

/**
 * Runs the stages that `source` builds into `to`, or stdout for none or `-`. Everything
 * that can be checked about the output is, before `source` is asked for anything (no
 * KMS call for output that can't be written). A regular file (or a new one) is written
 * beside its destination with mode 0600 and renamed into place once complete and
 * synced, so it appears whole or not at all, also when a signal ends the command; a
 * FIFO or a device is written into, as it is no file to replace. The output is bytes:
 * with `--json` it must go to a file, and the JSON answer says where and how much.
 */
async function transfer(
  ctx: CliContext,
  to: string | undefined,
  source: () => Promise<Stage[]>,
  binary?: Binary,
): Promise<void> {
  if (to === undefined || to === "-") {
    if (ctx.json) throw usageError("the output is bytes, not JSON: with --json, write it to --out FILE");
    if (binary !== undefined && (ctx.io.stdout as { isTTY?: boolean }).isTTY === true) {
      throw usageError(`refusing to write ${binary} to a terminal: redirect stdout or give --out FILE`);
    }
    await run(...(await source()), ctx.io.stdout, { end: false });
    return;
  }
  const target = await replacementOf(to);
  const bytes = target === null ? await writeInto(to, source) : await replaceFile(target, to, source);
  if (ctx.json) await ctx.emit({ out: to, bytes });
}

/**
 * The file to replace for `to`: the regular file it names (through its symbolic
 * links, so a link keeps pointing at the new bytes), or `to` when there is none yet.
 * Null for a FIFO or a device (`/dev/null`, `/dev/stdout`), which is written into
 * instead: renaming a file over it would put plaintext where a device node was.
 */
async function replacementOf(to: string): Promise<string | null> {
  try {
    const found = await stat(to);
    if (found.isDirectory()) throw new CliError("io_error", `cannot write ${to}: it is a directory`, EXIT_CLIENT);
    return found.isFile() ? await realpath(to) : null;
  } catch (e) {
    if (e instanceof CliError) throw e;
    // A missing parent directory is reported by the open that follows.
    if ((e as { code?: unknown }).code === "ENOENT") return to;
    throw cannotWrite(to, e);
  }
}

/** Writes `target` (named `to` in errors) by a temporary file beside it, renamed over it. */
async function replaceFile(target: string, to: string, source: () => Promise<Stage[]>): Promise<number> {
  const stages = await source();
  const temp = join(dirname(target), tempName(basename(target), "part"));
  // A killed command would leave its partial output (perhaps plaintext) beside the destination.
  const stopCleanup = cleanUpOnInterrupt(() => rmSync(temp, { force: true }));
  let handle: FileHandle | undefined;
  try {
    try {
      handle = await open(temp, "wx", 0o600);
    } catch (e) {
      discard(stages);
      throw cannotWrite(to, e);
    }
    const bytes = await pipeInto(stages, handle, to);
    try {
      await handle.sync();
      await handle.close();
      handle = undefined;
      await rename(temp, target);
      await syncPath(dirname(target));
    } catch (e) {
      throw cannotWrite(to, e);
    }
    return bytes;
  } catch (e) {
    // The first error is the one to report: cleaning up is best effort.
    await handle?.close().catch(() => {});
    await rm(temp, { force: true }).catch(() => {});
    throw e;
  } finally {
    stopCleanup();
  }
}

async function writeInto(to: string, source: () => Promise<Stage[]>): Promise<number> {
  const stages = await source();
  let handle: FileHandle;
  try {
    handle = await open(to, "w");
  } catch (e) {
    discard(stages);
    throw cannotWrite(to, e);
  }
  try {
    return await pipeInto(stages, handle, to);
  } finally {
    await handle.close().catch(() => {});
  }
}

/** Closes what `stages` opened, when they will not run. */
function discard(stages: Stage[]): void {
  for (const stage of stages) if ("destroy" in stage && typeof stage.destroy === "function") stage.destroy();
}

/** Runs `stages` into an open file; a failed write is an `io_error` naming `to`. Returns the bytes written. */
async function pipeInto(stages: Stage[], handle: FileHandle, to: string): Promise<number> {
  let total = 0;
  await run(...stages, async (chunks: AsyncIterable<Buffer>) => {
    for await (const chunk of chunks) {
      try {
        for (let at = 0; at < chunk.length; ) at += (await handle.write(chunk, at)).bytesWritten;
      } catch (e) {
        throw cannotWrite(to, e);
      }
      total += chunk.length;
    }
  });
  return total;
}

async function openInput(file: string): Promise<Readable> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(file, "r");
    // A directory opens, and fails only at the first read, midway through the command.
    if ((await handle.stat()).isDirectory()) throw Object.assign(new Error("is a directory"), { code: "EISDIR" });
    return handle.createReadStream();
  } catch (cause) {
    await handle?.close();
    throw usageError(`cannot read ${file}: ${errnoOrMessage(cause)}`, cause);
  }
}

async function openSource(file: string) {
  try {
    return await fileSource(file);
  } catch (cause) {
    const why = cause instanceof CustosError ? cause.message : errnoOrMessage(cause);
    throw usageError(`cannot read ${file}: ${why}`, cause);
  }
}

/**
 * The header of a file (with its size), or of stdin (reading it to the end to count
 * its size). Input with no header is `invalid_request`: inspect decrypts nothing, so
 * the envelope's uniform `decryption_failed` would mislead.
 */
async function inspect(ctx: CliContext, file: string | undefined): Promise<{ header: Header; size?: number }> {
  if (file !== undefined && file !== "-") {
    const source = await openSource(file);
    try {
      return { header: await readHeader(source), size: source.size };
    } catch (e) {
      throw isCustosError(e, "decryption_failed") ? notAnEnvelope() : e;
    } finally {
      await source.close();
    }
  }
  let head = Buffer.alloc(0);
  let size = 0;
  let header: Header | undefined;
  for await (const chunk of ctx.io.stdin) {
    const bytes = typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Buffer);
    size += bytes.length;
    if (header !== undefined) continue;
    head = Buffer.concat([head, bytes]);
    try {
      header = parseHeader(head);
    } catch (e) {
      if (e instanceof IncompleteHeader) continue;
      throw isCustosError(e, "decryption_failed") ? notAnEnvelope() : e;
    }
  }
  if (header === undefined) throw notAnEnvelope();
  return { header, size };
}

function notAnEnvelope(): CliError {
  return new CliError("invalid_request", "not an envelope message (no valid header at its start)", EXIT_CLIENT);
}

function layoutOf(header: Header, size: number): { chunks: number; plaintextBytes: number } | { damaged: true } {
  try {
    const { chunks, plaintextLength } = chunkLayout(size - header.length, header.chunkSize);
    return { chunks, plaintextBytes: plaintextLength };
  } catch {
    return { damaged: true };
  }
}
