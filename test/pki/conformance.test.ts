import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Authority, Issuer } from "../../src/pki/index.js";
import { type CustosInstance, fetchRaw, startCustos } from "../helpers/custos.js";
import { alice, type KmsFixture, openFixture } from "../kms/setup.js";

// Conformance of Custos's PKI to RFC 5280 (certificates, CRLs) and RFC 6960 (OCSP).
// Oracles: the openssl binary (x509, verify, crl, ocsp, asn1parse), node:crypto's
// X509Certificate, and a DER walker written here (not the one Custos writes with).

type Json = Record<string, unknown>;

let dir: string;
let fileCounter = 0;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "custos-pki-conformance-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function write(name: string, data: string | Uint8Array): string {
  fileCounter += 1;
  const path = join(dir, `${fileCounter}-${name}`);
  writeFileSync(path, data);
  return path;
}

function openssl(...args: string[]): { status: number; out: string } {
  const r = spawnSync("openssl", args, { encoding: "buffer" });
  return { status: r.status ?? -1, out: `${r.stdout.toString()}${r.stderr.toString()}` };
}

function x509Text(pem: string): string {
  const r = openssl("x509", "-noout", "-text", "-certopt", "no_pubkey,no_sigdump", "-in", write("c.pem", pem));
  assert.equal(r.status, 0, r.out);
  return r.out;
}

function crlText(der: Uint8Array): string {
  const r = openssl("crl", "-inform", "DER", "-noout", "-text", "-in", write("crl.der", der));
  assert.equal(r.status, 0, r.out);
  return r.out;
}

/** The hex after `label:` on the next line of openssl's text (key identifiers). */
function valueAfter(text: string, label: string): string {
  const m = new RegExp(`${label}:\\s*\\n\\s*(?:keyid:)?([0-9A-F:]+)`).exec(text);
  assert.ok(m?.[1], `no ${label} in:\n${text}`);
  return m[1];
}

// --- a DER walker: the byte-exact fields of a certificate ------------------------

interface Tlv {
  readonly tag: number;
  /** The whole encoding, header included. */
  readonly bytes: Buffer;
  readonly content: Buffer;
}

function tlvs(der: Buffer): Tlv[] {
  const out: Tlv[] = [];
  let at = 0;
  while (at < der.length) {
    const tag = der[at]!;
    let length = der[at + 1]!;
    let header = 2;
    if (length & 0x80) {
      const n = length & 0x7f;
      length = 0;
      for (let i = 0; i < n; i++) length = length * 256 + der[at + 2 + i]!;
      header += n;
    }
    const end = at + header + length;
    assert.ok(end <= der.length, "a TLV runs past its parent");
    out.push({ tag, bytes: der.subarray(at, end), content: der.subarray(at + header, end) });
    at = end;
  }
  return out;
}

/** serial, issuer, validity and subject of a certificate, as encoded. */
function tbsFields(pem: string): { serial: Buffer; issuer: Buffer; notBefore: Tlv; notAfter: Tlv; subject: Buffer } {
  const [cert] = tlvs(new X509Certificate(pem).raw);
  const [tbs] = tlvs(cert!.content);
  const [version, serial, , issuer, validity, subject] = tlvs(tbs!.content);
  assert.equal(version?.tag, 0xa0, "v3 certificates carry an explicit version");
  const [notBefore, notAfter] = tlvs(validity!.content);
  return {
    serial: serial!.content,
    issuer: issuer!.bytes,
    notBefore: notBefore!,
    notAfter: notAfter!,
    subject: subject!.bytes,
  };
}

/** RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, both in whole seconds with Z. */
function assertTimeEncoding(t: Tlv, date: Date): void {
  const text = t.content.toString("latin1");
  const iso = date.toISOString().replace(/[-:T]/g, "").slice(0, 14);
  if (date.getUTCFullYear() < 2050) {
    assert.equal(t.tag, 0x17, `${text}: UTCTime expected`);
    assert.equal(text, `${iso.slice(2)}Z`);
  } else {
    assert.equal(t.tag, 0x18, `${text}: GeneralizedTime expected`);
    assert.equal(text, `${iso}Z`);
  }
}

const dateOf = (opensslDate: string): Date => new Date(Date.parse(opensslDate));

