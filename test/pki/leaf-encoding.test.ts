import "reflect-metadata";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, generateKeyPairSync, sign, verify, webcrypto, X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { SocketAddress } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import * as asn1X509 from "@peculiar/asn1-x509";
import * as x509 from "@peculiar/x509";
import { CustosError } from "../../src/errors/index.js";
import {
  type BuiltLeaf,
  buildLeaf,
  buildRoot,
  type CaUrls,
  derToPem,
  type LeafSpec,
} from "../../src/pki/certificate.js";
import { subjectPublicKeyBits } from "../../src/pki/der-reader.js";
import { ecdsaSignatureDer, objectIdentifier } from "../../src/pki/der-writer.js";
import { type CaSigner, softwareCaSigner } from "../../src/pki/signer.js";

// Oracles: the encoding buildLeaf used for a leaf's own fields before it wrote them
// as DER itself, @peculiar/asn1-x509 schema objects, copied here (the library knows
// nothing of the new code); node:crypto (keys, signature checks); openssl (reads and
// verifies whole leaves). The leaf's shared parts come from templateOf, unchanged.

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "custos-leaf-encoding-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function openssl(args: string[]): string {
  const r = spawnSync("openssl", args, { encoding: "utf8" });
  assert.equal(r.status, 0, `openssl ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

const URLS: CaUrls = {
  caIssuers: "https://ca.test:8443/v1/pki/ca/1.crt",
  crl: "https://ca.test:8443/v1/pki/ca/1.crl",
  ocsp: "https://ca.test:8443/v1/pki/ocsp",
};

async function softwareCa(algorithm: webcrypto.EcKeyGenParams | webcrypto.RsaHashedKeyGenParams): Promise<CaSigner> {
  const keys = (await webcrypto.subtle.generateKey(algorithm, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const spki = Buffer.from(await webcrypto.subtle.exportKey("spki", keys.publicKey));
  const root = await buildRoot(softwareCaSigner(undefined as never, keys.privateKey), spki, 1, new Date());
  return softwareCaSigner(root, keys.privateKey);
}

const spkiOf = (key: { export(o: { format: "der"; type: "spki" }): Buffer }): Buffer =>
  key.export({ format: "der", type: "spki" });

let ecCa: CaSigner;
let rsaCa: CaSigner;
let leafKeys: Buffer[];
before(async () => {
  ecCa = await softwareCa({ name: "ECDSA", namedCurve: "P-256" });
  rsaCa = await softwareCa({
    name: "RSASSA-PKCS1-v1_5",
    modulusLength: 2048,
    publicExponent: new Uint8Array([1, 0, 1]),
    hash: "SHA-256",
  });
  leafKeys = [
    spkiOf(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey),
    spkiOf(generateKeyPairSync("ec", { namedCurve: "P-384" }).publicKey),
    spkiOf(generateKeyPairSync("ed25519").publicKey),
    spkiOf(generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey),
  ];
});

// --- the oracle: how each of a leaf's own fields was encoded before --------------

const NAME_OIDS: Readonly<Record<string, string>> = {
  CN: "2.5.4.3",
  O: "2.5.4.10",
  OU: "2.5.4.11",
  L: "2.5.4.7",
  ST: "2.5.4.8",
  C: "2.5.4.6",
};

function oracleName(name: x509.JsonName): asn1X509.Name {
  return new asn1X509.Name(
    name.flatMap((rdn) =>
      Object.entries(rdn).map(([type, values]) => {
        const oid = NAME_OIDS[type];
        if (oid === undefined) throw new Error(`unsupported name attribute ${type}`);
        return new asn1X509.RelativeDistinguishedName(
          values.map(
            (v) =>
              new asn1X509.AttributeTypeAndValue({ type: oid, value: new asn1X509.AttributeValue({ utf8String: v }) }),
          ),
        );
      }),
    ),
  );
}

function oracleNameText(name: x509.JsonName): string {
  const escaped = (v: string) => v.replace(/[,+"\\<>;]/g, (c) => `\\${c}`);
  return name
    .flatMap((rdn) => Object.entries(rdn).map(([t, vs]) => vs.map((v) => `${t}=${escaped(v)}`).join("+")))
    .join(", ");
}

function oracleExtension(extnID: string, critical: boolean, value: unknown): asn1X509.Extension {
  return new asn1X509.Extension({ extnID, critical, extnValue: new OctetString(AsnConvert.serialize(value)) });
}

function oracleSubjectAltName(spec: LeafSpec, critical: boolean): asn1X509.Extension {
  const names = [
    ...spec.dnsNames.map((dNSName) => new asn1X509.GeneralName({ dNSName })),
    ...spec.ipAddresses.map((ip) => new asn1X509.GeneralName({ iPAddress: ip })),
    ...spec.uris.map((uniformResourceIdentifier) => new asn1X509.GeneralName({ uniformResourceIdentifier })),
  ];
  return oracleExtension(asn1X509.id_ce_subjectAltName, critical, new asn1X509.SubjectAlternativeName(names));
}

function oracleSubjectKeyId(spki: Buffer): asn1X509.Extension {
  const bits = AsnConvert.parse(spki, asn1X509.SubjectPublicKeyInfo).subjectPublicKey;
  const keyId = createHash("sha1").update(new Uint8Array(bits)).digest();
  return oracleExtension(asn1X509.id_ce_subjectKeyIdentifier, false, new asn1X509.SubjectKeyIdentifier(keyId));
}

/** The serial's INTEGER content, from the number it names: minimal two's complement of a positive number. */
function oracleSerial(hex: string): ArrayBuffer {
  let digits = BigInt(`0x${hex}`).toString(16);
  if (digits.length % 2 === 1) digits = `0${digits}`;
  if (Number.parseInt(digits.slice(0, 1), 16) >= 8) digits = `00${digits}`;
  return new Uint8Array(Buffer.from(digits, "hex")).buffer;
}

function oracleSubject(spec: LeafSpec): x509.JsonName {
  return [...(spec.commonName === undefined ? [] : [{ CN: [spec.commonName] }]), ...(spec.subject ?? [])];
}

/**
 * The TBSCertificate buildLeaf wrote, re-encoded by the schema with the leaf's own
 * fields built the old way; its shared fields are taken as parsed, so any
 * difference is in the fields this change encodes.
 */
function oracleTbs(tbsDer: Buffer, spec: LeafSpec): Buffer {
  const tbs = AsnConvert.parse(tbsDer, asn1X509.TBSCertificate);
  const subject = oracleSubject(spec);
  tbs.serialNumber = oracleSerial(spec.serial);
  tbs.validity = new asn1X509.Validity({ notBefore: spec.notBefore, notAfter: spec.notAfter });
  tbs.subject = oracleName(subject);
  const extensions = tbs.extensions ?? [];
  assert.equal(extensions.length, 8, "every leaf has eight extensions");
  tbs.extensions = new asn1X509.Extensions(
    extensions.map((e) => {
      if (e.extnID === asn1X509.id_ce_subjectAltName) return oracleSubjectAltName(spec, subject.length === 0);
      if (e.extnID === asn1X509.id_ce_subjectKeyIdentifier) return oracleSubjectKeyId(spec.publicKey);
      return e;
    }),
  );
  return Buffer.from(AsnConvert.serialize(tbs));
}

/** Checks one built leaf against the oracle, and its signature with node:crypto. */
function assertLeafMatchesOracle(ca: CaSigner, spec: LeafSpec, leaf: BuiltLeaf, label: string): void {
  const parsed = AsnConvert.parse(leaf.der, asn1X509.Certificate);
  const tbsDer = Buffer.from(parsed.tbsCertificateRaw ?? new ArrayBuffer(0));
  assert.deepEqual(tbsDer.toString("hex"), oracleTbs(tbsDer, spec).toString("hex"), `TBSCertificate of ${label}`);
  assert.ok(leaf.der.equals(Buffer.from(AsnConvert.serialize(parsed))), `Certificate of ${label}`);
  assert.equal(leaf.pem, `${x509.PemConverter.encode(leaf.der, "CERTIFICATE")}\n`, `PEM of ${label}`);
  assert.equal(leaf.subject, oracleNameText(oracleSubject(spec)), `subject text of ${label}`);
  const validity = new asn1X509.Validity({ notBefore: spec.notBefore, notAfter: spec.notAfter });
  assert.equal(leaf.notBefore.getTime(), validity.notBefore.getTime().getTime(), `notBefore of ${label}`);
  assert.equal(leaf.notAfter.getTime(), validity.notAfter.getTime().getTime(), `notAfter of ${label}`);
  const caKey = new X509Certificate(Buffer.from(ca.certificate.rawData)).publicKey;
  assert.ok(new X509Certificate(leaf.der).verify(caKey), `signature of ${label}`);
}

// --- generated leaves ----------------------------------------------------------

/** A seeded generator (mulberry32), so a failing case is the same case on every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Cases {
  readonly #next: () => number;
  constructor(seed: number) {
    this.#next = prng(seed);
  }
  int(below: number): number {
    return Math.floor(this.#next() * below);
  }
  pick<T>(items: readonly T[]): T {
    const item = items[this.int(items.length)];
    if (item === undefined) throw new Error("pick from an empty list");
    return item;
  }
  many<T>(most: number, make: () => T): T[] {
    return Array.from({ length: this.int(most + 1) }, make);
  }
  text(alphabet: readonly string[], shortest: number, longest: number): string {
    return Array.from({ length: shortest + this.int(longest - shortest + 1) }, () => this.pick(alphabet)).join("");
  }
  bytes(n: number): Buffer {
    return Buffer.from(Array.from({ length: n }, () => this.int(256)));
  }
}

const LABEL_CHARS = [..."abcdefghijklmnopqrstuvwxyz0123456789"];
/** Attribute values: ASCII, RFC 4514 specials, two- three- and four-byte UTF-8 (a surrogate pair). */
const VALUE_CHARS = [..."abcXYZ019 -._", ",", "+", '"', "\\", "<", ">", ";", "é", "ß", "Ж", "日本", "€", "😀", "𝄞"];

function dnsName(c: Cases): string {
  return c
    .many(4, () => c.text(LABEL_CHARS, 1, 20))
    .concat("example", "test")
    .join(".");
}

function ipv4(c: Cases): string {
  return [...c.bytes(4)].join(".");
}

/** A canonical IPv6 text as role.ts makes it (via SocketAddress), zero runs included so "::" appears. */
function ipv6(c: Cases): string {
  const groups = Array.from({ length: 8 }, () => (c.int(3) === 0 ? 0 : c.int(0x10000)));
  const zeroRun = c.int(9);
  groups.fill(0, zeroRun, zeroRun + c.int(9 - zeroRun));
  return canonicalIpv6(groups.map((g) => g.toString(16)).join(":"));
}

const canonicalIpv6 = (text: string): string => new SocketAddress({ address: text, family: "ipv6" }).address;

function uri(c: Cases): string {
  return c.pick([
    () => `spiffe://${dnsName(c)}/ns/${c.text(LABEL_CHARS, 1, 12)}/sa/${c.text(LABEL_CHARS, 1, 12)}`,
    () => `https://${dnsName(c)}:${1 + c.int(65535)}/${c.text(LABEL_CHARS, 0, 40)}?q=${c.text(LABEL_CHARS, 0, 8)}`,
    () => `urn:example:${c.bytes(16).toString("hex")}`,
  ])();
}

