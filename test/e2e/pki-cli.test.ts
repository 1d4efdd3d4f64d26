import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
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
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import { after, before, describe, test } from "node:test";
import { CliContext } from "../../src/cli/context.js";
import { EXIT_CLIENT, EXIT_OK, EXIT_USAGE, exitCodeOf, formatError, isCommanderError } from "../../src/cli/errors.js";
import { buildProgram } from "../../src/cli/program.js";
import { type CliResult, type CustosInstance, startCustos } from "../helpers/custos.js";

function ioFor(env: NodeJS.ProcessEnv, input: string | Buffer, stdoutIsTty = false) {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const sink = (into: Buffer[], tty: boolean) =>
    Object.assign(
      new Writable({
        write(chunk: Buffer | string, _encoding, done) {
          into.push(Buffer.from(chunk));
          done();
        },
      }),
      tty ? { isTTY: true } : {},
    );
  const io = {
    stdin: Readable.from([Buffer.from(input)]),
    stdout: sink(out, stdoutIsTty),
    stderr: sink(err, false),
    env,
  };
  return { io, out, err };
}

/** The CLI in process, as src/cli/run.ts runs it: for what a child process can't show (a TTY stdout). */
async function runInProcess(
  args: readonly string[],
  env: NodeJS.ProcessEnv,
  input: string | Buffer = "",
  stdoutIsTty = false,
): Promise<CliResult> {
  const { io, out, err } = ioFor(env, input, stdoutIsTty);
  const ctx = new CliContext(io);
  let status: number;
  try {
    await buildProgram(ctx).parseAsync([...args], { from: "user" });
    status = ctx.exitCode;
  } catch (e) {
    if (!isCommanderError(e)) io.stderr.write(`${formatError(e)}\n`);
    status = exitCodeOf(e);
  } finally {
    ctx.close();
  }
  const stdoutBytes = Buffer.concat(out);
  return { status, stdout: stdoutBytes.toString("utf8"), stdoutBytes, stderr: Buffer.concat(err).toString("utf8") };
}

function openssl(args: string[], input?: string | Buffer): { status: number; stdout: string; stderr: string } {
  const r = spawnSync("openssl", args, { input: input ?? "" });
  return { status: r.status ?? -1, stdout: r.stdout.toString("utf8"), stderr: r.stderr.toString("utf8") };
}

