import "reflect-metadata";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { connect } from "node:tls";
import { OCSPRequest } from "@peculiar/asn1-ocsp";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import { Authority, defaultServerNames, Issuer, issueServerCertificate, serverNeedsNew } from "../../src/pki/index.js";
import { type CustosInstance, fetchRaw, ok, startCustos } from "../helpers/custos.js";
import { selfSignedCert } from "../helpers/x509.js";
import { alice, type KmsFixture, openFixture } from "../kms/setup.js";

// Third review of the PKI, as an operator and a TLS client meet it: a running
// Custos, revoked from in bursts, restarted, asked OCSP questions the earlier
// reviews did not ask; and the names its own certificate is issued for. Oracles:
// the openssl binary (crl, verify, ocsp, s_client), node:tls and node:crypto's
// X509Certificate. @peculiar/asn1-ocsp only edits a request openssl made.

type Json = Record<string, unknown>;

let dir: string;
let counter = 0;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "custos-pki-third-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function write(name: string, data: string | Uint8Array): string {
  counter += 1;
  const path = join(dir, `${counter}-${name}`);
  writeFileSync(path, data);
  return path;
}

function openssl(...args: string[]): { status: number; out: string } {
  const r = spawnSync("openssl", args, { encoding: "buffer", input: "" });
  return { status: r.status ?? -1, out: `${r.stdout.toString()}${r.stderr.toString()}` };
}

/** The leaf a TLS handshake with Custos presents, to a node:tls client trusting only the root. */
function servedCertificate(custos: CustosInstance): Promise<X509Certificate> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port: custos.port, servername: "localhost", ca: custos.ca }, () => {
      const raw = socket.getPeerCertificate().raw;
      socket.end();
      resolve(new X509Certificate(raw));
    });
    socket.on("error", reject);
  });
}

/** openssl's text of a DER CRL. */
function crlText(der: Uint8Array): string {
  const r = openssl("crl", "-inform", "DER", "-noout", "-text", "-in", write("crl.der", der));
  assert.equal(r.status, 0, r.out);
  return r.out;
}

function crlNumber(text: string): number {
  const m = /X509v3 CRL Number:\s*\n\s*(\d+)/.exec(text);
  assert.ok(m?.[1], text);
  return Number(m[1]);
}

const dateAfter = (text: string, label: string): number =>
  Date.parse(new RegExp(`${label}: (.+)\\n`).exec(text)?.[1] ?? "");

/** OCSPResponseStatus of a DER OCSPResponse: SEQUENCE { ENUMERATED status, ... }. */
function ocspResponseStatus(der: Buffer): number {
  assert.equal(der[0], 0x30, "an OCSPResponse is a SEQUENCE");
  const at = (der[1] ?? 0) & 0x80 ? 2 + ((der[1] ?? 0) & 0x7f) : 2;
  assert.equal(der[at], 0x0a, "an OCSPResponse starts with its ENUMERATED status");
  return der[at + 2] ?? -1;
}

const MALFORMED_REQUEST = 1;

