/**
 * `custos ssh …` against a real Custos and real OpenSSH: the files the commands
 * write are judged by ssh-keygen and sshd, and `ssh connect` logs in to a real sshd
 * through the system ssh client.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { type CliResult, type CustosInstance, startCustos } from "../helpers/custos.js";
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
import { acmeProdApps, loggedInUser } from "../helpers/platform.js";

type Json = Record<string, unknown>;

const ROOT = resolve(import.meta.dirname, "../..");
const BIN = join(ROOT, "bin/custos.js");
const ACCOUNT = "custos-app";
const PASSWORD = "correct horse battery staple";

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`;
}

describe("custos ssh (CLI) against real OpenSSH", { skip: opensshUnavailable() }, () => {
  let custos: CustosInstance;
  let dir: string;
  let caFile: string;
  let sshd: Sshd;
  let krlFile: string;
  let agentToken: string;
  let aliceToken: string;
  let bobToken: string;

  /** Runs the CLI as `token`'s holder, its temporary files in `tmp` (so a test can see what it leaves). */
  const cli = (args: string[], { tmp, ...o }: { token?: string; tmp?: string; input?: string } = {}): CliResult =>
    custos.cli(args, { ...o, env: { TMPDIR: tmp ?? tmpdir() } });
  const json = (r: CliResult): Json => {
    assert.equal(r.status, 0, `exit ${r.status}: ${r.stderr}`);
    return JSON.parse(r.stdout) as Json;
  };
  /** The key directories `ssh connect` made in `tmp` (tsx keeps its cache there too). */
  const keyDirs = (tmp: string): string[] => readdirSync(tmp).filter((n) => n.startsWith("custos-ssh-"));
  /** A fresh empty directory for one CLI run's temporary files. */
  const freshTmp = (name: string): string => {
    const t = join(dir, `tmp-${name}`);
    mkdirSync(t, { mode: 0o755 });
    return t;
  };

  before(async () => {
    ensureLocalUser(ACCOUNT);
    ensureLocalUser("root");
    custos = await startCustos();
    dir = mkdtempSync(join(tmpdir(), "custos-ssh-cli-"));
    caFile = join(dir, "custos-ca.pem");
    writeFileSync(caFile, custos.ca);
    krlFile = join(dir, "revoked.krl");

    aliceToken = await loggedInUser(custos, "alice", PASSWORD);
    bobToken = await loggedInUser(custos, "bob", PASSWORD);
    await acmeProdApps(custos, [{ name: "web", owners: { users: ["alice"] } }]);
    const made = cli(["broker", "agent-token", "node-agent-1"]);
    assert.equal(made.status, 0, made.stderr);
    agentToken = made.stdout.trim();
    const reg = cli(["broker", "register", "acme/prod/web", "web-1", "--token-file", join(dir, "bootstrap")], {
      token: agentToken,
    });
    assert.equal(reg.status, 0, reg.stderr);

    const caInfo = json(cli(["--json", "ssh", "ca"], { token: "" }));
    const krl = cli(["ssh", "krl", "--out", krlFile]);
    assert.equal(krl.status, 0, krl.stderr);
    sshd = await startSshd({
      trustedUserCaKeys: String(caInfo.trustedUserCaKeys),
      revokedKeysFile: krlFile,
      authorizedPrincipals: { [ACCOUNT]: ["web-1"], root: ["root@web-1"] },
      // The agent certifies the instance's host key with `custos ssh host sign`.
      hostCertificate: (publicKey) => {
        const pub = join(dir, "host_key.pub");
        writeFileSync(pub, `${publicKey}\n`);
        const r = cli(["ssh", "host", "sign", "--principal", "web-1", pub], { token: agentToken });
        assert.equal(r.status, 0, r.stderr);
        assert.match(r.stdout, /certType:\s+host/);
        return readFileSync(join(dir, "host_key-cert.pub"), "utf8");
      },
    });
  });

  after(async () => {
    await sshd?.stop();
    await custos?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("ssh ca prints the CA keys, the TrustedUserCAKeys line and the known_hosts line", async () => {
    const knownHosts = (await custos.call("GET", "/v1/ssh/known-hosts", undefined, null)).text.trim();
    const trusted = (await custos.call("GET", "/v1/ssh/trusted-user-ca-keys", undefined, null)).text.trim();
    assert.match(knownHosts, /^@cert-authority \* ecdsa-sha2-nistp256 AAAA\S+( \S+)?$/);
    // Public: no token needed.
    const r = cli(["ssh", "ca"], { token: "" });
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.split("\n");
    assert.ok(lines.includes(knownHosts), r.stdout);
    assert.ok(lines.includes(trusted), r.stdout);
    assert.match(r.stdout, /user-1/);
    assert.match(r.stdout, /host-1/);
    const j = json(cli(["--json", "ssh", "ca"], { token: "" }));
    assert.equal(String(j.knownHosts).trim(), knownHosts);
    assert.equal(((j.user as Json[])[0] as Json).publicKey, trusted);
  });

  test("ssh host sign wrote the host certificate sshd serves", () => {
    const shown = describeCertificate(join(dir, "host_key-cert.pub"));
    assert.equal(shown.status, 0, shown.stderr);
    assert.match(shown.stdout, /Type: ssh-ed25519-cert-v01@openssh.com host certificate/);
    assert.match(shown.stdout, /Principals:\s*\n\s+web-1\n/);
  });

  test("ssh sign writes <key>-cert.pub beside the key; ssh-keygen and sshd accept it", async () => {
    const key = makeKey(join(dir, "alice_ed25519"));
    const r = cli(
      [
        "ssh",
        "sign",
        "--role",
        "owner",
        "--principal",
        "web-1",
        "--ttl",
        "10m",
        "--extension",
        "permit-pty",
        "--extension",
        "permit-agent-forwarding",
        "--option",
        "force-command=echo forced-by-certificate",
        key.pubFile,
      ],
      { token: aliceToken },
    );
    assert.equal(r.status, 0, r.stderr);
    const certFile = `${key.file}-cert.pub`;
    assert.ok(existsSync(certFile));
    assert.equal(statSync(certFile).mode & 0o777, 0o644);
    const serial = /serial:\s+(\d+)/.exec(r.stdout)?.[1];
    assert.ok(serial, r.stdout);
    assert.match(r.stdout, /principals:\s+web-1/);
    assert.match(r.stdout, /validBefore:\s+\d{4}-/);
    assert.ok(r.stdout.includes(certFile), r.stdout);

    const shown = describeCertificate(certFile);
    assert.equal(shown.status, 0, shown.stderr);
    assert.match(shown.stdout, /Type: ssh-ed25519-cert-v01@openssh.com user certificate/);
    assert.match(shown.stdout, new RegExp(`Serial: ${serial}\\n`));
    assert.match(shown.stdout, /Principals:\s*\n\s+web-1\n/);
    assert.match(shown.stdout, /force-command echo forced-by-certificate/);
    assert.match(shown.stdout, /permit-agent-forwarding\n\s+permit-pty\n/);
    const from = /Valid: from (\S+) to (\S+)/.exec(shown.stdout);
    const lifetime = Date.parse(`${from?.[2]}Z`) - Date.parse(`${from?.[1]}Z`);
    assert.ok(Math.abs(lifetime - 630_000) <= 2000, `10 min and 30 s of skew, got ${lifetime} ms`);

    // sshd takes it, and the certificate's forced command runs instead of the one asked for.
    const login = await sshRun({
      port: sshd.port,
      user: ACCOUNT,
      key: key.file,
      cert: certFile,
      command: "echo asked",
    });
    assert.equal(login.status, 0, `${login.stderr}\nsshd:\n${sshd.log()}`);
    assert.equal(login.stdout, "forced-by-certificate\n");

    // --out for a key file that doesn't end in .pub; --json gives the whole answer.
    const other = makeKey(join(dir, "alice_ecdsa"), "ecdsa-384");
    copyFileSync(other.pubFile, join(dir, "alice_ecdsa.txt"));
    const out = join(dir, "chosen-cert.pub");
    const j = json(
      cli(["--json", "ssh", "sign", "--role", "owner", "--out", out, join(dir, "alice_ecdsa.txt")], {
        token: aliceToken,
      }),
    );
    assert.equal(readFileSync(out, "utf8").trim(), String(j.certificate));
    assert.deepEqual(j.principals, ["web-1"]);
    assert.equal(describeCertificate(out).status, 0);
  });

  test("ssh revoke and ssh krl: the KRL the CLI writes makes sshd refuse the certificate", async () => {
    const key = makeKey(join(dir, "alice_revoked"));
    const signed = json(cli(["--json", "ssh", "sign", "--role", "owner", key.pubFile], { token: aliceToken }));
    const certFile = `${key.file}-cert.pub`;
    const first = await sshRun({ port: sshd.port, user: ACCOUNT, key: key.file, cert: certFile, command: "true" });
    assert.equal(first.status, 0, `${first.stderr}\nsshd:\n${sshd.log()}`);

    const revoked = json(cli(["--json", "ssh", "revoke", "--serial", String(signed.serial), "--reason", "key leaked"]));
    assert.deepEqual(revoked.revoked, [signed.serial]);
    const written = cli(["ssh", "krl", "--out", krlFile]);
    assert.equal(written.status, 0, written.stderr);
    const q = sshKeygen(["-Q", "-f", krlFile, certFile]);
    assert.equal(q.status, 1, `${q.stdout}${q.stderr}`);
    assert.match(q.stdout, /REVOKED/);
    const mark = sshd.log().length;
    const refused = await sshRun({ port: sshd.port, user: ACCOUNT, key: key.file, cert: certFile, command: "true" });
    assert.equal(refused.status, 255, refused.stdout);
    assert.match(sshd.logSince(mark), /revoked/i);

    // To a pipe, the same bytes; --json, base64 and the version.
    const piped = cli(["ssh", "krl"]);
    assert.equal(piped.status, 0, piped.stderr);
    assert.ok(piped.stdoutBytes.equals(readFileSync(krlFile)), "the KRL on stdout differs from the file");
    const j = json(cli(["--json", "ssh", "krl"]));
    assert.ok(Buffer.from(String(j.krl), "base64").equals(readFileSync(krlFile)));
    assert.equal(j.krlVersion, revoked.krlVersion);

    const shown = json(cli(["--json", "ssh", "cert", "show", String(signed.serial)]));
    assert.equal(shown.status, "revoked");
    assert.equal(shown.revocationReason, "key leaked");
    const list = json(cli(["--json", "ssh", "cert", "list", "--status", "revoked"]));
    assert.ok((list.certificates as Json[]).some((c) => c.serial === signed.serial));
    const table = cli(["ssh", "cert", "list"]);
    assert.equal(table.status, 0, table.stderr);
    assert.ok(table.stdout.includes(String(signed.serial)), table.stdout);

    // By key: every certificate of it.
    const key2 = makeKey(join(dir, "alice_revoked_key"));
    const a = json(cli(["--json", "ssh", "sign", "--role", "owner", key2.pubFile], { token: aliceToken }));
    const byKey = json(cli(["--json", "ssh", "revoke", "--key", key2.pubFile]));
    assert.deepEqual(byKey.revoked, [a.serial]);
    assert.equal(byKey.fingerprint, a.fingerprint);
  });

  test("ssh sudo grant, list and revoke; ssh connect --sudo logs in as root while granted", async () => {
    const granted = json(
      cli([
        "--json",
        "ssh",
        "sudo",
        "grant",
        "--app",
        "acme/prod/web",
        "--user",
        "alice",
        "--ttl",
        "1h",
        "--reason",
        "disk full on web-1",
      ]),
    );
    assert.equal(granted.account, "root");
    assert.equal(granted.active, true);
    const id = String(granted.id);
    const active = json(cli(["--json", "ssh", "sudo", "list", "--active"]));
    assert.ok(
      (active.grants as Json[]).some((g) => g.id === id),
      JSON.stringify(active),
    );
    const table = cli(["ssh", "sudo", "list"]);
    assert.equal(table.status, 0, table.stderr);
    assert.ok(table.stdout.includes(id) && table.stdout.includes("disk full on web-1"), table.stdout);

    const tmp = freshTmp("sudo");
    const root = cli(
      ["ssh", "connect", "web-1", "--sudo", "--host", "127.0.0.1", "--port", String(sshd.port), "--", "id -u"],
      {
        token: aliceToken,
        tmp,
      },
    );
    assert.equal(root.status, 0, `${root.stderr}\nsshd:\n${sshd.log()}`);
    assert.equal(root.stdout, "0\n");
    assert.deepEqual(keyDirs(tmp), []);
    const issued = json(cli(["--json", "ssh", "cert", "list"])).certificates as Json[];
    const sudoCert = issued.find((c) => c.sudoGrantId === id);
    assert.ok(sudoCert, JSON.stringify(issued));
    assert.deepEqual(sudoCert.principals, ["root@web-1"]);

    const revoked = json(cli(["--json", "ssh", "sudo", "revoke", id]));
    assert.deepEqual(revoked.revoked, [sudoCert.serial]);
    const human = cli(["ssh", "sudo", "list", "--active"]);
    assert.equal(human.status, 0, human.stderr);
    assert.ok(!human.stdout.includes(id), human.stdout);
    const again = cli(
      ["ssh", "connect", "web-1", "--sudo", "--host", "127.0.0.1", "--port", String(sshd.port), "--", "id -u"],
      {
        token: aliceToken,
        tmp,
      },
    );
    assert.equal(again.status, 1, again.stdout);
    assert.match(again.stderr, /principal_not_allowed/);
    assert.deepEqual(keyDirs(tmp), []);
  });

  test("ssh connect runs the command in sshd through the system ssh, and its key is gone afterwards", () => {
    const tmp = freshTmp("connect");
    const mark = sshd.log().length;
    const args = ["ssh", "connect", "web-1", "--host", "127.0.0.1", "--port", String(sshd.port), "--user", ACCOUNT];
    const r = cli([...args, "--", "id", "-un"], { token: aliceToken, tmp });
    assert.equal(r.status, 0, `${r.stderr}\nsshd:\n${sshd.logSince(mark)}`);
    assert.equal(r.stdout, `${ACCOUNT}\n`);
    assert.match(r.stderr, /certificate \d+ for web-1, valid until/);
    assert.deepEqual(keyDirs(tmp), [], "the temporary key directory is left behind");
    assert.match(sshd.logSince(mark), /Accepted publickey for custos-app .*ID user:alice role=owner request=/);

    // ssh's exit code is custos's.
    const seven = cli([...args, "--", "exit 7"], { token: aliceToken, tmp });
    assert.equal(seven.status, 7, seven.stderr);
    assert.deepEqual(keyDirs(tmp), []);

    // Not an owner: no certificate, no ssh, nothing left.
    const bob = cli([...args, "--", "true"], { token: bobToken, tmp });
    assert.equal(bob.status, 1, bob.stdout);
    assert.match(bob.stderr, /principal_not_allowed/);
    assert.deepEqual(keyDirs(tmp), []);
  });

  /**
   * Starts `ssh connect web-1` in the background with a remote command that prints
   * "ready" and then waits for stdin to close, so the session stays open while a
   * test looks at its files or signals it.
   */
  const startConnect = (tmp: string) => {
    const args = ["ssh", "connect", "web-1", "--host", "127.0.0.1", "--port", String(sshd.port), "--user", ACCOUNT];
    const child = spawn(process.execPath, [BIN, ...args, "--", "echo ready; read line; echo done"], {
      env: {
        ...custos.env,
        CUSTOS_ADDR: custos.url,
        CUSTOS_CACERT: caFile,
        CUSTOS_TOKEN: aliceToken,
        CUSTOS_TOKEN_FILE: "",
        TMPDIR: tmp,
      },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const output = { stdout: "", stderr: "" };
    child.stderr.on("data", (c: Buffer) => {
      output.stderr += c.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.once("close", (code) => resolve(code)));
    const ready = new Promise<void>((resolve, reject) => {
      child.stdout.on("data", (c: Buffer) => {
        output.stdout += c.toString();
        if (output.stdout.includes("ready\n")) resolve();
      });
      child.once("close", () => reject(new Error(`ssh connect ended early: ${output.stderr}\nsshd:\n${sshd.log()}`)));
    });
    return { child, output, ready, exited };
  };

  test("while ssh connect runs, its key, certificate and known_hosts sit in a private directory", async () => {
    const tmp = freshTmp("running");
    const session = startConnect(tmp);
    try {
      await session.ready;
      const [keyDir, ...more] = keyDirs(tmp);
      assert.ok(keyDir !== undefined && more.length === 0, readdirSync(tmp).join(", "));
      const path = join(tmp, keyDir);
      assert.equal(statSync(path).mode & 0o777, 0o700);
      assert.deepEqual(readdirSync(path).sort(), [
        "id_ed25519",
        "id_ed25519-cert.pub",
        "id_ed25519.pub",
        "known_hosts",
      ]);
      assert.equal(statSync(join(path, "id_ed25519")).mode & 0o077, 0, "the private key is readable by others");
      // Each host CA key vouches for exactly the instance connected to (its HostKeyAlias), whatever the served pattern.
      const ca = (await custos.call("GET", "/v1/ssh/ca", undefined, null)).body as { host: { publicKey: string }[] };
      assert.ok(ca.host.length > 0);
      assert.equal(
        readFileSync(join(path, "known_hosts"), "utf8"),
        ca.host.map((k) => `@cert-authority web-1 ${k.publicKey}\n`).join(""),
      );
      const shown = describeCertificate(join(path, "id_ed25519-cert.pub"));
      assert.equal(shown.status, 0, shown.stderr);
      assert.match(shown.stdout, /Principals:\s*\n\s+web-1\n/);
      assert.match(shown.stdout, /Key ID: "user:alice role=owner request=/);
    } finally {
      session.child.stdin.end();
    }
    assert.equal(await session.exited, 0, session.output.stderr);
    assert.equal(session.output.stdout, "ready\ndone\n");
    assert.deepEqual(keyDirs(tmp), [], "the key directory outlived ssh");
  });

  test("a signal to ssh connect ends the session and still deletes the key", async () => {
    const tmp = freshTmp("signalled");
    const session = startConnect(tmp);
    try {
      await session.ready;
      assert.equal(keyDirs(tmp).length, 1);
      session.child.kill("SIGTERM");
      const code = await session.exited;
      assert.notEqual(code, 0, session.output.stderr);
      assert.notEqual(code, null, "custos died of the signal instead of passing it on");
      assert.ok(!session.output.stdout.includes("done"), session.output.stdout);
      assert.deepEqual(keyDirs(tmp), [], "the key directory outlived the signal");
    } finally {
      session.child.stdin.end();
    }
  });

  test("ssh connect refuses a host without a Custos host certificate", async () => {
    const caInfo = json(cli(["--json", "ssh", "ca"], { token: "" }));
    const bare = await startSshd({
      trustedUserCaKeys: String(caInfo.trustedUserCaKeys),
      authorizedPrincipals: { [ACCOUNT]: ["web-1"] },
    });
    try {
      const tmp = freshTmp("bare");
      const r = cli(
        [
          "ssh",
          "connect",
          "web-1",
          "--host",
          "127.0.0.1",
          "--port",
          String(bare.port),
          "--user",
          ACCOUNT,
          "--",
          "true",
        ],
        { token: aliceToken, tmp },
      );
      assert.equal(r.status, 255, r.stdout);
      assert.match(r.stderr, /Host key verification failed/);
      assert.doesNotMatch(bare.log(), /Accepted publickey/);
      assert.deepEqual(keyDirs(tmp), []);
    } finally {
      await bare.stop();
    }
  });

  test("ssh role put, show, list and delete", () => {
    const file = join(dir, "role.json");
    writeFileSync(
      file,
      JSON.stringify({ certType: "user", principals: ["deploy"], ttlSeconds: 120, maxTtlSeconds: 600 }),
    );
    const put = json(cli(["--json", "ssh", "role", "put", "deployers", "--file", file]));
    assert.equal(put.name, "deployers");
    assert.deepEqual(put.principals, ["deploy"]);
    const shown = cli(["ssh", "role", "show", "deployers"]);
    assert.equal(shown.status, 0, shown.stderr);
    assert.match(shown.stdout, /maxTtlSeconds:\s+600/);
    const list = cli(["ssh", "role", "list"]);
    assert.equal(list.status, 0, list.stderr);
    for (const name of ["owner", "instance-host", "deployers"]) assert.ok(list.stdout.includes(name), list.stdout);
    // alice has no grant on a role that isn't self-service.
    const key = makeKey(join(dir, "alice_deploy"));
    const refused = cli(["ssh", "sign", "--role", "deployers", "--principal", "deploy", key.pubFile], {
      token: aliceToken,
    });
    assert.equal(refused.status, 1, refused.stdout);
    assert.match(refused.stderr, /forbidden/);
    assert.ok(!existsSync(`${key.file}-cert.pub`));
    const del = cli(["ssh", "role", "delete", "deployers"]);
    assert.equal(del.status, 0, del.stderr);
    const gone = cli(["ssh", "role", "show", "deployers"]);
    assert.equal(gone.status, 1, gone.stdout);
    assert.match(gone.stderr, /not_found/);
    const builtin = cli(["ssh", "role", "delete", "owner"]);
    assert.equal(builtin.status, 1, builtin.stdout);
    assert.match(builtin.stderr, /conflict/);
  });

  test("usage errors exit 64 with a message saying what is wrong, before asking the server", () => {
    const key = makeKey(join(dir, "usage"));
    copyFileSync(key.pubFile, join(dir, "usage.key"));
    writeFileSync(join(dir, "not-json.json"), "{ nope");
    const cases: [string[], RegExp][] = [
      [["ssh", "sign", "--role", "owner", join(dir, "usage.key")], /does not end in \.pub: give --out/],
      [["ssh", "sign", key.pubFile], /required option '--role <role>'/],
      [["ssh", "sign", "--role", "owner", `${key.file}.missing.pub`], /cannot read/],
      [["ssh", "sign", "--role", "owner", "--out", join(dir, "x"), key.file], /not an OpenSSH public key.*private key/],
      [["ssh", "sign", "--role", "owner", "--ttl", "5", key.pubFile], /invalid duration "5"/],
      [["ssh", "sign", "--role", "owner", "--option", "force-command", key.pubFile], /expected name=value/],
      [["ssh", "revoke"], /either --serial or --key/],
      [["ssh", "revoke", "--serial", "1", "--key", key.pubFile], /either --serial or --key/],
      [["ssh", "revoke", "--serial", "0x10"], /not a certificate serial/],
      [["ssh", "cert", "show", "abc"], /not a certificate serial/],
      [["ssh", "connect", "Web_1"], /not an instance id/],
      [["ssh", "connect", "web-1", "--account", "admin"], /--account goes with --sudo/],
      [["ssh", "connect", "web-1", "--port", "70000"], /invalid port/],
      [["ssh", "sudo", "grant", "--app", "acme/web", "--user", "a", "--ttl", "1h", "--reason", "r"], /not an app/],
      [
        [
          "ssh",
          "sudo",
          "grant",
          "--app",
          "acme/prod/web",
          "--user",
          "a",
          "--group",
          "g",
          "--ttl",
          "1h",
          "--reason",
          "r",
        ],
        /either --user or --group/,
      ],
      [["ssh", "sudo", "grant", "--app", "acme/prod/web", "--user", "a", "--ttl", "1h"], /required option '--reason/],
      [["ssh", "role", "put", "x", "--file", join(dir, "not-json.json")], /not valid JSON/],
    ];
    for (const [args, message] of cases) {
      // A token that would be refused: a usage error must come before any request.
      const r = cli(args, { token: "cst_not-a-real-token" });
      assert.equal(r.status, 64, `${args.join(" ")}: exit ${r.status}\n${r.stderr}`);
      assert.match(r.stderr, message, args.join(" "));
      assert.doesNotMatch(r.stderr, /unauthenticated/);
    }
    assert.ok(!existsSync(join(dir, "x")));
  });

  test("ssh krl refuses to write binary to a terminal", () => {
    const env = {
      ...custos.env,
      CUSTOS_ADDR: custos.url,
      CUSTOS_CACERT: caFile,
      CUSTOS_TOKEN: custos.adminToken,
      CUSTOS_TOKEN_FILE: "",
    };
    // script(1) gives the command a terminal for stdout.
    const command = [process.execPath, BIN, "ssh", "krl"].map(shellQuote).join(" ");
    const r = spawnSync("script", ["-qec", `${command}; echo "exit=$?"`, "/dev/null"], {
      env,
      encoding: "utf8",
      timeout: 120_000,
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /refusing to write a binary KRL to a terminal/);
    assert.match(r.stdout, /exit=64/);
  });
});
