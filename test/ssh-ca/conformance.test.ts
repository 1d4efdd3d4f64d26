/**
 * Conformance of Custos's SSH CA with PROTOCOL.certkeys and PROTOCOL.krl, through the
 * HTTP API, judged by OpenSSH itself: `ssh-keygen -L / -l / -Q / -s`, a real sshd and
 * the ssh client. The certificate and KRL bytes are also decoded here by a reader of
 * this file's own, so that the checks don't rest on Custos's parser.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type CustosInstance, errorCode, fetchRaw, ok, startCustos } from "../helpers/custos.js";
import {
  describeCertificate,
  ensureLocalUser,
  makeKey,
  opensshUnavailable,
  type Sshd,
  sshKeygen,
  sshRun,
  startSshd,
} from "../helpers/openssh.js";

type Json = Record<string, unknown>;

/** The local account sshd logs in to (the same one the e2e SSH tests use). */
const ACCOUNT = "custos-app";
const UINT64_MAX = 0xffff_ffff_ffff_ffffn;

// ---- an SSH wire reader of our own (RFC 4251 §5) ----------------------------------

class Reader {
  #pos = 0;
  constructor(readonly buf: Buffer) {}
  get done(): boolean {
    return this.#pos === this.buf.length;
  }
  u8(): number {
    assert.ok(this.#pos + 1 <= this.buf.length, "truncated byte");
    return this.buf[this.#pos++] as number;
  }
  u32(): number {
    assert.ok(this.#pos + 4 <= this.buf.length, "truncated uint32");
    const v = this.buf.readUInt32BE(this.#pos);
    this.#pos += 4;
    return v;
  }
  u64(): bigint {
    assert.ok(this.#pos + 8 <= this.buf.length, "truncated uint64");
    const v = this.buf.readBigUInt64BE(this.#pos);
    this.#pos += 8;
    return v;
  }
  bytes(n: number): Buffer {
    assert.ok(this.#pos + n <= this.buf.length, "truncated bytes");
    const v = this.buf.subarray(this.#pos, this.#pos + n);
    this.#pos += n;
    return v;
  }
  str(): Buffer {
    return this.bytes(this.u32());
  }
  text(): string {
    return this.str().toString("utf8");
  }
}

function sshString(value: Buffer | string): Buffer {
  const b = typeof value === "string" ? Buffer.from(value, "utf8") : value;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(b.length);
  return Buffer.concat([len, b]);
}

/** The base64 blob of a "type base64 [comment]" line. */
function blobOf(line: string): Buffer {
  return Buffer.from(line.trim().split(/\s+/)[1] as string, "base64");
}

interface DecodedCertificate {
  readonly type: string;
  /** The subject key's fields, exactly as in the certificate (after the nonce). */
  readonly keyFields: Buffer;
  readonly serial: bigint;
  readonly certType: number;
  readonly keyId: string;
  readonly principals: string[];
  readonly validAfter: bigint;
  readonly validBefore: bigint;
  /** [name, raw data] in wire order. */
  readonly criticalOptions: [string, Buffer][];
  readonly extensions: [string, Buffer][];
  readonly caKey: Buffer;
  readonly signatureAlgorithm: string;
}

const KEY_FIELD_COUNT: Readonly<Record<string, number>> = {
  "ssh-ed25519": 1,
  "ssh-rsa": 2,
  "ecdsa-sha2-nistp256": 2,
  "ecdsa-sha2-nistp384": 2,
  "ecdsa-sha2-nistp521": 2,
};

function namedList(data: Buffer): [string, Buffer][] {
  const r = new Reader(data);
  const out: [string, Buffer][] = [];
  while (!r.done) out.push([r.text(), r.str()]);
  return out;
}

/** PROTOCOL.certkeys, field by field; trailing bytes fail. */
function decodeCertificate(line: string): DecodedCertificate {
  const r = new Reader(blobOf(line));
  const type = r.text();
  assert.match(type, /-cert-v01@openssh\.com$/);
  const nonce = r.str();
  assert.equal(nonce.length, 32, "nonce length");
  const count = KEY_FIELD_COUNT[type.replace("-cert-v01@openssh.com", "")];
  assert.ok(count !== undefined, type);
  const fields: Buffer[] = [];
  for (let i = 0; i < count; i++) fields.push(sshString(r.str()));
  const serial = r.u64();
  const certType = r.u32();
  const keyId = r.text();
  const pr = new Reader(r.str());
  const principals: string[] = [];
  while (!pr.done) principals.push(pr.text());
  const validAfter = r.u64();
  const validBefore = r.u64();
  const criticalOptions = namedList(r.str());
  const extensions = namedList(r.str());
  assert.equal(r.str().length, 0, "reserved must be empty");
  const caKey = r.str();
  const sig = new Reader(r.str());
  assert.ok(r.done, "trailing bytes after the signature");
  return {
    type,
    keyFields: Buffer.concat(fields),
    serial,
    certType,
    keyId,
    principals,
    validAfter,
    validBefore,
    criticalOptions,
    extensions,
    caKey,
    signatureAlgorithm: sig.text(),
  };
}

interface DecodedKrl {
  readonly formatVersion: number;
  readonly krlVersion: bigint;
  /** Certificate sections: the CA key and its revoked serials (list, ranges and bitmaps expanded). */
  readonly cas: { caKey: Buffer; serials: bigint[]; listsSorted: boolean }[];
}

/** PROTOCOL.krl, format 1. */
function decodeKrl(krl: Buffer): DecodedKrl {
  assert.equal(krl.subarray(0, 8).toString("latin1"), "SSHKRL\n\0", "KRL magic");
  const r = new Reader(krl.subarray(8));
  const formatVersion = r.u32();
  const krlVersion = r.u64();
  r.u64(); // generated_date
  assert.equal(r.u64(), 0n, "flags");
  r.str(); // reserved
  r.str(); // comment
  const cas: DecodedKrl["cas"] = [];
  while (!r.done) {
    const type = r.u8();
    const section = new Reader(r.str());
    if (type !== 1) continue;
    const caKey = section.str();
    section.str(); // reserved
    const serials: bigint[] = [];
    let listsSorted = true;
    while (!section.done) {
      const sub = section.u8();
      const data = new Reader(section.str());
      if (sub === 0x20) {
        let last = 0n;
        while (!data.done) {
          const s = data.u64();
          if (s <= last) listsSorted = false;
          last = s;
          serials.push(s);
        }
      } else if (sub === 0x21) {
        const lo = data.u64();
        const hi = data.u64();
        for (let s = lo; s <= hi; s++) serials.push(s);
      }
    }
    cas.push({ caKey: Buffer.from(caKey), serials, listsSorted });
  }
  return { formatVersion, krlVersion, cas };
}

describe("SSH CA conformance with OpenSSH (API, ssh-keygen, sshd)", { skip: opensshUnavailable() }, () => {
  let custos: CustosInstance;
  let dir: string;
  let sshd: Sshd;
  let krlFile: string;
  let userCa: string;
  let hostCa: string;
  let n = 0;

  const sign = (body: Json) => custos.call("POST", "/v1/ssh/sign", body);
  const file = (name: string) => join(dir, `${++n}-${name}`);
  const key = (spec: Parameters<typeof makeKey>[1] = "ed25519") => makeKey(file(String(spec)), spec);
  /** Writes a certificate line to a `-cert.pub` file. */
  const certFile = (line: string): string => {
    const f = `${file("c")}-cert.pub`;
    writeFileSync(f, `${line}\n`);
    return f;
  };
  const certificateCount = async (): Promise<number> =>
    (ok(await custos.call("GET", "/v1/ssh/certificates?limit=1000")).certificates as Json[]).length;
  const fetchKrl = async (): Promise<{ bytes: Buffer; version: number }> => {
    const krl = await fetchRaw(custos, "/v1/ssh/krl");
    assert.equal(krl.status, 200, krl.body.toString());
    writeFileSync(krlFile, krl.body);
    return { bytes: krl.body, version: Number(krl.headers["x-krl-version"]) };
  };
  /** `ssh-keygen -Q -f <krl> <file>`: true when revoked, false when not; anything else fails. */
  const revokedInKrl = (path: string): boolean => {
    const q = sshKeygen(["-Q", "-f", krlFile, path]);
    assert.ok(q.status === 0 || (q.status === 1 && /REVOKED/.test(q.stdout)), `${q.stdout}${q.stderr}`);
    return q.status === 1;
  };
  const signed = async (body: Json): Promise<{ cert: Json; line: string; path: string }> => {
    const cert = ok(await sign(body));
    const line = String(cert.certificate);
    return { cert, line, path: certFile(line) };
  };

  before(async () => {
    ensureLocalUser(ACCOUNT);
    custos = await startCustos();
    dir = mkdtempSync(join(tmpdir(), "custos-ssh-conformance-"));
    krlFile = join(dir, "revoked.krl");
    const ca = ok(await custos.call("GET", "/v1/ssh/ca", undefined, null)) as { user: Json[]; host: Json[] };
    userCa = String(ca.user[0]?.publicKey);
    hostCa = String(ca.host[0]?.publicKey);
    ok(
      await custos.call("PUT", "/v1/ssh/roles/conf-user", {
        certType: "user",
        principals: [ACCOUNT, "deploy"],
        ttlSeconds: 300,
        maxTtlSeconds: 600,
        extensions: ["permit-pty"],
        allowedExtensions: [
          "permit-X11-forwarding",
          "permit-agent-forwarding",
          "permit-port-forwarding",
          "permit-pty",
          "permit-user-rc",
        ],
        allowedCriticalOptions: ["force-command", "source-address"],
      }),
    );
    ok(
      await custos.call("PUT", "/v1/ssh/roles/conf-ec384", {
        certType: "user",
        principals: ["deploy"],
        keyTypes: { ecdsa: 384 },
      }),
    );
    ok(
      await custos.call("PUT", "/v1/ssh/roles/conf-host", {
        certType: "host",
        principals: ["*.db.internal"],
        ttlSeconds: 3600,
        maxTtlSeconds: 86_400,
      }),
    );
    await fetchKrl();
    sshd = await startSshd({
      trustedUserCaKeys: `${userCa}\n`,
      revokedKeysFile: krlFile,
      authorizedPrincipals: { [ACCOUNT]: [ACCOUNT] },
    });
  });

  after(async () => {
    await sshd?.stop();
    await custos?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("RSA subjects: a modulus with a leading zero byte and one of an odd bit length are certified unchanged; fewer bits than the role's minimum are refused", async () => {
    // OpenSSL makes a 3080-bit modulus with its high bit set (mpint 0x00 ‖ 385 bytes),
    // and for 3090 bits one whose top byte is not full (no sign byte, odd bit count).
    /** [bits ssh-keygen -l counts, whether n's mpint starts with the 0x00 sign byte] */
    const cases: [number, boolean][] = [];
    for (const bits of [3080, 3090]) {
      const { publicKey } = generateKeyPairSync("rsa", { modulusLength: bits });
      const pem = file(`rsa-${bits}.pem`);
      writeFileSync(pem, publicKey.export({ format: "pem", type: "spki" }));
      // ssh-keygen turns the SPKI into the OpenSSH line, and says how many bits it holds.
      const line = sshKeygen(["-i", "-m", "PKCS8", "-f", pem]).stdout.trim();
      const pub = `${pem}.pub`;
      writeFileSync(pub, `${line}\n`);
      const size = Number(sshKeygen(["-l", "-f", pub]).stdout.split(" ")[0]);
      const fields = new Reader(blobOf(line));
      fields.text();
      fields.str(); // e
      cases.push([size, fields.str()[0] === 0]);
      const { line: certLine, path } = await signed({ role: "conf-user", publicKey: line, principals: ["deploy"] });
      const decoded = decodeCertificate(certLine);
      assert.equal(decoded.type, "ssh-rsa-cert-v01@openssh.com");
      assert.deepEqual(decoded.keyFields, blobOf(line).subarray(sshString("ssh-rsa").length), "e and n unchanged");
      // ssh-keygen -l on the certificate: same size and fingerprint as the plain key.
      const fp = sshKeygen(["-l", "-f", path]);
      assert.equal(fp.status, 0, fp.stderr);
      const plain = sshKeygen(["-l", "-f", pub]).stdout.split(" ");
      assert.deepEqual(fp.stdout.split(" ").slice(0, 2), plain.slice(0, 2), fp.stdout);
      assert.match(fp.stdout, /\(RSA-CERT\)/);
      assert.equal(describeCertificate(path).status, 0);
    }
    const [leading, odd] = cases as [[number, boolean], [number, boolean]];
    assert.ok(leading[0] % 8 === 0 && leading[1], `${leading[0]} bits: n's mpint has the 0x00 sign byte`);
    assert.ok(odd[0] % 8 !== 0 && !odd[1], `${odd[0]} bits: a partial top byte, no sign byte`);

    // ssh-keygen -b 3071 makes a 3070-bit key (ssh-keygen -l says so): under the default 3072.
    const small = key("rsa-3071");
    assert.match(sshKeygen(["-l", "-f", small.pubFile]).stdout, /^3070 /);
    const before = await certificateCount();
    const refused = await sign({ role: "conf-user", publicKey: small.publicKey, principals: ["deploy"] });
    assert.equal(refused.status, 400, refused.text);
    assert.equal(errorCode(refused), "key_type_not_allowed");
    assert.match(refused.text, /3070/);
    assert.equal(await certificateCount(), before);
  });

  test("a role taking ECDSA of at least 384 bits certifies P-384 and P-521 and refuses P-256 and Ed25519", async () => {
    for (const [spec, type] of [
      ["ecdsa-384", "ecdsa-sha2-nistp384"],
      ["ecdsa-521", "ecdsa-sha2-nistp521"],
    ] as const) {
      const k = key(spec);
      const { line, path } = await signed({ role: "conf-ec384", publicKey: k.publicKey });
      const d = decodeCertificate(line);
      assert.equal(d.type, `${type}-cert-v01@openssh.com`);
      assert.deepEqual(d.keyFields, blobOf(k.publicKey).subarray(sshString(type).length));
      const shown = describeCertificate(path);
      assert.equal(shown.status, 0, shown.stderr);
      assert.match(shown.stdout, new RegExp(`Type: ${type}-cert-v01@openssh.com user certificate`));
    }
    const before = await certificateCount();
    for (const spec of ["ecdsa-256", "ed25519"] as const) {
      const refused = await sign({ role: "conf-ec384", publicKey: key(spec).publicKey });
      assert.equal(refused.status, 400, `${spec}: ${refused.text}`);
      assert.equal(errorCode(refused), "key_type_not_allowed", spec);
    }
    assert.equal(await certificateCount(), before);
  });

  test("critical options and extensions on the wire: sorted by name, unique, values a string inside a string, extension data empty", async () => {
    const forceCommand = `printf '%s|%s\\n' "it's" 'a "quoted"  arg'`;
    const sourceAddress = "10.0.0.0/8,127.0.0.1/32,::1,2001:db8::/32";
    const { cert, line, path } = await signed({
      role: "conf-user",
      publicKey: key().publicKey,
      principals: [ACCOUNT],
      extensions: [
        "permit-user-rc",
        "permit-pty",
        "permit-X11-forwarding",
        "permit-port-forwarding",
        "permit-agent-forwarding",
      ],
      criticalOptions: { "source-address": sourceAddress, "force-command": forceCommand },
    });
    const d = decodeCertificate(line);
    assert.equal(d.certType, 1);
    assert.deepEqual(
      d.criticalOptions.map(([name]) => name),
      ["force-command", "source-address"],
    );
    for (const [name, data] of d.criticalOptions) {
      const value = name === "force-command" ? forceCommand : sourceAddress;
      assert.deepEqual(data, sshString(value), `${name}: string(string(value))`);
    }
    // Byte order: capital X sorts before the lowercase names.
    assert.deepEqual(
      d.extensions.map(([name]) => name),
      ["permit-X11-forwarding", "permit-agent-forwarding", "permit-port-forwarding", "permit-pty", "permit-user-rc"],
    );
    for (const [name, data] of d.extensions) assert.equal(data.length, 0, `${name} carries data`);
    assert.deepEqual(
      cert.extensions,
      d.extensions.map(([name]) => name),
    );
    const shown = describeCertificate(path);
    assert.equal(shown.status, 0, shown.stderr);
    assert.ok(shown.stdout.includes(`force-command ${forceCommand}`), shown.stdout);
    assert.ok(shown.stdout.includes(`source-address ${sourceAddress}`), shown.stdout);
  });

  test("sshd runs the force-command with its quotes intact and honours a source-address list", async () => {
    const k = key();
    const forceCommand = `printf '%s|%s\\n' "it's" 'a "quoted"  arg'`;
    const { path } = await signed({
      role: "conf-user",
      publicKey: k.publicKey,
      principals: [ACCOUNT],
      criticalOptions: { "force-command": forceCommand, "source-address": "10.0.0.0/8,127.0.0.1/32,::1" },
    });
    await fetchKrl();
    const mark = sshd.log().length;
    const r = await sshRun({ port: sshd.port, user: ACCOUNT, key: k.file, cert: path, command: "echo not-forced" });
    assert.equal(r.status, 0, `${r.stderr}\nsshd:\n${sshd.logSince(mark)}`);
    assert.equal(r.stdout, `it's|a "quoted"  arg\n`);

    // The control: a list without the client's address keeps it out.
    const outside = await signed({
      role: "conf-user",
      publicKey: k.publicKey,
      principals: [ACCOUNT],
      criticalOptions: { "source-address": "10.0.0.0/8,192.0.2.0/24" },
    });
    const mark2 = sshd.log().length;
    const refused = await sshRun({ port: sshd.port, user: ACCOUNT, key: k.file, cert: outside.path, command: "true" });
    assert.equal(refused.status, 255, refused.stdout);
    assert.match(sshd.logSince(mark2), /source-address|not permitted|Authentication tried/i);
  });

  test("source-address values that OpenSSH rejects (host bits past the prefix, an IPv6 zone) are refused, not issued unusable", async () => {
    const k = key();
    const ca = makeKey(file("oracle-ca"));
    for (const value of ["127.0.0.1/8", "fe80::1%eth0", "10.0.0.0/8,192.168.1.1/16"]) {
      // The oracle: ssh-keygen -s refuses to put this value in a certificate.
      const args = ["-q", "-s", ca.file, "-I", "x", "-n", "p", "-O", `source-address=${value}`, k.pubFile];
      assert.notEqual(sshKeygen(args).status, 0, `ssh-keygen -s took source-address=${value}`);
      const a = await sign({
        role: "conf-user",
        publicKey: k.publicKey,
        principals: [ACCOUNT],
        criticalOptions: { "source-address": value },
      });
      if (a.status === 200 && value === "127.0.0.1/8") {
        // What was issued: 127.0.0.1 lies in 127.0.0.0/8, yet sshd refuses the certificate outright.
        const path = certFile(String((a.body as Json).certificate));
        const mark = sshd.log().length;
        const r = await sshRun({ port: sshd.port, user: ACCOUNT, key: k.file, cert: path, command: "true" });
        assert.equal(r.status, 0, `sshd refused the issued certificate:\n${sshd.logSince(mark)}`);
      }
      assert.equal(a.status, 400, `source-address=${value}: ${a.text}`);
      assert.equal(errorCode(a), "invalid_request");
    }
    // The same check guards a role's fixed options.
    const role = await custos.call("PUT", "/v1/ssh/roles/conf-bad-cidr", {
      certType: "user",
      principals: ["deploy"],
      criticalOptions: { "source-address": "127.0.0.1/8" },
    });
    assert.equal(role.status, 400, role.text);
  });

  test("validity: valid_after 30 s back, valid_before at most the role's maximum ahead, never 'forever'; the API states the certificate's times", async () => {
    const asked = Math.floor(Date.now() / 1000);
    const { cert, line, path } = await signed({
      role: "conf-user",
      publicKey: key().publicKey,
      principals: ["deploy"],
      ttlSeconds: 600,
    });
    const answered = Math.ceil(Date.now() / 1000);
    const d = decodeCertificate(line);
    assert.ok(d.validBefore !== UINT64_MAX && d.validAfter !== 0n, "a bounded window");
    assert.ok(d.validBefore <= BigInt(answered + 600), `valid_before ${d.validBefore} past now + 600`);
    assert.ok(d.validBefore >= BigInt(asked + 600 - 1));
    const window = d.validBefore - d.validAfter;
    assert.ok(window >= 629n && window <= 631n, `window ${window} s: 600 + 30 of skew`);
    // The times answered are the certificate's, to the millisecond (it holds whole seconds).
    assert.equal(BigInt(Date.parse(String(cert.validAfter))), d.validAfter * 1000n);
    assert.equal(BigInt(Date.parse(String(cert.validBefore))), d.validBefore * 1000n);
    assert.doesNotMatch(describeCertificate(path).stdout, /forever/);
    const over = await sign({ role: "conf-user", publicKey: key().publicKey, principals: ["deploy"], ttlSeconds: 601 });
    assert.equal(over.status, 400, over.text);
    assert.equal(errorCode(over), "ttl_too_long");

    // The host role's default day: bounded too.
    const host = await signed({
      role: "conf-host",
      publicKey: key("ecdsa-256").publicKey,
      principals: ["pg-1.db.internal"],
    });
    const h = decodeCertificate(host.line);
    assert.equal(h.certType, 2);
    assert.ok(h.validBefore - h.validAfter <= 3630n && h.validBefore !== UINT64_MAX);
    assert.deepEqual(h.criticalOptions, []);
    assert.deepEqual(h.extensions, []);
  });

  test("serials: unique, non-zero and what ssh-keygen -L reads; the key id names who asked, the role and the request", async () => {
    const k = key();
    const issued: { serial: bigint; keyId: string }[] = [];
    for (let i = 0; i < 30; i++) {
      const { cert, line, path } = await signed({ role: "conf-user", publicKey: k.publicKey, principals: ["deploy"] });
      const d = decodeCertificate(line);
      assert.notEqual(d.serial, 0n);
      assert.equal(String(d.serial), cert.serial);
      assert.equal(d.keyId, cert.keyId);
      const shown = describeCertificate(path).stdout;
      assert.match(shown, new RegExp(`Serial: ${d.serial}\\n`));
      assert.ok(shown.includes(`Key ID: "${d.keyId}"`), shown);
      issued.push({ serial: d.serial, keyId: d.keyId });
    }
    assert.equal(new Set(issued.map((c) => c.serial)).size, issued.length);
    // The audit journal's record of each signing names the same principal and request.
    const records = ok(await custos.call("GET", "/v1/audit?action=ssh.sign&limit=1000")).records as Json[];
    for (const c of issued) {
      const record = records.find((r) => (r.details as Json | undefined)?.serial === String(c.serial));
      assert.ok(record, `no audit record for serial ${c.serial}`);
      assert.equal(c.keyId, `${String(record.principal)} role=conf-user request=${String(record.requestId)}`);
    }
  });

  test("a certificate never carries more principals than OpenSSH reads (256): templates that yield more are refused", async () => {
    // ssh-keygen itself won't make one: 256 is SSHKEY_CERT_MAX_PRINCIPALS.
    const ca = makeKey(file("limit-ca"));
    const subject = key();
    const many = Array.from({ length: 257 }, (_, i) => `p${i}`).join(",");
    const byKeygen = sshKeygen(["-q", "-s", ca.file, "-I", "x", "-n", many, subject.pubFile]);
    assert.notEqual(byKeygen.status, 0, "ssh-keygen -s made a certificate with 257 principals");

    const password = "correct horse battery staple";
    ok(await custos.call("POST", "/v1/users", { name: "conf-many", password, policies: [] }), 201);
    for (let i = 0; i < 256; i++) {
      ok(await custos.call("POST", "/v1/groups", { name: `conf-g${i}`, members: ["conf-many"] }), 201);
    }
    ok(
      await custos.call("PUT", "/v1/ssh/roles/conf-groups", {
        certType: "user",
        principals: ["{{username}}", "{{groups}}"],
        selfService: true,
      }),
    );
    const login = ok(await custos.call("POST", "/v1/auth/login", { username: "conf-many", password }, null));
    const a = await custos.call(
      "POST",
      "/v1/ssh/sign",
      { role: "conf-groups", publicKey: subject.publicKey },
      String(login.token),
    );
    if (a.status === 200) {
      // What was issued: 257 principals, which OpenSSH can't load.
      const line = String((a.body as Json).certificate);
      assert.equal(decodeCertificate(line).principals.length, 257);
      const shown = describeCertificate(certFile(line));
      assert.equal(shown.status, 0, `ssh-keygen -L can't read the certificate: ${shown.stderr}`);
    }
    assert.equal(a.status, 400, a.text);
  });

  test("KRL: after revoking scattered serials, ssh-keygen -Q reports exactly those; the section names the user CA, serials ascending", async () => {
    const k = key();
    const certs: { serial: string; path: string }[] = [];
    for (let i = 0; i < 12; i++) {
      const { cert, path } = await signed({ role: "conf-user", publicKey: k.publicKey, principals: ["deploy"] });
      certs.push({ serial: String(cert.serial), path });
    }
    const revoke = new Set([1, 4, 5, 9, 11]);
    const { version: v0 } = await fetchKrl();
    for (const i of revoke) {
      ok(await custos.call("POST", "/v1/ssh/revoke", { serial: certs[i]?.serial, reason: "conformance" }));
    }
    const { bytes, version } = await fetchKrl();
    assert.equal(version, v0 + revoke.size);
    certs.forEach((c, i) => {
      assert.equal(revokedInKrl(c.path), revoke.has(i), `certificate ${i} (serial ${c.serial})`);
    });
    const krl = decodeKrl(bytes);
    assert.equal(krl.formatVersion, 1);
    assert.equal(krl.krlVersion, BigInt(version));
    const user = krl.cas.find((c) => c.caKey.equals(blobOf(userCa)));
    assert.ok(user, "a certificates section for the user CA");
    assert.ok(user.listsSorted, "serial lists ascending, no duplicates");
    for (const i of revoke) assert.ok(user.serials.includes(BigInt(certs[i]?.serial ?? 0)));
    assert.ok(!krl.cas.some((c) => c.caKey.equals(blobOf(hostCa)) && c.serials.length > 0));
    // The stable URL serves the same bytes until the next revocation.
    assert.deepEqual((await fetchRaw(custos, "/v1/ssh/krl")).body, bytes);
  });

  test("KRL: a revoked host certificate is listed under the host CA only; another CA's certificate of that serial is not revoked", async () => {
    const k = key("ecdsa-256");
    const host = await signed({ role: "conf-host", publicKey: k.publicKey, principals: ["pg-2.db.internal"] });
    const serial = String(host.cert.serial);
    ok(await custos.call("POST", "/v1/ssh/revoke", { serial, reason: "conformance" }));
    const { bytes } = await fetchKrl();
    assert.equal(revokedInKrl(host.path), true);
    const krl = decodeKrl(bytes);
    const section = krl.cas.find((c) => c.caKey.equals(blobOf(hostCa)));
    assert.ok(section, "a certificates section for the host CA");
    assert.ok(section.serials.includes(BigInt(serial)));
    assert.ok(!krl.cas.some((c) => c.caKey.equals(blobOf(userCa)) && c.serials.includes(BigInt(serial))));

    // Serials are per CA: the same serial from another CA is untouched.
    const other = makeKey(file("other-ca"));
    const made = sshKeygen([
      "-q",
      "-s",
      other.file,
      "-h",
      "-I",
      "x",
      "-n",
      "pg-2.db.internal",
      "-z",
      serial,
      k.pubFile,
    ]);
    assert.equal(made.status, 0, made.stderr);
    assert.equal(revokedInKrl(`${k.file}-cert.pub`), false);
  });

  test("malformed subject keys answer 400 invalid_request (never a 500) and sign nothing", async () => {
    const ed = key();
    const edBlob = blobOf(ed.publicKey);
    const ec = key("ecdsa-256");
    const ecBlob = blobOf(ec.publicKey);
    const b64 = (b: Buffer) => b.toString("base64");
    const userCert = (await signed({ role: "conf-user", publicKey: ed.publicKey, principals: ["deploy"] })).line;
    const certBlob = blobOf(userCert);
    const sk = Buffer.concat([
      sshString("sk-ssh-ed25519@openssh.com"),
      sshString(edBlob.subarray(19)),
      sshString("ssh:"),
    ]);
    const evenModulus = Buffer.concat([
      sshString("ssh-rsa"),
      sshString(Buffer.of(1, 0, 1)),
      sshString(Buffer.concat([Buffer.of(0), Buffer.alloc(384, 0xfe)])),
    ]);
    const edData = ed.publicKey.split(" ")[1] as string;
    const cases: [string, string][] = [
      ["truncated base64 (whole quanta)", `ssh-ed25519 ${edData.slice(0, 40)}`],
      ["truncated base64 (mid-quantum)", `ssh-ed25519 ${edData.slice(0, -3)}`],
      ["an ECDSA blob under the Ed25519 name", `ssh-ed25519 ${b64(ecBlob)}`],
      ["trailing bytes after the key", `ssh-ed25519 ${b64(Buffer.concat([edBlob, Buffer.of(0)]))}`],
      [
        "a 31-byte Ed25519 key",
        `ssh-ed25519 ${b64(Buffer.concat([sshString("ssh-ed25519"), sshString(Buffer.alloc(31, 1))]))}`,
      ],
      [
        "a length prefix past the end",
        `ssh-ed25519 ${b64(Buffer.concat([sshString("ssh-ed25519"), Buffer.from("ffffffff", "hex")]))}`,
      ],
      ["a certificate line", userCert],
      ["a certificate blob under the plain key name", `ssh-ed25519 ${b64(certBlob)}`],
      ["a security-key type", `sk-ssh-ed25519@openssh.com ${b64(sk)}`],
      ["an RSA key with an even modulus", `ssh-rsa ${b64(evenModulus)}`],
      ["authorized_keys options before the type", `no-pty ${ed.publicKey}`],
      ["a private key", "-----BEGIN OPENSSH PRIVATE KEY-----"],
    ];
    const before = await certificateCount();
    for (const [what, publicKey] of cases) {
      const a = await sign({ role: "conf-user", publicKey, principals: ["deploy"] });
      assert.equal(a.status, 400, `${what}: ${a.text}`);
      assert.equal(errorCode(a), "invalid_request", `${what}: ${a.text}`);
      const r = await custos.call("POST", "/v1/ssh/revoke", { publicKey, reason: "conformance" });
      assert.equal(r.status, 400, `revoke, ${what}: ${r.text}`);
    }
    assert.equal(await certificateCount(), before);
  });
});
