import assert from "node:assert/strict";
import { after, before, beforeEach, describe, test } from "node:test";
import { type ClientOptions, CustosClient } from "../../src/client/index.js";
import { backoffDelay, DEFAULT_RETRY, isRetryableAnswer, isStaleSocket, retryPolicy } from "../../src/client/retry.js";
import { failure } from "./expect.js";
import { type Recorded, type Reply, startServer, type TestServer } from "./server.js";

const unavailable = (code: string): Reply => ({ status: 503, body: { error: { code, message: `${code} now` } } });

describe("retries against a real TLS server", () => {
  let server: TestServer;
  let from = 0;
  const sent = (): Recorded[] => server.requests.slice(from);
  /** The 1-based position of `r` among the requests on its connection. */
  const nthOnConnection = (r: Recorded): number => server.requests.filter((x) => x.connection === r.connection).length;
  const withClient = async <T>(fn: (c: CustosClient) => Promise<T>, options: Partial<ClientOptions> = {}) => {
    const client = new CustosClient({
      address: server.url,
      ca: server.ca,
      retry: { baseDelayMs: 1, maxDelayMs: 4 },
      ...options,
    });
    try {
      return await fn(client);
    } finally {
      client.close();
    }
  };

  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server?.close();
  });
  beforeEach(() => {
    from = server.requests.length;
    server.reply = () => ({ body: {} });
  });

  test("503 hsm_unavailable twice, then 200: the third request succeeds", async () => {
    let n = 0;
    server.reply = () => (++n <= 2 ? unavailable("hsm_unavailable") : { body: { ok: true } });
    const answer = await withClient((c) => c.request("POST", "/v1/keys/k/encrypt", { auth: false, body: { p: 1 } }));
    assert.deepEqual(answer, { ok: true });
    assert.equal(sent().length, 3);
    // Each retry carries the same request (the payload is zeroed only at the very end).
    assert.deepEqual(
      sent().map((r) => r.body),
      ['{"p":1}', '{"p":1}', '{"p":1}'],
    );
  });

  test("store_unavailable, audit_unavailable and shutting_down are retried too", async () => {
    for (const code of ["store_unavailable", "audit_unavailable", "shutting_down"]) {
      let n = 0;
      server.reply = () => (++n === 1 ? unavailable(code) : { body: {} });
      const start = server.requests.length;
      await withClient((c) => c.request("GET", "/v1/keys", { auth: false }));
      assert.equal(server.requests.length - start, 2, code);
    }
  });

  test("always 503: the server's code after 1 + retries requests", async () => {
    server.reply = () => unavailable("hsm_unavailable");
    const e = await failure(
      withClient((c) => c.request("GET", "/v1/keys", { auth: false }), { retry: { retries: 3, baseDelayMs: 1 } }),
    );
    assert.equal(e.code, "hsm_unavailable");
    assert.equal(e.status, 503);
    assert.equal(e.requestId, `req-${server.requests.length}`, "the last answer's request id");
    assert.match(e.message, /hsm_unavailable now \(still failing after 3 retries\)/);
    assert.equal(sent().length, 4);
  });

  test("the default policy makes 4 retries", async () => {
    assert.deepEqual(DEFAULT_RETRY, { retries: 4, baseDelayMs: 100, maxDelayMs: 2000 });
    server.reply = () => unavailable("audit_unavailable");
    // Only the delays are shrunk; the count is the default.
    await failure(withClient((c) => c.request("GET", "/v1/keys", { auth: false }), { retry: { baseDelayMs: 1 } }));
    assert.equal(sent().length, 5);
  });

  test("a 400, a 500 or another 503 code is not retried", async () => {
    for (const reply of [
      { status: 400, body: { error: { code: "invalid_request", message: "bad" } } },
      { status: 500, body: { error: { code: "internal", message: "request r1 failed" } } },
      unavailable("not_initialized"),
      { status: 503, raw: "<html>maintenance</html>" },
    ]) {
      server.reply = () => reply;
      const start = server.requests.length;
      const e = await failure(withClient((c) => c.request("GET", "/v1/keys", { auth: false })));
      assert.equal(e.status, reply.status);
      assert.equal(server.requests.length - start, 1, JSON.stringify(reply));
    }
  });

  test("retries: 0 sends one request", async () => {
    server.reply = () => unavailable("hsm_unavailable");
    const e = await failure(
      withClient((c) => c.request("GET", "/v1/keys", { auth: false }), { retry: { retries: 0 } }),
    );
    assert.equal(e.code, "hsm_unavailable");
    assert.equal(e.message, "hsm_unavailable now");
    assert.equal(sent().length, 1);
  });

  test("a 503 the caller takes as an answer (degraded health) is not retried", async () => {
    server.reply = () => ({ status: 503, body: { status: "degraded", error: { code: "hsm_unavailable" } } });
    const answer = await withClient((c) => c.send("GET", "/v1/health", { auth: false, answerStatuses: [503] }));
    assert.equal(answer.status, 503);
    assert.equal(sent().length, 1);
  });

  test("keep-alive race: a reused socket closed without an answer is retried once on a fresh one", async () => {
    server.reply = (r) =>
      r.connection === server.requests[from]?.connection && nthOnConnection(r) === 2
        ? { destroy: true }
        : { body: { n: nthOnConnection(r) } };
    const answers = await withClient(async (c) => {
      const first = await c.request("GET", "/v1/keys", { auth: false });
      const second = await c.request("POST", "/v1/keys/k/encrypt", { auth: false, body: { p: 2 } });
      return [first, second];
    });
    assert.deepEqual(answers, [{ n: 1 }, { n: 1 }]);
    const [a, b, c] = sent();
    assert.equal(sent().length, 3);
    assert.equal(b?.connection, a?.connection, "the second request reused the first one's socket");
    assert.notEqual(c?.connection, b?.connection, "the retry went out on a new socket");
    assert.equal(c?.body, '{"p":2}');
  });

  test("keep-alive race: only one immediate retry", async () => {
    // Every request but the first on the first connection is dropped.
    server.reply = (r) => (r === server.requests[from] ? { body: {} } : { destroy: true });
    const e = await failure(
      withClient(async (c) => {
        await c.request("GET", "/v1/keys", { auth: false });
        await c.request("GET", "/v1/keys", { auth: false });
      }),
    );
    assert.equal(e.code, "unavailable");
    assert.match(e.message, /cannot reach https:\/\/127\.0\.0\.1:\d+: ECONNRESET/);
    assert.equal(sent().length, 3);
  });

  test("a fresh socket closed without an answer is not retried", async () => {
    server.reply = () => ({ destroy: true });
    const e = await failure(withClient((c) => c.request("GET", "/v1/keys", { auth: false })));
    assert.equal(e.code, "unavailable");
    assert.equal(e.status, 0);
    assert.equal(sent().length, 1);
  });
});

