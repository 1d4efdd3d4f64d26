/**
 * Durable file writes, for every place that must leave a file either old or new
 * after a crash: the bytes go to a temporary file beside the target (created with
 * its final mode, so a key is never readable by others for an instant), are
 * fsynced, renamed over the target, and the directory is fsynced so the rename
 * itself survives.
 */
import { randomBytes } from "node:crypto";
import { type FileHandle, open, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { messageOf } from "../errors/index.js";

/** fsyncs a file, or a directory (which makes the renames and new entries in it durable). */
export async function syncPath(path: string | Buffer): Promise<void> {
  const handle = await open(path, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Replaces `path` with `data` atomically, the file ending with exactly `mode`
 * (the umask can't narrow or widen it). A failure leaves `path` as it was and no
 * temporary file behind.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode: number): Promise<void> {
  const temp = await writeTemp(path, data, mode);
  try {
    await rename(temp, path);
    await syncPath(dirname(path));
  } catch (e) {
    await rm(temp, { force: true });
    throw e;
  }
}

/** One file of `replaceFiles`. */
export interface FileReplacement {
  readonly path: string;
  readonly data: string | Uint8Array;
  readonly mode: number;
}

/** A file of `replaceFiles` made ready: its new contents, and a copy of the old when there was one. */
interface Staged {
  readonly path: string;
  readonly temp: string;
  previous?: string | undefined;
}

/**
 * Replaces several files as one change, for files that are only right together
 * (a key and its certificate). Every new file, and a copy of every file it replaces,
 * is written and fsynced beside its target first; only then are the new files
 * renamed into place, in the order given, one right after the other. When a rename
 * fails, the files already replaced get their old contents back, by rename too (a
 * file that did not exist is removed), so after an error every file is as it was.
 * Only a crash between two of those renames (kill -9, power loss) can leave some
 * files new and the others old: the window is that of a few renames.
 * @throws the first failure; when the old contents could not all be put back, an
 * Error saying so, with the first failure as its cause.
 */
export async function replaceFiles(files: readonly FileReplacement[]): Promise<void> {
  await (await replaceFilesUndoably(files)).keep();
}

/** A `replaceFiles` change not yet final: kept, or undone with the old contents put back. */
export interface FileChange {
  /** Makes the change final: drops the copies of the old files. */
  keep(): Promise<void>;
  /** Puts every old file back (removing those that did not exist), by rename, as a failed rename would. */
  undo(): Promise<void>;
}

/**
 * `replaceFiles`, with the copies of the old files kept until the caller knows
 * whether the new ones work (a server reloaded on them): `keep()` or `undo()`.
 */
export async function replaceFilesUndoably(files: readonly FileReplacement[]): Promise<FileChange> {
  const staged: Staged[] = [];
  const temps = (): string[] => staged.flatMap((s) => (s.previous === undefined ? [s.temp] : [s.temp, s.previous]));
  try {
    for (const file of files) {
      const entry: Staged = { path: file.path, temp: await writeTemp(file.path, file.data, file.mode) };
      staged.push(entry);
      entry.previous = await copyOf(file.path);
    }
  } catch (e) {
    await Promise.all(temps().map((t) => rm(t, { force: true })));
    throw e;
  }
  const dirs = [...new Set(files.map((f) => dirname(f.path)))];
  /** Puts back the first `replaced` files, newest first. */
  const putBack = async (replaced: number): Promise<void> => {
    try {
      for (const s of staged.slice(0, replaced).reverse()) {
        if (s.previous === undefined) await rm(s.path, { force: true });
        else await rename(s.previous, s.path);
      }
      for (const dir of dirs) await syncPath(dir);
    } finally {
      await Promise.all(temps().map((t) => rm(t, { force: true })));
    }
  };
  let replaced = 0;
  try {
    for (const s of staged) {
      await rename(s.temp, s.path);
      replaced++;
    }
    for (const dir of dirs) await syncPath(dir);
  } catch (e) {
    try {
      await putBack(replaced);
    } catch (restoring) {
      throw new Error(`${messageOf(e)}; and the previous files could not all be put back: ${messageOf(restoring)}`, {
        cause: e,
      });
    }
    throw e;
  }
  return {
    keep: async () => {
      await Promise.all(staged.map((s) => (s.previous === undefined ? undefined : rm(s.previous, { force: true }))));
      // Durably gone: a copy may be of a private key.
      for (const dir of dirs) await syncPath(dir);
    },
    undo: () => putBack(staged.length),
  };
}

/** A durable copy of `path` beside it, with its mode, to rename back; undefined when there is no such file. */
async function copyOf(path: string): Promise<string | undefined> {
  let handle: FileHandle;
  try {
    handle = await open(path, "r");
  } catch (e) {
    if ((e as { code?: unknown }).code === "ENOENT") return undefined;
    throw e;
  }
  let bytes: Buffer;
  let mode: number;
  try {
    mode = (await handle.stat()).mode & 0o777;
    bytes = await handle.readFile();
  } finally {
    await handle.close();
  }
  try {
    return await writeTemp(path, bytes, mode);
  } finally {
    // It may be a private key.
    bytes.fill(0);
  }
}

/** Writes `data` to a new temporary file beside `path`, created with `mode`, fsynced; returns its path. */
async function writeTemp(path: string, data: string | Uint8Array, mode: number): Promise<string> {
  const temp = join(dirname(path), tempName(basename(path), "tmp"));
  try {
    const handle = await open(temp, "wx", mode);
    try {
      await handle.chmod(mode);
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    return temp;
  } catch (e) {
    await rm(temp, { force: true });
    throw e;
  }
}

/** The longest file name most file systems take, in bytes. */
const NAME_MAX = 255;

/**
 * A hidden name beside `name` for its next contents: `.<name>.<random>.<suffix>`, which
 * says whose it is should a crash leave it, or `.custos-<random>.<suffix>` when that
 * would pass NAME_MAX (a target's name may itself be up to 255 bytes).
 */
export function tempName(name: string, suffix: string): string {
  const random = randomBytes(6).toString("hex");
  const beside = `.${name}.${random}.${suffix}`;
  return Buffer.byteLength(beside) <= NAME_MAX ? beside : `.custos-${random}.${suffix}`;
}
