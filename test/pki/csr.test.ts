import "reflect-metadata";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, webcrypto } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import * as x509 from "@peculiar/x509";
import { CustosError, type ErrorCode } from "../../src/errors/index.js";
import { keyTypeOf, MAX_CSR_BYTES, parseCsr } from "../../src/pki/csr.js";
import { generateCallerKey } from "../../src/pki/keys.js";
import { KEY_TYPES, type KeyType } from "../../src/pki/role.js";

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "custos-csr-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function openssl(args: string[], input?: string | Buffer): Buffer {
  const r = spawnSync("openssl", args, { input, maxBuffer: 1 << 24 });
  assert.equal(r.status, 0, `openssl ${args.join(" ")}: ${r.stderr?.toString()}`);
  return r.stdout;
}

let counter = 0;
interface MadeCsr {
  readonly pem: string;
  /** The key's SPKI DER as openssl writes it. */
  readonly spki: Buffer;
}

/** A CSR made by the real `openssl req`; `newkey` is its -newkey argument (plus -pkeyopt when given). */
function opensslCsr(newkey: string[], subject: string, san?: string): MadeCsr {
  const n = ++counter;
  const keyFile = join(dir, `k${n}.pem`);
  const csrFile = join(dir, `r${n}.csr`);
  const args = ["req", "-new", ...newkey, "-nodes", "-keyout", keyFile, "-subj", subject, "-out", csrFile];
  if (san !== undefined) args.push("-addext", `subjectAltName=${san}`);
  openssl(args);
  const spki = openssl(["pkey", "-in", keyFile, "-pubout", "-outform", "DER"]);
  return { pem: readFileSync(csrFile, "utf8"), spki };
}

async function rejectsCode(p: Promise<unknown>, code: ErrorCode, pattern?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof CustosError, `expected CustosError, got ${String(e)}`);
    assert.equal(e.code, code, `code for: ${e.message}`);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

function derOf(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""), "base64");
}

function pemOf(der: Buffer, label = "CERTIFICATE REQUEST"): string {
  const lines = der.toString("base64").match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

const SAN = "DNS:api.example.com,DNS:*.apps.example.com,IP:10.0.0.1,IP:2001:DB8:0:0:1:0:0:1,URI:spiffe://custos/ns/a";
const SAN_READ = {
  dnsNames: ["api.example.com", "*.apps.example.com"],
  ipAddresses: ["10.0.0.1", "2001:db8::1:0:0:1"],
  uris: ["spiffe://custos/ns/a"],
};

describe("parseCsr: openssl requests", () => {
  const cases: { keyType: KeyType; newkey: string[] }[] = [
    { keyType: "ec-p256", newkey: ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] },
    { keyType: "ec-p384", newkey: ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"] },
    { keyType: "ed25519", newkey: ["-newkey", "ed25519"] },
    { keyType: "rsa-2048", newkey: ["-newkey", "rsa:2048"] },
  ];
  for (const c of cases) {
    test(`${c.keyType}: key type, key, CN and every SAN read exactly`, async () => {
      const made = opensslCsr(c.newkey, "/CN=api.example.com/O=Acme", SAN);
      const parsed = await parseCsr(made.pem);
      assert.deepEqual(parsed, {
        publicKey: made.spki,
        keyType: c.keyType,
        commonName: "api.example.com",
        ...SAN_READ,
      });
      assert.equal(keyTypeOf(parsed.publicKey), c.keyType);
    });
  }

  test("a request without SANs or CN reads as empty", async () => {
    const made = opensslCsr(["-newkey", "ed25519"], "/O=Acme");
    assert.deepEqual(await parseCsr(made.pem), {
      publicKey: made.spki,
      keyType: "ed25519",
      commonName: undefined,
      dnsNames: [],
      ipAddresses: [],
      uris: [],
    });
  });

  test("names are read as written (normalising them is checkNames' work), IPv4-mapped kept IPv6", async () => {
    const made = opensslCsr(["-newkey", "ed25519"], "/CN=API.Example.COM", "DNS:API.Example.COM.,IP:::ffff:10.0.0.2");
    const parsed = await parseCsr(made.pem);
    assert.equal(parsed.commonName, "API.Example.COM");
    assert.deepEqual(parsed.dnsNames, ["API.Example.COM."]);
    assert.deepEqual(parsed.ipAddresses, ["::ffff:10.0.0.2"]);
  });

  test("base64 DER, the NEW CERTIFICATE REQUEST label and CRLF line ends are accepted", async () => {
    const made = opensslCsr(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], "/CN=a.example.com");
    const der = derOf(made.pem);
    for (const text of [
      der.toString("base64"),
      pemOf(der, "NEW CERTIFICATE REQUEST"),
      made.pem.replace(/\n/g, "\r\n"),
      `\n\n${made.pem}\n`,
    ]) {
      assert.equal((await parseCsr(text)).commonName, "a.example.com");
    }
  });
});

