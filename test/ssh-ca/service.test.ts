/**
 * The SSH CA service over a real SoftHSM token and SQLite store: principals derived
 * from ownership and sudo grants, requests outside their role, revocation into the
 * KRL. `ssh-keygen` is the oracle for every certificate and KRL.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type Actor, auditEntry } from "../../src/audit/index.js";
import { isCustosError } from "../../src/errors/index.js";
import { type Requester, SshCa } from "../../src/ssh-ca/index.js";
import { admin, openPlatformFixture, type PlatformFixture } from "../platform/setup.js";

const agent: Requester = { display: "token:agent-1", userId: null, ownerRights: false };
const agentActor: Actor = { principal: "token:agent-1", requestId: "req-agent", source: "127.0.0.1" };

interface Keys {
  readonly dir: string;
  /** A fresh key of `type` (ssh-keygen -t), returning its public key line. */
  make(name: string, type: string, bits?: number): string;
}

function keyMaker(): Keys {
  const dir = mkdtempSync(join(tmpdir(), "ssh-ca-keys-"));
  return {
    dir,
    make(name, type, bits) {
      const path = join(dir, name);
      execFileSync("ssh-keygen", ["-q", "-t", type, ...(bits ? ["-b", String(bits)] : []), "-N", "", "-f", path]);
      return readFileSync(`${path}.pub`, "utf8").trim();
    },
  };
}

/** `ssh-keygen -L` of a certificate line: throws if OpenSSH refuses it. */
function inspect(dir: string, certificate: string): string {
  const path = join(dir, `c-${Math.random().toString(36).slice(2)}-cert.pub`);
  writeFileSync(path, `${certificate}\n`);
  return execFileSync("ssh-keygen", ["-L", "-f", path], { encoding: "utf8" });
}

/** Whether `ssh-keygen -Q` finds the certificate revoked in the KRL. */
function revokedInKrl(dir: string, krl: Buffer, certificate: string): boolean {
  const krlPath = join(dir, `krl-${Math.random().toString(36).slice(2)}`);
  const certPath = `${krlPath}-cert.pub`;
  writeFileSync(krlPath, krl);
  writeFileSync(certPath, `${certificate}\n`);
  const r = spawnSync("ssh-keygen", ["-Q", "-f", krlPath, certPath], { encoding: "utf8" });
  assert.ok(r.status === 0 || /REVOKED/.test(r.stdout), `ssh-keygen -Q failed: ${r.stderr}`);
  return /REVOKED/.test(r.stdout);
}

async function rejects(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => isCustosError(e) && e.code === code);
}

