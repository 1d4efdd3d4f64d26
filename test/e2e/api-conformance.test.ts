import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { connect, type TLSSocket } from "node:tls";
import Database from "better-sqlite3";
import { type CustosInstance, httpsRaw, startCustos } from "../helpers/custos.js";

type Json = Record<string, unknown>;

type Answer = Awaited<ReturnType<typeof httpsRaw>>;

interface AuditRow {
  readonly outcome: string;
  readonly error_code: string | null;
  readonly details: string;
}

/**
 * The HTTPS API as a client meets it, checked against openssl s_client, node's TLS
 * and HTTPS clients, and the SQLite file and log the server writes.
 */
describe("the HTTPS API as a client meets it", () => {
  let custos: CustosInstance;
  before(async () => {
    custos = await startCustos();
    const made = await custos.call("POST", "/v1/keys", { name: "conf", purpose: "encrypt" });
    assert.equal(made.status, 201, made.text);
  });
  after(async () => {
    await custos?.dispose();
  });

  /** One HTTPS request with exactly the headers and bytes given (no JSON helper in the way). */
  const send = (method: string, path: string, headers: Record<string, string> = {}, body?: Buffer | string) =>
    httpsRaw({ port: custos.port, ca: custos.ca, method, path, headers, body });
  const bearer = (token = custos.adminToken) => ({ authorization: `Bearer ${token}` });
  const json = { "content-type": "application/json" };
  const codeOf = (r: { body: unknown }) => (r.body as { error?: { code?: string } } | null)?.error?.code;

  /** Asserts the documented error shape: `{ error: { code, message } }` and nothing else. */
  const assertError = (r: Answer, status: number, code: string) => {
    assert.equal(r.status, status, r.text);
    assert.deepEqual(Object.keys(r.body as object), ["error"], r.text);
    const error = (r.body as { error: Json }).error;
    assert.deepEqual(Object.keys(error).sort(), ["code", "message"], r.text);
    assert.equal(error.code, code, r.text);
    assert.equal(typeof error.message, "string");
  };

  const auditRows = (requestId: string): AuditRow[] =>
    custos.query<AuditRow>("SELECT outcome, error_code, details FROM audit_log WHERE request_id = ?", requestId);

  const newToken = async (name: string, policies?: string[]) => {
    const r = await custos.call("POST", "/v1/auth/tokens", { name, ...(policies ? { policies } : {}) });
    assert.equal(r.status, 201, r.text);
    return r.body as { token: string; id: string };
  };

  const sClient = (args: string[]) => {
    const r = spawnSync("openssl", ["s_client", "-connect", `127.0.0.1:${custos.port}`, ...args], {
      input: "",
      timeout: 30_000,
    });
    return `${r.stdout.toString("utf8")}${r.stderr.toString("utf8")}`;
  };
  const caFile = () => join(custos.dir, "tls", "ca.pem");

  describe("TLS", () => {
    test("TLS 1.0 and 1.1 are refused with a protocol_version alert; 1.2 and 1.3 are served", () => {
      for (const old of ["-tls1", "-tls1_1"]) {
        // SECLEVEL=0 so the client really offers the old version and the refusal is the server's.
        const out = sClient([old, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert.match(out, /alert protocol version/, out);
        assert.doesNotMatch(out, /New, TLSv1(\.[0-9])?, Cipher is [A-Z]/, out);
      }
      assert.match(sClient(["-tls1_2"]), /New, TLSv1\.2, Cipher is ECDHE-/);
      assert.match(sClient(["-tls1_3"]), /New, TLSv1\.3, Cipher is TLS_AES_/);
    });

    test("under TLS 1.2 no NULL, anonymous, export, RSA-key-transport, 3DES or RC4 suite is accepted", () => {
      const out = sClient(["-tls1_2", "-cipher", "aNULL:eNULL:EXP:kRSA:3DES:RC4:@SECLEVEL=0"]);
      assert.match(out, /alert handshake failure/, out);
      assert.match(out, /Cipher is \(NONE\)/, out);
    });

    test("under TLS 1.2 no CBC suite with a SHA-1 MAC is negotiated", () => {
      for (const suite of ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA"]) {
        const out = sClient(["-tls1_2", "-cipher", suite]);
        assert.doesNotMatch(out, new RegExp(`Cipher is ${suite}`), `${suite} was negotiated`);
      }
    });

    test("the chain carries the intermediate and verifies against the root alone for 127.0.0.1 and localhost", () => {
      const byIp = sClient(["-showcerts", "-CAfile", caFile(), "-verify_return_error", "-verify_ip", "127.0.0.1"]);
      assert.match(byIp, /Verify return code: 0 \(ok\)/, byIp);
      assert.equal(byIp.match(/-----BEGIN CERTIFICATE-----/g)?.length, 2, "leaf and intermediate are sent");
      assert.match(byIp, / 1 s:CN = Custos Intermediate CA/);
      const byName = sClient(["-CAfile", caFile(), "-verify_return_error", "-verify_hostname", "localhost"]);
      assert.match(byName, /Verified peername: localhost/, byName);
      const wrongName = sClient(["-CAfile", caFile(), "-verify_return_error", "-verify_hostname", "example.org"]);
      assert.doesNotMatch(wrongName, /Verify return code: 0 \(ok\)/);
    });

    test("TLS 1.2 offers RFC 5746 secure renegotiation", () => {
      assert.match(sClient(["-tls1_2"]), /Secure Renegotiation IS supported/);
    });
  });

  describe("HTTP errors", () => {
    test("a wrong method on a known path is 404 not_found in the documented shape", async () => {
      for (const [method, path] of [
        ["PUT", "/v1/keys"],
        ["PATCH", "/v1/health"],
        ["DELETE", "/v1/random"],
      ] as const) {
        assertError(await send(method, path, bearer()), 404, "not_found");
      }
    });

    test("a JSON route refuses a body that is not application/json with invalid_request", async () => {
      for (const type of [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonp",
        "multipart/form-data",
      ]) {
        const r = await send("POST", "/v1/random", { ...bearer(), "content-type": type }, '{"bytes":8}');
        assertError(r, 400, "invalid_request");
      }
    });

    test("__proto__, constructor.prototype, deep nesting and a string for an integer are 400 invalid_request", async () => {
      const deep = `{"bytes":8,"x":${"[".repeat(50_000)}${"]".repeat(50_000)}}`;
      for (const body of [
        '{"bytes":8,"__proto__":{"isAdmin":true}}',
        '{"bytes":8,"constructor":{"prototype":{"isAdmin":true}}}',
        deep,
        '{"bytes":"8"}',
      ]) {
        assertError(await send("POST", "/v1/random", { ...bearer(), ...json }, body), 400, "invalid_request");
      }
      const health = await custos.call("GET", "/v1/health", undefined, null);
      assert.equal(health.status, 200, health.text);
    });

    test("a body that is not UTF-8 is refused, not stored altered", async () => {
      const latin1 = Buffer.concat([Buffer.from('{"value":"caf'), Buffer.from([0xe9]), Buffer.from('"}')]);
      const put = await send("PUT", "/v1/secrets/data/shared/latin1", { ...bearer(), ...json }, latin1);
      const read = await custos.call("GET", "/v1/secrets/data/shared/latin1");
      assert.notEqual((read.body as Json | null)?.value, "caf\ufffd", "the stored value differs from the one sent");
      assertError(put, 400, "invalid_request");
    });

    test("a URL the router can't decode gets the documented shape, an x-request-id and an audit record", async () => {
      const r = await send("GET", "/v1/keys/%E0%A4%A", bearer());
      assertError(r, 400, "invalid_request");
      const id = r.headers["x-request-id"];
      assert.equal(typeof id, "string", "x-request-id is missing");
      assert.equal(auditRows(id as string).length, 1);
    });

    test("a request refused by the HTTP parser (headers too large, a malformed header) gets the documented shape", async () => {
      const big = await send("GET", "/v1/keys", { ...bearer(), "x-pad": "a".repeat(20_000) });
      assertError(big, 431, "invalid_request");
      const raw = await new Promise<string>((ok, fail) => {
        const socket = connect({ host: "127.0.0.1", port: custos.port, ca: custos.ca }, () => {
          socket.end("GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n");
        });
        const chunks: Buffer[] = [];
        socket.on("data", (c: Buffer) => chunks.push(c));
        socket.on("end", () => ok(Buffer.concat(chunks).toString("utf8")));
        socket.on("error", fail);
      });
      assert.match(raw, /^HTTP\/1\.1 400 /);
      const body = JSON.parse(raw.slice(raw.indexOf("\r\n\r\n") + 4)) as Json;
      assert.deepEqual(Object.keys(body), ["error"], raw);
    });
  });

  describe("authentication", () => {
    test("a bearer token that is garbage, unknown, revoked or expired gets one and the same 401", async () => {
      const revoked = await newToken("to-revoke");
      assert.equal((await custos.call("DELETE", `/v1/auth/tokens/${revoked.id}`)).status, 200);
      const expired = await newToken("to-expire");
      // Never used before, so no principal cache holds it; its record simply says it expired.
      const db = new Database(join(custos.dir, "custos.db"));
      try {
        db.pragma("busy_timeout = 10000");
        db.prepare("UPDATE tokens SET expires_at = ? WHERE id = ?").run("2000-01-01T00:00:00.000Z", expired.id);
      } finally {
        db.close();
      }
      const unknown = `${revoked.token.slice(0, -4)}AAAA`;
      const bodies = new Set<string>();
      for (const token of ["not-a-token", unknown, revoked.token, expired.token]) {
        const r = await send("GET", "/v1/auth/whoami", bearer(token));
        assertError(r, 401, "unauthenticated");
        bodies.add(r.text);
      }
      assert.equal(bodies.size, 1, [...bodies].join("\n"));
    });

    test("a token in the query string is not accepted", async () => {
      const { token } = await newToken("in-query");
      for (const name of ["access_token", "token"]) {
        assertError(await send("GET", `/v1/auth/whoami?${name}=${token}`), 401, "unauthenticated");
      }
    });

    test("a 401 carries a Bearer challenge, naming invalid_token when a credential was sent", async () => {
      const bare = await send("GET", "/v1/keys");
      assert.equal(bare.status, 401);
      assert.equal(bare.headers["www-authenticate"], 'Bearer realm="custos"');
      const bad = await send("GET", "/v1/keys", bearer("not-a-token"));
      assert.equal(bad.status, 401);
      assert.equal(bad.headers["www-authenticate"], 'Bearer realm="custos", error="invalid_token"');
    });

    test("the Bearer scheme name is matched in any case", async () => {
      for (const scheme of ["bearer", "BEARER"]) {
        const r = await send("GET", "/v1/auth/whoami", { authorization: `${scheme} ${custos.adminToken}` });
        assert.equal(r.status, 200, `${scheme}: ${r.text}`);
      }
    });

    test("a token sent in a query string never reaches the audit log", async () => {
      const { token } = await newToken("leaky");
      const anonymous = await send("GET", `/v1/auth/whoamii?access_token=${token}`);
      assert.equal(anonymous.status, 401);
      const signedIn = await send("GET", `/v1/nothing-here?token=${token}`, bearer());
      assert.equal(signedIn.status, 404);
      for (const r of [anonymous, signedIn]) {
        for (const row of auditRows(r.headers["x-request-id"] as string)) {
          assert.doesNotMatch(row.details, new RegExp(token), "the token is in the audit record");
        }
      }
      for (const file of ["custos.db", "custos.db-wal", "server.log"].map((f) => join(custos.dir, f))) {
        if (existsSync(file)) assert.equal(readFileSync(file).includes(token), false, `the token is in ${file}`);
      }
    });
  });

  test("responses carrying a token or key material say cache-control: no-store", async () => {
    const password = "a long and unguessable passphrase";
    assert.equal((await custos.call("POST", "/v1/users", { name: "cacher", password, policies: [] })).status, 201);
    const enc = await custos.call("POST", "/v1/keys/conf/encrypt", { plaintext: "aGk=" });
    const answers = [
      await send("POST", "/v1/auth/login", json, JSON.stringify({ username: "cacher", password })),
      await send("POST", "/v1/auth/tokens", { ...bearer(), ...json }, '{"name":"cached"}'),
      await send("POST", "/v1/keys/conf/datakey", { ...bearer(), ...json }, "{}"),
      await send(
        "POST",
        "/v1/keys/conf/decrypt",
        { ...bearer(), ...json },
        JSON.stringify({ ciphertext: (enc.body as Json).ciphertext }),
      ),
      await send("POST", "/v1/random", { ...bearer(), ...json }, '{"bytes":16}'),
    ];
    for (const r of answers) {
      assert.ok(r.status < 300, r.text);
      assert.match(String(r.headers["cache-control"]), /no-store/, r.text);
    }
  });

  test("every request, refused or not, leaves one audit record under its x-request-id; errors leak no internals", async () => {
    const none = await newToken("no-policy", []);
    const cases: [string, Promise<Answer>, number, string][] = [
      ["success", send("GET", "/v1/keys/conf", bearer()), 200, "success"],
      ["no token", send("GET", "/v1/keys/conf"), 401, "denied"],
      ["bad token", send("GET", "/v1/keys/conf", bearer("not-a-token")), 401, "denied"],
      ["forbidden", send("GET", "/v1/keys/conf", bearer(none.token)), 403, "denied"],
      ["bad JSON", send("POST", "/v1/keys/conf/encrypt", { ...bearer(), ...json }, "{nope"), 400, "failure"],
      ["schema", send("POST", "/v1/keys/conf/encrypt", { ...bearer(), ...json }, '{"plaintext":1}'), 400, "failure"],
      ["unknown route", send("GET", "/v1/nothing-here", bearer()), 404, "failure"],
      ["unknown key", send("GET", "/v1/keys/absent", bearer()), 404, "failure"],
      ["too large", send("POST", "/v1/random", { ...bearer(), ...json }, "x".repeat(2 << 20)), 413, "failure"],
      // A request id the client makes up is not the one the server records.
      ["forged id", send("GET", "/v1/keys/conf", { ...bearer(), "x-request-id": "forged-by-client" }), 200, "success"],
    ];
    for (const [what, pending, status, outcome] of cases) {
      const r = await pending;
      assert.equal(r.status, status, `${what}: ${r.text}`);
      const id = r.headers["x-request-id"];
      assert.match(String(id), /^[0-9a-f-]{36}$/, `${what}: x-request-id`);
      const rows = auditRows(id as string);
      assert.equal(rows.length, 1, `${what}: ${rows.length} audit records`);
      assert.equal(rows[0]?.outcome, outcome, what);
      if (status >= 400) {
        assert.equal(rows[0]?.error_code, codeOf(r), what);
        assert.doesNotMatch(r.text, /node_modules|\/src\/|\.ts:\d|\n\s+at /, `${what}: ${r.text}`);
      }
    }
    assert.equal(auditRows("forged-by-client").length, 0);
  });

  test("clients trickling their headers don't stop others being served", async () => {
    const slow: TLSSocket[] = [];
    try {
      for (let i = 0; i < 32; i++) {
        const socket = connect({ host: "127.0.0.1", port: custos.port, ca: custos.ca });
        socket.on("error", () => {});
        socket.write("GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
        slow.push(socket);
      }
      const trickle = setInterval(() => {
        for (const s of slow) if (!s.destroyed) s.write("a");
      }, 200);
      try {
        const health = await custos.call("GET", "/v1/health", undefined, null);
        assert.equal(health.status, 200, health.text);
        const enc = await custos.call("POST", "/v1/keys/conf/encrypt", { plaintext: "aGk=" });
        assert.equal(enc.status, 200, enc.text);
        assert.equal(slow.filter((s) => !s.destroyed).length, slow.length, "the slow clients were still connected");
      } finally {
        clearInterval(trickle);
      }
    } finally {
      for (const s of slow) s.destroy();
    }
  });
});
