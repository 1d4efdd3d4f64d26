/**
 * Peak RSS of a storage layer's process streaming through the envelope. It runs as
 * bench/envelope-rss.ts compiles it: plain node, the library as tsc builds it, data
 * keys from a Custos server over HTTPS (CUSTOS_ADDR, CUSTOS_TOKEN, CUSTOS_CACERT),
 * nothing else loaded. `raw` streams through one node:crypto cipher instead, for what
 * node streams cost by themselves. Prints one JSON line of VmHWM readings in KiB.
 *
 *   node <compiled>/bench/envelope-rss-child.js envelope|raw <bytes>
 */
import { readFileSync } from "node:fs";
import type { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { rawStreams, sink, source } from "./stream-fixtures.js";

const CONTEXT = { bucket: "bench", object: "data" };
const SEAL = { key: "bench", context: CONTEXT };
const OPEN = { context: CONTEXT };
const [what = "", size = ""] = process.argv.slice(2);
const total = Number(size);

/** This process's own high-water mark (getrusage's maxRSS would carry the parent's over exec). */
const peak = () => Number(/^VmHWM:\s+(\d+) kB$/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1]);

const atRest = peak();
let streams: () => { seal: Transform; open: Transform } = rawStreams;
let close = () => {};
if (what === "envelope") {
  // Imported here, so that the raw child carries none of it.
  const { Envelope, httpKmsFromEnv } = await import("../src/envelope/index.js");
  const client = httpKmsFromEnv();
  close = client.close;
  const envelope = new Envelope({ kms: client.kms });
  // One small message first, so that the first KMS calls (TLS, the client's agent) count as set-up.
  await envelope.decrypt(await envelope.encrypt(Buffer.alloc(1), SEAL), OPEN);
  streams = () => ({ seal: envelope.encryptStream(SEAL), open: envelope.decryptStream(OPEN) });
} else if (what !== "raw") {
  throw new Error(`unknown child ${what}`);
}
const afterSetup = peak();
await pipeline(source(total), streams().seal, sink(-1));
const afterEncrypt = peak();
const pair = streams();
await pipeline(source(total), pair.seal, pair.open, sink(total));
console.log(JSON.stringify({ atRest, afterSetup, afterEncrypt, peak: peak() }));
close();
