/** `custos login`, `custos whoami` and `custos token …`. */
import type { Command } from "commander";
import { clientFromEnv } from "../../client/index.js";
import { arg, type CliContext, seg } from "../context.js";
import { CliError, EXIT_CLIENT, usageError } from "../errors.js";
import { type ReservedFile, readPassword, reservePrivateFile } from "../io.js";
import { renderTable } from "../output.js";
import { collect, parseDuration } from "../parse.js";

type Json = Record<string, unknown>;

/**
 * Where a freshly issued token goes: `--token-file`, else stdout inside the JSON
 * answer with `--json`, else (for login) `$CUSTOS_TOKEN_FILE`. Decided (and the file
 * opened, see `reserveTokenFile`) before the request, so a token is never issued
 * only to be lost.
 */
function tokenDestination(ctx: CliContext, tokenFile: string | undefined, fallbackEnv: boolean): string | null {
  if (tokenFile !== undefined) return tokenFile;
  if (ctx.json) return null;
  const fromEnv = fallbackEnv ? ctx.io.env.CUSTOS_TOKEN_FILE?.trim() : undefined;
  if (fromEnv) return fromEnv;
  throw usageError(
    `the token is never printed in human output: give --token-file FILE${fallbackEnv ? " (or set CUSTOS_TOKEN_FILE)" : ""}, or --json`,
  );
}

/** Opens the token's file before the request that issues it: a file that can't be written fails the command first. */
export function reserveTokenFile(destination: string | undefined | null): ReservedFile | null {
  return destination === undefined || destination === null ? null : reservePrivateFile(destination);
}

/** Waits for the request that issues a token bound for `reserved`; if it fails, the file is released. */
export async function issuing<T>(reserved: ReservedFile | null, request: Promise<T>): Promise<T> {
  try {
    return await request;
  } catch (e) {
    reserved?.release();
    throw e;
  }
}

/** How `keepToken` undoes an issue: what it did when it worked, and the command to run when it didn't. */
export interface Revocation {
  readonly done: string;
  readonly command: string;
  readonly run: () => Promise<unknown>;
}

/**
 * Writes a freshly issued token into its reserved file. Should that still fail, the
 * token is revoked (best effort), so none stays live that nobody holds, and the
 * error says which happened.
 */
export async function keepToken(reserved: ReservedFile, token: string, revoke: Revocation): Promise<void> {
  try {
    reserved.fill(`${token}\n`);
  } catch (e) {
    let outcome: string;
    try {
      await revoke.run();
      outcome = revoke.done;
    } catch {
      outcome = `it is live and could not be revoked: run ${revoke.command}`;
    }
    throw new CliError("io_error", `${(e as Error).message}; ${outcome}`, EXIT_CLIENT, { cause: e });
  }
}

/** How `keepToken` revokes a token `POST /v1/auth/tokens` just issued. */
export function revokeToken(ctx: CliContext, answer: Json): Revocation {
  const id = String(answer.id);
  return {
    done: `token ${id} was revoked`,
    command: `custos token revoke ${id}`,
    run: () => ctx.client().request("DELETE", `/v1/auth/tokens/${seg(id)}`),
  };
}

/** The answer without its `token` field, for human output. */
function withoutToken(answer: Json): Json {
  const { token: _token, ...rest } = answer;
  return rest;
}

