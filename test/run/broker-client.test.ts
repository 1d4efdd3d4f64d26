/**
 * The broker client's own parts: keys and CSRs checked by openssl and node:crypto,
 * answers checked and credentials kept out of printouts, and the retry rules seen
 * from a real HTTPS server (the client tests' recording server). The whole client
 * against a real Custos is in test/e2e/run.test.ts.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createPrivateKey, createPublicKey } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, beforeEach, describe, test } from "node:test";
import { inspect } from "node:util";
import { credentialsFrom } from "../../src/broker-client/answers.js";
import { BrokerError, bootstrap, KEY_TYPES, prepareKey } from "../../src/broker-client/index.js";
import { startServer, type TestServer } from "../client/server.js";

const CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const ANSWER = {
  instance: "web-1",
  org: "acme",
  space: "prod",
  app: "web",
  spiffeId: "spiffe://custos/org/acme/space/prod/app/web/instance/web-1",
  certificate: CERT,
  chain: CERT,
  caChain: CERT,
  notAfter: "2030-01-01T01:00:00.000Z",
  renewAt: "2030-01-01T00:30:00.000Z",
  jwt: "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
  jwtExpiresAt: "2030-01-01T00:10:00.000Z",
  secrets: [{ path: "acme/prod/web/db/password", name: "db/password", version: 3, value: "hunter2-value" }],
  leaseExpiresAt: "2030-01-02T00:00:00.000Z",
};
const fast = { retries: 3, baseDelayMs: 1, maxDelayMs: 5 };

describe("broker client: keys and CSRs", () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "custos-broker-client-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  for (const keyType of KEY_TYPES) {
    test(`${keyType}: openssl verifies the CSR's signature, and it holds the private key's public half`, async () => {
      const { privateKeyPem, csrPem } = await prepareKey("web-1", keyType);
      const file = join(dir, `${keyType}.csr`);
      writeFileSync(file, csrPem);
      const text = execFileSync("openssl", ["req", "-in", file, "-noout", "-verify", "-subject"], {
        stdio: ["ignore", "pipe", "pipe"],
      }).toString();
      assert.match(text, /subject=CN\s*=\s*web-1/);
      const csrKey = execFileSync("openssl", ["req", "-in", file, "-noout", "-pubkey"]).toString();
      const expected = createPublicKey(createPrivateKey(privateKeyPem)).export({ type: "spki", format: "pem" });
      assert.equal(csrKey, expected);
    });
  }

  test("every call makes a new key", async () => {
    const a = await prepareKey("web-1");
    const b = await prepareKey("web-1");
    assert.notEqual(a.privateKeyPem, b.privateKeyPem);
  });

  test("an unknown key type is refused", () => {
    assert.throws(
      () => prepareKey("web-1", "rsa-1024" as never),
      (e: unknown) => e instanceof BrokerError && e.code === "invalid_argument",
    );
  });
});

describe("broker client: answers", () => {
  test("the exchange answer becomes typed credentials; key, JWT and values stay out of JSON and inspect", () => {
    const creds = credentialsFrom(ANSWER, "-----BEGIN PRIVATE KEY-----\nSECRETKEY\n-----END PRIVATE KEY-----\n");
    assert.equal(creds.identity.spiffeId, ANSWER.spiffeId);
    assert.equal(creds.identity.renewAt.toISOString(), ANSWER.renewAt);
    assert.equal(creds.jwt, ANSWER.jwt);
    assert.equal(creds.secrets[0]?.value, "hunter2-value");
    assert.ok(creds.identity.privateKeyPem.includes("SECRETKEY"));
    for (const printed of [JSON.stringify(creds), inspect(creds, { depth: 10 })]) {
      assert.ok(!printed.includes("SECRETKEY"), "the private key printed");
      assert.ok(!printed.includes(ANSWER.jwt), "the JWT printed");
      assert.ok(!printed.includes("hunter2-value"), "a secret value printed");
      assert.ok(printed.includes("db/password"), "names do print");
    }
  });

  test("answers missing what the API promises are refused without quoting them", () => {
    const broken = [
      { ...ANSWER, certificate: "not a pem hunter2-value" },
      { ...ANSWER, spiffeId: "web-1" },
      { ...ANSWER, notAfter: "yesterday" },
      { ...ANSWER, secrets: [{ path: "p", version: 0, value: "hunter2-value" }] },
      { ...ANSWER, jwt: undefined },
      "hunter2-value",
    ];
    for (const body of broken) {
      assert.throws(
        () => credentialsFrom(body, "k"),
        (e: unknown) => e instanceof BrokerError && e.code === "invalid_answer" && !e.message.includes("hunter2"),
      );
    }
  });
});

describe("broker client: retries", () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(() => server.close());
  beforeEach(() => {
    server.requests.length = 0;
  });

  const options = () => ({ address: server.url, ca: server.ca, token: "bt_token", instance: "web-1", retry: fast });

  test("a 503 is retried, then the answer is taken", async () => {
    server.reply = () =>
      server.requests.length < 3
        ? { status: 503, body: { error: { code: "hsm_unavailable", message: "the HSM is unreachable" } } }
        : { body: ANSWER };
    const creds = await bootstrap(options());
    assert.equal(creds.instance, "web-1");
    assert.equal(server.requests.length, 3);
    const sent = JSON.parse(server.requests[0]?.body ?? "{}") as Record<string, string>;
    assert.equal(sent.token, "bt_token");
    assert.equal(sent.instance, "web-1");
    assert.match(sent.csr ?? "", /^-----BEGIN CERTIFICATE REQUEST-----/);
    assert.equal(server.requests[0]?.url, "/v1/broker/exchange");
  });

  test("a refusal is not retried and carries the API's code, status and request id", async () => {
    server.reply = () => ({
      status: 401,
      body: { error: { code: "unauthenticated", message: "invalid bootstrap token" } },
    });
    await assert.rejects(bootstrap(options()), (e: unknown) => {
      assert.ok(e instanceof BrokerError);
      assert.equal(e.code, "unauthenticated");
      assert.equal(e.status, 401);
      assert.equal(e.requestId, "req-1");
      assert.equal(e.message, "invalid bootstrap token");
      assert.equal(e.transient, false);
      return true;
    });
    assert.equal(server.requests.length, 1);
  });

  test("the exchange is not retried once its request went out (the token may be spent)", async () => {
    server.reply = () => ({ destroy: true });
    await assert.rejects(bootstrap(options()), (e: unknown) => e instanceof BrokerError && e.code === "unavailable");
    assert.equal(server.requests.length, 1);
  });

  test("a refused connection is retried, then reported as unavailable", async () => {
    const closed = await startServer();
    const address = closed.url;
    await closed.close();
    await assert.rejects(
      bootstrap({ ...options(), address, ca: server.ca }),
      (e: unknown) =>
        e instanceof BrokerError && e.code === "unavailable" && /still failing after 3 retries/.test(e.message),
    );
  });

  test("a server certificate not signed by the given CA is a tls_error, not retried", async () => {
    const other = await startServer();
    try {
      await assert.rejects(
        bootstrap({ ...options(), ca: other.ca }),
        (e: unknown) => e instanceof BrokerError && e.code === "tls_error",
      );
      assert.equal(server.requests.length, 0);
    } finally {
      await other.close();
    }
  });

  test("an error answer without a Custos body is http_error; a non-JSON success is invalid_answer", async () => {
    server.reply = () => ({ status: 502, raw: "<html>bad gateway</html>" });
    await assert.rejects(bootstrap(options()), (e: unknown) => e instanceof BrokerError && e.code === "http_error");
    server.reply = () => ({ status: 200, raw: "<html>hello</html>" });
    await assert.rejects(bootstrap(options()), (e: unknown) => e instanceof BrokerError && e.code === "invalid_answer");
  });

  test("unusable options are refused before anything is sent", async () => {
    const cases: [Partial<ReturnType<typeof options>>, RegExp][] = [
      [{ address: "http://127.0.0.1:1" }, /only https/],
      [{ address: "https://user:pw@127.0.0.1:1" }, /no credentials/],
      [{ token: " " }, /token is empty/],
      [{ instance: "" }, /instance id is empty/],
      [{ ca: "not a pem" as unknown as Buffer }, /no PEM certificate/],
    ];
    for (const [change, message] of cases) {
      await assert.rejects(
        bootstrap({ ...options(), ...change }),
        (e: unknown) => e instanceof BrokerError && e.code === "invalid_argument" && message.test(e.message),
      );
    }
    assert.equal(server.requests.length, 0);
  });
});
