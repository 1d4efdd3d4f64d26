/**
 * `npm run bench -- ssh [seconds|quick] [profile]`: OpenSSH user certificates signed
 * per second over the API (POST /v1/ssh/sign with an admin's token and a role with a
 * literal principal), at concurrency 1 and 16, with the CA key (EC P-256) in SoftHSM
 * and every certificate recorded durably (SQLite, the WAL fsynced before the answer) with its audit
 * record. In the same run, on the same machine: what an operator gets without Custos,
 * `ssh-keygen -s` with the same kind of CA key in a SoftHSM token (`-D`), one process
 * per certificate as a script would run it; and the raw HSM ECDSA P-256 sign rate,
 * the limit a signing service on this HSM can approach.
 *
 * Both sides sign the same few hundred distinct ed25519 subject keys, for the same
 * principal, validity (30 s back, 300 s ahead) and extension (permit-pty), and one
 * certificate of each is checked by `ssh-keygen -L` against the CA's public key.
 * Any non-2xx answer or failed ssh-keygen fails the run: a benchmark that counts
 * errors as work measures nothing.
 *
 * `profile` then runs the server once more under `--cpu-prof` for the c=16 load and
 * prints where its main thread spends its time (BENCH_PROFILE_OUT=<file> keeps the
 * profile).
 *
 * The server runs in its own process; wrk, a load generator in C, drives it from one
 * thread and rotates through the pre-generated request bodies.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createTestToken } from "../test/helpers/softhsm.js";
import { type BenchInstall, benchInstall, call, startCustos, startPlainServer, stop } from "./custos-server.js";
import { rawHsmRates } from "./hsm.js";
import { type CertLoad, ensureWrk, profiledRotate, certLoadRow as row, wrkRotate } from "./http-load.js";

const KEY_COUNT = 300;
const LEVELS = [1, 16] as const;
const PRINCIPAL = "bench";
const TTL_SECONDS = 300;
/** What the issue asks for: the API at c=16 at least 30 times `ssh-keygen -s` with the key in the HSM… */
const GOAL_VS_SSH_KEYGEN = 30;
/** …and at least 40 % of what the HSM itself signs. */
const GOAL_OF_RAW_HSM = 0.4;

/** ssh-keygen prints validity in local time; UTC keeps its output the same everywhere. */
const SSH_KEYGEN_ENV = { ...process.env, TZ: "UTC" };

/** An RFC 4251 string: uint32 length, then the bytes. */
function sshString(b: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(b.length);
  return Buffer.concat([len, b]);
}

/**
 * N distinct ed25519 public keys as authorized_keys lines, made with node:crypto: the
 * wire blob is the key type and the 32-byte public key, each an SSH string (RFC 8709).
 */
function makeSubjectKeys(n: number): string[] {
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const { publicKey } = generateKeyPairSync("ed25519");
    const raw = Buffer.from(publicKey.export({ format: "jwk" }).x as string, "base64url");
    const blob = Buffer.concat([sshString(Buffer.from("ssh-ed25519")), sshString(raw)]);
    lines.push(`ssh-ed25519 ${blob.toString("base64")} bench-${i}`);
  }
  return lines;
}

/** Installs OpenSC (pkcs11-tool) if missing: it makes the CA key pair in the ssh-keygen token. */
function ensureOpensc(): void {
  if (spawnSync("which", ["pkcs11-tool"]).status === 0) return;
  const install = "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq opensc";
  // The package lists may be missing or stale on a fresh machine: update only when the plain install fails.
  execFileSync("bash", ["-c", `${install} || (apt-get update -qq && ${install})`], { stdio: "inherit" });
}