// ==== the CA in process, on a clock the tests move =================================

describe("PKI profile on a clock set near 2050", () => {
  let fx: KmsFixture;
  let authority: Authority;
  let issuer: Issuer;
  const CRL_VALIDITY_SECONDS = 7 * 86_400;
  const START = new Date("2049-12-31T20:00:00.000Z");
  const attime = () => String(Math.floor(fx.now.getTime() / 1000));
  const root = () => authority.root().certPem;
  const intermediate = () => authority.active().certPem;

  before(async () => {
    fx = await openFixture("pki-conformance");
    fx.now = START;
    authority = new Authority({
      keystore: fx.keystore,
      store: fx.store,
      caAlgorithm: "ecdsa-p256",
      baseUrl: "https://custos.test:8443",
      crlValiditySeconds: CRL_VALIDITY_SECONDS,
      ocspValiditySeconds: 3600,
      clock: () => fx.now,
    });
    issuer = new Issuer({ store: fx.store, authority, clock: () => fx.now });
    await authority.ensure(alice);
    await issuer.putRole(alice, "web", {
      dnsNames: ["*.svc.test", "api.test"],
      ipRanges: ["10.0.0.0/8"],
      keyTypes: ["ec-p256", "ec-p384", "ed25519", "rsa-2048"],
      extKeyUsages: ["serverAuth", "clientAuth"],
      maxTtlSeconds: 10 * 365 * 86_400,
    });
  });
  after(async () => {
    await fx?.close();
  });

  const issue = (body: Json, role = "web") => issuer.issue(alice, role, body);

  test("names chain byte for byte: leaf issuer = intermediate subject, intermediate issuer = root subject", async () => {
    const leaf = await issue({ dnsNames: ["a.svc.test"] });
    assert.ok(tbsFields(leaf.certificate).issuer.equals(tbsFields(intermediate()).subject));
    assert.ok(tbsFields(intermediate()).issuer.equals(tbsFields(root()).subject));
    assert.ok(tbsFields(root()).issuer.equals(tbsFields(root()).subject), "the root is self-issued");
    const v = openssl(
      "verify",
      "-attime",
      attime(),
      "-x509_strict",
      "-purpose",
      "sslserver",
      "-CAfile",
      write("root.pem", root()),
      "-untrusted",
      write("int.pem", intermediate()),
      write("leaf.pem", leaf.certificate),
    );
    assert.equal(v.status, 0, v.out);
  });

  test("key identifiers chain: each AKI is its issuer's SKI", async () => {
    const leafText = x509Text((await issue({ dnsNames: ["b.svc.test"] })).certificate);
    const intText = x509Text(intermediate());
    const rootText = x509Text(root());
    assert.equal(
      valueAfter(leafText, "X509v3 Authority Key Identifier"),
      valueAfter(intText, "X509v3 Subject Key Identifier"),
    );
    assert.equal(
      valueAfter(intText, "X509v3 Authority Key Identifier"),
      valueAfter(rootText, "X509v3 Subject Key Identifier"),
    );
  });

  test("serials are positive, at most 20 octets, minimally encoded and unique", async () => {
    const serials = new Set<string>();
    for (let i = 0; i < 12; i++) {
      const leaf = await issue({ dnsNames: [`s${i}.svc.test`] });
      const { serial } = tbsFields(leaf.certificate);
      assert.ok(serial.length >= 1 && serial.length <= 20, `${serial.length} octets`);
      assert.equal(serial[0]! & 0x80, 0, "positive");
      assert.ok(!(serial[0] === 0 && serial.length > 1 && serial[1]! < 0x80), "no redundant leading zero");
      assert.notDeepEqual([...serial], new Array(serial.length).fill(0), "not zero");
      assert.equal(new X509Certificate(leaf.certificate).serialNumber.toLowerCase(), leaf.serial);
      serials.add(leaf.serial);
    }
    assert.equal(serials.size, 12);
  });

  test("CA certificates: critical CA:TRUE, keyCertSign and cRLSign; the intermediate has pathlen 0, the leaf CA:FALSE", async () => {
    const rootText = x509Text(root());
    assert.match(rootText, /Basic Constraints: critical\s*\n\s*CA:TRUE\n/);
    assert.match(rootText, /Key Usage: critical\s*\n\s*Certificate Sign, CRL Sign\n/);
    const intText = x509Text(intermediate());
    assert.match(intText, /Basic Constraints: critical\s*\n\s*CA:TRUE, pathlen:0\n/);
    assert.match(intText, /Key Usage: critical\s*\n\s*.*Certificate Sign, CRL Sign\n/);
    const leafText = x509Text((await issue({ dnsNames: ["c.svc.test"] })).certificate);
    assert.match(leafText, /Basic Constraints: critical\s*\n\s*CA:FALSE\n/);
    assert.match(
      leafText,
      /Extended Key Usage: \s*\n\s*TLS Web Server Authentication, TLS Web Client Authentication\n/,
    );
    assert.equal(new X509Certificate(intermediate()).ca, true);
  });

  test("validity nests in the issuer's and is encoded UTCTime before 2050, GeneralizedTime from 2050", async () => {
    // Issued at 20:00 on 31 Dec 2049 for 8 hours: it starts in 2049 and ends in 2050.
    const leaf = await issue({ dnsNames: ["t.svc.test"], ttlSeconds: 8 * 3600 });
    const f = tbsFields(leaf.certificate);
    const c = new X509Certificate(leaf.certificate);
    assertTimeEncoding(f.notBefore, dateOf(c.validFrom));
    assertTimeEncoding(f.notAfter, dateOf(c.validTo));
    assert.equal(dateOf(c.validTo).toISOString(), "2050-01-01T04:00:00.000Z");
    for (const pem of [intermediate(), root()]) {
      const ca = new X509Certificate(pem);
      const t = tbsFields(pem);
      assertTimeEncoding(t.notBefore, dateOf(ca.validFrom));
      assertTimeEncoding(t.notAfter, dateOf(ca.validTo));
    }
    // A lifetime beyond the intermediate's ends with it, never after; none starts before its issuer.
    const long = new X509Certificate(
      (await issue({ dnsNames: ["u.svc.test"], ttlSeconds: 10 * 365 * 86_400 })).certificate,
    );
    const int = new X509Certificate(intermediate());
    const rootCert = new X509Certificate(root());
    assert.equal(long.validTo, int.validTo);
    assert.ok(dateOf(long.validFrom) >= dateOf(int.validFrom), `${long.validFrom} before ${int.validFrom}`);
    assert.ok(dateOf(int.validFrom) >= dateOf(rootCert.validFrom));
    assert.ok(dateOf(int.validTo) <= dateOf(rootCert.validTo));
  });

  test("key usage bits are ones the key's algorithm allows (RFC 5480 §3, RFC 8410 §5, RFC 3279 §2.3.1)", async () => {
    await issuer.putRole(alice, "all-usages", {
      dnsNames: ["api.test"],
      keyUsages: ["digitalSignature", "keyEncipherment", "keyAgreement"],
      keyTypes: ["ec-p256", "ec-p384", "ed25519", "rsa-2048"],
    });
    const forbidden: Record<string, RegExp> = {
      // RFC 5480 §3: keyEncipherment and dataEncipherment MUST NOT be present for id-ecPublicKey.
      "ec-p256": /Key Encipherment|Data Encipherment/,
      "ec-p384": /Key Encipherment|Data Encipherment/,
      // RFC 8410 §5: digitalSignature, nonRepudiation, keyCertSign, cRLSign only.
      ed25519: /Key Encipherment|Data Encipherment|Key Agreement/,
      // RFC 3279 §2.3.1: digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment only.
      "rsa-2048": /Key Agreement/,
    };
    const seen: string[] = [];
    for (const [keyType, pattern] of Object.entries(forbidden)) {
      // The default role profile (digitalSignature, keyEncipherment) with the default key type is the common case.
      const fromDefault = keyType === "ec-p256" ? await issue({ dnsNames: ["api.test"] }) : undefined;
      const leaf = await issue({ dnsNames: ["api.test"], keyType }, "all-usages");
      for (const pem of [leaf.certificate, fromDefault?.certificate].filter((p) => p !== undefined)) {
        const usage = /Key Usage: critical\s*\n\s*(.+)\n/.exec(x509Text(pem))?.[1] ?? "";
        if (pattern.test(usage)) seen.push(`${keyType}: ${usage}`);
      }
    }
    assert.deepEqual(seen, []);
  });

  test("a role with empty keyUsages and extKeyUsages is refused or issues a leaf openssl accepts (RFC 5280 4.2.1.3, 4.2.1.12)", async () => {
    let role: unknown;
    try {
      role = await issuer.putRole(alice, "no-usages", { dnsNames: ["api.test"], keyUsages: [], extKeyUsages: [] });
    } catch (e) {
      assert.equal((e as { code?: string }).code, "invalid_request");
      return;
    }
    assert.ok(role);
    const leaf = await issue({ dnsNames: ["api.test"] }, "no-usages");
    const v = openssl(
      "verify",
      "-attime",
      attime(),
      "-CAfile",
      write("root.pem", root()),
      "-untrusted",
      write("int.pem", intermediate()),
      write("no-usages.pem", leaf.certificate),
    );
    assert.equal(v.status, 0, v.out);
    // ExtKeyUsageSyntax is SEQUENCE SIZE (1..MAX): present means at least one purpose.
    const eku = (new X509Certificate(leaf.certificate).toLegacyObject() as { ext_key_usage?: string[] }).ext_key_usage;
    assert.ok(eku === undefined || eku.length > 0, "an empty extKeyUsage");
  });

  test("CRLs: v2, the issuer's name and AKI, thisUpdate now, nextUpdate after it, the number up by one per change", async () => {
    const number = () => Number(/X509v3 CRL Number:\s*\n\s*(\d+)/.exec(crlText(authority.crl("int-1")))?.[1]);
    const first = number();
    const a = await issue({ dnsNames: ["r1.svc.test"] });
    const b = await issue({ dnsNames: ["r2.svc.test"] });
    await issuer.revoke(alice, a.serial, "affiliationChanged");
    assert.equal(number(), first + 1);
    await issuer.revoke(alice, b.serial, "unspecified");
    assert.equal(number(), first + 2);
    // Past half its life, the CRL is re-signed: a new number again.
    fx.now = new Date(fx.now.getTime() + (CRL_VALIDITY_SECONDS * 1000 * 3) / 4);
    assert.ok((await authority.refreshCrls()) >= 1);
    assert.equal(number(), first + 3);

    const der = authority.crl("int-1");
    const text = crlText(der);
    assert.match(text, /Version 2 \(0x1\)/);
    assert.equal(
      valueAfter(text, "X509v3 Authority Key Identifier"),
      valueAfter(x509Text(intermediate()), "X509v3 Subject Key Identifier"),
    );
    const last = dateOf(/Last Update: (.+)\n/.exec(text)?.[1] ?? "");
    const next = dateOf(/Next Update: (.+)\n/.exec(text)?.[1] ?? "");
    assert.equal(last.getTime(), Math.floor(fx.now.getTime() / 1000) * 1000);
    assert.equal(next.getTime() - last.getTime(), CRL_VALIDITY_SECONDS * 1000);
    // The CRL's issuer field is, byte for byte, the issuer field of what it revokes.
    const [crl] = tlvs(der);
    const [tbsList] = tlvs(crl!.content);
    const fields = tlvs(tbsList!.content);
    assert.equal(fields[0]?.tag, 0x02, "v2 CRLs carry a version");
    assert.ok(fields[2]!.bytes.equals(tbsFields(a.certificate).issuer));
    // openssl reads the reasons as given; "unspecified" is left out (RFC 5280 5.3.1).
    const entry = (serial: string) => text.split(/Serial Number: /).find((s) => s.toLowerCase().startsWith(serial));
    assert.match(entry(a.serial) ?? "", /CRL Reason Code:\s*\n\s*Affiliation Changed/);
    assert.doesNotMatch(entry(b.serial) ?? "no entry", /Reason Code|no entry/);
    const verified = openssl(
      "crl",
      "-inform",
      "DER",
      "-in",
      write("int.crl", der),
      "-CAfile",
      write("int.pem", intermediate()),
      "-verify",
      "-noout",
    );
    assert.match(verified.out, /verify OK/);
  });

  test("a revoked certificate stays on the first CRL issued after it expires (RFC 5280 3.3), and leaves one CRL period later", async () => {
    const expiring = await issue({ dnsNames: ["exp.svc.test"], ttlSeconds: 3600 });
    await issuer.revoke(alice, expiring.serial, "keyCompromise");
    assert.match(crlText(authority.crl("int-1")), new RegExp(expiring.serial, "i"));
    // An hour and a minute later the certificate has expired; the next CRL is the first issued beyond it.
    fx.now = new Date(fx.now.getTime() + 3660_000);
    const other = await issue({ dnsNames: ["other.svc.test"] });
    await issuer.revoke(alice, other.serial, "superseded");
    const text = crlText(authority.crl("int-1"));
    const lastUpdate = dateOf(/Last Update: (.+)\n/.exec(text)?.[1] ?? "");
    assert.ok(lastUpdate > dateOf(new X509Certificate(expiring.certificate).validTo));
    assert.match(text, new RegExp(other.serial, "i"));
    assert.match(text, new RegExp(expiring.serial, "i"), "the expired entry is still listed once");
    // One CRL validity period after the expiry, the entry has had its scheduled CRL and leaves.
    fx.now = new Date(
      dateOf(new X509Certificate(expiring.certificate).validTo).getTime() + CRL_VALIDITY_SECONDS * 1000 + 1000,
    );
    assert.ok((await authority.refreshCrls()) >= 1);
    assert.doesNotMatch(crlText(authority.crl("int-1")), new RegExp(expiring.serial, "i"));
  });
});

