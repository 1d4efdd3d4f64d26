/** `custos org|space|app …`: the platform model (docs/broker.md). */
import type { Command } from "commander";
import { type CliContext, seg } from "../context.js";
import { usageError } from "../errors.js";
import { renderRecord, renderTable } from "../output.js";
import { collect } from "../parse.js";

type Json = Record<string, unknown>;

/** Splits `a/b[/c]` into exactly `n` non-empty parts, or a usage error naming the expected form. */
export function splitRef(text: string, n: number, form: string): string[] {
  const parts = text.split("/");
  if (parts.length !== n || parts.some((p) => p.length === 0)) throw usageError(`expected ${form}, got "${text}"`);
  return parts;
}

const appPath = (ref: string): string => {
  const [org, space, app] = splitRef(ref, 3, "<org>/<space>/<app>");
  return `/v1/platform/apps/${seg(org as string)}/${seg(space as string)}/${seg(app as string)}`;
};

function ownersOf(o: { ownerUser?: string[]; ownerGroup?: string[] }): Json {
  return { users: o.ownerUser ?? [], groups: o.ownerGroup ?? [] };
}

function appRow(a: Json): Json {
  const owners = (a.owners ?? {}) as { users?: string[]; groups?: string[] };
  return {
    app: `${a.org}/${a.space}/${a.app}`,
    key: a.keyName,
    ownerUsers: owners.users ?? [],
    ownerGroups: owners.groups ?? [],
    created: a.createdAt,
  };
}

/** Registers `org`, `space` and `app`. */
export function registerPlatformCommands(program: Command, ctx: CliContext): void {
  const org = program.command("org").description("platform orgs");
  org
    .command("create <org>")
    .description("create an org")
    .action(async (name: string) => {
      const a = await ctx.client().request<Json>("POST", "/v1/platform/orgs", { body: { name } });
      await ctx.emit(a, (x) => renderRecord(x.org as Json));
    });
  org
    .command("list")
    .description("list orgs")
    .action(async () => {
      const a = await ctx.client().request<{ orgs: Json[] }>("GET", "/v1/platform/orgs");
      await ctx.emit(a, (x) => renderTable(x.orgs));
    });
  org
    .command("delete <org>")
    .description("delete an org (it must have no spaces)")
    .action(async (name: string) => {
      await ctx.client().request("DELETE", `/v1/platform/orgs/${seg(name)}`);
      await ctx.emit({ deleted: name });
    });

  const space = program.command("space").description("spaces of an org");
  space
    .command("create <org/space>")
    .description("create a space")
    .action(async (ref: string) => {
      const [o, s] = splitRef(ref, 2, "<org>/<space>");
      const a = await ctx
        .client()
        .request<Json>("POST", `/v1/platform/orgs/${seg(o as string)}/spaces`, { body: { name: s } });
      await ctx.emit(a, (x) => renderRecord(x.space as Json));
    });
  space
    .command("list <org>")
    .description("list the spaces of an org")
    .action(async (o: string) => {
      const a = await ctx.client().request<{ spaces: Json[] }>("GET", `/v1/platform/orgs/${seg(o)}/spaces`);
      await ctx.emit(a, (x) => renderTable(x.spaces));
    });
  space
    .command("delete <org/space>")
    .description("delete a space (it must have no apps)")
    .action(async (ref: string) => {
      const [o, s] = splitRef(ref, 2, "<org>/<space>");
      await ctx.client().request("DELETE", `/v1/platform/orgs/${seg(o as string)}/spaces/${seg(s as string)}`);
      await ctx.emit({ deleted: ref });
    });

  const app = program.command("app").description("apps: their owners and their KMS key");
  app
    .command("create <org/space/app>")
    .description("create an app and its KMS key app.<org>.<space>.<app>")
    .option("--owner-user <name>", "a user who owns the app (repeatable)", collect)
    .option("--owner-group <name>", "a group whose members own the app (repeatable)", collect)
    .action(async (ref: string, o: { ownerUser?: string[]; ownerGroup?: string[] }) => {
      const [org_, space_, name] = splitRef(ref, 3, "<org>/<space>/<app>");
      const a = await ctx
        .client()
        .request<Json>("POST", `/v1/platform/orgs/${seg(org_ as string)}/spaces/${seg(space_ as string)}/apps`, {
          body: { name, owners: ownersOf(o) },
        });
      await ctx.emit(a, (x) => renderRecord(x.app as Json));
    });
  app
    .command("get <org/space/app>")
    .description("show an app: owners, key, instances")
    .action(async (ref: string) => {
      const a = await ctx.client().request<Json>("GET", appPath(ref));
      await ctx.emit(a, (x) => renderRecord(x.app as Json));
    });
  app
    .command("list <org/space>")
    .description("list the apps of a space")
    .action(async (ref: string) => {
      const [o, s] = splitRef(ref, 2, "<org>/<space>");
      const a = await ctx
        .client()
        .request<{ apps: Json[] }>("GET", `/v1/platform/orgs/${seg(o as string)}/spaces/${seg(s as string)}/apps`);
      await ctx.emit(a, (x) => renderTable(x.apps.map(appRow)));
    });
  app
    .command("owners <org/space/app>")
    .description("replace the owners of an app (no option: no owners)")
    .option("--owner-user <name>", "a user who owns the app (repeatable)", collect)
    .option("--owner-group <name>", "a group whose members own the app (repeatable)", collect)
    .action(async (ref: string, o: { ownerUser?: string[]; ownerGroup?: string[] }) => {
      const a = await ctx.client().request<Json>("PATCH", appPath(ref), { body: { owners: ownersOf(o) } });
      await ctx.emit(a, (x) => renderRecord(x.app as Json));
    });
  app
    .command("delete <org/space/app>")
    .description("delete an app: its key is destroyed and its secrets go, for good")
    .action(async (ref: string) => {
      await ctx.client().request("DELETE", appPath(ref));
      await ctx.emit({ deleted: ref, key: `app.${ref.replaceAll("/", ".")}`, keyState: "destroyed" });
    });
}
