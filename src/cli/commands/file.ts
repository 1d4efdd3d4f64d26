/**
 * `custos file encrypt|decrypt|inspect|rewrap`: envelope encryption of files and
 * streams (docs/envelope-format.md). Data never travels to Custos: only data keys do.
 * Output files appear whole or not at all (written beside, then renamed).
 */
import { randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { open, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { Command } from "commander";
import { chunkLayout, DEFAULT_CHUNK_SIZE, IncompleteHeader, parseHeader } from "../../envelope/format.js";
import {
  Envelope,
  fileSource,
  type Header,
  httpKms,
  readHeader,
  rewrapFiles,
  rewrapStream,
} from "../../envelope/index.js";
import { errnoOrMessage } from "../../errors/index.js";
import { syncPath } from "../../files/index.js";
import { arg, type CliContext } from "../context.js";
import { CliError, EXIT_CLIENT, usageError } from "../errors.js";
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
      arg((t) => parseInteger(t, "chunk size")),
    )
    .action(async (o: { key: string; context?: Context; in?: string; out?: string; chunkSize?: number }) => {
      const envelope = new Envelope({
        kms: httpKms(ctx.client()),
        cache: false,
        ...(o.chunkSize === undefined ? {} : { chunkSize: o.chunkSize }),
      });
      await transfer(ctx, [await input(ctx, o.in), envelope.encryptStream({ key: o.key, ...contextOf(o) })], o.out);
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
        await transfer(ctx, [await input(ctx, o.in), envelope.decryptStream(contextOf(o))], o.out);
        return;
      }
      if (o.in === undefined || o.in === "-") throw usageError("--offset and --length need --in FILE (random access)");
      const source = await openSource(o.in);
      try {
        const start = o.offset ?? 0;
        // Both are safe integers, their sum need not be; readRange clamps any end past the plaintext.
        const end = Math.min(start + (o.length ?? Number.MAX_SAFE_INTEGER), Number.MAX_SAFE_INTEGER);
        const plaintext = await envelope.readRange(source, start, end, contextOf(o));
        await transfer(ctx, [[plaintext]], o.out);
      } finally {
        await source.close();
      }
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
        await transfer(ctx, [ctx.io.stdin, rewrapStream(kms)], undefined);
        return;
      }
      const outcomes = await rewrapFiles(kms, paths);
      await ctx.emit({ files: outcomes }, ({ files }) =>
        files
          .map((f) => {
            if (f.status === "rewrapped") return `${f.path}: rewrapped, version ${f.from} -> ${f.to}\n`;
            if (f.status === "current") return `${f.path}: already on version ${f.version}\n`;
            if (f.status === "not_envelope") return `${f.path}: not an envelope message, left alone\n`;
            return `${f.path}: failed: ${f.error.code}: ${f.error.message}\n`;
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

/**
 * Runs `stages` into `to` (a file, or stdout for none or `-`). A file is written
 * beside its destination with mode 0600 and renamed into place only once complete
 * and synced, so a failure leaves no partial output behind.
 */
/**
 * Runs the stages into `to` (written whole or not at all) or stdout. The output is
 * bytes: with `--json` it must go to a file, and the JSON answer says where and how
 * much.
 */
async function transfer(ctx: CliContext, stages: Stage[], to: string | undefined): Promise<void> {
  if (to === undefined || to === "-") {
    if (ctx.json) throw usageError("the output is bytes, not JSON: with --json, write it to --out FILE");
    await run(...stages, ctx.io.stdout, { end: false });
    return;
  }
  const temp = join(dirname(to), `.${basename(to)}.${randomBytes(6).toString("hex")}.part`);
  try {
    await run(...stages, createWriteStream(temp, { flags: "wx", mode: 0o600 }));
    // fsync applies to the file, whichever descriptor asks: the stream has closed its own.
    await syncPath(temp);
    await rename(temp, to);
    await syncPath(dirname(to));
    if (ctx.json) await ctx.emit({ out: to, bytes: (await stat(to)).size });
  } catch (e) {
    await rm(temp, { force: true });
    const code = (e as { code?: unknown }).code;
    if (code === "ENOENT" || code === "EACCES" || code === "EEXIST" || code === "ENOTDIR") {
      throw new CliError("io_error", `cannot write ${to}: ${errnoOrMessage(e)}`, EXIT_CLIENT, { cause: e });
    }
    throw e;
  }
}

async function openInput(file: string): Promise<Readable> {
  try {
    const handle = await open(file, "r");
    return handle.createReadStream();
  } catch (cause) {
    throw usageError(`cannot read ${file}: ${errnoOrMessage(cause)}`, cause);
  }
}

async function openSource(file: string) {
  try {
    return await fileSource(file);
  } catch (cause) {
    throw usageError(`cannot read ${file}: ${errnoOrMessage(cause)}`, cause);
  }
}

/** The header of a file (with its size), or of stdin (reading it to the end to count its size). */
async function inspect(ctx: CliContext, file: string | undefined): Promise<{ header: Header; size?: number }> {
  if (file !== undefined && file !== "-") {
    const source = await openSource(file);
    try {
      return { header: await readHeader(source), size: source.size };
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
      if (!(e instanceof IncompleteHeader)) throw e;
    }
  }
  if (header === undefined)
    throw new CliError("decryption_failed", "not an envelope message (header incomplete)", EXIT_CLIENT);
  return { header, size };
}

function layoutOf(header: Header, size: number): { chunks: number; plaintextBytes: number } | { damaged: true } {
  try {
    const { chunks, plaintextLength } = chunkLayout(size - header.length, header.chunkSize);
    return { chunks, plaintextBytes: plaintextLength };
  } catch {
    return { damaged: true };
  }
}
