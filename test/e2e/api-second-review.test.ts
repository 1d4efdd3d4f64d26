import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { connect as tcpConnect } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { connect, type TLSSocket } from "node:tls";
import { gzipSync } from "node:zlib";
import { type CustosInstance, errorCode, httpsJson, httpsRaw, ok, startCustos } from "../helpers/custos.js";

type Json = Record<string, unknown>;
type OpenApi = { paths: Record<string, Record<string, { requestBody?: Json; responses: Json }>> };

/** One HTTP/1.1 answer read off a raw socket: status, lower-cased headers, de-chunked body. */
interface RawAnswer {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: string;
}

/** Parses the first answer in `text` (what follows `from`, if given). */
function parseAnswer(text: string, from = 0): RawAnswer {
  const rest = text.slice(from);
  const split = rest.indexOf("\r\n\r\n");
  assert.ok(split > 0, `no complete answer in: ${JSON.stringify(rest)}`);
  const [statusLine = "", ...lines] = rest.slice(0, split).split("\r\n");
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(":");
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  let body = rest.slice(split + 4);
  if (headers["transfer-encoding"] === "chunked") {
    let out = "";
    for (;;) {
      const eol = body.indexOf("\r\n");
      const size = Number.parseInt(body.slice(0, eol), 16);
      if (!(size > 0)) break;
      out += body.slice(eol + 2, eol + 2 + size);
      body = body.slice(eol + 2 + size + 2);
    }
    body = out;
  } else if (headers["content-length"] !== undefined) {
    body = body.slice(0, Number(headers["content-length"]));
  }
  return { status: Number(statusLine.split(" ")[1]), headers, body };
}

/** Asserts the documented error shape, `{ error: { code, message } }` and nothing else; `code` null: any code. */
function assertErrorShape(body: string, code: string | null, what: string): void {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    assert.fail(`${what}: the body is not JSON: ${JSON.stringify(body)}`);
  }
  assert.deepEqual(Object.keys(parsed as object), ["error"], `${what}: ${body}`);
  const error = (parsed as { error: Json }).error;
  assert.deepEqual(Object.keys(error).sort(), ["code", "message"], `${what}: ${body}`);
  if (code === null) assert.equal(typeof error.code, "string", `${what}: ${body}`);
  else assert.equal(error.code, code, `${what}: ${body}`);
  assert.equal(typeof error.message, "string", `${what}: ${body}`);
}

/**
 * The HTTPS API edge as a client meets it, second review: what node's HTTP server
 * answers on its own, draining, query and body validation, the login rate limit, and
 * /v1/docs compared operation by operation with what the server answers. Oracles:
 * raw TLS sockets, RFC 9112, `openssl verify`, and the OpenAPI document itself.
 */
