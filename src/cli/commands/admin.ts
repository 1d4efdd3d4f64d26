/** `custos policy …` and `custos sudo …`. */
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { errnoOrMessage } from "../../errors/index.js";
import { arg, type CliContext, seg } from "../context.js";
import { usageError } from "../errors.js";
import { renderRecord, renderTable } from "../output.js";
import { collect, type PolicyRule, parseDuration, parsePolicyRule } from "../parse.js";

type Json = Record<string, unknown>;

/**
 * Reads a policy file: either `{ "description"?, "rules": [...] }` or a bare array
 * of rules. Only the shape is checked here; the server judges the contents.
 */
export function readPolicyFile(file: string): { description?: string; rules: unknown[] } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, "utf8"));
  } catch (cause) {
    const why = cause instanceof SyntaxError ? "not valid JSON" : errnoOrMessage(cause);
    throw usageError(`cannot read policy file ${file}: ${why}`, cause);
  }
  if (Array.isArray(parsed)) return { rules: parsed };
  if (typeof parsed === "object" && parsed !== null && Array.isArray((parsed as Json).rules)) {
    const { description, rules } = parsed as { description?: unknown; rules: unknown[] };
    if (description !== undefined && typeof description !== "string") {
      throw usageError(`policy file ${file}: "description" must be a string`);
    }
    return description === undefined ? { rules } : { description, rules };
  }
  throw usageError(`policy file ${file}: expected {"rules": [...]} or an array of rules`);
}

/** Registers `policy` and its subcommands. */
export function registerPolicyCommands(program: Command, ctx: CliContext): void {
  const policy = program.command("policy").description("manage access policies");
  const path = (name: string): string => `/v1/policies/${seg(name)}`;

  policy
    .command("put <name>")
    .description("create or replace a policy from --file or --rule options")
    .option("--file <file>", 'JSON: {"description"?, "rules": [{"resource", "actions"}]} or an array of rules')
    .option(
      "--rule <resource=actions>",
      "a rule such as 'key/app-a-*=key:encrypt,key:decrypt' (repeatable)",
      arg<PolicyRule[], PolicyRule[] | undefined>((t, prev) => [...(prev ?? []), parsePolicyRule(t)]),
    )
    .option("--description <text>", "free text (overrides the file's)")
    .action(async (name: string, o: { file?: string; rule?: PolicyRule[]; description?: string }): Promise<void> => {
      if ((o.file === undefined) === (o.rule === undefined))
        throw usageError("give either --file or --rule (not both)");
      const fromFile = o.file === undefined ? undefined : readPolicyFile(o.file);
      const body: Json = { rules: fromFile?.rules ?? o.rule };
      const description = o.description ?? fromFile?.description;
      if (description !== undefined) body.description = description;
      await ctx.emit(await ctx.client().request("PUT", path(name), { body }));
    });

  policy
    .command("list")
    .description("list policies")
    .action(async (): Promise<void> => {
      const answer = await ctx.client().request<{ policies: Json[] }>("GET", "/v1/policies");
      await ctx.emit(answer, (a) =>
        renderTable(a.policies.map((p) => ({ ...p, rules: Array.isArray(p.rules) ? p.rules.length : p.rules }))),
      );
    });

  policy
    .command("show <name>")
    .description("show a policy and its rules")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request("GET", path(name)), (a) => renderRecord(a as Json));
    });

  policy
    .command("delete <name>")
    .description("delete a policy")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request("DELETE", path(name)));
    });
}

/** Registers `sudo` and its subcommands. */
export function registerSudoCommands(program: Command, ctx: CliContext): void {
  const sudo = program.command("sudo").description("time-limited privileged grants");

  sudo
    .command("grant")
    .description("grant a user or a group privileged access for a while")
    .option("--user <name>", "the user to grant")
    .option("--group <name>", "the group to grant")
    .requiredOption("--ttl <duration>", "how long the grant lasts (e.g. 30m)", arg(parseDuration))
    .requiredOption("--reason <text>", "why (recorded in the audit log)")
    .option("--policy <policy>", "limit the grant to these policies (repeatable)", collect)
    .action(
      async (o: { user?: string; group?: string; ttl: number; reason: string; policy?: string[] }): Promise<void> => {
        if ((o.user === undefined) === (o.group === undefined))
          throw usageError("give exactly one of --user and --group");
        const body: Json = { ttlSeconds: o.ttl, reason: o.reason };
        if (o.user !== undefined) body.user = o.user;
        if (o.group !== undefined) body.group = o.group;
        if (o.policy !== undefined) body.policies = o.policy;
        await ctx.emit(await ctx.client().request("POST", "/v1/sudo/grants", { body }));
      },
    );

  sudo
    .command("list")
    .description("list grants")
    .option("--active", "only grants in force now")
    .action(async (o: { active?: boolean }): Promise<void> => {
      const answer = await ctx.client().request<{ grants: Json[] }>("GET", "/v1/sudo/grants", {
        query: { active: o.active === true ? "true" : undefined },
      });
      await ctx.emit(answer, (a) => renderTable(a.grants));
    });

  sudo
    .command("revoke <id>")
    .description("end a grant early")
    .action(async (id: string): Promise<void> => {
      await ctx.emit(await ctx.client().request("DELETE", `/v1/sudo/grants/${seg(id)}`));
    });
}
