/**
 * A second conformance pass over the SSH CA, judged by OpenSSH: `ssh-keygen -Q -l`
 * (the KRL as OpenSSH reads it), the ssh client with only the served known_hosts and
 * `RevokedHostKeys`, a real sshd, and `custos ssh connect`. It covers what
 * conformance.test.ts, service.test.ts and the e2e SSH tests leave out: a narrowed
 * known_hosts pattern, host-certificate revocation on the client, the KRL's header,
 * restarts, revoked keys and CA keys, and refusals the API schema makes.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type CustosInstance, errorCode, fetchRaw, httpsRaw, ok, startCustos } from "../helpers/custos.js";
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
  type ToolResult,
} from "../helpers/openssh.js";
import { acmeProdApps, loggedInUser, nodeAgentToken } from "../helpers/platform.js";

type Json = Record<string, unknown>;

const ACCOUNT = "custos-app";
const PASSWORD = "correct horse battery staple";
/** What the deployment's known_hosts line covers: its own domain, not bare instance ids. */
const PATTERN = "*.cluster.test";

/** What `ssh-keygen -Q -l` prints of a KRL: its header, the revoked key hashes, and serials per CA fingerprint. */
interface KrlListing {
  readonly version: string | undefined;
  /** "Generated at" (ssh-keygen runs with TZ=UTC), as epoch milliseconds. */
  readonly generatedAt: number;
  /** Revoked key hashes as ssh-keygen lists the SHA-256 section: "SHA256:<hex>". */
  readonly hashes: string[];
  readonly serials: Map<string, string[]>;
  /** The whole listing, for failure messages. */
  readonly text: string;
}

function listKrl(file: string): KrlListing {
  const r = sshKeygen(["-Q", "-l", "-f", file]);
  assert.equal(r.status, 0, `ssh-keygen -Q -l: ${r.stderr}`);
  const generated = /^# Generated at (\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)$/m.exec(r.stdout);
  assert.ok(generated, r.stdout);
  const [, y, mo, d, h, mi, s] = generated.map(Number) as number[];
  const serials = new Map<string, string[]>();
  const hashes: string[] = [];
  let ca: string[] | undefined;
  for (const line of r.stdout.split("\n")) {
    const caLine = /^# CA key \S+ (SHA256:\S+)/.exec(line);
    if (caLine) {
      ca = [];
      serials.set(caLine[1] as string, ca);
    }
    const serial = /^serial: (\S+)/.exec(line);
    if (serial) {
      assert.ok(ca, `a serial outside a CA section: ${r.stdout}`);
      ca.push(serial[1] as string);
    }
    const hash = /^hash: (SHA256:\S+)/.exec(line);
    if (hash) hashes.push(hash[1] as string);
  }
  return {
    version: /^# KRL version (\d+)$/m.exec(r.stdout)?.[1],
    generatedAt: Date.UTC(y ?? 0, (mo ?? 1) - 1, d, h, mi, s),
    hashes,
    serials,
    text: r.stdout,
  };
}

