/** `custos secret …`: versioned secrets of apps and shared ones (docs/broker.md). */
import type { Command } from "commander";
import { arg, type CliContext, seg } from "../context.js";
import { usageError } from "../errors.js";
import { readText } from "../io.js";
import { renderRecord, renderTable } from "../output.js";
import { collect, parseInteger } from "../parse.js";

type Json = Record<string, unknown>;

/** A secret path in a URL: each segment escaped, the slashes kept. */
function urlPath(path: string): string {
  return path.split("/").map(seg).join("/");
}

/** The fields of a secret version's answer that `secret get --field` prints. */
const SECRET_FIELDS: readonly string[] = ["value", "version", "createdAt", "path"];

const version = arg((t: string) => parseInteger(t, "version", 1));
const casArg = arg((t: string) => parseInteger(t, "cas", 0));

/** `1,2,3` (or repeated) version numbers. */
function versionList(text: string, previous: number[] | undefined): number[] {
  const out = [...(previous ?? [])];
  for (const part of text.split(",")) out.push(parseInteger(part, "version", 1));
  return out;
}

function parseCustom(text: string, previous: Record<string, string> | undefined): Record<string, string> {
  const eq = text.indexOf("=");
  if (eq < 1) throw usageError(`invalid metadata "${text}": expected key=value`);
  return { ...(previous ?? {}), [text.slice(0, eq)]: text.slice(eq + 1) };
}

function parseBool(text: string): boolean {
  if (text === "true") return true;
  if (text === "false") return false;
  throw usageError(`expected true or false, got "${text}"`);
}

/** What a write answers: the path and version, never the value. */
function renderWrite(a: Json): string {
  return renderRecord(a.secret as Json);
}

function renderMetadata(a: Json): string {
  return renderRecord(a.metadata as Json);
}