function extraSubject(c: Cases): x509.JsonName {
  return c.many(3, () => {
    const rdn: Record<string, string[]> = {};
    for (const type of c.many(2, () => c.pick(["O", "OU", "L", "ST", "C"]))) {
      rdn[type] = Array.from({ length: 1 + c.int(3) }, () => c.text(VALUE_CHARS, 1, 40));
    }
    return rdn;
  });
}

/** A fixed "now" for generated leaves, so that every run builds the same ones. */
const GENERATED_AT = Date.UTC(2026, 0, 15, 12, 0, 0, 250);

/** Times near now, near the 2050 switch from UTCTime to GeneralizedTime, and far out; milliseconds included. */
function notAfter(c: Cases): Date {
  const at2050 = Date.UTC(2050, 0, 1);
  return new Date(
    c.pick([
      () => GENERATED_AT + c.int(400 * 86_400_000),
      () => at2050 - 1000 + c.int(2000),
      () => at2050 - 1 - c.int(2),
      () => Date.UTC(2030 + c.int(70), c.int(12), 1 + c.int(28), c.int(24), c.int(60), c.int(60), c.int(1000)),
    ])(),
  );
}

/** Serials of 1 to 20 bytes, the first byte anywhere in 01–ff (half of them need a leading zero byte). */
function serial(c: Cases): string {
  const bytes = c.bytes(1 + c.int(20));
  bytes[0] = 1 + c.int(255);
  return bytes.toString("hex");
}

