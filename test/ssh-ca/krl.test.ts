import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { generateKeyPairSync, type KeyObject, randomBytes, sign } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { CustosError } from "../../src/errors/index.js";
import { certificateBlob, certificateLine, certificateTbs, type SshCaAlgorithm } from "../../src/ssh-ca/certificate.js";
import { authorizedKeyLine, parsePublicKeyLine, type SubjectKey, sshPublicKeyFromSpki } from "../../src/ssh-ca/keys.js";
import { buildKrl, KRL_MAGIC, type KrlContent, parseKrl } from "../../src/ssh-ca/krl.js";

// Oracle: ssh-keygen -Q (the same ssh_krl_check_key sshd's RevokedKeys uses) on
// certificates we issue, and KRLs made by ssh-keygen -k from a spec file, which must
// equal ours byte for byte when they hold the same revocations.

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "custos-ssh-krl-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

let counter = 0;
function path(name: string): string {
  return join(dir, `${++counter}-${name}`);
}

function keygen(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync("ssh-keygen", args, { encoding: "utf8", env: { ...process.env, TZ: "UTC" } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function subjectKey(): { key: SubjectKey; file: string } {
  const file = path("key");
  const r = keygen(["-q", "-t", "ed25519", "-N", "", "-C", "subject", "-f", file]);
  assert.equal(r.status, 0, r.stderr);
  return { key: parsePublicKeyLine(readFileSync(`${file}.pub`, "utf8")), file: `${file}.pub` };
}

interface SoftwareCa {
  readonly algorithm: SshCaAlgorithm;
  readonly privateKey: KeyObject;
  readonly blob: Buffer;
  readonly file: string;
}

function softwareCa(algorithm: SshCaAlgorithm): SoftwareCa {
  const pair =
    algorithm === "ed25519" ? generateKeyPairSync("ed25519") : generateKeyPairSync("ec", { namedCurve: "P-256" });
  const blob = sshPublicKeyFromSpki(pair.publicKey.export({ format: "der", type: "spki" }));
  const file = `${path("ca")}.pub`;
  writeFileSync(file, `${authorizedKeyLine(blob, "ca")}\n`);
  return { algorithm, privateKey: pair.privateKey, blob, file };
}

/** A user certificate from `ca` for `subject`, written to a file; returns the file. */
function issue(ca: SoftwareCa, subject: SubjectKey, serial: bigint, keyId = `cert-${serial}`): string {
  const now = new Date();
  const tbs = certificateTbs({
    certType: "user",
    subject,
    serial,
    nonce: randomBytes(32),
    keyId,
    principals: ["inst-1"],
    validAfter: new Date(now.getTime() - 30_000),
    validBefore: new Date(now.getTime() + 300_000),
    criticalOptions: {},
    extensions: ["permit-pty"],
    caKey: ca.blob,
  });
  const raw =
    ca.algorithm === "ed25519"
      ? sign(null, tbs, ca.privateKey)
      : sign("sha256", tbs, { key: ca.privateKey, dsaEncoding: "ieee-p1363" });
  const file = `${path("cert")}-cert.pub`;
  writeFileSync(file, `${certificateLine(certificateBlob(tbs, ca.algorithm, raw), keyId)}\n`);
  return file;
}

function writeKrl(content: KrlContent): string {
  const file = path("krl");
  writeFileSync(file, buildKrl(content));
  return file;
}

/** `ssh-keygen -Q`: true when it reports the key revoked (non-zero exit and "REVOKED"). */
function revoked(krl: string, key: string): boolean {
  const r = keygen(["-Q", "-f", krl, key]);
  if (r.status === 0) {
    assert.match(r.stdout, /: ok$/m);
    return false;
  }
  assert.match(r.stdout, /: REVOKED$/m, `ssh-keygen -Q failed otherwise: ${r.stderr}`);
  return true;
}

function refused(fn: () => unknown, pattern: RegExp): void {
  assert.throws(
    fn,
    (e: unknown) => e instanceof CustosError && e.code === "invalid_request" && pattern.test(e.message),
  );
}

const MAX = 0xffff_ffff_ffff_ffffn;

describe("buildKrl judged by ssh-keygen -Q", () => {
  for (const algorithm of ["ecdsa-p256", "ed25519"] as const) {
    test(`${algorithm} CA: exactly the revoked serials and fingerprints are REVOKED`, () => {
      const ca = softwareCa(algorithm);
      const other = softwareCa(algorithm);
      const s = Array.from({ length: 6 }, () => subjectKey());
      const certs = {
        s2: issue(ca, s[0]!.key, 2n),
        s1: issue(ca, s[1]!.key, 1n), // next to a revoked serial, not revoked
        s3: issue(ca, s[1]!.key, 3n),
        big: issue(ca, s[2]!.key, MAX),
        s1000: issue(ca, s[3]!.key, 1000n),
        otherCa1000: issue(other, s[3]!.key, 1000n), // same serial, another CA
        otherCa7: issue(other, s[4]!.key, 7n),
        byKey: issue(ca, s[5]!.key, 42n), // serial not revoked, but its key is
        byKeyId: issue(other, s[4]!.key, 8n, "user:gone role=owner request=req-1"),
      };
      const krl = writeKrl({
        version: 3n,
        generatedAt: new Date(),
        comment: "custos test",
        cas: [
          { caKey: ca.blob, serials: [1000n, 2n, MAX, 2n] },
          { caKey: other.blob, serials: [7n], keyIds: ["user:gone role=owner request=req-1"] },
        ],
        fingerprints: [s[5]!.key.fingerprintRaw],
      });
      assert.equal(revoked(krl, certs.s2), true);
      assert.equal(revoked(krl, certs.big), true);
      assert.equal(revoked(krl, certs.s1000), true);
      assert.equal(revoked(krl, certs.otherCa7), true);
      assert.equal(revoked(krl, certs.byKey), true);
      assert.equal(revoked(krl, s[5]!.file), true);
      assert.equal(revoked(krl, certs.byKeyId), true);
      assert.equal(revoked(krl, certs.s1), false);
      assert.equal(revoked(krl, certs.s3), false);
      assert.equal(revoked(krl, certs.otherCa1000), false);
      assert.equal(revoked(krl, s[0]!.file), false);
      assert.equal(revoked(krl, ca.file), false);

      const listed = keygen(["-Q", "-l", "-f", krl]);
      assert.match(listed.stdout, /^# KRL version 3$/m);
      assert.match(listed.stdout, /^# Comment: custos test$/m);
      const serials = [...listed.stdout.matchAll(/^serial: (\d+)$/gm)].map((m) => m[1]);
      assert.deepEqual(serials, ["2", "1000", MAX.toString(), "7"]);
      assert.match(listed.stdout, /^id: user:gone role=owner request=req-1$/m);
    });
  }

  test("an empty KRL is valid and revokes nothing", () => {
    const ca = softwareCa("ecdsa-p256");
    const s = subjectKey();
    const cert = issue(ca, s.key, 9n);
    const bytes = buildKrl({ version: 0n, generatedAt: new Date(0), cas: [], fingerprints: [] });
    assert.deepEqual(bytes.subarray(0, 8), KRL_MAGIC);
    assert.equal(bytes.length, 8 + 4 + 8 + 8 + 8 + 4 + 4);
    const file = path("empty.krl");
    writeFileSync(file, bytes);
    assert.equal(revoked(file, cert), false);
    assert.equal(revoked(file, s.file), false);
    // A CA with nothing revoked adds no section.
    const withEmptyCa = buildKrl({
      version: 0n,
      generatedAt: new Date(0),
      cas: [{ caKey: ca.blob, serials: [] }],
      fingerprints: [],
    });
    assert.deepEqual(withEmptyCa, bytes);
  });
});

describe("buildKrl equals ssh-keygen -k", () => {
  /** ssh-keygen -k from a spec; returns its bytes. */
  function keygenKrl(spec: string, version: bigint, caFile?: string): Buffer {
    const specFile = path("spec");
    writeFileSync(specFile, spec);
    const out = path("keygen.krl");
    const r = keygen(["-k", "-f", out, ...(caFile ? ["-s", caFile] : []), "-z", version.toString(), specFile]);
    assert.equal(r.status, 0, r.stderr);
    return readFileSync(out);
  }

  /** ssh-keygen stamps the current time: read it back so the bytes can be compared. */
  function generatedAt(krl: Buffer): Date {
    return new Date(Number(krl.readBigUInt64BE(20)) * 1000);
  }

  for (const algorithm of ["ecdsa-p256", "ed25519"] as const) {
    test(`${algorithm} CA: sparse serials, key ids and SHA-256 hashes, given unsorted`, () => {
      const ca = softwareCa(algorithm);
      const keys = Array.from({ length: 4 }, () => subjectKey().key);
      const serials = [123_456_789_012n, 5n, 1000n, MAX, 0x8000_0000_0000_0000n];
      const spec = [
        ...serials.map((s) => `serial: ${s}`),
        "id: user:someone role=owner request=req-3",
        "id: agent:a role=instance-host request=req-4",
        ...keys.map((k) => `hash: ${k.fingerprint}`),
      ].join("\n");
      const theirs = keygenKrl(`${spec}\n`, 17n, ca.file);
      const ours = buildKrl({
        version: 17n,
        generatedAt: generatedAt(theirs),
        cas: [
          {
            caKey: ca.blob,
            serials,
            keyIds: ["user:someone role=owner request=req-3", "agent:a role=instance-host request=req-4"],
          },
        ],
        fingerprints: keys.map((k) => k.fingerprintRaw).reverse(),
      });
      assert.equal(ours.toString("hex"), theirs.toString("hex"));
      const parsed = parseKrl(ours);
      assert.equal(parsed.version, 17n);
      assert.deepEqual(
        parsed.cas[0]?.serials,
        [...serials].sort((a, b) => (a < b ? -1 : 1)),
      );
      assert.deepEqual(parsed.cas[0]?.caKey, ca.blob);
      const sortedFps = keys.map((k) => k.fingerprintRaw).sort(Buffer.compare);
      assert.deepEqual(parsed.fingerprints, sortedFps);
    });
  }

  test("fingerprints only, and the empty KRL", () => {
    const keys = Array.from({ length: 3 }, () => subjectKey().key);
    const theirs = keygenKrl(`${keys.map((k) => `sha256: ${authorizedKeyLine(k.blob)}`).join("\n")}\n`, 1n);
    const ours = buildKrl({
      version: 1n,
      generatedAt: generatedAt(theirs),
      cas: [],
      fingerprints: [...keys.map((k) => k.fingerprintRaw), keys[0]!.fingerprintRaw],
    });
    assert.equal(ours.toString("hex"), theirs.toString("hex"));

    const emptyTheirs = keygenKrl("\n", 0n);
    const emptyOurs = buildKrl({ version: 0n, generatedAt: generatedAt(emptyTheirs), cas: [], fingerprints: [] });
    assert.equal(emptyOurs.toString("hex"), emptyTheirs.toString("hex"));
  });

  test("parseKrl reads the bitmaps, ranges and lists ssh-keygen chose", () => {
    const ca = softwareCa("ed25519");
    const spec =
      "serial: 10-20\nserial: 100\nserial: 102\nserial: 104\nserial: 106\nserial: 5000-9000000\nserial: 123456789\n";
    const krl = parseKrl(keygenKrl(spec, 2n, ca.file));
    assert.equal(krl.cas.length, 1);
    assert.deepEqual(krl.cas[0]?.ranges, [[5000n, 9_000_000n]]);
    const expected = [...Array.from({ length: 11 }, (_, i) => BigInt(10 + i)), 100n, 102n, 104n, 106n, 123_456_789n];
    assert.deepEqual(
      [...(krl.cas[0]?.serials ?? [])].sort((a, b) => (a < b ? -1 : 1)),
      expected,
    );
  });
});

describe("buildKrl refusals", () => {
  const base = (): KrlContent => ({ version: 1n, generatedAt: new Date(), cas: [], fingerprints: [] });

  test("serial 0 (OpenSSH would refuse the whole KRL) and serials beyond uint64", () => {
    const caKey = softwareCa("ed25519").blob;
    assert.ok(buildKrl({ ...base(), cas: [{ caKey, serials: [1n] }] }).length > 0);
    refused(() => buildKrl({ ...base(), cas: [{ caKey, serials: [0n] }] }), /1 to 2\^64-1/);
    refused(() => buildKrl({ ...base(), cas: [{ caKey, serials: [MAX + 1n] }] }), /1 to 2\^64-1/);
    refused(() => buildKrl({ ...base(), cas: [{ caKey: Buffer.alloc(0), serials: [1n] }] }), /CA key/);
    refused(() => buildKrl({ ...base(), cas: [{ caKey, serials: [], keyIds: ["a\0b"] }] }), /NUL/);
  });

  test("fingerprints of the wrong size, NUL in the comment, bad version or date", () => {
    refused(() => buildKrl({ ...base(), fingerprints: [Buffer.alloc(20)] }), /32 bytes/);
    refused(() => buildKrl({ ...base(), comment: "a\0" }), /NUL/);
    refused(() => buildKrl({ ...base(), version: -1n }), /uint64/);
    refused(() => buildKrl({ ...base(), generatedAt: new Date(Number.NaN) }), /valid date/);
  });

  test("the same CA given twice is one section with the serials merged", () => {
    const caKey = softwareCa("ecdsa-p256").blob;
    const krl = parseKrl(
      buildKrl({
        ...base(),
        cas: [
          { caKey, serials: [9n, 3n] },
          { caKey: Buffer.from(caKey), serials: [3n, 4n] },
        ],
      }),
    );
    assert.equal(krl.cas.length, 1);
    assert.deepEqual(krl.cas[0]?.serials, [3n, 4n, 9n]);
  });

  test("many serials: sorted, unique, all present", () => {
    const caKey = softwareCa("ed25519").blob;
    const serials = Array.from({ length: 20_000 }, () => randomBytes(8).readBigUInt64BE() | 1n);
    const krl = parseKrl(buildKrl({ ...base(), cas: [{ caKey, serials: [...serials, ...serials.slice(0, 100)] }] }));
    const expected = [...new Set(serials)].sort((a, b) => (a < b ? -1 : 1));
    assert.deepEqual(krl.cas[0]?.serials, expected);
  });
});
