import "reflect-metadata";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { webcrypto } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { OCSPRequest, OCSPResponse, OCSPResponseStatus } from "@peculiar/asn1-ocsp";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import { SubjectPublicKeyInfo } from "@peculiar/asn1-x509";
import * as x509 from "@peculiar/x509";
import { buildCrl, crlToPem, REVOCATION_REASONS, type RevocationReason } from "../../src/pki/crl.js";
import { answerOcsp, MAX_OCSP_CERT_IDS, type OcspStatus } from "../../src/pki/ocsp.js";
import { type CaSigner, hsmCaSigner, softwareCaSigner } from "../../src/pki/signer.js";
import { type KmsFixture, openFixture, rejectsWith } from "../kms/setup.js";

// Oracles: the openssl binary (CRL and OCSP verification, parsing, printing) and
// node:crypto (key generation). Our code builds; openssl judges.

const subtle = webcrypto.subtle;
const HOUR_MS = 3_600_000;

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "custos-crl-ocsp-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function write(name: string, data: string | Uint8Array): string {
  const path = join(dir, name);
  writeFileSync(path, data);
  return path;
}

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Asynchronous on purpose: the OCSP responder lives in this process and must keep serving. */
function openssl(...args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn("openssl", args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

// --- a software PKI ------------------------------------------------------------

type KeyKind = "ec" | "rsa";

async function generateKeys(kind: KeyKind): Promise<webcrypto.CryptoKeyPair> {
  const algorithm =
    kind === "ec"
      ? { name: "ECDSA", namedCurve: "P-256" }
      : { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" };
  return (await subtle.generateKey(algorithm, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
}

interface Issued {
  readonly cert: x509.X509Certificate;
  readonly path: string;
}

let fileCounter = 0;

/** What signs a certificate: a CA signer, or the same fields over a key whose certificate is being made. */
type Signing = Pick<CaSigner, "crypto" | "signingKey" | "signingAlgorithm">;

/** A certificate for `publicKey`, signed by `signing` as `issuer` (or self-signed). */
async function issue(
  signing: Signing,
  issuer: x509.X509Certificate | "self",
  params: { subject: string; publicKey: webcrypto.CryptoKey | Uint8Array; serial: string; ca: boolean },
): Promise<Issued> {
  const now = Date.now();
  const publicKey = await x509.PublicKey.create(params.publicKey, webcrypto as webcrypto.Crypto);
  // RFC 7093's SHA-256-based key identifier, not @peculiar/x509's default SHA-1 one, so
  // that a CRL's AKI is seen to come from the CA's SKI rather than from its key.
  const keyId = Buffer.from(
    await subtle.digest("SHA-256", AsnConvert.parse(publicKey.rawData, SubjectPublicKeyInfo).subjectPublicKey),
  ).subarray(0, 20);
  const ski = new x509.SubjectKeyIdentifierExtension(keyId.toString("hex"));
  const extensions: x509.Extension[] = params.ca
    ? [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        ski,
      ]
    : [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        ski,
      ];
  if (issuer !== "self") {
    const issuerSki = issuer.getExtension(x509.SubjectKeyIdentifierExtension);
    assert.ok(issuerSki);
    extensions.push(new x509.AuthorityKeyIdentifierExtension(issuerSki.keyId));
  }
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: params.serial,
      subject: params.subject,
      issuer: issuer === "self" ? params.subject : issuer.subjectName,
      notBefore: new Date(now - HOUR_MS),
      notAfter: new Date(now + 24 * HOUR_MS),
      publicKey,
      signingKey: signing.signingKey,
      signingAlgorithm: signing.signingAlgorithm,
      extensions,
    },
    signing.crypto,
  );
  fileCounter += 1;
  return { cert, path: write(`cert-${fileCounter}.pem`, cert.toString("pem")) };
}

interface TestCa extends Issued {
  readonly signer: CaSigner;
}

const SOFTWARE_SIGNING: Readonly<Record<KeyKind, webcrypto.Algorithm | webcrypto.EcdsaParams>> = {
  ec: { name: "ECDSA", hash: "SHA-256" },
  rsa: { name: "RSASSA-PKCS1-v1_5" },
};

async function rootCa(kind: KeyKind, name: string): Promise<TestCa> {
  const keys = await generateKeys(kind);
  const signing = {
    crypto: webcrypto as webcrypto.Crypto,
    signingKey: keys.privateKey,
    signingAlgorithm: SOFTWARE_SIGNING[kind],
  };
  const issued = await issue(signing, "self", {
    subject: `CN=${name}`,
    publicKey: keys.publicKey,
    serial: randomSerial(),
    ca: true,
  });
  return { ...issued, signer: softwareCaSigner(issued.cert, keys.privateKey) };
}

async function subCa(parent: TestCa, kind: KeyKind, name: string): Promise<TestCa> {
  const keys = await generateKeys(kind);
  const issued = await issue(parent.signer, parent.cert, {
    subject: `CN=${name}`,
    publicKey: keys.publicKey,
    serial: randomSerial(),
    ca: true,
  });
  return { ...issued, signer: softwareCaSigner(issued.cert, keys.privateKey) };
}

async function leaf(ca: TestCa, serial: string): Promise<Issued> {
  const keys = await generateKeys("ec");
  return issue(ca.signer, ca.cert, {
    subject: `CN=leaf-${serial}.example`,
    publicKey: keys.publicKey,
    serial,
    ca: false,
  });
}

function randomSerial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  // Positive and a full 16 octets, so no serial here needs DER's sign octet or loses a leading zero.
  bytes[0] = (bytes[0]! & 0x7f) | 0x10;
  return Buffer.from(bytes).toString("hex");
}

// --- openssl's view of a CRL -----------------------------------------------------

/** openssl's names for the CRL reason codes (`openssl crl -text`). */
const OPENSSL_CRL_REASON: Readonly<Record<Exclude<RevocationReason, "unspecified">, string>> = {
  keyCompromise: "Key Compromise",
  caCompromise: "CA Compromise",
  affiliationChanged: "Affiliation Changed",
  superseded: "Superseded",
  cessationOfOperation: "Cessation Of Operation",
  certificateHold: "Certificate Hold",
  privilegeWithdrawn: "Privilege Withdrawn",
};

/** serial (lowercase hex) → reason text (or null when the entry has none), from `openssl crl -text`. */
function revokedFromText(text: string): Map<string, string | null> {
  const out = new Map<string, string | null>();
  const section = text.split("Revoked Certificates:")[1] ?? "";
  const blocks = section.split(/\n\s*Serial Number: /).slice(1);
  for (const block of blocks) {
    const serial = block.split("\n")[0]!.trim().toLowerCase();
    const reason = /X509v3 CRL Reason Code:\s*\n\s*(.+)/.exec(block)?.[1]?.trim() ?? null;
    out.set(serial, reason);
  }
  return out;
}

function keyIdFromText(text: string, label: string): string {
  const m = new RegExp(`${label}:\\s*\\n\\s*(?:keyid:)?([0-9A-F:]+)`).exec(text);
  assert.ok(m?.[1], `no ${label} in openssl output`);
  return m[1];
}

async function crlVerifies(crlPem: string, caPath: string): Promise<Run> {
  return openssl("crl", "-in", crlPem, "-CAfile", caPath, "-verify", "-noout");
}

// --- an OCSP responder over HTTP -----------------------------------------------------

interface Responder {
  readonly url: string;
  readonly asked: { issuer: string; serial: string }[];
  close(): Promise<void>;
}

async function startResponder(
  issuers: readonly CaSigner[],
  statuses: ReadonlyMap<string, OcspStatus>,
): Promise<Responder> {
  const asked: { issuer: string; serial: string }[] = [];
  const lookup = async (issuer: CaSigner, serial: string): Promise<OcspStatus> => {
    asked.push({ issuer: issuer.certificate.subject, serial });
    return statuses.get(serial) ?? { status: "unknown" };
  };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      answerOcsp(Buffer.concat(chunks), issuers, lookup).then(
        (body) => {
          res.writeHead(200, { "content-type": "application/ocsp-response", "content-length": body.length });
          res.end(body);
        },
        (e: unknown) => {
          res.writeHead(500);
          res.end(String(e));
        },
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    asked,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

async function withResponder<T>(
  issuers: readonly CaSigner[],
  statuses: ReadonlyMap<string, OcspStatus>,
  fn: (r: Responder) => Promise<T>,
): Promise<T> {
  const responder = await startResponder(issuers, statuses);
  try {
    return await fn(responder);
  } finally {
    await responder.close();
  }
}

/** The per-certificate block openssl prints after `<path>: <status>`. */
function statusOf(run: Run, path: string): string {
  const lines = run.stdout.split("\n");
  const at = lines.findIndex((l) => l.startsWith(`${path}: `));
  assert.ok(at >= 0, `openssl printed no status for ${path}:\n${run.stdout}\n${run.stderr}`);
  const block = [lines[at]!.slice(path.length + 2)];
  for (const l of lines.slice(at + 1)) {
    if (!l.startsWith("\t")) break;
    block.push(l.trim());
  }
  return block.join("\n");
}

function responseStatusOf(der: Uint8Array): OCSPResponseStatus {
  return AsnConvert.parse(der, OCSPResponse).responseStatus;
}

/** openssl's own encoding of a request (one CertID per `-cert`), for tests that call answerOcsp directly. */
async function opensslRequest(args: string[]): Promise<Buffer> {
  fileCounter += 1;
  const out = join(dir, `req-${fileCounter}.der`);
  const run = await openssl("ocsp", ...args, "-reqout", out);
  assert.equal(run.code, 0, run.stderr);
  return readFileSync(out);
}

async function respText(der: Uint8Array): Promise<Run> {
  fileCounter += 1;
  return openssl("ocsp", "-respin", write(`resp-${fileCounter}.der`, der), "-resp_text", "-noverify");
}

// --- the tests -----------------------------------------------------------------------

for (const kind of ["ec", "rsa"] as const) {
  const sigAlg = kind === "ec" ? "ecdsa-with-SHA256" : "sha256WithRSAEncryption";

  describe(`CRL (${kind})`, () => {
    let ca: TestCa;
    before(async () => {
      ca = await rootCa(kind, `CRL Test CA ${kind}`);
    });

    test("lists every revoked serial with its reason and the CRL number; openssl verifies it", async () => {
      const serials = REVOCATION_REASONS.map((_, i) => `5eed${i}0${kind === "ec" ? "ec" : "a5"}`);
      // Top bit set: DER needs a 00 in front, which callers may give or not.
      const highBit = "80aabbccdd";
      const entries = [
        ...REVOCATION_REASONS.map((reason, i) => ({
          serial: serials[i]!,
          revokedAt: new Date(Date.UTC(2030, 0, 1 + i, 12, 0, 0, 500)),
          reason,
        })),
        { serial: `00${highBit}`, revokedAt: new Date(Date.UTC(2030, 1, 1)), reason: "superseded" as const },
      ];
      const number = 2 ** 32 + 5;
      const der = await buildCrl(ca.signer, {
        number,
        thisUpdate: new Date(Date.UTC(2030, 0, 10)),
        nextUpdate: new Date(Date.UTC(2030, 0, 17)),
        entries,
      });
      const pem = crlToPem(der);
      assert.match(pem, /^-----BEGIN X509 CRL-----\n[A-Za-z0-9+/=\n]+-----END X509 CRL-----\n$/);
      const path = write(`crl-${kind}.pem`, pem);

      const verified = await crlVerifies(path, ca.path);
      assert.equal(verified.code, 0, verified.stderr);
      assert.match(verified.stderr, /verify OK/);

      const text = await openssl("crl", "-in", path, "-text", "-noout");
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, /Version 2 \(0x1\)/);
      assert.match(text.stdout, new RegExp(`Signature Algorithm: ${sigAlg}`));
      assert.match(text.stdout, /X509v3 CRL Number:\s*\n\s*4294967301\n/);
      assert.match(text.stdout, /Last Update: Jan 10 00:00:00 2030 GMT/);
      assert.match(text.stdout, /Next Update: Jan 17 00:00:00 2030 GMT/);
      assert.match(text.stdout, new RegExp(`Issuer: CN = CRL Test CA ${kind}`));

      const expected = new Map<string, string | null>();
      REVOCATION_REASONS.forEach((reason, i) => {
        expected.set(serials[i]!, reason === "unspecified" ? null : OPENSSL_CRL_REASON[reason]);
      });
      expected.set(highBit, OPENSSL_CRL_REASON.superseded);
      assert.deepEqual(revokedFromText(text.stdout), expected);
      assert.match(text.stdout, /Revocation Date: Jan {2}1 12:00:00 2030 GMT/);

      const caText = await openssl("x509", "-in", ca.path, "-text", "-noout");
      assert.equal(
        keyIdFromText(text.stdout, "X509v3 Authority Key Identifier"),
        keyIdFromText(caText.stdout, "X509v3 Subject Key Identifier"),
      );
    });

    test("a CRL with no entries verifies", async () => {
      const der = await buildCrl(ca.signer, {
        number: 0,
        thisUpdate: new Date(),
        nextUpdate: new Date(Date.now() + 7 * 24 * HOUR_MS),
        entries: [],
      });
      const path = write(`crl-empty-${kind}.pem`, crlToPem(der));
      const verified = await crlVerifies(path, ca.path);
      assert.equal(verified.code, 0, verified.stderr);
      assert.match(verified.stderr, /verify OK/);
      const text = await openssl("crl", "-in", path, "-text", "-noout");
      assert.match(text.stdout, /No Revoked Certificates\./);
      assert.match(text.stdout, /X509v3 CRL Number:\s*\n\s*0\n/);
    });

    test("a flipped bit in the signed part fails verification", async () => {
      const serial = "0badc0ffee15bad5";
      const der = await buildCrl(ca.signer, {
        number: 7,
        thisUpdate: new Date(Date.UTC(2030, 0, 1)),
        nextUpdate: new Date(Date.UTC(2030, 0, 8)),
        entries: [{ serial, revokedAt: new Date(Date.UTC(2029, 11, 31)), reason: "keyCompromise" }],
      });
      const good = await crlVerifies(write(`crl-good-${kind}.pem`, crlToPem(der)), ca.path);
      assert.equal(good.code, 0, good.stderr);

      const at = der.indexOf(Buffer.from(serial, "hex"));
      assert.ok(at > 0);
      const tampered = Buffer.from(der);
      tampered[at + 3]! ^= 0x01;
      const path = write(`crl-bad-${kind}.pem`, crlToPem(tampered));
      // It still parses (the serial just changed), so the failure is the signature's.
      const text = await openssl("crl", "-in", path, "-text", "-noout");
      assert.equal(text.code, 0, text.stderr);
      const bad = await crlVerifies(path, ca.path);
      // openssl 3.0's `crl -verify` exits 0 on a bad signature; only the message tells.
      assert.match(bad.stderr, /verify failure/);
      assert.doesNotMatch(bad.stderr, /verify OK/);
    });
  });
}

describe("CRL encoding and preconditions", () => {
  let ca: TestCa;
  before(async () => {
    ca = await rootCa("ec", "CRL Precondition CA");
  });

  test("times after 2049 are GeneralizedTime without fractional seconds", async () => {
    const der = await buildCrl(ca.signer, {
      number: 1,
      thisUpdate: new Date(Date.UTC(2050, 5, 1, 0, 0, 0, 250)),
      nextUpdate: new Date(Date.UTC(2050, 5, 8, 0, 0, 0, 999)),
      entries: [{ serial: "01", revokedAt: new Date(Date.UTC(2050, 4, 1, 0, 0, 0, 100)), reason: "superseded" }],
    });
    const parsed = await openssl("asn1parse", "-inform", "DER", "-in", write("crl-2050.der", der));
    assert.equal(parsed.code, 0, parsed.stderr);
    const times = [...parsed.stdout.matchAll(/GENERALIZEDTIME\s*:(\S+)/g)].map((m) => m[1]);
    assert.deepEqual(times, ["20500601000000Z", "20500608000000Z", "20500501000000Z"]);
  });

  test("refuses what would make a wrong CRL", async () => {
    const base = {
      number: 1,
      thisUpdate: new Date(Date.UTC(2030, 0, 1)),
      nextUpdate: new Date(Date.UTC(2030, 0, 8)),
      entries: [] as { serial: string; revokedAt: Date; reason: RevocationReason }[],
    };
    const at = new Date(Date.UTC(2029, 0, 1));
    await rejectsWith(buildCrl(ca.signer, { ...base, number: -1 }), "invalid_request");
    await rejectsWith(buildCrl(ca.signer, { ...base, number: 1.5 }), "invalid_request");
    await rejectsWith(buildCrl(ca.signer, { ...base, nextUpdate: base.thisUpdate }), "invalid_request");
    await rejectsWith(buildCrl(ca.signer, { ...base, thisUpdate: new Date(Number.NaN) }), "invalid_request");
    await rejectsWith(
      buildCrl(ca.signer, { ...base, entries: [{ serial: "ABCD", revokedAt: at, reason: "superseded" }] }),
      "invalid_request",
    );
    await rejectsWith(
      buildCrl(ca.signer, { ...base, entries: [{ serial: "ab".repeat(21), revokedAt: at, reason: "superseded" }] }),
      "invalid_request",
    );
    await rejectsWith(
      buildCrl(ca.signer, {
        ...base,
        entries: [
          { serial: "ff01", revokedAt: at, reason: "superseded" },
          { serial: "00ff01", revokedAt: at, reason: "keyCompromise" },
        ],
      }),
      "invalid_request",
      /twice/,
    );
    await rejectsWith(
      buildCrl(ca.signer, {
        ...base,
        entries: [{ serial: "01", revokedAt: at, reason: "removeFromCRL" as RevocationReason }],
      }),
      "invalid_request",
    );
  });
});

for (const kind of ["ec", "rsa"] as const) {
  describe(`OCSP (${kind}): root → intermediate → leaves`, () => {
    let root: TestCa;
    let int: TestCa;
    let other: TestCa;
    let good: Issued;
    let revoked: Issued;
    let unknown: Issued;
    let highBit: Issued;
    let stranger: Issued;
    let statuses: Map<string, OcspStatus>;
    const revokedAt = new Date(Date.UTC(2025, 2, 4, 5, 6, 7, 890));

    before(async () => {
      root = await rootCa(kind, `OCSP Root ${kind}`);
      int = await subCa(root, kind, `OCSP Intermediate ${kind}`);
      other = await rootCa(kind, `Not Served ${kind}`);
      good = await leaf(int, "1a2b3c4d5e6f");
      revoked = await leaf(int, "2b3c4d5e6f70");
      unknown = await leaf(int, "3c4d5e6f7081");
      highBit = await leaf(int, "f1e2d3c4b5a6");
      stranger = await leaf(other, "4d5e6f708192");
      statuses = new Map<string, OcspStatus>([
        [good.cert.serialNumber, { status: "good" }],
        [highBit.cert.serialNumber, { status: "good" }],
        [revoked.cert.serialNumber, { status: "revoked", revokedAt, reason: "keyCompromise" }],
        [int.cert.serialNumber, { status: "good" }],
      ]);
    });

    /** The client as an operator would run it: nonce on (openssl's default), response verified against the root. */
    function ask(url: string, ...certArgs: string[]): Promise<Run> {
      return openssl("ocsp", ...certArgs, "-url", url, "-CAfile", root.path, "-verify_other", int.path, "-resp_text");
    }

    test("a good certificate answers good, signed by the intermediate, nonce echoed", async () => {
      await withResponder([int.signer, root.signer], statuses, async (r) => {
        const run = await ask(r.url, "-issuer", int.path, "-cert", good.path);
        assert.equal(run.code, 0, run.stderr);
        assert.match(run.stderr, /Response verify OK/);
        assert.doesNotMatch(run.stderr + run.stdout, /WARNING: no nonce/);
        assert.match(run.stdout, /Response Extensions:\s*\n\s*OCSP Nonce:/);
        assert.match(statusOf(run, good.path), /^good\n/);
        // byKey is the SHA-1 of the issuer's key, which openssl computed itself for the SHA-1 CertID.
        const responderId = /Responder Id: ([0-9A-F]{40})\n/.exec(run.stdout)?.[1];
        assert.ok(responderId, run.stdout);
        assert.match(run.stdout, new RegExp(`Issuer Key Hash: ${responderId}\\n`));
        assert.doesNotMatch(run.stdout, /Certificate:\n/);
        assert.deepEqual(r.asked, [{ issuer: int.cert.subject, serial: good.cert.serialNumber }]);
      });
    });

    test("a revoked certificate answers revoked, with its time and reason", async () => {
      await withResponder([int.signer, root.signer], statuses, async (r) => {
        const run = await ask(r.url, "-issuer", int.path, "-cert", revoked.path);
        assert.equal(run.code, 0, run.stderr);
        assert.match(run.stderr, /Response verify OK/);
        assert.doesNotMatch(run.stderr + run.stdout, /WARNING: no nonce/);
        const status = statusOf(run, revoked.path);
        assert.match(status, /^revoked\n/);
        assert.match(status, /Reason: keyCompromise/);
        assert.match(status, /Revocation Time: Mar {2}4 05:06:07 2025 GMT/);
      });
    });

    test("a serial the store does not know answers unknown; a serial with its top bit set is found", async () => {
      await withResponder([int.signer], statuses, async (r) => {
        const run = await ask(r.url, "-issuer", int.path, "-cert", unknown.path, "-cert", highBit.path);
        assert.equal(run.code, 0, run.stderr);
        assert.match(run.stderr, /Response verify OK/);
        assert.match(statusOf(run, unknown.path), /^unknown\n/);
        assert.match(statusOf(run, highBit.path), /^good\n/);
        assert.deepEqual(
          r.asked.map((a) => a.serial),
          [unknown.cert.serialNumber, "f1e2d3c4b5a6"],
        );
      });
    });

    test("SHA-256 CertIDs are matched too", async () => {
      await withResponder([int.signer], statuses, async (r) => {
        const run = await ask(r.url, "-sha256", "-issuer", int.path, "-cert", revoked.path);
        assert.equal(run.code, 0, run.stderr);
        assert.match(run.stderr, /Response verify OK/);
        assert.match(run.stdout, /Hash Algorithm: sha256/);
        assert.match(statusOf(run, revoked.path), /^revoked\n/);
      });
    });

    test("the root answers for the intermediate it issued, and the root alone verifies it", async () => {
      await withResponder([int.signer, root.signer], statuses, async (r) => {
        const run = await openssl(
          "ocsp",
          "-issuer",
          root.path,
          "-cert",
          int.path,
          "-url",
          r.url,
          "-CAfile",
          root.path,
          "-resp_text",
        );
        assert.equal(run.code, 0, run.stderr);
        assert.match(run.stderr, /Response verify OK/);
        assert.match(statusOf(run, int.path), /^good\n/);
        assert.deepEqual(r.asked, [{ issuer: root.cert.subject, serial: int.cert.serialNumber }]);
      });
    });

    test("a CertID of an issuer not served answers unauthorized, and the store is not asked", async () => {
      await withResponder([int.signer, root.signer], statuses, async (r) => {
        const run = await openssl(
          "ocsp",
          "-issuer",
          other.path,
          "-cert",
          stranger.path,
          "-url",
          r.url,
          "-CAfile",
          other.path,
        );
        assert.match(run.stderr + run.stdout, /Responder Error: unauthorized \(6\)/);
        assert.deepEqual(r.asked, []);
      });
    });

    test("CertIDs of several issuers: the first served one answers, the others are unknown", async () => {
      await withResponder([int.signer, root.signer], statuses, async (r) => {
        const run = await openssl(
          "ocsp",
          "-issuer",
          other.path,
          "-cert",
          stranger.path,
          "-issuer",
          int.path,
          "-cert",
          revoked.path,
          "-issuer",
          root.path,
          "-cert",
          int.path,
          "-url",
          r.url,
          "-CAfile",
          root.path,
          "-verify_other",
          int.path,
        );
        assert.equal(run.code, 0, run.stderr);
        assert.match(run.stderr, /Response verify OK/);
        assert.match(statusOf(run, stranger.path), /^unknown\n/);
        assert.match(statusOf(run, revoked.path), /^revoked\n/);
        assert.match(statusOf(run, int.path), /^unknown\n/);
        assert.deepEqual(r.asked, [{ issuer: int.cert.subject, serial: revoked.cert.serialNumber }]);
      });
    });

    test("thisUpdate is now, nextUpdate now + validity; without a nonce in the request there is none in the answer", async () => {
      const request = await opensslRequest(["-issuer", int.path, "-cert", good.path, "-no_nonce"]);
      const now = new Date(Date.UTC(2031, 6, 14, 10, 20, 30, 456));
      const der = await answerOcsp(request, [int.signer], async () => ({ status: "good" }), {
        now,
        validitySeconds: 600,
      });
      const run = await respText(der);
      assert.equal(run.code, 0, run.stderr);
      assert.match(run.stdout, /OCSP Response Status: successful \(0x0\)/);
      assert.match(run.stdout, /Produced At: Jul 14 10:20:30 2031 GMT/);
      assert.match(run.stdout, /This Update: Jul 14 10:20:30 2031 GMT/);
      assert.match(run.stdout, /Next Update: Jul 14 10:30:30 2031 GMT/);
      assert.doesNotMatch(run.stdout, /OCSP Nonce/);
    });

    test("up to the CertID bound is answered, one more is malformedRequest", async () => {
      const certs = (n: number) => Array.from({ length: n }, () => ["-cert", good.path]).flat();
      const lookup = async (): Promise<OcspStatus> => ({ status: "good" });
      const atBound = await opensslRequest(["-issuer", int.path, ...certs(MAX_OCSP_CERT_IDS)]);
      assert.equal(responseStatusOf(await answerOcsp(atBound, [int.signer], lookup)), OCSPResponseStatus.successful);
      const over = await opensslRequest(["-issuer", int.path, ...certs(MAX_OCSP_CERT_IDS + 1)]);
      const der = await answerOcsp(over, [int.signer], lookup);
      assert.equal(responseStatusOf(der), OCSPResponseStatus.malformedRequest);
    });

    test("a nonce longer than RFC 8954 allows is malformedRequest", async () => {
      const request = AsnConvert.parse(await opensslRequest(["-issuer", int.path, "-cert", good.path]), OCSPRequest);
      const nonce = request.tbsRequest.requestExtensions?.[0];
      assert.ok(nonce);
      const lookup = async (): Promise<OcspStatus> => ({ status: "good" });
      nonce.extnValue = new OctetString(AsnConvert.serialize(new OctetString(new Uint8Array(32))));
      const ok = await answerOcsp(Buffer.from(AsnConvert.serialize(request)), [int.signer], lookup);
      assert.equal(responseStatusOf(ok), OCSPResponseStatus.successful);
      nonce.extnValue = new OctetString(AsnConvert.serialize(new OctetString(new Uint8Array(33))));
      const tooLong = await answerOcsp(Buffer.from(AsnConvert.serialize(request)), [int.signer], lookup);
      assert.equal(responseStatusOf(tooLong), OCSPResponseStatus.malformedRequest);
    });

    test("a nonce of one octet is answered; an empty one, or one that is not a lone OCTET STRING, is malformedRequest", async () => {
      const request = AsnConvert.parse(await opensslRequest(["-issuer", int.path, "-cert", good.path]), OCSPRequest);
      const nonce = request.tbsRequest.requestExtensions?.[0];
      assert.ok(nonce);
      const lookup = async (): Promise<OcspStatus> => ({ status: "good" });
      const answer = async (extnValue: Uint8Array) => {
        nonce.extnValue = new OctetString(extnValue);
        return responseStatusOf(await answerOcsp(Buffer.from(AsnConvert.serialize(request)), [int.signer], lookup));
      };
      assert.equal(await answer(Buffer.from([0x04, 0x01, 0x2a])), OCSPResponseStatus.successful);
      assert.equal(await answer(Buffer.from([0x04, 0x00])), OCSPResponseStatus.malformedRequest);
      // The nonce's octets without their OCTET STRING header, and a nonce followed by more bytes.
      assert.equal(await answer(Buffer.alloc(16, 0x2a)), OCSPResponseStatus.malformedRequest);
      assert.equal(await answer(Buffer.from([0x04, 0x01, 0x2a, 0x00])), OCSPResponseStatus.malformedRequest);
    });
  });
}

describe("OCSP: requests that are not requests", () => {
  let ca: TestCa;
  before(async () => {
    ca = await rootCa("ec", "OCSP Garbage CA");
  });

  test("garbage, empty and truncated bodies answer malformedRequest and never reach the store", async () => {
    const cert = await leaf(ca, "0102030405");
    const valid = await opensslRequest(["-issuer", ca.path, "-cert", cert.path]);
    let asked = 0;
    const lookup = async (): Promise<OcspStatus> => {
      asked += 1;
      return { status: "good" };
    };
    const bodies = [
      Buffer.from("this is not an OCSP request"),
      Buffer.alloc(0),
      valid.subarray(0, valid.length - 5),
      Buffer.from([0x30, 0x03, 0x30, 0x01, 0x30]),
      new Uint8Array(webcrypto.getRandomValues(new Uint8Array(64))),
    ];
    for (const body of bodies) {
      const der = await answerOcsp(body, [ca.signer], lookup);
      assert.equal(responseStatusOf(der), OCSPResponseStatus.malformedRequest);
      const run = await respText(der);
      // openssl prints only the status of an unsuccessful response, in lower case.
      assert.match(run.stdout, /Responder Error: malformedrequest \(1\)/);
    }
    assert.equal(asked, 0);
    // The same request intact is answered: the refusals above are about the bytes.
    assert.equal(responseStatusOf(await answerOcsp(valid, [ca.signer], lookup)), OCSPResponseStatus.successful);
    assert.equal(asked, 1);
  });

  test("with no issuers served, everything is unauthorized", async () => {
    const cert = await leaf(ca, "0a0b0c");
    const request = await opensslRequest(["-issuer", ca.path, "-cert", cert.path]);
    const der = await answerOcsp(request, [], async () => ({ status: "good" }));
    assert.equal(responseStatusOf(der), OCSPResponseStatus.unauthorized);
  });
});

describe("CRL and OCSP signed by an HSM key", () => {
  let f: KmsFixture;
  before(async () => {
    f = await openFixture("custos-pki-crl-ocsp");
  });
  after(async () => {
    await f?.close();
  });

  test("openssl verifies a CRL and an OCSP answer signed by a SoftHSM P-256 key", async () => {
    const pair = await f.keystore.generateKeyPair("ecdsa-p256", "pki-test-ca");
    // Signing the CA's own certificate reads only the key; any certificate stands in until it exists.
    const placeholder = await rootCa("ec", "placeholder");
    const making = hsmCaSigner(f.keystore, pair.ref, "ecdsa-p256", placeholder.cert);
    const caCert = await issue(making, "self", {
      subject: "CN=Custos HSM Test CA",
      publicKey: pair.publicKey,
      serial: randomSerial(),
      ca: true,
    });
    const ca: TestCa = { ...caCert, signer: hsmCaSigner(f.keystore, pair.ref, "ecdsa-p256", caCert.cert) };

    const goodLeaf = await leaf(ca, "6001");
    const revokedLeaf = await leaf(ca, "6002");
    const revokedAt = new Date(Date.UTC(2026, 0, 2, 3, 4, 5));

    const crlPath = write(
      "crl-hsm.pem",
      crlToPem(
        await buildCrl(ca.signer, {
          number: 3,
          thisUpdate: new Date(),
          nextUpdate: new Date(Date.now() + 7 * 24 * HOUR_MS),
          entries: [{ serial: "6002", revokedAt, reason: "cessationOfOperation" }],
        }),
      ),
    );
    const verified = await crlVerifies(crlPath, ca.path);
    assert.equal(verified.code, 0, verified.stderr);
    assert.match(verified.stderr, /verify OK/);
    const text = await openssl("crl", "-in", crlPath, "-text", "-noout");
    assert.deepEqual(revokedFromText(text.stdout), new Map([["6002", "Cessation Of Operation"]]));

    const statuses = new Map<string, OcspStatus>([
      ["6001", { status: "good" }],
      ["6002", { status: "revoked", revokedAt, reason: "cessationOfOperation" }],
    ]);
    await withResponder([ca.signer], statuses, async (r) => {
      const run = await openssl(
        "ocsp",
        "-issuer",
        ca.path,
        "-cert",
        goodLeaf.path,
        "-cert",
        revokedLeaf.path,
        "-url",
        r.url,
        "-CAfile",
        ca.path,
      );
      assert.equal(run.code, 0, run.stderr);
      assert.match(run.stderr, /Response verify OK/);
      assert.doesNotMatch(run.stderr + run.stdout, /WARNING: no nonce/);
      assert.match(statusOf(run, goodLeaf.path), /^good\n/);
      const status = statusOf(run, revokedLeaf.path);
      assert.match(status, /^revoked\n/);
      assert.match(status, /Reason: cessationOfOperation/);
    });
  });
});
