import "reflect-metadata";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { webcrypto, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import * as x509 from "@peculiar/x509";
import { CustosError } from "../../src/errors/index.js";
import { Authority, Issuer, issueServerCertificate } from "../../src/pki/index.js";
import { checkNames, parseRole } from "../../src/pki/role.js";
import { type CustosInstance, startCustos } from "../helpers/custos.js";
import { alice, type KmsFixture, openFixture, rejectsWith } from "../kms/setup.js";

// Second conformance pass over the PKI: what test/pki/conformance.test.ts and the
// e2e PKI tests leave out. Oracles: the openssl binary (req -verify, x509, verify,
// crl -verify, ocsp), RFC 5280 / RFC 2986 / RFC 3986 text, and docs/pki.md.

type Json = Record<string, unknown>;

let dir: string;
let counter = 0;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "custos-x509-second-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function file(name: string, data?: string | Uint8Array): string {
  counter += 1;
  const path = join(dir, `${counter}-${name}`);
  if (data !== undefined) writeFileSync(path, data);
  return path;
}

function openssl(...args: string[]): { status: number; out: string } {
  const r = spawnSync("openssl", args, { encoding: "buffer" });
  return { status: r.status ?? -1, out: `${r.stdout.toString()}${r.stderr.toString()}` };
}

function opensslOk(...args: string[]): string {
  const r = openssl(...args);
  assert.equal(r.status, 0, `openssl ${args.join(" ")}: ${r.out}`);
  return r.out;
}

/** A CSR made by `openssl req`; `newkey` is its key spec, `extra` more options (-addext …). */
function opensslCsr(newkey: string[], subject: string, ...extra: string[]): string {
  const out = file("req.csr");
  opensslOk("req", "-new", ...newkey, "-nodes", "-keyout", file("req.key"), "-subj", subject, ...extra, "-out", out);
  return readFileSync(out, "utf8");
}

const EC_P256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

function x509Text(pem: string): string {
  return opensslOk("x509", "-noout", "-text", "-certopt", "no_pubkey,no_sigdump", "-in", file("c.pem", pem));
}

// --- a little DER, written here, to swap a CSR's signatureAlgorithm ----------------

function enc(tag: number, ...parts: Buffer[]): Buffer {
  const content = Buffer.concat(parts);
  const n = content.length;
  const length = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...length]), content]);
}

/** The children of a DER SEQUENCE, each whole (header included). */
function children(der: Buffer): Buffer[] {
  const lengthAt = (at: number): [number, number] => {
    const first = der[at + 1]!;
    if (!(first & 0x80)) return [2, first];
    let length = 0;
    for (let i = 0; i < (first & 0x7f); i++) length = length * 256 + der[at + 2 + i]!;
    return [2 + (first & 0x7f), length];
  };
  const [outerHeader, outerLength] = lengthAt(0);
  const out: Buffer[] = [];
  for (let at = outerHeader; at < outerHeader + outerLength; ) {
    const [header, length] = lengthAt(at);
    out.push(der.subarray(at, at + header + length));
    at += header + length;
  }
  return out;
}

const pemBody = (pem: string) => Buffer.from(pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""), "base64");
const toPem = (der: Buffer, label: string) =>
  `-----BEGIN ${label}-----\n${(der.toString("base64").match(/.{1,64}/g) ?? []).join("\n")}\n-----END ${label}-----\n`;

/** The same request, signature untouched, its outer signatureAlgorithm replaced (the signed part is unchanged). */
function withSignatureAlgorithm(csrPem: string, algorithm: Buffer): string {
  const [info, , signature] = children(pemBody(csrPem));
  return toPem(enc(0x30, info!, algorithm, signature!), "CERTIFICATE REQUEST");
}

const SHA256_WITH_RSA = Buffer.from("300d06092a864886f70d01010b0500", "hex"); // 1.2.840.113549.1.1.11, NULL
const ECDSA_WITH_SHA256 = Buffer.from("300a06082a8648ce3d040302", "hex"); // 1.2.840.10045.4.3.2
const ED25519 = Buffer.from("300506032b6570", "hex"); // 1.3.101.112

