/**
 * Rewrap of envelope files: each header's wrapped data key moves to the KMS key's
 * newest version (the KMS rewraps inside the HSM, without releasing the data key),
 * and the file is replaced by write-then-rename, so it is always either the old
 * message or the new one. The data bytes are copied, never re-encrypted.
 */
import { randomBytes } from "node:crypto";
import { constants, type Stats } from "node:fs";
import { chmod, copyFile, type FileHandle, open, realpath, rename, rm, stat } from "node:fs/promises";
import { basename, sep } from "node:path";
import { Transform } from "node:stream";
import { CustosError, messageOf } from "../errors/index.js";
import { syncPath } from "../files/index.js";
import { decryptionFailed } from "./errors.js";
import { type Header, IncompleteHeader, MAGIC, parseHeader, replaceKeySection } from "./format.js";
import { type EnvelopeKms, isItemError, itemError, KmsItemError } from "./kms.js";
import { fileSource, readHeader } from "./range.js";

/** What happened to one file. */
export type RewrapOutcome =
  | { readonly path: string; readonly status: "rewrapped"; readonly from: number; readonly to: number }
  | { readonly path: string; readonly status: "current"; readonly version: number }
  | { readonly path: string; readonly status: "not_envelope" }
  | { readonly path: string; readonly status: "failed"; readonly error: { code: string; message: string } };

/** Temporary files are named so that a later run recognises (and removes) what a killed one left. */
export const TEMP_FILE = /^\.custos-rewrap-[0-9a-f]{12}\.tmp$/;
/** Items per KMS rewrap call: the API's batch limit. */
const BATCH = 1000;
/** Files copied at once: enough to keep a disk busy, few enough to stay far from the open-files limit. */
const WRITERS = 8;

interface Candidate {
  /** Its place in the caller's list. */
  readonly index: number;
  /** The file itself, links resolved: what is read and replaced. Bytes, as a name need not be UTF-8. */
  readonly file: Buffer;
  readonly header: Header;
  readonly before: Stats;
}

/**
 * Rewraps the envelope files at `paths`: reads their headers, rewraps their data keys
 * in batched KMS calls (one per key name and 1,000 files), and replaces the files whose
 * key version moved. Files already on the newest version are left untouched. One
 * file's failure is its outcome; only a KMS that can't be reached or is unavailable
 * makes the whole call throw (a rerun picks up where it stopped).
 *
 * A path may be given as bytes (a file name need not be UTF-8); its outcome's `path`
 * is then those bytes decoded as UTF-8, for display. Outcomes come in the order of `paths`.
 */
