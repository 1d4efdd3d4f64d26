/**
 * `custos ssh …`: certificates from the SSH CA, its keys and KRL, roles, sudo grants,
 * and `ssh connect` (docs/ssh-ca.md). Thin wrappers over the HTTP API, except
 * `connect`, which makes a throwaway key, has it certified and runs the system ssh.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { constants, tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { type Command, Option } from "commander";
import { errnoOrMessage } from "../../errors/index.js";
import { writeFileAtomic } from "../../files/index.js";
import { arg, type CliContext, seg } from "../context.js";
import { CliError, EXIT_CLIENT, EXIT_SERVER, type ExitCode, printable, usageError } from "../errors.js";
import { readInput } from "../io.js";
import { formatValue, renderRecord, renderTable } from "../output.js";
import { checkInstance, collect, parseAppRef, parseDuration, parseInteger } from "../parse.js";
import { getPublic } from "../public.js";

type Json = Record<string, unknown>;

/** What POST /v1/ssh/sign answers (docs/ssh-ca.md, SignedCertificate). */
interface SignedCertificate {
  certificate: string;
  serial: string;
  keyId: string;
  certType: string;
  caId: string;
  principals: string[];
  validAfter: string;
  validBefore: string;
  extensions: string[];
  criticalOptions: Record<string, string>;
  fingerprint: string;
}

/** A POSIX account name, as sshd and useradd take it. */
const ACCOUNT_RE = /^[a-z_][a-z0-9_-]{0,31}$/;
const SERIAL_RE = /^[1-9][0-9]{0,19}$/;
/** Subject key types the CA signs; a `-cert-v01` line or a private key is not a public key. */
const KEY_LINE_RE = /^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) [A-Za-z0-9+/]+={0,2}( .*)?$/;

const CERT_COLUMNS = ["serial", "certType", "role", "principals", "status", "validBefore", "requester"];
const ROLE_COLUMNS = ["name", "certType", "principals", "selfService", "ttlSeconds", "maxTtlSeconds", "builtin"];
const SUDO_COLUMNS = ["id", "org", "space", "app", "user", "group", "account", "expiresAt", "active", "reason"];

// --- checks -------------------------------------------------------------------------

function checkAccount(name: string): string {
  if (!ACCOUNT_RE.test(name)) throw usageError(`"${name}" is not an account name (a-z, 0-9, '_', '-'; 1-32)`);
  return name;
}

function checkSerial(text: string): string {
  if (!SERIAL_RE.test(text)) throw usageError(`"${text}" is not a certificate serial (a non-zero decimal number)`);
  return text;
}

/** Adds one `--option name=value` (a critical option); a repeated name is a usage error. */
function addOption(text: string, previous: Record<string, string> | undefined): Record<string, string> {
  const at = text.indexOf("=");
  if (at <= 0) throw usageError(`invalid critical option "${text}": expected name=value (e.g. force-command=uptime)`);
  const name = text.slice(0, at);
  const options = { ...previous };
  if (Object.hasOwn(options, name)) throw usageError(`critical option "${name}" given twice`);
  options[name] = text.slice(at + 1);
  return options;
}

/** The one public key line in `file` (an OpenSSH `.pub` file). */
function readPublicKey(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (cause) {
    throw usageError(`cannot read ${file}: ${errnoOrMessage(cause)}`, cause);
  }
  const lines = text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  const line = lines[0];
  if (lines.length !== 1 || line === undefined || !KEY_LINE_RE.test(line)) {
    const hint = text.includes("PRIVATE KEY") ? " (that is a private key: give the .pub file)" : "";
    throw usageError(
      `${file} is not an OpenSSH public key (one line: ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa)${hint}`,
    );
  }
  return line;
}

/** `<key>-cert.pub` beside `<key>.pub`, where ssh and sshd look for a key's certificate. */
function certificateFileFor(pubFile: string): string {
  if (!pubFile.endsWith(".pub") || pubFile === ".pub") {
    throw usageError(`${pubFile} does not end in .pub: give --out FILE for the certificate`);
  }
  return `${pubFile.slice(0, -".pub".length)}-cert.pub`;
}

