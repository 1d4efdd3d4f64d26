/**
 * The broker's identity outputs checked against their specifications with
 * independent oracles: jose as a relying party (RFC 7515/7517/7518/7519, RFC 8725),
 * openssl and node:crypto for the X.509-SVIDs (SPIFFE X.509-SVID, RFC 5280), the
 * SQLite file itself for how bootstrap tokens are kept.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  createHash,
  createHmac,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  X509Certificate,
} from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { checkServerIdentity, connect } from "node:tls";
import Database from "better-sqlite3";
import {
  calculateJwkThumbprint,
  createLocalJWKSet,
  decodeProtectedHeader,
  type JSONWebKeySet,
  type JWK,
  jwtVerify,
  SignJWT,
} from "jose";
import { type CustosInstance, errorCode, httpsJson, startCustos } from "../helpers/custos.js";
import { exchangeToken, registerInstance } from "./instances.js";

type Json = Record<string, unknown>;

const SPIFFE_PREFIX = "spiffe://custos/org/acme/space/prod/app/web/instance/";

function run(cmd: string, args: string[]): { status: number; out: string } {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

/** A key of the given type and an openssl-made CSR for it (its names are the broker's to ignore). */
function keyAndCsr(dir: string, name: string, type: "ec" | "ed25519" | "rsa" = "ec") {
  const { privateKey, publicKey } =
    type === "ec"
      ? generateKeyPairSync("ec", { namedCurve: "P-256" })
      : type === "rsa"
        ? generateKeyPairSync("rsa", { modulusLength: 2048 })
        : generateKeyPairSync("ed25519");
  const keyPem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  const keyFile = join(dir, `${name}.key`);
  writeFileSync(keyFile, keyPem, { mode: 0o600 });
  const r = run("openssl", ["req", "-new", "-key", keyFile, "-subj", `/CN=${name}`]);
  assert.equal(r.status, 0, r.out);
  const spki = publicKey.export({ type: "spki", format: "der" });
  return { keyPem, spki, csr: r.out.slice(r.out.indexOf("-----BEGIN CERTIFICATE REQUEST-----")) };
}

function pemBlocks(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g) ?? [];
}

const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString("base64url");

