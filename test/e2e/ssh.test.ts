/**
 * The SSH CA end to end, judged by real OpenSSH: ssh-keygen reads every certificate
 * Custos issues, a real sshd trusting only Custos's user CA (and its KRL) decides who
 * logs in, and a real ssh client trusting only the host CA decides which host to talk to.
 */
import assert from "node:assert/strict";
import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { type CustosInstance, errorCode, ok, startCustos } from "../helpers/custos.js";
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

type Json = Record<string, unknown>;

/** The app's account on the instances (sshd maps the instance principal to it). */
const ACCOUNT = "custos-app";
const PASSWORD = "correct horse battery staple";

/** `ssh-keygen -L`'s times (UTC, whole seconds) against the API's ISO times. */
function assertSameSecond(shown: string | undefined, iso: string, what: string): void {
  assert.ok(shown !== undefined, `no ${what} in ssh-keygen's output`);
  const diff = Math.abs(Date.parse(`${shown}Z`) - Date.parse(iso));
  assert.ok(diff <= 1000, `${what}: ssh-keygen shows ${shown}, the API says ${iso}`);
}

/** The fields of `ssh-keygen -L` output that the tests compare. */
function certificateFields(text: string): {
  type: string | undefined;
  keyId: string | undefined;
  serial: string | undefined;
  from: string | undefined;
  to: string | undefined;
  signingCa: string | undefined;
  principals: string[];
  criticalOptions: string[];
  extensions: string[];
} {
  const section = (name: string): string[] => {
    const m = new RegExp(`^\\s*${name}:\\s*(\\(none\\))?\\n((?:\\s{16,}\\S.*\\n?)*)`, "m").exec(text);
    if (!m || m[1] !== undefined) return [];
    return (m[2] ?? "")
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "");
  };
  const valid = /Valid: from (\S+) to (\S+)/.exec(text);
  return {
    type: /Type: (.+)/.exec(text)?.[1]?.trim(),
    keyId: /Key ID: "(.*)"/.exec(text)?.[1],
    serial: /Serial: (\d+)/.exec(text)?.[1],
    from: valid?.[1],
    to: valid?.[2],
    signingCa: /Signing CA: \S+ (SHA256:\S+)/.exec(text)?.[1],
    principals: section("Principals"),
    criticalOptions: section("Critical Options"),
    extensions: section("Extensions"),
  };
}

/** A key's SHA-256 fingerprint as ssh-keygen prints it. */
function fingerprintOf(pubLine: string, dir: string): string {
  const file = join(dir, `fp-${Math.random().toString(16).slice(2)}.pub`);
  writeFileSync(file, `${pubLine}\n`);
  const r = sshKeygen(["-l", "-E", "sha256", "-f", file]);
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.split(" ")[1] ?? "";
}

