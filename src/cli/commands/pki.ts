/**
 * `custos pki …`: the certificate authority (docs/pki.md), as thin wrappers over
 * its HTTP API. Certificates print as PEM; private keys never reach a terminal:
 * `issue` writes them to a 0600 file, or prints them only when `--json` asks for
 * the raw answer.
 */
import { type Command, Option } from "commander";
import { errnoOrMessage } from "../../errors/index.js";
import { type FileReplacement, replaceFiles } from "../../files/index.js";
import { KEY_TYPES, REVOCATION_REASONS } from "../../pki/index.js";
import { arg, type CliContext, seg } from "../context.js";
import { CliError, EXIT_CLIENT, EXIT_SERVER, usageError } from "../errors.js";
import { readInput } from "../io.js";
import { renderRecord, renderTable } from "../output.js";
import { collect, parseDuration, parseInteger } from "../parse.js";
import { getPublic } from "../public.js";

type Json = Record<string, unknown>;

/** What `issue`, `sign` and `renew` answer (docs/pki.md, "Issued"). */
interface Issued {
  serial: string;
  certificate: string;
  chain: string;
  caChain: string;
  notBefore: string;
  notAfter: string;
  fingerprint: string;
  privateKey?: string;
}

const KEY_USAGES = ["digitalSignature", "keyEncipherment", "keyAgreement"];
/** The short names, and the API's own (as roles are shown), for each extended key usage. */
const EXT_KEY_USAGES: Readonly<Record<string, string>> = {
  server: "serverAuth",
  client: "clientAuth",
  serverAuth: "serverAuth",
  clientAuth: "clientAuth",
};
const CA_ALGORITHMS = ["ecdsa-p256", "rsa-3072"];
const CERT_STATUSES = ["valid", "revoked", "expired"];

const ISSUER_COLUMNS = ["id", "name", "kind", "state", "algorithm", "notAfter", "fingerprint"];
const ROLE_COLUMNS = ["name", "dnsNames", "ipRanges", "uris", "keyTypes", "ttlSeconds", "maxTtlSeconds"];
const CERT_COLUMNS = ["serial", "role", "commonName", "status", "keyType", "notAfter"];

/** Whether the run's stdout is a terminal (binary output and private keys must not land there). */
function stdoutIsTty(ctx: CliContext): boolean {
  return (ctx.io.stdout as { isTTY?: boolean }).isTTY === true;
}

/** A PEM answer: itself, or `{ pem }` with --json. */
async function emitPem(ctx: CliContext, pem: string): Promise<void> {
  await ctx.emit({ pem }, (a) => a.pem);
}

// --- files ---------------------------------------------------------------------

/**
 * Writes a certificate's files as one change (replaceFiles): each appears whole or
 * not at all, and a failure midway puts back any already replaced, so a new key is
 * never left beside an old certificate.
 */
async function writeFiles(files: readonly FileReplacement[]): Promise<void> {
  try {
    await replaceFiles(files);
  } catch (cause) {
    const names = files.map((f) => f.path).join(", ");
    throw new CliError("io_error", `cannot write ${names}: ${errnoOrMessage(cause)}`, EXIT_CLIENT, { cause });
  }
}

/** `FILE.chain.pem` beside a certificate file; a `.pem` suffix is replaced rather than doubled. */
function chainFileFor(file: string): string {
  return file.endsWith(".pem") ? `${file.slice(0, -".pem".length)}.chain.pem` : `${file}.chain.pem`;
}

/** The summary printed after files were written: the answer without PEMs, plus where they went. */
function issuedSummary(issued: Issued, files: Record<string, string>): Json {
  const { serial, notBefore, notAfter, fingerprint } = issued;
  return { serial, notBefore, notAfter, fingerprint, files };
}

/** The answer without the private key (for --json when the key went to a file). */
function withoutKey(issued: Issued): Json {
  const { privateKey: _omitted, ...rest } = issued;
  return rest;
}

/**
 * Writes a leaf and its chain (`sign`, `renew`) to `out` and `out`'s chain file,
 * or prints the leaf PEM (`--json`: the whole answer).
 */
async function deliverCertificate(ctx: CliContext, issued: Issued, out: string | undefined): Promise<void> {
  if (out === undefined || out === "-") {
    await ctx.emit(issued as unknown as Json, (a) => String(a.certificate));
    return;
  }
  const chainFile = chainFileFor(out);
  await writeFiles([
    { path: out, data: issued.certificate, mode: 0o644 },
    { path: chainFile, data: issued.chain, mode: 0o644 },
  ]);
  await ctx.emit(issued as unknown as Json, () =>
    renderRecord(issuedSummary(issued, { certificate: out, chain: chainFile })),
  );
}