function opensslOk(args: string[], input?: string | Buffer): string {
  const r = openssl(args, input);
  assert.equal(r.status, 0, `openssl ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** The PEM blocks of a bundle, in order. */
function pemBlocks(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g) ?? [];
}

describe("custos pki: refusals decided before any request", () => {
  // Nothing listens here: a command that tried to connect would fail with exit 2, not 64.
  const env = { CUSTOS_ADDR: "https://127.0.0.1:9", CUSTOS_TOKEN: "cst_unused" };

  test("issue without --out or --json is a usage error (a private key never lands on a terminal)", async () => {
    const r = await runInProcess(["pki", "issue", "web", "--cn", "a.example.com"], env);
    assert.equal(r.status, EXIT_USAGE, r.stderr);
    assert.match(r.stderr, /^error: usage: pki issue returns a private key/);
    assert.equal(r.stdout, "");
    const dash = await runInProcess(["pki", "issue", "web", "--cn", "a.example.com", "--out", "-"], env);
    assert.equal(dash.status, EXIT_USAGE, dash.stderr);
  });

  test("a DER CRL is not written to a terminal", async () => {
    const r = await runInProcess(["pki", "crl"], env, "", true);
    assert.equal(r.status, EXIT_USAGE, r.stderr);
    assert.match(r.stderr, /refusing to write a DER CRL to a terminal/);
  });

  test("bad durations, choices and missing arguments exit 64", async () => {
    const cases = [
      ["pki", "role", "put", "web", "--ttl", "30"],
      ["pki", "role", "put", "web", "--max-ttl", "1w"],
      ["pki", "role", "put", "web", "--ext-key-usage", "codeSigning"],
      ["pki", "role", "put", "web", "--key-usage", "nonRepudiation"],
      ["pki", "role", "put", "web", "--key-type", "rsa-1024"],
      ["pki", "issue", "web", "--key-type", "ec-p521", "--out", "x"],
      ["pki", "sign", "web"],
      ["pki", "cert", "revoke", "01", "--reason", "stolen"],
      ["pki", "cert", "list", "--status", "active"],
      ["pki", "cert", "list", "--limit", "0"],
      ["pki", "ca", "rotate", "--algorithm", "ed25519"],
      ["pki", "role", "get"],
    ];
    for (const args of cases) {
      const r = await runInProcess(args, env);
      assert.equal(r.status, EXIT_USAGE, `${args.join(" ")}: ${r.stderr}`);
    }
  });

  test("a CSR file that cannot be read is a usage error", async () => {
    const r = await runInProcess(["pki", "sign", "web", "--csr", "/nonexistent/req.csr"], env);
    assert.equal(r.status, EXIT_USAGE, r.stderr);
    assert.match(r.stderr, /cannot read \/nonexistent\/req\.csr: ENOENT/);
  });
});

describe("custos pki against a running Custos", () => {
  let custos: CustosInstance;
  let dir: string;
  /** The root CA PEM as `pki ca` printed it. */
  let rootFile: string;

  const cli = async (args: string[], input?: string): Promise<CliResult> =>
    custos.cli(args, input === undefined ? {} : { input });
  const ok = async (args: string[], input?: string): Promise<CliResult> => {
    const r = await cli(args, input);
    assert.equal(r.status, EXIT_OK, `custos ${args.join(" ")} failed: ${r.stderr}`);
    return r;
  };
  const json = async <T = Record<string, unknown>>(args: string[], input?: string): Promise<T> =>
    JSON.parse((await ok([...args, "--json"], input)).stdout) as T;
  const refused = async (args: string[], code: string): Promise<CliResult> => {
    const r = await cli(args);
    assert.equal(r.status, EXIT_CLIENT, `custos ${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`^error: ${code}: `));
    assert.equal(r.stdout, "");
    return r;
  };
  const file = (name: string) => join(dir, name);
  /** `openssl verify` of a leaf against the root, with `untrusted` as the intermediates. */
  const verify = (leaf: string, untrusted: string, extra: string[] = []) =>
    openssl(["verify", "-CAfile", rootFile, "-untrusted", untrusted, ...extra, leaf]);
  const x509Text = (pemFile: string, ...ext: string[]) =>
    opensslOk(["x509", "-in", pemFile, "-noout", ...(ext.length ? ["-ext", ext.join(",")] : []), "-subject"]);
  const pubkeyOfCert = (pemFile: string) => opensslOk(["x509", "-in", pemFile, "-noout", "-pubkey"]);

  before(async () => {
    custos = await startCustos();
    dir = mkdtempSync(join(tmpdir(), "custos-pki-cli-"));
    rootFile = file("root.pem");
  });
  after(async () => {
    await custos?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("pki ca prints the root; --chain the intermediate then the root; pki issuers lists both", async () => {
    const root = (await ok(["pki", "ca"])).stdout;
    assert.equal(pemBlocks(root).length, 1);
    writeFileSync(rootFile, root);
    assert.match(x509Text(rootFile), /CN ?= ?Custos Root CA/);
    assert.equal(root, custos.ca, "the root is what var/tls/ca.pem holds");
    assert.equal(opensslOk(["verify", "-CAfile", rootFile, rootFile]).trim(), `${rootFile}: OK`);

    const chain = (await ok(["pki", "ca", "--chain"])).stdout;
    const [intermediate, rootAgain] = pemBlocks(chain);
    assert.equal(rootAgain, root);
    writeFileSync(file("int.pem"), intermediate ?? "");
    assert.match(x509Text(file("int.pem")), /CN ?= ?Custos Intermediate CA/);
    assert.equal(opensslOk(["verify", "-CAfile", rootFile, file("int.pem")]).trim(), `${file("int.pem")}: OK`);

    assert.deepEqual(await json(["pki", "ca"]), { pem: root });
    const { issuers } = await json<{ issuers: { id: string; kind: string; state: string }[] }>(["pki", "issuers"]);
    assert.deepEqual(issuers.map((i) => i.kind).sort(), ["intermediate", "root"]);
    const table = (await ok(["pki", "issuers"])).stdout;
    assert.match(table, /^id +name +kind +state +algorithm +notAfter +fingerprint\n/);
    for (const i of issuers) assert.match(table, new RegExp(`^${i.id} `, "m"));
  });

  test("pki role put, get, list: every option reaches the role", async () => {
    const put = await ok([
      "pki",
      "role",
      "put",
      "web",
      "--dns",
      "*.example.com",
      "--dns",
      "API.example.com",
      "--ip",
      "10.0.0.0/8",
      "--ip",
      "2001:db8::/32",
      "--uri",
      "spiffe://custos/*",
      "--key-usage",
      "digitalSignature",
      "--ext-key-usage",
      "server",
      "--ext-key-usage",
      "clientAuth",
      "--key-type",
      "ec-p256",
      "--key-type",
      "ed25519",
      "--key-type",
      "rsa-2048",
      "--max-ttl",
      "30d",
      "--ttl",
      "24h",
    ]);
    assert.match(put.stdout, /^name: +web$/m);
    const { role } = await json<{ role: Record<string, unknown> }>(["pki", "role", "get", "web"]);
    assert.deepEqual(
      {
        dnsNames: role.dnsNames,
        allowWildcardNames: role.allowWildcardNames,
        ipRanges: role.ipRanges,
        uris: role.uris,
        keyUsages: role.keyUsages,
        extKeyUsages: role.extKeyUsages,
        keyTypes: role.keyTypes,
        maxTtlSeconds: role.maxTtlSeconds,
        ttlSeconds: role.ttlSeconds,
      },
      {
        dnsNames: ["*.example.com", "api.example.com"],
        allowWildcardNames: false,
        ipRanges: ["10.0.0.0/8", "2001:db8::/32"],
        uris: ["spiffe://custos/*"],
        keyUsages: ["digitalSignature"],
        extKeyUsages: ["serverAuth", "clientAuth"],
        keyTypes: ["ec-p256", "ed25519", "rsa-2048"],
        maxTtlSeconds: 30 * 86_400,
        ttlSeconds: 86_400,
      },
    );
    const wild = await json<{ role: { allowWildcardNames: boolean } }>([
      "pki",
      "role",
      "put",
      "wild",
      "--dns",
      "*.apps.example.com",
      "--allow-wildcard-names",
    ]);
    assert.equal(wild.role.allowWildcardNames, true);
    const listed = (await ok(["pki", "role", "list"])).stdout;
    assert.match(listed, /^name +dnsNames/);
    assert.match(listed, /^web +\*\.example\.com, api\.example\.com +10\.0\.0\.0\/8/m);
    assert.match(listed, /^wild +/m);
    await refused(["pki", "role", "put", "bad", "--dns", "a..example.com"], "invalid_request");
  });

  test("pki issue --out that can't write one of its files leaves the others as they were", async () => {
    const prefix = file("half");
    writeFileSync(`${prefix}.key`, "old key");
    writeFileSync(`${prefix}.pem`, "old certificate");
    mkdirSync(`${prefix}.chain.pem`);
    const r = await refused(["pki", "issue", "web", "--cn", "a.example.com", "--out", prefix], "io_error");
    assert.match(r.stderr, /cannot write .*half\.key, .*half\.pem, .*half\.chain\.pem: EISDIR/);
    assert.deepEqual(
      [readFileSync(`${prefix}.key`, "utf8"), readFileSync(`${prefix}.pem`, "utf8")],
      ["old key", "old certificate"],
    );
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.startsWith(".half")),
      [],
      "no temporary file is left",
    );
  });

  test("pki issue --out writes the leaf, a 0600 key and the chain; openssl verifies them", async () => {
    const prefix = file("api");
    const r = await ok([
      "pki",
      "issue",
      "web",
      "--cn",
      "api.example.com",
      "--dns",
      "a.example.com",
      "--ip",
      "10.1.2.3",
      "--uri",
      "spiffe://custos/ns/web",
      "--ttl",
      "1h",
      "--key-type",
      "ec-p256",
      "--out",
      prefix,
    ]);
    assert.doesNotMatch(r.stdout, /PRIVATE KEY/);
    assert.match(r.stdout, new RegExp(`^files\\.key: +${prefix}\\.key$`, "m"));
    assert.equal(statSync(`${prefix}.key`).mode & 0o777, 0o600);
    assert.match(readFileSync(`${prefix}.key`, "utf8"), /^-----BEGIN PRIVATE KEY-----/);
    assert.equal(verify(`${prefix}.pem`, `${prefix}.chain.pem`).stdout.trim(), `${prefix}.pem: OK`);
    // Without the chain the leaf does not verify: the chain file is what links it to the root.
    assert.notEqual(openssl(["verify", "-CAfile", rootFile, `${prefix}.pem`]).status, 0);

    const text = x509Text(`${prefix}.pem`, "subjectAltName", "extendedKeyUsage", "keyUsage");
    assert.match(text, /CN ?= ?api\.example\.com/);
    assert.match(
      text,
      /DNS:api\.example\.com, DNS:a\.example\.com, IP Address:10\.1\.2\.3, URI:spiffe:\/\/custos\/ns\/web/,
    );
    assert.match(text, /TLS Web Server Authentication, TLS Web Client Authentication/);
    assert.match(text, /Digital Signature/);
    // The key in PREFIX.key is the certificate's.
    assert.equal(opensslOk(["pkey", "-in", `${prefix}.key`, "-pubout"]), pubkeyOfCert(`${prefix}.pem`));
    assert.match(opensslOk(["pkey", "-in", `${prefix}.key`, "-noout", "-text"]), /P-256/);
    // The lifetime asked for.
    const dates = opensslOk(["x509", "-in", `${prefix}.pem`, "-noout", "-startdate", "-enddate"]);
    const [, start = "", end = ""] = /notBefore=(.+)\nnotAfter=(.+)/.exec(dates) ?? [];
    const lifetime = (Date.parse(end) - Date.parse(start)) / 1000;
    assert.ok(lifetime >= 3600 && lifetime <= 3600 + 600, `lifetime ${lifetime}s`);

    // Writing again replaces the files whole, and the key file stays 0600.
    await ok(["pki", "issue", "web", "--cn", "api.example.com", "--out", prefix]);
    assert.equal(statSync(`${prefix}.key`).mode & 0o777, 0o600);
    assert.equal(opensslOk(["pkey", "-in", `${prefix}.key`, "-pubout"]), pubkeyOfCert(`${prefix}.pem`));
  });

  test("pki issue --json without --out prints the answer with its key; with --out, without it", async () => {
    const issued = await json<Record<string, string>>(["pki", "issue", "web", "--cn", "j.example.com"]);
    assert.match(issued.privateKey ?? "", /^-----BEGIN PRIVATE KEY-----/);
    writeFileSync(file("j.pem"), issued.certificate ?? "");
    writeFileSync(file("j.chain.pem"), issued.chain ?? "");
    assert.equal(verify(file("j.pem"), file("j.chain.pem")).status, 0);
    const quiet = await json<Record<string, string>>([
      "pki",
      "issue",
      "web",
      "--cn",
      "k.example.com",
      "--key-type",
      "ed25519",
      "--out",
      file("k"),
    ]);
    assert.equal(quiet.privateKey, undefined);
    assert.equal(readFileSync(file("k.pem"), "utf8"), quiet.certificate);
    assert.match(opensslOk(["pkey", "-in", file("k.key"), "-noout", "-text"]), /ED25519/);
  });

  test("refusals exit 1 with the server's code, and write no files", async () => {
    const prefix = file("refused");
    await refused(["pki", "issue", "web", "--cn", "evil.test", "--out", prefix], "name_not_allowed");
    await refused(["pki", "issue", "web", "--dns", "a.b.example.com", "--out", prefix], "name_not_allowed");
    await refused(["pki", "issue", "web", "--ip", "::ffff:10.0.0.1", "--out", prefix], "name_not_allowed");
    await refused(["pki", "issue", "web", "--cn", "a.example.com", "--ttl", "31d", "--out", prefix], "ttl_too_long");
    await refused(
      ["pki", "issue", "web", "--cn", "a.example.com", "--key-type", "rsa-4096", "--out", prefix],
      "key_type_not_allowed",
    );
    await refused(["pki", "issue", "nosuchrole", "--cn", "a.example.com", "--out", prefix], "not_found");
    for (const suffix of [".pem", ".key", ".chain.pem"]) assert.equal(existsSync(`${prefix}${suffix}`), false);
  });

  test("pki sign: a CSR from a file or stdin, written with its chain or printed", async () => {
    const key = file("csr.key");
    const csr = file("req.csr");
    opensslOk([
      "req",
      "-new",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      key,
      "-subj",
      "/CN=b.example.com",
      "-addext",
      "subjectAltName=DNS:b.example.com,IP:10.9.9.9",
      "-out",
      csr,
    ]);
    const out = file("signed.pem");
    await ok(["pki", "sign", "web", "--csr", csr, "--ttl", "2h", "--out", out]);
    assert.equal(verify(out, file("signed.chain.pem")).stdout.trim(), `${out}: OK`);
    assert.equal(opensslOk(["pkey", "-in", key, "-pubout"]), pubkeyOfCert(out));
    assert.match(x509Text(out, "subjectAltName"), /DNS:b\.example\.com, IP Address:10\.9\.9\.9/);

    const printed = await ok(["pki", "sign", "web", "--csr", "-"], readFileSync(csr, "utf8"));
    assert.equal(pemBlocks(printed.stdout).length, 1);
    writeFileSync(file("printed.pem"), printed.stdout);
    assert.equal(verify(file("printed.pem"), file("signed.chain.pem")).status, 0);

    const csrDer = spawnSync("openssl", ["req", "-in", csr, "-outform", "DER"]).stdout;
    csrDer[csrDer.length - 1] = (csrDer[csrDer.length - 1] ?? 0) ^ 0x01; // a bit of the signature
    writeFileSync(
      file("bad.csr"),
      `-----BEGIN CERTIFICATE REQUEST-----\n${csrDer.toString("base64")}\n-----END CERTIFICATE REQUEST-----\n`,
    );
    await refused(["pki", "sign", "web", "--csr", file("bad.csr")], "csr_invalid");
    opensslOk(["req", "-new", "-key", key, "-subj", "/CN=evil.test", "-out", file("evil.csr")]);
    await refused(["pki", "sign", "web", "--csr", file("evil.csr")], "name_not_allowed");
  });

  test("pki cert list, show, renew, revoke; pki crl lists the revoked serial", async () => {
    const issued = await json<{ serial: string; certificate: string }>([
      "pki",
      "issue",
      "web",
      "--cn",
      "r.example.com",
      "--out",
      file("r"),
    ]);
    const { serial } = issued;
    assert.match(serial, /^[0-9a-f]+$/);

    const listed = await json<{ certificates: { serial: string; role: string; status: string }[] }>([
      "pki",
      "cert",
      "list",
      "--role",
      "web",
      "--status",
      "valid",
    ]);
    assert.ok(listed.certificates.some((c) => c.serial === serial));
    assert.ok(listed.certificates.every((c) => c.role === "web" && c.status === "valid"));
    const table = (await ok(["pki", "cert", "list"])).stdout;
    assert.match(table, /^serial +role +commonName +status +keyType +notAfter\n/);
    assert.match(table, new RegExp(`^${serial} +web +r\\.example\\.com +valid +ec-p256 `, "m"));

    const shown = (await ok(["pki", "cert", "show", serial])).stdout;
    assert.match(shown, new RegExp(`^serial: +${serial}$`, "m"));
    assert.doesNotMatch(shown, /BEGIN CERTIFICATE/);
    assert.equal((await ok(["pki", "cert", "show", serial, "--pem"])).stdout, issued.certificate);

    // Renewal: same key, new serial, verifies.
    const renewedFile = file("renewed.pem");
    const renewed = await json<{ serial: string }>([
      "pki",
      "cert",
      "renew",
      serial,
      "--ttl",
      "2h",
      "--out",
      renewedFile,
    ]);
    assert.notEqual(renewed.serial, serial);
    assert.equal(pubkeyOfCert(renewedFile), pubkeyOfCert(file("r.pem")));
    assert.equal(verify(renewedFile, file("renewed.chain.pem")).status, 0);

    const revoked = await ok(["pki", "cert", "revoke", serial, "--reason", "keyCompromise"]);
    assert.match(revoked.stdout, /^status: +revoked$/m);
    assert.match(revoked.stdout, /^revocationReason: +keyCompromise$/m);
    await refused(["pki", "cert", "show", "ffffffffffffffff"], "not_found");

    // The CRL, PEM and DER, of the active intermediate and by issuer id.
    const crlPem = (await ok(["pki", "crl", "--pem"])).stdout;
    writeFileSync(file("crl.pem"), crlPem);
    const crlText = opensslOk(["crl", "-in", file("crl.pem"), "-noout", "-text"]);
    assert.match(crlText, new RegExp(`Serial Number: ${serial}`, "i"));
    assert.match(crlText, /Key Compromise/);
    const der = await ok(["pki", "crl"]);
    assert.equal(opensslOk(["crl", "-inform", "DER", "-outform", "PEM"], der.stdoutBytes), crlPem);
    const { issuers } = await json<{ issuers: { id: string; kind: string; state: string }[] }>(["pki", "issuers"]);
    const active = issuers.find((i) => i.kind === "intermediate" && i.state === "active");
    assert.ok(active);
    assert.equal((await ok(["pki", "crl", "--pem", "--issuer", active.id])).stdout, crlPem);
    assert.deepEqual(await json(["pki", "crl"]), { pem: crlPem });

    // openssl, given the CRL, refuses the revoked leaf and accepts the renewed one.
    const chainFile = file("r.chain.pem");
    const crlCheck = ["-crl_check", "-CRLfile", file("crl.pem")];
    const bad = verify(file("r.pem"), chainFile, crlCheck);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stdout + bad.stderr, /certificate revoked/);
    assert.equal(verify(renewedFile, chainFile, crlCheck).status, 0);
  });

  test("pki role delete: the role is gone", async () => {
    assert.deepEqual(await json(["pki", "role", "delete", "wild"]), { deleted: true });
    await refused(["pki", "role", "get", "wild"], "not_found");
  });

  test("pki ca rotate: a new active intermediate, the old one retiring; both chains verify", async () => {
    const chainBefore = (await ok(["pki", "ca", "--chain"])).stdout;
    const rotated = await ok(["pki", "ca", "rotate", "--algorithm", "rsa-3072"]);
    assert.match(rotated.stdout, /^issuer\.state: +active$/m);
    assert.match(rotated.stdout, /^retiring\.state: +retiring$/m);
    const { issuers } = await json<{ issuers: { kind: string; state: string; algorithm: string }[] }>([
      "pki",
      "issuers",
    ]);
    const states = issuers.filter((i) => i.kind === "intermediate").map((i) => `${i.state}:${i.algorithm}`);
    assert.deepEqual(states.sort(), ["active:rsa-3072", "retiring:ecdsa-p256"]);

    const chainAfter = (await ok(["pki", "ca", "--chain"])).stdout;
    assert.notEqual(chainAfter, chainBefore);
    await ok(["pki", "issue", "web", "--cn", "new.example.com", "--out", file("new")]);
    assert.equal(verify(file("new.pem"), file("new.chain.pem")).status, 0);
    assert.equal(readFileSync(file("new.chain.pem"), "utf8"), pemBlocks(chainAfter)[0]);
    // A certificate from before the rollover still verifies: its intermediate is still trusted under the root.
    assert.equal(verify(file("api.pem"), file("api.chain.pem")).status, 0);
  });
});