function generatedSpec(c: Cases): LeafSpec {
  const hasCn = c.int(4) !== 0;
  const dnsNames = c.many(5, () => dnsName(c));
  const commonName = hasCn ? (dnsNames[0] ?? dnsName(c)) : undefined;
  const subject = c.int(3) === 0 ? extraSubject(c) : undefined;
  // IPv6 texts with a dotted ending have a test of their own: the oracle encodes them wrongly.
  const ipAddresses = [...c.many(3, () => ipv4(c)), ...c.many(3, () => ipv6(c)).filter((ip) => !ip.includes("."))];
  const names = { dnsNames, ipAddresses, uris: c.many(3, () => uri(c)) };
  if (names.dnsNames.length + names.ipAddresses.length + names.uris.length === 0) names.dnsNames.push(dnsName(c));
  const notBefore = new Date(GENERATED_AT - c.int(86_400_000));
  return {
    serial: serial(c),
    publicKey: c.pick(leafKeys),
    commonName,
    ...names,
    keyUsages: c.pick([["digitalSignature"], ["digitalSignature", "keyEncipherment"], ["keyAgreement"]]),
    extKeyUsages: c.pick([["serverAuth"], ["clientAuth"], ["serverAuth", "clientAuth"]]),
    notBefore,
    notAfter: notAfter(c),
    ...(subject === undefined ? {} : { subject }),
  };
}