// --- options -------------------------------------------------------------------

interface NameOptions {
  cn?: string;
  dns?: string[];
  ip?: string[];
  uri?: string[];
}

function withNames(cmd: Command): Command {
  return cmd
    .option("--cn <name>", "common name (a DNS name; added to the DNS names if missing)")
    .option("--dns <name>", "DNS name (repeatable)", collect)
    .option("--ip <address>", "IP address (repeatable)", collect)
    .option("--uri <uri>", "URI (repeatable)", collect);
}

function namesBody(o: NameOptions): Json {
  const body: Json = {};
  if (o.cn !== undefined) body.commonName = o.cn;
  if (o.dns !== undefined) body.dnsNames = o.dns;
  if (o.ip !== undefined) body.ipAddresses = o.ip;
  if (o.uri !== undefined) body.uris = o.uri;
  return body;
}

const ttlOption = () =>
  new Option("--ttl <duration>", "lifetime (e.g. 24h, 30d; default: the role's)").argParser(arg(parseDuration));

function choice(values: readonly string[]) {
  return (text: string, previous: string[] | undefined): string[] => {
    if (!values.includes(text)) throw usageError(`"${text}" is not one of ${values.join(", ")}`);
    return [...(previous ?? []), text];
  };
}

// --- commands ----------------------------------------------------------------------

/** Registers `pki` and its subcommands. */
export function registerPkiCommands(program: Command, ctx: CliContext): void {
  const pki = program.command("pki").description("the certificate authority: CAs, roles, certificates, CRLs");
  registerCaCommands(pki, ctx);
  registerRoleCommands(pki, ctx);
  registerIssueCommands(pki, ctx);
  registerCertCommands(pki, ctx);
}

function registerCaCommands(pki: Command, ctx: CliContext): void {
  const ca = pki
    .command("ca")
    .description("print the root CA certificate (PEM), or with --chain the active intermediate then the root")
    .option("--chain", "the active intermediate, then the root")
    .action(async (o: { chain?: boolean }): Promise<void> => {
      const pem = (await getPublic(ctx, o.chain === true ? "/v1/pki/chain.pem" : "/v1/pki/ca.pem")).body;
      await emitPem(ctx, pem.toString("utf8"));
    });

  ca.command("rotate")
    .description("roll the intermediate over: a new one becomes active, the current one retiring")
    .addOption(new Option("--algorithm <algorithm>", "key algorithm of the new CA").choices(CA_ALGORITHMS))
    .action(async (o: { algorithm?: string }): Promise<void> => {
      const body = o.algorithm === undefined ? {} : { algorithm: o.algorithm };
      await ctx.emit(await ctx.client().request("POST", "/v1/pki/issuers/rotate", { body }));
    });

  pki
    .command("issuers")
    .description("list the CAs (root and intermediates) and their states")
    .action(async (): Promise<void> => {
      const answer = await ctx.client().request<{ issuers: Json[] }>("GET", "/v1/pki/issuers", { auth: false });
      await ctx.emit(answer, (a) => renderTable(a.issuers, { columns: ISSUER_COLUMNS }));
    });

  pki
    .command("crl")
    .description("print a CRL: DER (only when stdout is not a terminal), or PEM with --pem")
    .option("--pem", "PEM instead of DER")
    .option("--issuer <id>", "the CA whose CRL to fetch (default: the active intermediate)")
    .action(async (o: { pem?: boolean; issuer?: string }): Promise<void> => {
      const pem = o.pem === true || ctx.json;
      if (!pem && stdoutIsTty(ctx)) {
        throw usageError("refusing to write a DER CRL to a terminal: redirect stdout or add --pem");
      }
      const base = o.issuer === undefined ? "/v1/pki/crl" : `/v1/pki/issuers/${seg(o.issuer)}/crl`;
      const crl = (await getPublic(ctx, pem ? `${base}.pem` : base)).body;
      if (pem) await emitPem(ctx, crl.toString("utf8"));
      else await ctx.out(crl);
    });
}

