/**
 * A Custos ciphertext read as docs/ciphertext-format.md lays it out, with nothing of
 * src/: "custos:v1:" + canonical standard base64 of fmt | key id | version | alg | iv | ct‖tag.
 */
import assert from "node:assert/strict";

export function parseAsDocumented(text: string) {
  const m = /^custos:v1:([A-Za-z0-9+/]*={0,2})$/.exec(text);
  assert.ok(m?.[1] !== undefined, `not a documented ciphertext: ${text}`);
  const blob = Buffer.from(m[1], "base64");
  assert.equal(blob.toString("base64"), m[1], "canonical base64");
  const hex = blob.subarray(1, 17).toString("hex");
  return {
    blob,
    format: blob[0],
    keyId: `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`,
    version: blob.readUInt32BE(17),
    algorithm: blob[21],
    iv: blob.subarray(22, 34),
    plaintextLength: blob.length - 34 - 16,
  };
}