/** A P-256 CSR made by @peculiar/x509, which (unlike openssl) writes a CN of any length. */
async function peculiarCsr(commonName: string): Promise<string> {
  const crypto = webcrypto as unknown as Parameters<typeof x509.Pkcs10CertificateRequestGenerator.create>[1];
  const keys = (await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ])) as webcrypto.CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create(
    { name: [{ CN: [commonName] }], keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } },
    crypto,
  );
  return csr.toString("pem");
}

/** Asserts `fn` throws a CustosError with `code` and a message matching `message`. */
function throwsCode(fn: () => unknown, code: string, message: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof CustosError && e.code === code && message.test(e.message));
}

// ==== the checks alone ================================================================

describe("the RFC 3986 check of URIs and the bound on common names, alone", () => {
  const role = parseRole("web", {
    dnsNames: ["*.svc.test"],
    uris: ["spiffe://*", "https://*", "urn:*", "mailto:*"],
  });
  const uri = (u: string) => () => checkNames(role, { dnsNames: [], ipAddresses: [], uris: [u] });

  test("URIs of the RFC 3986 grammar pass: userinfo, port, IP literal, query, fragment, %-encoding, no authority", () => {
    for (const u of [
      "spiffe://example.test/ns/a/sa/b",
      "https://user:pw@example.test:8443/a;b=c/~d?x=y&z=%2F#frag",
      "https://[2001:db8::1]:443/",
      "https://example.test:/",
      "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
      "mailto:ops@example.test",
    ]) {
      assert.deepEqual(uri(u)().uris, [u]);
    }
  });

  test("anything else is invalid_request naming RFC 3986: characters outside it, bad %, an empty hier-part or host", () => {
    for (const u of [
      "spiffe:",
      "spiffe:?q",
      "spiffe:#f",
      "spiffe://",
      "spiffe:///path",
      "spiffe://:8443/x",
      "spiffe://user@/x",
      "spiffe://example.test/%",
      "spiffe://example.test/%4",
      "spiffe://example.test/a b",
      'spiffe://example.test/"q"',
      "spiffe://example.test/a\\b",
      "spiffe://example.test/a^b`c",
      "spiffe://example.test/\u00e9",
      "1spiffe://example.test/x",
    ]) {
      throwsCode(uri(u), "invalid_request", /^uris\[0\]: .* is not an absolute RFC 3986 URI$/);
    }
  });

  test("a role's URI patterns are held to RFC 3986 too ('*' standing for any run of characters)", () => {
    for (const pattern of ["spiffe://example.test/<*>", "spiffe://*/%zz", "spiffe:"]) {
      throwsCode(() => parseRole("web", { uris: [pattern] }), "invalid_request", /^uris\[0\]: .*RFC 3986/);
    }
  });

  test("a common name the caller gives may have 64 characters, not 65; one only derived is left out instead", () => {
    const of = (length: number) => `${"a".repeat(length - ".svc.test".length)}.svc.test`;
    const names = (commonName: string, derived?: true) =>
      checkNames(role, {
        commonName,
        ...(derived ? { commonNameDerived: derived } : {}),
        dnsNames: [],
        ipAddresses: [],
        uris: [],
      });
    assert.equal(names(of(64)).commonName, of(64));
    throwsCode(() => names(of(65)), "invalid_request", /^commonName: .* longer than 64 characters/);
    assert.deepEqual(names(of(65), true), { commonName: undefined, dnsNames: [of(65)], ipAddresses: [], uris: [] });
    assert.equal(names(of(64), true).commonName, of(64));
  });
});

// ==== the CA in process =============================================================