// ==== a running Custos: the URLs certificates carry and the OCSP endpoint ============

/** The URL path of `label - URI:` in openssl's text of a certificate. */
function uriOf(text: string, label: RegExp): string {
  const m = new RegExp(`${label.source}\\s*URI:(\\S+)`).exec(text);
  assert.ok(m?.[1], `no ${label} in:\n${text}`);
  return new URL(m[1]).pathname;
}

/** OCSPResponseStatus of a DER OCSPResponse: SEQUENCE { ENUMERATED status, ... }. */
function ocspResponseStatus(der: Buffer): number {
  const [response] = tlvs(der);
  const [status] = tlvs(response!.content);
  assert.equal(status?.tag, 0x0a, "an OCSPResponse starts with its ENUMERATED status");
  return status.content[0]!;
}

const MALFORMED_REQUEST = 1;

describe("PKI endpoints of a running Custos", () => {
  let custos: CustosInstance;
  let rootPath: string;

  before(async () => {
    custos = await startCustos();
    rootPath = write("served-root.pem", custos.ca);
    const role = await custos.call("PUT", "/v1/pki/roles/web", {
      dnsNames: ["*.svc.test", "api.test"],
      allowWildcardNames: true,
      ipRanges: ["10.0.0.0/8", "2001:db8::/32", "::ffff:0:0/96"],
      uris: ["spiffe://example.test/*"],
      keyTypes: ["ec-p256", "rsa-2048"],
    });
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

  test("SANs of every kind from an openssl CSR come out as openssl reads them", async () => {
    const key = join(dir, "san.key");
    const csr = join(dir, "san.csr");
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
      "/CN=api.test",
      "-addext",
      "subjectAltName=DNS:api.test,DNS:*.svc.test,IP:10.0.0.1,IP:2001:db8::1,IP:2001:0db8:0:0:0:0:0:00ff,IP:::ffff:10.9.8.7,URI:spiffe://example.test/ns/a/sa/b",
      "-out",
      csr,
    );
    assert.equal(made.status, 0, made.out);
    const r = await custos.call("POST", "/v1/pki/roles/web/sign", { csr: readFileSync(csr, "utf8") });
    assert.equal(r.status, 200, r.text);
    const text = x509Text(String((r.body as Json).certificate));
    const csrText = openssl("req", "-in", csr, "-noout", "-text").out;
    const sans = (t: string) => /Subject Alternative Name:\s*\n\s*(.+)\n/.exec(t)?.[1];
    assert.equal(
      sans(text),
      "DNS:api.test, DNS:*.svc.test, IP Address:10.0.0.1, IP Address:2001:DB8:0:0:0:0:0:1, IP Address:2001:DB8:0:0:0:0:0:FF, IP Address:0:0:0:0:0:FFFF:A09:807, URI:spiffe://example.test/ns/a/sa/b",
    );
    assert.equal(sans(text), sans(csrText));
    assert.match(text, /Subject: CN = api\.test\n/);
  });

  test("the caIssuers URL a certificate carries serves its issuer as one DER certificate (RFC 5280 4.2.2.1)", async () => {
    const leaf = await issue({ dnsNames: ["aia.svc.test"] });
    const text = x509Text(String(leaf.certificate));
    const fetched = await fetchRaw(custos, uriOf(text, /CA Issuers -/));
    assert.equal(fetched.status, 200);
    assert.ok(new X509Certificate(fetched.body).raw.equals(new X509Certificate(String(leaf.chain)).raw));
    assert.equal(fetched.type, "application/pkix-cert");
    assert.equal(fetched.body[0], 0x30, "DER, not PEM");
  });

  test("the CRLs at the distribution points the leaf and the intermediate carry let openssl check the whole chain", async () => {
    const good = await issue({ dnsNames: ["good.svc.test"] });
    const bad = await issue({ dnsNames: ["bad.svc.test"] });
    const revoked = await custos.call("POST", `/v1/pki/certs/${String(bad.serial)}/revoke`, { reason: "superseded" });
    assert.equal(revoked.status, 200, revoked.text);
    const intPath = write("int.pem", String(good.chain));
    const crlPems: string[] = [];
    for (const pem of [String(good.certificate), String(good.chain)]) {
      const fetched = await fetchRaw(custos, uriOf(x509Text(pem), /Full Name:\s*/));
      assert.equal(fetched.status, 200);
      assert.equal(fetched.type, "application/pkix-crl");
      const asPem = openssl("crl", "-inform", "DER", "-in", write("dp.crl", fetched.body));
      assert.equal(asPem.status, 0, asPem.out);
      crlPems.push(asPem.out);
    }
    const crls = write("crls.pem", crlPems.join(""));
    const check = (leaf: Json) =>
      openssl(
        "verify",
        "-crl_check_all",
        "-x509_strict",
        "-CRLfile",
        crls,
        "-CAfile",
        rootPath,
        "-untrusted",
        intPath,
        write("leaf.pem", String(leaf.certificate)),
      );
    const ok = check(good);
    assert.equal(ok.status, 0, ok.out);
    const no = check(bad);
    assert.notEqual(no.status, 0);
    assert.match(no.out, /certificate revoked/);
  });

  test("DER and PEM CRLs served are the same CRL, for the active issuer and by id", async () => {
    for (const [der, pem] of [
      ["/v1/pki/crl", "/v1/pki/crl.pem"],
      ["/v1/pki/issuers/int-1/crl", "/v1/pki/issuers/int-1/crl.pem"],
      ["/v1/pki/issuers/root-1/crl", "/v1/pki/issuers/root-1/crl.pem"],
    ] as const) {
      const d = await fetchRaw(custos, der);
      const p = await fetchRaw(custos, pem);
      assert.equal(d.status, 200);
      assert.equal(p.status, 200);
      const converted = openssl(
        "crl",
        "-in",
        write("served.crl.pem", p.body),
        "-outform",
        "DER",
        "-out",
        join(dir, "c.der"),
      );
      assert.equal(converted.status, 0, converted.out);
      assert.ok(readFileSync(join(dir, "c.der")).equals(d.body), `${der} and ${pem} differ`);
    }
  });

  test("OCSP: revocation time and reason agree with the CRL; the nonce sent is echoed; a serial never issued is unknown", async () => {
    const leaf = await issue({ dnsNames: ["o.svc.test"] });
    const r = await custos.call("POST", `/v1/pki/certs/${String(leaf.serial)}/revoke`, {
      reason: "cessationOfOperation",
    });
    assert.equal(r.status, 200, r.text);
    const intPath = write("int.pem", String(leaf.chain));
    const url = `${custos.url}/v1/pki/ocsp`;
    const answer = openssl(
      "ocsp",
      "-issuer",
      intPath,
      "-cert",
      write("leaf.pem", String(leaf.certificate)),
      "-url",
      url,
      "-CAfile",
      rootPath,
      "-req_text",
      "-resp_text",
    );
    assert.match(answer.out, /Response verify OK/);
    assert.match(answer.out, /: revoked\n\s*This Update: .+\n\s*Next Update: .+\n\s*Reason: cessationOfOperation\n/);
    const nonce = (label: string) =>
      new RegExp(`${label} Extensions:\\s*\\n\\s*OCSP Nonce:\\s*\\n\\s*([0-9A-F]+)`).exec(answer.out)?.[1];
    assert.ok(nonce("Request"));
    assert.equal(nonce("Response"), nonce("Request"));
    const ocspTime = /Revocation Time: (.+)\n/.exec(answer.out)?.[1];
    const crl = crlText((await fetchRaw(custos, "/v1/pki/issuers/int-1/crl")).body);
    const entry = crl.split(/Serial Number: /).find((s) => s.toLowerCase().startsWith(String(leaf.serial)));
    assert.ok(entry, "listed in the CRL");
    assert.equal(/Revocation Date: (.+)\n/.exec(entry)?.[1], ocspTime);
    assert.match(entry, /Cessation Of Operation/);

    const unknown = openssl(
      "ocsp",
      "-issuer",
      intPath,
      "-serial",
      "0x7fee0000000000000000000000000001",
      "-url",
      url,
      "-CAfile",
      rootPath,
    );
    assert.match(unknown.out, /Response verify OK/);
    assert.match(unknown.out, /: unknown\n/);
  });

  test("OCSP over GET: the request base64'd and URL-encoded in the path (RFC 6960 A.1), '+' and '/' included", async () => {
    const leaf = await issue({ dnsNames: ["g.svc.test"] });
    const intPath = write("int.pem", String(leaf.chain));
    const leafPath = write("leaf.pem", String(leaf.certificate));
    // The nonce is random: ask until the base64 holds both characters that need encoding.
    let b64 = "";
    let reqPath = "";
    for (let i = 0; i < 50 && !(b64.includes("+") && b64.includes("/")); i++) {
      reqPath = join(dir, `get-req-${i}.der`);
      const made = openssl("ocsp", "-issuer", intPath, "-cert", leafPath, "-reqout", reqPath);
      assert.equal(made.status, 0, made.out);
      b64 = readFileSync(reqPath).toString("base64");
    }
    assert.ok(b64.includes("+") && b64.includes("/"), b64);
    const got = await fetchRaw(custos, `/v1/pki/ocsp/${encodeURIComponent(b64)}`);
    assert.equal(got.status, 200);
    assert.equal(got.type, "application/ocsp-response");
    // The request read back, so openssl also checks the nonce against the one sent.
    const read = openssl(
      "ocsp",
      "-reqin",
      reqPath,
      "-respin",
      write("get-resp.der", got.body),
      "-issuer",
      intPath,
      "-CAfile",
      rootPath,
      "-resp_text",
    );
    assert.match(read.out, /Response verify OK/);
    assert.match(read.out, /Cert Status: good\n/);
  });

  test("OCSP POST bodies that are no request answer malformedRequest, as an OCSP response", async () => {
    for (const body of [Buffer.alloc(0), Buffer.from("hello"), Buffer.from([0x30, 0x03, 0x02, 0x01, 0x00])]) {
      const r = await fetchRaw(custos, "/v1/pki/ocsp", { type: "application/ocsp-request", body });
      assert.equal(r.status, 200);
      assert.equal(r.type, "application/ocsp-response");
      assert.equal(ocspResponseStatus(r.body), MALFORMED_REQUEST, body.toString("hex"));
    }
  });

  test("OCSP GET with a stray percent escape answers malformedRequest, not a 500", async () => {
    const r = await fetchRaw(custos, "/v1/pki/ocsp/%25zz");
    assert.notEqual(r.status, 500, r.body.toString());
    assert.equal(r.type, "application/ocsp-response");
    assert.equal(ocspResponseStatus(r.body), MALFORMED_REQUEST);
  });

  test("OCSP GET whose path is not base64 answers malformedRequest as an OCSP response (RFC 6960 2.3)", async () => {
    const r = await fetchRaw(custos, "/v1/pki/ocsp/not-base64!");
    assert.equal(r.type, "application/ocsp-response", r.body.toString());
    assert.equal(ocspResponseStatus(r.body), MALFORMED_REQUEST);
  });
});