describe("a running Custos: revocation bursts, restarts, OCSP edges and its own certificate", () => {
  let custos: CustosInstance;
  let rootPath: string;

  before(async () => {
    custos = await startCustos();
    rootPath = write("root.pem", custos.ca);
    ok(
      await custos.call("PUT", "/v1/pki/roles/web", {
        dnsNames: ["*.svc.test", "api.test"],
        keyTypes: ["ec-p256"],
        maxTtlSeconds: 3600,
        ttlSeconds: 600,
      }),
    );
  });
  after(async () => {
    await custos?.dispose();
  });

  const issue = async (body: Json = {}): Promise<Json> =>
    ok(await custos.call("POST", "/v1/pki/roles/web/issue", { dnsNames: ["a.svc.test"], ...body }));
  const crlOf = async (id: string): Promise<Buffer> => {
    const r = await fetchRaw(custos, `/v1/pki/issuers/${id}/crl`);
    assert.equal(r.status, 200);
    return r.body;
  };

  test("ten certificates revoked at once are all revoked and all on the CRL; none answers 409 (docs: 409 is 'already revoked')", async () => {
    const leaves = await Promise.all(Array.from({ length: 10 }, (_, i) => issue({ dnsNames: [`r${i}.svc.test`] })));
    const answers = await Promise.all(
      leaves.map((l) => custos.call("POST", `/v1/pki/certs/${String(l.serial)}/revoke`, { reason: "superseded" })),
    );
    const text = crlText(await crlOf("int-1"));
    for (const [i, leaf] of leaves.entries()) {
      const state = ok(await custos.call("GET", `/v1/pki/certs/${String(leaf.serial)}`)).certificate as Json;
      assert.equal(state.status, "revoked", `${answers[i]?.status} ${answers[i]?.text}`);
      assert.match(text, new RegExp(`Serial Number: ${String(leaf.serial)}`, "i"));
    }
    assert.deepEqual(
      answers.map((a) => a.status),
      leaves.map(() => 200),
    );
  });

  test("across a restart the CRL is the same signed CRL, still current, and the next revocation numbers it one higher", async () => {
    const leaf = await issue({ dnsNames: ["restart.svc.test"] });
    ok(await custos.call("POST", `/v1/pki/certs/${String(leaf.serial)}/revoke`, { reason: "keyCompromise" }));
    const beforeRestart = await crlOf("int-1");
    const number = crlNumber(crlText(beforeRestart));
    await custos.stop();
    await custos.start();
    const afterRestart = await crlOf("int-1");
    const text = crlText(afterRestart);
    assert.equal(crlNumber(text), number, "a restart alone does not re-sign");
    const now = Date.now();
    assert.ok(dateAfter(text, "Last Update") <= now && now < dateAfter(text, "Next Update"), text);
    const chain = write("chain.pem", `${String(leaf.chain)}${custos.ca}`);
    const verified = openssl("crl", "-inform", "DER", "-in", write("c.der", afterRestart), "-CAfile", chain, "-noout");
    assert.equal(verified.status, 0, verified.out);
    assert.match(verified.out, /verify OK/);
    assert.match(
      text,
      new RegExp(`Serial Number: ${String(leaf.serial)}\\s*\\n.*\\n.*\\n.*\\n\\s*Key Compromise`, "i"),
    );

    const next = await issue({ dnsNames: ["restart2.svc.test"] });
    ok(await custos.call("POST", `/v1/pki/certs/${String(next.serial)}/revoke`, {}));
    const later = crlText(await crlOf("int-1"));
    assert.equal(crlNumber(later), number + 1);
    assert.match(later, new RegExp(`Serial Number: ${String(leaf.serial)}`, "i"), "the earlier entry stays");
  });

  test("an OCSP request whose nonce is empty is malformedRequest (RFC 8954 2.1: a server MUST reject a 0-octet nonce)", async () => {
    const leaf = await issue({ dnsNames: ["nonce.svc.test"] });
    const reqPath = join(dir, "nonce-req.der");
    const made = openssl(
      "ocsp",
      "-issuer",
      write("int.pem", String(leaf.chain)),
      "-cert",
      write("leaf.pem", String(leaf.certificate)),
      "-reqout",
      reqPath,
    );
    assert.equal(made.status, 0, made.out);
    const ocspRequest = AsnConvert.parse(readFileSync(reqPath), OCSPRequest);
    const nonce = ocspRequest.tbsRequest.requestExtensions?.[0];
    assert.ok(nonce, "openssl sends a nonce by default");
    nonce.extnValue = new OctetString(AsnConvert.serialize(new OctetString(new Uint8Array(0))));
    const body = Buffer.from(AsnConvert.serialize(ocspRequest));
    const r = await fetchRaw(custos, "/v1/pki/ocsp", { type: "application/ocsp-request", body });
    assert.equal(r.type, "application/ocsp-response");
    assert.equal(ocspResponseStatus(r.body), MALFORMED_REQUEST);
  });

  test("OCSP about a CA Custos does not run is unauthorized, over POST (openssl) and GET alike (RFC 6960 2.3)", async () => {
    const cert = selfSignedCert(join(dir, "foreign"), "/CN=Foreign CA").certFile;
    const asked = openssl("ocsp", "-issuer", cert, "-serial", "0x1234", "-url", `${custos.url}/v1/pki/ocsp`);
    assert.match(asked.out, /Responder Error: unauthorized \(6\)/);
    const reqPath = join(dir, "foreign-req.der");
    assert.equal(openssl("ocsp", "-issuer", cert, "-serial", "0x1234", "-reqout", reqPath).status, 0);
    const got = await fetchRaw(custos, `/v1/pki/ocsp/${encodeURIComponent(readFileSync(reqPath).toString("base64"))}`);
    assert.equal(got.type, "application/ocsp-response");
    assert.equal(ocspResponseStatus(got.body), 6);
  });

  test("a TTL equal to the role's maximum is issued to the second; one more is ttl_too_long; CSR names lose case and the trailing dot", async () => {
    const asked = Date.now();
    const max = await issue({ dnsNames: ["Edge.SVC.test."], ttlSeconds: 3600 });
    const answered = Date.now();
    const leaf = new X509Certificate(String(max.certificate));
    // Issued at some instant between asking and the answer; notAfter is that plus
    // the TTL, cut to whole seconds.
    const notAfter = Date.parse(leaf.validTo);
    assert.ok(notAfter > asked - 1000 + 3_600_000, `${leaf.validTo}, asked at ${new Date(asked).toISOString()}`);
    assert.ok(notAfter <= answered + 3_600_000, `${leaf.validTo}, answered at ${new Date(answered).toISOString()}`);
    assert.equal(leaf.subjectAltName, "DNS:edge.svc.test");
    const over = await custos.call("POST", "/v1/pki/roles/web/issue", { dnsNames: ["a.svc.test"], ttlSeconds: 3601 });
    assert.equal(over.status, 400);
    assert.match(over.text, /"ttl_too_long"/);

    const key = join(dir, "upper.key");
    const csr = join(dir, "upper.csr");
    const made = openssl(
      "req",
      "-new",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-keyout",
      key,
      "-subj",
      "/CN=API.TEST.",
      "-addext",
      "subjectAltName=DNS:B.SVC.TEST.,DNS:api.test",
      "-out",
      csr,
    );
    assert.equal(made.status, 0, made.out);
    const signed = ok(await custos.call("POST", "/v1/pki/roles/web/sign", { csr: readFileSync(csr, "utf8") }));
    const checked = openssl(
      "verify",
      "-x509_strict",
      "-purpose",
      "sslserver",
      "-verify_hostname",
      "b.svc.test",
      "-CAfile",
      rootPath,
      "-untrusted",
      write("int.pem", String(signed.chain)),
      write("leaf.pem", String(signed.certificate)),
    );
    assert.equal(checked.status, 0, checked.out);
    assert.equal(new X509Certificate(String(signed.certificate)).subjectAltName, "DNS:b.svc.test, DNS:api.test");
  });

  test("once its own certificate is revoked, a restarted Custos serves one a CRL-checking TLS client accepts", async () => {
    const served = await servedCertificate(custos);
    const serial = served.serialNumber.toLowerCase().replace(/^0+/, "");
    const revoked = await custos.call("POST", `/v1/pki/certs/${serial}/revoke`, { reason: "keyCompromise" });
    if (revoked.status === 200) {
      await custos.stop();
      await custos.start();
    } else {
      assert.equal(revoked.status, 400, revoked.text);
    }
    const crl = write(
      "server.crl.pem",
      `${openssl("crl", "-inform", "DER", "-in", write("s.der", await crlOf("int-1"))).out}`,
    );
    const client = openssl(
      "s_client",
      "-connect",
      `127.0.0.1:${custos.port}`,
      "-servername",
      "localhost",
      "-verify_return_error",
      "-verify_hostname",
      "localhost",
      "-crl_check",
      "-CRL",
      crl,
      "-CAfile",
      rootPath,
    );
    assert.equal(client.status, 0, client.out);
    assert.match(client.out, /Verify return code: 0 \(ok\)/);
  });
});

