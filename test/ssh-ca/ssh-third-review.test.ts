/**
 * A third conformance pass over the SSH CA, judged by OpenSSH: fields at their
 * limits (256 principals, 255-character principals of unusual characters), every
 * subject key type ssh-keygen makes here logging in to a real sshd, source-address
 * lists against `ssh-keygen -s`'s own check, private keys pasted by mistake, the KRL
 * after many revocations against one `ssh-keygen -k` builds from the same facts, host
 * principals against the names the ssh client checks, `custos ssh connect`'s
 * argument passing and clean-up, and sudo grants at their expiry on a clock the test
 * moves. It leaves out what conformance.test.ts, openssh-second-review.test.ts,
 * service.test.ts and the e2e SSH tests already cover.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { isCustosError } from "../../src/errors/index.js";
import { type Requester, SshCa } from "../../src/ssh-ca/index.js";
import { type CustosInstance, errorCode, fetchRaw, ok, startCustos } from "../helpers/custos.js";
import {
  describeCertificate,
  ensureLocalUser,
  type KeyPair,
  type KeySpec,
  makeKey,
  opensshUnavailable,
  type Sshd,
  sshKeygen,
  sshRun,
  startSshd,
} from "../helpers/openssh.js";
import { acmeProdApps, loggedInUser, nodeAgentToken } from "../helpers/platform.js";
import { admin, openPlatformFixture, type PlatformFixture } from "../platform/setup.js";

type Json = Record<string, unknown>;

const ACCOUNT = "custos-app";
const PASSWORD = "correct horse battery staple";
/** What the served known_hosts line covers. */
const PATTERN = "*.cluster.test";

function sshString(value: Buffer | string): Buffer {
  const b = typeof value === "string" ? Buffer.from(value, "utf8") : value;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(b.length);
  return Buffer.concat([len, b]);
}

/** The principals `ssh-keygen -L` lists, one per line. */
function listedPrincipals(shown: string): string[] {
  const lines = shown.split("\n");
  const from = lines.findIndex((l) => /^\s+Principals:/.test(l));
  const out: string[] = [];
  for (const line of lines.slice(from + 1)) {
    if (!/^ {16}\S/.test(line)) break;
    out.push(line.slice(16));
  }
  return out;
}