function baseSpec(overrides: Partial<LeafSpec>): LeafSpec {
  return {
    serial: "3f00112233445566778899aabbccddee",
    publicKey: leafKeys[0] ?? Buffer.alloc(0),
    commonName: "svc.example.test",
    dnsNames: ["svc.example.test"],
    ipAddresses: [],
    uris: [],
    keyUsages: ["digitalSignature", "keyEncipherment"],
    extKeyUsages: ["serverAuth"],
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    ...overrides,
  };
}

describe("buildLeaf writes the bytes the schema encoding wrote", () => {
  test("generated leaves (names, IPs, URIs, subjects, times, serials) under an ECDSA and an RSA CA", async () => {
    const c = new Cases(0x5eed);
    const seen = {
      noCn: 0,
      extraSubject: 0,
      rdnWithSeveralValues: 0,
      ipv4: 0,
      ipv6: 0,
      uri: 0,
      from2050: 0,
      zeroPadded: 0,
    };
    for (let i = 0; i < 400; i++) {
      const ca = i % 2 === 0 ? ecCa : rsaCa;
      const spec = generatedSpec(c);
      assertLeafMatchesOracle(ca, spec, await buildLeaf(ca, spec, URLS), `case ${i}`);
      if (spec.commonName === undefined) seen.noCn++;
      if (spec.subject !== undefined && spec.subject.length > 0) seen.extraSubject++;
      if (spec.subject?.some((rdn) => Object.values(rdn).some((v) => v.length > 1))) seen.rdnWithSeveralValues++;
      if (spec.ipAddresses.some((ip) => ip.includes("."))) seen.ipv4++;
      if (spec.ipAddresses.some((ip) => ip.includes(":"))) seen.ipv6++;
      if (spec.uris.length > 0) seen.uri++;
      if (spec.notAfter.getUTCFullYear() >= 2050) seen.from2050++;
      if (Number.parseInt(spec.serial.slice(0, 2), 16) >= 0x80) seen.zeroPadded++;
    }
    // The generator reaches every kind of case often enough to matter.
    for (const [kind, count] of Object.entries(seen)) assert.ok(count >= 20, `${kind}: ${count} of 400`);
  });

  test("fixed cases: each kind of name alone, no CN, several values in an RDN, the 2050 boundary", async () => {
    const cases: Record<string, LeafSpec> = {
      "CN and DNS names": baseSpec({ dnsNames: ["svc.example.test", "*.svc.example.test", "a.b"] }),
      IPv4: baseSpec({ commonName: undefined, dnsNames: [], ipAddresses: ["10.0.0.1", "0.0.0.0", "255.255.255.255"] }),
      IPv6: baseSpec({ ipAddresses: ["::", "::1", "1::", "fe80::1", "2001:db8::", "64:ff9b::102:304"] }),
      URIs: baseSpec({ uris: ["spiffe://example.test/ns/a/sa/b", "urn:x", "https://h.test/%C3%A9?x=1#f"] }),
      "no CN (critical SAN)": baseSpec({ commonName: undefined, dnsNames: ["x.example.test"] }),
      "no CN, extra subject": baseSpec({ commonName: undefined, subject: [{ O: ["Org"] }] }),
      "extra subject, several values": baseSpec({
        subject: [{ OU: ["app:web", "space:prod"], O: ['Örg, "Ltd" <a+b>;\\'] }, { C: ["DE"] }, { L: [] }],
      }),
      "non-ASCII UTF-8": baseSpec({ subject: [{ O: ["日本語", "😀 𝄞", "Ωmega"] }, { ST: ["Zürich"] }] }),
      "notAfter 2049-12-31T23:59:59.999Z (UTCTime)": baseSpec({ notAfter: new Date(Date.UTC(2050, 0, 1) - 1) }),
      "notAfter 2050-01-01T00:00:00Z (GeneralizedTime)": baseSpec({ notAfter: new Date(Date.UTC(2050, 0, 1)) }),
      "notAfter 9999-12-31": baseSpec({ notAfter: new Date(Date.UTC(9999, 11, 31, 23, 59, 59)) }),
      "serial 80 (leading zero)": baseSpec({ serial: "80" }),
      "serial ff…": baseSpec({ serial: "ff".repeat(20) }),
      "serial 7f…": baseSpec({ serial: `7f${"ff".repeat(15)}` }),
      "serial 01": baseSpec({ serial: "01" }),
    };
    for (const [label, spec] of Object.entries(cases)) {
      assertLeafMatchesOracle(ecCa, spec, await buildLeaf(ecCa, spec, URLS), label);
    }
  });

  test("names whose encodings cross the DER length forms (127/128, 255/256 bytes at every nesting level)", async () => {
    // One name of n characters: as n grows byte by byte, each enclosing TLV (the
    // name, the GeneralNames or RDN, the OCTET STRING, the Extension, the Name)
    // crosses from one length octet to two, then to three.
    for (let n = 100; n <= 300; n++) {
      const spec = baseSpec({ dnsNames: [`${"a".repeat(n - 5)}.test`], subject: [{ O: ["o".repeat(n)] }] });
      assertLeafMatchesOracle(ecCa, spec, await buildLeaf(ecCa, spec, URLS), `names of ${n} characters`);
    }
  });

  test("a SAN extension longer than 65535 bytes (four length octets)", async () => {
    const dnsNames = Array.from(
      { length: 1100 },
      (_, i) => `${String(i).padStart(8, "0")}-${"x".repeat(40)}.example.test`,
    );
    const spec = baseSpec({ commonName: undefined, dnsNames });
    const leaf = await buildLeaf(ecCa, spec, URLS);
    assert.ok(leaf.der.length > 65_536);
    assertLeafMatchesOracle(ecCa, spec, leaf, "a SAN of 1100 names");
  });

  test("derToPem writes what @peculiar/x509's PemConverter writes, plus a newline", () => {
    for (const n of [0, 1, 2, 3, 47, 48, 49, 95, 96, 97, 1000]) {
      const der = Buffer.from(Array.from({ length: n }, (_, i) => (i * 37) & 0xff));
      for (const label of ["CERTIFICATE", "X509 CRL"]) {
        assert.equal(derToPem(der, label), `${x509.PemConverter.encode(der, label)}\n`, `${n} bytes, ${label}`);
        assert.equal(derToPem(new Uint8Array(der).buffer, label), derToPem(der, label));
      }
    }
  });

  test("objectIdentifier encodes as the schema does, and refuses what is no OID", () => {
    const oids = [...Object.values(NAME_OIDS), "2.5.29.17", "1.2.840.113549.1.1.11", "1.3.6.1.5.5.7.3.1"];
    for (const oid of [...oids, "0.39", "1.0", "2.999.3", "2.5.4.4294967296", "1.2.127.128.16383.16384"]) {
      const ours = objectIdentifier(oid);
      // The schema writes OIDs inside something: a SEQUENCE OF one OID (short enough for a one-byte length).
      const schema = Buffer.from(AsnConvert.serialize(new asn1X509.ExtendedKeyUsage([oid])));
      assert.equal(
        Buffer.concat([Buffer.from([0x30, ours.length]), ours]).toString("hex"),
        schema.toString("hex"),
        oid,
      );
    }
    for (const bad of ["", "1", "3.1", "1.40", "1..2", "1.2.", "1.-2", "1.02", "a.b"]) {
      assert.throws(() => objectIdentifier(bad), CustosError, bad);
    }
  });
});