describe("parseCsr: refusals", () => {
  let good: MadeCsr;
  before(() => {
    good = opensslCsr(
      ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
      "/CN=a.example.com",
      "DNS:a.example.com",
    );
  });

  test("a flipped signature byte is csr_invalid, for EC, Ed25519 and RSA", async () => {
    const others = [
      good,
      opensslCsr(["-newkey", "ed25519"], "/CN=a.example.com"),
      opensslCsr(["-newkey", "rsa:2048"], "/CN=a.example.com"),
    ];
    for (const made of others) {
      const der = derOf(made.pem);
      der[der.length - 2] = (der[der.length - 2] ?? 0) ^ 0x01;
      await rejectsCode(parseCsr(pemOf(der)), "csr_invalid", /signature/);
    }
  });

  test("a changed name under the signature is csr_invalid", async () => {
    const der = derOf(good.pem);
    const at = der.indexOf("a.example.com");
    der.write("b", at);
    await rejectsCode(parseCsr(pemOf(der)), "csr_invalid", /signature/);
  });

  test("garbage, truncation, trailing bytes, other PEM labels and non-strings are csr_invalid", async () => {
    const der = derOf(good.pem);
    const cases: unknown[] = [
      "",
      "hello",
      "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n",
      good.pem.replace(/CERTIFICATE REQUEST/g, "CERTIFICATE"),
      `${good.pem}${good.pem}`,
      pemOf(der.subarray(0, der.length - 10)),
      pemOf(Buffer.concat([der, Buffer.from([0, 0])])),
      pemOf(Buffer.from("30820000", "hex")),
      der.toString("base64").slice(0, -1),
      Buffer.alloc(64, 0x30).toString("base64"),
      undefined,
      der,
    ];
    for (const text of cases) await rejectsCode(parseCsr(text as string), "csr_invalid");
  });

  test("more than 64 KiB is csr_invalid before any parsing", async () => {
    const padded = `${good.pem}${" ".repeat(MAX_CSR_BYTES)}`;
    await rejectsCode(parseCsr(padded), "csr_invalid", /64 KiB/);
    await rejectsCode(parseCsr("é".repeat(MAX_CSR_BYTES / 2 + 1)), "csr_invalid", /64 KiB/);
  });

  test("keys Custos does not certify are csr_invalid naming the key", async () => {
    const p521 = opensslCsr(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"], "/CN=a.example.com");
    await rejectsCode(parseCsr(p521.pem), "csr_invalid", /secp521r1/);
    const rsa1024 = opensslCsr(["-newkey", "rsa:1024"], "/CN=a.example.com");
    await rejectsCode(parseCsr(rsa1024.pem), "csr_invalid", /1024-bit rsa/);
    const params = join(dir, "dsa-params.pem");
    openssl(["genpkey", "-genparam", "-algorithm", "DSA", "-pkeyopt", "dsa_paramgen_bits:1024", "-out", params]);
    const dsa = opensslCsr(["-newkey", `dsa:${params}`], "/CN=a.example.com");
    await rejectsCode(parseCsr(dsa.pem), "csr_invalid", /dsa/);
  });

  test("a compressed P-256 point reads as ec-p256; a point moved off the curve is csr_invalid", async () => {
    const plainKey = join(dir, "uncompressed.pem");
    const keyFile = join(dir, "compressed.pem");
    openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", plainKey]);
    openssl(["ec", "-in", plainKey, "-conv_form", "compressed", "-out", keyFile]);
    const pem = openssl(["req", "-new", "-key", keyFile, "-subj", "/CN=c.example.com"]).toString();
    const spki = openssl(["pkey", "-in", keyFile, "-pubout", "-outform", "DER"]);
    assert.equal(spki.length, 59, "openssl wrote a compressed point (33 bytes)");
    const parsed = await parseCsr(pem);
    assert.equal(parsed.keyType, "ec-p256");
    // The DER path: node:crypto's export, which keeps the compressed form openssl wrote.
    assert.deepEqual(
      parsed.publicKey,
      createPublicKey({ key: spki, format: "der", type: "spki" }).export({ format: "der", type: "spki" }),
    );
    assert.deepEqual(parsed.publicKey, spki);
    assert.deepEqual(
      createPublicKey({ key: parsed.publicKey, format: "der", type: "spki" }).export({ format: "jwk" }),
      createPublicKey({ key: spki, format: "der", type: "spki" }).export({ format: "jwk" }),
    );

    const plain = opensslCsr(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], "/CN=a.example.com");
    const der = derOf(plain.pem);
    const at = der.indexOf(plain.spki.subarray(-65));
    assert.ok(at > 0);
    der[at + 64] = (der[at + 64] ?? 0) ^ 1; // the last byte of y
    await rejectsCode(parseCsr(pemOf(der)), "csr_invalid", /does not certify/);
  });

  test("an email SAN is csr_invalid (it would vanish from the certificate unnoticed)", async () => {
    const made = opensslCsr(["-newkey", "ed25519"], "/CN=a.example.com", "DNS:a.example.com,email:ops@example.com");
    await rejectsCode(parseCsr(made.pem), "csr_invalid", /SAN of type email \(ops@example\.com\)/);
  });

  test("two common names are csr_invalid", async () => {
    const made = opensslCsr(["-newkey", "ed25519"], "/CN=a.example.com/CN=b.example.com");
    await rejectsCode(parseCsr(made.pem), "csr_invalid", /more than one common name/);
  });

  test("an IP SAN that is address and mask (8 bytes) is csr_invalid", async () => {
    const alg = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
    const keys = (await webcrypto.subtle.generateKey(alg, false, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
    const csr = await x509.Pkcs10CertificateRequestGenerator.create(
      {
        name: "CN=a.example.com",
        keys,
        signingAlgorithm: alg,
        extensions: [new x509.SubjectAlternativeNameExtension([{ type: "ip", value: "10.0.0.0/8" }])],
      },
      webcrypto as webcrypto.Crypto,
    );
    await rejectsCode(parseCsr(csr.toString("pem")), "csr_invalid", /IP SAN/);
  });
});

/** openssl's own reading of a request's subject, as UTF-8 text ("CN=..."). */
function opensslSubject(pem: string): string {
  return openssl(["req", "-noout", "-subject", "-nameopt", "utf8,-esc_msb,sname"], pem)
    .toString()
    .trim()
    .replace(/^subject=/, "");
}

/** A CSR made by `openssl req` from a config file: how a CN in a chosen string type (string_mask) is asked for. */
function opensslCsrFromConfig(stringMask: string, commonName: string): string {
  const n = ++counter;
  const config = join(dir, `c${n}.cnf`);
  writeFileSync(
    config,
    `[req]\ndistinguished_name = dn\nstring_mask = ${stringMask}\nutf8 = yes\nprompt = no\n[dn]\nCN = ${commonName}\n`,
  );
  return openssl([
    "req",
    "-new",
    "-newkey",
    "ed25519",
    "-nodes",
    "-keyout",
    join(dir, `k${n}.pem`),
    "-config",
    config,
  ]).toString();
}

/** A DER TLV, written here independently of the reader under test (lengths up to 64 KiB). */
function enc(tag: number, ...parts: Buffer[]): Buffer {
  const content = Buffer.concat(parts);
  const n = content.length;
  const length = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...length]), content]);
}