export async function rewrapFiles(kms: EnvelopeKms, paths: readonly (string | Buffer)[]): Promise<RewrapOutcome[]> {
  const shown = paths.map((p) => p.toString());
  const outcomes: RewrapOutcome[] = [];
  const byKey = new Map<string, Candidate[]>();
  // A file named twice (by a link and its own name, or the same path again) is rewrapped once; its
  // second naming would find it changed by the first and fail as a conflict.
  const firstNaming = new Map<string, number>();
  const namedAgain = new Map<number, number>();
  for (const [index, path] of shown.entries()) {
    try {
      const candidate = await readCandidate(paths[index] as string | Buffer, index);
      if (candidate === undefined) {
        outcomes[index] = { path, status: "not_envelope" };
        continue;
      }
      const identity = `${candidate.before.dev}:${candidate.before.ino}`;
      const first = firstNaming.get(identity);
      if (first !== undefined) {
        namedAgain.set(index, first);
        continue;
      }
      firstNaming.set(identity, index);
      const list = byKey.get(candidate.header.keyName) ?? [];
      list.push(candidate);
      byKey.set(candidate.header.keyName, list);
    } catch (e) {
      outcomes[index] = failed(path, e);
    }
  }
  for (const [keyName, candidates] of byKey) {
    for (let at = 0; at < candidates.length; at += BATCH) {
      const batch = candidates.slice(at, at + BATCH);
      let results: Awaited<ReturnType<EnvelopeKms["rewrapDataKeys"]>>;
      try {
        results = await kms.rewrapDataKeys(
          keyName,
          batch.map((c) => ({ wrapped: c.header.wrappedKey, context: c.header.context })),
        );
      } catch (e) {
        // The KMS refused this key (unknown, forbidden, destroyed): its files fail, the others go on.
        // Anything else (unreachable, unavailable) stops the run: nothing more can succeed.
        if (!isRefusal(e)) throw e;
        for (const c of batch) outcomes[c.index] = failed(shown[c.index] as string, e);
        continue;
      }
      await eachLimited(batch, WRITERS, async (c, i) => {
        const path = shown[c.index] as string;
        const result = results[i];
        if (result === undefined || isItemError(result)) {
          const error = result?.error ?? { code: "internal", message: "the KMS answered fewer items than asked" };
          outcomes[c.index] = { path, status: "failed", error };
          return;
        }
        if (result.version === c.header.keyVersion) {
          outcomes[c.index] = { path, status: "current", version: result.version };
          return;
        }
        try {
          // Parsing keeps every byte of a header: re-encoding its own key section gives the bytes read.
          const read = replaceKeySection(c.header, c.header.keyVersion, c.header.wrappedKey);
          const header = replaceKeySection(c.header, result.version, result.wrapped);
          await replaceHeader(c.file, read, header, c.before);
          outcomes[c.index] = { path, status: "rewrapped", from: c.header.keyVersion, to: result.version };
        } catch (e) {
          outcomes[c.index] = failed(path, e);
        }
      });
    }
  }
  for (const [index, first] of namedAgain)
    outcomes[index] = { ...(outcomes[first] as RewrapOutcome), path: shown[index] as string };
  return outcomes;
}

/**
 * A Transform that rewraps the message flowing through it: the header comes out with
 * its data key under the newest key version, the chunks pass untouched.
 */
export function rewrapStream(kms: EnvelopeKms): Transform {
  let header: Header | undefined;
  let pending = Buffer.alloc(0);
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      if (header !== undefined) {
        done(null, chunk);
        return;
      }
      pending = Buffer.concat([pending, chunk]);
      let parsed: Header;
      try {
        parsed = parseHeader(pending);
      } catch (e) {
        done(e instanceof IncompleteHeader ? null : (e as Error));
        return;
      }
      header = parsed;
      kms.rewrapDataKeys(parsed.keyName, [{ wrapped: parsed.wrappedKey, context: parsed.context }]).then(
        ([item]) => {
          if (item === undefined || isItemError(item)) {
            done(item === undefined ? new KmsItemError("internal", "the KMS gave no answer") : itemError(item));
            return;
          }
          this.push(replaceKeySection(parsed, item.version, item.wrapped));
          done(null, pending.subarray(parsed.length));
        },
        (e) => done(e as Error),
      );
    },
    flush(done) {
      done(header === undefined ? decryptionFailed() : null);
    },
  });
}

/** The header of an envelope file, or undefined when the file is not one (no magic). */
async function readCandidate(path: string | Buffer, index: number): Promise<Candidate | undefined> {
  // A symbolic link is rewrapped where it points, in the target's directory: renaming over the link
  // would turn it into a rewrapped copy and leave the message it names on the old key.
  const file = await realpath(path, { encoding: "buffer" });
  const source = await fileSource(file);
  try {
    const start = await source.read(0, MAGIC.length);
    if (!start.equals(MAGIC)) return undefined;
    const before = await stat(file);
    if (before.nlink > 1) {
      // The rename replaces one name; the others would keep the old message, on the old key version.
      throw new CustosError("invalid_request", `the file has ${before.nlink} hard links; a rewrap would split them`);
    }
    let header: Header;
    try {
      header = await readHeader(source);
    } catch {
      throw new CustosError("decryption_failed", "the envelope header is damaged");
    }
    return { index, file, header, before };
  } finally {
    await source.close();
  }
}

/**
 * Replaces the header `old` at the start of the file at `path` (absolute, links resolved)
 * with `header`, atomically: a copy beside it (a reflink where the file system can, else
 * an in-kernel copy), the new header written over the copy's, fsync, rename over the
 * original, fsync of the directory. Refuses (`conflict`) if the file changed since
 * `old` was read and `before` taken.
 */
