/**
 * Real OpenSSH for tests: an sshd on a loopback port with its own config (a user CA,
 * a KRL, a host key and certificate, principals files per account), the system ssh
 * client, ssh-keygen, and local accounts to log in to. sshd runs as root (these tests
 * do), so logging in as another account and as root both work.
 */
import { spawn, spawnSync } from "node:child_process";
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { freePort } from "./ports.js";

const SSHD = "/usr/sbin/sshd";

export interface ToolResult {
  readonly status: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Why these tests can't run here, or false when they can: sshd must run as root (to
 * log in as other accounts) and the OpenSSH tools must be installed.
 */
export function opensshUnavailable(): string | false {
  if (process.getuid?.() !== 0) return "sshd must run as root (these tests log in as other local accounts)";
  if (!existsSync(SSHD)) return `${SSHD} is not installed (openssh-server)`;
  for (const tool of ["ssh", "ssh-keygen"]) {
    if (spawnSync(tool, ["-V"]).error !== undefined) return `${tool} is not installed (openssh-client)`;
  }
  return false;
}

/** Runs `ssh-keygen` with `args`; `input` on stdin. */
export function sshKeygen(args: string[], input?: string | Buffer): ToolResult {
  // UTC, so `-L` prints validity times comparable with the API's ISO times.
  const r = spawnSync("ssh-keygen", args, { input: input ?? "", timeout: 60_000, env: { ...process.env, TZ: "UTC" } });
  return { status: r.status ?? -1, stdout: r.stdout.toString("utf8"), stderr: r.stderr.toString("utf8") };
}

/** A key pair made by ssh-keygen: the private key file, `<file>.pub`, and that line. */
export interface KeyPair {
  readonly file: string;
  readonly pubFile: string;
  readonly publicKey: string;
}

export type KeySpec = "ed25519" | "ecdsa-256" | "ecdsa-384" | "ecdsa-521" | `rsa-${number}`;

/** A new unencrypted key pair at `file` (and `file.pub`), as `ssh-keygen -t … -N '' -q -f` makes it. */
export function makeKey(file: string, spec: KeySpec = "ed25519", comment = "custos-test"): KeyPair {
  const [type, bits] = spec.split("-") as [string, string | undefined];
  const args = ["-t", type, ...(bits ? ["-b", bits] : []), "-N", "", "-q", "-C", comment, "-f", file];
  const r = sshKeygen(args);
  if (r.status !== 0) throw new Error(`ssh-keygen ${args.join(" ")} failed: ${r.stderr}`);
  return { file, pubFile: `${file}.pub`, publicKey: readFileSync(`${file}.pub`, "utf8").trim() };
}

/** `ssh-keygen -L -f file`: a certificate's fields as OpenSSH reads them (it checks the signature). */
export function describeCertificate(file: string): ToolResult {
  return sshKeygen(["-L", "-f", file]);
}

/**
 * Makes a local account `name` with a home and a usable shell if it is missing, and
 * makes sure its password field doesn't lock it: with `UsePAM no`, sshd refuses an
 * account whose password starts with `!`, so it becomes `*` (no password login).
 */
export function ensureLocalUser(name: string): void {
  if (!/^[a-z_][a-z0-9_-]{0,30}$/.test(name)) throw new Error(`"${name}" is not a POSIX user name`);
  // Test files run side by side: another may hold the passwd lock, or make the account first.
  retry(`useradd ${name}`, () => {
    if (spawnSync("id", ["-u", name]).status === 0) return null;
    const made = spawnSync("useradd", ["-m", "-s", "/bin/sh", name], { encoding: "utf8" });
    return made.status === 0 || spawnSync("id", ["-u", name]).status === 0 ? null : made.stderr;
  });
  retry(`usermod -p '*' ${name}`, () => {
    const shadow = spawnSync("getent", ["shadow", name], { encoding: "utf8" }).stdout;
    const password = shadow.split(":")[1] ?? "";
    if (!password.startsWith("!") && password !== "") return null;
    const r = spawnSync("usermod", ["-p", "*", name], { encoding: "utf8" });
    return r.status === 0 ? null : r.stderr;
  });
}