describe("the DER around a leaf's key and signature", () => {
  test("an ECDSA r‖s becomes the DER node:crypto verifies and @peculiar/x509 writes, leading zeros and high bits included", () => {
    const formatter = new x509.AsnEcSignatureFormatter();
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const shapes = new Set<string>();
    for (let i = 0; i < 600; i++) {
      const data = Buffer.from(`message ${i}`);
      const raw = sign("sha256", data, { key: privateKey, dsaEncoding: "ieee-p1363" });
      const der = ecdsaSignatureDer(raw);
      assert.ok(verify("sha256", data, publicKey, der), `signature ${i} verifies as DER`);
      const oracle = formatter.toAsnSignature({ name: "ECDSA", hash: "SHA-256" } as never, raw);
      assert.ok(oracle !== null);
      assert.deepEqual(der, Buffer.from(oracle));
      // r and s of 31, 32 or 33 DER bytes: short, plain or padded with a zero byte.
      shapes.add(`${der[3]}/${der[5 + (der[3] ?? 0)]}`);
    }
    assert.ok(shapes.size >= 3, `shapes seen: ${[...shapes].join(" ")}`);
    assert.throws(() => ecdsaSignatureDer(Buffer.alloc(63)), CustosError);
  });

  test("subjectPublicKeyBits is the key's BIT STRING content, and refuses what is no SPKI", () => {
    const keys = {
      ec: generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey,
      ed25519: generateKeyPairSync("ed25519").publicKey,
      rsa: generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey,
    };
    for (const [type, publicKey] of Object.entries(keys)) {
      const spki = publicKey.export({ format: "der", type: "spki" });
      const oracle = AsnConvert.parse(spki, asn1X509.SubjectPublicKeyInfo).subjectPublicKey;
      assert.deepEqual(subjectPublicKeyBits(spki), Buffer.from(oracle), type);
      assert.throws(() => subjectPublicKeyBits(Buffer.concat([spki, Buffer.of(0)])), `${type}: trailing byte`);
      assert.throws(() => subjectPublicKeyBits(spki.subarray(0, spki.length - 1)), `${type}: truncated`);
    }
  });
});