const hex = (text: string) => Buffer.from(text.replace(/\s+/g, ""), "hex");
const utf8String = (text: string) => enc(0x0c, Buffer.from(text, "utf8"));
const OID = {
  commonName: hex("0603550403"), // 2.5.4.3
  organization: hex("060355040a"), // 2.5.4.10
  challengePassword: hex("06092a864886f70d010907"), // 1.2.840.113549.1.9.7
  extensionRequest: hex("06092a864886f70d01090e"), // 1.2.840.113549.1.9.14
  basicConstraints: hex("0603551d13"), // 2.5.29.19
  subjectAltName: hex("0603551d11"), // 2.5.29.17
  ed25519: hex("06032b6570"), // 1.3.101.112
};
const TRUE = hex("0101ff");

/** A request written here byte by byte, self-signed with an Ed25519 key, so one field at a time can be made wrong. */
interface HandMade {
  version?: Buffer;
  subject?: Buffer;
  spki?: Buffer;
  /** The attributes field whole ([0] IMPLICIT SET OF Attribute), or none at all. */
  attributes?: Buffer | null;
  /** Fields after the attributes, inside CertificationRequestInfo. */
  after?: Buffer[];
}

const handKey = generateKeyPairSync("ed25519");
const handSpki = handKey.publicKey.export({ format: "der", type: "spki" });

