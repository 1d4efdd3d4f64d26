/**
 * Second-pass conformance review of the broker as an instance meets it: the
 * instance routes (RFC 6750 bearer syntax, caching), the bootstrap exchange under
 * races and lapsed leases, credentials near the lease's end, JWTs across a server
 * restart checked by jose as a remote relying party (RFC 7515/7517/7519), the
 * in-process client through an outage, and `custos run`'s JWT refresh. Oracles:
 * jose, node:crypto's X.509 parser, the SQLite files, the file system, the audit log.
 * What earlier reviews check (test/broker/conformance.test.ts, test/e2e/broker.test.ts,
 * test/e2e/run.test.ts, test/run/broker-client.test.ts) is not repeated.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createPublicKey, X509Certificate } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createLocalJWKSet, createRemoteJWKSet, customFetch, type JSONWebKeySet, jwtVerify } from "jose";
import { BrokerError, BrokerSession, bootstrap, prepareKey } from "../../src/broker-client/index.js";
import { type CustosInstance, errorCode, httpsJson, httpsRaw, startCustos } from "../helpers/custos.js";
import { waitFor } from "../helpers/wait.js";
import { exchangeToken, registerInstance } from "./instances.js";

type Json = Record<string, unknown>;

const BIN = join(resolve(import.meta.dirname, "../.."), "bin/custos.js");
const SPIFFE_PREFIX = "spiffe://custos/org/acme/space/prod/app/web/instance/";
const SECRET_VALUE = "web-db-password-second-review";

/** The signature part of a compact JWS: what makes the JWT a credential. */
const signatureOf = (jwt: string): string => jwt.split(".")[2] ?? "-";

/** A GET through node:https returning a WHATWG Response, so jose fetches the JWK set over our TLS trust. */
function fetchTrusting(ca: string) {
  return (url: string): Promise<Response> =>
    new Promise((ok, fail) => {
      const req = request(url, { ca, agent: false, headers: { accept: "application/json" } }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const headers = new Headers();
          for (const [k, v] of Object.entries(res.headers)) if (typeof v === "string") headers.set(k, v);
          ok(new Response(Buffer.concat(chunks), { status: res.statusCode ?? 0, headers }));
        });
      });
      req.on("error", fail);
      req.end();
    });
}