describe("the HTTPS API edge, second review", () => {
  const LOGIN_LIMIT = 3;
  let custos: CustosInstance;
  before(async () => {
    custos = await startCustos({ auth: { loginAttemptsPerMinute: LOGIN_LIMIT } });
    ok(await custos.call("POST", "/v1/keys", { name: "edge", purpose: "encrypt" }), 201);
  });
  after(async () => {
    await custos?.dispose();
  });

  const openTls = async (): Promise<TLSSocket> => {
    const socket = connect({ host: "127.0.0.1", port: custos.port, ca: custos.ca });
    await new Promise<void>((resolve, reject) => {
      socket.once("secureConnect", resolve);
      socket.once("error", reject);
    });
    return socket;
  };

  /** Writes `request` as is on a fresh TLS connection and returns all the server sent until it closed. */
  const exchange = async (request: string): Promise<string> => {
    const socket = await openTls();
    const chunks: Buffer[] = [];
    socket.on("data", (c: Buffer) => chunks.push(c));
    const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    socket.on("error", () => {});
    socket.write(request);
    await closed;
    return Buffer.concat(chunks).toString("utf8");
  };

  const bearer = () => `Authorization: Bearer ${custos.adminToken}\r\n`;

  test("answers node's HTTP server writes itself (HTTP/1.1 without Host, an unmet Expect) use the documented error shape", async () => {
    const cases: [string, string][] = [
      ["no Host", "GET /v1/health HTTP/1.1\r\nConnection: close\r\n\r\n"],
      [
        "Expect: 200-ok",
        `POST /v1/random HTTP/1.1\r\nHost: 127.0.0.1\r\n${bearer()}Expect: 200-ok\r\n` +
          'Content-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{"bytes":8}',
      ],
    ];
    for (const [what, request] of cases) {
      const answer = parseAnswer(await exchange(request));
      assert.ok(answer.status >= 400 && answer.status < 500, `${what}: ${answer.status}`);
      assertErrorShape(answer.body, "invalid_request", what);
      assert.match(answer.headers["x-request-id"] ?? "", /^[0-9a-f-]{36}$/, `${what}: x-request-id`);
      assert.equal(answer.headers["cache-control"], "no-store", `${what}: cache-control`);
      const audited = custos.query<{ outcome: string; error_code: string }>(
        "SELECT outcome, error_code FROM audit_log WHERE request_id = ?",
        answer.headers["x-request-id"],
      );
      assert.deepEqual(audited, [{ outcome: "failure", error_code: "invalid_request" }], `${what}: audited once`);
    }
  });

  test("RFC 9112 3.2: a request with two Host fields or an invalid Host value is 400", async () => {
    for (const [what, hosts] of [
      ["two Host fields", "Host: 127.0.0.1\r\nHost: example.org\r\n"],
      ["a Host with a space", "Host: a b\r\n"],
      ["a Host with a path", "Host: example.org/v1\r\n"],
    ] as const) {
      const answer = parseAnswer(await exchange(`GET /v1/health HTTP/1.1\r\n${hosts}Connection: close\r\n\r\n`));
      assert.equal(answer.status, 400, `${what}: ${answer.status} ${answer.body}`);
      assertErrorShape(answer.body, "invalid_request", what);
    }
  });

  test("answers to requests the HTTP parser refuses carry x-request-id and cache-control: no-store, as api.md says every response does", async () => {
    const cases: [string, string][] = [
      ["a header line without a colon", "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n"],
      [
        "two different Content-Length fields",
        `POST /v1/random HTTP/1.1\r\nHost: 127.0.0.1\r\n${bearer()}Content-Type: application/json\r\n` +
          'Content-Length: 11\r\nContent-Length: 12\r\n\r\n{"bytes":8}',
      ],
    ];
    for (const [what, request] of cases) {
      const answer = parseAnswer(await exchange(request));
      assert.equal(answer.status, 400, what);
      assertErrorShape(answer.body, "invalid_request", what);
      assert.match(answer.headers["x-request-id"] ?? "", /^[0-9a-f-]{36}$/, `${what}: x-request-id`);
      assert.equal(answer.headers["cache-control"], "no-store", `${what}: cache-control`);
    }
  });

  test("GET /v1/sudo/grants refuses a query parameter it doesn't know, as GET /v1/ssh/sudo does", async () => {
    const ssh = await custos.call("GET", "/v1/ssh/sudo?actve=true");
    assert.equal(ssh.status, 400, ssh.text);
    assert.equal(errorCode(ssh), "invalid_request");
    const grants = await custos.call("GET", "/v1/sudo/grants?actve=true");
    assert.equal(grants.status, 400, `a misspelt filter was ignored: ${grants.text}`);
    assert.equal(errorCode(grants), "invalid_request");
  });

  test("a route that reads no query string or no body refuses one, naming it, and does nothing", async () => {
    const health = await custos.call("GET", "/v1/health?verbose=1");
    assert.equal(errorCode(health), "invalid_request", health.text);
    assert.match(health.text, /unknown query parameter \\"verbose\\"/);
    ok(await custos.call("PUT", "/v1/policies/kept", { rules: [{ resource: "key/x", actions: ["key:read"] }] }));
    // Sized: node's client sends a DELETE body with neither Content-Length nor chunking.
    const body = JSON.stringify({ ifRevision: 7 });
    const conditional = await httpsRaw({
      port: custos.port,
      ca: custos.ca,
      method: "DELETE",
      path: "/v1/policies/kept",
      body,
      headers: {
        authorization: `Bearer ${custos.adminToken}`,
        "content-type": "application/json",
        "content-length": Buffer.byteLength(body),
      },
    });
    assert.equal(errorCode(conditional), "invalid_request", conditional.text);
    assert.match(conditional.text, /body has an unknown member \\"ifRevision\\"/);
    const typo = await custos.call("DELETE", "/v1/policies/kept?force=true");
    assert.equal(errorCode(typo), "invalid_request", typo.text);
    ok(await custos.call("GET", "/v1/policies/kept"));
    ok(await custos.call("DELETE", "/v1/policies/kept"));
  });

  test("a POST route that takes no body refuses one rather than ignoring it", async () => {
    const before = ok(await custos.call("GET", "/v1/keys/edge")).latestVersion;
    for (const body of ['"x"', "null", '{"algorithm":"ed25519"}']) {
      const r = await custos.call("POST", "/v1/keys/edge/rotate", body);
      assert.equal(r.status, 400, `rotate with ${body}: ${r.text}`);
      assert.equal(errorCode(r), "invalid_request");
    }
    assert.equal(ok(await custos.call("GET", "/v1/keys/edge")).latestVersion, before, "the key was rotated");
    const verify = await custos.call("POST", "/v1/audit/verify", { fromSeq: 5 });
    assert.equal(verify.status, 400, `audit/verify with an unknown member: ${verify.text}`);
    assert.match((verify.body as { error: { message: string } }).error.message, /unknown member "fromSeq"/);
    for (const path of ["/v1/keys/edge/cancel-destruction", "/v1/pki/consumers/edge/rotate", "/v1/broker/jwt"]) {
      const r = await custos.call("POST", path, { force: true });
      assert.equal(r.status, 400, `${path}: ${r.text}`);
      assert.equal(errorCode(r), "invalid_request", path);
    }
    // What the CLI and clients send, no body at all or `{}`, is served as before.
    const rotated = await httpsRaw({
      port: custos.port,
      ca: custos.ca,
      method: "POST",
      path: "/v1/keys/edge/rotate",
      headers: { authorization: `Bearer ${custos.adminToken}` },
    });
    assert.equal(rotated.status, 200, rotated.text);
    ok(await custos.call("POST", "/v1/keys/edge/rotate", {}));
    // Many clients label an empty POST as JSON: that is no body too.
    const labelled = await httpsRaw({
      port: custos.port,
      ca: custos.ca,
      method: "POST",
      path: "/v1/keys/edge/rotate",
      headers: { authorization: `Bearer ${custos.adminToken}`, "content-type": "application/json" },
    });
    assert.equal(labelled.status, 200, labelled.text);
    assert.equal(ok(await custos.call("GET", "/v1/keys/edge")).latestVersion, Number(before) + 3);
    ok(await custos.call("POST", "/v1/audit/verify"));
    const needsOne = await httpsRaw({
      port: custos.port,
      ca: custos.ca,
      method: "POST",
      path: "/v1/keys/edge/encrypt",
      headers: { authorization: `Bearer ${custos.adminToken}`, "content-type": "application/json" },
    });
    assert.equal(needsOne.status, 400, needsOne.text);
    assert.match(needsOne.text, /"invalid_request".*body must be object/);
  });

  test("a string member holding a lone surrogate is refused, not stored altered", async () => {
    // Valid JSON (RFC 8259 8.2 allows the escape), but no UTF-8 can hold it: the store can't keep what was sent.
    const lone = "a\\ud800b";
    const sent: [string, string, string, string, string][] = [
      [
        "POST",
        "/v1/keys",
        `{"name":"lone","purpose":"encrypt","description":"${lone}"}`,
        "/v1/keys/lone",
        "description",
      ],
      [
        "PUT",
        "/v1/policies/lone",
        `{"description":"${lone}","rules":[{"resource":"key/lone","actions":["key:read"]}]}`,
        "/v1/policies/lone",
        "description",
      ],
    ];
    for (const [method, path, body, readBack, field] of sent) {
      const r = await custos.call(method, path, body);
      if (r.status < 300) {
        const stored = ok(await custos.call("GET", readBack))[field];
        assert.equal(stored, (r.body as Json)[field], `${path}: answered one ${field}, stored another`);
      }
      assert.equal(r.status, 400, `${method} ${path}: ${r.text}`);
      assert.equal(errorCode(r), "invalid_request");
    }
    const password = `${lone}cdefghijklmnop`;
    const made = await custos.call("POST", "/v1/users", `{"name":"lone","password":"${password}"}`);
    const collided = await custos.call(
      "POST",
      "/v1/auth/login",
      { username: "lone", password: "a\ufffdbcdefghijklmnop" },
      null,
    );
    assert.notEqual(collided.status, 200, "a password that was never set logs in");
    assert.equal(made.status, 400, made.text);
    // A member name is checked too; a pair of escapes is one character and is kept as sent.
    const named = await custos.call("POST", "/v1/keys", `{"name":"lone","purpose":"encrypt","\\udc00":"x"}`);
    assert.equal(errorCode(named), "invalid_request", named.text);
    assert.match((named.body as { error: { message: string } }).error.message, /lone surrogate/);
    const paired = '{"name":"paired","purpose":"encrypt","description":"a\\ud83d\\ude00b"}';
    ok(await custos.call("POST", "/v1/keys", paired), 201);
    assert.equal(ok(await custos.call("GET", "/v1/keys/paired")).description, "a\u{1f600}b");
  });

  test("a body under a Content-Encoding the server does not decode is refused, not read as if unencoded", async () => {
    const send = (encoding: string, body: Buffer | string) =>
      httpsRaw({
        port: custos.port,
        ca: custos.ca,
        method: "POST",
        path: "/v1/random",
        headers: {
          authorization: `Bearer ${custos.adminToken}`,
          "content-type": "application/json",
          "content-encoding": encoding,
        },
        body,
      });
    const json = '{"bytes":8}';
    const gzipped = await send("gzip", gzipSync(json));
    assert.ok(gzipped.status >= 400 && gzipped.status < 500, gzipped.text);
    assertErrorShape(gzipped.text, null, "gzip");
    for (const encoding of ["gzip", "br", "x-custom"]) {
      const mislabelled = await send(encoding, json);
      assert.ok(mislabelled.status >= 400, `${encoding}: served as identity: ${mislabelled.text}`);
      const message = (mislabelled.body as { error: { message: string } }).error.message;
      assert.match(message, new RegExp(`"${encoding}" is not supported`), encoding);
    }
    assert.equal((await send("identity", json)).status, 200, "identity is no coding at all");
  });

  test("a refusal for a member or query parameter the route doesn't know names it", async () => {
    const cases: [string, string, unknown, string][] = [
      ["POST", "/v1/users", { name: "typo", passwrd: "a long enough password" }, "passwrd"],
      ["GET", "/v1/keys?limt=5", undefined, 'unknown query parameter "limt"'],
      ["GET", "/v1/sudo/grants?actve=true", undefined, 'unknown query parameter "actve"'],
      [
        "POST",
        "/v1/keys",
        { name: "typo", purpose: "encrypt", rotationPeriod: 3600 },
        'body has an unknown member "rotationPeriod"',
      ],
      [
        "POST",
        "/v1/keys/edge/encrypt",
        { items: [{ plaintext: "aGk=", contxt: {} }] },
        'body/items/0 has an unknown member "contxt"',
      ],
      ["POST", "/v1/keys", { name: "typo", purpose: "encrypted" }, 'body/purpose must be one of "encrypt", "sign"'],
    ];
    for (const [method, path, body, name] of cases) {
      const r = await custos.call(method, path, body);
      assert.equal(errorCode(r), "invalid_request", r.text);
      assert.match((r.body as { error: { message: string } }).error.message, new RegExp(name), `${method} ${path}`);
    }
  });

  test("JSON bodies that are not objects and repeated query keys get 400 invalid_request in the documented shape", async () => {
    for (const body of ["null", '"8"', "8", "true"]) {
      for (const path of ["/v1/random", "/v1/keys/edge/datakey", "/v1/keys/edge/encrypt"]) {
        const r = await custos.call("POST", path, body);
        assert.equal(r.status, 400, `${path} ${body}: ${r.text}`);
        assertErrorShape(r.text, "invalid_request", `${path} ${body}`);
      }
    }
    for (const query of [
      "/v1/keys?limit=1&limit=2",
      "/v1/keys?prefix=a&prefix=b",
      "/v1/audit?order=desc&order=asc",
      "/v1/keys/edge?immediate=true&immediate=true",
    ]) {
      const method = query.includes("immediate") ? "DELETE" : "GET";
      const r = await custos.call(method, query);
      assert.equal(r.status, 400, `${method} ${query}: ${r.text}`);
      assertErrorShape(r.text, "invalid_request", query);
    }
    ok(await custos.call("GET", "/v1/keys/edge"));
  });

  test("a chunked body is read like any other: served under the limit, 413 payload_too_large over it", async () => {
    const send = (body: string) =>
      httpsRaw({
        port: custos.port,
        ca: custos.ca,
        method: "POST",
        path: "/v1/keys/edge/encrypt",
        headers: {
          authorization: `Bearer ${custos.adminToken}`,
          "content-type": "application/json",
          "transfer-encoding": "chunked",
        },
        body,
      });
    const small = await send(JSON.stringify({ plaintext: "aGk=" }));
    assert.equal(small.status, 200, small.text);
    const big = await send(JSON.stringify({ plaintext: "A".repeat(2 * 1024 * 1024) }));
    assert.equal(big.status, 413, big.text.slice(0, 200));
    assertErrorShape(big.text, "payload_too_large", "chunked 2 MiB");
  });

  test("no answer names the server software or its version in a header", async () => {
    const get = (path: string, headers: Record<string, string> = {}) =>
      httpsRaw({ port: custos.port, ca: custos.ca, method: "GET", path, headers });
    const auth = { authorization: `Bearer ${custos.adminToken}` };
    const answers = [await get("/v1/health"), await get("/v1/keys"), await get("/v1/nothing-here", auth)];
    assert.deepEqual(
      answers.map((a) => a.status),
      [200, 401, 404],
    );
    const raw = parseAnswer(await exchange("GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n"));
    for (const headers of [...answers.map((a) => a.headers), raw.headers]) {
      for (const banner of ["server", "x-powered-by", "via", "x-aspnet-version"]) {
        assert.equal(headers[banner], undefined, `${banner}: ${headers[banner]}`);
      }
    }
  });

  test("/v1/docs operation by operation: a status it lists or the documented error shape, and its required fields are required", async () => {
    const doc = ok(await custos.call("GET", "/v1/docs", undefined, null)) as unknown as OpenApi;
    const fill = (path: string) =>
      path
        .replace("{path}", "acme/prod/web/db")
        .replace("{serial}", "01")
        .replace("{id}", "int-1")
        .replace(/\{[a-z]+\}/g, "absent");
    const wrong: string[] = [];
    let operations = 0;
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const [lower, op] of Object.entries(ops)) {
        // Rotating the issuing CA with an empty body would succeed, and replace the chain under the test.
        if (path === "/v1/pki/issuers/rotate") continue;
        operations++;
        const method = lower.toUpperCase();
        const required =
          (((op.requestBody?.content as Json | undefined)?.["application/json"] as Json | undefined)?.schema as Json)
            ?.required ?? [];
        const r = await custos.call(method, fill(path), op.requestBody ? {} : undefined);
        const key = `${method} ${path}`;
        if (r.status < 400) {
          if (!(String(r.status) in op.responses))
            wrong.push(`${key}: ${r.status}, /v1/docs lists ${Object.keys(op.responses)}`);
          continue;
        }
        if (r.status >= 500) wrong.push(`${key}: ${r.status} ${r.text}`);
        const body = r.body as { error?: Json } | null;
        const shaped =
          body !== null &&
          Object.keys(body).join() === "error" &&
          Object.keys(body.error ?? {})
            .sort()
            .join() === "code,message";
        if (!shaped) wrong.push(`${key}: not the documented error shape: ${r.text.slice(0, 120)}`);
        if ((required as string[]).length > 0 && (r.status !== 400 || errorCode(r) !== "invalid_request"))
          wrong.push(`${key}: {} lacks ${required}, answered ${r.status} ${errorCode(r)}`);
      }
    }
    assert.ok(operations > 100, `only ${operations} operations in /v1/docs`);
    assert.deepEqual(wrong, []);
  });

  test("no path in /v1/docs answers a method /v1/docs doesn't list for it", async () => {
    const doc = ok(await custos.call("GET", "/v1/docs", undefined, null)) as unknown as OpenApi;
    const fill = (path: string) => path.replace("{path}", "acme/prod/web/db").replace(/\{[a-z]+\}/g, "absent");
    const served: string[] = [];
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const method of ["GET", "POST", "PUT", "PATCH", "DELETE"]) {
        if (method.toLowerCase() in ops) continue;
        const r = await custos.call(method, fill(path), ["POST", "PUT", "PATCH"].includes(method) ? {} : undefined);
        const message = (r.body as { error?: { message?: string } } | null)?.error?.message ?? "";
        // "no route …" is the router's answer; a handler's not_found ("no such key") would mean a route.
        if (r.status !== 404 || errorCode(r) !== "not_found" || !message.startsWith("no route "))
          served.push(`${method} ${path}: ${r.status} ${r.text.slice(0, 100)}`);
      }
    }
    assert.deepEqual(served, []);
  });

  test("the served chain passes openssl verify -x509_strict -purpose sslserver against the CA file, for 127.0.0.1 and localhost", () => {
    const shown = spawnSync(
      "openssl",
      ["s_client", "-connect", `127.0.0.1:${custos.port}`, "-servername", "localhost", "-showcerts"],
      { input: "", timeout: 30_000 },
    ).stdout.toString("utf8");
    const pems = shown.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/g) ?? [];
    assert.equal(pems.length, 2, shown);
    const leaf = join(custos.dir, "served-leaf.pem");
    const intermediate = join(custos.dir, "served-intermediate.pem");
    writeFileSync(leaf, pems[0] ?? "");
    writeFileSync(intermediate, pems[1] ?? "");
    const caFile = join(custos.dir, "tls", "ca.pem");
    for (const target of [
      ["-verify_ip", "127.0.0.1"],
      ["-verify_hostname", "localhost"],
    ]) {
      const v = spawnSync(
        "openssl",
        [
          "verify",
          "-x509_strict",
          "-purpose",
          "sslserver",
          "-CAfile",
          caFile,
          "-untrusted",
          intermediate,
          ...target,
          leaf,
        ],
        { encoding: "utf8" },
      );
      assert.equal(v.status, 0, `${target.join(" ")}: ${v.stdout}${v.stderr}`);
      assert.match(v.stdout, /: OK$/m);
    }
    const wrong = spawnSync(
      "openssl",
      ["verify", "-purpose", "sslclient", "-CAfile", caFile, "-untrusted", intermediate, leaf],
      { encoding: "utf8" },
    );
    assert.notEqual(wrong.status, 0, "the server certificate also passes as a TLS client certificate");
  });

  test("of every TLS 1.2 suite openssl knows, only ECDHE with AES-GCM or ChaCha20-Poly1305 is negotiated, as api.md says", () => {
    const listed = spawnSync("openssl", ["ciphers", "-v", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"], { encoding: "utf8" });
    const suites = listed.stdout
      .split("\n")
      .map((line) => line.trim().split(/\s+/))
      .filter(([, protocol]) => protocol === "TLSv1.2" || protocol === "SSLv3")
      .map(([name]) => name ?? "");
    assert.ok(suites.length > 40, `only ${suites.length} TLS 1.2 suites listed`);
    const negotiated = suites.filter((suite) => {
      const r = spawnSync(
        "openssl",
        ["s_client", "-connect", `127.0.0.1:${custos.port}`, "-tls1_2", "-cipher", `${suite}@SECLEVEL=0`],
        { input: "", timeout: 30_000 },
      );
      return r.stdout.toString("utf8").includes(`Cipher is ${suite}`);
    });
    assert.ok(negotiated.length > 0, "no TLS 1.2 suite at all");
    for (const suite of negotiated)
      assert.match(suite, /^ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)$/);
  });

  // Spends this minute's login budget: nothing after it logs in.
  test("a rate-limited login is 429 rate_limited with Retry-After, and forwarding headers don't buy a new budget", async () => {
    const login = (headers: Record<string, string> = {}) =>
      httpsRaw({
        port: custos.port,
        ca: custos.ca,
        method: "POST",
        path: "/v1/auth/login",
        headers: { "content-type": "application/json", ...headers },
        body: JSON.stringify({ username: "nobody-here", password: "not the password at all" }),
      });
    let r = await login();
    for (let i = 0; i < LOGIN_LIMIT && r.status !== 429; i++) r = await login();
    assert.equal(r.status, 429, r.text);
    assertErrorShape(r.text, "rate_limited", "login");
    assert.match(String(r.headers["retry-after"]), /^[1-9][0-9]*$/, "Retry-After in seconds");
    assert.ok(Number(r.headers["retry-after"]) <= 60, `Retry-After ${r.headers["retry-after"]}`);
    for (const forwarded of [
      { "x-forwarded-for": "203.0.113.7" },
      { "x-real-ip": "203.0.113.8" },
      { forwarded: "for=203.0.113.9" },
    ]) {
      const again = await login(forwarded);
      assert.equal(again.status, 429, `${Object.keys(forwarded)[0]}: ${again.text}`);
    }
    const other = await httpsJson({
      port: custos.port,
      ca: custos.ca,
      method: "POST",
      path: "/v1/auth/login",
      body: { username: "admin", password: "a different user entirely" },
    });
    assert.equal(other.status, 429, "the budget is the client's, not one user's");
  });

  // Last: it stops the server.
  test("a request that arrives while the server drains is refused in the documented shape", async () => {
    const socket = await openTls();
    let text = "";
    socket.on("data", (c: Buffer) => {
      text += c.toString("utf8");
    });
    socket.on("error", () => {});
    const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    // A request in flight keeps this connection open through the drain; 100 Continue says the server holds it.
    socket.write(
      `POST /v1/random HTTP/1.1\r\nHost: 127.0.0.1\r\n${bearer()}Content-Type: application/json\r\n` +
        'Expect: 100-continue\r\nContent-Length: 11\r\n\r\n{"by',
    );
    for (let i = 0; !text.includes("100 Continue"); i++) {
      assert.ok(i < 1500, `no 100 Continue: ${text}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const stopped = custos.stop();
    // The listener closes only after fastify has started refusing new requests.
    for (let i = 0; ; i++) {
      assert.ok(i < 1500, "the listener never closed");
      const refused = await new Promise<boolean>((resolve) => {
        const probe = tcpConnect({ host: "127.0.0.1", port: custos.port });
        probe.once("connect", () => {
          probe.destroy();
          resolve(false);
        });
        probe.once("error", () => resolve(true));
      });
      if (refused) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    socket.write('tes":8}GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    await closed;
    await stopped;
    // The final answers on the connection, past the interim 100 Continue.
    const starts = [...text.matchAll(/HTTP\/1\.1 (?!100 )\d{3} /g)].map((m) => m.index);
    assert.equal(starts.length, 2, text);
    assert.match(parseAnswer(text, starts[0]).body, /"random"/, "the request in flight was served");
    const draining = parseAnswer(text, starts[1]);
    // Serving it is as good as refusing it; a refusal is an error like any other.
    if (draining.status !== 200) {
      assertErrorShape(draining.body, null, `draining ${draining.status}`);
      assert.match(draining.headers["x-request-id"] ?? "", /^[0-9a-f-]{36}$/, "x-request-id");
      assert.equal(draining.headers["cache-control"], "no-store");
      assert.equal(draining.headers.connection, "close");
      const audited = custos.query<{ outcome: string }>(
        "SELECT outcome FROM audit_log WHERE request_id = ?",
        draining.headers["x-request-id"],
      );
      assert.deepEqual(audited, [{ outcome: "failure" }], "audited once");
    }
  });
});