function handMadeCsr(parts: HandMade = {}): string {
  const attributes = parts.attributes === undefined ? enc(0xa0) : parts.attributes;
  const info = enc(
    0x30,
    parts.version ?? hex("020100"),
    parts.subject ?? subjectOf(utf8String("a.example.com")),
    parts.spki ?? handSpki,
    ...(attributes === null ? [] : [attributes]),
    ...(parts.after ?? []),
  );
  const signature = sign(null, info, handKey.privateKey);
  return pemOf(enc(0x30, info, enc(0x30, OID.ed25519), enc(0x03, hex("00"), signature)));
}

/** A subject of one RDN holding a CN with this value (a whole TLV, any string type). */
function subjectOf(commonName: Buffer): Buffer {
  return enc(0x30, enc(0x31, enc(0x30, OID.commonName, commonName)));
}

function extensionRequest(...extensions: Buffer[]): Buffer {
  return enc(0x30, OID.extensionRequest, enc(0x31, enc(0x30, ...extensions)));
}

function sanExtension(...names: Buffer[]): Buffer {
  return enc(0x30, OID.subjectAltName, enc(0x04, enc(0x30, ...names)));
}

const dnsName = (name: string) => enc(0x82, Buffer.from(name, "latin1"));
/** A short-form TLV rewritten with its length in the long form: the same value, not DER. */
const longForm = (tlv: Buffer) => Buffer.concat([tlv.subarray(0, 1), hex("81"), tlv.subarray(1)]);

describe("parseCsr: common names in every string type", () => {
  test("openssl's PrintableString, TeletexString, BMPString and UTF8String CNs read as openssl reads them", async () => {
    const cases: [string, string, string][] = [
      ["MASK:0x0002", "Acme Web 2", "PRINTABLESTRING"],
      ["MASK:0x0004", "café ÿ", "T61STRING"],
      ["MASK:0x0800", "café ☃", "BMPSTRING"],
      ["utf8only", "café 😀", "UTF8STRING"],
    ];
    for (const [mask, cn, type] of cases) {
      const pem = opensslCsrFromConfig(mask, cn);
      assert.match(openssl(["asn1parse"], pem).toString("latin1"), new RegExp(`prim: ${type} `), `${type} written`);
      assert.equal(opensslSubject(pem), `CN=${cn}`);
      assert.equal((await parseCsr(pem)).commonName, cn);
    }
  });

  test("IA5String, UniversalString, a BMPString beyond Latin-1 and an empty CN (built by hand) read as openssl reads them", async () => {
    const utf32 = (text: string) =>
      Buffer.concat([...text].map((c) => hex((c.codePointAt(0) ?? 0).toString(16).padStart(8, "0"))));
    const cases: [Buffer, string][] = [
      [enc(0x16, Buffer.from("ops@example.com")), "ops@example.com"],
      [enc(0x1c, utf32("café 😀")), "café 😀"],
      [enc(0x1e, Buffer.from("0063260300e9", "hex")), "c☃é"],
      [utf8String(""), ""],
    ];
    for (const [value, cn] of cases) {
      const pem = handMadeCsr({ subject: subjectOf(value) });
      assert.equal(opensslSubject(pem), `CN=${cn}`);
      assert.equal((await parseCsr(pem)).commonName, cn);
    }
  });

  test("a BMPString CN holding a surrogate pair is csr_invalid: BMPString is UCS-2, and openssl refuses it too", async () => {
    const pem = handMadeCsr({ subject: subjectOf(enc(0x1e, hex("d83dde00"))) });
    const r = spawnSync("openssl", ["req", "-noout", "-subject"], { input: pem });
    assert.notEqual(r.status, 0, "openssl does not read the subject");
    await rejectsCode(parseCsr(pem), "csr_invalid", /subject or extensions do not parse/);
  });

  test("a CN that is no directory string, or malformed text, is csr_invalid", async () => {
    const values = [
      hex("020105"), // INTEGER
      hex("0c02c328"), // UTF-8 cut in a character
      hex("1e03006100"), // odd BMPString
      hex("1e02d83d"), // lone surrogate
      hex("1c0400110000"), // beyond Unicode
      hex("130241e9"), // PrintableString with a Latin-1 byte
      hex("2c030c0141"), // constructed (BER) UTF8String
    ];
    for (const value of values) {
      await rejectsCode(
        parseCsr(handMadeCsr({ subject: subjectOf(value) })),
        "csr_invalid",
        /subject or extensions do not parse/,
      );
    }
  });

  test("the CN is found in any RDN, multi-valued ones included; other attributes are left", async () => {
    const subject = enc(
      0x30,
      enc(0x31, enc(0x30, OID.organization, enc(0x13, Buffer.from("Acme")))),
      enc(0x31, enc(0x30, OID.organization, utf8String("Ops")), enc(0x30, OID.commonName, utf8String("b.example.com"))),
    );
    const pem = handMadeCsr({ subject });
    assert.match(opensslSubject(pem), /CN=b\.example\.com/);
    assert.equal((await parseCsr(pem)).commonName, "b.example.com");
  });
});

