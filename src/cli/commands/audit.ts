/** `custos audit …` and `custos status`. */
import type { Command } from "commander";
import { AUDIT_LIST_MAX } from "../../audit/index.js";
import { arg, type CliContext } from "../context.js";
import { EXIT_CLIENT, EXIT_SERVER, printable, usageError } from "../errors.js";
import { readText } from "../io.js";
import { renderTable } from "../output.js";
import { parseInteger } from "../parse.js";

type Json = Record<string, unknown>;

const AUDIT_COLUMNS = ["seq", "time", "principal", "source", "action", "resource", "outcome", "errorCode"];

interface VerifyAnswer {
  ok: boolean;
  records: number;
  checkpoints: number;
  unsignedTail?: number;
  problems: { seq: number; kind: string; message: string }[];
  restores?: {
    seq: number;
    time: string;
    backupSeq: number;
    supersededSeq: number | null;
    replacedFile: string | null;
    replacedNewestSeq: number | null;
  }[];
}

/** The human report of an audit verification: one line per problem, then a summary. */
export function renderVerification(a: VerifyAnswer): string {
  const lines = (a.problems ?? []).map((p) => `record ${p.seq}: ${printable(p.kind)}: ${printable(p.message)}`);
  const summary = `${count(a.records, "record")}, ${count(a.checkpoints, "checkpoint")}`;
  lines.push(
    a.ok && lines.length === 0 ? `ok: ${summary} verified` : `FAILED: ${lines.length} problem(s) in ${summary}`,
  );
  if (a.unsignedTail) {
    lines.push(`note: the newest ${count(a.unsignedTail, "record")} not yet covered by a signed checkpoint`);
  }
  for (const r of a.restores ?? []) lines.push(`note: ${restoreLine(r)}`);
  return `${lines.join("\n")}\n`;
}

/** What one restore lost, as far as the log can tell: records past the backup that a checkpoint or the replaced database held. */
function restoreLine(r: NonNullable<VerifyAnswer["restores"]>[number]): string {
  const newest = Math.max(r.supersededSeq ?? 0, r.replacedNewestSeq ?? 0);
  const lost =
    newest > r.backupSeq
      ? `records ${r.backupSeq + 1}..${newest} of the log before it were lost${r.replacedFile ? ` (kept in ${printable(r.replacedFile)})` : ""}`
      : "no record of the log before it was lost";
  return `record ${r.seq}: a backup holding records 1..${r.backupSeq} was restored at ${printable(r.time)}; ${lost}`;
}

function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

/** Registers `audit` and `status`. */
export function registerAuditCommands(program: Command, ctx: CliContext): void {
  const audit = program
    .command("audit")
    .description("read and verify the tamper-evident audit log; the audit HMAC of a known value");

  audit
    .command("list")
    .description("list audit records (oldest first unless --desc)")
    .option(
      "--after <seq>",
      "only records after this sequence number in the listing's order (older ones with --desc)",
      arg((t) => parseInteger(t, "sequence number", 0)),
    )
    .option(
      "--limit <n>",
      `at most this many (up to ${AUDIT_LIST_MAX})`,
      arg((t) => parseInteger(t, "limit", 1, AUDIT_LIST_MAX)),
    )
    .option("--principal <principal>", "only this principal (user:alice, token:…)")
    .option("--action <action>", "only this action (key.encrypt, auth.login, …)")
    .option("--resource <resource>", "only this resource (key/app-a, …)")
    .option("--desc", "newest first")
    .action(
      async (o: {
        after?: number;
        limit?: number;
        principal?: string;
        action?: string;
        resource?: string;
        desc?: boolean;
      }): Promise<void> => {
        const answer = await ctx.client().request<{ records: Json[] }>("GET", "/v1/audit", {
          query: {
            after: o.after,
            limit: o.limit,
            principal: o.principal,
            action: o.action,
            resource: o.resource,
            order: o.desc === true ? "desc" : undefined,
          },
        });
        await ctx.emit(answer, (a) => renderTable(a.records, { columns: AUDIT_COLUMNS }));
      },
    );

  audit
    .command("hash")
    .description(
      "the audit HMAC of a value, to match a secret write's valueHmac; the value comes from stdin (one trailing " +
        "newline dropped, as secret put does) or --from-file (as is), never the command line",
    )
    .option("--from-file <file>", "read the value from a file, byte for byte (UTF-8 text)")
    .action(async (o: { fromFile?: string }): Promise<void> => {
      let value: string;
      if (o.fromFile !== undefined) {
        value = await readText(o.fromFile, ctx.io);
      } else {
        if (ctx.io.stdin.isTTY === true) await ctx.note("reading the value from stdin (end with Ctrl-D)");
        value = (await readText(undefined, ctx.io)).replace(/\r?\n$/, "");
      }
      if (value.length === 0) throw usageError("the value is empty");
      const answer = await ctx.client().request<{ hmac: string }>("POST", "/v1/audit/hash", { body: { value } });
      await ctx.emit(answer, (a) => `${a.hmac}\n`);
    });

  audit
    .command("verify")
    .description("check the hash chain and checkpoint signatures; exits 1 naming each bad record")
    .action(async (): Promise<void> => {
      const answer = await ctx.client().request<VerifyAnswer>("POST", "/v1/audit/verify");
      if (answer.ok !== true || (answer.problems ?? []).length > 0) ctx.exitCode = EXIT_CLIENT;
      await ctx.emit(answer, renderVerification);
    });

  program
    .command("status")
    .description("the server's health (no token needed); exits 2 unless ok")
    .action(async (): Promise<void> => {
      const answer = await ctx.client().request<Json>("GET", "/v1/health", { auth: false, answerStatuses: [503] });
      if (answer.status !== "ok") ctx.exitCode = EXIT_SERVER;
      await ctx.emit(answer);
    });
}