describe("IPv6 addresses that end in a dotted IPv4 address", () => {
  // The schema encoding wrote wrong bytes for these (it read "10.0.0.1" as the hex
  // group 0x10), so the oracle here is what openssl and node read back.
  test("encode as the 16 bytes of the address", async () => {
    const cases: Record<string, string> = {
      "::ffff:10.0.0.1": "0:0:0:0:0:FFFF:A00:1",
      "::ffff:0.0.0.0": "0:0:0:0:0:FFFF:0:0",
      "::1.2.3.4": "0:0:0:0:0:0:102:304",
      "1:2:3:4:5:6:7.8.9.10": "1:2:3:4:5:6:708:90A",
    };
    for (const [ip, printed] of Object.entries(cases)) {
      const canonical = canonicalIpv6(ip);
      const spec = baseSpec({ ipAddresses: [canonical] });
      const leaf = await buildLeaf(ecCa, spec, URLS);
      const path = join(dir, "mapped.pem");
      writeFileSync(path, leaf.pem);
      const text = openssl(["x509", "-noout", "-ext", "subjectAltName", "-in", path]);
      assert.match(text, new RegExp(`IP Address:${printed}\\b`), ip);
      const san = new x509.X509Certificate(leaf.der).getExtension(x509.SubjectAlternativeNameExtension);
      const ipName = san?.names.items.find((n) => n.type === "ip");
      assert.equal(canonicalIpv6(ipName?.value ?? ""), canonical, ip);
    }
  });
});

