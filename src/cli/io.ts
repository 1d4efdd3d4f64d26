/**
 * The CLI's dealings with its standard streams and files: reading input from a file
 * or stdin, writing output to a file or stdout, reading a password without echo.
 */
import {
  closeSync,
  fchmodSync,
  constants as fsConstants,
  fstatSync,
  ftruncateSync,
  openSync,
  readFileSync,
  rmSync,
  writeSync,
} from "node:fs";
import { constants } from "node:os";
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

/**
 * The bytes of `file` (or stdin) as text, refused when they are not UTF-8: a value
 * the API takes as a string must arrive byte for byte, not with U+FFFD where the
 * bytes were.
 */
export async function readText(file: string | undefined, io: CliIo): Promise<string> {
  const bytes = await readInput(file, io);
  try {
    // ignoreBOM keeps a leading byte order mark as part of the value.
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    const from = file === undefined || file === "-" ? "stdin" : file;
    throw usageError(`${from} is not UTF-8 text, and values are text: encode binary data first (e.g. as base64)`);
  } finally {
    bytes.fill(0);
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

/** The CLI's error for an output file it could not write. Exit 1. */
export function cannotWrite(file: string, cause: unknown): CliError {
  return new CliError("io_error", `cannot write ${file}: ${errnoOrMessage(cause)}`, EXIT_CLIENT, { cause });
}

/** Creates or truncates `file` with mode 0600 (also when it existed with a wider mode) and writes `data`. */
export function writePrivateFile(file: string, data: string | Uint8Array): void {
  reservePrivateFile(file).fill(data);
}

/** An output file opened before its contents exist (see `reservePrivateFile`). */
export interface ReservedFile {
  /** Replaces the file's contents with `data`, mode 0600 (a FIFO or device is written, not changed), and closes it. */
  fill(data: string | Uint8Array): void;
  /** Closes the file without writing; removes it if this reservation created it. */
  release(): void;
}

/**
 * Opens `file` for writing now, creating it (0600) if absent but neither truncating
 * nor changing it, so a command can find out that its output can't be written before
 * it asks the server for something that would be lost (a token issued once).
 * @throws CliError `io_error` when the file can't be opened for writing.
 */
export function reservePrivateFile(file: string): ReservedFile {
  let fd: number;
  let created = false;
  try {
    try {
      fd = openSync(file, "wx", 0o600);
      created = true;
    } catch (e) {
      if ((e as { code?: unknown }).code !== "EEXIST") throw e;
      // Not truncated: what was there stays until there is something to replace it.
      // O_CREAT still, for a link whose target is yet to be made (O_EXCL saw the link).
      fd = openSync(file, fsConstants.O_WRONLY | fsConstants.O_CREAT, 0o600);
    }
  } catch (cause) {
    throw cannotWrite(file, cause);
  }
  let open = true;
  const close = (): void => {
    if (open) closeSync(fd);
    open = false;
  };
  return {
    fill(data) {
      try {
        // Only a regular file is the command's to narrow: fchmod on a FIFO or on
        // /dev/null (as root) would change that node for everyone.
        if (fstatSync(fd).isFile()) {
          fchmodSync(fd, 0o600);
          ftruncateSync(fd, 0);
        }
        const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
        let offset = 0;
        while (offset < bytes.length) offset += writeSync(fd, bytes, offset);
      } catch (cause) {
        close();
        // Half a token is no token: leave nothing this reservation made.
        if (created) rmSync(file, { force: true });
        throw cannotWrite(file, cause);
      } finally {
        close();
      }
    },
    release() {
      close();
      if (created) rmSync(file, { force: true });
    },
  };
}

/** Signals that end a command midway: its terminal closed, Ctrl-C, a kill. */
const INTERRUPTS = ["SIGHUP", "SIGINT", "SIGTERM"] as const;

/**
 * Runs `cleanup` (synchronous: the process ends right after) when one of `INTERRUPTS`
 * arrives before the returned function is called, then exits as that signal would
 * have: 128 + its number (130 for Ctrl-C, 143 for SIGTERM). For files that must not
 * outlive an interrupted command.
 */
export function cleanUpOnInterrupt(cleanup: () => void): () => void {
  const onSignal = (signal: NodeJS.Signals): void => {
    try {
      cleanup();
    } finally {
      process.exit(128 + (constants.signals[signal] ?? 0));
    }
  };
  for (const s of INTERRUPTS) process.on(s, onSignal);
  return () => {
    for (const s of INTERRUPTS) process.off(s, onSignal);
  };
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