function registerRoleCommands(pki: Command, ctx: CliContext): void {
  const role = pki.command("role").description("certificate profiles: which names, keys and lifetimes may be issued");
  const path = (name: string): string => `/v1/pki/roles/${seg(name)}`;

  role
    .command("put <name>")
    .description("create or replace a role (fields not given take their defaults)")
    .option("--dns <pattern>", "allowed DNS name: exact, or *.example.com for one label (repeatable)", collect)
    .option("--ip <cidr>", "allowed IP range, e.g. 10.0.0.0/8 (repeatable)", collect)
    .option("--uri <pattern>", "allowed URI, '*' matching any run of characters (repeatable)", collect)
    .option("--allow-wildcard-names", "let requests name a wildcard covered by an identical --dns pattern")
    .option(
      "--key-usage <usage>",
      `key usage: ${KEY_USAGES.join(", ")} (repeatable)`,
      arg<string[], string[] | undefined>(choice(KEY_USAGES)),
    )
    .option(
      "--ext-key-usage <usage>",
      "extended key usage: server or client, or serverAuth or clientAuth (repeatable)",
      arg<string[], string[] | undefined>(choice(Object.keys(EXT_KEY_USAGES))),
    )
    .option(
      "--key-type <type>",
      `allowed key type: ${KEY_TYPES.join(", ")} (repeatable)`,
      arg<string[], string[] | undefined>(choice([...KEY_TYPES])),
    )
    .option("--max-ttl <duration>", "longest lifetime a caller may ask for (default 30d)", arg(parseDuration))
    .option("--ttl <duration>", "lifetime when the caller asks for none (default 7d)", arg(parseDuration))
    .action(
      async (
        name: string,
        o: {
          dns?: string[];
          ip?: string[];
          uri?: string[];
          allowWildcardNames?: boolean;
          keyUsage?: string[];
          extKeyUsage?: string[];
          keyType?: string[];
          maxTtl?: number;
          ttl?: number;
        },
      ): Promise<void> => {
        const body: Json = {};
        if (o.dns !== undefined) body.dnsNames = o.dns;
        if (o.allowWildcardNames === true) body.allowWildcardNames = true;
        if (o.ip !== undefined) body.ipRanges = o.ip;
        if (o.uri !== undefined) body.uris = o.uri;
        if (o.keyUsage !== undefined) body.keyUsages = [...new Set(o.keyUsage)];
        if (o.extKeyUsage !== undefined) {
          body.extKeyUsages = [...new Set(o.extKeyUsage.map((u) => EXT_KEY_USAGES[u]))];
        }
        if (o.keyType !== undefined) body.keyTypes = [...new Set(o.keyType)];
        if (o.maxTtl !== undefined) body.maxTtlSeconds = o.maxTtl;
        if (o.ttl !== undefined) body.ttlSeconds = o.ttl;
        const answer = await ctx.client().request<{ role: Json }>("PUT", path(name), { body });
        await ctx.emit(answer, (a) => renderRecord(a.role));
      },
    );

  role
    .command("get <name>")
    .description("show a role")
    .action(async (name: string): Promise<void> => {
      const answer = await ctx.client().request<{ role: Json }>("GET", path(name));
      await ctx.emit(answer, (a) => renderRecord(a.role));
    });

  role
    .command("list")
    .description("list roles")
    .action(async (): Promise<void> => {
      const answer = await ctx.client().request<{ roles: Json[] }>("GET", "/v1/pki/roles");
      await ctx.emit(answer, (a) => renderTable(a.roles, { columns: ROLE_COLUMNS }));
    });

  role
    .command("delete <name>")
    .description("delete a role (certificates issued under it stay valid)")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request("DELETE", path(name)));
    });
}

