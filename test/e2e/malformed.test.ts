import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type CustosInstance, startCustos } from "../helpers/custos.js";

/** Bad input gets a 4xx with a specific code: never a 500, never a crash. */
describe("malformed input", () => {
  let custos: CustosInstance;
  before(async () => {
    custos = await startCustos();
    assert.equal((await custos.call("POST", "/v1/keys", { name: "k", purpose: "encrypt" })).status, 201);
    assert.equal((await custos.call("POST", "/v1/keys", { name: "s", purpose: "sign" })).status, 201);
  });
  after(async () => {
    await custos?.dispose();
  });

  const cases: [string, string, string, unknown, number, string][] = [
    ["bad JSON", "POST", "/v1/keys/k/encrypt", "{not json", 400, "invalid_request"],
    ["empty JSON body", "POST", "/v1/keys/k/encrypt", "", 400, "invalid_request"],
    ["JSON array body", "POST", "/v1/keys", "[1,2]", 400, "invalid_request"],
    ["wrong type", "POST", "/v1/keys", { name: 42, purpose: "encrypt" }, 400, "invalid_request"],
    ["unknown purpose", "POST", "/v1/keys", { name: "x", purpose: "juggle" }, 400, "invalid_request"],
    ["unknown field", "POST", "/v1/keys", { name: "x", purpose: "encrypt", colour: "red" }, 400, "invalid_request"],
    ["bad key name", "POST", "/v1/keys", { name: "../etc", purpose: "encrypt" }, 400, "invalid_request"],
    ["bad base64", "POST", "/v1/keys/k/encrypt", { plaintext: "%%%notbase64" }, 400, "invalid_request"],
    // "aGl=" decodes to "hi" as "aGk=" does, with a pad bit set (RFC 4648 3.5).
    ["non-canonical base64", "POST", "/v1/keys/k/encrypt", { plaintext: "aGl=" }, 400, "invalid_request"],
    ["non-canonical base64 ==", "POST", "/v1/keys/k/encrypt", { plaintext: "aR==" }, 400, "invalid_request"],
    [
      "context not a string map",
      "POST",
      "/v1/keys/k/encrypt",
      { plaintext: "aGk=", context: { a: 1 } },
      400,
      "invalid_request",
    ],
    ["garbage ciphertext", "POST", "/v1/keys/k/decrypt", { ciphertext: "custos:v1:AAAA" }, 400, "decryption_failed"],
    ["ciphertext of nothing", "POST", "/v1/keys/k/decrypt", { ciphertext: "hello" }, 400, "decryption_failed"],
    ["unknown key", "POST", "/v1/keys/nope/encrypt", { plaintext: "aGk=" }, 404, "not_found"],
    ["unknown key read", "GET", "/v1/keys/nope", undefined, 404, "not_found"],
    ["unknown route", "GET", "/v1/nothing-here", undefined, 404, "not_found"],
    ["wrong purpose", "POST", "/v1/keys/s/encrypt", { plaintext: "aGk=" }, 400, "key_purpose_mismatch"],
    ["batch and single mixed", "POST", "/v1/keys/k/datakey", { items: [{}], bytes: 32 }, 400, "invalid_request"],
    [
      "batch too large",
      "POST",
      "/v1/keys/k/datakey",
      { items: Array.from({ length: 1001 }, () => ({})) },
      400,
      "invalid_request",
    ],
    ["random out of range", "POST", "/v1/random", { bytes: 100000 }, 400, "invalid_request"],
    ["duplicate key", "POST", "/v1/keys", { name: "k", purpose: "encrypt" }, 409, "conflict"],
  ];

  for (const [what, method, path, body, status, code] of cases) {
    test(`${what} -> ${status} ${code}`, async () => {
      const r = await custos.call(method, path, body);
      assert.equal(r.status, status, r.text);
      assert.deepEqual(Object.keys(r.body as object), ["error"]);
      assert.equal((r.body as { error: { code: string } }).error.code, code);
      assert.equal(typeof (r.body as { error: { message: string } }).error.message, "string");
    });
  }

  test("an oversized body -> 413 payload_too_large", async () => {
    const r = await custos.call("POST", "/v1/keys/k/encrypt", { plaintext: "A".repeat(2 * 1024 * 1024) });
    assert.equal(r.status, 413, r.text);
    assert.equal((r.body as { error: { code: string } }).error.code, "payload_too_large");
  });

  test("the server is still healthy after all of it", async () => {
    const r = await custos.call("GET", "/v1/health", undefined, null);
    assert.equal(r.status, 200, r.text);
    assert.equal((r.body as { status: string }).status, "ok");
  });
});