describe("broker as an instance meets it: second review", () => {
  let custos: CustosInstance;
  let work: string;
  let agent: string;

  const register = (instance: string, ttlSeconds?: number) => registerInstance(custos, agent, instance, ttlSeconds);
  const exchange = (token: unknown, instance: string, csr: string) => exchangeToken(custos, token, instance, csr);
  /** Registers and exchanges with a key made by the client library; the answer and the key. */
  const start = async (instance: string, ttlSeconds?: number) => {
    const key = await prepareKey(instance);
    const reg = await register(instance, ttlSeconds);
    const ex = await exchange(reg.bootstrapToken, instance, key.csrPem);
    assert.equal(ex.status, 200, ex.text);
    return { key, reg, answer: ex.body as Json };
  };
  const auditText = async (): Promise<string> => (await custos.call("GET", "/v1/audit?limit=1000")).text;
  const deniedExchanges = async (tokenId: string): Promise<Json[]> => {
    const a = await custos.call("GET", "/v1/audit?action=broker.exchange&limit=1000");
    assert.equal(a.status, 200, a.text);
    return (a.body as { records: Json[] }).records.filter(
      (r) => r.outcome === "denied" && (r.details as Json).tokenId === tokenId,
    );
  };
  const jwks = async (): Promise<JSONWebKeySet> => {
    const a = await custos.call("GET", "/v1/broker/jwks", undefined, null);
    assert.equal(a.status, 200, a.text);
    return a.body as JSONWebKeySet;
  };

  before(async () => {
    // Short JWTs, so `custos run` refreshes one while a test watches; no sweep, so a lapse is the request's doing.
    custos = await startCustos({ broker: { jwtTtlSeconds: 30, sweepSeconds: 3600 } });
    work = mkdtempSync(join(tmpdir(), "custos-broker-second-"));
    for (const [path, name] of [
      ["/v1/platform/orgs", "acme"],
      ["/v1/platform/orgs/acme/spaces", "prod"],
      ["/v1/platform/orgs/acme/spaces/prod/apps", "web"],
    ] as const) {
      const a = await custos.call("POST", path, { name });
      assert.equal(a.status, 201, a.text);
    }
    const put = await custos.call("PUT", "/v1/secrets/data/acme/prod/web/db/password", { value: SECRET_VALUE });
    assert.ok(put.status < 300, put.text);
    const token = await custos.call("POST", "/v1/auth/tokens", { name: "node-agent", policies: ["platform-agent"] });
    assert.equal(token.status, 201, token.text);
    agent = String((token.body as Json).token);
  });

  after(async () => {
    await custos?.dispose();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test('an instance JWT after "Bearer" and two spaces is accepted (RFC 6750 2.1: "Bearer" 1*SP b64token)', async () => {
    const { answer } = await start("web-spaces");
    const jwt = String(answer.jwt);
    const send = (path: string, authorization: string) =>
      httpsRaw({ port: custos.port, ca: custos.ca, method: "GET", path, headers: { authorization } });
    // The rest of the API already takes 1*SP for its own tokens.
    assert.equal((await send("/v1/auth/whoami", `Bearer  ${custos.adminToken}`)).status, 200, "control");
    assert.equal((await send("/v1/broker/whoami", `Bearer ${jwt}`)).status, 200, "control");
    for (const path of ["/v1/broker/whoami", "/v1/broker/secrets"]) {
      const r = await send(path, `Bearer  ${jwt}`);
      assert.equal(r.status, 200, `${path}: ${r.text}`);
    }
  });

  test("eight exchanges racing with one token: one wins, the instance holds one certificate and one JWT, seven replays are audited", async () => {
    const reg = await register("web-race");
    const keys = await Promise.all(Array.from({ length: 8 }, () => prepareKey("web-race")));
    const answers = await Promise.all(keys.map((k) => exchange(reg.bootstrapToken, "web-race", k.csrPem)));
    const won = answers.filter((a) => a.status === 200);
    assert.equal(won.length, 1, answers.map((a) => a.status).join(","));
    for (const lost of answers.filter((a) => a.status !== 200)) {
      assert.equal(lost.status, 401, lost.text);
      assert.equal(errorCode(lost), "unauthenticated");
    }
    const cert = new X509Certificate(String(((won[0]?.body ?? {}) as Json).certificate));
    const spkis = keys.map((k) => createPublicKey(k.privateKeyPem).export({ type: "spki", format: "der" }));
    assert.equal(spkis.filter((s) => s.equals(cert.publicKey.export({ type: "spki", format: "der" }))).length, 1);
    const view = await custos.call("GET", "/v1/broker/instances/web-race", undefined, agent);
    assert.equal((view.body as Json).state, "running");
    assert.equal(((view.body as Json).certificates as Json[]).length, 1, view.text);
    assert.equal(((view.body as Json).jwts as Json[]).length, 1, view.text);
    const tokenId = String(reg.bootstrapToken).split(".")[1] ?? "-";
    const denied = await deniedExchanges(tokenId);
    assert.equal(denied.length, 7);
    assert.ok(denied.every((r) => (r.details as Json).reason === "replay"));
  });

  test("a bootstrap token used after its instance's lease lapsed is refused as void: nothing issued, the instance stopped", async () => {
    const key = await prepareKey("web-lapsed");
    const reg = await register("web-lapsed", 10);
    assert.ok(String(reg.tokenExpiresAt) > String(reg.leaseExpiresAt), "control: the token outlives the lease");
    await sleep(11_000);
    const ex = await exchange(reg.bootstrapToken, "web-lapsed", key.csrPem);
    assert.equal(ex.status, 401, ex.text);
    assert.equal(errorCode(ex), "unauthenticated");
    assert.match(ex.text, /invalid bootstrap token/);
    const view = (await custos.call("GET", "/v1/broker/instances/web-lapsed", undefined, agent)).body as Json;
    assert.equal(view.state, "stopped");
    assert.equal(view.stopReason, "lease-lapsed");
    assert.equal((view.bootstrapToken as Json).state, "void");
    assert.deepEqual(view.certificates, []);
    assert.deepEqual(view.jwts, []);
    const denied = await deniedExchanges(String(reg.bootstrapToken).split(".")[1] ?? "-");
    assert.deepEqual(
      denied.map((r) => (r.details as Json).reason),
      ["void"],
    );
  });

  test("a renewal and a JWT refresh near the lease's end get credentials that end with it, renewAt at half-life", async () => {
    const { key, answer } = await start("web-ending", 20);
    const lease = Date.parse(String(answer.leaseExpiresAt));
    const client = { key: key.privateKeyPem, cert: `${String(answer.certificate)}${String(answer.chain)}` };
    const next = await prepareKey("web-ending");
    const renewed = await httpsJson({
      port: custos.port,
      ca: custos.ca,
      method: "POST",
      path: "/v1/broker/renew",
      body: { csr: next.csrPem },
      client,
    });
    assert.equal(renewed.status, 200, renewed.text);
    const r = renewed.body as Json;
    const cert = new X509Certificate(String(r.certificate));
    assert.ok(
      Date.parse(cert.validTo) <= lease,
      `renewed certificate ${cert.validTo} > lease ${answer.leaseExpiresAt}`,
    );
    assert.equal(new Date(Date.parse(cert.validTo)).toISOString(), r.notAfter);
    const from = Date.parse(cert.validFrom);
    assert.equal(new Date(from + (Date.parse(cert.validTo) - from) / 2).toISOString(), r.renewAt);
    const keySet = createLocalJWKSet(await jwks());
    const fresh = await custos.call("POST", "/v1/broker/jwt", undefined, String(answer.jwt));
    assert.equal(fresh.status, 200, fresh.text);
    for (const jwt of [String(r.jwt), String((fresh.body as Json).jwt)]) {
      const { payload } = await jwtVerify(jwt, keySet, { audience: "custos" });
      assert.ok((payload.exp ?? Infinity) * 1000 <= lease, `JWT exp ${payload.exp} > lease ${lease / 1000}`);
    }
  });

  test("jose as a remote relying party: the JWK set fetched over HTTPS verifies the JWT; it is cacheable, credentials are not", async () => {
    const { key, answer } = await start("web-remote");
    const raw = await httpsRaw({
      port: custos.port,
      ca: custos.ca,
      method: "GET",
      path: "/v1/broker/jwks",
      headers: {},
    });
    assert.match(String(raw.headers["content-type"]), /^application\/(jwk-set\+)?json\b/);
    assert.match(String(raw.headers["cache-control"]), /max-age=\d+/);
    assert.doesNotMatch(String(raw.headers["cache-control"]), /no-store/);
    const remote = createRemoteJWKSet(new URL(`${custos.url}/v1/broker/jwks`), {
      [customFetch]: fetchTrusting(custos.ca),
    });
    const { payload } = await jwtVerify(String(answer.jwt), remote, {
      issuer: custos.url,
      audience: "custos",
      algorithms: ["ES256"],
      typ: "JWT",
    });
    assert.equal(payload.sub, `${SPIFFE_PREFIX}web-remote`);

    const client = { key: key.privateKeyPem, cert: `${String(answer.certificate)}${String(answer.chain)}` };
    const next = await prepareKey("web-remote");
    const send = (method: string, path: string, body?: unknown, authorization?: string) =>
      httpsRaw({
        port: custos.port,
        ca: custos.ca,
        method,
        path,
        client: authorization ? null : client,
        headers: {
          ...(body === undefined ? {} : { "content-type": "application/json" }),
          ...(authorization ? { authorization } : {}),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    const carrying = {
      jwt: await send("POST", "/v1/broker/jwt"),
      secrets: await send("GET", "/v1/broker/secrets"),
      secret: await send("GET", "/v1/broker/secrets/acme/prod/web/db/password", undefined, `Bearer ${answer.jwt}`),
      renew: await send("POST", "/v1/broker/renew", { csr: next.csrPem }),
    };
    for (const [what, a] of Object.entries(carrying)) {
      assert.equal(a.status, 200, `${what}: ${a.text}`);
      assert.match(String(a.headers["cache-control"]), /no-store/, what);
    }
  });

  test("a JWT issued before a server restart verifies with the JWK set served after it and is still accepted", async () => {
    const { answer } = await start("web-restart");
    const before = await jwks();
    await custos.stop();
    await custos.start();
    const afterRestart = await jwks();
    assert.deepEqual(afterRestart, before, "the signing key (and kid) changed across a restart");
    const { payload } = await jwtVerify(String(answer.jwt), createLocalJWKSet(afterRestart), { audience: "custos" });
    assert.equal(payload.sub, `${SPIFFE_PREFIX}web-restart`);
    const who = await custos.call("GET", "/v1/broker/whoami", undefined, String(answer.jwt));
    assert.equal(who.status, 200, who.text);
    const introspected = await custos.call("POST", "/v1/broker/introspect", { token: answer.jwt }, null);
    assert.equal((introspected.body as Json).active, true);
  });

  test("the client through an outage: renew fails as unavailable after its retries, keeps identity and JWT, which work once Custos is back", async () => {
    const reg = await register("web-outage");
    const options = { address: custos.url, ca: custos.ca, retry: { retries: 2, baseDelayMs: 20, maxDelayMs: 50 } };
    const creds = await bootstrap({ ...options, token: String(reg.bootstrapToken), instance: "web-outage" });
    const session = new BrokerSession(options, creds);
    try {
      const serial = String((await session.whoami()).serial);
      await custos.stop();
      await assert.rejects(session.renew(), (e: unknown) => {
        assert.ok(e instanceof BrokerError);
        assert.equal(e.code, "unavailable");
        assert.equal(e.transient, true);
        assert.match(e.message, /still failing after 2 retries/);
        assert.ok(!e.message.includes(creds.jwt) && !e.message.includes("PRIVATE KEY"));
        return true;
      });
      assert.equal(session.identity.certificate, creds.identity.certificate);
      assert.equal(session.identity.privateKeyPem, creds.identity.privateKeyPem);
      assert.equal(session.jwt, creds.jwt);
      await custos.start();
      assert.equal((await session.whoami()).serial, serial, "the kept identity works again");
      const renewed = await session.renew();
      assert.notEqual(renewed.identity.certificate, creds.identity.certificate);
      assert.notEqual((await session.whoami()).serial, serial);
    } finally {
      session.close();
    }
  });

  test("custos run refreshes the JWT at half-life: jwt file and {{ jwt }} template rewritten 0600 with a valid JWT, the app not signalled", async () => {
    const reg = await register("web-run");
    const dir = join(work, "web-run");
    const template = join(work, "jwt.tmpl");
    const rendered = join(work, "jwt.conf");
    const events = join(work, "web-run-events");
    const caFile = join(work, "ca.pem");
    writeFileSync(caFile, custos.ca);
    writeFileSync(template, "token={{ jwt }}\n");
    const app = `const fs = require("node:fs");
      const note = (t) => fs.appendFileSync(${JSON.stringify(events)}, t + "\\n");
      note("start"); process.on("SIGHUP", () => note("hup"));
      process.on("SIGTERM", () => process.exit(0)); setInterval(() => {}, 1000);`;
    const args = ["--dir", dir, "--poll", "3600", "--template", `${template}:${rendered}`];
    const proc = spawn(process.execPath, [BIN, "run", ...args, "--", process.execPath, "-e", app], {
      env: {
        PATH: process.env.PATH ?? "",
        CUSTOS_ADDR: custos.url,
        CUSTOS_CACERT: caFile,
        CUSTOS_BOOTSTRAP_TOKEN: String(reg.bootstrapToken),
        CUSTOS_INSTANCE_ID: "web-run",
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    proc.stderr?.on("data", (c: Buffer) => {
      stderr += c.toString("utf8");
    });
    const exited = new Promise<number | null>((ok) => proc.once("exit", (c) => ok(c)));
    const jwtFile = join(dir, "jwt");
    const events_ = (): string[] => (existsSync(events) ? readFileSync(events, "utf8").trim().split("\n") : []);
    try {
      await waitFor("the app to start", () => events_().includes("start"));
      const first = readFileSync(jwtFile, "utf8");
      assert.equal(readFileSync(rendered, "utf8"), `token=${first}\n`);
      await waitFor("the JWT's refresh", () => readFileSync(jwtFile, "utf8") !== first, 60_000);
      const second = readFileSync(jwtFile, "utf8");
      await waitFor("the template's rewrite", () => readFileSync(rendered, "utf8") === `token=${second}\n`);
      assert.equal(statSync(jwtFile).mode & 0o777, 0o600);
      assert.equal(statSync(rendered).mode & 0o777, 0o600);
      const { payload } = await jwtVerify(second, createLocalJWKSet(await jwks()), { audience: "custos" });
      assert.equal(payload.sub, `${SPIFFE_PREFIX}web-run`);
      assert.ok((payload.exp ?? 0) * 1000 > Date.now(), "the refreshed JWT is current");
      assert.deepEqual(events_(), ["start"], "the app was signalled for a JWT refresh");
      assert.ok(!stderr.includes(signatureOf(first)) && !stderr.includes(signatureOf(second)), stderr);
    } finally {
      if (proc.exitCode === null) proc.kill("SIGTERM");
      await exited;
    }
  });

  test("a bootstrap token sent in the wrong field is refused unechoed, unaudited and stays unspent", async () => {
    const key = await prepareKey("web-swapped");
    const reg = await register("web-swapped");
    const token = String(reg.bootstrapToken);
    const secret = token.split(".")[2] ?? "-";
    const swapped = await custos.call(
      "POST",
      "/v1/broker/exchange",
      { token: "web-swapped", instance: token, csr: key.csrPem },
      null,
    );
    assert.equal(swapped.status, 400, swapped.text);
    assert.equal(errorCode(swapped), "invalid_request");
    const asCsr = await custos.call(
      "POST",
      "/v1/broker/exchange",
      { token, instance: "web-swapped", csr: token },
      null,
    );
    assert.equal(asCsr.status, 400, asCsr.text);
    for (const a of [swapped, asCsr]) assert.ok(!a.text.includes(secret), a.text);
    assert.ok(!(await auditText()).includes(secret), "the token is in the audit log");
    assert.ok(!readFileSync(custos.logFile).includes(Buffer.from(secret)), "the token is in the server log");
    const ex = await exchange(token, "web-swapped", key.csrPem);
    assert.equal(ex.status, 200, ex.text);
  });

  test("the database, its WAL, the server log and the audit log hold no issued JWT (only its id) and no secret value", async () => {
    const { answer } = await start("web-db");
    const fresh = await custos.call("POST", "/v1/broker/jwt", undefined, String(answer.jwt));
    assert.equal(fresh.status, 200, fresh.text);
    const jwts = [String(answer.jwt), String((fresh.body as Json).jwt)];
    const view = (await custos.call("GET", "/v1/broker/instances/web-db", undefined, agent)).body as Json;
    assert.equal((view.jwts as Json[]).length, 2, "control: both JWT ids are recorded");
    const audit = await auditText();
    for (const file of ["custos.db", "custos.db-wal", "server.log"]) {
      const path = join(custos.dir, file);
      if (!existsSync(path)) continue;
      const bytes = readFileSync(path);
      for (const jwt of jwts) assert.ok(!bytes.includes(Buffer.from(signatureOf(jwt))), `a JWT is in ${file}`);
      assert.ok(!bytes.includes(Buffer.from(SECRET_VALUE)), `a secret value is in ${file}`);
    }
    for (const jwt of jwts) assert.ok(!audit.includes(signatureOf(jwt)), "a JWT is in the audit log");
    assert.ok(!audit.includes(SECRET_VALUE), "a secret value is in the audit log");
  });
});
