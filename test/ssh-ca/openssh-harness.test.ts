/**
 * The OpenSSH harness itself, checked with a CA and certificates made by
 * `ssh-keygen -s`: if these pass, a failure of the Custos tests that use the
 * harness is Custos's, not the harness's.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  describeCertificate,
  ensureLocalUser,
  type KeyPair,
  makeKey,
  opensshUnavailable,
  type Sshd,
  sshKeygen,
  sshRun,
  startSshd,
} from "../helpers/openssh.js";

const ACCOUNT = "custos-harness";
const INSTANCE = "web-7";

describe("OpenSSH harness (ssh-keygen's own CA)", { skip: opensshUnavailable() }, () => {
  let dir: string;
  let userCa: KeyPair;
  let hostCa: KeyPair;
  let sshd: Sshd;
  let krlFile: string;
  let serial = 100;

  /** A user certificate signed by ssh-keygen: `<key>-cert.pub`. */
  const sign = (key: KeyPair, principals: string[], validity = "-5m:+10m"): string => {
    serial += 1;
    const r = sshKeygen([
      "-s",
      userCa.file,
      "-I",
      `harness-${serial}`,
      "-n",
      principals.join(","),
      "-V",
      validity,
      "-z",
      String(serial),
      key.pubFile,
    ]);
    assert.equal(r.status, 0, r.stderr);
    return `${key.file}-cert.pub`;
  };

  before(async () => {
    ensureLocalUser(ACCOUNT);
    ensureLocalUser("root");
    dir = mkdtempSync(join(tmpdir(), "custos-harness-"));
    userCa = makeKey(join(dir, "user_ca"), "ecdsa-256");
    hostCa = makeKey(join(dir, "host_ca"), "ed25519");
    krlFile = join(dir, "revoked.krl");
    // An empty KRL: sshd refuses every key when RevokedKeys names a file it can't read.
    const empty = sshKeygen(["-k", "-f", krlFile, "-s", userCa.pubFile, "/dev/null"]);
    assert.equal(empty.status, 0, empty.stderr);
    sshd = await startSshd({
      trustedUserCaKeys: `${userCa.publicKey}\n`,
      revokedKeysFile: krlFile,
      authorizedPrincipals: { [ACCOUNT]: [INSTANCE], root: [`root@${INSTANCE}`] },
      hostCertificate: (pub) => {
        writeFileSync(join(dir, "host.pub"), `${pub}\n`);
        const r = sshKeygen([
          "-s",
          hostCa.file,
          "-h",
          "-I",
          "host",
          "-n",
          INSTANCE,
          "-V",
          "-5m:+1h",
          join(dir, "host.pub"),
        ]);
        assert.equal(r.status, 0, r.stderr);
        const shown = describeCertificate(join(dir, "host-cert.pub"));
        assert.equal(shown.status, 0, shown.stderr);
        assert.match(shown.stdout, /Type: ssh-ed25519-cert-v01@openssh.com host certificate/);
        return readFileSync(join(dir, "host-cert.pub"), "utf8");
      },
    });
  });

  after(async () => {
    await sshd?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("a certificate for the instance logs in to its account and runs the command", async () => {
    const key = makeKey(join(dir, "alice"));
    const cert = sign(key, [INSTANCE]);
    const mark = sshd.log().length;
    const r = await sshRun({
      port: sshd.port,
      user: ACCOUNT,
      key: key.file,
      cert,
      command: "id -un; echo ran-$((6*7))",
    });
    assert.equal(r.status, 0, `${r.stderr}\nsshd:\n${sshd.logSince(mark)}`);
    assert.equal(r.stdout, `${ACCOUNT}\nran-42\n`);
    assert.match(sshd.logSince(mark), /Accepted publickey for custos-harness .*ID harness-\d+ \(serial \d+\)/);
  });

  test("root@<instance> logs in as root; the instance principal alone does not", async () => {
    const key = makeKey(join(dir, "admin"));
    const rootCert = sign(key, [`root@${INSTANCE}`]);
    const ok = await sshRun({ port: sshd.port, user: "root", key: key.file, cert: rootCert, command: "id -u" });
    assert.equal(ok.status, 0, `${ok.stderr}\nsshd:\n${sshd.log()}`);
    assert.equal(ok.stdout, "0\n");
    const key2 = makeKey(join(dir, "admin2"));
    const plainCert = sign(key2, [INSTANCE]);
    const no = await sshRun({ port: sshd.port, user: "root", key: key2.file, cert: plainCert, command: "id -u" });
    assert.equal(no.status, 255, no.stdout);
    assert.match(no.stderr, /Permission denied/);
  });

  test("a wrong principal, an expired certificate and a bare key are refused", async () => {
    const key = makeKey(join(dir, "bob"));
    const wrong = sign(key, ["web-8"]);
    const mark = sshd.log().length;
    const a = await sshRun({ port: sshd.port, user: ACCOUNT, key: key.file, cert: wrong, command: "true" });
    assert.equal(a.status, 255, a.stdout);
    assert.match(a.stderr, /Permission denied/);
    assert.doesNotMatch(sshd.logSince(mark), /Accepted publickey/);

    const key2 = makeKey(join(dir, "carol"));
    const expired = sign(key2, [INSTANCE], "-2h:-1h");
    const b = await sshRun({ port: sshd.port, user: ACCOUNT, key: key2.file, cert: expired, command: "true" });
    assert.equal(b.status, 255, b.stdout);
    assert.match(sshd.logSince(mark), /expired|not yet valid|Certificate invalid/i);

    const key3 = makeKey(join(dir, "dave"));
    const c = await sshRun({ port: sshd.port, user: ACCOUNT, key: key3.file, command: "true" });
    assert.equal(c.status, 255, c.stdout);
    assert.doesNotMatch(sshd.logSince(mark), /Accepted publickey/);
  });

  test("a serial in the KRL is refused, and ssh-keygen -Q says so", async () => {
    const key = makeKey(join(dir, "erin"));
    const cert = sign(key, [INSTANCE]);
    const before = await sshRun({ port: sshd.port, user: ACCOUNT, key: key.file, cert, command: "true" });
    assert.equal(before.status, 0, `${before.stderr}\nsshd:\n${sshd.log()}`);
    writeFileSync(join(dir, "krl.spec"), `serial: ${serial}\n`);
    const made = sshKeygen(["-k", "-u", "-f", krlFile, "-s", userCa.pubFile, join(dir, "krl.spec")]);
    assert.equal(made.status, 0, made.stderr);
    const q = sshKeygen(["-Q", "-f", krlFile, cert]);
    assert.equal(q.status, 1, q.stdout);
    assert.match(q.stdout, /REVOKED/);
    const mark = sshd.log().length;
    const afterwards = await sshRun({ port: sshd.port, user: ACCOUNT, key: key.file, cert, command: "true" });
    assert.equal(afterwards.status, 255, afterwards.stdout);
    assert.match(sshd.logSince(mark), /revoked/i);
  });

  test("a client trusting only the host CA connects to the certified host and refuses a bare host key", async () => {
    const knownHosts = join(dir, "known_hosts");
    writeFileSync(knownHosts, `@cert-authority * ${hostCa.publicKey}\n`);
    const key = makeKey(join(dir, "frank"));
    const cert = sign(key, [INSTANCE]);
    const base = { user: ACCOUNT, key: key.file, cert, knownHosts, strict: true, hostKeyAlias: INSTANCE };
    const ok = await sshRun({ ...base, port: sshd.port, command: "echo trusted" });
    assert.equal(ok.status, 0, `${ok.stderr}\nsshd:\n${sshd.log()}`);
    assert.equal(ok.stdout, "trusted\n");

    const wrongName = await sshRun({ ...base, port: sshd.port, hostKeyAlias: "web-9", command: "true" });
    assert.equal(wrongName.status, 255, wrongName.stdout);

    const bare = await startSshd({
      trustedUserCaKeys: `${userCa.publicKey}\n`,
      authorizedPrincipals: { [ACCOUNT]: [INSTANCE] },
    });
    try {
      const refused = await sshRun({ ...base, port: bare.port, command: "true" });
      assert.equal(refused.status, 255, refused.stdout);
      assert.match(refused.stderr, /Host key verification failed|No .* host key is known/);
      assert.doesNotMatch(bare.log(), /Accepted publickey/);
    } finally {
      await bare.stop();
    }
  });
});
