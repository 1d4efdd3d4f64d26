import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { generateKeyPairSync, type KeyObject, randomBytes, sign } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { CustosError } from "../../src/errors/index.js";
import {
  type CertificateFields,
  certificateBlob,
  certificateLine,
  certificateTbs,
  parseCertificate,
  type SshCaAlgorithm,
  verifyCertificate,
} from "../../src/ssh-ca/certificate.js";
import { parsePublicKeyLine, type SubjectKey, sshFingerprint, sshPublicKeyFromSpki } from "../../src/ssh-ca/keys.js";
import { SshReader } from "../../src/ssh-ca/wire.js";

// Oracle: ssh-keygen. `ssh-keygen -L` checks a certificate's signature and prints
// its fields; `ssh-keygen -s` makes certificates for the parser to read. The CA keys
// here are software keys signing exactly as the HSM does (raw r‖s for ECDSA).

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "custos-ssh-cert-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

// ssh-keygen prints validity in local time: pin it.
const ENV = { ...process.env, TZ: "UTC" };

function run(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync("ssh-keygen", args, { encoding: "utf8", env: ENV });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(args: string[]): string {
  const r = run(args);
  assert.equal(r.status, 0, `ssh-keygen ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

let counter = 0;
function path(name: string): string {
  return join(dir, `${++counter}-${name}`);
}

/** A key pair made by ssh-keygen: the private key file and the .pub line. */
function sshKeygen(type: string, bits?: number): { file: string; line: string } {
  const file = path(`${type}${bits ?? ""}`);
  ok(["-q", "-t", type, ...(bits ? ["-b", String(bits)] : []), "-N", "", "-C", "subject", "-f", file]);
  return { file, line: readFileSync(`${file}.pub`, "utf8").trim() };
}

interface SoftwareCa {
  readonly algorithm: SshCaAlgorithm;
  readonly privateKey: KeyObject;
  readonly blob: Buffer;
}

function softwareCa(algorithm: SshCaAlgorithm): SoftwareCa {
  const pair =
    algorithm === "ed25519" ? generateKeyPairSync("ed25519") : generateKeyPairSync("ec", { namedCurve: "P-256" });
  return {
    algorithm,
    privateKey: pair.privateKey,
    blob: sshPublicKeyFromSpki(pair.publicKey.export({ format: "der", type: "spki" })),
  };
}

/** What the HSM returns: raw r‖s for CKM_ECDSA over SHA-256, the plain signature for EdDSA. */
function hsmLikeSign(ca: SoftwareCa, tbs: Buffer): Buffer {
  return ca.algorithm === "ed25519"
    ? sign(null, tbs, ca.privateKey)
    : sign("sha256", tbs, { key: ca.privateKey, dsaEncoding: "ieee-p1363" });
}

function issue(ca: SoftwareCa, fields: Omit<CertificateFields, "caKey">, comment?: string): string {
  const tbs = certificateTbs({ ...fields, caKey: ca.blob });
  return certificateLine(certificateBlob(tbs, ca.algorithm, hsmLikeSign(ca, tbs)), comment);
}

interface Listing {
  readonly type: string;
  readonly certType: string;
  readonly publicKey: string;
  readonly signingCa: string;
  readonly using: string;
  readonly keyId: string;
  readonly serial: string;
  readonly valid: string;
  readonly principals: string[];
  readonly criticalOptions: string[];
  readonly extensions: string[];
}

/** `ssh-keygen -L -f`, which refuses a certificate whose signature is wrong. */
function listing(file: string): Listing {
  const out = ok(["-L", "-f", file]);
  const field = (name: string) => {
    const m = new RegExp(`^\\s+${name}: ?(.*)$`, "m").exec(out);
    assert.ok(m, `no ${name} in:\n${out}`);
    return (m[1] as string).trim();
  };
  const list = (name: string) => {
    const m = new RegExp(`^\\s+${name}: ?(.*)$`, "m").exec(out);
    assert.ok(m, `no ${name} in:\n${out}`);
    if ((m[1] as string).trim() === "(none)") return [];
    const rest = out.slice((m.index ?? 0) + m[0].length + 1).split("\n");
    const items: string[] = [];
    for (const line of rest) {
      if (!/^\s{16}\S/.test(line)) break;
      items.push(line.trim());
    }
    return items;
  };
  const type = /^(\S+) (user|host) certificate$/.exec(field("Type"));
  const ca = /^(\S+ SHA256:\S+) \(using (\S+)\)$/.exec(field("Signing CA"));
  assert.ok(type && ca);
  return {
    type: type[1] as string,
    certType: type[2] as string,
    publicKey: field("Public key"),
    signingCa: ca[1] as string,
    using: ca[2] as string,
    keyId: field("Key ID"),
    serial: field("Serial"),
    valid: field("Valid"),
    principals: list("Principals"),
    criticalOptions: list("Critical Options"),
    extensions: list("Extensions"),
  };
}

/** How ssh-keygen prints a time: UTC here, seconds, no zone. */
function keygenTime(d: Date): string {
  return new Date(Math.floor(d.getTime() / 1000) * 1000).toISOString().slice(0, 19);
}

function writeLine(name: string, line: string): string {
  const file = `${path(name)}.pub`;
  writeFileSync(file, `${line}\n`);
  return file;
}

function refused(fn: () => unknown, pattern: RegExp): void {
  assert.throws(
    fn,
    (e: unknown) => e instanceof CustosError && e.code === "invalid_request" && pattern.test(e.message),
  );
}

const SUBJECTS = [
  ["ed25519", undefined, "ED25519"],
  ["ecdsa", 256, "ECDSA"],
  ["ecdsa", 384, "ECDSA"],
  ["ecdsa", 521, "ECDSA"],
  ["rsa", 2048, "RSA"],
] as const;

const CAS = [
  ["ecdsa-p256", "ECDSA", "ecdsa-sha2-nistp256"],
  ["ed25519", "ED25519", "ssh-ed25519"],
] as const;

const subjects = new Map<string, SubjectKey>();
function subjectKey(type: string, bits: number | undefined): SubjectKey {
  const k = `${type}${bits ?? ""}`;
  let key = subjects.get(k);
  if (!key) {
    key = parsePublicKeyLine(sshKeygen(type, bits).line);
    subjects.set(k, key);
  }
  return key;
}

describe("certificates we build, judged by ssh-keygen -L", () => {
  for (const [caAlg, caKind, using] of CAS) {
    const ca = softwareCa(caAlg);
    for (const [type, bits, kind] of SUBJECTS) {
      test(`user certificate: ${type}${bits ? ` ${bits}` : ""} subject, ${caAlg} CA`, () => {
        const subject = subjectKey(type, bits);
        const now = new Date();
        const fields = {
          certType: "user",
          subject,
          serial: 0xfedc_ba98_7654_3210n,
          nonce: randomBytes(32),
          keyId: "user:tester role=owner request=req-7",
          principals: ["inst-42", "root@inst-42", "deploy"],
          validAfter: new Date(now.getTime() - 30_000),
          validBefore: new Date(now.getTime() + 300_000),
          criticalOptions: { "source-address": "10.0.0.0/8,192.168.0.1/32", "force-command": "/usr/bin/env true" },
          extensions: ["permit-pty", "permit-X11-forwarding", "permit-agent-forwarding", "permit-pty"],
        } as const;
        const line = issue(ca, fields, fields.keyId);
        assert.ok(line.startsWith(`${subject.type}-cert-v01@openssh.com `));
        assert.ok(line.endsWith(` ${fields.keyId}`));
        const l = listing(writeLine("user-cert", line));
        assert.equal(l.type, `${subject.type}-cert-v01@openssh.com`);
        assert.equal(l.certType, "user");
        assert.equal(l.publicKey, `${kind}-CERT ${subject.fingerprint}`);
        assert.equal(l.signingCa, `${caKind} ${sshFingerprint(ca.blob)}`);
        assert.equal(l.using, using);
        assert.equal(l.keyId, `"${fields.keyId}"`);
        assert.equal(l.serial, "18364758544493064720");
        assert.equal(l.valid, `from ${keygenTime(fields.validAfter)} to ${keygenTime(fields.validBefore)}`);
        assert.deepEqual(l.principals, fields.principals);
        // Sorted by name in byte order: "force-command" < "source-address".
        assert.deepEqual(l.criticalOptions, [
          "force-command /usr/bin/env true",
          "source-address 10.0.0.0/8,192.168.0.1/32",
        ]);
        // Byte order puts the capital X first; the duplicate is gone.
        assert.deepEqual(l.extensions, ["permit-X11-forwarding", "permit-agent-forwarding", "permit-pty"]);

        const parsed = parseCertificate(line);
        assert.equal(verifyCertificate(parsed), true);
        assert.equal(parsed.serial, fields.serial);
        assert.equal(parsed.keyId, fields.keyId);
        assert.equal(parsed.comment, fields.keyId);
        assert.deepEqual(parsed.nonce, fields.nonce);
        assert.deepEqual(parsed.principals, fields.principals);
        assert.deepEqual(parsed.criticalOptions, fields.criticalOptions);
        assert.deepEqual(parsed.caKey, ca.blob);
        assert.equal(parsed.subject.fingerprint, subject.fingerprint);
        assert.deepEqual(parsed.subject.blob, subject.blob);
        assert.equal(parsed.validBefore.getTime(), Math.floor(fields.validBefore.getTime() / 1000) * 1000);
      });
    }

    test(`host certificate, ${caAlg} CA: no options, no extensions`, () => {
      const subject = subjectKey("ecdsa", 256);
      const now = new Date();
      const fields = {
        certType: "host",
        subject,
        serial: 1n,
        nonce: randomBytes(32),
        keyId: "agent:runner-1 role=instance-host request=req-9",
        principals: ["inst-42"],
        validAfter: now,
        validBefore: new Date(now.getTime() + 86_400_000),
        criticalOptions: {},
        extensions: [],
      } as const;
      const l = listing(writeLine("host-cert", issue(ca, fields)));
      assert.equal(l.certType, "host");
      assert.deepEqual(l.principals, ["inst-42"]);
      assert.deepEqual(l.criticalOptions, []);
      assert.deepEqual(l.extensions, []);
      assert.equal(l.serial, "1");
    });

    test(`${caAlg} CA: a flipped signature or body byte fails verifyCertificate and ssh-keygen -L alike`, () => {
      const subject = subjectKey("ed25519", undefined);
      const now = new Date();
      const line = issue(ca, {
        certType: "user",
        subject,
        serial: 77n,
        nonce: randomBytes(32),
        keyId: "k",
        principals: ["p"],
        validAfter: now,
        validBefore: new Date(now.getTime() + 60_000),
        criticalOptions: {},
        extensions: ["permit-pty"],
      });
      const good = parseCertificate(line);
      assert.equal(verifyCertificate(good), true);

      const sig = Buffer.from(good.signature);
      sig[sig.length - 1] = (sig[sig.length - 1] as number) ^ 0x01;
      assert.equal(verifyCertificate({ ...good, signature: sig }), false);

      const blob = Buffer.from(line.split(" ")[1] as string, "base64");
      blob[blob.length - 1] = (blob[blob.length - 1] as number) ^ 0x01;
      assert.equal(verifyCertificate(parseCertificate(blob)), false);
      assert.notEqual(run(["-L", "-f", writeLine("bad-sig", certificateLine(blob))]).status, 0);

      // The key id is inside the signed bytes.
      const body = Buffer.from(line.split(" ")[1] as string, "base64");
      const at = body.indexOf(Buffer.from("\x00\x00\x00\x01k"));
      assert.ok(at > 0);
      body[at + 4] = "j".charCodeAt(0);
      const forged = parseCertificate(body);
      assert.equal(forged.keyId, "j");
      assert.equal(verifyCertificate(forged), false);
      assert.notEqual(run(["-L", "-f", writeLine("bad-body", certificateLine(body))]).status, 0);

      // Another CA's key in place of the signer's.
      const other = softwareCa(caAlg);
      assert.equal(verifyCertificate({ ...good, caKey: other.blob }), false);
    });
  }

  test("ECDSA signatures whose r or s has its high bit set or a leading zero byte are encoded as ssh-keygen wants", () => {
    const ca = softwareCa("ecdsa-p256");
    const subject = subjectKey("ed25519", undefined);
    const now = new Date();
    const seen = { high: false, zero: false };
    for (let i = 0; i < 4000 && !(seen.high && seen.zero); i++) {
      const tbs = certificateTbs({
        certType: "user",
        subject,
        serial: BigInt(i + 1),
        nonce: randomBytes(32),
        keyId: "mpint",
        principals: ["p"],
        validAfter: now,
        validBefore: new Date(now.getTime() + 60_000),
        criticalOptions: {},
        extensions: [],
        caKey: ca.blob,
      });
      const raw = hsmLikeSign(ca, tbs);
      const high = ((raw[0] as number) & 0x80) !== 0 || ((raw[32] as number) & 0x80) !== 0;
      const zero = raw[0] === 0 || raw[32] === 0;
      if ((high && !seen.high) || (zero && !seen.zero)) {
        const blob = certificateBlob(tbs, "ecdsa-p256", raw);
        const sr = new SshReader(parseCertificate(blob).signature);
        const r = sr.string();
        const s = sr.string();
        // mpints: minimal, positive.
        for (const [v, half] of [
          [r, raw.subarray(0, 32)],
          [s, raw.subarray(32)],
        ] as const) {
          // Same number, positive (no high bit), minimal (no needless leading zero).
          assert.equal(BigInt(`0x${v.toString("hex")}`), BigInt(`0x${half.toString("hex")}`));
          assert.equal((v[0] as number) & 0x80, 0);
          assert.ok(v[0] !== 0 || ((v[1] as number) & 0x80) !== 0);
          if (((half[0] as number) & 0x80) !== 0) assert.equal(v.length, 33);
        }
        listing(writeLine("mpint", certificateLine(blob)));
        seen.high ||= high;
        seen.zero ||= zero;
      }
    }
    assert.deepEqual(seen, { high: true, zero: true });
  });

  test("raw signature layout: r with a leading zero, s with its high bit set", () => {
    const tbs = Buffer.from("tbs");
    const raw = Buffer.concat([Buffer.from(`00${"11".repeat(31)}`, "hex"), Buffer.from(`80${"22".repeat(31)}`, "hex")]);
    const blob = certificateBlob(tbs, "ecdsa-p256", raw);
    const sig = new SshReader(blob.subarray(3));
    const outer = new SshReader(sig.string());
    sig.end();
    assert.equal(outer.text(), "ecdsa-sha2-nistp256");
    const inner = outer.string();
    outer.end();
    assert.equal(inner.toString("hex"), `0000001f${"11".repeat(31)}0000002100${`80${"22".repeat(31)}`}`);
    const ed = certificateBlob(tbs, "ed25519", Buffer.alloc(64, 7));
    assert.equal(
      ed.subarray(3).toString("hex"),
      `00000053${"0000000b"}${Buffer.from("ssh-ed25519").toString("hex")}00000040${"07".repeat(64)}`,
    );
  });
});

describe("parseCertificate reads what ssh-keygen -s makes", () => {
  const CA_TYPES = [
    ["ed25519", undefined, "ssh-ed25519"],
    ["ecdsa", 256, "ecdsa-sha2-nistp256"],
    ["ecdsa", 384, "ecdsa-sha2-nistp384"],
    ["rsa", 2048, "rsa-sha2-512"],
  ] as const;
  for (const [caType, caBits, sigAlg] of CA_TYPES) {
    test(`user certificate from a ${caType}${caBits ? ` ${caBits}` : ""} CA`, () => {
      const ca = sshKeygen(caType, caBits);
      const subject = sshKeygen("ecdsa", 256);
      ok([
        "-q",
        "-s",
        ca.file,
        "-I",
        "id with spaces",
        "-n",
        "a,b",
        "-V",
        "+5m",
        "-z",
        "4242",
        "-O",
        "force-command=echo hi there",
        "-O",
        "source-address=10.0.0.0/8,192.168.1.1",
        "-O",
        "verify-required",
        "-O",
        "no-x11-forwarding",
        `${subject.file}.pub`,
      ]);
      const certFile = `${subject.file}-cert.pub`;
      const cert = parseCertificate(readFileSync(certFile, "utf8"));
      const l = listing(certFile);
      assert.equal(cert.type, "ecdsa-sha2-nistp256-cert-v01@openssh.com");
      assert.equal(cert.subjectType, "ecdsa-sha2-nistp256");
      assert.equal(cert.certType, "user");
      assert.equal(cert.serial, 4242n);
      assert.equal(cert.keyId, "id with spaces");
      assert.deepEqual(cert.principals, ["a", "b"]);
      assert.equal(cert.nonce.length, 32);
      assert.deepEqual(cert.criticalOptions, {
        "force-command": "echo hi there",
        "source-address": "10.0.0.0/8,192.168.1.1",
        "verify-required": "",
      });
      assert.deepEqual(cert.extensions, [
        "permit-agent-forwarding",
        "permit-port-forwarding",
        "permit-pty",
        "permit-user-rc",
      ]);
      assert.deepEqual(cert.extensions, l.extensions);
      assert.equal(l.valid, `from ${keygenTime(cert.validAfter)} to ${keygenTime(cert.validBefore)}`);
      assert.equal(cert.validAfterSeconds, BigInt(cert.validAfter.getTime() / 1000));
      // -V +5m ends five minutes from now (give the test a minute of slack).
      const left = cert.validBefore.getTime() - Date.now();
      assert.ok(left > 4 * 60_000 && left <= 5 * 60_000 + 1000, `validBefore ${cert.validBefore.toISOString()}`);
      assert.deepEqual(cert.caKey, Buffer.from(ca.line.split(" ")[1] as string, "base64"));
      assert.equal(cert.signatureAlgorithm, sigAlg);
      assert.equal(cert.subject.fingerprint, parsePublicKeyLine(subject.line).fingerprint);
      assert.equal(verifyCertificate(cert), true);
      const bad = Buffer.from(cert.signature);
      bad[10] = (bad[10] as number) ^ 0x40;
      assert.equal(verifyCertificate({ ...cert, signature: bad }), false);
      assert.equal(verifyCertificate({ ...cert, signatureAlgorithm: "ssh-dss" }), false);
    });
  }

  test("host certificate without validity: forever, and an RSA subject", () => {
    const ca = sshKeygen("ed25519");
    const subject = sshKeygen("rsa", 2048);
    ok(["-q", "-s", ca.file, "-h", "-I", "host", "-n", "h1.example,h2.example", `${subject.file}.pub`]);
    const cert = parseCertificate(readFileSync(`${subject.file}-cert.pub`, "utf8"));
    assert.equal(cert.certType, "host");
    assert.equal(cert.subject.family, "rsa");
    assert.equal(cert.subject.bits, 2048);
    assert.equal(cert.validAfterSeconds, 0n);
    assert.equal(cert.validBeforeSeconds, 0xffff_ffff_ffff_ffffn);
    assert.equal(cert.validBefore.getTime(), 8.64e15);
    assert.deepEqual(cert.principals, ["h1.example", "h2.example"]);
    assert.deepEqual(cert.extensions, []);
    assert.equal(verifyCertificate(cert), true);
  });
});

describe("refusals", () => {
  const ca = softwareCa("ed25519");
  const base = (): CertificateFields => {
    const now = new Date();
    return {
      certType: "user",
      subject: subjectKey("ed25519", undefined),
      serial: 5n,
      nonce: randomBytes(32),
      keyId: "k",
      principals: ["p"],
      validAfter: now,
      validBefore: new Date(now.getTime() + 60_000),
      criticalOptions: {},
      extensions: [],
      caKey: ca.blob,
    };
  };

  test("the base fields build (so each refusal below is about its one change)", () => {
    assert.ok(certificateTbs(base()).length > 100);
  });

  test("certificateTbs refuses what OpenSSH would misread or what must never be issued", () => {
    refused(() => certificateTbs({ ...base(), principals: [] }), /at least one principal/);
    refused(() => certificateTbs({ ...base(), principals: [""] }), /empty/);
    refused(() => certificateTbs({ ...base(), principals: ["a\0b"] }), /NUL/);
    refused(() => certificateTbs({ ...base(), keyId: "a\0" }), /NUL/);
    refused(() => certificateTbs({ ...base(), certType: "host", extensions: ["permit-pty"] }), /host certificates/);
    refused(() => certificateTbs({ ...base(), certType: "host", criticalOptions: { "force-command": "x" } }), /host/);
    refused(() => certificateTbs({ ...base(), nonce: randomBytes(16) }), /32 bytes/);
    refused(() => certificateTbs({ ...base(), serial: 1n << 64n }), /uint64/);
    refused(() => certificateTbs({ ...base(), serial: -1n }), /uint64/);
    const b = base();
    refused(() => certificateTbs({ ...b, validBefore: b.validAfter }), /later than/);
    refused(() => certificateTbs({ ...b, validAfter: new Date(Number.NaN) }), /valid date/);
    refused(() => certificateTbs({ ...b, extensions: ["permit pty"] }), /printable ASCII/);
    refused(() => certificateTbs({ ...b, criticalOptions: { "force-command": "a\0" } }), /NUL/);
  });

  test("certificateBlob refuses a signature of the wrong size; certificateLine a comment with a line break", () => {
    const tbs = certificateTbs(base());
    refused(() => certificateBlob(tbs, "ecdsa-p256", Buffer.alloc(72)), /64 bytes/);
    refused(() => certificateBlob(tbs, "ed25519", Buffer.alloc(63)), /64 bytes/);
    const blob = certificateBlob(tbs, "ed25519", hsmLikeSign(ca, tbs));
    refused(() => certificateLine(blob, "x\nssh-ed25519 AAAA"), /line breaks/);
    refused(() => certificateLine(base().subject.blob), /not an OpenSSH certificate/);
  });

  test("parseCertificate refuses plain keys, mismatched lines, truncation and trailing bytes", () => {
    const tbs = certificateTbs(base());
    const blob = certificateBlob(tbs, "ed25519", hsmLikeSign(ca, tbs));
    const line = certificateLine(blob);
    assert.equal(parseCertificate(line).keyId, "k");
    refused(
      () => parseCertificate(`ssh-ed25519 ${base().subject.blob.toString("base64")}`),
      /not an OpenSSH certificate/,
    );
    refused(() => parseCertificate(base().subject.blob), /not an OpenSSH certificate/);
    refused(
      () => parseCertificate(`ecdsa-sha2-nistp256-cert-v01@openssh.com ${blob.toString("base64")}`),
      /line's type/,
    );
    refused(() => parseCertificate(blob.subarray(0, blob.length - 5)), /truncated/);
    refused(() => parseCertificate(Buffer.concat([blob, Buffer.of(0)])), /trailing bytes/);
  });
});