// --- public endpoints ------------------------------------------------------------------

/** Writes a public file (certificate, KRL) whole or not at all. */
async function writePublicFile(file: string, data: string | Uint8Array): Promise<void> {
  try {
    await writeFileAtomic(file, data, 0o644);
  } catch (cause) {
    throw new CliError("io_error", `cannot write ${file}: ${errnoOrMessage(cause)}`, EXIT_CLIENT, { cause });
  }
}

// --- rendering ----------------------------------------------------------------------------

/** What `sign` prints: the certificate's fields and where it went. */
function signedSummary(c: SignedCertificate, file: string): Json {
  return {
    serial: c.serial,
    certType: c.certType,
    keyId: c.keyId,
    principals: c.principals,
    validAfter: c.validAfter,
    validBefore: c.validBefore,
    extensions: c.extensions,
    criticalOptions: Object.entries(c.criticalOptions ?? {}).map(([k, v]) => `${k}=${v}`),
    fingerprint: c.fingerprint,
    file,
  };
}

/** The CA keys, then the two files' contents ready to paste. */
function renderCa(a: Json): string {
  const rows: Json[] = [];
  for (const kind of ["user", "host"] as const) {
    const keys = Array.isArray(a[kind]) ? (a[kind] as Json[]) : [];
    for (const k of keys) rows.push({ kind, id: k.id, algorithm: k.algorithm, publicKey: k.publicKey });
  }
  const block = (title: string, text: unknown): string => {
    const lines = String(text ?? "")
      .split("\n")
      .filter((l) => l.trim() !== "")
      .map(printable);
    return `\n${title}\n${lines.join("\n")}\n`;
  };
  return (
    renderTable(rows, { columns: ["kind", "id", "algorithm", "publicKey"] }) +
    block("TrustedUserCAKeys (sshd):", a.trustedUserCaKeys) +
    block("known_hosts (clients):", a.knownHosts)
  );
}

// --- commands ----------------------------------------------------------------------------

/** Registers `ssh` and its subcommands. */
export function registerSshCommands(program: Command, ctx: CliContext): void {
  const ssh = program.command("ssh").description("the SSH certificate authority: sign, revoke, KRL, sudo, connect");
  registerSignCommands(ssh, ctx);
  registerCaCommands(ssh, ctx);
  registerConnectCommand(ssh, ctx);
  registerRoleCommands(ssh, ctx);
  registerCertCommands(ssh, ctx);
  registerSudoCommands(ssh, ctx);
}

interface SignOptions {
  role: string;
  principal?: string[];
  ttl?: number;
  extension?: string[];
  option?: Record<string, string>;
  out?: string;
}

/** Asks for a certificate for the key in `keyFile` and writes it to `--out` or `<key>-cert.pub`. */
async function signKeyFile(ctx: CliContext, keyFile: string, o: SignOptions): Promise<void> {
  // Where it goes is settled before asking: a certificate with nowhere to go is issued in vain.
  const out = o.out ?? certificateFileFor(keyFile);
  const body: Json = { role: o.role, publicKey: readPublicKey(keyFile) };
  if (o.principal !== undefined) body.principals = o.principal;
  if (o.ttl !== undefined) body.ttlSeconds = o.ttl;
  if (o.extension !== undefined) body.extensions = [...new Set(o.extension)];
  if (o.option !== undefined) body.criticalOptions = o.option;
  const signed = await ctx.client().request<SignedCertificate>("POST", "/v1/ssh/sign", { body });
  if (out === "-") {
    await ctx.emit(signed as unknown as Json, (a) => `${String(a.certificate)}\n`);
    return;
  }
  await writePublicFile(out, `${signed.certificate}\n`);
  await ctx.emit(signed as unknown as Json, () => renderRecord(signedSummary(signed, out)));
}

const principalOption = () =>
  new Option("--principal <name>", "a principal to ask for (repeatable; default: all the role gives)").argParser(
    collect,
  );