describe("broker identity outputs: conformance", () => {
  let custos: CustosInstance;
  let dir: string;
  let agent: string;
  let jwks: JSONWebKeySet;
  /** One running instance, exchanged in `before`. */
  let web1: Json;

  const register = (instance: string, ttlSeconds?: number) => registerInstance(custos, agent, instance, ttlSeconds);
  const exchange = (token: unknown, instance: string, csr: string) => exchangeToken(custos, token, instance, csr);
  /** Registers and exchanges; the instance's answer. */
  const start = async (instance: string, type: "ec" | "ed25519" | "rsa" = "ec", ttlSeconds?: number) => {
    const key = keyAndCsr(dir, instance, type);
    const reg = await register(instance, ttlSeconds);
    const ex = await exchange(reg.bootstrapToken, instance, key.csr);
    assert.equal(ex.status, 200, ex.text);
    return { key, reg, answer: ex.body as Json };
  };
  /** A request with exactly these headers. */
  const rawGet = (path: string, headers: Record<string, string>) =>
    new Promise<{ status: number; headers: Record<string, unknown> }>((ok, fail) => {
      const req = request(
        { host: "127.0.0.1", port: custos.port, path, method: "GET", ca: custos.ca, agent: false, headers },
        (res) => {
          res.resume();
          res.on("end", () => ok({ status: res.statusCode ?? 0, headers: res.headers }));
        },
      );
      req.on("error", fail);
      req.end();
    });

  /** The bytes a GET (or, with a body, an OCSP POST) to one of Custos's URLs answers. */
  const fetchBytes = (url: string, body?: Buffer) =>
    new Promise<Buffer>((ok, fail) => {
      const u = new URL(url);
      const req = request(
        {
          host: u.hostname,
          port: u.port,
          path: u.pathname,
          method: body ? "POST" : "GET",
          ca: custos.ca,
          agent: false,
          headers: body ? { "content-type": "application/ocsp-request" } : {},
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => ok(Buffer.concat(chunks)));
        },
      );
      req.on("error", fail);
      req.end(body);
    });

  before(async () => {
    custos = await startCustos();
    dir = mkdtempSync(join(tmpdir(), "custos-broker-conf-"));
    for (const [path, name] of [
      ["/v1/platform/orgs", "acme"],
      ["/v1/platform/orgs/acme/spaces", "prod"],
      ["/v1/platform/orgs/acme/spaces/prod/apps", "web"],
    ] as const) {
      const a = await custos.call("POST", path, { name });
      assert.equal(a.status, 201, a.text);
    }
    const token = await custos.call("POST", "/v1/auth/tokens", { name: "node-agent", policies: ["platform-agent"] });
    assert.equal(token.status, 201, token.text);
    agent = String((token.body as Json).token);
    const keys = await custos.call("GET", "/v1/broker/jwks", undefined, null);
    assert.equal(keys.status, 200, keys.text);
    jwks = keys.body as JSONWebKeySet;
    web1 = (await start("web-1")).answer;
  });

  after(async () => {
    await custos?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  // ---- JWKS (RFC 7517, RFC 7518 6.2, RFC 7638) -----------------------------------------

  test("the JWK set is public and holds only public EC P-256 members, kid its RFC 7638 thumbprint", async () => {
    assert.ok(jwks.keys.length >= 1);
    for (const jwk of jwks.keys) {
      assert.deepEqual(Object.keys(jwk).sort(), ["alg", "crv", "kid", "kty", "use", "x", "y"]);
      assert.equal(jwk.kty, "EC");
      assert.equal(jwk.crv, "P-256");
      assert.equal(jwk.alg, "ES256");
      assert.equal(jwk.use, "sig");
      // RFC 7518 6.2.1.2: x and y are the full 32-byte coordinates, base64url without padding.
      assert.equal(Buffer.from(String(jwk.x), "base64url").length, 32);
      assert.equal(Buffer.from(String(jwk.y), "base64url").length, 32);
      assert.match(`${jwk.x}${jwk.y}`, /^[A-Za-z0-9_-]+$/);
      assert.equal(jwk.kid, await calculateJwkThumbprint(jwk as JWK, "sha256"));
      const key = createPublicKey({ key: jwk as JWK & { kty: string }, format: "jwk" });
      assert.equal(key.type, "public");
      assert.equal(key.asymmetricKeyDetails?.namedCurve, "prime256v1");
    }
  });

  // ---- the instance JWT (RFC 7515, RFC 7519, RFC 8725, docs/broker.md) -----------------

  test("the JWT header is exactly alg ES256, typ JWT and a kid the JWK set has with that alg", () => {
    const header = decodeProtectedHeader(String(web1.jwt));
    assert.deepEqual(Object.keys(header).sort(), ["alg", "kid", "typ"]);
    assert.equal(header.typ, "JWT");
    const jwk = jwks.keys.find((k) => k.kid === header.kid);
    assert.ok(jwk, `kid ${header.kid} is not in the JWK set`);
    assert.equal(header.alg, jwk.alg);
    // A JWS Compact Serialization: three base64url parts, the ES256 signature 64 bytes (RFC 7518 3.4).
    const parts = String(web1.jwt).split(".");
    assert.equal(parts.length, 3);
    assert.equal(Buffer.from(parts[2] ?? "", "base64url").length, 64);
  });

  test("a relying party with the JWK set accepts the documented claims and checks iss and aud", async () => {
    const keySet = createLocalJWKSet(jwks);
    const { payload } = await jwtVerify(String(web1.jwt), keySet, {
      algorithms: ["ES256"],
      typ: "JWT",
      issuer: custos.url,
      audience: "custos",
      requiredClaims: ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"],
    });
    assert.equal(payload.sub, `${SPIFFE_PREFIX}web-1`);
    assert.deepEqual(payload.aud, ["custos"]);
    assert.equal(payload.nbf, (payload.iat ?? 0) - 60, "backdated by the 60 s certificates are backdated by");
    assert.equal((payload.exp ?? 0) - (payload.iat ?? 0), 600);
    assert.ok(Number.isInteger(payload.iat) && Number.isInteger(payload.exp), "NumericDates are whole seconds");
    assert.deepEqual([payload.org, payload.space, payload.app, payload.instance], ["acme", "prod", "web", "web-1"]);
    assert.equal(new Date((payload.exp ?? 0) * 1000).toISOString(), web1.jwtExpiresAt);
    await assert.rejects(jwtVerify(String(web1.jwt), keySet, { audience: "reports" }), {
      code: "ERR_JWT_CLAIM_VALIDATION_FAILED",
    });
    await assert.rejects(jwtVerify(String(web1.jwt), keySet, { issuer: "https://elsewhere.example" }), {
      code: "ERR_JWT_CLAIM_VALIDATION_FAILED",
    });
  });

  test("every JWT has its own jti (exchange and refresh)", async () => {
    const ids = new Set<unknown>();
    const first = await jwtVerify(String(web1.jwt), createLocalJWKSet(jwks));
    ids.add(first.payload.jti);
    for (let i = 0; i < 3; i++) {
      const fresh = await custos.call("POST", "/v1/broker/jwt", undefined, String(web1.jwt));
      assert.equal(fresh.status, 200, fresh.text);
      ids.add((await jwtVerify(String((fresh.body as Json).jwt), createLocalJWKSet(jwks))).payload.jti);
    }
    assert.equal(ids.size, 4);
  });

  test("Custos refuses forged JWTs: alg none, HS256 keyed with the public key, a foreign key, an edited payload", async () => {
    const genuine = String(web1.jwt);
    const [headerPart, payloadPart] = genuine.split(".") as [string, string, string];
    const kid = String(decodeProtectedHeader(genuine).kid);
    const jwk = jwks.keys.find((k) => k.kid === kid) as JWK;
    const publicKey = createPublicKey({ key: jwk as JWK & { kty: string }, format: "jwk" });
    const hs256 = (secret: Buffer | string) => {
      const input = `${b64({ alg: "HS256", typ: "JWT", kid })}.${payloadPart}`;
      return `${input}.${createHmac("sha256", secret).update(input).digest("base64url")}`;
    };
    const foreign = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
    const claims = JSON.parse(Buffer.from(payloadPart, "base64url").toString()) as Json;
    const forged = {
      none: `${b64({ alg: "none", typ: "JWT" })}.${payloadPart}.`,
      hs256Pem: hs256(publicKey.export({ type: "spki", format: "pem" }).toString()),
      hs256Der: hs256(publicKey.export({ type: "spki", format: "der" })),
      hs256Jwk: hs256(JSON.stringify(jwk)),
      foreignKey: await new SignJWT(claims).setProtectedHeader({ alg: "ES256", typ: "JWT", kid }).sign(foreign),
      editedPayload: `${headerPart}.${b64({ ...claims, exp: Number(claims.exp) + 3600 })}.${genuine.split(".")[2]}`,
    };
    assert.equal((await custos.call("GET", "/v1/broker/whoami", undefined, genuine)).status, 200, "control");
    for (const [what, token] of Object.entries(forged)) {
      const who = await custos.call("GET", "/v1/broker/whoami", undefined, token);
      assert.equal(who.status, 401, `${what}: ${who.text}`);
      assert.equal(errorCode(who), "unauthenticated", what);
      const secrets = await custos.call("GET", "/v1/broker/secrets", undefined, token);
      assert.equal(secrets.status, 401, `${what}: ${secrets.text}`);
      const introspected = await custos.call("POST", "/v1/broker/introspect", { token }, null);
      assert.deepEqual(introspected.body, { active: false }, what);
    }
  });

  test("an instance JWT sent with the scheme name in lower case is accepted (RFC 9110 11.1: case-insensitive)", async () => {
    const upper = await rawGet("/v1/broker/whoami", { authorization: `Bearer ${String(web1.jwt)}` });
    assert.equal(upper.status, 200, "control");
    const lower = await rawGet("/v1/broker/whoami", { authorization: `bearer ${String(web1.jwt)}` });
    assert.equal(lower.status, 200);
  });

  test("a 401 from an instance route carries a Bearer challenge (RFC 9110 15.5.2, RFC 6750 3)", async () => {
    const none = await rawGet("/v1/broker/whoami", {});
    assert.equal(none.status, 401);
    assert.match(String(none.headers["www-authenticate"] ?? ""), /^Bearer\b/i);
    const bad = await rawGet("/v1/broker/whoami", { authorization: "Bearer a.b.c" });
    assert.equal(bad.status, 401);
    assert.match(String(bad.headers["www-authenticate"] ?? ""), /^Bearer\b.*error="invalid_token"/i);
  });

  test("a stopped instance gets no fresh JWT, by its JWT or its certificate", async () => {
    const { key, answer } = await start("web-stop");
    const client = { key: key.keyPem, cert: `${String(answer.certificate)}${String(answer.chain)}` };
    const stop = await custos.call("DELETE", "/v1/broker/instances/web-stop", undefined, agent);
    assert.equal(stop.status, 200, stop.text);
    const byJwt = await custos.call("POST", "/v1/broker/jwt", undefined, String(answer.jwt));
    assert.equal(byJwt.status, 401, byJwt.text);
    assert.equal(errorCode(byJwt), "credential_revoked");
    const byCert = await httpsJson({
      port: custos.port,
      ca: custos.ca,
      method: "POST",
      path: "/v1/broker/jwt",
      client,
    });
    assert.equal(byCert.status, 401, byCert.text);
    assert.equal(errorCode(byCert), "credential_revoked");
    const view = await custos.call("GET", "/v1/broker/instances/web-stop", undefined, agent);
    assert.deepEqual(
      ((view.body as Json).jwts as Json[]).map((j) => j.denied),
      [true],
      "only the exchange's JWT was ever issued",
    );
  });

  // ---- the identity certificate (SPIFFE X.509-SVID, RFC 5280) --------------------------

  test("the certificate is an X.509-SVID leaf: one spiffe URI SAN, CA false, critical KU digitalSignature, both EKUs", () => {
    const pem = String(web1.certificate);
    const certFile = join(dir, "svid.pem");
    writeFileSync(certFile, pem);
    const text = run("openssl", ["x509", "-noout", "-text", "-in", certFile]);
    assert.equal(text.status, 0, text.out);
    assert.match(text.out, /X509v3 Basic Constraints: critical\n\s+CA:FALSE\n/);
    assert.match(text.out, /X509v3 Key Usage: critical\n\s+Digital Signature\n/);
    assert.match(
      text.out,
      /X509v3 Extended Key Usage: \n\s+TLS Web Client Authentication, TLS Web Server Authentication\n/,
    );

    const cert = new X509Certificate(pem);
    assert.equal(cert.ca, false);
    const uris = (cert.subjectAltName ?? "")
      .split(", ")
      .filter((n) => n.startsWith("URI:"))
      .map((n) => n.slice(4));
    assert.deepEqual(uris, [web1.spiffeId], "exactly one URI SAN, the SPIFFE id");
    // SPIFFE-ID 2: scheme spiffe, a trust domain and a non-root path of plain segments; no port, user, query, fragment.
    const id = new URL(String(web1.spiffeId));
    assert.equal(id.protocol, "spiffe:");
    assert.equal(id.hostname, "custos");
    assert.equal(`${id.port}${id.username}${id.password}${id.search}${id.hash}`, "");
    const segments = id.pathname.split("/").slice(1);
    assert.ok(segments.length > 0);
    for (const s of segments) assert.ok(/^[A-Za-z0-9._-]+$/.test(s) && s !== "." && s !== "..", s);
    assert.ok(Buffer.byteLength(String(web1.spiffeId)) <= 2048);
  });

  test("chain and caChain verify with openssl -x509_strict to the root the TLS CA file holds", () => {
    const chain = pemBlocks(String(web1.chain));
    const caChain = pemBlocks(String(web1.caChain));
    assert.equal(chain.length, 1);
    assert.equal(caChain.length, 2);
    assert.equal(caChain[0], chain[0], "caChain starts with the intermediate");
    const root = new X509Certificate(caChain[1] ?? "");
    assert.ok(root.ca && root.checkIssued(root) && root.verify(root.publicKey), "caChain ends with a self-signed root");
    assert.equal(root.fingerprint256, new X509Certificate(custos.ca).fingerprint256);
    const files = { leaf: join(dir, "leaf.pem"), chain: join(dir, "chain.pem"), root: join(dir, "root.pem") };
    writeFileSync(files.leaf, String(web1.certificate));
    writeFileSync(files.chain, String(web1.chain));
    writeFileSync(files.root, caChain[1] ?? "");
    for (const purpose of ["sslclient", "sslserver"]) {
      const v = run("openssl", [
        "verify",
        "-x509_strict",
        "-purpose",
        purpose,
        "-CAfile",
        files.root,
        "-untrusted",
        files.chain,
        files.leaf,
      ]);
      assert.equal(v.status, 0, `${purpose}: ${v.out}`);
    }
  });

  test("for P-256, Ed25519 and RSA CSRs the certificate holds exactly the CSR's key and verifies", async () => {
    for (const type of ["ec", "ed25519", "rsa"] as const) {
      const { key, answer } = await start(`web-key-${type}`, type);
      const cert = new X509Certificate(String(answer.certificate));
      assert.ok(cert.publicKey.export({ type: "spki", format: "der" }).equals(key.spki), `${type}: another key`);
      assert.ok(cert.checkPrivateKey(createPrivateKey(key.keyPem)), type);
      const issuer = new X509Certificate(pemBlocks(String(answer.chain))[0] ?? "");
      assert.ok(cert.checkIssued(issuer) && cert.verify(issuer.publicKey), `${type}: not signed by its chain`);
      const leafFile = join(dir, `leaf-${type}.pem`);
      writeFileSync(leafFile, String(answer.certificate));
      const ku = run("openssl", ["x509", "-noout", "-ext", "keyUsage,basicConstraints", "-in", leafFile]);
      assert.match(ku.out, /Key Usage: critical\n\s+Digital Signature/, type);
      assert.doesNotMatch(ku.out, /Certificate Sign|CRL Sign/, type);
      assert.match(ku.out, /CA:FALSE/, type);
    }
  });

  test("validity: at most identityTtlSeconds in all, notAfter as answered, renewAt at half-life", () => {
    const cert = new X509Certificate(String(web1.certificate));
    const from = Date.parse(cert.validFrom);
    const to = Date.parse(cert.validTo);
    assert.ok(to - from <= 3600_000, `lifetime ${to - from} ms`);
    assert.equal(new Date(to).toISOString(), web1.notAfter);
    assert.equal(new Date(from + (to - from) / 2).toISOString(), web1.renewAt);
    const intermediate = new X509Certificate(pemBlocks(String(web1.chain))[0] ?? "");
    assert.ok(to <= Date.parse(intermediate.validTo));
  });

  test("neither the certificate nor the JWT outlives the instance's lease", async () => {
    const { answer } = await start("web-brief", "ec", 60);
    const lease = Date.parse(String(answer.leaseExpiresAt));
    const cert = new X509Certificate(String(answer.certificate));
    assert.ok(Date.parse(String(answer.jwtExpiresAt)) <= lease, `JWT ${answer.jwtExpiresAt} > lease ${lease}`);
    assert.ok(Date.parse(cert.validTo) <= lease, `certificate ${cert.validTo} > lease ${answer.leaseExpiresAt}`);
  });

  test("an instance id can't make its certificate a TLS server certificate for Custos's own name", async () => {
    // Custos's listener certificate names localhost; the instance id becomes a DNS SAN under the same root.
    const served = await new Promise<X509Certificate | undefined>((ok, fail) => {
      const socket = connect({ host: "127.0.0.1", port: custos.port, ca: custos.ca, servername: "localhost" }, () => {
        ok(socket.getPeerX509Certificate());
        socket.end();
      });
      socket.on("error", fail);
    });
    assert.ok(served);
    assert.equal(served.checkHost("localhost"), "localhost", "control: Custos is reached as localhost");
    const reg = await custos.call(
      "POST",
      "/v1/broker/instances",
      { org: "acme", space: "prod", app: "web", instance: "localhost" },
      agent,
    );
    if (reg.status !== 201) return; // refusing the name is one fix
    const key = keyAndCsr(dir, "localhost");
    const ex = await exchange((reg.body as Json).bootstrapToken, "localhost", key.csr);
    if (ex.status !== 200) return;
    const answer = ex.body as Json;
    const leafFile = join(dir, "impostor.pem");
    const chainFile = join(dir, "impostor-chain.pem");
    const caFile = join(dir, "tls-ca.pem");
    writeFileSync(leafFile, String(answer.certificate));
    writeFileSync(chainFile, String(answer.chain));
    writeFileSync(caFile, custos.ca);
    const v = run("openssl", [
      "verify",
      "-purpose",
      "sslserver",
      "-verify_hostname",
      "localhost",
      "-CAfile",
      caFile,
      "-untrusted",
      chainFile,
      leafFile,
    ]);
    assert.notEqual(v.status, 0, `a TLS client of Custos would accept the instance as localhost:\n${v.out}`);
    const legacy = new X509Certificate(String(answer.certificate)).toLegacyObject();
    assert.ok(checkServerIdentity("localhost", legacy) !== undefined);
    // Its name is the instance id under the trust domain, which a client may still check.
    assert.equal(checkServerIdentity("localhost.custos", legacy), undefined);
  });

  test("after a stop, the certificate's own CRL distribution point and OCSP URL say revoked (cessationOfOperation)", async () => {
    const { answer } = await start("web-revoked");
    const files = {
      leaf: join(dir, "revoked.pem"),
      issuer: join(dir, "revoked-issuer.pem"),
      root: join(dir, "revoked-root.pem"),
      crl: join(dir, "revoked.crl"),
      req: join(dir, "ocsp.req"),
      resp: join(dir, "ocsp.resp"),
    };
    writeFileSync(files.leaf, String(answer.certificate));
    writeFileSync(files.issuer, String(answer.chain));
    writeFileSync(files.root, pemBlocks(String(answer.caChain))[1] ?? "");
    const ext = run("openssl", ["x509", "-noout", "-ext", "crlDistributionPoints", "-in", files.leaf]);
    const crlUrl = /URI:(\S+)/.exec(ext.out)?.[1];
    const ocspUrl = /OCSP - URI:(\S+)/.exec(new X509Certificate(String(answer.certificate)).infoAccess ?? "")?.[1];
    assert.ok(crlUrl && ocspUrl, ext.out);
    const checkCrl = async () => {
      writeFileSync(files.crl, await fetchBytes(crlUrl));
      return run("openssl", [
        "verify",
        "-crl_check",
        "-CRLfile",
        files.crl,
        "-CAfile",
        files.root,
        "-untrusted",
        files.issuer,
        files.leaf,
      ]);
    };
    const live = await checkCrl();
    assert.equal(live.status, 0, `control: ${live.out}`);

    const stop = await custos.call("DELETE", "/v1/broker/instances/web-revoked", undefined, agent);
    assert.equal(stop.status, 200, stop.text);
    const revoked = await checkCrl();
    assert.notEqual(revoked.status, 0);
    assert.match(revoked.out, /certificate revoked/);

    const req = run("openssl", [
      "ocsp",
      "-issuer",
      files.issuer,
      "-cert",
      files.leaf,
      "-no_nonce",
      "-reqout",
      files.req,
    ]);
    assert.equal(req.status, 0, req.out);
    writeFileSync(files.resp, await fetchBytes(ocspUrl, readFileSync(files.req)));
    const said = run("openssl", [
      "ocsp",
      "-respin",
      files.resp,
      "-issuer",
      files.issuer,
      "-cert",
      files.leaf,
      "-CAfile",
      files.root,
    ]);
    assert.match(said.out, /Response verify OK/, said.out);
    assert.match(said.out, /: revoked\n/, said.out);
    assert.match(said.out, /Reason: cessationOfOperation/, said.out);
  });

  // ---- bootstrap tokens ------------------------------------------------------------------

  test("the database keeps only SHA-256 of a bootstrap token, and marks it used on exchange", async () => {
    const key = keyAndCsr(dir, "web-hash");
    const reg = await register("web-hash");
    const token = String(reg.bootstrapToken);
    const [, id, secret] = token.split(".") as [string, string, string];
    const db = new Database(join(custos.dir, "custos.db"), { readonly: true, fileMustExist: true });
    try {
      const row = () => db.prepare("SELECT * FROM broker_tokens WHERE id = ?").get(id) as Json | undefined;
      const before = row();
      assert.ok(before, "no row for the token id");
      assert.equal(before.hash, createHash("sha256").update(token).digest("hex"));
      assert.equal(before.state, "unused");
      for (const value of Object.values(before)) assert.ok(!String(value).includes(secret), "the secret is stored");
      assert.equal((await exchange(token, "web-hash", key.csr)).status, 200);
      const afterUse = row();
      assert.equal(afterUse?.state, "used");
      assert.equal(typeof afterUse?.used_at, "string");
    } finally {
      db.close();
    }
  });

  test("a token used for another registered instance starts neither and stays good for its own", async () => {
    const a = keyAndCsr(dir, "web-a");
    const regA = await register("web-a");
    await register("web-b");
    const foreign = await exchange(regA.bootstrapToken, "web-b", a.csr);
    assert.equal(foreign.status, 401, foreign.text);
    assert.equal(errorCode(foreign), "unauthenticated");
    for (const id of ["web-a", "web-b"]) {
      const view = await custos.call("GET", `/v1/broker/instances/${id}`, undefined, agent);
      assert.equal((view.body as Json).state, "registered", id);
    }
    const audit = await custos.call("GET", "/v1/audit?action=broker.exchange&limit=1000");
    const record = (audit.body as { records: Json[] }).records.find(
      (r) => r.outcome === "denied" && (r.details as Json).reason === "foreign",
    );
    assert.equal((record?.details as Json | undefined)?.instance, "web-b");
    assert.ok(!audit.text.includes(String(regA.bootstrapToken).split(".")[2] ?? "-"));
    const own = await exchange(regA.bootstrapToken, "web-a", a.csr);
    assert.equal(own.status, 200, own.text);
    assert.equal((own.body as Json).spiffeId, `${SPIFFE_PREFIX}web-a`);
  });
});