describe("SSH CA, second conformance review (OpenSSH as the oracle)", { skip: opensshUnavailable() }, () => {
  let custos: CustosInstance;
  let dir: string;
  let sshd: Sshd;
  let krlFile: string;
  let userCa: string;
  let hostCa: string;
  let aliceToken: string;
  let n = 0;

  const key = (spec: KeySpec = "ed25519"): KeyPair => makeKey(join(dir, `${++n}-${spec}`), spec);
  const sign = (body: Json, bearer?: string) => custos.call("POST", "/v1/ssh/sign", body, bearer);
  /** Signs and writes the certificate to `<file>`. */
  const signedFile = async (body: Json, bearer?: string): Promise<{ cert: Json; file: string }> => {
    const cert = ok(await sign(body, bearer));
    const file = join(dir, `${++n}-cert.pub`);
    writeFileSync(file, `${String(cert.certificate)}\n`);
    return { cert, file };
  };
  const get = (path: string) => httpsRaw({ port: custos.port, ca: custos.ca, method: "GET", path, headers: {} });
  /** Fetches the KRL into `krlFile`; its x-krl-version. */
  const fetchKrl = async (): Promise<{ version: string; bytes: Buffer }> => {
    const a = await fetchRaw(custos, "/v1/ssh/krl");
    assert.equal(a.status, 200, a.body.toString());
    writeFileSync(krlFile, a.body);
    return { version: String(a.headers["x-krl-version"]), bytes: a.body };
  };
  /** The latest audit record of a sign request (the service's ssh.sign, or the API's own record of the route). */
  const lastSignRecord = async (): Promise<Json | undefined> =>
    (ok(await custos.call("GET", "/v1/audit?order=desc&limit=20")).records as Json[]).find(
      (r) => r.action === "ssh.sign" || (r.details as Json | undefined)?.route === "/v1/ssh/sign",
    );
  /** `ssh-keygen -Q`: true when the KRL revokes the key or certificate in `file`. */
  const revoked = (file: string, krl = krlFile): boolean => {
    const q = sshKeygen(["-Q", "-f", krl, file]);
    assert.ok(q.status === 0 || (q.status === 1 && /REVOKED/.test(q.stdout)), `${q.stdout}${q.stderr}`);
    return q.status === 1;
  };
  const fingerprint = (line: string): string => {
    const file = join(dir, `${++n}-fp.pub`);
    writeFileSync(file, `${line}\n`);
    const r = sshKeygen(["-l", "-E", "sha256", "-f", file]);
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.split(" ")[1] ?? "";
  };
  const certificateCount = async (): Promise<number> =>
    (ok(await custos.call("GET", "/v1/ssh/certificates?limit=1000")).certificates as Json[]).length;
  /**
   * The system ssh with only `knownHosts` trusted and StrictHostKeyChecking yes, plus
   * `extra` options (sshRun takes none, and RevokedHostKeys is what one test needs).
   */
  const sshStrict = (o: {
    port: number;
    login: KeyPair;
    cert: string;
    knownHosts: string;
    alias: string;
    extra?: string[];
  }): ToolResult => {
    const r = spawnSync(
      "ssh",
      [
        "-F",
        "/dev/null",
        "-i",
        o.login.file,
        "-o",
        `CertificateFile=${o.cert}`,
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        `UserKnownHostsFile=${o.knownHosts}`,
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        `HostKeyAlias=${o.alias}`,
        ...(o.extra ?? []).flatMap((x) => ["-o", x]),
        "-p",
        String(o.port),
        "-l",
        ACCOUNT,
        "127.0.0.1",
        "echo reached",
      ],
      { encoding: "utf8", timeout: 60_000 },
    );
    return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
  };
  /** A login key with an owner certificate for web-1 (what sshd's custos-app account takes). */
  const ownerLogin = async (): Promise<{ login: KeyPair; cert: string }> => {
    const login = key();
    const { file } = await signedFile({ role: "owner", publicKey: login.publicKey, principals: ["web-1"] }, aliceToken);
    return { login, cert: file };
  };
  /** A host certificate for `hostKeyPub` from the admin's host role. */
  const hostCertificate = async (hostKeyPub: string, principals: string[]): Promise<string> =>
    String(ok(await sign({ role: "sr-hosts", publicKey: hostKeyPub, principals })).certificate);

  before(async () => {
    ensureLocalUser(ACCOUNT);
    custos = await startCustos({ ssh: { knownHostsPattern: PATTERN } });
    dir = mkdtempSync(join(tmpdir(), "custos-ssh-review2-"));
    krlFile = join(dir, "revoked.krl");
    const ca = ok(await custos.call("GET", "/v1/ssh/ca", undefined, null)) as { user: Json[]; host: Json[] };
    userCa = String(ca.user[0]?.publicKey);
    hostCa = String(ca.host[0]?.publicKey);

    aliceToken = await loggedInUser(custos, "alice", PASSWORD);
    await acmeProdApps(custos, [{ name: "web", owners: { users: ["alice"] } }]);
    ok(
      await custos.call(
        "POST",
        "/v1/broker/instances",
        { org: "acme", space: "prod", app: "web", instance: "web-1" },
        nodeAgentToken(custos),
      ),
      201,
    );
    ok(
      await custos.call("PUT", "/v1/ssh/roles/sr-hosts", {
        certType: "host",
        principals: [PATTERN, "db-9.elsewhere", "web-1"],
        ttlSeconds: 3600,
        maxTtlSeconds: 86_400,
      }),
    );
    ok(
      await custos.call("PUT", "/v1/ssh/roles/sr-user", {
        certType: "user",
        principals: ["deploy", ACCOUNT],
        ttlSeconds: 300,
        maxTtlSeconds: 600,
        keyTypes: { ed25519: 256, rsa: 2048 },
      }),
    );
    await fetchKrl();
    sshd = await startSshd({
      trustedUserCaKeys: `${userCa}\n`,
      revokedKeysFile: krlFile,
      authorizedPrincipals: { [ACCOUNT]: ["web-1", ACCOUNT] },
      hostCertificate: (pub) => hostCertificate(pub, ["db-1.cluster.test", "db-9.elsewhere", "web-1"]),
    });
  });

  after(async () => {
    await sshd?.stop();
    await custos?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("the public endpoints answer exactly the sshd and known_hosts files, as text, with the configured pattern", async () => {
    const trusted = await get("/v1/ssh/trusted-user-ca-keys");
    assert.equal(trusted.status, 200);
    assert.equal(trusted.headers["content-type"], "text/plain; charset=utf-8");
    assert.equal(trusted.headers["cache-control"], "no-cache");
    assert.equal(trusted.text, `${userCa}\n`);
    const known = await get("/v1/ssh/known-hosts");
    assert.equal(known.status, 200);
    assert.equal(known.headers["content-type"], "text/plain; charset=utf-8");
    assert.equal(known.text, `@cert-authority ${PATTERN} ${hostCa}\n`);
    const whole = ok(await custos.call("GET", "/v1/ssh/ca", undefined, null));
    assert.equal(whole.knownHosts, known.text);
    assert.equal(whole.trustedUserCaKeys, trusted.text);
    // Both CA lines are keys ssh-keygen reads, and they differ.
    assert.notEqual(fingerprint(userCa), fingerprint(hostCa));
  });

  test("ssh trusting only the served known_hosts accepts a certified host inside the pattern and refuses a certified name outside it", async () => {
    const knownHosts = join(dir, "known_hosts");
    writeFileSync(knownHosts, (await get("/v1/ssh/known-hosts")).text);
    const { login, cert } = await ownerLogin();
    const base = { port: sshd.port, login, cert, knownHosts };
    const inside = sshStrict({ ...base, alias: "db-1.cluster.test" });
    assert.equal(inside.status, 0, `${inside.stderr}\nsshd:\n${sshd.log()}`);
    assert.equal(inside.stdout, "reached\n");
    // The host certificate names db-9.elsewhere too, but the CA line does not cover it.
    const outside = sshStrict({ ...base, alias: "db-9.elsewhere" });
    assert.equal(outside.status, 255, outside.stdout);
    assert.match(outside.stderr, /Host key verification failed/);
  });

  test("custos ssh connect reaches an instance when the configured known_hosts pattern does not cover bare instance ids", async () => {
    // The control: the host's certificate for web-1 is good, under a line that covers web-1.
    const knownHosts = join(dir, "known_hosts-web-1");
    writeFileSync(knownHosts, `@cert-authority web-1 ${hostCa}\n`);
    const { login, cert } = await ownerLogin();
    const control = sshStrict({ port: sshd.port, login, cert, knownHosts, alias: "web-1" });
    assert.equal(control.status, 0, `${control.stderr}\nsshd:\n${sshd.log()}`);

    const args = ["ssh", "connect", "web-1", "--host", "127.0.0.1", "--port", String(sshd.port), "--user", ACCOUNT];
    const r = custos.cli([...args, "--", "echo", "connected"], { token: aliceToken });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "connected\n");
  });

  test("custos ssh connect takes no host key trust from the system's known hosts or a KnownHostsCommand", async () => {
    // A host without a Custos certificate, vouched for by a plain known_hosts line for web-1.
    const bare = await startSshd({ trustedUserCaKeys: `${userCa}\n`, authorizedPrincipals: { [ACCOUNT]: ["web-1"] } });
    try {
      const vouching = join(dir, "known_hosts-bare");
      writeFileSync(vouching, `web-1 ${bare.hostKeyPub}\n`);
      const trust = {
        global: `GlobalKnownHostsFile=${vouching}`,
        command: `KnownHostsCommand=/bin/cat ${vouching}`,
      };
      // The controls: ssh does accept the host on either kind of trust.
      const { login, cert } = await ownerLogin();
      const base = { port: bare.port, login, cert, alias: "web-1" };
      const asUser = sshStrict({ ...base, knownHosts: vouching });
      assert.equal(asUser.status, 0, `${asUser.stderr}\nsshd:\n${bare.log()}`);
      const byCommand = sshStrict({ ...base, knownHosts: "/dev/null", extra: [trust.command] });
      assert.equal(byCommand.status, 0, `${byCommand.stderr}\nsshd:\n${bare.log()}`);

      // Options after connect's own are ssh's "first value wins", like a user's ssh_config.
      const mark = bare.log().length;
      for (const option of [trust.global, trust.command]) {
        const r = custos.cli(
          [
            ...["ssh", "connect", "web-1", "--host", "127.0.0.1", "--port", String(bare.port), "--user", ACCOUNT],
            ...["--", "-o", option, "echo", "reached"],
          ],
          { token: aliceToken },
        );
        assert.equal(r.status, 255, `${option}: ${r.stdout}`);
        assert.match(r.stderr, /Host key verification failed/, option);
      }
      assert.doesNotMatch(bare.logSince(mark), /Accepted publickey/);
    } finally {
      await bare.stop();
    }
  });

  test("ssh with RevokedHostKeys set to Custos's KRL refuses a host whose certificate was revoked, and only then", async () => {
    const host = await startSshd({
      trustedUserCaKeys: `${userCa}\n`,
      authorizedPrincipals: { [ACCOUNT]: ["web-1"] },
      hostCertificate: (pub) => hostCertificate(pub, ["db-2.cluster.test"]),
    });
    try {
      const knownHosts = join(dir, "known_hosts-revocation");
      writeFileSync(knownHosts, (await get("/v1/ssh/known-hosts")).text);
      const { login, cert } = await ownerLogin();
      const base = { port: host.port, login, cert, knownHosts, alias: "db-2.cluster.test" };
      await fetchKrl();
      const before = sshStrict({ ...base, extra: [`RevokedHostKeys=${krlFile}`] });
      assert.equal(before.status, 0, `${before.stderr}\nsshd:\n${host.log()}`);

      const hostCertFile = join(dir, "db-2-host-cert.pub");
      writeFileSync(hostCertFile, `${host.hostCertificate}\n`);
      const serial = /Serial: (\d+)/.exec(describeCertificate(hostCertFile).stdout)?.[1];
      assert.ok(serial);
      ok(await custos.call("POST", "/v1/ssh/revoke", { serial, reason: "host rebuilt" }));
      await fetchKrl();
      const after = sshStrict({ ...base, extra: [`RevokedHostKeys=${krlFile}`] });
      assert.equal(after.status, 255, after.stdout);
      assert.match(after.stderr, /revoked/i);
      assert.match(after.stderr, /Host key verification failed/);
    } finally {
      await host.stop();
    }
  });

  test("ssh-keygen -Q -l reads the KRL: its version is x-krl-version, its date the last revocation's; keys by hash, certificates by serial under their own CA", async () => {
    const byKey = key();
    const keyCerts = [
      await signedFile({ role: "sr-user", publicKey: byKey.publicKey, principals: ["deploy"] }),
      await signedFile({ role: "sr-user", publicKey: byKey.publicKey, principals: ["deploy"], ttlSeconds: 600 }),
    ];
    const kept = key();
    const userRevoked = await signedFile({ role: "sr-user", publicKey: kept.publicKey, principals: ["deploy"] });
    const userKept = await signedFile({ role: "sr-user", publicKey: kept.publicKey, principals: ["deploy"] });
    const hostRevoked = await signedFile({
      role: "sr-hosts",
      publicKey: key("ecdsa-256").publicKey,
      principals: ["db-3.cluster.test"],
    });

    ok(await custos.call("POST", "/v1/ssh/revoke", { serial: userRevoked.cert.serial, reason: "review" }));
    ok(await custos.call("POST", "/v1/ssh/revoke", { serial: hostRevoked.cert.serial, reason: "review" }));
    const from = Date.now();
    const r = ok(await custos.call("POST", "/v1/ssh/revoke", { publicKey: byKey.publicKey, reason: "review" }));
    const to = Date.now();
    assert.deepEqual([...(r.revoked as string[])].sort(), keyCerts.map((c) => String(c.cert.serial)).sort());
    const { version } = await fetchKrl();
    assert.equal(version, String(r.krlVersion));

    const listing = listKrl(krlFile);
    assert.equal(listing.version, version);
    assert.ok(
      listing.generatedAt >= Math.floor(from / 1000) * 1000 && listing.generatedAt <= to,
      `generated ${new Date(listing.generatedAt).toISOString()}, revoked between ${new Date(from).toISOString()} and ${new Date(to).toISOString()}`,
    );
    // ssh-keygen lists the KRL's SHA-256 section in hex.
    const hex = Buffer.from(String(r.fingerprint).slice("SHA256:".length), "base64").toString("hex");
    assert.ok(listing.hashes.includes(`SHA256:${hex}`), `no hash ${String(r.fingerprint)} (${hex}):\n${listing.text}`);
    assert.equal(String(r.fingerprint), fingerprint(byKey.publicKey));
    const userSerials = listing.serials.get(fingerprint(userCa)) ?? [];
    const hostSerials = listing.serials.get(fingerprint(hostCa)) ?? [];
    assert.ok(userSerials.includes(String(userRevoked.cert.serial)), userSerials.join(" "));
    assert.ok(!userSerials.includes(String(userKept.cert.serial)));
    assert.ok(hostSerials.includes(String(hostRevoked.cert.serial)), hostSerials.join(" "));
    assert.ok(!userSerials.includes(String(hostRevoked.cert.serial)));

    // The key's hash revokes it under any CA; a serial, only under its own.
    const foreign = makeKey(join(dir, `${++n}-foreign-ca`));
    const made = sshKeygen(["-q", "-s", foreign.file, "-I", "x", "-n", "deploy", "-z", "7", byKey.pubFile]);
    assert.equal(made.status, 0, made.stderr);
    assert.equal(revoked(`${byKey.file}-cert.pub`), true);
    assert.equal(revoked(byKey.pubFile), true);
    assert.equal(revoked(userKept.file), false);
    assert.equal(revoked(kept.pubFile), false);
  });

  test("a key revoked by fingerprint is not certified again", async () => {
    const k = key();
    await signedFile({ role: "sr-user", publicKey: k.publicKey, principals: ["deploy"] });
    ok(await custos.call("POST", "/v1/ssh/revoke", { publicKey: k.publicKey, reason: "key leaked" }));
    const before = await certificateCount();
    const again = await sign({ role: "sr-user", publicKey: k.publicKey, principals: ["deploy"] });
    if (again.status === 200) {
      // What was issued is dead on arrival in OpenSSH's eyes, yet the inventory calls it valid.
      const { version } = await fetchKrl();
      const file = join(dir, `${++n}-reissued-cert.pub`);
      writeFileSync(file, `${String((again.body as Json).certificate)}\n`);
      const view = ok(await custos.call("GET", `/v1/ssh/certificates/${String((again.body as Json).serial)}`));
      assert.fail(
        `issued serial ${String((again.body as Json).serial)} for a revoked key: status "${String(view.status)}", ` +
          `ssh-keygen -Q against KRL ${version} says revoked=${revoked(file)}`,
      );
    }
    assert.equal(again.status, 400, again.text);
    assert.equal(errorCode(again), "key_revoked", again.text);
    const fp = fingerprint(k.publicKey);
    assert.ok(again.text.includes(`${fp} was revoked`), again.text);
    const last = await lastSignRecord();
    assert.equal(last?.action, "ssh.sign", JSON.stringify(last));
    assert.equal(last?.outcome, "denied");
    assert.equal(last?.errorCode, "key_revoked");
    assert.equal((last?.details as Json | undefined)?.fingerprint, fp);
    assert.equal(await certificateCount(), before);
  });

  test("the CA's own key cannot be revoked as a subject key (that would revoke every certificate it signs)", async () => {
    const other = await startCustos();
    try {
      const ca = ok(await other.call("GET", "/v1/ssh/ca", undefined, null)) as { user: Json[]; host: Json[] };
      const caLine = String(ca.user[0]?.publicKey);
      ok(await other.call("PUT", "/v1/ssh/roles/sr-user", { certType: "user", principals: ["deploy"] }));
      const k = key();
      const krlBefore = await fetchRaw(other, "/v1/ssh/krl");
      const r = await other.call("POST", "/v1/ssh/revoke", { publicKey: caLine, reason: "mistake" });
      // The oracle for what it did: a certificate signed afterwards, against the KRL then served.
      const issued = ok(
        await other.call("POST", "/v1/ssh/sign", { role: "sr-user", publicKey: k.publicKey, principals: ["deploy"] }),
      );
      const file = join(dir, `${++n}-after-ca-revoke-cert.pub`);
      writeFileSync(file, `${String(issued.certificate)}\n`);
      const krl = await fetchRaw(other, "/v1/ssh/krl");
      assert.equal(krl.status, 200);
      const krlCopy = join(dir, `${++n}-other.krl`);
      writeFileSync(krlCopy, krl.body);
      const dead = revoked(file, krlCopy);
      assert.ok(
        r.status >= 400 && r.status < 500,
        `revoking the CA key answered ${r.status}; a certificate issued after it is revoked by the KRL: ${dead}`,
      );
      assert.equal(dead, false);
      assert.equal(errorCode(r), "invalid_request", r.text);
      assert.match(r.text, /is a CA key of this Custos: revoking it would revoke every certificate it signed/);
      // The host CA's key likewise; neither refusal touched the KRL.
      const host = await other.call("POST", "/v1/ssh/revoke", { publicKey: String(ca.host[0]?.publicKey) });
      assert.equal(host.status, 400, host.text);
      assert.equal(errorCode(host), "invalid_request", host.text);
      const krlAfter = await fetchRaw(other, "/v1/ssh/krl");
      assert.equal(krlAfter.headers["x-krl-version"], krlBefore.headers["x-krl-version"]);
      assert.ok(krlAfter.body.equals(krlBefore.body), "a refused revocation changed the KRL");
    } finally {
      await other.dispose();
    }
  });

  test("after a restart: the same CA keys, KRL bytes and version; revocation goes on from that version and keeps earlier entries", async () => {
    const k = key();
    const first = await signedFile({ role: "sr-user", publicKey: k.publicKey, principals: ["deploy"] });
    ok(await custos.call("POST", "/v1/ssh/revoke", { serial: first.cert.serial, reason: "review" }));
    const caBefore = ok(await custos.call("GET", "/v1/ssh/ca", undefined, null));
    const krlBefore = await fetchKrl();

    await custos.stop();
    await custos.start();

    assert.deepEqual(ok(await custos.call("GET", "/v1/ssh/ca", undefined, null)), caBefore);
    const krlAfter = await fetchKrl();
    assert.equal(krlAfter.version, krlBefore.version);
    assert.ok(krlAfter.bytes.equals(krlBefore.bytes), "the KRL changed across the restart");
    assert.equal(ok(await custos.call("GET", `/v1/ssh/certificates/${String(first.cert.serial)}`)).status, "revoked");

    const second = await signedFile({ role: "sr-user", publicKey: k.publicKey, principals: ["deploy"] });
    assert.notEqual(second.cert.serial, first.cert.serial);
    const shown = describeCertificate(second.file);
    assert.equal(shown.status, 0, shown.stderr);
    assert.ok(shown.stdout.includes(`Signing CA: ECDSA ${fingerprint(userCa)}`), shown.stdout);
    const r = ok(await custos.call("POST", "/v1/ssh/revoke", { serial: second.cert.serial, reason: "review" }));
    assert.equal(r.krlVersion, Number(krlBefore.version) + 1);
    await fetchKrl();
    assert.equal(revoked(first.file), true);
    assert.equal(revoked(second.file), true);
  });

  test("RSA at the role's exact minimum (2048) is certified and logs in to sshd; a smaller modulus is refused", async () => {
    const rsa = key("rsa-2048");
    assert.match(sshKeygen(["-l", "-f", rsa.pubFile]).stdout, /^2048 /);
    const { cert, file } = await signedFile({ role: "sr-user", publicKey: rsa.publicKey, principals: [ACCOUNT] });
    assert.match(String(cert.certificate), /^ssh-rsa-cert-v01@openssh\.com /);
    await fetchKrl();
    const mark = sshd.log().length;
    const r = await sshRun({ port: sshd.port, user: ACCOUNT, key: rsa.file, cert: file, command: "echo rsa-in" });
    assert.equal(r.status, 0, `${r.stderr}\nsshd:\n${sshd.logSince(mark)}`);
    assert.equal(r.stdout, "rsa-in\n");
    assert.match(sshd.logSince(mark), new RegExp(`RSA-CERT SHA256:\\S+ ID .* \\(serial ${String(cert.serial)}\\)`));

    const small = key("rsa-2047");
    const bits = Number(sshKeygen(["-l", "-f", small.pubFile]).stdout.split(" ")[0]);
    assert.ok(bits < 2048, `ssh-keygen made ${bits} bits`);
    const refused = await sign({ role: "sr-user", publicKey: small.publicKey, principals: [ACCOUNT] });
    assert.equal(refused.status, 400, refused.text);
    assert.equal(errorCode(refused), "key_type_not_allowed");
  });

  test("a TTL past the API's 366-day cap is refused as ttl_too_long and audited as an ssh.sign denial, like any TTL over the role's maximum", async () => {
    const k = key();
    const over = await sign({ role: "sr-user", publicKey: k.publicKey, principals: ["deploy"], ttlSeconds: 601 });
    assert.equal(errorCode(over), "ttl_too_long", over.text);
    const far = await sign({
      role: "sr-user",
      publicKey: k.publicKey,
      principals: ["deploy"],
      ttlSeconds: 400 * 86_400,
    });
    const last = await lastSignRecord();
    assert.equal(far.status, 400, far.text);
    assert.equal(errorCode(far), "ttl_too_long", far.text);
    assert.equal(last?.action, "ssh.sign", JSON.stringify(last));
    assert.equal(last?.outcome, "denied");
    assert.equal(last?.errorCode, "ttl_too_long");
  });

  test("a sign request naming an unknown role is audited as ssh.sign on that role", async () => {
    const a = await sign({ role: "no-such-role", publicKey: key().publicKey });
    assert.equal(a.status, 404, a.text);
    assert.equal(errorCode(a), "not_found");
    const last = await lastSignRecord();
    assert.equal(last?.action, "ssh.sign", JSON.stringify(last));
    assert.equal(last?.resource, "ssh/role/no-such-role");
    assert.equal(last?.errorCode, "not_found");
  });
});
