import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, generateKeyPairSync } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { CustosError } from "../../src/errors/index.js";
import {
  authorizedKeyLine,
  MAX_KEY_LINE,
  parsePublicKeyBlob,
  parsePublicKeyLine,
  type SubjectKey,
  sshFingerprint,
  sshPublicKeyFromSpki,
} from "../../src/ssh-ca/keys.js";
import { SshReader, SshWriter } from "../../src/ssh-ca/wire.js";

// Oracles: ssh-keygen makes the keys and prints their fingerprints and sizes, and
// converts between PKCS#8/SPKI PEM and OpenSSH lines; openssl prints raw Ed25519 keys.

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "custos-ssh-keys-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function run(cmd: string, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(cmd: string, args: string[]): string {
  const r = run(cmd, args);
  assert.equal(r.status, 0, `${cmd} ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

let counter = 0;
/** A key made by ssh-keygen; returns the .pub line and its path. */
function sshKeygen(type: string, bits?: number): { line: string; pub: string } {
  const file = join(dir, `k${++counter}`);
  ok("ssh-keygen", [
    "-q",
    "-t",
    type,
    ...(bits ? ["-b", String(bits)] : []),
    "-N",
    "",
    "-C",
    `test key ${counter}`,
    "-f",
    file,
  ]);
  return { line: readFileSync(`${file}.pub`, "utf8").trim(), pub: `${file}.pub` };
}

/** `ssh-keygen -l -E sha256`: "<bits> SHA256:<fp> <comment> (<TYPE>)". */
function keygenFingerprint(pub: string): { bits: number; fingerprint: string; comment: string; kind: string } {
  const out = ok("ssh-keygen", ["-l", "-E", "sha256", "-f", pub]).trim();
  const m = /^(\d+) (SHA256:\S+) (.*) \((\w+)\)$/.exec(out);
  assert.ok(m, `unexpected ssh-keygen -l output: ${out}`);
  return { bits: Number(m[1]), fingerprint: m[2] as string, comment: m[3] as string, kind: m[4] as string };
}

function write(name: string, data: string | Buffer): string {
  const path = join(dir, name);
  writeFileSync(path, data);
  return path;
}

function refusedWith(fn: () => unknown, pattern: RegExp): CustosError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof CustosError, `expected CustosError, got ${String(e)}`);
    assert.equal(e.code, "invalid_request");
    assert.match(e.message, pattern);
    return e;
  }
  assert.fail("expected a refusal");
}

const SUBJECTS = [
  { type: "ed25519", bits: undefined, sshType: "ssh-ed25519", family: "ed25519", size: 256, kind: "ED25519" },
  { type: "ecdsa", bits: 256, sshType: "ecdsa-sha2-nistp256", family: "ecdsa", size: 256, kind: "ECDSA" },
  { type: "ecdsa", bits: 384, sshType: "ecdsa-sha2-nistp384", family: "ecdsa", size: 384, kind: "ECDSA" },
  { type: "ecdsa", bits: 521, sshType: "ecdsa-sha2-nistp521", family: "ecdsa", size: 521, kind: "ECDSA" },
  { type: "rsa", bits: 2048, sshType: "ssh-rsa", family: "rsa", size: 2048, kind: "RSA" },
  { type: "rsa", bits: 3072, sshType: "ssh-rsa", family: "rsa", size: 3072, kind: "RSA" },
] as const;

describe("wire", () => {
  test("mpint strips leading zeros and adds a sign byte when the high bit is set (RFC 4251 examples)", () => {
    const enc = (hex: string) => new SshWriter().mpint(Buffer.from(hex, "hex")).bytes().toString("hex");
    assert.equal(enc(""), "00000000");
    assert.equal(enc("0000"), "00000000");
    assert.equal(enc("09a378f9b2e332a7"), "0000000809a378f9b2e332a7");
    assert.equal(enc("0080"), "000000020080");
    assert.equal(enc("80"), "000000020080");
    assert.equal(enc("000000ff01"), "0000000300ff01");
  });

  test("the reader refuses negative, non-minimal and truncated input and trailing bytes", () => {
    const reader = (hex: string) => new SshReader(Buffer.from(hex, "hex"));
    assert.equal(reader("000000020080").mpint().toString("hex"), "80");
    assert.throws(() => reader("0000000180").mpint(), /negative/);
    assert.throws(() => reader("000000020001").mpint(), /leading zero/);
    assert.throws(() => reader("0000000500").string(), /truncated/);
    assert.throws(() => reader("000000").uint32(), /truncated/);
    const r = reader("00000001610000");
    assert.equal(r.text(), "a");
    assert.throws(
      () => r.end("x"),
      (e: unknown) => e instanceof CustosError && e.code === "invalid_request",
    );
    assert.throws(() => reader("000000026100").text(), /NUL/);
    assert.throws(() => reader("00000001ff").text(), /UTF-8/);
  });

  test("a writer with the exact capacity returns its own buffer; a growing one its contents", () => {
    const w = new SshWriter(4 + 3 + 8);
    const out = w.string("abc").uint64(0xffff_ffff_ffff_ffffn).bytes();
    assert.equal(out.toString("hex"), "00000003616263ffffffffffffffff");
    const g = new SshWriter(16);
    for (let i = 0; i < 100; i++) g.string("xyz");
    assert.equal(g.bytes().length, 700);
    assert.throws(() => new SshWriter().uint64(1n << 64n), /out of range/);
  });
});

describe("parsePublicKeyLine against ssh-keygen", () => {
  for (const s of SUBJECTS) {
    test(`${s.sshType} ${s.size}: type, family, size, fingerprint and line match ssh-keygen`, () => {
      const { line, pub } = sshKeygen(s.type, s.bits);
      const key: SubjectKey = parsePublicKeyLine(line);
      const oracle = keygenFingerprint(pub);
      assert.equal(key.type, s.sshType);
      assert.equal(key.family, s.family);
      assert.equal(key.bits, s.size);
      assert.equal(key.bits, oracle.bits);
      assert.equal(key.fingerprint, oracle.fingerprint);
      assert.equal(oracle.kind, s.kind);
      assert.equal(key.comment, oracle.comment);
      assert.equal(key.fingerprintRaw.length, 32);
      assert.deepEqual(key.fingerprintRaw, createHash("sha256").update(key.blob).digest());
      assert.equal(sshFingerprint(key.blob), oracle.fingerprint);
      assert.equal(key.blob.toString("base64"), line.split(" ")[1]);
      assert.deepEqual(key.fields, key.blob.subarray(4 + s.sshType.length));
      assert.equal(authorizedKeyLine(key.blob, key.comment), line);
      const again = parsePublicKeyBlob(key.blob, "c");
      assert.equal(again.fingerprint, key.fingerprint);
      assert.equal(again.comment, "c");
    });
  }

  test("a line without a comment, and surrounding blanks, parse", () => {
    const { line } = sshKeygen("ed25519");
    const [type, data] = line.split(" ");
    const key = parsePublicKeyLine(`  ${type}\t${data}  \n`);
    assert.equal(key.comment, "");
    assert.equal(authorizedKeyLine(key.blob), `${type} ${data}`);
  });
});

describe("parsePublicKeyLine refusals", () => {
  test("a certificate line is refused as a certificate", () => {
    const ca = sshKeygen("ed25519");
    const subject = sshKeygen("ed25519");
    ok("ssh-keygen", ["-q", "-s", ca.pub.replace(/\.pub$/, ""), "-I", "id", "-n", "a", subject.pub]);
    const certLine = readFileSync(subject.pub.replace(/\.pub$/, "-cert.pub"), "utf8").trim();
    assert.ok(certLine.startsWith("ssh-ed25519-cert-v01@openssh.com "));
    refusedWith(() => parsePublicKeyLine(certLine), /certificate is not accepted/);
    const blob = Buffer.from(certLine.split(" ")[1] as string, "base64");
    refusedWith(() => parsePublicKeyBlob(blob), /certificate is not accepted/);
  });

  test("unknown types are refused, naming only the type", () => {
    const dsa = sshKeygen("dsa");
    const e = refusedWith(() => parsePublicKeyLine(dsa.line), /unsupported key type "ssh-dss"/);
    assert.ok(!e.message.includes(dsa.line.split(" ")[1] as string));
    const sk = `sk-ssh-ed25519@openssh.com ${Buffer.from("x").toString("base64")}`;
    refusedWith(() => parsePublicKeyLine(sk), /unsupported key type "sk-ssh-ed25519@openssh.com"/);
    // A first word that is not a type name is not repeated.
    const secretish = `s3cr3t!value%with$signs ${Buffer.from("x").toString("base64")}`;
    const e2 = refusedWith(() => parsePublicKeyLine(secretish), /unsupported key type \(unrecognised\)/);
    assert.ok(!e2.message.includes("s3cr3t"));
  });

  test("a base64 whose inner type differs from the line's is refused", () => {
    const ed = sshKeygen("ed25519");
    const ec = sshKeygen("ecdsa", 256);
    const mixed = `ssh-ed25519 ${ec.line.split(" ")[1]} comment`;
    refusedWith(() => parsePublicKeyLine(mixed), /not a ssh-ed25519 key/);
    const mixed2 = `ecdsa-sha2-nistp384 ${ec.line.split(" ")[1]}`;
    refusedWith(() => parsePublicKeyLine(mixed2), /not a ecdsa-sha2-nistp384 key/);
    assert.equal(parsePublicKeyLine(ed.line).type, "ssh-ed25519");
  });

  test("an EC point off its curve, or compressed, is refused", () => {
    const { line } = sshKeygen("ecdsa", 256);
    const blob = Buffer.from(line.split(" ")[1] as string, "base64");
    const bad = Buffer.from(blob);
    bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 1; // y changes: off the curve
    refusedWith(() => parsePublicKeyLine(`ecdsa-sha2-nistp256 ${bad.toString("base64")}`), /not a valid point/);
    refusedWith(() => parsePublicKeyBlob(bad), /not a valid point/);
    for (const bits of [384, 521]) {
      const other = Buffer.from(sshKeygen("ecdsa", bits).line.split(" ")[1] as string, "base64");
      assert.equal(parsePublicKeyBlob(other).bits, bits);
      other[other.length - 1] = (other[other.length - 1] as number) ^ 1;
      refusedWith(() => parsePublicKeyBlob(other), /not a valid point/);
    }
    // The same x as a compressed point (OpenSSH never writes those).
    const r = new SshReader(blob);
    r.text();
    r.text();
    const point = r.string();
    const compressed = Buffer.concat([Buffer.of(2 + ((point[64] as number) & 1)), point.subarray(1, 33)]);
    const cblob = new SshWriter().string("ecdsa-sha2-nistp256").string("nistp256").string(compressed).bytes();
    refusedWith(() => parsePublicKeyBlob(cblob), /uncompressed point/);
    // A curve name that doesn't match the type.
    const wrongCurve = new SshWriter().string("ecdsa-sha2-nistp256").string("nistp384").string(point).bytes();
    refusedWith(() => parsePublicKeyBlob(wrongCurve), /different curve/);
  });

  test("impossible RSA keys and short moduli are refused", () => {
    const { line } = sshKeygen("rsa", 2048);
    const blob = Buffer.from(line.split(" ")[1] as string, "base64");
    const r = new SshReader(blob);
    r.text();
    const e = r.mpint();
    const n = r.mpint();
    const rsa = (ee: Buffer, nn: Buffer) => new SshWriter().string("ssh-rsa").mpint(ee).mpint(nn).bytes();
    assert.equal(parsePublicKeyBlob(rsa(e, n)).bits, 2048);
    const even = Buffer.from(n);
    even[even.length - 1] = (even[even.length - 1] as number) & 0xfe;
    refusedWith(() => parsePublicKeyBlob(rsa(e, even)), /not valid/);
    refusedWith(() => parsePublicKeyBlob(rsa(Buffer.of(1), n)), /not valid/);
    refusedWith(() => parsePublicKeyBlob(rsa(Buffer.of(4), n)), /not valid/);
    refusedWith(() => parsePublicKeyBlob(rsa(e, n.subarray(0, 100))), /modulus size 800 is out of range/);
  });

  test("an Ed25519 key of the wrong length and a blob with trailing bytes are refused", () => {
    const { line } = sshKeygen("ed25519");
    const blob = Buffer.from(line.split(" ")[1] as string, "base64");
    refusedWith(() => parsePublicKeyBlob(Buffer.concat([blob, Buffer.of(0)])), /trailing bytes/);
    const short = new SshWriter().string("ssh-ed25519").string(Buffer.alloc(31, 1)).bytes();
    refusedWith(() => parsePublicKeyBlob(short), /32 bytes/);
    refusedWith(() => parsePublicKeyBlob(blob.subarray(0, blob.length - 1)), /truncated/);
  });

  test("junk, PEM blocks, several lines and over-long lines are refused without echoing them", () => {
    const { line } = sshKeygen("ed25519");
    const [type, data] = line.split(" ") as [string, string];
    refusedWith(() => parsePublicKeyLine(""), /'type base64 \[comment\]'/);
    refusedWith(() => parsePublicKeyLine(type), /'type base64 \[comment\]'/);
    refusedWith(() => parsePublicKeyLine(`${type} ${data.slice(0, -3)}!!!`), /not base64/);
    refusedWith(() => parsePublicKeyLine(`${type} ${data.slice(0, 10)}`), /canonical base64|truncated/);
    refusedWith(() => parsePublicKeyLine(`${line}\n${line}`), /exactly one/);
    const pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----";
    const e = refusedWith(() => parsePublicKeyLine(pem), /PEM block/);
    assert.ok(!e.message.includes("b3BlbnNzaC1rZXktdjEAAAAA"));
    refusedWith(() => parsePublicKeyLine(`${line} ${"x".repeat(MAX_KEY_LINE)}`), /longer than 16384/);
    refusedWith(() => parsePublicKeyLine(`from="10.0.0.1" ${line}`), /unsupported key type \(unrecognised\)/);
  });

  test("authorizedKeyLine refuses a comment that would start another line", () => {
    const key = parsePublicKeyLine(sshKeygen("ed25519").line);
    refusedWith(() => authorizedKeyLine(key.blob, "x\nssh-ed25519 AAAA evil"), /line breaks/);
  });
});

describe("sshPublicKeyFromSpki", () => {
  for (const curve of ["P-256", "P-384", "P-521"] as const) {
    test(`EC ${curve}: equals ssh-keygen -i -m PKCS8 and ssh-keygen -l accepts it`, () => {
      const { publicKey } = generateKeyPairSync("ec", { namedCurve: curve });
      const spki = publicKey.export({ format: "der", type: "spki" });
      const blob = sshPublicKeyFromSpki(spki);
      const pem = write(`spki-${curve}.pem`, publicKey.export({ format: "pem", type: "spki" }) as string);
      const converted = ok("ssh-keygen", ["-i", "-m", "PKCS8", "-f", pem]).trim();
      assert.equal(authorizedKeyLine(blob), converted);
      const line = write(`spki-${curve}.pub`, `${authorizedKeyLine(blob, "ca key")}\n`);
      const fp = keygenFingerprint(line);
      assert.equal(fp.fingerprint, sshFingerprint(blob));
      assert.equal(fp.bits, Number(curve.slice(2)));
      assert.equal(parsePublicKeyBlob(blob).type, `ecdsa-sha2-nistp${curve.slice(2)}`);
    });
  }

  test("RSA: equals ssh-keygen -i -m PKCS8", () => {
    const { publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const blob = sshPublicKeyFromSpki(publicKey.export({ format: "der", type: "spki" }));
    const pem = write("spki-rsa.pem", publicKey.export({ format: "pem", type: "spki" }) as string);
    assert.equal(authorizedKeyLine(blob), ok("ssh-keygen", ["-i", "-m", "PKCS8", "-f", pem]).trim());
  });

  test("ssh-keygen's own key survives ssh-keygen -e -m PKCS8 then sshPublicKeyFromSpki unchanged", () => {
    for (const [t, b] of [
      ["ecdsa", 256],
      ["ecdsa", 521],
      ["rsa", 2048],
    ] as const) {
      const { line, pub } = sshKeygen(t, b);
      const pem = ok("ssh-keygen", ["-e", "-m", "PKCS8", "-f", pub]);
      const der = Buffer.from(pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""), "base64");
      assert.equal(authorizedKeyLine(sshPublicKeyFromSpki(der)), line.split(" ").slice(0, 2).join(" "));
    }
  });

  test("Ed25519: ssh-keygen -l accepts it and the key bytes are the ones openssl prints", () => {
    // ssh-keygen 9.2 can't convert Ed25519 PKCS#8 (-i -m PKCS8 says "unsupported pubkey
    // type"), so openssl is the oracle for the raw key; certificate.test.ts has ssh-keygen
    // verify signatures made with such a CA key.
    const { publicKey } = generateKeyPairSync("ed25519");
    const blob = sshPublicKeyFromSpki(publicKey.export({ format: "der", type: "spki" }));
    const pem = write("spki-ed.pem", publicKey.export({ format: "pem", type: "spki" }) as string);
    const text = ok("openssl", ["pkey", "-pubin", "-in", pem, "-text", "-noout"]);
    const hex = (/pub:\s*([0-9a-f:\s]+)/.exec(text)?.[1] ?? "").replace(/[:\s]/g, "");
    assert.equal(hex.length, 64);
    const key = parsePublicKeyBlob(blob);
    assert.equal(key.type, "ssh-ed25519");
    assert.equal(key.fields.subarray(4).toString("hex"), hex);
    const line = write("spki-ed.pub", `${authorizedKeyLine(blob)}\n`);
    const fp = ok("ssh-keygen", ["-l", "-E", "sha256", "-f", line]);
    assert.match(fp, new RegExp(`^256 ${sshFingerprint(blob).replace(/[+/]/g, "\\$&")} no comment \\(ED25519\\)`));
  });

  test("what is not SPKI, or has no OpenSSH form, is refused", () => {
    refusedWith(() => sshPublicKeyFromSpki(Buffer.from("3000", "hex")), /SubjectPublicKeyInfo/);
    const { publicKey } = generateKeyPairSync("x25519");
    refusedWith(() => sshPublicKeyFromSpki(publicKey.export({ format: "der", type: "spki" })), /no OpenSSH form/);
  });
});
