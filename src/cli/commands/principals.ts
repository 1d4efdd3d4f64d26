/** `custos user …` and `custos group …`. */
import type { Command } from "commander";
import type { CliContext } from "../context.js";
import { seg } from "../context.js";
import { usageError } from "../errors.js";
import { readPassword } from "../io.js";
import { renderTable } from "../output.js";
import { collect } from "../parse.js";

type Json = Record<string, unknown>;

/** Sends `body` after filling in `password` from stdin or a prompt, then zeroes the password. */
async function withPassword(
  ctx: CliContext,
  fromStdin: boolean,
  body: Json,
  send: (body: Json) => Promise<Json>,
): Promise<Json> {
  const password = await readPassword(ctx.io, fromStdin, "New password: ");
  try {
    return await send({ ...body, password: password.exposeText() });
  } finally {
    password.destroy();
  }
}

function policiesOf(o: { policy?: string[]; clearPolicies?: boolean }): { policies?: string[] } {
  if (o.clearPolicies === true && o.policy !== undefined)
    throw usageError("--policy and --clear-policies contradict each other");
  if (o.clearPolicies === true) return { policies: [] };
  return o.policy === undefined ? {} : { policies: o.policy };
}

/** Registers `user` and its subcommands. */
export function registerUserCommands(program: Command, ctx: CliContext): void {
  const user = program.command("user").description("manage users");
  const path = (name: string): string => `/v1/users/${seg(name)}`;

  user
    .command("create <name>")
    .description("create a user (without a password it can't log in)")
    .option("--password-stdin", "read the user's password from stdin")
    .option("--prompt-password", "prompt for the user's password on the terminal")
    .option("--policy <policy>", "a policy of the user (repeatable)", collect)
    .action(
      async (
        name: string,
        o: { passwordStdin?: boolean; promptPassword?: boolean; policy?: string[] },
      ): Promise<void> => {
        const body: Json = { name, ...policiesOf(o) };
        const send = (b: Json): Promise<Json> => ctx.client().request<Json>("POST", "/v1/users", { body: b });
        const wantsPassword = o.passwordStdin === true || o.promptPassword === true;
        await ctx.emit(
          wantsPassword ? await withPassword(ctx, o.passwordStdin === true, body, send) : await send(body),
        );
      },
    );

  user
    .command("list")
    .description("list users")
    .action(async (): Promise<void> => {
      const answer = await ctx.client().request<{ users: Json[] }>("GET", "/v1/users");
      await ctx.emit(answer, (a) => renderTable(a.users));
    });

  user
    .command("show <name>")
    .description("show a user")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request("GET", path(name)));
    });

  user
    .command("update <name>")
    .description("change a user's policies, password or disabled state")
    .option("--policy <policy>", "replace the user's policies with these (repeatable)", collect)
    .option("--clear-policies", "remove all of the user's policies")
    .option("--disable", "refuse the user's logins and tokens")
    .option("--enable", "allow the user again")
    .option("--password-stdin", "read a new password from stdin")
    .option("--prompt-password", "prompt for a new password on the terminal")
    .action(
      async (
        name: string,
        o: {
          policy?: string[];
          clearPolicies?: boolean;
          disable?: boolean;
          enable?: boolean;
          passwordStdin?: boolean;
          promptPassword?: boolean;
        },
      ): Promise<void> => {
        if (o.disable === true && o.enable === true) throw usageError("--disable and --enable contradict each other");
        const body: Json = { ...policiesOf(o) };
        if (o.disable === true) body.disabled = true;
        if (o.enable === true) body.disabled = false;
        const wantsPassword = o.passwordStdin === true || o.promptPassword === true;
        if (Object.keys(body).length === 0 && !wantsPassword) {
          throw usageError(
            "nothing to update: give --policy, --clear-policies, --disable, --enable or a password option",
          );
        }
        const send = (b: Json): Promise<Json> => ctx.client().request<Json>("PATCH", path(name), { body: b });
        await ctx.emit(
          wantsPassword ? await withPassword(ctx, o.passwordStdin === true, body, send) : await send(body),
        );
      },
    );

  user
    .command("delete <name>")
    .description("delete a user (revokes their tokens, removes them from groups)")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request("DELETE", path(name)));
    });
}

/** Registers `group` and its subcommands. */
export function registerGroupCommands(program: Command, ctx: CliContext): void {
  const group = program.command("group").description("manage groups of users");
  const path = (name: string): string => `/v1/groups/${seg(name)}`;

  group
    .command("create <name>")
    .description("create a group")
    .option("--member <user>", "a member (repeatable)", collect)
    .option("--policy <policy>", "a policy of the group (repeatable)", collect)
    .action(async (name: string, o: { member?: string[]; policy?: string[] }): Promise<void> => {
      const body: Json = { name, ...policiesOf(o) };
      if (o.member !== undefined) body.members = o.member;
      await ctx.emit(await ctx.client().request("POST", "/v1/groups", { body }));
    });

  group
    .command("list")
    .description("list groups")
    .action(async (): Promise<void> => {
      const answer = await ctx.client().request<{ groups: Json[] }>("GET", "/v1/groups");
      await ctx.emit(answer, (a) => renderTable(a.groups));
    });

  group
    .command("show <name>")
    .description("show a group")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request("GET", path(name)));
    });

  group
    .command("update <name>")
    .description("add or remove members, or replace the group's policies")
    .option("--add <user>", "add a member (repeatable)", collect)
    .option("--remove <user>", "remove a member (repeatable)", collect)
    .option("--policy <policy>", "replace the group's policies with these (repeatable)", collect)
    .option("--clear-policies", "remove all of the group's policies")
    .action(
      async (
        name: string,
        o: { add?: string[]; remove?: string[]; policy?: string[]; clearPolicies?: boolean },
      ): Promise<void> => {
        const body: Json = { ...policiesOf(o) };
        if (o.add !== undefined) body.addMembers = o.add;
        if (o.remove !== undefined) body.removeMembers = o.remove;
        if (Object.keys(body).length === 0) {
          throw usageError("nothing to update: give --add, --remove, --policy or --clear-policies");
        }
        await ctx.emit(await ctx.client().request("PATCH", path(name), { body }));
      },
    );

  group
    .command("delete <name>")
    .description("delete a group")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request("DELETE", path(name)));
    });
}