describe("what buildLeaf cannot encode, it refuses", () => {
  const refuses = async (spec: LeafSpec, pattern: RegExp) =>
    assert.rejects(buildLeaf(ecCa, spec, URLS), (e: unknown) => {
      assert.ok(e instanceof CustosError, `expected CustosError, got ${String(e)}`);
      assert.equal(e.code, "internal");
      assert.match(e.message, pattern);
      return true;
    });

  test("an IP text that is no IP address", async () => {
    for (const ip of [
      "not-an-ip",
      "1.2.3",
      "1.2.3.4.5",
      "256.1.1.1",
      "01.2.3.4",
      "1:2:3",
      "a::b::c",
      "fe80::1%eth0",
      "",
    ]) {
      await refuses(baseSpec({ ipAddresses: [ip] }), /not an IP address/);
    }
  });

  test("a DNS name or URI that is not ASCII (IA5String)", async () => {
    await refuses(baseSpec({ dnsNames: ["bücher.example"] }), /not an IA5String/);
    await refuses(baseSpec({ uris: ["https://bücher.example/"] }), /not an IA5String/);
  });

  test("a subject value with a lone surrogate, an unknown attribute", async () => {
    await refuses(baseSpec({ subject: [{ O: ["a\ud800b"] }] }), /lone surrogate/);
    await refuses(baseSpec({ commonName: "x\udc00" }), /lone surrogate/);
    await refuses(baseSpec({ subject: [{ X: ["x"] }] }), /unsupported name attribute X/);
    await refuses(baseSpec({ subject: [{ constructor: ["x"] }] }), /unsupported name attribute constructor/);
  });

  test("a serial that is not whole hex bytes or starts with a zero byte", async () => {
    for (const serial of ["", "a", "abc", "zz", "00", "00ab", "1a2b3g"]) {
      await refuses(baseSpec({ serial }), /not a serial/);
    }
  });

  test("a time outside 1950–9999", async () => {
    await refuses(baseSpec({ notAfter: new Date(Date.UTC(10_000, 0, 1)) }), /X\.509 time/);
    await refuses(baseSpec({ notBefore: new Date(Date.UTC(1949, 11, 31, 23, 59, 59)) }), /X\.509 time/);
    await refuses(baseSpec({ notAfter: new Date(Number.NaN) }), /X\.509 time/);
  });
});

describe("real tools read the leaves", () => {
  test("openssl verifies them under their CA and prints their fields", async () => {
    const leaves: Array<{ ca: CaSigner; spec: LeafSpec; expect: RegExp[] }> = [
      {
        ca: ecCa,
        spec: baseSpec({
          serial: "9a00112233445566778899aabbccddee",
          dnsNames: ["svc.example.test", "*.svc.example.test"],
          ipAddresses: ["10.1.2.3", "2001:db8::7"],
          uris: ["spiffe://example.test/ns/a/sa/b"],
        }),
        expect: [
          /Serial Number:\s*\n\s*9a:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee/,
          /Subject: CN\s?=\s?svc\.example\.test\n/,
          /X509v3 Subject Alternative Name: \n\s*DNS:svc\.example\.test, DNS:\*\.svc\.example\.test, IP Address:10\.1\.2\.3, IP Address:2001:DB8:0:0:0:0:0:7, URI:spiffe:\/\/example\.test\/ns\/a\/sa\/b\n/,
          /X509v3 Subject Key Identifier: \n/,
        ],
      },
      {
        ca: rsaCa,
        spec: baseSpec({ commonName: undefined, dnsNames: ["x.example.test"] }),
        expect: [/Subject: \n/, /X509v3 Subject Alternative Name: critical\n\s*DNS:x\.example\.test\n/],
      },
      {
        ca: ecCa,
        spec: baseSpec({
          subject: [{ OU: ["app:web", "space:prod"] }, { O: ["Zürich 日本 😀"] }],
          notAfter: new Date(Date.UTC(2051, 2, 4, 5, 6, 7)),
        }),
        expect: [
          /Not After : Mar {2}4 05:06:07 2051 GMT/,
          /Subject: CN\s?=\s?svc\.example\.test, OU\s?=\s?app:web \+ OU\s?=\s?space:prod, O\s?=\s?Zürich 日本 😀\n/,
        ],
      },
    ];
    const caPaths = new Map<CaSigner, string>();
    for (const ca of [ecCa, rsaCa]) {
      const path = join(dir, `ca${caPaths.size}.pem`);
      writeFileSync(path, derToPem(ca.certificate.rawData));
      caPaths.set(ca, path);
    }
    for (const [i, { ca, spec, expect }] of leaves.entries()) {
      const leaf = await buildLeaf(ca, spec, URLS);
      const path = join(dir, `leaf${i}.pem`);
      writeFileSync(path, leaf.pem);
      const caPath = caPaths.get(ca) ?? "";
      assert.match(openssl(["verify", "-CAfile", caPath, path]), /: OK\n$/, `leaf ${i}`);
      const text = openssl(["x509", "-noout", "-text", "-nameopt", "utf8,sep_comma_plus_space", "-in", path]);
      for (const pattern of expect) assert.match(text, pattern, `leaf ${i}`);
    }
  });
});
