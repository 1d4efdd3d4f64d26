import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { bufferSource, Envelope, type EnvelopeKms, readHeader } from "../../src/envelope/index.js";
import { Secret } from "../../src/secret/index.js";

interface Vector {
  name: string;
  keyName: string;
  keyVersion: number;
  context: Record<string, string>;
  dataKey: string;
  plaintext: string;
  message: string;
}

const doc = readFileSync(new URL("../../docs/envelope-format.md", import.meta.url), "utf8");
const vectors = [...doc.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => JSON.parse(m[1] as string) as Vector);

/** A KMS that can unwrap exactly the vectors' data keys (their wrapped keys are placeholders). */
async function vectorKms(): Promise<EnvelopeKms> {
  const known = new Map<string, Vector>();
  for (const v of vectors) {
    const message = Buffer.from(v.message, "hex");
    const header = await readHeader(bufferSource(message));
    known.set(header.wrappedKey, v);
  }
  return {
    generateDataKey: () => Promise.reject(new Error("not used")),
    rewrapDataKeys: () => Promise.reject(new Error("not used")),
    async decryptDataKey(_name, wrapped) {
      const v = known.get(wrapped);
      if (v === undefined) throw Object.assign(new Error("unknown"), { code: "decryption_failed" });
      return { plaintext: Secret.adopt(Buffer.from(v.dataKey, "hex")), version: v.keyVersion };
    },
  };
}

test("the library decrypts the test vectors of docs/envelope-format.md", async () => {
  assert.ok(vectors.length >= 4, `found ${vectors.length} vectors`);
  const envelope = new Envelope({ kms: await vectorKms(), cache: false });
  for (const v of vectors) {
    const plaintext = await envelope.decrypt(Buffer.from(v.message, "hex"), { context: v.context });
    assert.equal(plaintext.toString("hex"), v.plaintext, v.name);
  }
});