describe("SSH CA service (SoftHSM, SQLite, ssh-keygen)", () => {
  let f: PlatformFixture;
  let ssh: SshCa;
  let keys: Keys;
  const actorOf = (name: string): Actor => ({ principal: `user:${name}`, requestId: `req-${name}`, source: "cli" });
  const requester = (name: string): Requester => ({ display: `user:${name}`, userId: `u-${name}`, ownerRights: true });

  async function instance(app: string, id: string, state: "registered" | "running" | "stopped" = "running") {
    const now = new Date();
    const appRecord = await f.store.platform.getApp("acme", "prod", app);
    assert.ok(appRecord);
    const at = now.toISOString();
    await f.store.broker.register(
      {
        id,
        org: "acme",
        space: "prod",
        app,
        appId: appRecord.id,
        state: state === "stopped" ? "registered" : state,
        leaseExpiresAt: new Date(now.getTime() + 3_600_000).toISOString(),
        registeredBy: agent.display,
        createdAt: at,
        updatedAt: at,
        stoppedAt: null,
        stopReason: null,
        revision: 1,
      },
      {
        id: `tok-${id}`,
        instanceId: id,
        hash: `hash-${id}`,
        createdAt: at,
        expiresAt: at,
        state: "unused",
        usedAt: null,
      },
      {
        time: at,
        requestId: "setup",
        principal: agent.display,
        source: "local",
        action: "instance.register",
        resource: id,
        outcome: "success",
        errorCode: null,
        details: {},
      },
    );
    if (state === "stopped") {
      await f.store.broker.stop(id, at, "deregistered", {
        time: at,
        requestId: "setup",
        principal: agent.display,
        source: "local",
        action: "instance.stop",
        resource: id,
        outcome: "success",
        errorCode: null,
        details: {},
      });
    }
  }

  before(async () => {
    f = await openPlatformFixture("ssh-ca-svc");
    keys = keyMaker();
    ssh = new SshCa({ keystore: f.keystore, store: f.store, caAlgorithm: "ecdsa-p256", knownHostsPattern: "*" });
    await ssh.ensure(admin);
    for (const u of ["alice", "bob", "carol"]) await f.user(u);
    await f.group("devs", ["carol"]);
    await f.platform.createOrg(admin, "acme");
    await f.platform.createSpace(admin, "acme", "prod");
    await f.platform.createApp(
      admin,
      { org: "acme", space: "prod", app: "web" },
      { users: ["alice"], groups: ["devs"] },
    );
    await f.platform.createApp(admin, { org: "acme", space: "prod", app: "api" }, { users: ["bob"] });
    await instance("web", "web-1");
    await instance("web", "web-2", "registered");
    await instance("web", "web-old", "stopped");
    await instance("api", "api-1");
  });

  after(async () => {
    await f?.close();
    rmSync(keys.dir, { recursive: true, force: true });
  });

  test("ensure is idempotent; the CA keys are OpenSSH keys, in a TrustedUserCAKeys file and a @cert-authority line", async () => {
    const before = ssh.caKeys();
    await ssh.ensure(admin);
    const again = new SshCa({ keystore: f.keystore, store: f.store, caAlgorithm: "ed25519", knownHostsPattern: "*" });
    await again.ensure(admin);
    assert.deepEqual(again.caKeys(), before, "a second start keeps the CAs it made (config changes only new CAs)");
    assert.equal(before.user.length, 1);
    assert.match(before.user[0]?.publicKey ?? "", /^ecdsa-sha2-nistp256 AAAA/);
    assert.notEqual(before.user[0]?.publicKey, before.host[0]?.publicKey);
    const caFile = join(keys.dir, "user-ca.pub");
    writeFileSync(caFile, before.trustedUserCaKeys);
    assert.match(execFileSync("ssh-keygen", ["-l", "-f", caFile], { encoding: "utf8" }), /^256 SHA256:/);
    assert.equal(before.knownHosts, `@cert-authority * ${before.host[0]?.publicKey}\n`);
  });

  test("an owner gets their app's live instances by default; a group owner too; ssh-keygen shows them", async () => {
    const key = keys.make("alice", "ed25519");
    const cert = await ssh.sign(actorOf("alice"), requester("alice"), { role: "owner", publicKey: key });
    assert.deepEqual([...cert.principals].sort(), ["web-1", "web-2"], "stopped instances and other apps excluded");
    const shown = inspect(keys.dir, cert.certificate);
    assert.match(shown, /Type: ssh-ed25519-cert-v01@openssh.com user certificate/);
    assert.match(shown, /Key ID: "user:alice role=owner request=req-alice"/);
    assert.match(shown, new RegExp(`Serial: ${cert.serial}\\b`));
    assert.match(shown, /Principals: \n\s+web-1\n\s+web-2\n/);
    assert.match(shown, /Extensions: \n\s+permit-pty\n/);
    const lifetime = Date.parse(cert.validBefore) - Date.parse(cert.validAfter);
    assert.equal(lifetime, 300_000 + 30_000, "the role's 5-minute default, plus the clock-skew allowance");

    const carol = await ssh.sign(actorOf("carol"), requester("carol"), {
      role: "owner",
      publicKey: keys.make("carol", "ecdsa", 384),
      principals: ["web-1"],
    });
    assert.deepEqual(carol.principals, ["web-1"]);
    assert.match(inspect(keys.dir, carol.certificate), /ecdsa-sha2-nistp384-cert-v01@openssh.com/);
  });

  test("nobody else gets an owner's instances, nor the owner's scoped token: refused, audited as denied, nothing recorded", async () => {
    const before = (await ssh.certificates({ limit: 1000 })).length;
    const key = keys.make("bob", "ed25519");
    await rejects(
      ssh.sign(actorOf("bob"), requester("bob"), { role: "owner", publicKey: key, principals: ["web-1"] }),
      "principal_not_allowed",
    );
    const noUser: Requester = { display: "token:standalone", userId: null, ownerRights: false };
    await rejects(ssh.sign(actorOf("x"), noUser, { role: "owner", publicKey: key }), "principal_not_allowed");
    // The owner's own token, scoped to its policies, acts only through them: it owns nothing.
    const scoped: Requester = { ...requester("alice"), ownerRights: false };
    await rejects(ssh.sign(actorOf("alice"), scoped, { role: "owner", publicKey: key }), "principal_not_allowed");
    assert.equal((await ssh.certificates({ limit: 1000 })).length, before);
    const denied = (await f.records("ssh.sign")).filter((r) => r.outcome === "denied");
    assert.ok(denied.some((r) => r.principal === "user:bob" && r.errorCode === "principal_not_allowed"));
  });

  test("requests outside the role get their specific error", async () => {
    const key = keys.make("alice-2", "ed25519");
    const sign = (extra: Record<string, unknown>) =>
      ssh.sign(actorOf("alice"), requester("alice"), { role: "owner", publicKey: key, ...extra });
    await rejects(sign({ ttlSeconds: 3601 }), "ttl_too_long");
    await rejects(sign({ criticalOptions: { "no-such": "x" } }), "option_not_allowed");
    await rejects(sign({ extensions: ["permit-everything"] }), "extension_not_allowed");
    await rejects(sign({ criticalOptions: { "source-address": "10.0.0.0/99" } }), "invalid_request");
    await rejects(sign({ publicKey: "ssh-ed25519 AAAA" }), "invalid_request");
    await rejects(sign({ publicKey: keys.make("small-rsa", "rsa", 2048) }), "key_type_not_allowed");
    await rejects(sign({ role: "no-such-role" }), "not_found");

    const ok = await sign({
      ttlSeconds: 60,
      extensions: ["permit-port-forwarding", "permit-pty"],
      criticalOptions: { "source-address": "127.0.0.1/32,10.1.0.0/16", "force-command": "/usr/bin/true" },
    });
    const shown = inspect(keys.dir, ok.certificate);
    assert.match(
      shown,
      /Critical Options: \n\s+force-command \/usr\/bin\/true\n\s+source-address 127.0.0.1\/32,10.1.0.0\/16\n/,
    );
    assert.match(shown, /Extensions: \n\s+permit-port-forwarding\n\s+permit-pty\n/);
  });

  test("roles: validated on write; literals and patterns; policy-gated roles keep literal principals", async () => {
    await rejects(ssh.putRole(admin, "bad", { certType: "user", principals: ["a,b"] }), "invalid_request");
    await rejects(ssh.putRole(admin, "bad", { certType: "user", principals: ["{{nope}}"] }), "invalid_request");
    await rejects(
      ssh.putRole(admin, "bad", { certType: "user", principals: ["deploy"], selfService: true }),
      "invalid_request",
    );
    await rejects(
      ssh.putRole(admin, "bad", { certType: "host", principals: ["x"], extensions: ["permit-pty"] }),
      "invalid_request",
    );
    await rejects(
      ssh.putRole(admin, "bad", { certType: "user", principals: ["x"], ttlSeconds: 7200 }),
      "invalid_request",
    );
    const role = await ssh.putRole(admin, "deploy", {
      certType: "user",
      principals: ["deploy", "*.db.internal"],
      keyTypes: { ed25519: 256 },
    });
    assert.equal(role.maxTtlSeconds, 3600);
    const key = keys.make("deploy", "ed25519");
    const byDefault = await ssh.sign(actorOf("bob"), requester("bob"), { role: "deploy", publicKey: key });
    assert.deepEqual(byDefault.principals, ["deploy"], "patterns are never issued unasked");
    const asked = await ssh.sign(actorOf("bob"), requester("bob"), {
      role: "deploy",
      publicKey: key,
      principals: ["pg1.db.internal"],
    });
    assert.deepEqual(asked.principals, ["pg1.db.internal"]);
    await rejects(
      ssh.sign(actorOf("bob"), requester("bob"), { role: "deploy", publicKey: keys.make("d-ec", "ecdsa", 256) }),
      "key_type_not_allowed",
    );
    await rejects(ssh.deleteRole(admin, "owner"), "conflict");
    await ssh.deleteRole(admin, "deploy");
    await rejects(ssh.sign(actorOf("bob"), requester("bob"), { role: "deploy", publicKey: key }), "not_found");
  });

  test("host certificates: an agent signs the host keys of the instances it registered", async () => {
    const hostKey = keys.make("host-web-1", "ecdsa", 256);
    const cert = await ssh.sign(agentActor, agent, {
      role: "instance-host",
      publicKey: hostKey,
      principals: ["web-1"],
    });
    const shown = inspect(keys.dir, cert.certificate);
    assert.match(shown, /host certificate/);
    assert.match(shown, /Principals: \n\s+web-1\n/);
    assert.match(shown, /Critical Options: \(none\)\n\s+Extensions: \(none\)/);
    await rejects(
      ssh.sign(agentActor, agent, { role: "instance-host", publicKey: hostKey, principals: ["web-old"] }),
      "principal_not_allowed",
    );
    const other: Requester = { display: "token:agent-2", userId: null, ownerRights: false };
    await rejects(ssh.sign(agentActor, other, { role: "instance-host", publicKey: hostKey }), "principal_not_allowed");
  });

  test("sudo: issued only when asked while granted, never outliving the grant; revoking it revokes what it allowed", async () => {
    const key = keys.make("carol-sudo", "ed25519");
    const sign = (principals?: string[]) =>
      ssh.sign(actorOf("carol"), requester("carol"), {
        role: "owner",
        publicKey: key,
        ttlSeconds: 3600,
        ...(principals ? { principals } : {}),
      });
    await rejects(sign(["root@web-1"]), "principal_not_allowed");
    const grant = await ssh.grantSudo(admin, {
      org: "acme",
      space: "prod",
      app: "web",
      group: "devs",
      ttlSeconds: 600,
      reason: "incident 42",
    });
    assert.equal(grant.group, "devs");
    assert.equal(grant.active, true);
    assert.deepEqual((await sign()).principals.includes("root@web-1"), false, "privilege is never given unasked");
    const privileged = await sign(["root@web-1", "root@web-2"]);
    assert.ok(Date.parse(privileged.validBefore) <= Date.parse(grant.expiresAt), "clamped to the grant");
    assert.match(inspect(keys.dir, privileged.certificate), /Principals: \n\s+root@web-1\n\s+root@web-2\n/);
    await rejects(sign(["root@api-1"]), "principal_not_allowed");
    const plain = await sign(["web-1"]);

    const revoked = await ssh.revokeSudo(admin, grant.id);
    assert.deepEqual(revoked.revoked, [privileged.serial]);
    assert.equal(revoked.grant.active, false);
    const krl = await ssh.krl();
    assert.equal(krl.version, revoked.krlVersion);
    assert.equal(revokedInKrl(keys.dir, krl.krl, privileged.certificate), true);
    assert.equal(revokedInKrl(keys.dir, krl.krl, plain.certificate), false);
    await rejects(sign(["root@web-1"]), "principal_not_allowed");
    await rejects(ssh.revokeSudo(admin, grant.id), "conflict");
    assert.equal((await ssh.certificate(privileged.serial)).status, "revoked");
  });

  test("deleting an app ends its live sudo grants: no longer active, and the deletion's audit record names them", async () => {
    await f.platform.createApp(admin, { org: "acme", space: "prod", app: "brief" }, { users: ["alice"] });
    const grant = await ssh.grantSudo(admin, {
      org: "acme",
      space: "prod",
      app: "brief",
      user: "bob",
      ttlSeconds: 600,
      reason: "one-off",
    });
    await f.platform.deleteApp(admin, { org: "acme", space: "prod", app: "brief" });
    assert.equal(
      (await ssh.sudoGrants(true)).find((g) => g.id === grant.id),
      undefined,
    );
    const ended = (await ssh.sudoGrants(false)).find((g) => g.id === grant.id);
    assert.equal(ended?.active, false);
    assert.equal(ended?.app, "brief", "the grant keeps the app's name for its history");
    const [deletion] = await f.store.listAudit({ action: "platform.app.delete", limit: 1, descending: true });
    assert.deepEqual(deletion?.details.sshSudoGrantsEnded, [grant.id]);
  });

  test("revocation by serial and by key, each a new KRL version that ssh-keygen reads", async () => {
    const keyA = keys.make("rev-a", "ed25519");
    const keyB = keys.make("rev-b", "rsa", 3072);
    const a = await ssh.sign(actorOf("alice"), requester("alice"), { role: "owner", publicKey: keyA });
    const b1 = await ssh.sign(actorOf("alice"), requester("alice"), { role: "owner", publicKey: keyB });
    const b2 = await ssh.sign(actorOf("alice"), requester("alice"), { role: "owner", publicKey: keyB });
    const v0 = (await ssh.krl()).version;

    const bySerial = await ssh.revoke(admin, { serial: a.serial, reason: "laptop lost" });
    assert.equal(bySerial.krlVersion, v0 + 1);
    let krl = (await ssh.krl()).krl;
    assert.equal(revokedInKrl(keys.dir, krl, a.certificate), true);
    assert.equal(revokedInKrl(keys.dir, krl, b1.certificate), false);
    await rejects(ssh.revoke(admin, { serial: a.serial }), "conflict");
    await rejects(ssh.revoke(admin, { serial: "123" }), "not_found");

    const byKey = await ssh.revoke(admin, { publicKey: keyB });
    assert.deepEqual([...byKey.revoked].sort(), [b1.serial, b2.serial].sort());
    krl = (await ssh.krl()).krl;
    assert.equal(revokedInKrl(keys.dir, krl, b2.certificate), true);
    const view = await ssh.certificate(b1.serial);
    assert.equal(view.status, "revoked");
    assert.equal(view.revocationReason, "unspecified");
    assert.equal((await f.records("ssh.revoke")).length, 2);
  });
});

