/**
 * The data-plane commands: encrypt, decrypt, rewrap, datakey, sign, verify, random.
 * They read from a file or stdin and write to a file or stdout, so they compose in
 * pipes: `echo hi | custos encrypt --key k | custos decrypt --key k` prints `hi`.
 */
import type { Command } from "commander";
import { arg, type CliContext, seg } from "../context.js";
import { EXIT_CLIENT, usageError } from "../errors.js";
import { readInput, writeOutput } from "../io.js";
import { addContextPair, parseInteger } from "../parse.js";

type Context = Record<string, string>;

interface KeyOptions {
  key: string;
  context?: Context;
}

interface FileOptions {
  in?: string;
  out?: string;
}

function withKey(cmd: Command, context = true): Command {
  cmd.requiredOption("--key <name>", "the KMS key to use");
  if (context) {
    cmd.option(
      "--context <key=value>",
      "encryption context, bound as AAD (repeatable; decrypt needs the same pairs)",
      arg<Context, Context | undefined>(addContextPair),
    );
  }
  return cmd;
}

function withFiles(cmd: Command, inHelp: string, outHelp?: string): Command {
  cmd.option("--in <file>", inHelp);
  if (outHelp !== undefined) cmd.option("--out <file>", outHelp);
  return cmd;
}

function contextOf(o: KeyOptions): { context?: Context } {
  return o.context === undefined ? {} : { context: o.context };
}

/** The ciphertext from the argument, or else from --in / stdin, whitespace trimmed. */
async function ciphertextFrom(
  ctx: CliContext,
  positional: string | undefined,
  file: string | undefined,
): Promise<string> {
  if (positional !== undefined && file !== undefined)
    throw usageError("give the ciphertext as an argument or --in, not both");
  const text = positional ?? (await readInput(file, ctx.io)).toString("utf8");
  const ciphertext = text.trim();
  if (ciphertext.length === 0) throw usageError("no ciphertext given (argument, --in FILE or stdin)");
  return ciphertext;
}

