import { type Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";

/** Collects what a stream releases, even when it then fails. */
export async function collect(
  source: Readable,
  transform: NodeJS.ReadWriteStream,
): Promise<{ out: Buffer; error?: unknown }> {
  const got: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _e, done) {
      got.push(chunk);
      done();
    },
  });
  try {
    await pipeline(source, transform, sink);
    return { out: Buffer.concat(got) };
  } catch (error) {
    return { out: Buffer.concat(got), error };
  }
}