describe("SSH CA service with Ed25519 CA keys", () => {
  let f: PlatformFixture;
  let dir: string;

  before(async () => {
    f = await openPlatformFixture("ssh-ca-ed");
    dir = mkdtempSync(join(tmpdir(), "ssh-ca-ed-"));
  });
  after(async () => {
    await f?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** An Ed25519 CA on a clock the test moves (`clock.now`), a one-minute role `name`, and a fresh key to sign under it. */
  async function clockedCa(name: string) {
    const clock = { now: new Date() };
    const ssh = new SshCa({
      keystore: f.keystore,
      store: f.store,
      caAlgorithm: "ed25519",
      knownHostsPattern: "*",
      clock: () => clock.now,
    });
    await ssh.ensure(admin);
    await ssh.putRole(admin, name, { certType: "user", principals: ["ops"], ttlSeconds: 60 });
    const keyPath = join(dir, name);
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", keyPath]);
    const publicKey = readFileSync(`${keyPath}.pub`, "utf8");
    const sign = () =>
      ssh.sign(admin, { display: "user:admin", userId: null, ownerRights: false }, { role: name, publicKey });
    return { ssh, clock, publicKey, sign };
  }

  test("certificates signed by an Ed25519 CA in the HSM are accepted by ssh-keygen; the KRL names that CA", async () => {
    const ssh = new SshCa({ keystore: f.keystore, store: f.store, caAlgorithm: "ed25519", knownHostsPattern: "*" });
    await ssh.ensure(admin);
    assert.match(ssh.caKeys().user[0]?.publicKey ?? "", /^ssh-ed25519 /);
    await ssh.putRole(admin, "ops", { certType: "user", principals: ["ops"] });
    const keyPath = join(dir, "k");
    execFileSync("ssh-keygen", ["-q", "-t", "ecdsa", "-b", "521", "-N", "", "-f", keyPath]);
    const cert = await ssh.sign(
      admin,
      { display: "user:admin", userId: null, ownerRights: false },
      {
        role: "ops",
        publicKey: readFileSync(`${keyPath}.pub`, "utf8"),
      },
    );
    const shown = inspect(dir, cert.certificate);
    assert.match(shown, /Signing CA: ED25519 SHA256:/);
    assert.match(shown, /ecdsa-sha2-nistp521-cert-v01@openssh.com/);
    await ssh.revoke(admin, { serial: cert.serial });
    assert.equal(revokedInKrl(dir, (await ssh.krl()).krl, cert.certificate), true);
  });

  test("a revoked certificate stays in the KRL for a day past its expiry, for hosts whose clocks run behind", async () => {
    const { ssh, clock, sign } = await clockedCa("brief");
    const revoked = await sign();
    await ssh.revoke(admin, { serial: revoked.serial });
    const listed = async () => {
      // Each revocation writes a new KRL: that is when expired entries may leave it.
      await ssh.revoke(admin, { serial: (await sign()).serial });
      return revokedInKrl(dir, (await ssh.krl()).krl, revoked.certificate);
    };
    clock.now = new Date(clock.now.getTime() + 23 * 3600_000);
    assert.equal(await listed(), true, "expired 23 hours ago: still listed");
    clock.now = new Date(clock.now.getTime() + 2 * 3600_000);
    assert.equal(await listed(), false, "expired over a day ago: gone");
  });

  test("listing by status goes by the status the view shows: an expired certificate is not listed as valid", async () => {
    const { ssh, clock, sign } = await clockedCa("minute");
    const cert = await sign();
    const serials = async (status?: "valid" | "revoked") =>
      (await ssh.certificates({ ...(status ? { status } : {}), limit: 1000 })).map((c) => c.serial);
    assert.ok((await serials("valid")).includes(cert.serial));

    clock.now = new Date(Date.parse(cert.validBefore));
    assert.equal((await ssh.certificate(cert.serial)).status, "expired");
    assert.ok(!(await serials("valid")).includes(cert.serial), "listed as valid once expired");
    assert.ok(!(await serials("revoked")).includes(cert.serial));
    assert.ok((await serials()).includes(cert.serial));
  });

  test("a revoked key is not certified: the store refuses to record its certificate, and sign says key_revoked", async () => {
    const { ssh, publicKey, sign } = await clockedCa("race");
    const cert = await sign();
    const record = await f.store.ssh.getCertificate(cert.serial);
    assert.ok(record);
    await ssh.revoke(admin, { publicKey });
    // What SshCa.sign would record for it: the store's check, in the recording transaction, refuses it.
    const audit = auditEntry(admin, "ssh.sign", "ssh/role/race", {});
    await assert.rejects(
      f.store.ssh.insertCertificate({ ...record, serial: "42" }, audit),
      (e: unknown) => isCustosError(e) && e.code === "key_revoked" && e.message.includes(cert.fingerprint),
    );
    assert.equal(await f.store.ssh.getCertificate("42"), undefined);
    await rejects(sign(), "key_revoked");
  });
});
