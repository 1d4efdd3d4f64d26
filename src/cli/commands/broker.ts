/** `custos broker …`: what a platform agent does — its token, and registering, inspecting and stopping instances. */
import type { Command } from "commander";
import { arg, type CliContext, seg } from "../context.js";
import { renderRecord, renderTable } from "../output.js";
import { checkInstance, parseAppRef, parseDuration, parseInteger, parseScope } from "../parse.js";
import { issuing, keepToken, reserveTokenFile, revokeToken } from "./auth.js";

type Json = Record<string, unknown>;

const INSTANCE_COLUMNS = ["instance", "org", "space", "app", "state", "leaseExpiresAt", "stopReason"];

/** The instance as an operator reads it; credentials as tables. */
function renderInstance(view: Json): string {
  return renderRecord(view);
}

/** Registers `broker` and its subcommands. */
export function registerBrokerCommands(program: Command, ctx: CliContext): void {
  const broker = program.command("broker").description("the container credential broker: agents and instances");
  const path = (id: string): string => `/v1/broker/instances/${seg(checkInstance(id))}`;

  broker
    .command("agent-token <name>")
    .description("create an API token holding only the platform-agent policy (shown once)")
    .option("--ttl <duration>", "lifetime (e.g. 30d); default: no expiry", arg(parseDuration))
    .option("--token-file <file>", "write the token here (mode 0600) instead of printing it")
    .action(async (name: string, o: { ttl?: number; tokenFile?: string }) => {
      const body: Json = { name, policies: ["platform-agent"], forUser: false };
      if (o.ttl !== undefined) body.ttlSeconds = o.ttl;
      // Opened before the token exists: one that can't be kept is never issued.
      const reserved = reserveTokenFile(o.tokenFile);
      const answer = await issuing(reserved, ctx.client().request<Json>("POST", "/v1/auth/tokens", { body }));
      const token = String(answer.token);
      if (reserved !== null) {
        await keepToken(reserved, token, revokeToken(ctx, answer));
        const { token: _t, ...rest } = answer;
        await ctx.emit(rest);
        return;
      }
      if (ctx.json) return ctx.emit(answer);
      await ctx.note(`agent token ${String(answer.id)} (${name}); it is shown once:`);
      await ctx.out(`${token}\n`);
    });

  broker
    .command("register <app> <instance>")
    .description("register an instance of <org>/<space>/<app>; prints its one-time bootstrap token")
    .option("--ttl <duration>", "the instance's lease (e.g. 1h); default: the server's", arg(parseDuration))
    .option("--token-file <file>", "write the bootstrap token here (mode 0600) instead of printing it")
    .action(async (appText: string, instance: string, o: { ttl?: number; tokenFile?: string }) => {
      const body: Json = { ...parseAppRef(appText), instance: checkInstance(instance) };
      if (o.ttl !== undefined) body.ttlSeconds = o.ttl;
      const reserved = reserveTokenFile(o.tokenFile);
      const answer = await issuing(reserved, ctx.client().request<Json>("POST", "/v1/broker/instances", { body }));
      const token = String(answer.bootstrapToken);
      const { bootstrapToken: _t, ...rest } = answer;
      if (reserved !== null) {
        // An instance whose bootstrap token is lost can never start: deregistering it is the revocation.
        const id = String(answer.instance);
        await keepToken(reserved, token, {
          done: `instance ${id} was deregistered, which voids its bootstrap token`,
          command: `custos broker deregister ${id}`,
          run: () => ctx.client().request("DELETE", path(id)),
        });
        await ctx.emit(rest);
        return;
      }
      if (ctx.json) return ctx.emit(answer);
      await ctx.note(
        `instance ${String(answer.instance)} registered; lease until ${String(answer.leaseExpiresAt)}; ` +
          `bootstrap token (single use, until ${String(answer.tokenExpiresAt)}):`,
      );
      await ctx.out(`${token}\n`);
    });

  broker
    .command("instances [scope]")
    .description("list instances, in id order: all, or those of <org>[/<space>[/<app>]]")
    .option("--state <state>", "registered, running, stopped or live (registered or running)")
    .option("--after <instance>", "only ids after this one (paging)")
    .option(
      "--limit <n>",
      "at most this many (1-1000; default 100)",
      arg((t) => parseInteger(t, "limit")),
    )
    .action(async (scope: string | undefined, o: { state?: string; after?: string; limit?: number }) => {
      const answer = await ctx.client().request<{ instances: Json[] }>("GET", "/v1/broker/instances", {
        query: { ...(scope === undefined ? {} : parseScope(scope)), state: o.state, after: o.after, limit: o.limit },
      });
      await ctx.emit(answer, (a) => renderTable(a.instances, { columns: INSTANCE_COLUMNS }));
    });

  broker
    .command("instance <instance>")
    .description("show an instance: state, lease and the credentials issued to it")
    .action(async (id: string) => {
      await ctx.emit(await ctx.client().request<Json>("GET", path(id)), renderInstance);
    });

  broker
    .command("deregister <instance>")
    .description("stop an instance: its certificates are revoked, its JWTs and unused token refused")
    .action(async (id: string) => {
      await ctx.emit(await ctx.client().request<Json>("DELETE", path(id)), renderInstance);
    });

  broker
    .command("lease <instance>")
    .description("extend a live instance's lease to --ttl from now")
    .requiredOption("--ttl <duration>", "the new lease, from now (e.g. 1h)", arg(parseDuration))
    .action(async (id: string, o: { ttl: number }) => {
      const answer = await ctx.client().request<Json>("POST", `${path(id)}/lease`, { body: { ttlSeconds: o.ttl } });
      await ctx.emit(answer, renderInstance);
    });
}