const outOption = () =>
  new Option("--out <file>", "write the certificate here (- prints it) instead of <key>-cert.pub");

function registerSignCommands(ssh: Command, ctx: CliContext): void {
  ssh
    .command("sign <key.pub>")
    .description("certify a public key: writes <key>-cert.pub beside <key>.pub")
    .requiredOption("--role <role>", "the role to sign under (e.g. owner)")
    .addOption(principalOption())
    .option("--ttl <duration>", "lifetime (e.g. 5m, 1h; default: the role's)", arg(parseDuration))
    .option("--extension <name>", "an extension, e.g. permit-pty (repeatable; replaces the role's)", collect)
    .option(
      "--option <name=value>",
      "a critical option, e.g. force-command=uptime or source-address=10.0.0.0/8 (repeatable)",
      arg(addOption),
    )
    .addOption(outOption())
    .action((keyFile: string, o: SignOptions) => signKeyFile(ctx, keyFile, o));

  ssh
    .command("host")
    .description("host certificates")
    .command("sign <host_key.pub>")
    .description("certify a host key (sshd's HostCertificate): writes <host_key>-cert.pub")
    .option("--role <role>", "a host role", "instance-host")
    .addOption(principalOption())
    .option("--ttl <duration>", "lifetime (e.g. 1d; default: the role's)", arg(parseDuration))
    .addOption(outOption())
    .action((keyFile: string, o: SignOptions) => signKeyFile(ctx, keyFile, o));
}

function registerCaCommands(ssh: Command, ctx: CliContext): void {
  ssh
    .command("ca")
    .description("the CA keys, the TrustedUserCAKeys lines (sshd) and the known_hosts line (clients)")
    .action(async (): Promise<void> => {
      const answer = await ctx.client().request<Json>("GET", "/v1/ssh/ca", { auth: false });
      await ctx.emit(answer, renderCa);
    });

  ssh
    .command("revoke")
    .description("revoke a certificate by serial, or a public key and every certificate of it")
    .option("--serial <serial>", "the certificate's serial", arg(checkSerial))
    .option("--key <key.pub>", "the public key (its file)")
    .option("--reason <text>", "why (kept in the record)")
    .action(async (o: { serial?: string; key?: string; reason?: string }): Promise<void> => {
      if ((o.serial === undefined) === (o.key === undefined)) throw usageError("give either --serial or --key");
      const body: Json = o.serial !== undefined ? { serial: o.serial } : { publicKey: readPublicKey(o.key ?? "") };
      if (o.reason !== undefined) body.reason = o.reason;
      await ctx.emit(await ctx.client().request<Json>("POST", "/v1/ssh/revoke", { body }));
    });

  ssh
    .command("krl")
    .description("the current KRL (sshd's RevokedKeys), binary: to --out, or to stdout when it is not a terminal")
    .option("--out <file>", "write it to this file (replaced whole)")
    .action(async (o: { out?: string }): Promise<void> => {
      const toStdout = o.out === undefined || o.out === "-";
      if (toStdout && !ctx.json && (ctx.io.stdout as { isTTY?: boolean }).isTTY === true) {
        throw usageError("refusing to write a binary KRL to a terminal: redirect stdout or give --out FILE");
      }
      const { body, headers } = await getPublic(ctx, "/v1/ssh/krl");
      const version = typeof headers["x-krl-version"] === "string" ? Number(headers["x-krl-version"]) : null;
      if (!toStdout) {
        await writePublicFile(o.out ?? "", body);
        await ctx.emit({ file: o.out, krlVersion: version, bytes: body.length });
        return;
      }
      if (ctx.json) await ctx.emit({ krlVersion: version, krl: body.toString("base64") });
      else await ctx.out(body);
    });
}