/** Registers the data-plane commands. */
export function registerCryptoCommands(program: Command, ctx: CliContext): void {
  const op = (key: string, what: string): string => `/v1/keys/${seg(key)}/${what}`;

  withFiles(
    withKey(program.command("encrypt").description("encrypt bytes from --in or stdin; prints the ciphertext")),
    "read the plaintext from this file (default: stdin)",
    "write the ciphertext to this file (mode 0600)",
  ).action(async (o: KeyOptions & FileOptions): Promise<void> => {
    const plaintext = await readInput(o.in, ctx.io);
    try {
      const body = { plaintext: plaintext.toString("base64"), ...contextOf(o) };
      const answer = await ctx.client().request<{ ciphertext: string }>("POST", op(o.key, "encrypt"), { body });
      await writeOutput(o.out, ctx.json ? `${JSON.stringify(answer, null, 2)}\n` : `${answer.ciphertext}\n`, ctx.io);
    } finally {
      plaintext.fill(0);
    }
  });

  withFiles(
    withKey(
      program
        .command("decrypt [ciphertext]")
        .description("decrypt a ciphertext (argument, --in or stdin); writes the raw plaintext bytes"),
    ),
    "read the ciphertext from this file",
    "write the plaintext to this file (mode 0600)",
  ).action(async (positional: string | undefined, o: KeyOptions & FileOptions): Promise<void> => {
    const ciphertext = await ciphertextFrom(ctx, positional, o.in);
    const answer = await ctx.client().request<{ plaintext: string }>("POST", op(o.key, "decrypt"), {
      body: { ciphertext, ...contextOf(o) },
    });
    if (ctx.json) {
      await writeOutput(o.out, `${JSON.stringify(answer, null, 2)}\n`, ctx.io);
      return;
    }
    const plaintext = Buffer.from(answer.plaintext, "base64");
    try {
      await writeOutput(o.out, plaintext, ctx.io);
    } finally {
      plaintext.fill(0);
    }
  });

  withFiles(
    withKey(
      program
        .command("rewrap [ciphertext]")
        .description("re-encrypt a ciphertext under the key's newest version without revealing the plaintext"),
    ),
    "read the ciphertext from this file",
  ).action(async (positional: string | undefined, o: KeyOptions & FileOptions): Promise<void> => {
    const ciphertext = await ciphertextFrom(ctx, positional, o.in);
    const answer = await ctx.client().request<{ ciphertext: string }>("POST", op(o.key, "rewrap"), {
      body: { ciphertext, ...contextOf(o) },
    });
    await ctx.emit(answer, (a) => `${a.ciphertext}\n`);
  });

  withKey(program.command("datakey").description("generate a data key: its ciphertext and (base64) plaintext"))
    .option("--bytes <n>", "key length in bytes (16, 24 or 32)", arg(dataKeyLength), 32)
    .option("--no-plaintext", "return only the ciphertext (decrypt it later when needed)")
    .action(async (o: KeyOptions & { bytes: number; plaintext: boolean }): Promise<void> => {
      const body = { bytes: o.bytes, plaintext: o.plaintext, ...contextOf(o) };
      await ctx.emit(await ctx.client().request("POST", op(o.key, "datakey"), { body }));
    });

  withFiles(
    withKey(
      program
        .command("sign")
        .description("sign a message from --in or stdin; prints the base64 signature (--json adds the key version)"),
      false,
    ),
    "read the message from this file (default: stdin)",
  ).action(async (o: KeyOptions & FileOptions): Promise<void> => {
    const message = await readInput(o.in, ctx.io);
    const answer = await ctx.client().request<{ signature: string }>("POST", op(o.key, "sign"), {
      body: { message: message.toString("base64") },
    });
    await ctx.emit(answer, (a) => `${a.signature}\n`);
  });

  withFiles(
    withKey(
      program
        .command("verify")
        .description('check a signature over a message from --in or stdin; prints "valid", or "invalid" and exits 1'),
      false,
    )
      .requiredOption("--signature <base64>", "the signature to check")
      // A signature made before a rotation checks only against the version that made it.
      .option(
        "--key-version <n>",
        "the key version that made the signature (default: the newest)",
        arg((t) => parseInteger(t, "key version")),
      ),
    "read the message from this file (default: stdin)",
  ).action(async (o: KeyOptions & FileOptions & { signature: string; keyVersion?: number }): Promise<void> => {
    const message = await readInput(o.in, ctx.io);
    const answer = await ctx.client().request<{ valid: boolean }>("POST", op(o.key, "verify"), {
      body: { message: message.toString("base64"), signature: o.signature.trim(), version: o.keyVersion },
    });
    if (answer.valid !== true) ctx.exitCode = EXIT_CLIENT;
    await ctx.emit(answer, (a) => (a.valid === true ? "valid\n" : "invalid\n"));
  });

  program
    .command("random")
    .description("random bytes from the HSM")
    .option(
      "--bytes <n>",
      "how many",
      // The server's limit (the KMS's MAX_RANDOM_BYTES): a larger count is a usage error here.
      arg((t) => parseInteger(t, "byte count", 1, 1024)),
      32,
    )
    .option("--hex", "print hex instead of base64")
    .action(async (o: { bytes: number; hex?: boolean }): Promise<void> => {
      const answer = await ctx.client().request<{ random: string }>("POST", "/v1/random", { body: { bytes: o.bytes } });
      await ctx.emit(answer, (a) => `${o.hex === true ? Buffer.from(a.random, "base64").toString("hex") : a.random}\n`);
    });
}

/** A data key's length: an AES key of 128, 192 or 256 bits. */
function dataKeyLength(text: string): number {
  const n = parseInteger(text, "length", 16, 32);
  if (n % 8 !== 0) throw usageError(`invalid length "${text}": expected 16, 24 or 32`);
  return n;
}