/** What `ssh-keygen -L -f` says of a certificate; throws if it refuses it (a bad signature, say). */
function inspectCertificate(file: string): { signingCa: string; principals: string[]; summary: string } {
  const r = spawnSync("ssh-keygen", ["-L", "-f", file], { encoding: "utf8", env: SSH_KEYGEN_ENV });
  if (r.status !== 0) throw new Error(`ssh-keygen -L refused ${file}: ${r.stderr}`);
  const type = /Type: (\S+) (user|host) certificate/.exec(r.stdout);
  const ca = /Signing CA: \S+ (SHA256:\S+) \(using (\S+)\)/.exec(r.stdout);
  const validity = /Valid: from (\S+) to (\S+)/.exec(r.stdout);
  const principals = /Principals:\s*\n((?:\s{16}\S.*\n)*)/.exec(r.stdout);
  const extensions = /Extensions:\s*\n((?:\s{16}\S.*\n)*)/.exec(r.stdout);
  if (!type || !ca || !validity || !principals || !extensions) {
    throw new Error(`unexpected ssh-keygen -L output:\n${r.stdout}`);
  }
  const list = (m: RegExpExecArray) =>
    (m[1] ?? "")
      .split("\n")
      .map((l) => l.trim())
      .filter(Boolean);
  const seconds = (Date.parse(`${validity[2]}Z`) - Date.parse(`${validity[1]}Z`)) / 1000;
  return {
    signingCa: ca[1] ?? "",
    principals: list(principals),
    summary:
      `${type[1]} ${type[2]}, signed ${ca[2]}, principals ${list(principals).join(",")}, ` +
      `valid ${seconds} s, extensions ${list(extensions).join(",")}`,
  };
}

/** `ssh-keygen -l`'s SHA-256 fingerprint of a public key file. */
function fingerprint(file: string): string {
  const out = execFileSync("ssh-keygen", ["-l", "-E", "sha256", "-f", file], { encoding: "utf8" });
  const m = /^\d+ (SHA256:\S+)/.exec(out);
  if (!m?.[1]) throw new Error(`unexpected ssh-keygen -l output: ${out}`);
  return m[1];
}

/** Checks a certificate with `ssh-keygen -L`: signed by the CA in `caFile`, for the bench principal. */
function checkCertificate(dir: string, tag: string, certificate: string, caFile: string): string {
  const file = join(dir, `${tag}-cert.pub`);
  writeFileSync(file, `${certificate.trim()}\n`);
  const seen = inspectCertificate(file);
  const ca = fingerprint(caFile);
  if (seen.signingCa !== ca) throw new Error(`the ${tag} certificate is signed by ${seen.signingCa}, not ${ca}`);
  if (seen.principals.join(",") !== PRINCIPAL) {
    throw new Error(`the ${tag} certificate is for ${seen.principals.join(",")}, not ${PRINCIPAL}`);
  }
  return `${tag}: ${seen.summary}`;
}

// ---- ssh-keygen -s with the CA key in SoftHSM ---------------------------------------

interface SshKeygenCa {
  readonly dir: string;
  readonly caFile: string;
  /** With SSH_ASKPASS set: ssh-keygen asks a script for the PIN. */
  readonly askpassEnv: NodeJS.ProcessEnv;
  readonly pin: string;
  readonly modulePath: string;
  remove(): void;
}

/**
 * A fresh SoftHSM token holding an EC P-256 key pair (made in the token by
 * pkcs11-tool), its public key as `ssh-keygen -D` lists it, and what ssh-keygen needs
 * to log in on its own: it reads the PIN through SSH_ASKPASS (forced, so no terminal
 * is needed), here a script that prints a 0600 file; or `-P <PIN>` (undocumented for
 * -D: load_pkcs11_key passes -P's value as the PIN), which spares the script's two
 * processes per certificate but puts the PIN on the command line.
 */
function sshKeygenCa(parent: string): SshKeygenCa {
  ensureOpensc();
  const token = createTestToken("custos-bench-ssh-keygen");
  // ssh-keygen -D lists every key of every token, each with its label as the comment.
  const label = `bench-ssh-ca-${randomBytes(4).toString("hex")}`;
  const dir = join(parent, "ssh-keygen");
  mkdirSync(dir);
  try {
    execFileSync(
      "pkcs11-tool",
      [
        ...["--module", token.modulePath, "--token-label", token.label, "--login", "--pin", token.pin],
        ...["--keypairgen", "--key-type", "EC:prime256v1", "--label", label, "--id", "01"],
      ],
      { stdio: "pipe" },
    );
    const listed = execFileSync("ssh-keygen", ["-D", token.modulePath], { encoding: "utf8", stdio: "pipe" })
      .split("\n")
      .filter((l) => l.startsWith("ecdsa-sha2-nistp256 ") && l.endsWith(` ${label}`));
    if (listed.length !== 1)
      throw new Error(`ssh-keygen -D listed ${listed.length} EC P-256 keys labelled ${label}, not 1`);
    const caFile = join(dir, "ca.pub");
    writeFileSync(caFile, `${listed[0]}\n`);
    const pinFile = join(dir, "pin");
    writeFileSync(pinFile, `${token.pin}\n`, { mode: 0o600 });
    const askpass = join(dir, "askpass");
    writeFileSync(askpass, `#!/bin/sh\nexec cat ${JSON.stringify(pinFile)}\n`, { mode: 0o700 });
    const askpassEnv = { ...SSH_KEYGEN_ENV, SSH_ASKPASS: askpass, SSH_ASKPASS_REQUIRE: "force", DISPLAY: ":0" };
    return { dir, caFile, askpassEnv, pin: token.pin, modulePath: token.modulePath, remove: () => token.remove() };
  } catch (e) {
    token.remove();
    throw e;
  }
}

