/**
 * Durable file writes, for every place that must leave a file either old or new
 * after a crash: the bytes go to a temporary file beside the target (created with
 * its final mode, so a key is never readable by others for an instant), are
 * fsynced, renamed over the target, and the directory is fsynced so the rename
 * itself survives.
 */
import { randomBytes } from "node:crypto";
import { open, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/** fsyncs a file, or a directory (which makes the renames and new entries in it durable). */
export async function syncPath(path: string): Promise<void> {
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
  const dir = dirname(path);
  const temp = join(dir, `.${basename(path)}.${randomBytes(6).toString("hex")}.tmp`);
  try {
    const handle = await open(temp, "wx", mode);
    try {
      await handle.chmod(mode);
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
    await syncPath(dir);
  } catch (e) {
    await rm(temp, { force: true });
    throw e;
  }
}
