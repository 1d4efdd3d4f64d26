/**
 * Random access into a message: its header, and byte ranges of its plaintext that
 * decrypt only the chunks holding them (storage layers serve ranges).
 */
import { constants } from "node:fs";
import { open } from "node:fs/promises";
import { CustosError } from "../errors/index.js";
import type { Opening } from "./envelope.js";
import { decryptionFailed } from "./errors.js";
import { chunkLayout, type Header, IncompleteHeader, parseHeader, TAG_BYTES } from "./format.js";

/** Something of known size that reads bytes at an offset: a file, an object store, a buffer. */
export interface RangeSource {
  readonly size: number;
  /** Returns `length` bytes at `position` (fewer only at the end). */
  read(position: number, length: number): Promise<Buffer>;
}

/** A message already in memory as a `RangeSource`. */
export function bufferSource(bytes: Buffer): RangeSource {
  return { size: bytes.length, read: async (position, length) => bytes.subarray(position, position + length) };
}

/** Most headers are a few hundred bytes; a long context makes them longer. */
const FIRST_HEADER_READ = 4096;
/** A range is read from the source in pieces of at most this many chunks. */
const CHUNKS_PER_READ = 64;

/** Reads and parses the header at the start of `source` (not yet authenticated). */
export async function readHeader(source: RangeSource): Promise<Header> {
  let length = Math.min(source.size, FIRST_HEADER_READ);
  for (;;) {
    const bytes = await source.read(0, length);
    try {
      return parseHeader(bytes);
    } catch (e) {
      if (!(e instanceof IncompleteHeader) || e.needed > source.size || bytes.length < length) throw decryptionFailed();
      length = e.needed;
    }
  }
}

/** Plaintext [start, end) of an opened message; `end` is clamped to the plaintext's length. */
export async function readRange(source: RangeSource, opening: Opening, start: number, end: number): Promise<Buffer> {
  const size = opening.header.chunkSize;
  const layout = chunkLayout(source.size - opening.header.length, size);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
    throw new CustosError("invalid_request", "a range is two integers 0 <= start <= end");
  }
  if (start > layout.plaintextLength) {
    throw new CustosError(
      "invalid_request",
      `range starts past the end of the plaintext (${layout.plaintextLength} bytes)`,
    );
  }
  const stop = Math.min(end, layout.plaintextLength);
  // An empty range opens no chunk: the header is authenticated, no tag is checked (docs/envelope-format.md, "Byte
  // ranges"). A whole message never comes this way: readAll opens every chunk.
  if (stop === start) return Buffer.alloc(0);
  // Whole chunks are decrypted into one buffer; the range is a view of it.
  const first = Math.floor(start / size);
  const opened = await openChunks(source, opening, layout, first, Math.floor((stop - 1) / size));
  const offset = start - first * size;
  return opened.subarray(offset, offset + (stop - start));
}

/**
 * The whole plaintext of an opened message. Every chunk is opened and its tag checked, the last one included even
 * when it is empty: an empty plaintext is one last chunk of 0 bytes and its tag, which alone stands behind it.
 */
export function readAll(source: RangeSource, opening: Opening): Promise<Buffer> {
  const layout = chunkLayout(source.size - opening.header.length, opening.header.chunkSize);
  return openChunks(source, opening, layout, 0, layout.chunks - 1);
}

/** Decrypts chunks `first` to `last` into one buffer, which is zeroed if any of them fails. */
async function openChunks(
  source: RangeSource,
  { header, opener }: Opening,
  layout: { chunks: number; plaintextLength: number },
  first: number,
  last: number,
): Promise<Buffer> {
  const size = header.chunkSize;
  const stride = size + TAG_BYTES;
  const out = Buffer.allocUnsafe(Math.min((last + 1) * size, layout.plaintextLength) - first * size);
  let at = 0;
  try {
    for (let from = first; from <= last; from += CHUNKS_PER_READ) {
      const to = Math.min(last, from + CHUNKS_PER_READ - 1);
      const position = header.length + from * stride;
      const length = Math.min((to + 1) * stride, source.size - header.length) - from * stride;
      const bytes = await source.read(position, length);
      if (bytes.length !== length) throw decryptionFailed();
      for (let i = from; i <= to; i++) {
        const sealed = bytes.subarray((i - from) * stride, (i - from + 1) * stride);
        at = opener.openInto(i, sealed, i === layout.chunks - 1, out, at);
      }
    }
  } catch (e) {
    out.fill(0);
    throw e;
  }
  return out;
}

/**
 * A regular file as a `RangeSource`; `close()` it when done. A name as bytes need not be
 * UTF-8. Anything else is `invalid_request`: a FIFO or a device has no size to range
 * over, and opening a FIFO would wait for a writer (hence O_NONBLOCK, which a regular
 * file ignores).
 */
export async function fileSource(path: string | Buffer): Promise<RangeSource & { close(): Promise<void> }> {
  const handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const stats = await handle.stat();
    if (!stats.isFile()) throw new CustosError("invalid_request", "not a regular file");
    const { size } = stats;
    return {
      size,
      async read(position, length) {
        const buffer = Buffer.allocUnsafe(length);
        let done = 0;
        while (done < length) {
          const { bytesRead } = await handle.read(buffer, done, length - done, position + done);
          if (bytesRead === 0) break;
          done += bytesRead;
        }
        return buffer.subarray(0, done);
      },
      close: () => handle.close(),
    };
  } catch (e) {
    await handle.close();
    throw e;
  }
}
