import assert from "node:assert/strict";
import { chmodSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { CustosClient, clientFromEnv, tokenFromEnv } from "../../src/client/index.js";
import { failure, sync } from "./expect.js";
import { startServer, type TestServer } from "./server.js";

describe("CustosClient against a real TLS server", () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server?.close();
  });

  test("trusts CUSTOS_CACERT, sends the bearer token and JSON, and parses the answer", async () => {
    server.reply = () => ({ body: { ciphertext: "cst:v1:abc", version: 1 } });
    const client = clientFromEnv({
      CUSTOS_ADDR: server.url,
      CUSTOS_CACERT: server.certFile,
      CUSTOS_TOKEN: " tok-1 \n",
    });
    try {
      const answer = await client.request("POST", "/v1/keys/a%2Fb/encrypt", { body: { plaintext: "aGk=" } });
      assert.deepEqual(answer, { ciphertext: "cst:v1:abc", version: 1 });
    } finally {
      client.close();
    }
    const seen = server.requests.at(-1);
    assert.equal(seen?.method, "POST");
    assert.equal(seen?.url, "/v1/keys/a%2Fb/encrypt");
    assert.equal(seen?.headers.authorization, "Bearer tok-1");
    assert.equal(seen?.headers["content-type"], "application/json");
    assert.deepEqual(JSON.parse(seen?.body ?? ""), { plaintext: "aGk=" });
  });

  test("keeps the connection alive across requests", async () => {
    const client = clientFromEnv({ CUSTOS_ADDR: server.url, CUSTOS_CACERT: server.certFile, CUSTOS_TOKEN: "t" });
    const from = server.requests.length;
    try {
      await client.request("GET", "/v1/auth/whoami");
      await client.request("GET", "/v1/auth/whoami");
      await client.request("GET", "/v1/auth/whoami");
    } finally {
      client.close();
    }
    const connections = new Set(server.requests.slice(from).map((r) => r.connection));
    assert.equal(connections.size, 1);
  });

  test("bodiless POSTs send {} and GET/DELETE send no body; undefined query values are left out", async () => {
    const client = clientFromEnv({ CUSTOS_ADDR: server.url, CUSTOS_CACERT: server.certFile, CUSTOS_TOKEN: "t" });
    const from = server.requests.length;
    try {
      await client.request("POST", "/v1/keys/k/rotate");
      await client.request("DELETE", "/v1/keys/k", { query: { waitingSeconds: 60, immediate: undefined } });
    } finally {
      client.close();
    }
    const [post, del] = server.requests.slice(from);
    assert.equal(post?.body, "{}");
    assert.equal(del?.body, "");
    assert.equal(del?.headers["content-type"], undefined);
    assert.equal(del?.url, "/v1/keys/k?waitingSeconds=60");
  });

  test("a base address with a path prefix is kept", async () => {
    const client = clientFromEnv({
      CUSTOS_ADDR: `${server.url}/custos/`,
      CUSTOS_CACERT: server.certFile,
      CUSTOS_TOKEN: "t",
    });
    try {
      await client.request("GET", "/v1/health", { auth: false });
    } finally {
      client.close();
    }
    assert.equal(server.requests.at(-1)?.url, "/custos/v1/health");
    assert.equal(server.requests.at(-1)?.headers.authorization, undefined);
  });

  test("refuses the server's self-signed certificate without CUSTOS_CACERT, even with NODE_TLS_REJECT_UNAUTHORIZED=0", async () => {
    const saved = process.env.NODE_TLS_REJECT_UNAUTHORIZED;
    const savedEmit = process.emitWarning;
    process.emitWarning = () => {};
    process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";
    const client = clientFromEnv({ CUSTOS_ADDR: server.url, CUSTOS_TOKEN: "secret-token-value" });
    const from = server.requests.length;
    try {
      const e = await failure(client.request("GET", "/v1/auth/whoami"));
      assert.equal(e.code, "tls_error");
      assert.equal(e.status, 0);
      assert.match(e.message, /CUSTOS_CACERT/);
      assert.doesNotMatch(e.message, /secret-token-value/);
    } finally {
      client.close();
      if (saved === undefined) delete process.env.NODE_TLS_REJECT_UNAUTHORIZED;
      else process.env.NODE_TLS_REJECT_UNAUTHORIZED = saved;
      process.emitWarning = savedEmit;
    }
    assert.equal(server.requests.length, from, "no request reached the server");
  });

  test("error answers become ClientErrors with the server's code, message and request id", async () => {
    const client = clientFromEnv(
      { CUSTOS_ADDR: server.url, CUSTOS_CACERT: server.certFile, CUSTOS_TOKEN: "t" },
      { retry: { retries: 0 } },
    );
    try {
      server.reply = () => ({ status: 404, body: { error: { code: "not_found", message: 'key "x" not found' } } });
      const notFound = await failure(client.request("GET", "/v1/keys/x"));
      assert.equal(notFound.code, "not_found");
      assert.equal(notFound.message, 'key "x" not found');
      assert.equal(notFound.status, 404);
      assert.match(notFound.requestId ?? "", /^req-\d+$/);

      server.reply = () => ({ status: 503, body: { error: { code: "hsm_unavailable", message: "request r9" } } });
      const down = await failure(client.request("GET", "/v1/keys"));
      assert.equal(down.code, "hsm_unavailable");
      assert.equal(down.status, 503);

      server.reply = () => ({ status: 502, raw: "<html>bad gateway</html>" });
      const proxy = await failure(client.request("GET", "/v1/keys"));
      assert.equal(proxy.code, "http_error");
      assert.equal(proxy.status, 502);
      assert.match(proxy.message, /HTTP 502/);

      server.reply = () => ({ status: 200, raw: "not json" });
      const garbled = await failure(client.request("GET", "/v1/keys"));
      assert.equal(garbled.code, "internal");
      assert.equal(garbled.status, 200);

      server.reply = () => ({ status: 503, body: { status: "degraded" } });
      const health = await client.request("GET", "/v1/health", { auth: false, answerStatuses: [503] });
      assert.deepEqual(health, { status: "degraded" });
    } finally {
      client.close();
      server.reply = () => ({ body: {} });
    }
  });

  test("a missing token fails before any request is sent", async () => {
    const client = clientFromEnv({ CUSTOS_ADDR: server.url, CUSTOS_CACERT: server.certFile });
    const from = server.requests.length;
    try {
      const e = await failure(client.request("GET", "/v1/keys"));
      assert.equal(e.code, "unauthenticated");
      assert.equal(e.status, 0);
    } finally {
      client.close();
    }
    assert.equal(server.requests.length, from);
  });

  test("the token file is read and trimmed; CUSTOS_TOKEN wins over it", async () => {
    const file = join(server.dir, "token");
    writeFileSync(file, "  from-file-token \n\n", { mode: 0o600 });
    assert.equal(tokenFromEnv({ CUSTOS_TOKEN_FILE: file })?.exposeText(), "from-file-token");
    assert.equal(tokenFromEnv({ CUSTOS_TOKEN: "inline", CUSTOS_TOKEN_FILE: file })?.exposeText(), "inline");
    assert.equal(tokenFromEnv({ CUSTOS_TOKEN: "", CUSTOS_TOKEN_FILE: file })?.exposeText(), "from-file-token");
    assert.equal(tokenFromEnv({}), undefined);

    const client = clientFromEnv({ CUSTOS_ADDR: server.url, CUSTOS_CACERT: server.certFile, CUSTOS_TOKEN_FILE: file });
    try {
      await client.request("GET", "/v1/auth/whoami");
    } finally {
      client.close();
    }
    assert.equal(server.requests.at(-1)?.headers.authorization, "Bearer from-file-token");
  });

  test("an unreadable or empty token file is invalid_config", () => {
    const empty = join(server.dir, "empty-token");
    writeFileSync(empty, " \n");
    assert.match(sync(() => tokenFromEnv({ CUSTOS_TOKEN_FILE: empty })).message, /is empty/);
    const missing = sync(() => tokenFromEnv({ CUSTOS_TOKEN_FILE: join(server.dir, "nope") }));
    assert.equal(missing.code, "invalid_config");
    assert.match(missing.message, /ENOENT/);
    if (process.getuid?.() !== 0) {
      const locked = join(server.dir, "locked-token");
      writeFileSync(locked, "x");
      chmodSync(locked, 0o000);
      assert.match(sync(() => tokenFromEnv({ CUSTOS_TOKEN_FILE: locked })).message, /EACCES/);
    }
  });
});

