/**
 * The CLI's dealings with its standard streams and files: reading input from a file
 * or stdin, writing output to a file or stdout, reading a password without echo.
 */
import { closeSync, fchmodSync, openSync, readFileSync, writeSync } from "node:fs";
import type { ReadStream } from "node:tty";
import { errnoOrMessage } from "../errors/index.js";
import { Secret } from "../secret/index.js";
import { CliError, EXIT_CLIENT, usageError } from "./errors.js";

/** The streams and environment a CLI run works with (the process's, or a test's). */
export interface CliIo {
  readonly stdin: NodeJS.ReadableStream & { readonly isTTY?: boolean };
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
  readonly env: NodeJS.ProcessEnv;
}

/** The process's own streams and environment. */
export function processIo(): CliIo {
  return { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, env: process.env };
}

/** Reads a stream to its end. */
export async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === "string" ? Buffer.from(chunk) : chunk);
  const all = Buffer.concat(chunks);
  for (const c of chunks) c.fill(0);
  return all;
}

/** The bytes of `file`, or of stdin when no file is named (or it is `-`). */
export async function readInput(file: string | undefined, io: CliIo): Promise<Buffer> {
  if (file === undefined || file === "-") return readAll(io.stdin);
  try {
    return readFileSync(file);
  } catch (cause) {
    throw usageError(`cannot read ${file}: ${errnoOrMessage(cause)}`, cause);
  }
}

/** Writes to a stream and waits until it has taken the data. */
export function writeTo(stream: NodeJS.WritableStream, data: string | Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.write(data, (e?: Error | null) => (e ? reject(e) : resolve()));
  });
}

/**
 * Writes `data` to `file` (created or truncated with mode 0600, since it may be
 * plaintext or a token) or to stdout when no file is named (or it is `-`).
 */
export async function writeOutput(file: string | undefined, data: string | Uint8Array, io: CliIo): Promise<void> {
  if (file === undefined || file === "-") return writeTo(io.stdout, data);
  writePrivateFile(file, data);
}

/** Creates or truncates `file` with mode 0600 (also when it existed with a wider mode) and writes `data`. */
export function writePrivateFile(file: string, data: string | Uint8Array): void {
  let fd: number;
  try {
    fd = openSync(file, "w", 0o600);
  } catch (cause) {
    throw new CliError("io_error", `cannot write ${file}: ${errnoOrMessage(cause)}`, EXIT_CLIENT, { cause });
  }
  try {
    fchmodSync(fd, 0o600);
    const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    let offset = 0;
    while (offset < bytes.length) offset += writeSync(fd, bytes, offset);
  } catch (cause) {
    throw new CliError("io_error", `cannot write ${file}: ${errnoOrMessage(cause)}`, EXIT_CLIENT, { cause });
  } finally {
    closeSync(fd);
  }
}

/**
 * A password from stdin (`--password-stdin`: everything up to EOF, one trailing
 * newline removed) or else from a no-echo prompt on the terminal.
 */
export async function readPassword(io: CliIo, fromStdin: boolean, prompt = "Password: "): Promise<Secret> {
  if (fromStdin) {
    const raw = await readAll(io.stdin);
    let end = raw.length;
    if (end > 0 && raw[end - 1] === 0x0a) end -= 1;
    if (end > 0 && raw[end - 1] === 0x0d) end -= 1;
    const password = Secret.copy(raw.subarray(0, end));
    raw.fill(0);
    if (password.length === 0) throw usageError("the password read from stdin is empty");
    return password;
  }
  if (io.stdin.isTTY !== true) {
    throw usageError("stdin is not a terminal: pipe the password in with --password-stdin");
  }
  return promptHidden(io.stdin as ReadStream, io.stderr, prompt);
}

/** Reads one line from a TTY in raw mode so nothing is echoed. */
function promptHidden(tty: ReadStream, out: NodeJS.WritableStream, prompt: string): Promise<Secret> {
  out.write(prompt);
  const typed: number[] = [];
  return new Promise<Secret>((resolve, reject) => {
    const finish = (error?: CliError): void => {
      tty.off("data", onData);
      tty.setRawMode(false);
      tty.pause();
      out.write("\n");
      const bytes = Buffer.from(typed);
      typed.fill(0);
      if (error) {
        bytes.fill(0);
        reject(error);
      } else {
        resolve(Secret.adopt(bytes));
      }
    };
    const onData = (chunk: Buffer): void => {
      try {
        for (const byte of chunk) {
          if (byte === 0x0d || byte === 0x0a) {
            finish();
            return;
          }
          if (byte === 0x03 || byte === 0x04) {
            finish(usageError("password entry cancelled"));
            return;
          }
          if (byte === 0x7f || byte === 0x08) eraseLastCharacter(typed);
          else typed.push(byte);
        }
      } finally {
        chunk.fill(0);
      }
    };
    tty.setRawMode(true);
    tty.resume();
    tty.on("data", onData);
  });
}

/** Backspace removes a whole UTF-8 character: its continuation bytes, then its lead byte. */
function eraseLastCharacter(typed: number[]): void {
  let byte = typed.pop();
  while (byte !== undefined && (byte & 0xc0) === 0x80) byte = typed.pop();
}