describe("parseCsr: hand-made requests, the self-signature re-made", () => {
  test("the baseline is a request openssl verifies, and it reads exactly", async () => {
    const attributes = enc(
      0xa0,
      enc(0x30, OID.challengePassword, enc(0x31, utf8String("secret"))),
      extensionRequest(
        enc(0x30, OID.basicConstraints, TRUE, enc(0x04, enc(0x30))),
        sanExtension(dnsName("a.example.com"), enc(0x87, hex("0a000001")), enc(0x86, Buffer.from("spiffe://x/y"))),
      ),
    );
    const pem = handMadeCsr({ attributes });
    const text = openssl(["req", "-verify", "-noout", "-text"], pem).toString();
    assert.match(text, /DNS:a\.example\.com, IP Address:10\.0\.0\.1, URI:spiffe:\/\/x\/y/);
    assert.match(text, /challengePassword/);
    assert.deepEqual(await parseCsr(pem), {
      publicKey: handSpki,
      keyType: "ed25519",
      commonName: "a.example.com",
      dnsNames: ["a.example.com"],
      ipAddresses: ["10.0.0.1"],
      uris: ["spiffe://x/y"],
    });
  });

  test("a critical SAN, empty attributes sets and an empty subject are read as such", async () => {
    const attributes = enc(
      0xa0,
      enc(0x30, OID.challengePassword, enc(0x31)),
      extensionRequest(enc(0x30, OID.subjectAltName, TRUE, enc(0x04, enc(0x30, dnsName("c.example.com"))))),
    );
    const parsed = await parseCsr(handMadeCsr({ subject: enc(0x30), attributes }));
    assert.equal(parsed.commonName, undefined);
    assert.deepEqual(parsed.dnsNames, ["c.example.com"]);
  });

  test("wrong structure in the request is csr_invalid, not a signature error", async () => {
    const spkiContent = handSpki.subarray(2);
    const cases: [string, HandMade][] = [
      ["version 1", { version: hex("020101") }],
      ["version 0 written in two bytes", { version: hex("02020000") }],
      ["a byte after the SPKI's BIT STRING", { spki: enc(0x30, spkiContent, hex("0500")) }],
      [
        "a field after the AttributeTypeAndValue's value",
        { subject: enc(0x30, enc(0x31, enc(0x30, OID.commonName, utf8String("a"), hex("0500")))) },
      ],
      ["an RDN that is a SEQUENCE", { subject: enc(0x30, enc(0x30, enc(0x30, OID.commonName, utf8String("a")))) }],
      ["a subject length in the long form", { subject: longForm(subjectOf(utf8String("a.example.com"))) }],
      ["attributes as a universal SET", { attributes: enc(0x31) }],
      ["no attributes field", { attributes: null }],
      ["a field after the attributes", { after: [hex("0500")] }],
      [
        "an attribute whose values are no SET",
        { attributes: enc(0xa0, enc(0x30, OID.challengePassword, utf8String("x"))) },
      ],
      [
        "an attribute value of indefinite length",
        { attributes: enc(0xa0, enc(0x30, OID.challengePassword, enc(0x31, hex("3080 0c0141 0000")))) },
      ],
      [
        "an attribute value running out of its SET",
        { attributes: enc(0xa0, enc(0x30, OID.challengePassword, enc(0x31, hex("0c05 41")))) },
      ],
      ["an OID padded with 0x80", { attributes: enc(0xa0, enc(0x30, hex("06042a80864886"), enc(0x31))) }],
    ];
    for (const [what, parts] of cases) {
      await rejectsCode(parseCsr(handMadeCsr(parts)), "csr_invalid", /does not parse as PKCS#10/).catch(
        (e: unknown) => {
          throw new Error(`${what}: ${String(e)}`);
        },
      );
    }
  });

  test("wrong structure in the extensions is csr_invalid", async () => {
    const ok = dnsName("a.example.com");
    const cases: [string, Buffer][] = [
      [
        "a field after extnValue",
        extensionRequest(enc(0x30, OID.subjectAltName, enc(0x04, enc(0x30, ok)), hex("0500"))),
      ],
      [
        "bytes after GeneralNames in the SAN",
        extensionRequest(enc(0x30, OID.subjectAltName, enc(0x04, enc(0x30, ok), hex("00")))),
      ],
      [
        "critical written 0x01",
        extensionRequest(enc(0x30, OID.subjectAltName, hex("010101"), enc(0x04, enc(0x30, ok)))),
      ],
      ["extnValue as a SEQUENCE", extensionRequest(enc(0x30, OID.subjectAltName, enc(0x30, enc(0x30, ok))))],
      ["Extensions as a SET", enc(0x30, OID.extensionRequest, enc(0x31, enc(0x31, sanExtension(ok))))],
      ["a GeneralName tag [9]", extensionRequest(sanExtension(enc(0x89, hex("00"))))],
      ["a constructed dNSName", extensionRequest(sanExtension(enc(0xa2, enc(0x16, Buffer.from("a")))))],
      ["a dNSName with a Latin-1 byte", extensionRequest(sanExtension(dnsName("é.example.com")))],
      ["a dNSName longer than its SAN", extensionRequest(sanExtension(hex("8205 61")))],
    ];
    for (const [what, attribute] of cases) {
      const pem = handMadeCsr({ attributes: enc(0xa0, attribute) });
      await rejectsCode(parseCsr(pem), "csr_invalid", /subject or extensions do not parse/).catch((e: unknown) => {
        throw new Error(`${what}: ${String(e)}`);
      });
    }
  });

  test("two extensionRequest attributes each asking a SAN are more than one SAN", async () => {
    const san = sanExtension(dnsName("a.example.com"));
    const pem = handMadeCsr({ attributes: enc(0xa0, extensionRequest(san), extensionRequest(san)) });
    await rejectsCode(parseCsr(pem), "csr_invalid", /more than one subjectAltName/);
  });

  test("IP SANs of other lengths are csr_invalid, shown as openssl's name-constraint form or in hex", async () => {
    const cases: [Buffer, RegExp][] = [
      [hex("0a00000001"), /IP SAN that is no IP address \(0a00000001\)/],
      [hex(""), /IP SAN that is no IP address \(\)/],
      [hex("0a000000 ff000000"), /IP SAN that is no IP address \(10\.0\.0\.0\/8\)/],
      [Buffer.concat([hex("20010db8"), Buffer.alloc(12), hex("ffffffff"), Buffer.alloc(12)]), /\(2001:db8::\/32\)/],
    ];
    for (const [bytes, pattern] of cases) {
      const pem = handMadeCsr({ attributes: enc(0xa0, extensionRequest(sanExtension(enc(0x87, bytes)))) });
      await rejectsCode(parseCsr(pem), "csr_invalid", pattern);
    }
  });
});