/** How ssh-keygen gets the PIN: from the SSH_ASKPASS script, or from `-P` on its command line. */
type PinFrom = "askpass" | "-P";

/** The arguments an operator's script would give ssh-keygen for the same certificate as the API's. */
function sshKeygenArgs(ca: SshKeygenCa, pinFrom: PinFrom, keyFile: string, i: number): string[] {
  return [
    ...(pinFrom === "-P" ? ["-P", ca.pin] : []),
    ...["-q", "-s", ca.caFile, "-D", ca.modulePath],
    ...["-I", `bench-keygen role=bench request=${i}`, "-n", PRINCIPAL, "-V", `-30s:+${TTL_SECONDS}s`],
    ...["-z", String(randomBytes(8).readBigUInt64BE() | 1n), "-O", "clear", "-O", "permit-pty", keyFile],
  ];
}

/**
 * Signs `count` subject keys, one ssh-keygen process each, `parallel` at a time; the
 * rate counts the processes that exited 0. One after another, every one must: two at
 * a time, SoftHSM's file store sometimes fails one's C_Login or C_GetTokenInfo with
 * CKR_GENERAL_ERROR (as often as 1 in 20 here; never one at a time), so those runs
 * report their failures instead.
 */
async function sshKeygenRun(
  ca: SshKeygenCa,
  pinFrom: PinFrom,
  keyFiles: readonly string[],
  count: number,
  parallel: number,
) {
  for (const f of keyFiles) rmSync(f.replace(/\.pub$/, "-cert.pub"), { force: true });
  let next = 0;
  const failures: string[] = [];
  const one = (i: number) =>
    new Promise<void>((done) => {
      const keyFile = keyFiles[i % keyFiles.length] as string;
      const child = spawn("ssh-keygen", sshKeygenArgs(ca, pinFrom, keyFile, i), {
        env: pinFrom === "askpass" ? ca.askpassEnv : SSH_KEYGEN_ENV,
        stdio: ["ignore", "ignore", "pipe"],
      });
      let err = "";
      child.stderr.on("data", (c: Buffer) => {
        err += c.toString();
      });
      child.on("error", (e) => {
        failures.push(e.message);
        done();
      });
      child.on("close", (code) => {
        if (code !== 0) failures.push(`exit ${code}: ${err.trim()}`);
        done();
      });
    });
  const start = performance.now();
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (next < count) await one(next++);
    }),
  );
  const secs = (performance.now() - start) / 1000;
  if (failures.length > 0 && parallel === 1) {
    throw new Error(`${failures.length} of ${count} ssh-keygen -s runs failed; first: ${failures[0]}`);
  }
  const firstFailure = failures[0]?.split("\n")[0];
  return {
    pinFrom,
    parallel,
    count,
    failed: failures.length,
    firstFailure,
    certsPerSec: (count - failures.length) / secs,
  };
}

// ---- report ---------------------------------------------------------------------------

/** Throws when a load run got any refusal or socket error: its rate would count failures as certificates. */
function assertClean(name: string, runs: readonly CertLoad[]): void {
  for (const r of runs) {
    if (r.non2xx > 0 || r.socketErrors > 0) {
      throw new Error(`${name} c=${r.concurrency}: ${r.non2xx} non-2xx answers, ${r.socketErrors} socket errors`);
    }
  }
}

