import "reflect-metadata";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, webcrypto } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
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