/** Runs `attempt` (null: done, else why not) up to 10 times, 0.3 s apart. */
function retry(what: string, attempt: () => string | null): void {
  let why: string | null = null;
  for (let i = 0; i < 10; i++) {
    why = attempt();
    if (why === null) return;
    spawnSync("sleep", ["0.3"]);
  }
  throw new Error(`${what} failed: ${why}`);
}

export interface SshdOptions {
  /** The `TrustedUserCAKeys` file's content (one CA public key per line). */
  trustedUserCaKeys?: string;
  /** `RevokedKeys`: a KRL file's path (sshd rereads it at every authentication). */
  revokedKeysFile?: string;
  /** The host key's type (default ed25519); made with ssh-keygen in sshd's directory. */
  hostKeyType?: KeySpec;
  /** A `HostCertificate` for the host key: its content, or made from the host key's public line. */
  hostCertificate?: string | ((hostKeyPub: string) => Promise<string> | string);
  /**
   * `AuthorizedPrincipalsFile` per account: the principals a certificate may carry to
   * log in as it. Without this option sshd's default applies (the account's name must
   * be a principal); with it, an account not listed can't log in with a certificate.
   */
  authorizedPrincipals?: Readonly<Record<string, readonly string[]>>;
  /** More sshd_config lines. */
  extraConfig?: readonly string[];
}

export interface Sshd {
  readonly port: number;
  readonly dir: string;
  /** The host key's public line. */
  readonly hostKeyPub: string;
  /** The host certificate's line, when one was given. */
  readonly hostCertificate: string | undefined;
  /** sshd's log so far (LogLevel VERBOSE: why it refused, which certificate logged in). */
  log(): string;
  /** The log written since `mark` (a length of `log()` taken before). */
  logSince(mark: number): string;
  /** Rewrites the principals file of `user`. */
  setPrincipals(user: string, principals: readonly string[]): void;
  stop(): Promise<void>;
}

/**
 * Starts `sshd -D -e -f <config>` on 127.0.0.1 and a free port, and waits until it
 * listens. Its log goes to a file, not a pipe, so a test that blocks in spawnSync
 * can't stall it.
 */
export async function startSshd(options: SshdOptions = {}): Promise<Sshd> {
  mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
  const dir = mkdtempSync(join(tmpdir(), "custos-sshd-"));
  // sshd reads a principals file as the account logging in: the directory must let it through.
  chmodSync(dir, 0o755);
  const hostKey = makeKey(join(dir, "host_key"), options.hostKeyType ?? "ed25519", "custos-test-host");
  let hostCertificate: string | undefined;
  if (options.hostCertificate !== undefined) {
    const h = options.hostCertificate;
    hostCertificate = (typeof h === "string" ? h : await h(hostKey.publicKey)).trim();
    writeFileSync(join(dir, "host_key-cert.pub"), `${hostCertificate}\n`);
  }
  const principalsDir = join(dir, "principals");
  mkdirSync(principalsDir, { mode: 0o755 });
  const setPrincipals = (user: string, principals: readonly string[]): void => {
    writeFileSync(join(principalsDir, user), principals.map((p) => `${p}\n`).join(""), { mode: 0o644 });
  };
  for (const [user, principals] of Object.entries(options.authorizedPrincipals ?? {})) setPrincipals(user, principals);

  const port = await freePort();
  const lines = [
    `ListenAddress 127.0.0.1:${port}`,
    `HostKey ${hostKey.file}`,
    ...(hostCertificate !== undefined ? [`HostCertificate ${join(dir, "host_key-cert.pub")}`] : []),
    `PidFile ${join(dir, "sshd.pid")}`,
    "LogLevel VERBOSE",
    "PubkeyAuthentication yes",
    "AuthorizedKeysFile none",
    options.trustedUserCaKeys !== undefined ? `TrustedUserCAKeys ${join(dir, "trusted-user-ca-keys")}` : "",
    options.revokedKeysFile !== undefined ? `RevokedKeys ${options.revokedKeysFile}` : "",
    options.authorizedPrincipals !== undefined ? `AuthorizedPrincipalsFile ${principalsDir}/%u` : "",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "HostbasedAuthentication no",
    "UsePAM no",
    "PermitRootLogin prohibit-password",
    // The temporary directory's parents (/tmp) are world-writable: StrictModes would refuse the principals files.
    "StrictModes no",
    "UseDNS no",
    "PrintMotd no",
    "X11Forwarding no",
    "LoginGraceTime 60",
    "MaxStartups 50:30:100",
    ...(options.extraConfig ?? []),
  ].filter((l) => l !== "");
  if (options.trustedUserCaKeys !== undefined) {
    writeFileSync(join(dir, "trusted-user-ca-keys"), options.trustedUserCaKeys);
  }
  const config = join(dir, "sshd_config");
  writeFileSync(config, `${lines.join("\n")}\n`);

  const logFile = join(dir, "sshd.log");
  const out = openSync(logFile, "a");
  const child = spawn(SSHD, ["-D", "-e", "-f", config], { stdio: ["ignore", out, out] });
  closeSync(out);
  const log = (): string => (existsSync(logFile) ? readFileSync(logFile, "utf8") : "");
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));

  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  };

  for (let i = 0; ; i++) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const text = log();
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`sshd exited (${child.exitCode ?? child.signalCode}):\n${text}`);
    }
    if (log().includes(`Server listening on 127.0.0.1 port ${port}`)) break;
    if (i >= 300) {
      const text = log();
      await stop();
      throw new Error(`sshd did not start listening within 30 s:\n${text}`);
    }
    await sleep(100);
  }

  return {
    port,
    dir,
    hostKeyPub: hostKey.publicKey,
    hostCertificate,
    log,
    logSince: (mark) => log().slice(mark),
    setPrincipals,
    stop,
  };
}