/** Registers `login`, `whoami` and `token`. */
export function registerAuthCommands(program: Command, ctx: CliContext): void {
  program
    .command("login <username>")
    .description("log in with a password and keep the session token in a file (0600)")
    .option("--password-stdin", "read the password from stdin instead of prompting")
    .option("--token-file <file>", "write the token here (default: $CUSTOS_TOKEN_FILE)")
    .action(async (username: string, o: { passwordStdin?: boolean; tokenFile?: string }): Promise<void> => {
      const destination = tokenDestination(ctx, o.tokenFile, true);
      // The file is opened after the prompt: a kill at the prompt leaves no empty file.
      const password = await readPassword(ctx.io, o.passwordStdin === true);
      let reserved: ReservedFile | null;
      let answer: Json;
      try {
        reserved = reserveTokenFile(destination);
        answer = await issuing(
          reserved,
          ctx.client().request<Json>("POST", "/v1/auth/login", {
            auth: false,
            body: { username, password: password.exposeText() },
          }),
        );
      } finally {
        password.destroy();
      }
      if (reserved === null) {
        await ctx.emit(answer);
        return;
      }
      const session = String(answer.token);
      await keepToken(reserved, session, {
        done: "the session was revoked",
        command: `custos token revoke ${String(answer.tokenId)}`,
        run: async () => {
          // The session revokes itself: it needs no policy for that, which the configured token might lack.
          const client = clientFromEnv({ ...ctx.io.env, CUSTOS_TOKEN: session, CUSTOS_TOKEN_FILE: "" });
          try {
            await client.request("DELETE", `/v1/auth/tokens/${seg(String(answer.tokenId))}`);
          } finally {
            client.close();
          }
        },
      });
      if (ctx.json) await ctx.emit(withoutToken(answer));
      else
        await ctx.out(
          `logged in as ${username}; token written to ${destination} (expires ${String(answer.expiresAt ?? "never")})\n`,
        );
    });

  program
    .command("whoami")
    .description("show who the current token acts for")
    .action(async (): Promise<void> => {
      await ctx.emit(await ctx.client().request("GET", "/v1/auth/whoami"));
    });

  const token = program.command("token").description("manage API tokens");

  token
    .command("create")
    .description("issue an API token (written to --token-file, or shown with --json)")
    .requiredOption("--name <name>", "what the token is for")
    .option("--policy <policy>", "a policy for the token (repeatable; default: your own)", collect)
    .option("--ttl <duration>", "lifetime (e.g. 1h, 30d)", arg(parseDuration))
    .option(
      "--max-ttl <duration>",
      "make it renewable (by --ttl each time) until this long after now",
      arg(parseDuration),
    )
    .option("--token-file <file>", "write the token here (mode 0600)")
    .action(async (o: { name: string; policy?: string[]; ttl?: number; maxTtl?: number; tokenFile?: string }) => {
      const destination = tokenDestination(ctx, o.tokenFile, false);
      const body: Json = { name: o.name };
      if (o.policy !== undefined) body.policies = o.policy;
      if (o.ttl !== undefined) body.ttlSeconds = o.ttl;
      if (o.maxTtl !== undefined) body.maxTtlSeconds = o.maxTtl;
      const reserved = reserveTokenFile(destination);
      const answer = await issuing(reserved, ctx.client().request<Json>("POST", "/v1/auth/tokens", { body }));
      if (reserved !== null) await keepToken(reserved, String(answer.token), revokeToken(ctx, answer));
      await ctx.emit(reserved === null ? answer : withoutToken(answer));
    });

  token
    .command("list")
    .description("list tokens")
    .action(async (): Promise<void> => {
      const answer = await ctx.client().request<{ tokens: Json[] }>("GET", "/v1/auth/tokens");
      await ctx.emit(answer, (a) => renderTable(a.tokens));
    });

  token
    .command("renew [id]")
    .description("move a renewable token's expiry later (default: the token in use)")
    .option("--ttl <duration>", "the new lifetime, from now (default: the token's own)", arg(parseDuration))
    .action(async (id: string | undefined, o: { ttl?: number }): Promise<void> => {
      const body = o.ttl === undefined ? {} : { ttlSeconds: o.ttl };
      await ctx.emit(await ctx.client().request("POST", `/v1/auth/tokens/${seg(id ?? "self")}/renew`, { body }));
    });

  token
    .command("revoke <id>")
    .description("revoke a token by its id")
    .action(async (id: string): Promise<void> => {
      await ctx.emit(await ctx.client().request("DELETE", `/v1/auth/tokens/${seg(id)}`));
    });
}
