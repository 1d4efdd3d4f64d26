import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { calculateJwkThumbprint, createLocalJWKSet, type JSONWebKeySet, jwtVerify } from "jose";
import { type CustosInstance, errorCode, type HttpAnswer, httpsJson, startCustos } from "../helpers/custos.js";

type Json = Record<string, unknown>;

/** Bootstrap tokens live 10 s here (the least the config allows), so expiry can be shown by waiting. */
const TOKEN_TTL_SECONDS = 10;

function openssl(args: string[], input?: Buffer): { status: number; out: string } {
  const r = spawnSync("openssl", args, { input, encoding: "buffer" });
  return { status: r.status ?? -1, out: `${r.stdout.toString()}${r.stderr.toString()}` };
}

/** What a container holds: its own key, never sent anywhere. */
interface InstanceKey {
  readonly keyPem: string;
  /** A CSR (made by openssl) asking for names the broker must ignore. */
  readonly csr: string;
}

function newInstanceKey(dir: string, name: string): InstanceKey {
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const keyPem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  const keyFile = join(dir, `${name}.key`);
  writeFileSync(keyFile, keyPem, { mode: 0o600 });
  const r = openssl([
    "req",
    "-new",
    "-key",
    keyFile,
    "-subj",
    "/CN=evil.example/O=someone-else",
    "-addext",
    "subjectAltName=DNS:evil.example",
  ]);
  assert.equal(r.status, 0, r.out);
  return { keyPem, csr: r.out.slice(r.out.indexOf("-----BEGIN CERTIFICATE REQUEST-----")) };
}

/** An HTTPS request presenting a client certificate (mutual TLS), optionally with a bearer token. */
function mtls(
  custos: CustosInstance,
  method: string,
  path: string,
  client: { key: string; cert: string } | null,
  body?: unknown,
  bearer?: string,
): Promise<HttpAnswer> {
  return httpsJson({ port: custos.port, ca: custos.ca, method, path, body, bearer: bearer ?? null, client });
}

function serialOf(pem: string): string {
  return new X509Certificate(pem).serialNumber.toUpperCase().replace(/^0+/, "");
}