export interface SshRunOptions {
  port: number;
  user: string;
  /** The private key file. */
  key: string;
  /** The certificate file (default: none, the plain key). */
  cert?: string;
  /** A known_hosts file; without one the host key is not checked (unless `strict`). */
  knownHosts?: string;
  /** StrictHostKeyChecking yes (default: no, with no known_hosts unless one is named). */
  strict?: boolean;
  /** Checks the host key under this name (a host certificate's principal). */
  hostKeyAlias?: string;
  host?: string;
  command: string;
  timeoutMs?: number;
}

/**
 * Runs `command` through the system ssh client, non-interactively: only the named
 * key (and certificate), no agent, no user or system config.
 */
export function sshRun(o: SshRunOptions): Promise<ToolResult> {
  const args = [
    "-F",
    "/dev/null",
    "-i",
    o.key,
    ...(o.cert !== undefined ? ["-o", `CertificateFile=${o.cert}`] : []),
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "IdentityAgent=none",
    "-o",
    "BatchMode=yes",
    "-o",
    "PasswordAuthentication=no",
    "-o",
    "KbdInteractiveAuthentication=no",
    "-o",
    `UserKnownHostsFile=${o.knownHosts ?? "/dev/null"}`,
    "-o",
    "GlobalKnownHostsFile=/dev/null",
    "-o",
    `StrictHostKeyChecking=${o.strict === true ? "yes" : "no"}`,
    "-o",
    "UpdateHostKeys=no",
    ...(o.hostKeyAlias !== undefined ? ["-o", `HostKeyAlias=${o.hostKeyAlias}`] : []),
    "-o",
    "ConnectTimeout=30",
    "-o",
    "LogLevel=VERBOSE",
    "-p",
    String(o.port),
    "-l",
    o.user,
    o.host ?? "127.0.0.1",
    o.command,
  ];
  return new Promise<ToolResult>((resolve, reject) => {
    const child = spawn("ssh", args, { stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (c: Buffer) => out.push(c));
    child.stderr.on("data", (c: Buffer) => err.push(c));
    const timer = setTimeout(() => child.kill("SIGKILL"), o.timeoutMs ?? 60_000);
    child.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({
        // Killed (by the timeout or a signal): no exit status.
        status: code ?? -1,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      });
    });
  });
}