describe("retry decisions", () => {
  test("only 503 with a *_unavailable code from the HSM, store or audit journal", () => {
    assert.ok(isRetryableAnswer(503, "hsm_unavailable"));
    assert.ok(isRetryableAnswer(503, "store_unavailable"));
    assert.ok(isRetryableAnswer(503, "audit_unavailable"));
    assert.ok(!isRetryableAnswer(503, "not_initialized"));
    assert.ok(!isRetryableAnswer(503, "http_error"));
    assert.ok(!isRetryableAnswer(500, "hsm_unavailable"));
    assert.ok(!isRetryableAnswer(429, "rate_limited"));
  });

  test("stale socket: reused, unanswered, and reset/pipe/aborted", () => {
    for (const code of ["ECONNRESET", "EPIPE", "ECONNABORTED"]) {
      assert.ok(isStaleSocket({ reusedSocket: true, answered: false, code }), code);
      assert.ok(!isStaleSocket({ reusedSocket: false, answered: false, code }), `${code} on a fresh socket`);
      assert.ok(!isStaleSocket({ reusedSocket: true, answered: true, code }), `${code} after the answer began`);
    }
    for (const code of ["ECONNREFUSED", "ETIMEDOUT", "unavailable", undefined]) {
      assert.ok(!isStaleSocket({ reusedSocket: true, answered: false, code }), String(code));
    }
  });

  test("back-off: full jitter under a ceiling that doubles up to the cap", () => {
    const policy = retryPolicy({});
    const top = () => 1 - Number.EPSILON;
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 10].map((n) => backoffDelay(policy, n, top)),
      [99, 199, 399, 799, 1599, 1999, 1999],
    );
    assert.equal(
      backoffDelay(policy, 3, () => 0),
      0,
    );
    assert.equal(
      backoffDelay(policy, 3, () => 0.5),
      400,
    );
    for (let i = 0; i < 100; i++) {
      const d = backoffDelay(policy, 2);
      assert.ok(d >= 0 && d < 400, String(d));
    }
  });

  test("policy defaults and overrides", () => {
    assert.deepEqual(retryPolicy(undefined), { retries: 4, baseDelayMs: 100, maxDelayMs: 2000 });
    assert.deepEqual(retryPolicy({ retries: 0 }), { retries: 0, baseDelayMs: 100, maxDelayMs: 2000 });
    assert.deepEqual(retryPolicy({ retries: 2, baseDelayMs: 5, maxDelayMs: 50 }), {
      retries: 2,
      baseDelayMs: 5,
      maxDelayMs: 50,
    });
  });
});