describe("issuing in process: requests at the edges", () => {
  let fx: KmsFixture;
  let authority: Authority;
  let issuer: Issuer;
  const BASE = "https://custos.test:8443";

  before(async () => {
    fx = await openFixture("pki-second");
    fx.now = new Date();
    authority = new Authority({
      keystore: fx.keystore,
      store: fx.store,
      caAlgorithm: "ecdsa-p256",
      baseUrl: BASE,
      crlValiditySeconds: 7 * 86_400,
      ocspValiditySeconds: 3600,
      clock: () => fx.now,
    });
    issuer = new Issuer({ store: fx.store, authority, clock: () => fx.now });
    await authority.ensure(alice);
    await issuer.putRole(alice, "web", {
      dnsNames: ["*.svc.test"],
      ipRanges: ["10.0.0.0/8"],
      uris: ["spiffe://example.test/*"],
      keyTypes: ["ec-p256", "rsa-2048"],
    });
  });
  after(async () => {
    await fx?.close();
  });

  const count = async () => (await issuer.list({ limit: 1000 })).length;
  const lookup = (serial: string) => issuer.find(serial);

  test("a CSR whose signatureAlgorithm is not its key's algorithm is refused, as openssl req -verify refuses it (RFC 2986 4.2)", async () => {
    const ec = withSignatureAlgorithm(opensslCsr(EC_P256, "/CN=a.svc.test"), SHA256_WITH_RSA);
    const rsa = withSignatureAlgorithm(opensslCsr(["-newkey", "rsa:2048"], "/CN=b.svc.test"), ECDSA_WITH_SHA256);
    const before = await count();
    for (const forged of [ec, rsa]) {
      const oracle = openssl("req", "-verify", "-noout", "-in", file("forged.csr", forged));
      assert.notEqual(oracle.status, 0, oracle.out);
      assert.match(oracle.out, /wrong public key type/);
      await rejectsWith(issuer.sign(alice, "web", { csr: forged }), "csr_invalid");
    }
    assert.equal(await count(), before, "nothing issued for a CSR openssl does not verify");
  });

  test("an Ed25519 signatureAlgorithm on an EC key and an ECDSA one on an Ed25519 key are csr_invalid, naming the mismatch", async () => {
    await issuer.putRole(alice, "any-key", { dnsNames: ["*.svc.test"], keyTypes: ["ec-p256", "ed25519"] });
    const ec = withSignatureAlgorithm(opensslCsr(EC_P256, "/CN=i.svc.test"), ED25519);
    const ed = withSignatureAlgorithm(opensslCsr(["-newkey", "ed25519"], "/CN=j.svc.test"), ECDSA_WITH_SHA256);
    await rejectsWith(issuer.sign(alice, "any-key", { csr: ec }), "csr_invalid", /Ed25519 is not for its ec-p256 key/);
    await rejectsWith(
      issuer.sign(alice, "any-key", { csr: ed }),
      "csr_invalid",
      /ecdsa-with-SHA256 is not for its ed25519 key/,
    );
  });

  test("a common name longer than 64 characters (RFC 5280 ub-common-name) asked for is invalid_request; nothing issued", async () => {
    const long = `${"a".repeat(63)}.svc.test`;
    // openssl will not even write such a subject: its CN string table says maxsize 64.
    const made = openssl("req", "-new", ...EC_P256, "-nodes", "-keyout", file("l.key"), "-subj", `/CN=${long}`);
    assert.notEqual(made.status, 0);
    assert.match(made.out, /string too long/);
    const before = await count();
    const limit = /commonName: .* is longer than 64 characters/;
    await rejectsWith(issuer.issue(alice, "web", { commonName: long }), "invalid_request", limit);
    const csr = opensslCsr(EC_P256, "/CN=h.svc.test");
    await rejectsWith(issuer.sign(alice, "web", { csr, commonName: long }), "invalid_request", limit);
    assert.equal(await count(), before);
    // As a DNS name alone it is fine: 253 characters are allowed there.
    const leaf = await issuer.issue(alice, "web", { dnsNames: [long] });
    assert.equal(new X509Certificate(leaf.certificate).subjectAltName, `DNS:${long}`);
  });

  test("a CN over 64 characters only derived (a CSR's subject, the first server name) is left out: the SAN keeps the name, critical", async () => {
    const long = `${"b".repeat(63)}.svc.test`;
    const expectNoCn = (pem: string) => {
      const text = x509Text(pem);
      assert.match(text, /Subject: *\n/);
      assert.match(text, new RegExp(`Subject Alternative Name: critical\\s*\\n\\s*DNS:${long}`));
    };
    const leaf = await issuer.sign(alice, "web", { csr: await peculiarCsr(long) });
    expectNoCn(leaf.certificate);
    assert.equal((await issuer.get(leaf.serial)).commonName, null);
    // Renewing it keeps it so.
    expectNoCn((await issuer.renew(alice, leaf.serial, undefined)).certificate);

    const server = await issueServerCertificate(issuer, fx.store, alice, [long, "127.0.0.1"], 3600);
    expectNoCn(server.cert.slice(0, server.cert.indexOf("-----END CERTIFICATE-----") + 26));
    assert.match(new X509Certificate(server.cert).subjectAltName ?? "", /IP Address:127\.0\.0\.1/);
  });

  test("URI SANs must be RFC 3986 URIs with a scheme-specific part (RFC 5280 4.2.1.6): others are invalid_request", async () => {
    const before = await count();
    const notUris = [
      "spiffe://example.test/a<b>", // '<' and '>' are excluded from URIs (RFC 3986 2, appendix C)
      "spiffe://example.test/a|b{c}",
      "spiffe://example.test/%zz", // pct-encoded = "%" HEXDIG HEXDIG
    ];
    const issued: string[] = [];
    for (const uri of notUris) {
      try {
        const leaf = await issuer.issue(alice, "web", { uris: [uri] });
        issued.push(/URI:(\S+)/.exec(x509Text(leaf.certificate))?.[1] ?? uri);
      } catch (e) {
        assert.equal((e as { code?: string }).code, "invalid_request", `${uri}: ${String(e)}`);
      }
    }
    assert.deepEqual(issued, [], "certificates carry URI SANs that are not URIs");
    assert.equal(await count(), before);
  });

  test("sign with only commonName in the body keeps the CSR's SANs (docs: the SANs are the CSR's unless the body names them)", async () => {
    const csr = opensslCsr(
      EC_P256,
      "/CN=c.svc.test",
      "-addext",
      "subjectAltName=DNS:c.svc.test,IP:10.1.2.3,URI:spiffe://example.test/c",
    );
    const leaf = await issuer.sign(alice, "web", { csr, commonName: "c.svc.test" });
    const san = /Subject Alternative Name:\s*\n\s*(.+)\n/.exec(x509Text(leaf.certificate))?.[1];
    assert.equal(san, "DNS:c.svc.test, IP Address:10.1.2.3, URI:spiffe://example.test/c");
    // Another commonName changes the CN, and joins the CSR's DNS names.
    const renamed = x509Text((await issuer.sign(alice, "web", { csr, commonName: "c2.svc.test" })).certificate);
    assert.match(renamed, /Subject: CN ?= ?c2\.svc\.test\n/);
    assert.match(
      renamed,
      /DNS:c2\.svc\.test, DNS:c\.svc\.test, IP Address:10\.1\.2\.3, URI:spiffe:\/\/example\.test\/c\n/,
    );
    // A body that names SANs names all of them.
    const named = x509Text((await issuer.sign(alice, "web", { csr, dnsNames: ["c3.svc.test"] })).certificate);
    assert.match(named, /Subject Alternative Name: critical\s*\n\s*DNS:c3\.svc\.test\n/);
  });

  test("the intermediate carries the OCSP URL of the root's responder, which answers for it (docs: every certificate has OCSP and CA issuers URLs)", async () => {
    const intermediate = file("int.pem", authority.active().certPem);
    const root = file("root.pem", authority.root().certPem);
    // The root does answer OCSP for the intermediate: a client that finds the URL gets "good".
    const request = file("int-ocsp.req");
    opensslOk("ocsp", "-issuer", root, "-cert", intermediate, "-reqout", request);
    const response = await authority.ocsp(readFileSync(request), lookup);
    const answer = opensslOk(
      "ocsp",
      "-reqin",
      request,
      "-respin",
      file("int-ocsp.resp", response),
      "-issuer",
      root,
      "-CAfile",
      root,
      "-resp_text",
    );
    assert.match(answer, /Response verify OK/);
    assert.match(answer, /Cert Status: good\n/);
    assert.equal(opensslOk("x509", "-noout", "-ocsp_uri", "-in", intermediate).trim(), `${BASE}/v1/pki/ocsp`);
  });

  test("extensions a CSR asks for (CA:TRUE, keyCertSign, codeSigning, nameConstraints) never reach the leaf", async () => {
    const csr = opensslCsr(
      EC_P256,
      "/CN=d.svc.test",
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
      "-addext",
      "extendedKeyUsage=codeSigning,serverAuth",
      "-addext",
      "nameConstraints=critical,permitted;DNS:.svc.test",
      "-addext",
      "subjectAltName=DNS:d.svc.test",
    );
    const leaf = await issuer.sign(alice, "web", { csr });
    const text = x509Text(leaf.certificate);
    assert.match(text, /Basic Constraints: critical\s*\n\s*CA:FALSE\n/);
    assert.match(text, /Key Usage: critical\s*\n\s*Digital Signature\n/);
    assert.match(text, /Extended Key Usage: \s*\n\s*TLS Web Server Authentication\n/);
    assert.doesNotMatch(text, /Name Constraints|Code Signing|Certificate Sign/);
    // No extension twice (RFC 5280 4.2): each OID once.
    const oids = [...text.matchAll(/\n\s{12}(X509v3 [^:]+|Authority Information Access):/g)].map((m) => m[1]);
    assert.equal(new Set(oids).size, oids.length, oids.join(", "));
    assert.equal(new X509Certificate(leaf.certificate).ca, false);
  });

  test("extKeyUsage is exactly the role's: a clientAuth-only leaf passes openssl's sslclient purpose and fails sslserver", async () => {
    await issuer.putRole(alice, "client-only", { dnsNames: ["*.svc.test"], extKeyUsages: ["clientAuth"] });
    const leaf = await issuer.issue(alice, "client-only", { dnsNames: ["e.svc.test"] });
    const verify = (purpose: string) =>
      openssl(
        "verify",
        "-x509_strict",
        "-purpose",
        purpose,
        "-CAfile",
        file("root.pem", authority.root().certPem),
        "-untrusted",
        file("int.pem", leaf.chain),
        file("leaf.pem", leaf.certificate),
      );
    const client = verify("sslclient");
    assert.equal(client.status, 0, client.out);
    const server = verify("sslserver");
    assert.notEqual(server.status, 0);
    assert.match(server.out, /unsuitable certificate purpose/);
  });

  test("an RSA-2048 CSR under a role that wants RSA-3072 is key_type_not_allowed, naming both", async () => {
    await issuer.putRole(alice, "rsa-strong", { dnsNames: ["*.svc.test"], keyTypes: ["rsa-3072"] });
    const csr = opensslCsr(["-newkey", "rsa:2048"], "/CN=f.svc.test");
    const before = await count();
    await rejectsWith(issuer.sign(alice, "rsa-strong", { csr }), "key_type_not_allowed", /rsa-2048.*rsa-3072/);
    assert.equal(await count(), before);
  });

  // Last: it changes the active intermediate.
  test("rollover to an RSA-3072 intermediate under the EC root: leaf, CRL and OCSP (with and without nonce, -VAfile) verify", async () => {
    const old = await issuer.issue(alice, "web", { dnsNames: ["old.svc.test"] });
    fx.now = new Date(fx.now.getTime() + 5000);
    const { issuer: created, retiring } = await authority.rotateIntermediate(alice, "rsa-3072");
    assert.deepEqual([created.algorithm, retiring.id], ["rsa-3072", "int-1"]);
    const leaf = await issuer.issue(alice, "web", { dnsNames: ["g.svc.test"], ipAddresses: ["10.0.0.9"] });
    const root = file("root.pem", authority.root().certPem);
    const intermediate = file("int2.pem", leaf.chain);
    const leafFile = file("leaf.pem", leaf.certificate);
    assert.equal(new X509Certificate(leaf.chain).publicKey.asymmetricKeyDetails?.modulusLength, 3072);
    assert.match(x509Text(leaf.certificate), /Signature Algorithm: sha256WithRSAEncryption/);
    const v = openssl(
      "verify",
      "-x509_strict",
      "-purpose",
      "sslserver",
      "-verify_hostname",
      "g.svc.test",
      "-verify_ip",
      "10.0.0.9",
      "-CAfile",
      root,
      "-untrusted",
      intermediate,
      leafFile,
    );
    assert.equal(v.status, 0, v.out);
    // Nothing the new CA signs starts before it.
    const int = new X509Certificate(leaf.chain);
    assert.ok(Date.parse(new X509Certificate(leaf.certificate).validFrom) >= Date.parse(int.validFrom));

    await issuer.revoke(alice, leaf.serial, "keyCompromise");
    const crl = opensslOk(
      "crl",
      "-inform",
      "DER",
      "-in",
      file("int2.crl", authority.crl(created.id)),
      "-CAfile",
      intermediate,
      "-verify",
      "-text",
      "-noout",
    );
    assert.match(crl, /verify OK/);
    assert.match(crl, /Signature Algorithm: sha256WithRSAEncryption/);
    assert.match(
      crl,
      new RegExp(
        `${leaf.serial.toUpperCase()}\\s*\\n\\s*Revocation Date: .+\\n\\s*CRL entry extensions:\\s*\\n\\s*X509v3 CRL Reason Code:\\s*\\n\\s*Key Compromise`,
      ),
    );

    for (const nonce of [[], ["-no_nonce"]]) {
      const request = file("leaf-ocsp.req");
      opensslOk("ocsp", "-issuer", intermediate, "-cert", leafFile, ...nonce, "-reqout", request);
      const response = file("leaf-ocsp.resp", await authority.ocsp(readFileSync(request), lookup));
      const answer = opensslOk(
        "ocsp",
        "-reqin",
        request,
        "-respin",
        response,
        "-issuer",
        intermediate,
        "-VAfile",
        intermediate,
        "-resp_text",
      );
      assert.match(answer, /Response verify OK/);
      assert.match(answer, /Cert Status: revoked\n/);
      assert.match(answer, /Signature Algorithm: sha256WithRSAEncryption/);
      assert.equal(/Response Extensions:\s*\n\s*OCSP Nonce/.test(answer), nonce.length === 0);
    }
    // The retiring EC intermediate still answers for what it issued.
    const oldRequest = file("old-ocsp.req");
    const oldInt = file("int1.pem", old.chain);
    opensslOk("ocsp", "-issuer", oldInt, "-cert", file("old.pem", old.certificate), "-reqout", oldRequest);
    const oldAnswer = opensslOk(
      "ocsp",
      "-reqin",
      oldRequest,
      "-respin",
      file("old-ocsp.resp", await authority.ocsp(readFileSync(oldRequest), lookup)),
      "-issuer",
      oldInt,
      "-CAfile",
      root,
      "-resp_text",
    );
    assert.match(oldAnswer, /Response verify OK/);
    assert.match(oldAnswer, /Cert Status: good\n/);
  });
});