function registerIssueCommands(pki: Command, ctx: CliContext): void {
  withNames(
    pki
      .command("issue <role>")
      .description("issue a certificate with a key Custos generates: PREFIX.pem, PREFIX.key (0600), PREFIX.chain.pem"),
  )
    .addOption(ttlOption())
    .addOption(new Option("--key-type <type>", "key to generate (default: the server's)").choices([...KEY_TYPES]))
    .option("--out <prefix>", "write PREFIX.pem, PREFIX.key and PREFIX.chain.pem")
    .action(async (roleName: string, o: NameOptions & { ttl?: number; keyType?: string; out?: string }) => {
      // Checked before asking: a key generated for nobody to keep is a key generated in vain.
      if (o.out === undefined && !ctx.json) {
        throw usageError(
          "pki issue returns a private key: give --out PREFIX to write it to files, or --json to print it",
        );
      }
      if (o.out === "-") throw usageError("--out takes a file prefix, not -: use --json to print the answer");
      const body = namesBody(o);
      if (o.ttl !== undefined) body.ttlSeconds = o.ttl;
      if (o.keyType !== undefined) body.keyType = o.keyType;
      const issued = await ctx.client().request<Issued>("POST", `/v1/pki/roles/${seg(roleName)}/issue`, { body });
      if (o.out === undefined) {
        await ctx.emit(issued);
        return;
      }
      const privateKey = issued.privateKey;
      if (typeof privateKey !== "string")
        throw new CliError("internal", "the answer holds no private key", EXIT_SERVER);
      const files = { certificate: `${o.out}.pem`, key: `${o.out}.key`, chain: `${o.out}.chain.pem` };
      await writeFiles([
        { path: files.key, data: privateKey, mode: 0o600 },
        { path: files.certificate, data: issued.certificate, mode: 0o644 },
        { path: files.chain, data: issued.chain, mode: 0o644 },
      ]);
      await ctx.emit(withoutKey(issued), () => renderRecord(issuedSummary(issued, files)));
    });

  pki
    .command("sign <role>")
    .description("issue a certificate for a CSR (its SANs are the CSR's)")
    .requiredOption("--csr <file>", "the PKCS#10 request, PEM (- for stdin)")
    .addOption(ttlOption())
    .option("--out <file>", "write the certificate here and its chain to FILE.chain.pem (FILE without .pem)")
    .action(async (roleName: string, o: { csr: string; ttl?: number; out?: string }): Promise<void> => {
      const csr = (await readInput(o.csr, ctx.io)).toString("utf8");
      if (csr.trim().length === 0) throw usageError(`no CSR in ${o.csr === "-" ? "stdin" : o.csr}`);
      const body: Json = { csr };
      if (o.ttl !== undefined) body.ttlSeconds = o.ttl;
      const issued = await ctx.client().request<Issued>("POST", `/v1/pki/roles/${seg(roleName)}/sign`, { body });
      await deliverCertificate(ctx, issued, o.out);
    });
}

function registerCertCommands(pki: Command, ctx: CliContext): void {
  const cert = pki.command("cert").description("certificates issued: list, show, revoke, renew");
  const path = (serial: string): string => `/v1/pki/certs/${seg(serial)}`;
  const view = (c: Json): string => {
    const { pem: _pem, ...rest } = c;
    return renderRecord(rest);
  };

  cert
    .command("list")
    .description("list certificates")
    .option("--role <role>", "only those issued under this role")
    .addOption(new Option("--status <status>", "only valid, revoked or expired ones").choices(CERT_STATUSES))
    .option("--after <serial>", "only serials after this one (paging)")
    .option(
      "--limit <n>",
      "at most this many",
      arg((t) => parseInteger(t, "limit")),
    )
    .action(async (o: { role?: string; status?: string; after?: string; limit?: number }): Promise<void> => {
      const answer = await ctx.client().request<{ certificates: Json[] }>("GET", "/v1/pki/certs", {
        query: { role: o.role, status: o.status, after: o.after, limit: o.limit },
      });
      await ctx.emit(answer, (a) => renderTable(a.certificates, { columns: CERT_COLUMNS }));
    });

  cert
    .command("show <serial>")
    .description("show a certificate's details, or with --pem the certificate itself")
    .option("--pem", "print the certificate (PEM) only")
    .action(async (serial: string, o: { pem?: boolean }): Promise<void> => {
      const answer = await ctx.client().request<{ certificate: Json }>("GET", path(serial));
      await ctx.emit(answer, (a) => (o.pem === true ? String(a.certificate.pem) : view(a.certificate)));
    });

  cert
    .command("revoke <serial>")
    .description("revoke a certificate (the CRL is regenerated at once)")
    .addOption(new Option("--reason <reason>", "revocation reason").choices([...REVOCATION_REASONS]))
    .action(async (serial: string, o: { reason?: string }): Promise<void> => {
      const body = o.reason === undefined ? {} : { reason: o.reason };
      const answer = await ctx.client().request<{ certificate: Json }>("POST", `${path(serial)}/revoke`, { body });
      await ctx.emit(answer, (a) => view(a.certificate));
    });

  cert
    .command("renew <serial>")
    .description("issue a new certificate with the same key, names and role")
    .addOption(ttlOption())
    .option("--out <file>", "write the certificate here and its chain to FILE.chain.pem (FILE without .pem)")
    .action(async (serial: string, o: { ttl?: number; out?: string }): Promise<void> => {
      const body = o.ttl === undefined ? {} : { ttlSeconds: o.ttl };
      const issued = await ctx.client().request<Issued>("POST", `${path(serial)}/renew`, { body });
      await deliverCertificate(ctx, issued, o.out);
    });
}