describe("client configuration", () => {
  test("defaults to https://127.0.0.1:8443", () => {
    const client = clientFromEnv({});
    assert.equal(client.address.href, "https://127.0.0.1:8443/");
    assert.equal(client.hasToken, false);
    client.close();
  });

  test("refuses plain http, credentials in the address and garbage", () => {
    for (const address of ["http://127.0.0.1:8443", "https://u:p@127.0.0.1", "https://h/?q=1", "not a url"]) {
      const e = sync(() => new CustosClient({ address }));
      assert.equal(e.code, "invalid_config", address);
    }
    assert.doesNotMatch(sync(() => new CustosClient({ address: "https://u:hunter2@h" })).message, /hunter2/);
  });

  test("refuses a retry policy or timeout that makes no sense", () => {
    const address = "https://127.0.0.1:1";
    for (const retry of [{ retries: -1 }, { retries: 1.5 }, { baseDelayMs: Number.NaN }, { maxDelayMs: -5 }]) {
      assert.equal(sync(() => new CustosClient({ address, retry })).code, "invalid_config", JSON.stringify(retry));
    }
    assert.equal(sync(() => new CustosClient({ address, timeoutMs: 0 })).code, "invalid_config");
  });

  test("CUSTOS_CACERT must be a readable PEM certificate", () => {
    assert.match(
      sync(() => clientFromEnv({ CUSTOS_CACERT: "/nonexistent/ca.pem" })).message,
      /cannot read CUSTOS_CACERT/,
    );
    assert.match(sync(() => clientFromEnv({ CUSTOS_CACERT: import.meta.filename })).message, /no PEM certificate/);
  });

  test("a refused connection is 'unavailable' and names the server", async () => {
    const server = await startServer();
    const { url } = server;
    await server.close();
    const client = clientFromEnv({ CUSTOS_ADDR: url, CUSTOS_TOKEN: "t" });
    try {
      const e = await failure(client.request("GET", "/v1/keys"));
      assert.equal(e.code, "unavailable");
      assert.equal(e.status, 0);
      assert.match(e.message, /ECONNREFUSED/);
      assert.ok(e.message.includes(url), e.message);
    } finally {
      client.close();
    }
  });
});
