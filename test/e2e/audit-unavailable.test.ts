/**
 * No answer leaves unaudited: when the audit record can't be written, every kind of
 * answer (JSON, text, an error, a URL the router refuses) becomes audit_unavailable,
 * naming the request. The fault is real: another process holds SQLite's write lock,
 * so the server's writes wait out their deadline (5 s) and fail.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import Database from "better-sqlite3";
import { type CustosInstance, errorCode, type HttpAnswer, httpsRaw, startCustos } from "../helpers/custos.js";

let custos: CustosInstance;

before(async () => {
  custos = await startCustos();
});
after(() => custos.dispose());

function assertAuditError(a: HttpAnswer, what: string): void {
  assert.equal(a.status, 503, `${what}: ${a.text}`);
  assert.equal(errorCode(a), "audit_unavailable", `${what}: ${a.text}`);
  const message = (a.body as { error: { message: string } }).error.message;
  assert.match(message, /\(request [0-9a-f-]{36}\)$/, `${what} names the request`);
}

test("every kind of answer becomes audit_unavailable when its audit record can't be written", async () => {
  const lock = new Database(join(custos.dir, "custos.db"));
  lock.exec("BEGIN IMMEDIATE");
  let answers: HttpAnswer[];
  try {
    answers = await Promise.all([
      custos.call("GET", "/v1/keys"),
      custos.call("GET", "/v1/pki/ca.pem", undefined, null),
      custos.call("GET", "/v1/keys/no-such-key"),
      custos.call("GET", "/v1/keys/%E0%A4%A"),
      // A route whose success may be cached (no-cache, revalidated): its error may not be.
      httpsRaw({ port: custos.port, ca: custos.ca, method: "GET", path: "/v1/pki/chain.pem", headers: {} }),
    ]);
  } finally {
    lock.exec("ROLLBACK");
    lock.close();
  }
  const [json, text, error, refused, cached] = answers;
  assertAuditError(json as HttpAnswer, "a JSON answer");
  assertAuditError(text as HttpAnswer, "a PEM answer");
  assertAuditError(error as HttpAnswer, "an error answer");
  assertAuditError(refused as HttpAnswer, "a refused URL");
  assertAuditError(cached as HttpAnswer, "a cacheable PEM answer");
  assert.equal((cached as Awaited<ReturnType<typeof httpsRaw>>).headers["cache-control"], "no-store");

  // With the lock gone the same requests are served and audited again.
  const keys = await custos.call("GET", "/v1/keys");
  assert.equal(keys.status, 200, keys.text);
  const pem = await custos.call("GET", "/v1/pki/ca.pem", undefined, null);
  assert.match(pem.text, /^-----BEGIN CERTIFICATE-----/);
});