function registerRoleCommands(ssh: Command, ctx: CliContext): void {
  const role = ssh.command("role").description("certificate profiles: principals, lifetimes, extensions, key types");
  const path = (name: string): string => `/v1/ssh/roles/${seg(name)}`;

  role
    .command("list")
    .description("list roles")
    .action(async (): Promise<void> => {
      const answer = await ctx.client().request<{ roles: Json[] }>("GET", "/v1/ssh/roles");
      await ctx.emit(answer, (a) => renderTable(a.roles, { columns: ROLE_COLUMNS }));
    });

  role
    .command("show <name>")
    .description("show a role")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request<Json>("GET", path(name)));
    });

  role
    .command("put <name>")
    .description("create or replace a role from a JSON file (docs/ssh-ca.md, Roles)")
    .requiredOption("--file <file>", "the role as JSON (- for stdin)")
    .action(async (name: string, o: { file: string }): Promise<void> => {
      const raw = await readInput(o.file, ctx.io);
      let body: unknown;
      try {
        body = JSON.parse(raw.toString("utf8"));
      } catch (cause) {
        throw usageError(`role file ${o.file === "-" ? "(stdin)" : o.file} is not valid JSON`, cause);
      }
      if (typeof body !== "object" || body === null || Array.isArray(body)) {
        throw usageError(`role file ${o.file === "-" ? "(stdin)" : o.file}: expected a JSON object`);
      }
      await ctx.emit(await ctx.client().request<Json>("PUT", path(name), { body }));
    });

  role
    .command("delete <name>")
    .description("delete a role (certificates issued under it stay valid; built-in roles can't be deleted)")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request<Json>("DELETE", path(name)));
    });
}

function registerCertCommands(ssh: Command, ctx: CliContext): void {
  const cert = ssh.command("cert").description("certificates issued");

  cert
    .command("list")
    .description("list certificates, newest first")
    .addOption(new Option("--status <status>", "only valid or revoked ones").choices(["valid", "revoked"]))
    .option(
      "--limit <n>",
      "at most this many",
      arg((t) => parseInteger(t, "limit")),
    )
    .action(async (o: { status?: string; limit?: number }): Promise<void> => {
      const answer = await ctx.client().request<{ certificates: Json[] }>("GET", "/v1/ssh/certificates", {
        query: { status: o.status, limit: o.limit },
      });
      await ctx.emit(answer, (a) => renderTable(a.certificates, { columns: CERT_COLUMNS }));
    });

  cert
    .command("show <serial>")
    .description("show a certificate: principals, validity, who asked, its status")
    .action(async (serial: string): Promise<void> => {
      const answer = await ctx.client().request<Json>("GET", `/v1/ssh/certificates/${seg(checkSerial(serial))}`);
      await ctx.emit(answer);
    });
}

function registerSudoCommands(ssh: Command, ctx: CliContext): void {
  const sudo = ssh
    .command("sudo")
    .description("time-limited grants of <account>@<instance> (root by default) on an app's instances");

  sudo
    .command("grant")
    .description("grant a user or a group the privileged principal on every running instance of an app")
    .requiredOption("--app <org/space/app>", "the app", arg(parseAppRef))
    .option("--user <name>", "the user granted")
    .option("--group <name>", "the group granted")
    .requiredOption("--ttl <duration>", "how long (1m to 24h, e.g. 1h)", arg(parseDuration))
    .requiredOption("--reason <text>", "why (kept in the grant and the audit log)")
    .option("--account <name>", "the account on the instances (default root)", arg(checkAccount))
    .action(
      async (o: {
        app: { org: string; space: string; app: string };
        user?: string;
        group?: string;
        ttl: number;
        reason: string;
        account?: string;
      }): Promise<void> => {
        if ((o.user === undefined) === (o.group === undefined)) throw usageError("give either --user or --group");
        const body: Json = { ...o.app, ttlSeconds: o.ttl, reason: o.reason };
        if (o.user !== undefined) body.user = o.user;
        if (o.group !== undefined) body.group = o.group;
        if (o.account !== undefined) body.account = o.account;
        await ctx.emit(await ctx.client().request<Json>("POST", "/v1/ssh/sudo", { body }));
      },
    );

  sudo
    .command("list")
    .description("list grants")
    .option("--active", "only those neither revoked nor expired")
    .action(async (o: { active?: boolean }): Promise<void> => {
      const answer = await ctx.client().request<{ grants: Json[] }>("GET", "/v1/ssh/sudo", {
        query: { active: o.active === true ? "true" : undefined },
      });
      await ctx.emit(answer, (a) => renderTable(a.grants, { columns: SUDO_COLUMNS }));
    });

  sudo
    .command("revoke <id>")
    .description("end a grant: every unexpired certificate issued under it is revoked (into the KRL) at once")
    .action(async (id: string): Promise<void> => {
      const answer = await ctx.client().request<Json>("DELETE", `/v1/ssh/sudo/${seg(id)}`);
      await ctx.emit(answer, (a) => {
        const { grant, ...rest } = a;
        return renderRecord({ ...(typeof grant === "object" && grant !== null ? (grant as Json) : {}), ...rest });
      });
    });
}

