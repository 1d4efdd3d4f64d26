/**
 * Prints the test vectors of docs/envelope-format.md: fixed inputs in place of the
 * random ones, encoded with the library's own format code. Run with
 * `node --import tsx scripts/envelope-vectors.ts` and paste the output into the document.
 */
import { createHash } from "node:crypto";
import { ChunkSealer } from "../src/envelope/chunks.js";
import { deriveKeys, encodeHeader } from "../src/envelope/format.js";

const fixed = (label: string, n: number) => createHash("sha256").update(label).digest().subarray(0, n);

const vectors = [
  { name: "empty plaintext, no context", chunkSize: 16, context: {}, plaintext: Buffer.alloc(0) },
  { name: "one short chunk", chunkSize: 65536, context: { app: "billing" }, plaintext: Buffer.from("hello, envelope") },
  {
    name: "three chunks, the last one short",
    chunkSize: 16,
    context: { tenant: "t-42", bucket: "café" },
    plaintext: Buffer.from("The quick brown fox jumps over the lazy dog"),
  },
  {
    name: "two full chunks",
    chunkSize: 16,
    context: { k: "v" },
    plaintext: Buffer.from("0123456789abcdef0123456789ABCDEF"),
  },
];

vectors.forEach((v, n) => {
  const dataKey = fixed(`data key ${n}`, 32);
  const messageId = fixed(`message id ${n}`, 32);
  const noncePrefix = fixed(`nonce prefix ${n}`, 7);
  const keys = deriveKeys(dataKey, messageId);
  const wrappedKey = `custos:v1:${fixed(`wrapped ${n}`, 30).toString("base64")}`;
  const header = encodeHeader(
    {
      keyName: "storage",
      context: v.context,
      chunkSize: v.chunkSize,
      noncePrefix,
      messageId,
      keyVersion: 3,
      wrappedKey,
    },
    keys,
  );
  const out: Buffer[] = [header];
  const sealer = new ChunkSealer(keys.contentKey, noncePrefix);
  const chunks = Math.max(1, Math.ceil(v.plaintext.length / v.chunkSize));
  for (let i = 0; i < chunks; i++) {
    sealer.seal(i, [v.plaintext.subarray(i * v.chunkSize, (i + 1) * v.chunkSize)], i === chunks - 1, out);
  }
  const vector = {
    name: v.name,
    keyName: "storage",
    keyVersion: 3,
    chunkSize: v.chunkSize,
    context: v.context,
    dataKey: dataKey.toString("hex"),
    plaintext: v.plaintext.toString("hex"),
    message: Buffer.concat(out).toString("hex"),
    contentKey: keys.contentKey.toString("hex"),
    macKey: keys.macKey.toString("hex"),
    commitment: keys.commitment.toString("hex"),
  };
  console.log(`### ${v.name}\n\n\`\`\`json\n${JSON.stringify(vector, null, 2)}\n\`\`\`\n`);
});