describe("container credential broker", () => {
  let custos: CustosInstance;
  let dir: string;
  let agentToken: string;
  let jwks: JSONWebKeySet;

  const register = async (app: string, instance: string, ttlSeconds?: number): Promise<Json> => {
    const a = await custos.call(
      "POST",
      "/v1/broker/instances",
      { org: "acme", space: "prod", app, instance, ...(ttlSeconds ? { ttlSeconds } : {}) },
      agentToken,
    );
    assert.equal(a.status, 201, a.text);
    return a.body as Json;
  };
  const exchange = (token: unknown, instance: string, key: InstanceKey) =>
    custos.call("POST", "/v1/broker/exchange", { token, instance, csr: key.csr }, null);
  const auditOf = async (action: string): Promise<Json[]> => {
    const a = await custos.call("GET", `/v1/audit?action=${action}&limit=1000`);
    assert.equal(a.status, 200, a.text);
    return (a.body as { records: Json[] }).records;
  };
  /** The active intermediate's CRL as openssl prints it. */
  const crlText = async (): Promise<string> => {
    const der = await new Promise<Buffer>((ok, fail) => {
      const req = request(
        { host: "127.0.0.1", port: custos.port, path: "/v1/pki/crl", ca: custos.ca, agent: false },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => ok(Buffer.concat(chunks)));
        },
      );
      req.on("error", fail);
      req.end();
    });
    const r = openssl(["crl", "-inform", "DER", "-noout", "-text"], der);
    assert.equal(r.status, 0, r.out);
    return r.out;
  };

  before(async () => {
    custos = await startCustos({ broker: { bootstrapTokenTtlSeconds: TOKEN_TTL_SECONDS, sweepSeconds: 1 } });
    dir = mkdtempSync(join(tmpdir(), "custos-broker-"));
    for (const [path, body] of [
      ["/v1/platform/orgs", { name: "acme" }],
      ["/v1/platform/orgs/acme/spaces", { name: "prod" }],
      ["/v1/platform/orgs/acme/spaces/prod/apps", { name: "web" }],
      ["/v1/platform/orgs/acme/spaces/prod/apps", { name: "api" }],
    ] as const) {
      const a = await custos.call("POST", path, body);
      assert.ok(a.status === 200 || a.status === 201, a.text);
    }
    for (const [path, value] of [
      ["acme/prod/web/db/password", "web-db-password-1"],
      ["acme/prod/api/signing-key", "api-only-value"],
    ] as const) {
      const a = await custos.call("PUT", `/v1/secrets/data/${path}`, { value });
      assert.ok(a.status === 200 || a.status === 201, a.text);
    }
    const made = custos.cli(["broker", "agent-token", "node-agent-1"]);
    assert.equal(made.status, 0, made.stderr);
    agentToken = made.stdout.trim();
    assert.match(agentToken, /^cst_/);
    const keys = await custos.call("GET", "/v1/broker/jwks", undefined, null);
    assert.equal(keys.status, 200, keys.text);
    jwks = keys.body as JSONWebKeySet;
  });

  after(async () => {
    await custos?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("an agent token registers instances but can't read secrets or manage apps", async () => {
    const who = await custos.call("GET", "/v1/auth/whoami", undefined, agentToken);
    assert.equal(who.status, 200, who.text);
    assert.deepEqual((who.body as Json).policies, ["platform-agent"]);
    const read = await custos.call("GET", "/v1/secrets/data/acme/prod/web/db/password", undefined, agentToken);
    assert.equal(read.status, 403, read.text);
    const app = await custos.call("POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name: "rogue" }, agentToken);
    assert.equal(app.status, 403, app.text);
    const unknownApp = await custos.call(
      "POST",
      "/v1/broker/instances",
      { org: "acme", space: "prod", app: "nope", instance: "nope-1" },
      agentToken,
    );
    assert.equal(unknownApp.status, 404, unknownApp.text);
    const badId = await custos.call(
      "POST",
      "/v1/broker/instances",
      { org: "acme", space: "prod", app: "web", instance: "Web_1" },
      agentToken,
    );
    assert.equal(badId.status, 400, badId.text);
    assert.equal(errorCode(badId), "invalid_request");
  });

  test("exchange, mTLS, JWT, secrets, renewal, then deregistration revokes everything", async () => {
    const reg = await register("web", "web-1");
    const token = String(reg.bootstrapToken);
    assert.match(token, /^cbt\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{43}$/);
    const key = newInstanceKey(dir, "web-1");

    const ex = await exchange(token, "web-1", key);
    assert.equal(ex.status, 200, ex.text);
    const answer = ex.body as Json;
    const spiffe = "spiffe://custos/org/acme/space/prod/app/web/instance/web-1";
    assert.equal(answer.spiffeId, spiffe);

    // The certificate, as node:crypto and openssl see it.
    const cert = new X509Certificate(String(answer.certificate));
    assert.equal(cert.subjectAltName, `DNS:web-1.custos, URI:${spiffe}`);
    assert.match(cert.subject, /^CN=web-1$/m);
    assert.match(cert.subject, /^O=acme$/m);
    assert.match(cert.subject, /OU=app:web/);
    assert.match(cert.subject, /OU=space:prod/);
    assert.doesNotMatch(cert.subject, /evil|someone-else/);
    const lifetime = Date.parse(cert.validTo) - Date.parse(cert.validFrom);
    assert.ok(lifetime <= 3600 * 1000, `lifetime ${lifetime} ms: at most an hour, backdating included`);
    assert.ok(Date.parse(cert.validTo) - Date.now() <= 3600 * 1000 + 1000);
    assert.ok(cert.publicKey.export({ type: "spki", format: "pem" }).toString().length > 0);
    const certFile = join(dir, "web-1.crt");
    const chainFile = join(dir, "web-1.chain");
    const caFile = join(dir, "ca.pem");
    writeFileSync(certFile, String(answer.certificate));
    writeFileSync(chainFile, String(answer.chain));
    writeFileSync(caFile, custos.ca);
    const verified = openssl(["verify", "-CAfile", caFile, "-untrusted", chainFile, "-purpose", "sslclient", certFile]);
    assert.equal(verified.status, 0, verified.out);
    const asServer = openssl(["verify", "-CAfile", caFile, "-untrusted", chainFile, "-purpose", "sslserver", certFile]);
    assert.equal(asServer.status, 0, asServer.out);

    // The JWT, checked by jose against the published key set.
    const { payload, protectedHeader } = await jwtVerify(String(answer.jwt), createLocalJWKSet(jwks), {
      audience: "custos",
      algorithms: ["ES256"],
    });
    assert.equal(payload.sub, spiffe);
    assert.deepEqual([payload.org, payload.space, payload.app, payload.instance], ["acme", "prod", "web", "web-1"]);
    assert.ok(typeof payload.jti === "string" && payload.jti.length > 0);
    assert.ok((payload.exp ?? 0) - (payload.iat ?? 0) <= 600);
    const jwk = jwks.keys[0];
    assert.ok(jwk);
    assert.equal(protectedHeader.kid, await calculateJwkThumbprint(jwk));

    // Exactly its app's secrets.
    const secrets = answer.secrets as Json[];
    assert.deepEqual(
      secrets.map((s) => [s.path, s.name, s.value]),
      [["acme/prod/web/db/password", "db/password", "web-db-password-1"]],
    );

    // mTLS with the issued key and certificate: Custos knows who this is.
    const client = { key: key.keyPem, cert: `${String(answer.certificate)}${String(answer.chain)}` };
    const whoami = await mtls(custos, "GET", "/v1/broker/whoami", client);
    assert.equal(whoami.status, 200, whoami.text);
    assert.equal((whoami.body as Json).instance, "web-1");
    assert.equal((whoami.body as Json).spiffeId, spiffe);
    assert.equal((whoami.body as Json).authenticatedBy, "mtls");
    const jwt = String(answer.jwt);
    const byJwt = await custos.call("GET", "/v1/broker/whoami", undefined, jwt);
    assert.equal(byJwt.status, 200, byJwt.text);
    assert.equal((byJwt.body as Json).authenticatedBy, "jwt");
    const none = await custos.call("GET", "/v1/broker/whoami", undefined, null);
    assert.equal(none.status, 401, none.text);

    // Its own secret; another app's is forbidden and audited.
    const own = await custos.call("GET", "/v1/broker/secrets/acme/prod/web/db/password", undefined, jwt);
    assert.equal(own.status, 200, own.text);
    assert.equal((own.body as Json).value, "web-db-password-1");
    const list = await mtls(custos, "GET", "/v1/broker/secrets", client);
    assert.equal(list.status, 200, list.text);
    assert.deepEqual(
      ((list.body as Json).secrets as Json[]).map((s) => s.path),
      ["acme/prod/web/db/password"],
    );
    const foreign = await mtls(custos, "GET", "/v1/broker/secrets/acme/prod/api/signing-key", client);
    assert.equal(foreign.status, 403, foreign.text);
    assert.doesNotMatch(foreign.text, /api-only-value/);
    const denied = (await auditOf("broker.secret.read")).filter((r) => r.outcome === "denied");
    assert.equal(denied.length, 1, JSON.stringify(denied));
    assert.equal(denied[0]?.principal, "instance:web-1");
    assert.equal(denied[0]?.errorCode, "forbidden");

    // Introspection says the JWT is live.
    const live = await custos.call("POST", "/v1/broker/introspect", { token: jwt }, null);
    assert.equal(live.status, 200, live.text);
    assert.equal((live.body as Json).active, true);

    // Renewal over mTLS: a new certificate for a new key; the JWT alone may not renew.
    const key2 = newInstanceKey(dir, "web-1b");
    const renewed = await mtls(custos, "POST", "/v1/broker/renew", client, { csr: key2.csr });
    assert.equal(renewed.status, 200, renewed.text);
    const renewedCert = String((renewed.body as Json).certificate);
    assert.notEqual(serialOf(renewedCert), serialOf(String(answer.certificate)));
    assert.equal(new X509Certificate(renewedCert).subjectAltName, `DNS:web-1.custos, URI:${spiffe}`);
    assert.ok(!("secrets" in (renewed.body as Json)));
    const client2 = { key: key2.keyPem, cert: `${renewedCert}${String((renewed.body as Json).chain)}` };
    assert.equal((await mtls(custos, "GET", "/v1/broker/whoami", client2)).status, 200);
    const renewByJwt = await custos.call("POST", "/v1/broker/renew", { csr: key2.csr }, jwt);
    assert.equal(renewByJwt.status, 401, renewByJwt.text);
    const fresh = await custos.call("POST", "/v1/broker/jwt", undefined, jwt);
    assert.equal(fresh.status, 200, fresh.text);
    const freshJwt = String((fresh.body as Json).jwt);

    // The agent sees what was issued.
    const view = await custos.call("GET", "/v1/broker/instances/web-1", undefined, agentToken);
    assert.equal(view.status, 200, view.text);
    assert.equal((view.body as Json).state, "running");
    assert.equal(((view.body as Json).certificates as Json[]).length, 2);

    // The app shows its running instance, and can't be deleted from under it.
    const app = await custos.call("GET", "/v1/platform/apps/acme/prod/web");
    assert.equal((((app.body as Json).app as Json).instances as Json).running, 1, app.text);
    const removal = await custos.call("DELETE", "/v1/platform/apps/acme/prod/web");
    assert.equal(removal.status, 409, removal.text);
    assert.match(removal.text, /live instances: deregister them first/);
    const stillReadable = await custos.call("GET", "/v1/broker/secrets", undefined, jwt);
    assert.equal(stillReadable.status, 200, "the refused deletion destroyed nothing");

    // Deregistration.
    const stop = await custos.call("DELETE", "/v1/broker/instances/web-1", undefined, agentToken);
    assert.equal(stop.status, 200, stop.text);
    assert.equal((stop.body as Json).state, "stopped");
    const crl = await crlText();
    for (const pem of [String(answer.certificate), renewedCert]) {
      const serial = serialOf(pem);
      const at = crl.indexOf(serial);
      assert.ok(at >= 0, `serial ${serial} missing from the CRL:\n${crl}`);
      assert.match(crl.slice(at, at + 300), /Cessation Of Operation/);
    }
    for (const c of [client, client2]) {
      const refused = await mtls(custos, "GET", "/v1/broker/whoami", c);
      assert.equal(refused.status, 401, refused.text);
      assert.equal(errorCode(refused), "credential_revoked");
      const renew = await mtls(custos, "POST", "/v1/broker/renew", c, { csr: key2.csr });
      assert.equal(renew.status, 401, renew.text);
      assert.equal(errorCode(renew), "credential_revoked");
    }
    for (const t of [jwt, freshJwt]) {
      const refused = await custos.call("GET", "/v1/broker/whoami", undefined, t);
      assert.equal(refused.status, 401, refused.text);
      assert.equal(errorCode(refused), "credential_revoked");
      const secretsRefused = await custos.call("GET", "/v1/broker/secrets", undefined, t);
      assert.equal(errorCode(secretsRefused), "credential_revoked");
      const introspected = await custos.call("POST", "/v1/broker/introspect", { token: t }, null);
      assert.deepEqual(introspected.body, { active: false });
    }
    // Ids are unique forever.
    const again = await custos.call(
      "POST",
      "/v1/broker/instances",
      { org: "acme", space: "prod", app: "web", instance: "web-1" },
      agentToken,
    );
    assert.equal(again.status, 409, again.text);
  });

  test("replayed, foreign, unknown and expired bootstrap tokens are refused and audited", async () => {
    const key = newInstanceKey(dir, "tokens");
    const expiring = await register("web", "web-late");
    const second = await register("api", "api-1");
    const secondToken = String(second.bootstrapToken);

    // Foreign: api-1's token used for another instance.
    const foreign = await exchange(secondToken, "api-2", key);
    assert.equal(foreign.status, 401, foreign.text);
    assert.equal(errorCode(foreign), "unauthenticated");
    assert.match(foreign.text, /invalid bootstrap token/);

    // Two exchanges racing with one token: exactly one wins, the other is a replay.
    const raced = await Promise.all([exchange(secondToken, "api-1", key), exchange(secondToken, "api-1", key)]);
    assert.deepEqual(raced.map((r) => r.status).sort(), [200, 401]);
    const api = (raced.find((r) => r.status === 200)?.body ?? {}) as Json;
    assert.deepEqual(
      (api.secrets as Json[]).map((s) => s.path),
      ["acme/prod/api/signing-key"],
    );
    const replay = await exchange(secondToken, "api-1", key);
    assert.equal(replay.status, 401, replay.text);
    assert.match(replay.text, /invalid bootstrap token/);

    const unknown = await exchange(`cbt.${"A".repeat(16)}.${"B".repeat(43)}`, "api-1", key);
    assert.equal(unknown.status, 401, unknown.text);
    const garbage = await exchange("not-a-token", "api-1", key);
    assert.equal(garbage.status, 401, garbage.text);

    await sleep((TOKEN_TTL_SECONDS + 1) * 1000);
    const expired = await exchange(expiring.bootstrapToken, "web-late", key);
    assert.equal(expired.status, 401, expired.text);
    assert.match(expired.text, /invalid bootstrap token/);

    const records = (await auditOf("broker.exchange")).filter((r) => r.outcome === "denied");
    const reasons = records.map((r) => (r.details as Json).reason);
    for (const reason of ["foreign", "replay", "unknown", "expired"]) {
      assert.ok(reasons.includes(reason), `no ${reason} refusal in ${JSON.stringify(reasons)}`);
    }
    const replays = records.filter((r) => (r.details as Json).reason === "replay");
    assert.ok(replays.length >= 2, "the lost race and the later replay are both audited");
    // The token id is recorded; the token never is, anywhere in the log.
    assert.ok(records.some((r) => (r.details as Json).tokenId === secondToken.split(".")[1]));
    const all = await custos.call("GET", "/v1/audit?limit=1000");
    for (const t of [secondToken, String(expiring.bootstrapToken)]) {
      assert.ok(!all.text.includes(t.split(".")[2] ?? "-"), "a bootstrap token secret is in the audit log");
    }
    for (const file of ["custos.db", "custos.db-wal", "server.log"]) {
      let bytes: Buffer;
      try {
        bytes = readFileSync(join(custos.dir, file));
      } catch {
        continue;
      }
      assert.ok(!bytes.includes(Buffer.from(secondToken.split(".")[2] ?? "-")), `a bootstrap token is in ${file}`);
    }
  });

  test("a lapsed lease stops the instance, whose credentials ended with it", async () => {
    const reg = await register("web", "web-short", 10);
    const key = newInstanceKey(dir, "web-short");
    const ex = await exchange(reg.bootstrapToken, "web-short", key);
    assert.equal(ex.status, 200, ex.text);
    const answer = ex.body as Json;
    const client = { key: key.keyPem, cert: `${String(answer.certificate)}${String(answer.chain)}` };
    assert.equal((await mtls(custos, "GET", "/v1/broker/whoami", client)).status, 200);

    // Neither credential outlives the lease that grants it.
    const leaseEnd = Date.parse(String(answer.leaseExpiresAt));
    assert.ok(Date.parse(new X509Certificate(String(answer.certificate)).validTo) <= leaseEnd);
    assert.ok(Date.parse(String(answer.jwtExpiresAt)) <= leaseEnd);

    await sleep(11_000);
    const refused = await mtls(custos, "GET", "/v1/broker/whoami", client);
    assert.equal(refused.status, 401, refused.text);
    const byJwt = await custos.call("GET", "/v1/broker/whoami", undefined, String(answer.jwt));
    assert.equal(byJwt.status, 401, byJwt.text);
    const view = await custos.call("GET", "/v1/broker/instances/web-short", undefined, agentToken);
    assert.equal((view.body as Json).state, "stopped");
    assert.equal((view.body as Json).stopReason, "lease-lapsed");
    // Nothing left to revoke: the certificate ended with the lease (a stop before then revokes it).
    const extend = await custos.call("POST", "/v1/broker/instances/web-short/lease", { ttlSeconds: 3600 }, agentToken);
    assert.equal(extend.status, 409, extend.text);
  });
});