// --- connect --------------------------------------------------------------------------------

interface ConnectOptions {
  sudo?: boolean;
  account?: string;
  user?: string;
  host?: string;
  port?: number;
}

/** Signals that end a session: passed on to ssh, whose end lets the key be deleted. */
const SESSION_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;

function registerConnectCommand(ssh: Command, ctx: CliContext): void {
  ssh
    .command("connect <instance>")
    .argument("[ssh-args...]", "after --: more arguments for ssh (options, or a command to run)")
    .usage("<instance> [options] [-- ssh args...]")
    .description(
      "log in to an instance: a throwaway key, its certificate from the owner role, and a known_hosts trusting only the host CA",
    )
    .option("--sudo", "ask for <account>@<instance> (a sudo grant must be active)")
    .option("--account <name>", "with --sudo: the account (default root)", arg(checkAccount))
    .option("--user <name>", "the account to log in as (default: the --sudo account, else your user name)")
    .option("--host <host>", "where to connect (default: the instance id)")
    .option(
      "--port <n>",
      "sshd's port (default: ssh's)",
      arg((t) => parseInteger(t, "port", 1, 65_535)),
    )
    .addHelpText(
      "after",
      `
The private key lives in a temporary directory (0700) that is deleted when ssh exits.
The host must present a certificate from Custos's host CA naming the instance
(HostKeyAlias, StrictHostKeyChecking yes). Exits with ssh's exit code.`,
    )
    .action(async (instanceArg: string, sshArgs: string[], o: ConnectOptions): Promise<void> => {
      const instance = checkInstance(instanceArg);
      if (o.account !== undefined && o.sudo !== true) throw usageError("--account goes with --sudo");
      const account = o.account ?? "root";
      const principal = o.sudo === true ? `${account}@${instance}` : instance;
      const user = o.user ?? (o.sudo === true ? account : userInfo().username);
      if (user === "" || user.startsWith("-") || /[\s@]/.test(user)) throw usageError(`"${user}" is not a user name`);
      const host = o.host ?? instance;
      if (host === "" || host.startsWith("-") || /\s/.test(host)) throw usageError(`"${host}" is not a host`);
      ctx.exitCode = await connect(ctx, { instance, principal, user, host, port: o.port, sshArgs });
    });
}

interface ConnectPlan {
  instance: string;
  principal: string;
  user: string;
  host: string;
  port: number | undefined;
  sshArgs: readonly string[];
}