describe("SSH CA, third conformance review (OpenSSH as the oracle)", { skip: opensshUnavailable() }, () => {
  let custos: CustosInstance;
  let dir: string;
  let sshd: Sshd;
  let krlFile: string;
  let userCa: string;
  let hostCa: string;
  let ownerToken: string;
  let agentToken: string;
  let n = 0;

  const key = (spec: KeySpec = "ed25519"): KeyPair => makeKey(join(dir, `${++n}-${spec}`), spec);
  const sign = (body: Json, bearer?: string) => custos.call("POST", "/v1/ssh/sign", body, bearer);
  /** A certificate line written to a fresh `-cert.pub` file. */
  const certFile = (line: string): string => {
    const file = join(dir, `${++n}-cert.pub`);
    writeFileSync(file, `${line}\n`);
    return file;
  };
  const signedFile = async (body: Json, bearer?: string): Promise<{ cert: Json; file: string }> => {
    const cert = ok(await sign(body, bearer));
    return { cert, file: certFile(String(cert.certificate)) };
  };
  const certificateCount = async (): Promise<number> =>
    (ok(await custos.call("GET", "/v1/ssh/certificates?limit=1000")).certificates as Json[]).length;
  const fetchKrl = async (): Promise<{ body: Buffer; version: number }> => {
    const { status, headers, body } = await fetchRaw(custos, "/v1/ssh/krl");
    assert.equal(status, 200, body.toString());
    writeFileSync(krlFile, body);
    return { body, version: Number(headers["x-krl-version"]) };
  };
  /** `ssh-keygen -Q -f krl files…`: which of the files the KRL revokes. */
  const revokedBy = (krl: string, files: readonly string[]): Map<string, boolean> => {
    const q = sshKeygen(["-Q", "-f", krl, ...files]);
    assert.ok(q.status === 0 || q.status === 1, `${q.stdout}${q.stderr}`);
    const out = new Map<string, boolean>();
    for (const file of files) {
      const line = q.stdout.split("\n").find((l) => l.startsWith(`${file} `));
      assert.ok(line, `ssh-keygen -Q said nothing of ${file}:\n${q.stdout}${q.stderr}`);
      out.set(file, /: REVOKED$/.test(line));
    }
    return out;
  };
  const fingerprint = (pubFile: string): string => {
    const r = sshKeygen(["-l", "-E", "sha256", "-f", pubFile]);
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.split(" ")[1] ?? "";
  };
  /** ssh with only `knownHosts` trusted, StrictHostKeyChecking yes, checking the host as `alias`. */
  const sshStrict = (o: { port: number; login: KeyPair; cert: string; knownHosts: string; alias: string }) =>
    spawnSync(
      "ssh",
      [
        ...["-F", "/dev/null", "-i", o.login.file, "-o", `CertificateFile=${o.cert}`, "-o", "IdentitiesOnly=yes"],
        ...["-o", "IdentityAgent=none", "-o", "BatchMode=yes", "-o", `UserKnownHostsFile=${o.knownHosts}`],
        ...["-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no"],
        ...["-o", `HostKeyAlias=${o.alias}`, "-p", String(o.port), "-l", ACCOUNT, "127.0.0.1", "echo reached"],
      ],
      { encoding: "utf8", timeout: 60_000 },
    );
  /** The key directories `ssh connect` made in `tmp`. */
  const keyDirs = (tmp: string): string[] => readdirSync(tmp).filter((name) => name.startsWith("custos-ssh-"));
  const freshTmp = (name: string): string => {
    const t = join(dir, `tmp-${name}-${++n}`);
    mkdirSync(t, { mode: 0o755 });
    return t;
  };

  before(async () => {
    ensureLocalUser(ACCOUNT);
    custos = await startCustos({ ssh: { knownHostsPattern: PATTERN } });
    dir = mkdtempSync(join(tmpdir(), "custos-ssh-review3-"));
    krlFile = join(dir, "revoked.krl");
    const ca = ok(await custos.call("GET", "/v1/ssh/ca", undefined, null)) as { user: Json[]; host: Json[] };
    userCa = String(ca.user[0]?.publicKey);
    hostCa = String(ca.host[0]?.publicKey);

    ownerToken = await loggedInUser(custos, "app-owner", PASSWORD);
    await acmeProdApps(custos, [{ name: "web", owners: { users: ["app-owner"] } }]);
    agentToken = nodeAgentToken(custos);
    ok(
      await custos.call(
        "POST",
        "/v1/broker/instances",
        { org: "acme", space: "prod", app: "web", instance: "web-1" },
        agentToken,
      ),
      201,
    );
    ok(
      await custos.call("PUT", "/v1/ssh/roles/tr-any", {
        certType: "user",
        principals: ["*"],
        ttlSeconds: 300,
        maxTtlSeconds: 600,
        allowedCriticalOptions: ["source-address"],
        keyTypes: { ed25519: 256, ecdsa: 256, rsa: 2048 },
      }),
    );
    ok(await custos.call("PUT", "/v1/ssh/roles/tr-names", { certType: "user", principals: ["tr-*", ACCOUNT] }));
    ok(
      await custos.call("PUT", "/v1/ssh/roles/tr-hosts", {
        certType: "host",
        principals: [PATTERN],
        ttlSeconds: 3600,
        maxTtlSeconds: 86_400,
      }),
    );
    await fetchKrl();
    sshd = await startSshd({
      trustedUserCaKeys: `${userCa}\n`,
      revokedKeysFile: krlFile,
      authorizedPrincipals: { [ACCOUNT]: ["web-1", ACCOUNT] },
      // The agent certifies the instance's host key, as a platform would.
      hostCertificate: async (pub) =>
        String(
          ok(await sign({ role: "instance-host", publicKey: pub, principals: ["web-1"] }, agentToken)).certificate,
        ),
    });
  });

  after(async () => {
    await sshd?.stop();
    await custos?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("256 principals asked for by name are all carried, in order; sshd admits by the last one; 257 are refused and sign nothing", async () => {
    const names = [...Array.from({ length: 255 }, (_, i) => `tr-${String(i).padStart(3, "0")}`), ACCOUNT];
    const login = key();
    const { cert, file } = await signedFile({ role: "tr-names", publicKey: login.publicKey, principals: names });
    assert.deepEqual(cert.principals, names);
    const shown = describeCertificate(file);
    assert.equal(shown.status, 0, shown.stderr);
    assert.deepEqual(listedPrincipals(shown.stdout), names);
    await fetchKrl();
    const mark = sshd.log().length;
    const r = await sshRun({ port: sshd.port, user: ACCOUNT, key: login.file, cert: file, command: "echo in" });
    assert.equal(r.status, 0, `${r.stderr}\nsshd:\n${sshd.logSince(mark)}`);
    assert.equal(r.stdout, "in\n");

    const before = await certificateCount();
    const over = await sign({ role: "tr-names", publicKey: login.publicKey, principals: [...names, "tr-999"] });
    assert.equal(over.status, 400, over.text);
    assert.equal(errorCode(over), "invalid_request", over.text);
    assert.equal(await certificateCount(), before);
  });

  test("a 255-character principal of shell and sshd metacharacters is carried byte for byte and matched exactly by sshd; 256 characters, a space or a comma are refused", async () => {
    // No '#' (sshd cuts a principals file line there) and no blank (it starts options).
    const odd = `q"'$;|&\\%u<>()[]{}~!@:/\`*?=+^`;
    const long = (odd + "z".repeat(255)).slice(0, 255);
    const login = key();
    const { cert, file } = await signedFile({
      role: "tr-any",
      publicKey: login.publicKey,
      principals: [long, odd, "user@host"],
    });
    assert.deepEqual(cert.principals, [long, odd, "user@host"]);
    // The certificate holds the strings as given: find them, length-prefixed, in its blob.
    const blob = Buffer.from(String(cert.certificate).split(" ")[1] ?? "", "base64");
    assert.ok(blob.includes(Buffer.concat([sshString(long), sshString(odd), sshString("user@host")])));
    assert.deepEqual(listedPrincipals(describeCertificate(file).stdout), [long, odd, "user@host"]);

    // sshd takes the principals file literally (no %-expansion, no globbing) and matches the whole string.
    sshd.setPrincipals(ACCOUNT, [long]);
    try {
      await fetchKrl();
      const mark = sshd.log().length;
      const r = await sshRun({ port: sshd.port, user: ACCOUNT, key: login.file, cert: file, command: "echo in" });
      assert.equal(r.status, 0, `${r.stderr}\nsshd:\n${sshd.logSince(mark)}`);
      sshd.setPrincipals(ACCOUNT, [long.slice(0, 254)]);
      const prefix = await sshRun({ port: sshd.port, user: ACCOUNT, key: login.file, cert: file, command: "true" });
      assert.equal(prefix.status, 255, "a 254-character prefix matched");
    } finally {
      sshd.setPrincipals(ACCOUNT, ["web-1", ACCOUNT]);
    }

    const before = await certificateCount();
    for (const bad of [`${long}z`, "two words", "a,b", "tab\there"]) {
      const a = await sign({ role: "tr-any", publicKey: login.publicKey, principals: [bad] });
      assert.equal(a.status, 400, `${JSON.stringify(bad)}: ${a.text}`);
    }
    assert.equal(await certificateCount(), before);
  });

  test("source-address: whatever ssh-keygen -s refuses is refused; whatever is issued, ssh-keygen -L shows verbatim", async () => {
    const oracleCa = key();
    const subject = key();
    const values = [
      "0.0.0.0/0",
      "::/0",
      "2001:DB8::/32",
      "::ffff:127.0.0.0/104",
      "0000:0000:0000:0000:0000:ffff:255.255.255.255/128",
      "fe80::/10",
      "127.0.0.1/33",
      "::1/129",
      "10.0.0.0/8,",
      ",10.0.0.0/8",
      "10.0.0.0/8,,127.0.0.1",
      " 10.0.0.0/8",
      "10.0.0.0/8 ",
      "1::2::3",
      "[::1]",
      "10.0.0.0/-1",
      "10.0.0.0/",
      "/8",
      "::ffff:10.0.0.0/8",
      "1.2.3.4/32/1",
      "0x7f.0.0.1",
      // inet_aton forms ssh-keygen takes with a surprising meaning (127.0.0.1, 1.2.0.3, octal 04 = 4).
      "127.1",
      "1.2.3",
      "1.2.3.04",
      "10.0.0.0/08",
    ];
    const issued: string[] = [];
    for (const value of values) {
      const byKeygen = sshKeygen([
        ...["-q", "-s", oracleCa.file, "-I", "x", "-n", "p", "-O", `source-address=${value}`],
        subject.pubFile,
      ]);
      const a = await sign({
        role: "tr-any",
        publicKey: subject.publicKey,
        principals: ["p"],
        criticalOptions: { "source-address": value },
      });
      if (byKeygen.status !== 0) {
        assert.equal(a.status, 400, `ssh-keygen refuses source-address=${JSON.stringify(value)}; Custos: ${a.text}`);
        assert.equal(errorCode(a), "invalid_request");
        continue;
      }
      if (a.status !== 200) continue; // stricter than OpenSSH: allowed
      issued.push(value);
      const shown = describeCertificate(certFile(String((a.body as Json).certificate)));
      assert.equal(shown.status, 0, shown.stderr);
      assert.ok(shown.stdout.includes(`source-address ${value}\n`), shown.stdout);
    }
    // The plain CIDR forms are all taken.
    for (const v of ["0.0.0.0/0", "::/0", "2001:DB8::/32", "::ffff:127.0.0.0/104", "fe80::/10"]) {
      assert.ok(issued.includes(v), `${v} refused`);
    }
  });

  test("sshd enforces the issued source-address: 0.0.0.0/0 and a 64-entry list ending in the client admit it, ::/0 alone keeps an IPv4 client out", async () => {
    const login = key();
    const many = [...Array.from({ length: 63 }, (_, i) => `10.${i}.0.0/16`), "127.0.0.1"].join(",");
    await fetchKrl();
    for (const [value, admitted] of [
      ["0.0.0.0/0", true],
      [many, true],
      ["::/0", false],
    ] as const) {
      const { file } = await signedFile({
        role: "tr-any",
        publicKey: login.publicKey,
        principals: [ACCOUNT],
        criticalOptions: { "source-address": value },
      });
      const mark = sshd.log().length;
      const r = await sshRun({ port: sshd.port, user: ACCOUNT, key: login.file, cert: file, command: "echo in" });
      assert.equal(r.status, admitted ? 0 : 255, `${value.slice(0, 40)}: ${r.stderr}\nsshd:\n${sshd.logSince(mark)}`);
      if (!admitted) assert.match(sshd.logSince(mark), /not from a permitted source address/);
    }
  });

  test("every subject key type ssh-keygen makes here is certified as itself and logs in; DSA, a security key and RSA-1024 sign nothing", async () => {
    const specs: KeySpec[] = ["ed25519", "ecdsa-256", "ecdsa-384", "ecdsa-521", "rsa-2048", "rsa-4096"];
    await fetchKrl();
    for (const spec of specs) {
      const login = key(spec);
      const { cert, file } = await signedFile({ role: "tr-any", publicKey: login.publicKey, principals: [ACCOUNT] });
      // ssh-keygen -l of a certificate prints its subject key's size and fingerprint.
      const plain = sshKeygen(["-l", "-E", "sha256", "-f", login.pubFile]).stdout.split(" ");
      const certified = sshKeygen(["-l", "-E", "sha256", "-f", file]).stdout.split(" ");
      assert.deepEqual(certified.slice(0, 2), plain.slice(0, 2), spec);
      assert.equal(cert.fingerprint, plain[1]);
      const mark = sshd.log().length;
      const r = await sshRun({ port: sshd.port, user: ACCOUNT, key: login.file, cert: file, command: "echo in" });
      assert.equal(r.status, 0, `${spec}: ${r.stderr}\nsshd:\n${sshd.logSince(mark)}`);
      assert.match(sshd.logSince(mark), new RegExp(`Accepted publickey .*\\(serial ${String(cert.serial)}\\)`));
    }

    const dsa = sshKeygen(["-t", "dsa", "-N", "", "-q", "-f", join(dir, "dsa")]);
    const ec = key("ecdsa-256");
    const point = (() => {
      const r = Buffer.from(ec.publicKey.split(" ")[1] ?? "", "base64");
      // type, curve name, point: the point is the last string.
      return r.subarray(r.length - 65);
    })();
    const skEcdsa = Buffer.concat([
      sshString("sk-ecdsa-sha2-nistp256@openssh.com"),
      sshString("nistp256"),
      sshString(point),
      sshString("ssh:"),
    ]);
    const refused: [string, string][] = [
      ["an sk-ecdsa security key", `sk-ecdsa-sha2-nistp256@openssh.com ${skEcdsa.toString("base64")} yubikey`],
      ["RSA 1024", key("rsa-1024").publicKey],
    ];
    if (dsa.status === 0) refused.push(["DSA", readFileSync(join(dir, "dsa.pub"), "utf8").trim()]);
    const before = await certificateCount();
    for (const [what, publicKey] of refused) {
      const a = await sign({ role: "tr-any", publicKey, principals: [ACCOUNT] });
      assert.equal(a.status, 400, `${what}: ${a.text}`);
      assert.ok(["invalid_request", "key_type_not_allowed"].includes(errorCode(a) ?? ""), `${what}: ${a.text}`);
    }
    assert.equal(await certificateCount(), before);
  });

  test("a private key pasted instead of the public one is refused, and no part of it reaches the answer, the audit log, the server log or the CLI's output", async () => {
    const k = key();
    const openssh = readFileSync(k.file, "utf8");
    const pkcs8 = generateKeyPairSync("ed25519").privateKey.export({ format: "pem", type: "pkcs8" }).toString();
    const pkcs1 = generateKeyPairSync("rsa", { modulusLength: 2048 })
      .privateKey.export({ format: "pem", type: "pkcs1" })
      .toString();
    /** A run of the key's base64 body from its private part (the last body lines). */
    const secretOf = (pem: string): string => {
      const body = pem.split(/\r?\n/).filter((l) => l !== "" && !l.startsWith("-----") && !l.includes(":"));
      const line = body.at(-2) ?? body.at(-1) ?? "";
      assert.ok(line.length >= 24, pem);
      return line.slice(-24);
    };
    const ppkBody = openssh.split("\n").filter((l) => l !== "" && !l.startsWith("-----"));
    const ppk = [
      "PuTTY-User-Key-File-3: ssh-ed25519",
      "Encryption: none",
      "Comment: mistake",
      `Private-Lines: ${ppkBody.length}`,
      ...ppkBody,
      "Private-MAC: 00",
    ].join("\n");
    /** [what, the text pasted, a piece of its private part] */
    const pasted: [string, string, string][] = [
      ["an OpenSSH private key", openssh, secretOf(openssh)],
      ["the same with CRLF and a leading blank line", `\r\n${openssh.replaceAll("\n", "\r\n")}`, secretOf(openssh)],
      ["PKCS#8", pkcs8, secretOf(pkcs8)],
      ["PKCS#1", pkcs1, secretOf(pkcs1)],
      ["a PuTTY key", ppk, secretOf(openssh)],
      ["one line without its line breaks", openssh.replaceAll("\n", " "), secretOf(openssh)],
    ];
    const before = await certificateCount();
    for (const [what, text, secret] of pasted) {
      for (const [path, body] of [
        ["/v1/ssh/sign", { role: "owner", publicKey: text }],
        ["/v1/ssh/revoke", { publicKey: text, reason: "mistake" }],
      ] as const) {
        const a = await custos.call("POST", path, body, path === "/v1/ssh/sign" ? ownerToken : undefined);
        assert.equal(a.status, 400, `${what} to ${path}: ${a.text.slice(0, 200)}`);
        assert.equal(errorCode(a), "invalid_request", what);
        assert.ok(!a.text.includes(secret), `${what}: the answer of ${path} holds the private key`);
      }
      const file = join(dir, `${++n}-id_pasted`);
      writeFileSync(file, text, { mode: 0o600 });
      for (const args of [
        ["ssh", "sign", "--role", "owner", "--out", join(dir, `${n}-never-cert.pub`), file],
        ["ssh", "revoke", "--key", file],
      ]) {
        const r = custos.cli(args, { token: ownerToken });
        assert.notEqual(r.status, 0, `${what}: ${args.join(" ")}`);
        assert.ok(!`${r.stdout}${r.stderr}`.includes(secret), `${what}: custos ${args[1]} printed the private key`);
      }
      const audit = (await custos.call("GET", "/v1/audit?order=desc&limit=200")).text;
      assert.ok(!audit.includes(secret), `${what}: the audit log holds the private key`);
      assert.ok(
        !readFileSync(custos.logFile, "utf8").includes(secret),
        `${what}: the server log holds the private key`,
      );
    }
    assert.equal(await certificateCount(), before);
  });

  test("after many revocations (serials of both CAs, a key, a key whose certificates were partly revoked already) the KRL agrees with ssh-keygen -k's for every certificate and key", async () => {
    const users = [key(), key(), key(), key()];
    const hosts = [key("ecdsa-256"), key("ecdsa-256")];
    const userCerts: { file: string; serial: string; owner: number }[] = [];
    for (let i = 0; i < 20; i++) {
      const owner = i % 4;
      const { cert, file } = await signedFile({
        role: "tr-any",
        publicKey: users[owner]?.publicKey,
        principals: [`u${i}`],
      });
      userCerts.push({ file, serial: String(cert.serial), owner });
    }
    const hostCerts: { file: string; serial: string }[] = [];
    for (let i = 0; i < 4; i++) {
      const { cert, file } = await signedFile({
        role: "tr-hosts",
        publicKey: hosts[i % 2]?.publicKey,
        principals: [`h${i}.cluster.test`],
      });
      hostCerts.push({ file, serial: String(cert.serial) });
    }
    const { version: v0 } = await fetchKrl();
    const bySerial = [0, 2, 5, 9, 13, 14, 19];
    for (const i of bySerial) {
      ok(await custos.call("POST", "/v1/ssh/revoke", { serial: userCerts[i]?.serial, reason: "review" }));
    }
    for (const i of [1, 2]) {
      ok(await custos.call("POST", "/v1/ssh/revoke", { serial: hostCerts[i]?.serial, reason: "review" }));
    }
    // users[1] holds certificates 1, 5, 9, 13, 17: three revoked above, two not yet.
    const byKey = ok(await custos.call("POST", "/v1/ssh/revoke", { publicKey: users[1]?.publicKey }));
    assert.deepEqual([...(byKey.revoked as string[])].sort(), [1, 17].map((i) => userCerts[i]?.serial).sort());
    const { version } = await fetchKrl();
    assert.equal(version, v0 + bySerial.length + 3);

    // The same facts, in ssh-keygen's own KRL.
    const oracle = join(dir, "oracle.krl");
    const caFile = (line: string, name: string): string => {
      const f = join(dir, `${name}.pub`);
      writeFileSync(f, `${line}\n`);
      return f;
    };
    const userSpec = join(dir, "user.spec");
    writeFileSync(
      userSpec,
      [...bySerial.map((i) => `serial: ${userCerts[i]?.serial}`), `hash: ${fingerprint(users[1]?.pubFile ?? "")}`]
        .map((l) => `${l}\n`)
        .join(""),
    );
    const hostSpec = join(dir, "host.spec");
    writeFileSync(hostSpec, [1, 2].map((i) => `serial: ${hostCerts[i]?.serial}\n`).join(""));
    const u = sshKeygen(["-k", "-f", oracle, "-s", caFile(userCa, "user-ca"), userSpec]);
    assert.equal(u.status, 0, u.stderr);
    const h = sshKeygen(["-k", "-u", "-f", oracle, "-s", caFile(hostCa, "host-ca"), hostSpec]);
    assert.equal(h.status, 0, h.stderr);

    const files = [
      ...userCerts.map((c) => c.file),
      ...hostCerts.map((c) => c.file),
      ...users.map((k) => k.pubFile),
      ...hosts.map((k) => k.pubFile),
    ];
    const ours = revokedBy(krlFile, files);
    const theirs = revokedBy(oracle, files);
    for (const file of files) assert.equal(ours.get(file), theirs.get(file), file);
    // And what that is: the serials named, every certificate of users[1], users[1] itself.
    userCerts.forEach((c, i) => {
      assert.equal(ours.get(c.file), bySerial.includes(i) || c.owner === 1, `user certificate ${i}`);
    });
    hostCerts.forEach((c, i) => {
      assert.equal(ours.get(c.file), i === 1 || i === 2, `host certificate ${i}`);
    });
    assert.deepEqual(
      users.map((k) => ours.get(k.pubFile)),
      [false, true, false, false],
    );
  });

  test("a host certificate is only issued for a name the ssh client can match: clients lowercase the name they check", async () => {
    const probe = await sign({
      role: "tr-hosts",
      publicKey: key("ecdsa-256").publicKey,
      principals: ["DB-1.cluster.test"],
    });
    if (probe.status !== 200) {
      assert.equal(probe.status, 400, probe.text);
      return;
    }
    const host = await startSshd({
      trustedUserCaKeys: `${userCa}\n`,
      authorizedPrincipals: { [ACCOUNT]: [ACCOUNT] },
      hostCertificate: async (pub) =>
        String(
          ok(await sign({ role: "tr-hosts", publicKey: pub, principals: ["DB-1.cluster.test", "db-2.cluster.test"] }))
            .certificate,
        ),
    });
    try {
      const knownHosts = join(dir, `${++n}-known_hosts`);
      writeFileSync(knownHosts, String(ok(await custos.call("GET", "/v1/ssh/ca", undefined, null)).knownHosts));
      const login = key();
      const { file } = await signedFile({ role: "tr-any", publicKey: login.publicKey, principals: [ACCOUNT] });
      const base = { port: host.port, login, cert: file, knownHosts };
      // The control: the same certificate's lower-case principal is good.
      const control = sshStrict({ ...base, alias: "db-2.cluster.test" });
      assert.equal(control.status, 0, `${control.stderr}\nsshd:\n${host.log()}`);
      const asIssued = sshStrict({ ...base, alias: "DB-1.cluster.test" });
      assert.equal(
        asIssued.status,
        0,
        `Custos issued principal "DB-1.cluster.test"; ssh connecting by that very name says:\n${asIssued.stderr}`,
      );
    } finally {
      await host.stop();
    }
  });

  test("host principals with upper-case letters are refused (invalid_request) at signing and in host roles; user principals keep their case", async () => {
    const hostKey = key("ecdsa-256").publicKey;
    const before = await certificateCount();
    for (const principals of [["DB-1.cluster.test"], ["db-1.cluster.test", "db-2.Cluster.test"]]) {
      const a = await sign({ role: "tr-hosts", publicKey: hostKey, principals });
      assert.equal(a.status, 400, a.text);
      assert.equal(errorCode(a), "invalid_request", a.text);
      assert.match(a.text, /upper-case/);
    }
    assert.equal(await certificateCount(), before);
    const lower = ok(await sign({ role: "tr-hosts", publicKey: hostKey, principals: ["db-1.cluster.test"] }));
    assert.deepEqual(lower.principals, ["db-1.cluster.test"]);

    // sshd compares user names as they are: a user principal keeps its case.
    const user = ok(await sign({ role: "tr-any", publicKey: key().publicKey, principals: ["Deploy"] }));
    assert.deepEqual(user.principals, ["Deploy"]);
    ok(await custos.call("PUT", "/v1/ssh/roles/tr-user-case", { certType: "user", principals: ["Deploy", "OPS-*"] }));

    for (const principals of [["DB-1.cluster.test"], ["*.Cluster.test"], ["web-1", "*.CLUSTER.TEST"]]) {
      const w = await custos.call("PUT", "/v1/ssh/roles/tr-host-case", { certType: "host", principals });
      assert.equal(w.status, 400, w.text);
      assert.equal(errorCode(w), "invalid_request", w.text);
      assert.match(w.text, /principals: host name/);
    }
    assert.equal((await custos.call("GET", "/v1/ssh/roles/tr-host-case")).status, 404);
  });

  test("ssh connect passes the arguments after -- to ssh unchanged: output and exit status equal plain ssh's with the same arguments", async () => {
    const tail = ["-q", "-T", "printf", "[%s]", "a  b", "'c d'", '"$USER"', ";", "echo", ";", "exit", "42"];
    const tmp = freshTmp("argv");
    const connect = custos.cli(
      [
        ...["ssh", "connect", "web-1", "--host", "127.0.0.1", "--port", String(sshd.port), "--user", ACCOUNT],
        ...["--", ...tail],
      ],
      { token: ownerToken, env: { TMPDIR: tmp } },
    );
    assert.deepEqual(keyDirs(tmp), []);

    const login = key();
    const { file } = await signedFile({ role: "owner", publicKey: login.publicKey, principals: ["web-1"] }, ownerToken);
    const knownHosts = join(dir, `${++n}-known_hosts`);
    writeFileSync(knownHosts, `@cert-authority web-1 ${hostCa}\n`);
    const plain = spawnSync(
      "ssh",
      [
        ...["-F", "/dev/null", "-i", login.file, "-o", `CertificateFile=${file}`, "-o", "IdentitiesOnly=yes"],
        ...["-o", "BatchMode=yes", "-o", `UserKnownHostsFile=${knownHosts}`, "-o", "GlobalKnownHostsFile=/dev/null"],
        ...["-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlias=web-1", "-p", String(sshd.port)],
        `${ACCOUNT}@127.0.0.1`,
        ...tail,
      ],
      { encoding: "utf8", timeout: 60_000 },
    );
    assert.equal(plain.status, 42, plain.stderr);
    assert.equal(plain.stdout, `[a][b][c d][${ACCOUNT}]\n`);
    assert.equal(connect.status, plain.status, connect.stderr);
    assert.equal(connect.stdout, plain.stdout);
  });

  test("ssh connect with no ssh to run says so, exits non-zero, and still deletes the temporary key", () => {
    const bin = join(dir, `${++n}-bin-without-ssh`);
    mkdirSync(bin);
    const keygen = spawnSync("sh", ["-c", "command -v ssh-keygen"], { encoding: "utf8" }).stdout.trim();
    symlinkSync(keygen, join(bin, "ssh-keygen"));
    const tmp = freshTmp("no-ssh");
    const r = custos.cli(
      ["ssh", "connect", "web-1", "--host", "127.0.0.1", "--port", String(sshd.port), "--user", ACCOUNT, "--", "true"],
      { token: ownerToken, env: { TMPDIR: tmp, PATH: bin } },
    );
    assert.notEqual(r.status, 0, r.stdout);
    assert.match(r.stderr, /cannot run ssh/);
    assert.deepEqual(keyDirs(tmp), [], "the key directory outlived the failure");
  });
});

describe("SSH sudo grants at their expiry (a clock the test moves)", () => {
  let f: PlatformFixture;
  let dir: string;
  const clock = { now: new Date() };
  let ssh: SshCa;
  let publicKey: string;
  const owner: Requester = { display: "user:app-owner", userId: "u-app-owner", ownerRights: true };
  const ownerActor = { principal: "user:app-owner", requestId: "req-owner", source: "127.0.0.1" };
  const signRoot = () => ssh.sign(ownerActor, owner, { role: "owner", publicKey, principals: ["root@web-1"] });
  const grant = () =>
    ssh.grantSudo(admin, {
      org: "acme",
      space: "prod",
      app: "web",
      user: "app-owner",
      ttlSeconds: 60,
      reason: "review",
    });

  before(async () => {
    f = await openPlatformFixture("ssh-review3");
    dir = mkdtempSync(join(tmpdir(), "ssh-review3-"));
    // A start 400 ms into a second: the grant's expiry is not on a whole second, as a certificate's times are.
    clock.now = new Date(Math.floor(Date.now() / 1000) * 1000 + 400);
    ssh = new SshCa({
      keystore: f.keystore,
      store: f.store,
      caAlgorithm: "ecdsa-p256",
      knownHostsPattern: "*",
      clock: () => clock.now,
    });
    await ssh.ensure(admin);
    await f.user("app-owner");
    await f.platform.createOrg(admin, "acme");
    await f.platform.createSpace(admin, "acme", "prod");
    await f.platform.createApp(admin, { org: "acme", space: "prod", app: "web" }, { users: ["app-owner"] });
    const app = await f.store.platform.getApp("acme", "prod", "web");
    assert.ok(app);
    const at = clock.now.toISOString();
    const setup = { time: at, requestId: "setup", principal: "token:agent-1", source: "local", errorCode: null };
    await f.store.broker.register(
      {
        ...{ id: "web-1", org: "acme", space: "prod", app: "web", appId: app.id, state: "running" as const },
        ...{ leaseExpiresAt: new Date(clock.now.getTime() + 3_600_000).toISOString(), registeredBy: "token:agent-1" },
        ...{ createdAt: at, updatedAt: at, stoppedAt: null, stopReason: null, revision: 1 },
      },
      { id: "tok-web-1", instanceId: "web-1", hash: "h", createdAt: at, expiresAt: at, state: "unused", usedAt: null },
      { ...setup, action: "instance.register", resource: "web-1", outcome: "success", details: {} },
    );
    publicKey = makeKey(join(dir, "owner")).publicKey;
  });

  after(async () => {
    await f?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a second before expiry root@<instance> is issued up to the grant's end; at the expiry instant it is refused and the grant is inactive", async () => {
    const g = await grant();
    const expires = Date.parse(g.expiresAt);
    clock.now = new Date(expires - 1000);
    const last = await signRoot();
    assert.ok(Date.parse(last.validBefore) <= expires, `${last.validBefore} outlives the grant (${g.expiresAt})`);
    assert.ok(Date.parse(last.validBefore) > clock.now.getTime());
    const file = join(dir, "last-cert.pub");
    writeFileSync(file, `${last.certificate}\n`);
    const to = /Valid: from \S+ to (\S+)/.exec(describeCertificate(file).stdout)?.[1];
    assert.equal(Date.parse(`${to}Z`), Date.parse(last.validBefore));

    clock.now = new Date(expires);
    await assert.rejects(signRoot(), (e: unknown) => isCustosError(e) && e.code === "principal_not_allowed");
    assert.ok(!(await ssh.sudoGrants(true)).some((x) => x.id === g.id));
    assert.equal((await ssh.sudoGrants(false)).find((x) => x.id === g.id)?.active, false);
    assert.equal((await ssh.certificate(last.serial)).status, "expired");
  });

  test("a certificate asked for in the grant's last second is not answered already expired", async () => {
    const g = await grant();
    const expires = Date.parse(g.expiresAt);
    clock.now = new Date(expires - 1);
    try {
      const cert = await signRoot();
      const view = await ssh.certificate(cert.serial);
      assert.ok(
        Date.parse(cert.validBefore) > clock.now.getTime(),
        `issued at ${clock.now.toISOString()}, valid before ${cert.validBefore} (status "${view.status}")`,
      );
    } catch (e) {
      // Refusing it is as good: the grant has no whole second left.
      assert.ok(isCustosError(e) && e.code === "principal_not_allowed", String(e));
    }
  });

  test("in the grant's last fraction of a second root@<instance> is refused as principal_not_allowed and nothing is recorded", async () => {
    const g = await grant();
    const expires = Date.parse(g.expiresAt);
    assert.notEqual(expires % 1000, 0, "the grant should end inside a second");
    const count = async () => (await ssh.certificates({ limit: 1000 })).length;
    const before = await count();
    for (const early of [1, (expires % 1000) - 1]) {
      clock.now = new Date(expires - early);
      await assert.rejects(
        signRoot(),
        (e: unknown) => isCustosError(e) && e.code === "principal_not_allowed" && /whole second/.test(e.message),
      );
    }
    assert.equal(await count(), before);
    // At the grant's last whole second the certificate is still issued, ending there.
    clock.now = new Date(expires - (expires % 1000) - 1);
    const last = await signRoot();
    assert.equal(Date.parse(last.validBefore), expires - (expires % 1000));
    assert.equal((await ssh.certificate(last.serial)).sudoGrantId, g.id);
  });
});