/** Registers `secret` and its subcommands. */
export function registerSecretCommands(program: Command, ctx: CliContext): void {
  const secret = program
    .command("secret")
    .description("versioned secrets: <org>/<space>/<app>/<name> or shared/<name>");

  secret
    .command("put <path> [value]")
    .description(
      "write a new version; the value comes from stdin (one trailing newline dropped), --from-file (as is) or, " +
        "discouraged (shell history, ps), the command line",
    )
    .option("--from-file <file>", "read the value from a file, byte for byte (UTF-8 text)")
    .option("--cas <version>", "check-and-set: the current version must be this (0: must not exist)", casArg)
    .action(async (path: string, value: string | undefined, o: { fromFile?: string; cas?: number }) => {
      if (value !== undefined && o.fromFile !== undefined) throw usageError("give the value or --from-file, not both");
      let text: string;
      if (value !== undefined) {
        await ctx.note("warning: a value on the command line can leak through shell history and ps; prefer stdin");
        text = value;
      } else if (o.fromFile !== undefined) {
        text = await readText(o.fromFile, ctx.io);
      } else {
        if (ctx.io.stdin.isTTY === true) await ctx.note("reading the value from stdin (end with Ctrl-D)");
        text = (await readText(undefined, ctx.io)).replace(/\r?\n$/, "");
      }
      if (text.length === 0) throw usageError("the value is empty");
      const body: Json = { value: text };
      if (o.cas !== undefined) body.cas = o.cas;
      const a = await ctx.client().request<Json>("PUT", `/v1/secrets/data/${urlPath(path)}`, { body });
      await ctx.emit(a, renderWrite);
    });

  secret
    .command("get <path>")
    .description("read the latest (or a given) version")
    .option("--version <n>", "that version", version)
    .option("--field <name>", "print only this field (value, version, createdAt), without a trailing newline")
    .action(async (path: string, o: { version?: number; field?: string }) => {
      // Before the read: a typo must not decrypt the secret and be audited as a read.
      if (o.field !== undefined && !SECRET_FIELDS.includes(o.field)) {
        throw usageError(`unknown field "${o.field}": value, version, createdAt or path`);
      }
      const a = await ctx.client().request<Json>("GET", `/v1/secrets/data/${urlPath(path)}`, {
        ...(o.version === undefined ? {} : { query: { version: o.version } }),
      });
      if (o.field !== undefined) {
        await ctx.out(String(a[o.field]));
        return;
      }
      await ctx.emit(a);
    });

  secret
    .command("generate <path>")
    .description("write a new version with a random value (not printed: read it with get)")
    .option(
      "--length <n>",
      "8..1024 characters (default 32)",
      arg((t: string) => parseInteger(t, "length", 8, 1024)),
    )
    .option("--alphabet <a>", "alnum (default), alnum-symbols, hex, base64url, or 2..256 distinct characters")
    .option("--cas <version>", "check-and-set: the current version must be this (0: must not exist)", casArg)
    .action(async (path: string, o: { length?: number; alphabet?: string; cas?: number }) => {
      const body: Json = {};
      if (o.length !== undefined) body.length = o.length;
      if (o.alphabet !== undefined) body.alphabet = o.alphabet;
      if (o.cas !== undefined) body.cas = o.cas;
      const a = await ctx.client().request<Json>("POST", `/v1/secrets/generate/${urlPath(path)}`, { body });
      await ctx.emit(a, renderWrite);
    });

  secret
    .command("list <prefix>")
    .description("names under an app or folder (<org>/<space>/<app>[/folder] or shared[/folder]); folders end in /")
    .action(async (prefix: string) => {
      // The server answers a page at a time, with `next` while more follow: print them all.
      const client = ctx.client();
      const url = `/v1/secrets/list/${urlPath(prefix)}`;
      let page = await client.request<{ prefix: string; keys: string[]; next?: string }>("GET", url);
      const keys = [...page.keys];
      while (page.next !== undefined) {
        page = await client.request<typeof page>("GET", url, { query: { after: page.next } });
        keys.push(...page.keys);
      }
      await ctx.emit({ prefix: page.prefix, keys }, (x) => x.keys.map((k) => `${k}\n`).join(""));
    });

  secret
    .command("metadata <path>")
    .description("show versions and settings; with options, change the settings")
    .option(
      "--max-versions <n>",
      "versions kept (1..100); older ones are destroyed",
      arg((t: string) => parseInteger(t, "max-versions", 1, 100)),
    )
    .option("--cas-required <bool>", "require check-and-set on every write (true|false)", arg(parseBool))
    .option(
      "--custom <key=value>",
      "custom metadata, replacing what is there (repeatable; at most 16)",
      arg(parseCustom),
    )
    .action(
      async (path: string, o: { maxVersions?: number; casRequired?: boolean; custom?: Record<string, string> }) => {
        const body: Json = {};
        if (o.maxVersions !== undefined) body.maxVersions = o.maxVersions;
        if (o.casRequired !== undefined) body.casRequired = o.casRequired;
        if (o.custom !== undefined) body.customMetadata = o.custom;
        const url = `/v1/secrets/metadata/${urlPath(path)}`;
        const a =
          Object.keys(body).length === 0
            ? await ctx.client().request<Json>("GET", url)
            : await ctx.client().request<Json>("PATCH", url, { body });
        await ctx.emit(a, renderMetadata);
      },
    );

  secret
    .command("delete <path>")
    .description("soft-delete the latest version, or the versions named (undelete brings them back)")
    .option("--versions <n,…>", "versions (repeatable or comma-separated)", arg(versionList))
    .action(async (path: string, o: { versions?: number[] }) => {
      const body: Json = o.versions === undefined ? {} : { versions: o.versions };
      const a = await ctx.client().request<Json>("POST", `/v1/secrets/delete/${urlPath(path)}`, { body });
      await ctx.emit(a, renderMetadata);
    });

  secret
    .command("undelete <path>")
    .description("undelete soft-deleted versions")
    .requiredOption("--versions <n,…>", "versions (repeatable or comma-separated)", arg(versionList))
    .action(async (path: string, o: { versions: number[] }) => {
      const a = await ctx
        .client()
        .request<Json>("POST", `/v1/secrets/undelete/${urlPath(path)}`, { body: { versions: o.versions } });
      await ctx.emit(a, renderMetadata);
    });

  secret
    .command("destroy <path>")
    .description("destroy versions for good (their ciphertext is erased); --all: the secret and every version")
    .option("--versions <n,…>", "versions (repeatable or comma-separated)", arg(versionList))
    .option("--all", "delete the secret, its metadata and all its versions")
    .action(async (path: string, o: { versions?: number[]; all?: boolean }) => {
      if ((o.versions === undefined) === (o.all !== true)) throw usageError("give --versions or --all");
      if (o.all === true) {
        await ctx.client().request("DELETE", `/v1/secrets/metadata/${urlPath(path)}`);
        await ctx.emit({ deleted: path });
        return;
      }
      const a = await ctx
        .client()
        .request<Json>("POST", `/v1/secrets/destroy/${urlPath(path)}`, { body: { versions: o.versions } });
      await ctx.emit(a, renderMetadata);
    });

  secret
    .command("grant <shared-path>")
    .description("grant a shared secret (shared/<name>) or folder (shared/<folder>/) to apps (admins)")
    .requiredOption("--app <org/space/app>", "an app (repeatable)", collect)
    .action(async (path: string, o: { app: string[] }) => {
      const a = await ctx
        .client()
        .request<{ grants: Json[] }>("PUT", `/v1/secrets/grants/${urlPath(path)}`, { body: { apps: o.app } });
      await ctx.emit(a, (x) => renderTable(x.grants));
    });

  secret
    .command("grants")
    .description("list grants of shared secrets to apps")
    .action(async () => {
      const a = await ctx.client().request<{ grants: Json[] }>("GET", "/v1/secrets/grants");
      await ctx.emit(a, (x) => renderTable(x.grants));
    });
}