describe("Custos's own certificate: the names it is issued for", () => {
  let fx: KmsFixture;
  let authority: Authority;
  let issuer: Issuer;

  before(async () => {
    fx = await openFixture("pki-third");
    authority = new Authority({
      keystore: fx.keystore,
      store: fx.store,
      caAlgorithm: "ecdsa-p256",
      baseUrl: "https://custos.test:8443",
      crlValiditySeconds: 86_400,
      ocspValiditySeconds: 3600,
      clock: () => fx.now,
    });
    issuer = new Issuer({ store: fx.store, authority, clock: () => fx.now });
    await authority.ensure(alice);
  });
  after(async () => {
    await fx?.close();
  });

  test("listening on every IPv6 address ('::', as on '0.0.0.0') puts no unspecified-address IP SAN in the certificate", async () => {
    const ipv4 = await issueServerCertificate(issuer, fx.store, alice, defaultServerNames("0.0.0.0"), 3600);
    assert.doesNotMatch(new X509Certificate(ipv4.cert).subjectAltName ?? "", /IP Address:0\.0\.0\.0/);
    const ipv6 = await issueServerCertificate(issuer, fx.store, alice, defaultServerNames("::"), 3600);
    const text = openssl("x509", "-noout", "-ext", "subjectAltName", "-in", write("server.pem", ipv6.cert)).out;
    assert.match(text, /IP Address:0:0:0:0:0:0:0:1/, "::1 stays: it is a loopback the listener answers on");
    assert.doesNotMatch(text, /IP Address:0:0:0:0:0:0:0:0(?!:)/);
  });

  test("a revoked server certificate needs a new one, at start and at the renewal loop's next check alike", async () => {
    const server = await issueServerCertificate(issuer, fx.store, alice, ["localhost"], 3600);
    assert.equal(await serverNeedsNew(server.cert, authority, issuer, fx.now), false);
    await issuer.revoke(alice, new X509Certificate(server.cert).serialNumber, "keyCompromise");
    assert.equal(await serverNeedsNew(server.cert, authority, issuer, fx.now), true);
  });
});