async function connect(ctx: CliContext, plan: ConnectPlan): Promise<ExitCode> {
  const dir = mkdtempSync(join(tmpdir(), "custos-ssh-"));
  const session: { ssh?: ChildProcess } = {};
  // The key must not outlive the command, whatever ends it: a signal while ssh runs
  // goes on to ssh (its end runs the cleanup below); one before, ends things here.
  const onSignal = (signal: NodeJS.Signals): void => {
    const ssh = session.ssh;
    if (ssh !== undefined && ssh.exitCode === null && ssh.signalCode === null) {
      ssh.kill(signal);
      return;
    }
    rmSync(dir, { recursive: true, force: true });
    process.exit(128 + signalNumber(signal));
  };
  for (const s of SESSION_SIGNALS) process.on(s, onSignal);
  try {
    chmodSync(dir, 0o700);
    const keyFile = join(dir, "id_ed25519");
    const made = spawnSync("ssh-keygen", ["-t", "ed25519", "-N", "", "-q", "-C", "custos-connect", "-f", keyFile], {
      stdio: ["ignore", "ignore", "pipe"],
      timeout: 60_000,
    });
    if (made.error !== undefined || made.status !== 0) {
      const why =
        made.error !== undefined ? errnoOrMessage(made.error) : printable(made.stderr.toString("utf8").trim());
      throw new CliError("ssh_keygen_failed", `ssh-keygen could not make a key: ${why}`, EXIT_CLIENT);
    }
    const publicKey = readFileSync(`${keyFile}.pub`, "utf8").trim();
    const signed = await ctx.client().request<SignedCertificate>("POST", "/v1/ssh/sign", {
      body: { role: "owner", publicKey, principals: [plan.principal] },
    });
    const certFile = `${keyFile}-cert.pub`;
    writeFileSync(certFile, `${signed.certificate}\n`, { mode: 0o600 });
    const knownHosts = join(dir, "known_hosts");
    writeFileSync(knownHosts, await hostCaLines(ctx, plan.instance), { mode: 0o600 });
    await ctx.note(
      `certificate ${signed.serial} for ${signed.principals.join(",")}, valid until ${formatValue(signed.validBefore)}`,
    );
    const args = [
      "-i",
      keyFile,
      "-o",
      `CertificateFile=${certFile}`,
      "-o",
      "IdentitiesOnly=yes",
      // Only Custos's host CA vouches for the host: not the system's or the user's known hosts.
      "-o",
      `UserKnownHostsFile=${knownHosts}`,
      "-o",
      "GlobalKnownHostsFile=/dev/null",
      "-o",
      "KnownHostsCommand=none",
      "-o",
      "StrictHostKeyChecking=yes",
      "-o",
      `HostKeyAlias=${plan.instance}`,
      ...(plan.port !== undefined ? ["-p", String(plan.port)] : []),
      `${plan.user}@${plan.host}`,
      ...plan.sshArgs,
    ];
    return await runSsh(args, session);
  } finally {
    for (const s of SESSION_SIGNALS) process.off(s, onSignal);
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * A known_hosts file in which each host CA key Custos serves (current and still
 * trusted ones) vouches for `instance` alone, the HostKeyAlias ssh checks: the
 * served line's ssh.knownHostsPattern may not cover bare instance ids.
 */
async function hostCaLines(ctx: CliContext, instance: string): Promise<string> {
  const ca = await ctx.client().request<Json>("GET", "/v1/ssh/ca", { auth: false });
  const keys = (Array.isArray(ca.host) ? (ca.host as Json[]) : [])
    .map((k) => (typeof k.publicKey === "string" ? k.publicKey.trim() : ""))
    .filter((line) => KEY_LINE_RE.test(line));
  if (keys.length === 0) throw new CliError("no_host_ca", "Custos serves no host CA key (/v1/ssh/ca)", EXIT_SERVER);
  return keys.map((line) => `@cert-authority ${instance} ${line}\n`).join("");
}

/**
 * Runs the system ssh on this terminal (stdio inherited) and returns its exit code
 * (128 + the signal's number if a signal ended it). `session.ssh` is the running child.
 */
function runSsh(args: readonly string[], session: { ssh?: ChildProcess }): Promise<ExitCode> {
  return new Promise<ExitCode>((resolve, reject) => {
    const child = spawn("ssh", [...args], { stdio: "inherit" });
    session.ssh = child;
    child.once("error", (e) => {
      reject(new CliError("ssh_failed", `cannot run ssh: ${errnoOrMessage(e)}`, EXIT_CLIENT, { cause: e }));
    });
    child.once("exit", (code, signal) => {
      resolve((code ?? 128 + signalNumber(signal)) as ExitCode);
    });
  });
}

function signalNumber(signal: NodeJS.Signals | null): number {
  return (signal !== null ? constants.signals[signal] : undefined) ?? 0;
}