// ==== a running Custos: the API and the CLI ==========================================

describe("revocation and refusals through the API and the CLI", () => {
  let custos: CustosInstance;

  before(async () => {
    custos = await startCustos();
    const role = await custos.call("PUT", "/v1/pki/roles/web", { dnsNames: ["*.svc.test"], maxTtlSeconds: 86_400 });
    assert.equal(role.status, 200, role.text);
  });
  after(async () => {
    await custos?.dispose();
  });

  const issue = async (body: Json): Promise<Json> => {
    const r = await custos.call("POST", "/v1/pki/roles/web/issue", body);
    assert.equal(r.status, 200, r.text);
    return r.body as Json;
  };
  const errorCode = (r: { body: unknown }) => ((r.body as Json).error as Json | undefined)?.code;
  const crlText = async () => {
    const pem = (await custos.cli(["pki", "crl", "--pem"])).stdout;
    return opensslOk("crl", "-noout", "-text", "-in", file("crl.pem", pem));
  };

  test("revoke twice: 409 conflict, audited; the CRL lists the serial once, with the first reason, its number up by one", async () => {
    const leaf = await issue({ dnsNames: ["twice.svc.test"] });
    const serial = String(leaf.serial);
    const number = (text: string) => Number(/X509v3 CRL Number:\s*\n\s*(\d+)/.exec(text)?.[1]);
    const before = number(await crlText());
    const first = await custos.call("POST", `/v1/pki/certs/${serial}/revoke`, { reason: "superseded" });
    assert.equal(first.status, 200, first.text);
    const second = await custos.call("POST", `/v1/pki/certs/${serial}/revoke`, { reason: "keyCompromise" });
    assert.equal(second.status, 409, second.text);
    assert.equal(errorCode(second), "conflict");
    const text = await crlText();
    assert.equal(number(text), before + 1);
    const entries = text.split(/Serial Number: /).filter((s) => s.toLowerCase().startsWith(serial));
    assert.equal(entries.length, 1);
    assert.match(entries[0] ?? "", /Superseded/);
    const audit = await custos.call(
      "GET",
      `/v1/audit?action=pki.revoke&resource=pki/cert/${serial}&order=asc&limit=10`,
    );
    const records = ((audit.body as Json).records as Json[]).map((r) => [r.outcome, r.errorCode ?? null]);
    assert.deepEqual(records, [
      ["success", null],
      ["failure", "conflict"],
    ]);
  });

  test("custos pki cert revoke takes the serial as openssl x509 -serial prints it (uppercase hex), as show does", async () => {
    const leaf = await issue({ dnsNames: ["upper.svc.test"] });
    const printed = opensslOk("x509", "-noout", "-serial", "-in", file("u.pem", String(leaf.certificate)));
    const serial = /^serial=([0-9A-F]+)$/m.exec(printed)?.[1];
    assert.ok(serial && serial !== leaf.serial && serial.toLowerCase() === leaf.serial, printed);
    assert.equal(custos.cli(["pki", "cert", "show", serial]).status, 0, "show finds it");
    const revoked = custos.cli(["pki", "cert", "revoke", serial, "--reason", "keyCompromise"]);
    assert.equal(revoked.status, 0, revoked.stderr);
    const view = await custos.call("GET", `/v1/pki/certs/${String(leaf.serial)}`);
    assert.equal(((view.body as Json).certificate as Json).status, "revoked");
    assert.match(await crlText(), new RegExp(serial));
  });

  test("a common name over 64 characters is refused (invalid_request naming the limit), and the refusal is audited", async () => {
    const commonName = `${"c".repeat(63)}.svc.test`;
    const r = await custos.call("POST", "/v1/pki/roles/web/issue", { commonName });
    assert.equal(r.status, 400, r.text);
    assert.equal(errorCode(r), "invalid_request");
    assert.match(String(((r.body as Json).error as Json).message), /longer than 64 characters/);
    const audit = await custos.call("GET", "/v1/audit?action=pki.issue&resource=pki/role/web&order=desc&limit=1");
    const [record] = (audit.body as Json).records as Json[];
    assert.deepEqual([record?.outcome, record?.errorCode], ["failure", "invalid_request"]);
    const listed = await custos.call("GET", "/v1/pki/certs?role=web&limit=1000");
    const certificates = (listed.body as Json).certificates as Json[];
    assert.ok(!certificates.some((c) => (c.dnsNames as string[]).includes(commonName)));
  });

  test("a TTL above the role's maximum is ttl_too_long however large, and the refusal is audited", async () => {
    for (const ttlSeconds of [86_401, 11 * 365 * 86_400]) {
      const r = await custos.call("POST", "/v1/pki/roles/web/issue", { dnsNames: ["ttl.svc.test"], ttlSeconds });
      assert.equal(r.status, 400, r.text);
      assert.equal(errorCode(r), "ttl_too_long", `${ttlSeconds}: ${r.text}`);
    }
    const audit = await custos.call("GET", "/v1/audit?action=pki.issue&resource=pki/role/web&order=desc&limit=10");
    const codes = ((audit.body as Json).records as Json[]).map((r) => r.errorCode);
    assert.equal(codes.filter((c) => c === "ttl_too_long").length, 2, JSON.stringify(codes));
  });
});