describe("parseCsr: malformed DER around a real request", () => {
  let good: MadeCsr;
  let der: Buffer;
  before(() => {
    good = opensslCsr(
      ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
      "/CN=a.example.com",
      "DNS:a.example.com",
    );
    der = derOf(good.pem);
    assert.equal(der[1], 0x81, "openssl wrote a one-byte long-form length");
  });

  const content = () => der.subarray(3);

  test("indefinite length, non-minimal length, length past the end, a wrong outer tag: does not parse", async () => {
    const texts = [
      Buffer.concat([hex("3080"), content(), hex("0000")]),
      Buffer.concat([hex("308200"), der.subarray(2)]),
      Buffer.concat([hex("3081"), Buffer.from([content().length + 1]), content()]),
      Buffer.concat([hex("3181"), der.subarray(2)]),
    ];
    for (const bytes of texts) await rejectsCode(parseCsr(pemOf(bytes)), "csr_invalid", /does not parse as PKCS#10/);
  });

  test("bytes after the request are their own error", async () => {
    await rejectsCode(parseCsr(pemOf(Buffer.concat([der, hex("00")]))), "csr_invalid", /bytes after its end/);
  });

  test("cut at every byte, the request is csr_invalid (never another error, never a crash)", async () => {
    for (let length = 0; length < der.length; length++) {
      await rejectsCode(
        parseCsr(pemOf(der.subarray(0, length))),
        "csr_invalid",
        /does not parse as PKCS#10|neither a PEM CERTIFICATE REQUEST/,
      );
    }
  });

  test("with any one byte changed, the request is csr_invalid", async () => {
    for (let at = 0; at < der.length; at++) {
      const changed = Buffer.from(der);
      changed[at] = (changed[at] ?? 0) ^ 0xff;
      await rejectsCode(parseCsr(pemOf(changed)), "csr_invalid").catch((e: unknown) => {
        throw new Error(`byte ${at}: ${String(e)}`);
      });
    }
  });
});

describe("parseCsr: extensions, attributes and signature algorithms openssl writes", () => {
  test("a request with several extensions and attributes still reads its SANs", async () => {
    const n = ++counter;
    const config = join(dir, `c${n}.cnf`);
    writeFileSync(
      config,
      [
        "[req]",
        "distinguished_name = dn",
        "attributes = attrs",
        "prompt = no",
        "[dn]",
        "CN = a.example.com",
        "O = Acme",
        "[attrs]",
        "challengePassword = a secret",
        "unstructuredName = Acme unit",
        "",
      ].join("\n"),
    );
    const pem = openssl([
      "req",
      "-new",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-keyout",
      join(dir, `k${n}.pem`),
      "-config",
      config,
      "-addext",
      "basicConstraints=critical,CA:FALSE",
      "-addext",
      "keyUsage=critical,digitalSignature",
      "-addext",
      "extendedKeyUsage=serverAuth,clientAuth",
      "-addext",
      "subjectAltName=DNS:a.example.com,IP:10.0.0.1,URI:spiffe://custos/a",
      "-addext",
      "1.2.3.4=ASN1:UTF8String:an extension of no known kind",
    ]).toString();
    const text = openssl(["req", "-noout", "-text"], pem).toString();
    assert.match(text, /challengePassword/);
    assert.match(text, /unstructuredName/);
    assert.match(text, /TLS Web Server Authentication/);
    const parsed = await parseCsr(pem);
    assert.equal(parsed.commonName, "a.example.com");
    assert.deepEqual(parsed.dnsNames, ["a.example.com"]);
    assert.deepEqual(parsed.ipAddresses, ["10.0.0.1"]);
    assert.deepEqual(parsed.uris, ["spiffe://custos/a"]);
  });

  test("SANs of other types are refused with the type's name", async () => {
    const cases: [string, RegExp][] = [
      ["RID:1.2.840.113549.1.9.14", /SAN of type registeredId \(1\.2\.840\.113549\.1\.9\.14\)/],
      ["otherName:1.3.6.1.4.1.311.20.2.3;UTF8:a@example.com", /SAN of type otherName;/],
    ];
    for (const [san, pattern] of cases) {
      const made = opensslCsr(["-newkey", "ed25519"], "/CN=a.example.com", `DNS:a.example.com,${san}`);
      await rejectsCode(parseCsr(made.pem), "csr_invalid", pattern);
    }
  });

  test("SHA-384 and SHA-512 signatures (ECDSA, RSA) verify; SHA-1 and RSA-PSS are named and refused", async () => {
    const ecKey = join(dir, "sig-ec.pem");
    const rsaKey = join(dir, "sig-rsa.pem");
    openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", ecKey]);
    openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", rsaKey]);
    const request = (key: string, ...options: string[]) =>
      openssl(["req", "-new", "-key", key, "-subj", "/CN=s.example.com", ...options]).toString();
    for (const key of [ecKey, rsaKey]) {
      for (const digest of ["-sha256", "-sha384", "-sha512"]) {
        assert.equal((await parseCsr(request(key, digest))).commonName, "s.example.com");
      }
    }
    await rejectsCode(parseCsr(request(ecKey, "-sha1")), "csr_invalid", /signed with 1\.2\.840\.10045\.4\.1,/);
    await rejectsCode(parseCsr(request(rsaKey, "-sha1")), "csr_invalid", /signed with 1\.2\.840\.113549\.1\.1\.5,/);
    const pss = request(rsaKey, "-sigopt", "rsa_padding_mode:pss");
    await rejectsCode(parseCsr(pss), "csr_invalid", /signed with 1\.2\.840\.113549\.1\.1\.10,/);
  });
});

describe("keyTypeOf and generateCallerKey", () => {
  for (const keyType of KEY_TYPES) {
    test(`${keyType}: the generated key is what keyTypeOf says, and its halves belong together`, async () => {
      const { publicKey, privateKeyPem } = await generateCallerKey(keyType);
      assert.equal(keyTypeOf(publicKey), keyType);
      assert.match(privateKeyPem, /^-----BEGIN PRIVATE KEY-----\n/);
      const priv = createPrivateKey(privateKeyPem);
      // openssl, independently, derives the same public key from the private one.
      assert.deepEqual(openssl(["pkey", "-pubout", "-outform", "DER"], privateKeyPem), publicKey);
      const pub = createPublicKey({ key: publicKey, format: "der", type: "spki" });
      const hash = keyType === "ed25519" ? null : "sha256";
      const message = Buffer.from(`custos ${keyType}`);
      const signature = sign(hash, message, priv);
      assert.equal(verify(hash, message, pub, signature), true);
      assert.equal(verify(hash, Buffer.from("other"), pub, signature), false);
    });
  }

  test("two generated keys differ", async () => {
    const [a, b] = await Promise.all([generateCallerKey("ec-p256"), generateCallerKey("ec-p256")]);
    assert.notDeepEqual(a.publicKey, b.publicKey);
  });

  test("anything else is undefined: other curves and sizes, X25519, RSA-PSS, garbage", () => {
    const spki = (k: { publicKey: import("node:crypto").KeyObject }) =>
      k.publicKey.export({ type: "spki", format: "der" });
    assert.equal(keyTypeOf(spki(generateKeyPairSync("ec", { namedCurve: "P-521" }))), undefined);
    assert.equal(keyTypeOf(spki(generateKeyPairSync("ec", { namedCurve: "secp256k1" }))), undefined);
    assert.equal(keyTypeOf(spki(generateKeyPairSync("rsa", { modulusLength: 1024 }))), undefined);
    assert.equal(keyTypeOf(spki(generateKeyPairSync("rsa-pss", { modulusLength: 2048 }))), undefined);
    assert.equal(keyTypeOf(spki(generateKeyPairSync("x25519"))), undefined);
    assert.equal(keyTypeOf(spki(generateKeyPairSync("ed448"))), undefined);
    assert.equal(keyTypeOf(Buffer.from("garbage")), undefined);
    assert.equal(keyTypeOf(Buffer.alloc(0)), undefined);
  });
});

test("the test CSR files are real openssl output", () => {
  // Guards the oracle: if openssl were silently missing -addext support, every SAN assertion above would be moot.
  const made = opensslCsr(["-newkey", "ed25519"], "/CN=x.example.com", "DNS:x.example.com");
  const text = openssl(["req", "-noout", "-text"], made.pem).toString();
  assert.match(text, /DNS:x\.example\.com/);
});