export default async function main(args: string[]): Promise<void> {
  const quick = args.includes("quick");
  const profileRun = args.includes("profile");
  const explicit = args.find((a) => /^\d+(\.\d+)?$/.test(a));
  const seconds = Number(explicit ?? process.env.BENCH_SECONDS ?? (quick ? 3 : 10));
  const warmup = quick ? 1 : 2;
  const keygenCount = quick ? 100 : KEY_COUNT;
  ensureWrk();

  // ssh-keygen first, while its token is the only one: `-D` loads every token the
  // module offers, and the Custos install's token would only slow it down.
  const work = mkdtempSync(join(tmpdir(), "custos-bench-ssh-"));
  const children: ChildProcess[] = [];
  let install: BenchInstall | undefined;
  let keygenCa: SshKeygenCa | undefined;
  try {
    const keys = makeSubjectKeys(KEY_COUNT);
    const keyDir = join(work, "subjects");
    mkdirSync(keyDir);
    const keyFiles = keys.map((line, i) => {
      const f = join(keyDir, `k${i}.pub`);
      writeFileSync(f, `${line}\n`);
      return f;
    });
    const checks: string[] = [];

    // ---- ssh-keygen -s, the key in SoftHSM, one process per certificate
    keygenCa = sshKeygenCa(work);
    await sshKeygenRun(keygenCa, "askpass", keyFiles, 5, 1); // page in ssh-keygen, libsofthsm2 and the token
    const keygenAskpass = await sshKeygenRun(keygenCa, "askpass", keyFiles, keygenCount, 1);
    const keygenCert = readFileSync((keyFiles[1] as string).replace(/\.pub$/, "-cert.pub"), "utf8");
    checks.push(checkCertificate(work, "ssh-keygen", keygenCert, keygenCa.caFile));
    // The goals are judged against ssh-keygen at its fastest: the PIN given with -P.
    const keygenSeq = await sshKeygenRun(keygenCa, "-P", keyFiles, keygenCount, 1);
    const keygenPar = await sshKeygenRun(keygenCa, "-P", keyFiles, keygenCount, 2);
    keygenCa.remove();
    keygenCa = undefined;

    install = await benchInstall("custos-bench", { ssh: { caAlgorithm: "ecdsa-p256" } });
    const { dir, token, env, port, admin, caCertFile } = install;

    // ---- Custos
    const custos = await startCustos(env, port, caCertFile, admin);
    children.push(custos.child);
    const tls = { ca: custos.ca, token: admin };
    await call(
      `${custos.base}/v1/ssh/roles/bench`,
      "PUT",
      {
        certType: "user",
        principals: [PRINCIPAL],
        ttlSeconds: TTL_SECONDS,
        maxTtlSeconds: TTL_SECONDS,
        extensions: ["permit-pty"],
      },
      tls,
    );
    const caKeys = (await call(`${custos.base}/v1/ssh/ca`, "GET", undefined, { ca: custos.ca })) as {
      user: { id: string; algorithm: string; publicKey: string }[];
    };
    const userCa = caKeys.user[0];
    if (!userCa) throw new Error("GET /v1/ssh/ca lists no user CA");
    const custosCaFile = join(dir, "custos-user-ca.pub");
    writeFileSync(custosCaFile, `${userCa.publicKey}\n`);
    const signUrl = `${custos.base}/v1/ssh/sign`;
    const auth = { authorization: `Bearer ${admin}` };
    const bodies = keys.map((publicKey) => JSON.stringify({ role: "bench", publicKey }));
    const signOnce = async (i: number) =>
      (await call(signUrl, "POST", { role: "bench", publicKey: keys[i] }, tls)).certificate as string;
    checks.push(checkCertificate(dir, "Custos (before the load)", await signOnce(0), custosCaFile));

    const pid = custos.child.pid;
    wrkRotate(signUrl, bodies, auth, 16, warmup, pid);
    const api = LEVELS.map((c) => wrkRotate(signUrl, bodies, auth, c, seconds, pid));
    // wrk keeps no answers: the certificate checked is the next one the loaded server signs.
    checks.push(checkCertificate(dir, "Custos (after the load)", await signOnce(2), custosCaFile));
    await stop(custos.child);

    // ---- the HTTPS ceiling at c=16: plain fastify, the same bodies, no work
    const plain = await startPlainServer(port, dir);
    children.push(plain);
    const plainUrl = `${custos.base}/plain`;
    wrkRotate(plainUrl, bodies, auth, 16, warmup, plain.pid);
    const ceiling = wrkRotate(plainUrl, bodies, auth, 16, seconds, plain.pid);
    await stop(plain);

    // ---- the HSM alone, with nothing else running
    const raw = await rawHsmRates({ modulePath: token.modulePath, tokenLabel: token.label, pin: token.pin });

    // ---- report
    const ofRaw = (rate: number) => `${((100 * rate) / raw.ecdsaSignPerSec).toFixed(1)}% of raw HSM`;
    console.log(
      `\nssh benchmark (${seconds} s a measurement, ${KEY_COUNT} distinct ed25519 subject keys in rotation, ` +
        "EC P-256 CA keys in SoftHSM, 2 cores shared by the server and wrk)\n",
    );
    console.log(row("plain fastify HTTPS", ceiling, "(ceiling: no work at all)", "req/s"));
    for (const r of api) console.log(row("Custos POST /v1/ssh/sign", r, ofRaw(r.certsPerSec)));
    for (const k of [keygenAskpass, keygenSeq, keygenPar]) {
      console.log(
        `${"ssh-keygen -s -D softhsm".padEnd(26)} ${`x${k.parallel}`.padEnd(4)} ${k.certsPerSec.toFixed(0).padStart(7)} certs/s  ` +
          `(${k.count} certificates, one process each, ${k.parallel === 1 ? "one after another" : `${k.parallel} at a time`}, ` +
          `PIN ${k.pinFrom === "-P" ? "by -P" : "from SSH_ASKPASS"})` +
          (k.failed ? `  (${k.failed} failed, not counted: ${k.firstFailure})` : ""),
      );
    }
    console.log(
      `${"raw HSM ECDSA P-256".padEnd(26)}      ${String(raw.ecdsaSignPerSec).padStart(7)} signs/s  (sync, one session)`,
    );
    console.log(
      "\nNot the same work: Custos answers over HTTPS, checks a bearer token and a policy, applies the role, " +
        "signs with the CA key in SoftHSM (through pkcs11js) and commits every certificate and " +
        "its audit record to SQLite (group commit, the WAL fsynced) before answering. ssh-keygen starts a process, " +
        "loads the PKCS#11 module, opens and logs in to the token (the PIN from SSH_ASKPASS or -P), signs once and " +
        "writes the certificate beside the key; it keeps no record of what it signed.\n",
    );
    for (const c of checks) console.log(`ssh-keygen -L: ${c}`);

    const c16 = api[api.length - 1] as CertLoad;
    const vsKeygen = c16.certsPerSec / keygenSeq.certsPerSec;
    const vsRaw = c16.certsPerSec / raw.ecdsaSignPerSec;
    const met = (ok: boolean) => (ok ? "met" : "NOT MET");
    console.log(
      `\nAPI c=16 / ssh-keygen (one after another, -P): ${vsKeygen.toFixed(1)}x (goal >= ${GOAL_VS_SSH_KEYGEN}x): ` +
        `${met(vsKeygen >= GOAL_VS_SSH_KEYGEN)}`,
    );
    console.log(
      `API c=16 / raw HSM ECDSA P-256: ${(100 * vsRaw).toFixed(1)}% (goal >= ${100 * GOAL_OF_RAW_HSM}%): ` +
        `${met(vsRaw >= GOAL_OF_RAW_HSM)}`,
    );
    console.log(
      `API c=16 at ${((100 * c16.certsPerSec) / ceiling.certsPerSec).toFixed(1)}% of the plain HTTPS ceiling; ` +
        `API c=1 / ssh-keygen ${((api[0]?.certsPerSec ?? 0) / keygenSeq.certsPerSec).toFixed(1)}x`,
    );
    assertClean("Custos POST /v1/ssh/sign", api);
    assertClean("plain fastify HTTPS", [ceiling]);

    // ---- where the server's time goes, c=16 sign, under the V8 profiler
    if (profileRun) {
      const load = { url: signUrl, bodies, headers: auth, concurrency: 16 };
      const profiled = await profiledRotate(install, children, load, { warmup, measured: seconds }, "c=16 ssh sign");
      assertClean("profiled Custos sign", [profiled]);
    }
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    keygenCa?.remove();
    if (install) {
      rmSync(install.dir, { recursive: true, force: true });
      install.token.remove();
    }
    rmSync(work, { recursive: true, force: true });
  }
}