export async function replaceHeader(path: Buffer, old: Buffer, header: Buffer, before: Stats): Promise<void> {
  const slash = path.lastIndexOf(sep);
  const dir = path.subarray(0, Math.max(slash, 1));
  const temp = Buffer.concat([
    path.subarray(0, slash + 1),
    Buffer.from(`.custos-rewrap-${randomBytes(6).toString("hex")}.tmp`),
  ]);
  try {
    if (header.length === old.length) {
      await copyFile(path, temp, constants.COPYFILE_FICLONE);
      // The copy has the original's mode, which may not let even its owner write (0444): the header
      // goes in first and keepOwnership restores the mode after, as in copyShifted.
      await chmod(temp, 0o600);
      await writeInto(path, temp, old, header, before);
    } else {
      await copyShifted(path, temp, old, header, before);
    }
    // A writer that kept the length and the times (rsync --inplace --times) is caught by the header the copy
    // took; these catch the others, up to the rename.
    const now = await stat(path);
    if (now.ino !== before.ino || now.size !== before.size || now.mtimeMs !== before.mtimeMs) throw changed(path);
    await rename(temp, path);
    await syncPath(dir);
  } catch (e) {
    await rm(temp, { force: true });
    throw e;
  }
}

/** The same-length case: `header` written over the copy's. */
async function writeInto(path: Buffer, temp: Buffer, old: Buffer, header: Buffer, before: Stats): Promise<void> {
  const handle = await open(temp, "r+");
  try {
    await expectHeader(handle, old, path);
    await handle.write(header, 0, header.length, 0);
    await keepOwnership(handle, before);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** The general case, for a header whose length changed: new header, then the body streamed after it. */
async function copyShifted(path: Buffer, temp: Buffer, old: Buffer, header: Buffer, before: Stats) {
  const input = await open(path, "r");
  const output = await open(temp, "wx", 0o600);
  try {
    await expectHeader(input, old, path);
    await output.write(header, 0, header.length, 0);
    const buffer = Buffer.allocUnsafe(1024 * 1024);
    for (let from = old.length, to = header.length; ; ) {
      const { bytesRead } = await input.read(buffer, 0, buffer.length, from);
      if (bytesRead === 0) break;
      await output.write(buffer, 0, bytesRead, to);
      from += bytesRead;
      to += bytesRead;
    }
    await keepOwnership(output, before);
    await output.sync();
  } finally {
    await input.close();
    await output.close();
  }
}

/**
 * Refuses (`conflict`) unless the file at `handle` starts with `old`, the header that was rewrapped:
 * a file rewritten since would otherwise get the old message's header on its new body.
 */
async function expectHeader(handle: FileHandle, old: Buffer, path: Buffer): Promise<void> {
  // A regular file reads short only at its end.
  const start = Buffer.alloc(old.length);
  const { bytesRead } = await handle.read(start, 0, old.length, 0);
  if (bytesRead !== old.length || !start.equals(old)) throw changed(path);
}

function changed(path: Buffer): CustosError {
  return new CustosError("conflict", `${basename(path.toString())} changed while it was being rewrapped; run again`);
}

/** The copy gets the original's mode, and its owner when we may give it (as root). */
async function keepOwnership(handle: FileHandle, before: Stats): Promise<void> {
  await handle.chmod(before.mode & 0o7777);
  if (process.getuid?.() === 0) await handle.chown(before.uid, before.gid);
}

/** Runs `fn` over `items` with at most `limit` calls in flight. */
async function eachLimited<T>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<void>) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i] as T, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** A 4xx answer other than 401: the KMS is up and said no to this request (a bad token fails everything). */
function isRefusal(e: unknown): boolean {
  const status = (e as { status?: unknown } | null)?.status;
  return typeof status === "number" && status >= 400 && status < 500 && status !== 401;
}

function failed(path: string, e: unknown): RewrapOutcome {
  const code = typeof (e as { code?: unknown })?.code === "string" ? (e as { code: string }).code : "internal";
  const message = messageOf(e);
  return { path, status: "failed", error: { code, message } };
}