describe("intermediate rollover beside revocations", () => {
  let fx: KmsFixture;

  before(async () => {
    fx = await openFixture("pki-rollover");
  });
  after(async () => {
    await fx?.close();
  });

  test("two rollovers and six revocations under the retiring CA, all at once: every one succeeds, in turn", async () => {
    const authority = new Authority({
      keystore: fx.keystore,
      store: fx.store,
      caAlgorithm: "ecdsa-p256",
      baseUrl: "https://custos.test:8443",
      crlValiditySeconds: 86_400,
      ocspValiditySeconds: 3600,
    });
    const issuer = new Issuer({ store: fx.store, authority });
    await authority.ensure(alice);
    const leaves = await Promise.all(
      Array.from({ length: 6 }, (_, i) => issueServerCertificate(issuer, fx.store, alice, [`r${i}.test`], 3600)),
    );
    const serials = leaves.map((l) => new X509Certificate(l.cert).serialNumber.toLowerCase());
    const [first, second, ...revoked] = await Promise.all([
      authority.rotateIntermediate(alice),
      authority.rotateIntermediate(alice),
      ...serials.map((s) => issuer.revoke(alice, s, "superseded")),
    ]);
    assert.deepEqual(
      [first, second].map((r) => [r?.retiring.id, r?.issuer.id]),
      [
        ["int-1", "int-2"],
        ["int-2", "int-3"],
      ],
    );
    assert.deepEqual(
      revoked.map((r) => (r as { status: string }).status),
      serials.map(() => "revoked"),
    );
    const text = crlText((await fx.store.getCa("int-1"))?.crlDer ?? Buffer.alloc(0));
    for (const serial of serials) assert.match(text, new RegExp(`Serial Number: ${serial}`, "i"));
    assert.deepEqual(
      authority.issuers().map((v) => [v.id, v.state]),
      [
        ["root-1", "active"],
        ["int-1", "retiring"],
        ["int-2", "retiring"],
        ["int-3", "active"],
      ],
    );
  });
});

describe("a Custos restarted after its CRLs lapsed", () => {
  let custos: CustosInstance;

  before(async () => {
    custos = await startCustos({ pki: { crlValiditySeconds: 60 } });
  });
  after(async () => {
    await custos?.dispose();
  });

  test("serves a current CRL from its first answer on, not one whose nextUpdate passed while it was down", async () => {
    const lapsed = await fetchRaw(custos, "/v1/pki/issuers/int-1/crl");
    const nextUpdate = dateAfter(crlText(lapsed.body), "Next Update");
    assert.ok(Number.isFinite(nextUpdate));
    await custos.stop();
    await new Promise((r) => setTimeout(r, Math.max(0, nextUpdate - Date.now()) + 1500));
    await custos.start();
    const served = crlText((await fetchRaw(custos, "/v1/pki/issuers/int-1/crl")).body);
    const now = Date.now();
    assert.ok(now < dateAfter(served, "Next Update"), `at ${new Date(now).toISOString()}:\n${served}`);
  });
});
