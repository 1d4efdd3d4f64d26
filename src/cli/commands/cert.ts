/** `custos cert …`: certificate consumers (the router), their rotation, renewal and rollback. */
import type { Command } from "commander";
import { arg, type CliContext, seg } from "../context.js";
import { usageError } from "../errors.js";
import { formatValue, renderRecord, renderTable } from "../output.js";
import { collect, parseDuration } from "../parse.js";

type Json = Record<string, unknown>;

function isRecord(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Enough of a SHA-256 fingerprint to tell certificates apart on screen; `--json` has it whole. */
function shortFingerprint(value: unknown): string {
  return typeof value === "string" ? value.slice(0, 16) : formatValue(value);
}

/** A generation (`target`, `previous`) on one line, or `-` when there is none. */
function generationLine(g: unknown): string {
  if (!isRecord(g)) return "-";
  return `generation ${formatValue(g.generation)}, fingerprint ${shortFingerprint(g.fingerprint)}, notAfter ${formatValue(g.notAfter)}`;
}

/** The last rotation on one line: what it did, between which generations, and whether it is done. */
function rotationLine(r: unknown): string {
  if (!isRecord(r)) return "-";
  const done =
    r.completedAt === null || r.completedAt === undefined ? "not completed" : `completed ${formatValue(r.completedAt)}`;
  return `${formatValue(r.kind)} ${formatValue(r.from)} -> ${formatValue(r.to)}, started ${formatValue(r.startedAt)}, ${done}`;
}

function agentRows(agents: unknown): Json[] {
  if (!Array.isArray(agents)) return [];
  return agents.filter(isRecord).map((a) => ({
    id: a.id,
    serves: a.serves,
    fingerprint: shortFingerprint(a.fingerprint),
    reported: a.reportedAt,
    stale: a.stale === true ? "yes" : "no",
  }));
}

/**
 * A consumer view as an operator reads it: state, the target and previous
 * generations, the last rotation, and a table of agents (what each serves, when it
 * last reported, whether it is stale). `settings` adds what the consumer is issued
 * for (role, names, TTL).
 */
export function renderConsumer(consumer: Json, settings: boolean): string {
  const record: Json = { consumer: consumer.name };
  if (settings) {
    record.role = consumer.role;
    record.commonName = consumer.commonName;
    record.dnsNames = consumer.dnsNames;
    record.ipAddresses = consumer.ipAddresses;
    record.ttlSeconds = consumer.ttlSeconds;
  }
  record.state = consumer.state;
  record.target = generationLine(consumer.target);
  record.previous = generationLine(consumer.previous);
  record.rotation = rotationLine(consumer.rotation);
  const agents = agentRows(consumer.agents);
  record.agents = agents.length > 0 ? agents : "none reported";
  return renderRecord(record);
}

/** The consumer in an answer `{ consumer }`, rendered; other shapes as plain records. */
function renderAnswer(settings: boolean): (answer: Json) => string {
  return (answer) => (isRecord(answer.consumer) ? renderConsumer(answer.consumer, settings) : renderRecord(answer));
}

function listRow(c: Json): Json {
  const agents = Array.isArray(c.agents) ? c.agents.filter(isRecord) : [];
  const live = agents.filter((a) => a.stale !== true);
  return {
    name: c.name,
    role: c.role,
    dnsNames: c.dnsNames,
    state: c.state,
    target: isRecord(c.target) ? c.target.generation : null,
    previous: isRecord(c.previous) ? c.previous.generation : null,
    agents: `${live.filter((a) => a.serves === "target").length}/${live.length} on target${
      agents.length > live.length ? `, ${agents.length - live.length} stale` : ""
    }`,
  };
}

/** Registers `cert` and its subcommands. */
export function registerCertCommands(program: Command, ctx: CliContext): void {
  const cert = program.command("cert").description("certificate consumers and their rotation");
  const path = (name: string): string => `/v1/pki/consumers/${seg(name)}`;

  const consumer = cert.command("consumer").description("manage certificate consumers (TLS endpoints agents serve)");

  consumer
    .command("create <name>")
    .description("create or replace a consumer; its first certificate (generation 1) is issued at once")
    .requiredOption("--role <role>", "the role its certificates are issued under")
    .option("--dns <name>", "a DNS name of the certificate (repeatable)", collect)
    .option("--ip <address>", "an IP address of the certificate (repeatable)", collect)
    .option("--ttl <duration>", "certificate lifetime (default: the role's)", arg(parseDuration))
    .option("--cn <name>", "common name (one of the DNS names)")
    .action(async (name: string, o: { role: string; dns?: string[]; ip?: string[]; ttl?: number; cn?: string }) => {
      if (o.dns === undefined && o.ip === undefined) throw usageError("give at least one --dns or --ip");
      const body: Json = { role: o.role, dnsNames: o.dns ?? [] };
      if (o.ip !== undefined) body.ipAddresses = o.ip;
      if (o.ttl !== undefined) body.ttlSeconds = o.ttl;
      if (o.cn !== undefined) body.commonName = o.cn;
      await ctx.emit(await ctx.client().request<Json>("PUT", path(name), { body }), renderAnswer(true));
    });

  consumer
    .command("list")
    .description("list consumers with their state and how many agents serve the target")
    .action(async (): Promise<void> => {
      const answer = await ctx.client().request<{ consumers: Json[] }>("GET", "/v1/pki/consumers");
      await ctx.emit(answer, (a) => renderTable(a.consumers.filter(isRecord).map(listRow)));
    });

  consumer
    .command("show <name>")
    .description("show a consumer: its settings, generations, last rotation and agents")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request<Json>("GET", path(name)), renderAnswer(true));
    });

  cert
    .command("rotate <consumer>")
    .description("issue a new generation and make it the target; agents pick it up at their next round")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request<Json>("POST", `${path(name)}/rotate`), renderAnswer(false));
    });

  const rotation = cert.command("rotation").description("follow or undo a consumer's rotation");

  rotation
    .command("status <consumer>")
    .description("the rotation's state and what each agent serves (--json: the consumer view as the API gives it)")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request<Json>("GET", path(name)), renderAnswer(false));
    });

  rotation
    .command("rollback <consumer>")
    .description("make the previous generation the target again (the one rolled back from stays issued)")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request<Json>("POST", `${path(name)}/rollback`), renderAnswer(false));
    });
}