describe("SSH CA against real OpenSSH", { skip: opensshUnavailable() }, () => {
  let custos: CustosInstance;
  let dir: string;
  let sshd: Sshd;
  let agentToken: string;
  const tokens: Record<string, string> = {};
  let trustedUserCaKeys: string;
  let knownHosts: string;
  let krlFile: string;
  let ca: { user: Json[]; host: Json[] };

  const get = (path: string, bearer?: string | null) => custos.call("GET", path, undefined, bearer);
  const sign = (who: string, body: Json) => custos.call("POST", "/v1/ssh/sign", body, tokens[who] ?? who);
  /** Signs `key` for `who` and writes `<key>-cert.pub`. */
  const certify = async (who: string, key: KeyPair, body: Json = {}): Promise<{ file: string; cert: Json }> => {
    const cert = ok(await sign(who, { role: "owner", publicKey: key.publicKey, ...body }));
    const file = `${key.file}-cert.pub`;
    writeFileSync(file, `${String(cert.certificate)}\n`);
    return { file, cert };
  };
  /** The public text endpoints (no token). */
  const text = (path: string): Promise<{ status: number; body: Buffer; headers: Json }> =>
    new Promise((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port: custos.port, path, ca: custos.ca, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), headers: res.headers as Json }),
        );
      });
      req.on("error", reject);
      req.end();
    });
  /** Fetches the KRL into sshd's RevokedKeys file (replaced whole: sshd rereads it at each login). */
  const refreshKrl = async (): Promise<number> => {
    const krl = await text("/v1/ssh/krl");
    assert.equal(krl.status, 200, krl.body.toString());
    assert.equal(krl.headers["content-type"], "application/octet-stream");
    const next = `${krlFile}.next`;
    writeFileSync(next, krl.body);
    renameSync(next, krlFile);
    return Number(krl.headers["x-krl-version"]);
  };
  const certificateCount = async (): Promise<number> =>
    (ok(await get("/v1/ssh/certificates?limit=1000")).certificates as Json[]).length;
  const signAudits = async (): Promise<Json[]> =>
    ok(await get("/v1/audit?action=ssh.sign&limit=1000")).records as Json[];
  const login = (port: number, user: string, key: KeyPair, cert: string, command: string) =>
    sshRun({ port, user, key: key.file, cert, command });

  before(async () => {
    ensureLocalUser(ACCOUNT);
    ensureLocalUser("root");
    custos = await startCustos();
    dir = mkdtempSync(join(tmpdir(), "custos-ssh-e2e-"));
    krlFile = join(dir, "revoked.krl");

    for (const name of ["alice", "bob", "carol"]) tokens[name] = await loggedInUser(custos, name, PASSWORD);
    ok(await custos.call("POST", "/v1/groups", { name: "ops", members: ["carol"] }), 201);
    await acmeProdApps(custos, [
      { name: "web", owners: { users: ["alice"] } },
      { name: "api", owners: { groups: ["ops"] } },
    ]);
    agentToken = nodeAgentToken(custos);
    for (const [app, instance] of [
      ["web", "web-1"],
      ["api", "api-1"],
    ] as const) {
      ok(
        await custos.call("POST", "/v1/broker/instances", { org: "acme", space: "prod", app, instance }, agentToken),
        201,
      );
    }

    ca = ok(await get("/v1/ssh/ca", null)) as { user: Json[]; host: Json[] };
    const trusted = await text("/v1/ssh/trusted-user-ca-keys");
    assert.equal(trusted.status, 200);
    trustedUserCaKeys = trusted.body.toString("utf8");
    const kh = await text("/v1/ssh/known-hosts");
    assert.equal(kh.status, 200);
    knownHosts = join(dir, "known_hosts");
    writeFileSync(knownHosts, kh.body);
    await refreshKrl();

    sshd = await startSshd({
      trustedUserCaKeys,
      revokedKeysFile: krlFile,
      authorizedPrincipals: { [ACCOUNT]: ["web-1", "api-1"], root: ["root@web-1", "root@api-1"] },
      // The platform agent certifies the host key of an instance it registered.
      hostCertificate: async (publicKey) => {
        const a = await custos.call(
          "POST",
          "/v1/ssh/sign",
          { role: "instance-host", publicKey, principals: ["web-1"] },
          agentToken,
        );
        assert.equal(a.status, 200, a.text);
        return String((a.body as Json).certificate);
      },
    });
  });

  after(async () => {
    await sshd?.stop();
    await custos?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("the public endpoints: CA keys, TrustedUserCAKeys, known_hosts, KRL", async () => {
    assert.equal(ca.user.length, 1);
    assert.equal(ca.host.length, 1);
    const [user] = ca.user as [Json];
    const [host] = ca.host as [Json];
    assert.equal(user.id, "user-1");
    assert.equal(host.id, "host-1");
    assert.equal(user.algorithm, "ecdsa-p256");
    assert.match(String(user.publicKey), /^ecdsa-sha2-nistp256 AAAA/);
    assert.notEqual(user.publicKey, host.publicKey);
    assert.deepEqual(
      trustedUserCaKeys.split("\n").filter((l) => l !== ""),
      [String(user.publicKey)],
    );
    const knownHostsText = (await text("/v1/ssh/known-hosts")).body.toString("utf8");
    assert.deepEqual(
      knownHostsText.split("\n").filter((l) => l !== ""),
      [`@cert-authority * ${String(host.publicKey)}`],
    );
    const whole = ok(await get("/v1/ssh/ca", null));
    assert.equal(whole.trustedUserCaKeys, trustedUserCaKeys);
    assert.equal(whole.knownHosts, knownHostsText);
    // ssh-keygen reads the CA keys, and the KRL is one it can query.
    for (const k of [user, host]) assert.match(fingerprintOf(String(k.publicKey), dir), /^SHA256:/);
    const key = makeKey(join(dir, "krl-probe"));
    const q = sshKeygen(["-Q", "-f", krlFile, key.pubFile]);
    assert.equal(q.status, 0, `${q.stdout}${q.stderr}`);
  });

  test("ssh-keygen -L accepts every certificate type and shows what was asked for", async () => {
    const userCaFp = fingerprintOf(String((ca.user[0] as Json).publicKey), dir);
    const specs: [KeySpec, string][] = [
      ["ed25519", "ssh-ed25519"],
      ["ecdsa-256", "ecdsa-sha2-nistp256"],
      ["ecdsa-384", "ecdsa-sha2-nistp384"],
      ["ecdsa-521", "ecdsa-sha2-nistp521"],
      ["rsa-3072", "ssh-rsa"],
    ];
    for (const [spec, type] of specs) {
      const key = makeKey(join(dir, `types-${spec}`), spec);
      const { file, cert } = await certify("alice", key, {
        principals: ["web-1"],
        ttlSeconds: 900,
        extensions: ["permit-port-forwarding", "permit-pty"],
        criticalOptions: { "source-address": "127.0.0.1/32,10.0.0.0/8" },
      });
      assert.ok(String(cert.certificate).startsWith(`${type}-cert-v01@openssh.com `), String(cert.certificate));
      assert.equal(cert.certType, "user");
      assert.equal(cert.caId, "user-1");
      assert.match(String(cert.serial), /^[1-9][0-9]*$/);
      assert.match(String(cert.keyId), /^user:alice role=owner request=\S+$/);
      assert.equal(cert.fingerprint, fingerprintOf(key.publicKey, dir));
      const validFor = Date.parse(String(cert.validBefore)) - Date.parse(String(cert.validAfter));
      assert.ok(validFor >= 929_000 && validFor <= 931_000, `valid for ${validFor} ms: 15 min plus the 30 s of skew`);

      const shown = describeCertificate(file);
      assert.equal(shown.status, 0, `${spec}: ${shown.stderr}`);
      const f = certificateFields(shown.stdout);
      assert.equal(f.type, `${type}-cert-v01@openssh.com user certificate`, shown.stdout);
      assert.equal(f.keyId, cert.keyId);
      assert.equal(f.serial, cert.serial);
      assert.equal(f.signingCa, userCaFp, shown.stdout);
      assertSameSecond(f.from, String(cert.validAfter), "validAfter");
      assertSameSecond(f.to, String(cert.validBefore), "validBefore");
      assert.deepEqual(f.principals, ["web-1"], shown.stdout);
      assert.deepEqual(f.criticalOptions, ["source-address 127.0.0.1/32,10.0.0.0/8"], shown.stdout);
      assert.deepEqual(f.extensions, ["permit-port-forwarding", "permit-pty"], shown.stdout);
    }

    // The owner role's defaults: permit-pty only, no critical options.
    const plain = await certify("alice", makeKey(join(dir, "types-defaults")));
    const f = certificateFields(describeCertificate(plain.file).stdout);
    assert.deepEqual(f.principals, ["web-1"]);
    assert.deepEqual(f.extensions, ["permit-pty"]);
    assert.deepEqual(f.criticalOptions, []);
    assert.deepEqual(plain.cert.extensions, ["permit-pty"]);
  });

  test("host certificates: the agent's for its instance, and an admin-made host role's", async () => {
    const hostCaFp = fingerprintOf(String((ca.host[0] as Json).publicKey), dir);
    assert.ok(sshd.hostCertificate?.startsWith("ssh-ed25519-cert-v01@openssh.com "));
    const hostCertFile = join(dir, "sshd-host-cert.pub");
    writeFileSync(hostCertFile, `${sshd.hostCertificate}\n`);
    const shown = describeCertificate(hostCertFile);
    assert.equal(shown.status, 0, shown.stderr);
    const f = certificateFields(shown.stdout);
    assert.equal(f.type, "ssh-ed25519-cert-v01@openssh.com host certificate");
    assert.equal(f.signingCa, hostCaFp);
    assert.deepEqual(f.principals, ["web-1"]);
    assert.deepEqual(f.extensions, []);
    assert.deepEqual(f.criticalOptions, []);
    assert.ok(Date.parse(`${f.to}Z`) - Date.now() > 23 * 3600_000, `the default host lifetime is a day: ${f.to}`);

    // Asked for nothing, the agent gets every live instance it registered.
    const all = ok(
      await sign(agentToken, {
        role: "instance-host",
        publicKey: makeKey(join(dir, "host-all"), "ecdsa-256").publicKey,
      }),
    );
    assert.deepEqual([...(all.principals as string[])].sort(), ["api-1", "web-1"]);
    assert.equal(all.certType, "host");
    assert.equal(all.caId, "host-1");
    assert.deepEqual(all.extensions, []);

    ok(
      await custos.call("PUT", "/v1/ssh/roles/db-hosts", {
        certType: "host",
        principals: ["*.db.internal"],
        ttlSeconds: 3600,
        maxTtlSeconds: 86_400,
      }),
    );
    const key = makeKey(join(dir, "db-host"), "rsa-3072");
    const db = ok(
      await sign(custos.adminToken, { role: "db-hosts", publicKey: key.publicKey, principals: ["pg-1.db.internal"] }),
    );
    const file = join(dir, "db-host-cert.pub");
    writeFileSync(file, `${String(db.certificate)}\n`);
    const dbShown = describeCertificate(file);
    assert.equal(dbShown.status, 0, dbShown.stderr);
    const g = certificateFields(dbShown.stdout);
    assert.equal(g.type, "ssh-rsa-cert-v01@openssh.com host certificate");
    assert.equal(g.signingCa, hostCaFp);
    assert.deepEqual(g.principals, ["pg-1.db.internal"]);
    // A pattern is never issued unasked, and a name outside it not at all.
    const unasked = await sign(custos.adminToken, { role: "db-hosts", publicKey: key.publicKey });
    assert.equal(unasked.status, 403, unasked.text);
    assert.equal(errorCode(unasked), "principal_not_allowed");
    const outside = await sign(custos.adminToken, {
      role: "db-hosts",
      publicKey: key.publicKey,
      principals: ["pg-1.db.internal.evil"],
    });
    assert.equal(errorCode(outside), "principal_not_allowed", outside.text);
  });

  test("sshd trusting the user CA lets an app owner in to the instance's account and runs the command", async () => {
    const key = makeKey(join(dir, "alice-login"));
    // Asked for nothing, the owner role gives the running instances of the apps alice owns.
    const { file, cert } = await certify("alice", key);
    assert.deepEqual(cert.principals, ["web-1"]);
    const mark = sshd.log().length;
    const r = await login(sshd.port, ACCOUNT, key, file, "id -un; echo ran-$((6*7))");
    assert.equal(r.status, 0, `${r.stderr}\nsshd:\n${sshd.logSince(mark)}`);
    assert.equal(r.stdout, `${ACCOUNT}\nran-42\n`);
    const log = sshd.logSince(mark);
    assert.ok(
      log.includes(`Accepted publickey for ${ACCOUNT}`) &&
        log.includes(`ID ${String(cert.keyId)} (serial ${String(cert.serial)})`),
      log,
    );
    // The same certificate doesn't open root: its principal isn't root's.
    const root = await login(sshd.port, "root", key, file, "id -u");
    assert.equal(root.status, 255, root.stdout);
    assert.match(root.stderr, /Permission denied/);
  });

  test("ownership through a group works, and only for that group's apps", async () => {
    const key = makeKey(join(dir, "carol-login"), "ecdsa-256");
    const { file, cert } = await certify("carol", key);
    assert.deepEqual(cert.principals, ["api-1"]);
    const mark = sshd.log().length;
    const r = await login(sshd.port, ACCOUNT, key, file, "echo via-group");
    assert.equal(r.status, 0, `${r.stderr}\nsshd:\n${sshd.logSince(mark)}`);
    assert.equal(r.stdout, "via-group\n");
    const other = await sign("carol", { role: "owner", publicKey: key.publicKey, principals: ["web-1"] });
    assert.equal(other.status, 403, other.text);
    assert.equal(errorCode(other), "principal_not_allowed");
  });

  test("a non-owner gets no certificate: 403 principal_not_allowed, audited as denied, nothing signed", async () => {
    const key = makeKey(join(dir, "bob-login"));
    const before = await certificateCount();
    const isBobDenied = (r: Json): boolean =>
      r.principal === "user:bob" && r.outcome === "denied" && r.errorCode === "principal_not_allowed";
    const deniedBefore = (await signAudits()).filter(isBobDenied).length;
    const none = await sign("bob", { role: "owner", publicKey: key.publicKey });
    assert.equal(none.status, 403, none.text);
    assert.equal(errorCode(none), "principal_not_allowed");
    const named = await sign("bob", { role: "owner", publicKey: key.publicKey, principals: ["web-1"] });
    assert.equal(named.status, 403, named.text);
    assert.equal(errorCode(named), "principal_not_allowed");
    assert.equal(await certificateCount(), before);
    const denied = (await signAudits()).filter(isBobDenied);
    assert.equal(denied.length, deniedBefore + 2, JSON.stringify(denied));
    assert.equal(denied[0]?.resource, "ssh/role/owner");
    // The audit CLI shows the same refusal.
    const cli = custos.cli(["--json", "audit", "list", "--action", "ssh.sign", "--principal", "user:bob"]);
    assert.equal(cli.status, 0, cli.stderr);
    assert.match(cli.stdout, /"outcome": "denied"/);
    assert.match(cli.stdout, /principal_not_allowed/);
    assert.ok(
      !cli.stdout.includes(key.publicKey.split(" ")[1] ?? "-"),
      "the audit record holds the fingerprint, not the key",
    );
  });

  test("sshd refuses an expired certificate", async () => {
    const key = makeKey(join(dir, "alice-expiring"));
    const { file, cert } = await certify("alice", key, { ttlSeconds: 1 });
    const validBefore = Date.parse(String(cert.validBefore));
    assert.ok(validBefore - Date.now() <= 2000, `validBefore ${String(cert.validBefore)} is now + 1 s`);
    // Past validBefore, with room for whole-second times on both sides.
    while (Date.now() < validBefore + 2500) await sleep(250);
    const mark = sshd.log().length;
    const r = await login(sshd.port, ACCOUNT, key, file, "true");
    assert.equal(r.status, 255, r.stdout);
    assert.match(sshd.logSince(mark), /expired/i);
    assert.doesNotMatch(sshd.logSince(mark), /Accepted publickey/);
  });

  test("a revoked certificate, then a revoked key, are in the KRL and refused by sshd", async () => {
    const key = makeKey(join(dir, "alice-revoked"));
    const { file, cert } = await certify("alice", key);
    const first = await login(sshd.port, ACCOUNT, key, file, "true");
    assert.equal(first.status, 0, `${first.stderr}\nsshd:\n${sshd.log()}`);
    const versionBefore = await refreshKrl();

    const revoked = ok(await custos.call("POST", "/v1/ssh/revoke", { serial: cert.serial, reason: "laptop lost" }));
    assert.deepEqual(revoked.revoked, [cert.serial]);
    assert.equal(revoked.krlVersion, versionBefore + 1);
    const view = ok(await get(`/v1/ssh/certificates/${String(cert.serial)}`));
    assert.equal(view.status, "revoked");
    assert.equal(view.revocationReason, "laptop lost");
    assert.equal(await refreshKrl(), versionBefore + 1);
    const q = sshKeygen(["-Q", "-f", krlFile, file]);
    assert.equal(q.status, 1, `${q.stdout}${q.stderr}`);
    assert.match(q.stdout, /REVOKED/);
    const mark = sshd.log().length;
    const refused = await login(sshd.port, ACCOUNT, key, file, "true");
    assert.equal(refused.status, 255, refused.stdout);
    assert.match(sshd.logSince(mark), /revoked/i);

    // A key: every certificate of it, and the key itself, whatever certifies it later.
    const key2 = makeKey(join(dir, "alice-revoked-key"), "ecdsa-256");
    const c1 = await certify("alice", key2);
    const c2 = await certify("alice", key2, { ttlSeconds: 600 });
    const byKey = ok(await custos.call("POST", "/v1/ssh/revoke", { publicKey: key2.publicKey }));
    assert.deepEqual([...(byKey.revoked as string[])].sort(), [c1.cert.serial, c2.cert.serial].sort());
    assert.equal(byKey.fingerprint, c1.cert.fingerprint);
    await refreshKrl();
    const qKey = sshKeygen(["-Q", "-f", krlFile, key2.pubFile]);
    assert.equal(qKey.status, 1, `${qKey.stdout}${qKey.stderr}`);
    const mark2 = sshd.log().length;
    const refused2 = await login(sshd.port, ACCOUNT, key2, c2.file, "true");
    assert.equal(refused2.status, 255, refused2.stdout);
    assert.match(sshd.logSince(mark2), /revoked/i);
    // The other certificates are untouched.
    const qOther = sshKeygen(["-Q", "-f", krlFile, (await certify("alice", makeKey(join(dir, "alice-fine")))).file]);
    assert.equal(qOther.status, 0, `${qOther.stdout}${qOther.stderr}`);
  });

  test("a client trusting only the host CA connects to the certified host and refuses a bare host key", async () => {
    const key = makeKey(join(dir, "alice-hosts"));
    const { file } = await certify("alice", key);
    const base = { user: ACCOUNT, key: key.file, cert: file, knownHosts, strict: true } as const;
    const good = await sshRun({ ...base, port: sshd.port, hostKeyAlias: "web-1", command: "echo trusted-host" });
    assert.equal(good.status, 0, `${good.stderr}\nsshd:\n${sshd.log()}`);
    assert.equal(good.stdout, "trusted-host\n");
    // The host certificate names web-1 only.
    const misnamed = await sshRun({ ...base, port: sshd.port, hostKeyAlias: "api-1", command: "true" });
    assert.equal(misnamed.status, 255, misnamed.stdout);

    const bare = await startSshd({ trustedUserCaKeys, authorizedPrincipals: { [ACCOUNT]: ["web-1"] } });
    try {
      const refused = await sshRun({ ...base, port: bare.port, hostKeyAlias: "web-1", command: "true" });
      assert.equal(refused.status, 255, refused.stdout);
      assert.match(refused.stderr, /Host key verification failed/);
      assert.doesNotMatch(bare.log(), /Accepted publickey/);
    } finally {
      await bare.stop();
    }
  });

  test("sudo: a grant lets root@<instance> be issued and used; revoking it revokes the certificate", async () => {
    const key = makeKey(join(dir, "alice-sudo"));
    const before = await sign("alice", { role: "owner", publicKey: key.publicKey, principals: ["root@web-1"] });
    assert.equal(before.status, 403, before.text);
    assert.equal(errorCode(before), "principal_not_allowed");

    const grant = ok(
      await custos.call("POST", "/v1/ssh/sudo", {
        org: "acme",
        space: "prod",
        app: "web",
        user: "alice",
        ttlSeconds: 900,
        reason: "incident 42",
      }),
      201,
    );
    assert.equal(grant.account, "root");
    assert.equal(grant.active, true);
    assert.equal(grant.user, "alice");
    assert.equal(grant.group, null);
    const active = ok(await get("/v1/ssh/sudo?active=true")).grants as Json[];
    assert.ok(active.some((g) => g.id === grant.id));

    // Privilege only when asked for by name.
    const unasked = await certify("alice", makeKey(join(dir, "alice-sudo-unasked")));
    assert.deepEqual(unasked.cert.principals, ["web-1"]);
    // A user without the grant still can't.
    const bob = await sign("bob", { role: "owner", publicKey: key.publicKey, principals: ["root@web-1"] });
    assert.equal(errorCode(bob), "principal_not_allowed", bob.text);

    const { file, cert } = await certify("alice", key, { principals: ["root@web-1"], ttlSeconds: 3600 });
    assert.deepEqual(cert.principals, ["root@web-1"]);
    assert.ok(
      Date.parse(String(cert.validBefore)) <= Date.parse(String(grant.expiresAt)),
      `the certificate (${String(cert.validBefore)}) outlives the grant (${String(grant.expiresAt)})`,
    );
    const view = ok(await get(`/v1/ssh/certificates/${String(cert.serial)}`));
    assert.equal(view.sudoGrantId, grant.id);
    await refreshKrl();
    const mark = sshd.log().length;
    const asRoot = await login(sshd.port, "root", key, file, "id -u");
    assert.equal(asRoot.status, 0, `${asRoot.stderr}\nsshd:\n${sshd.logSince(mark)}`);
    assert.equal(asRoot.stdout, "0\n");

    const revoked = ok(await custos.call("DELETE", `/v1/ssh/sudo/${String(grant.id)}`));
    assert.deepEqual(revoked.revoked, [cert.serial]);
    assert.equal((revoked.grant as Json).active, false);
    assert.notEqual((revoked.grant as Json).revokedAt, null);
    const after = await sign("alice", { role: "owner", publicKey: key.publicKey, principals: ["root@web-1"] });
    assert.equal(after.status, 403, after.text);
    assert.equal(errorCode(after), "principal_not_allowed");
    assert.equal(ok(await get(`/v1/ssh/certificates/${String(unasked.cert.serial)}`)).status, "valid");

    await refreshKrl();
    const q = sshKeygen(["-Q", "-f", krlFile, file]);
    assert.equal(q.status, 1, `${q.stdout}${q.stderr}`);
    const mark2 = sshd.log().length;
    const refused = await login(sshd.port, "root", key, file, "id -u");
    assert.equal(refused.status, 255, refused.stdout);
    assert.match(sshd.logSince(mark2), /revoked/i);
  });

  test("sudo for a group: its members get root@<instance> of that app only", async () => {
    const grant = ok(
      await custos.call("POST", "/v1/ssh/sudo", {
        org: "acme",
        space: "prod",
        app: "api",
        group: "ops",
        ttlSeconds: 600,
        reason: "migration",
      }),
      201,
    );
    assert.equal(grant.group, "ops");
    const key = makeKey(join(dir, "carol-sudo"));
    const c = ok(await sign("carol", { role: "owner", publicKey: key.publicKey, principals: ["root@api-1"] }));
    assert.deepEqual(c.principals, ["root@api-1"]);
    const web = await sign("carol", { role: "owner", publicKey: key.publicKey, principals: ["root@web-1"] });
    assert.equal(errorCode(web), "principal_not_allowed", web.text);
    ok(await custos.call("DELETE", `/v1/ssh/sudo/${String(grant.id)}`));
  });

  test("role violations answer the contract's 4xx codes, are audited, and sign nothing", async () => {
    // A self-service role narrower than owner: pty only, no options, ed25519 only.
    ok(
      await custos.call("PUT", "/v1/ssh/roles/narrow", {
        certType: "user",
        principals: ["{{owned-instances}}"],
        selfService: true,
        ttlSeconds: 60,
        maxTtlSeconds: 120,
        extensions: ["permit-pty"],
        allowedExtensions: ["permit-pty"],
        allowedCriticalOptions: [],
        keyTypes: { ed25519: 256 },
      }),
    );
    // A role with a literal principal: only callers granted ssh:sign on it may use it.
    ok(
      await custos.call("PUT", "/v1/ssh/roles/deployers", {
        certType: "user",
        principals: ["deploy"],
        ttlSeconds: 300,
        maxTtlSeconds: 600,
      }),
    );
    const ed = makeKey(join(dir, "violations-ed25519")).publicKey;
    const ec = makeKey(join(dir, "violations-ecdsa"), "ecdsa-256").publicKey;
    const rsa2048 = makeKey(join(dir, "violations-rsa2048"), "rsa-2048").publicKey;
    const certLine = (await certify("alice", makeKey(join(dir, "violations-cert")))).cert.certificate;
    const cases: [string, Json, number, string][] = [
      ["ttl over owner's max", { role: "owner", publicKey: ed, ttlSeconds: 7200 }, 400, "ttl_too_long"],
      ["ttl over narrow's max", { role: "narrow", publicKey: ed, ttlSeconds: 121 }, 400, "ttl_too_long"],
      [
        "extension outside the role",
        { role: "narrow", publicKey: ed, extensions: ["permit-port-forwarding"] },
        400,
        "extension_not_allowed",
      ],
      [
        "critical option outside the role",
        { role: "narrow", publicKey: ed, criticalOptions: { "force-command": "id" } },
        400,
        "option_not_allowed",
      ],
      ["key type outside the role", { role: "narrow", publicKey: ec }, 400, "key_type_not_allowed"],
      ["RSA below the owner's 3072 bits", { role: "owner", publicKey: rsa2048 }, 400, "key_type_not_allowed"],
      ["principal not owned", { role: "owner", publicKey: ed, principals: ["api-1"] }, 403, "principal_not_allowed"],
      [
        "a literal the role lacks",
        { role: "owner", publicKey: ed, principals: ["deploy"] },
        403,
        "principal_not_allowed",
      ],
      ["a role that needs a grant", { role: "deployers", publicKey: ed, principals: ["deploy"] }, 403, "forbidden"],
      ["an unknown role", { role: "no-such-role", publicKey: ed }, 404, "not_found"],
      ["a certificate instead of a key", { role: "owner", publicKey: certLine }, 400, "invalid_request"],
      ["not a key", { role: "owner", publicKey: "ssh-ed25519 bm90IGEga2V5" }, 400, "invalid_request"],
    ];
    const before = await certificateCount();
    const auditsBefore = (await signAudits()).length;
    for (const [what, body, status, code] of cases) {
      const a = await sign("alice", body);
      assert.equal(a.status, status, `${what}: ${a.text}`);
      assert.equal(errorCode(a), code, `${what}: ${a.text}`);
    }
    assert.equal(await certificateCount(), before, "a refused request signed something");
    const refusals = (await signAudits())
      .slice(auditsBefore)
      .filter((r) => r.principal === "user:alice" && r.outcome !== "success");
    for (const code of [
      "ttl_too_long",
      "extension_not_allowed",
      "option_not_allowed",
      "key_type_not_allowed",
      "principal_not_allowed",
    ]) {
      assert.ok(
        refusals.some((r) => r.outcome === "denied" && r.errorCode === code),
        `no denied ssh.sign audit record with ${code}: ${JSON.stringify(refusals)}`,
      );
    }
    // The role that needs a grant: refused before signing, and audited as such.
    const forbidden = (ok(await get("/v1/audit?principal=user:alice&limit=1000")).records as Json[]).filter(
      (r) => r.resource === "ssh/role/deployers" && r.outcome === "denied",
    );
    assert.equal(forbidden.length, 1, JSON.stringify(forbidden));
    assert.equal(forbidden[0]?.errorCode, "forbidden");
    assert.equal(forbidden[0]?.action, "ssh.sign");
  });
});
