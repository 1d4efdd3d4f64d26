/** `custos agent cert`: keeps a TLS endpoint's certificate files current and reports what it serves. */
import { statSync } from "node:fs";
import { isIP } from "node:net";
import { hostname } from "node:os";
import { dirname, resolve } from "node:path";
import { type Command, Option } from "commander";
import {
  AGENT_ID_RULE,
  type AgentLogLevel,
  CertAgentError,
  type CheckTarget,
  isAgentId,
  runCertAgent,
} from "../../agent/index.js";
import { errnoOrMessage } from "../../errors/index.js";
import { arg, type CliContext } from "../context.js";
import { CliError, EXIT_CLIENT, printable, usageError } from "../errors.js";
import { renderRecord } from "../output.js";
import { parseDuration, parseInteger } from "../parse.js";

/**
 * Parses `--check`: `host:port`, or `[v6-address]:port`. The host is where the
 * agent connects, not the name it asks for (that is `--servername`).
 */
export function parseHostPort(text: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d+)$/.exec(text.trim());
  const host = match?.[1] ?? match?.[2];
  if (match === null || host === undefined || (match[1] !== undefined && isIP(match[1]) !== 6)) {
    throw usageError(`invalid address "${text}": expected host:port or [ipv6]:port`);
  }
  return { host, port: parseInteger(match[3] ?? "", "port", 1, 65_535) };
}

interface AgentCertOptions {
  name: string;
  role: string;
  cert: string;
  key: string;
  chain: string;
  reload: string;
  agentId?: string;
  interval: number;
  check?: { host: string; port: number };
  servername?: string;
  once?: boolean;
}

/** Registers `agent` and its subcommands. */
export function registerAgentCommands(program: Command, ctx: CliContext): void {
  const agent = program.command("agent").description("agents that run beside the services Custos serves");

  agent
    .command("cert")
    .description(
      "keep a TLS endpoint serving its consumer's target certificate: fetch, write (key 0600), reload, check, report",
    )
    .requiredOption("--name <consumer>", "the certificate consumer this endpoint serves")
    .requiredOption("--role <role>", "the role the consumer must be issued under")
    .requiredOption(
      "--cert <path>",
      "certificate file to write: the leaf followed by the chain (the agent's state goes beside it, suffixed .custos-served)",
    )
    .requiredOption("--key <path>", "private key file to write (mode 0600)")
    .requiredOption("--chain <path>", "chain file to write: the issuing intermediate")
    .requiredOption("--reload <command>", "run with /bin/sh -c after the files changed (e.g. 'nginx -s reload')")
    .option("--agent-id <id>", "this agent's id in the consumer's status (default: the host name)")
    .addOption(
      new Option("--interval <duration>", "pause between rounds").argParser(arg(parseDuration)).default(30, "30s"),
    )
    .option(
      "--check <host:port>",
      "count a new certificate as served only once a TLS handshake here presents it",
      arg(parseHostPort),
    )
    .option("--servername <name>", "SNI name for --check (default: the certificate's first DNS name)")
    .option("--once", "do one round and exit (0 when it succeeded)")
    .action(async (o: AgentCertOptions): Promise<void> => {
      const files = { "--cert": o.cert, "--key": o.key, "--chain": o.chain };
      const seen = new Map<string, string>();
      for (const [flag, file] of Object.entries(files)) {
        const other = seen.get(resolve(file));
        if (other !== undefined) throw usageError(`${other} and ${flag} name the same file`);
        seen.set(resolve(file), flag);
        checkDirectory(flag, file);
      }
      if (o.servername !== undefined && o.check === undefined) throw usageError("--servername needs --check");
      const agentId = o.agentId ?? hostname();
      if (!isAgentId(agentId)) {
        throw usageError(
          o.agentId === undefined
            ? `the host name "${agentId}" is not an agent id Custos accepts (${AGENT_ID_RULE}): pass --agent-id`
            : `invalid --agent-id "${agentId}": ${AGENT_ID_RULE}`,
        );
      }
      const check: CheckTarget | undefined =
        o.check === undefined ? undefined : { ...o.check, servername: o.servername };

      const log = (level: AgentLogLevel, message: string): void => {
        ctx.io.stderr.write(`${new Date().toISOString()} ${level} ${printable(message)}\n`);
      };
      const controller = new AbortController();
      const stop = (signal: NodeJS.Signals): void => {
        log("info", `${signal}: stopping`);
        controller.abort();
      };
      process.once("SIGTERM", stop);
      process.once("SIGINT", stop);
      try {
        const result = await runCertAgent(
          ctx.client(),
          {
            consumer: o.name,
            role: o.role,
            agentId,
            certFile: o.cert,
            keyFile: o.key,
            chainFile: o.chain,
            reloadCommand: o.reload,
            intervalMs: o.interval * 1000,
            check,
          },
          log,
          controller.signal,
          { once: o.once === true },
        );
        if (o.once === true && result !== undefined) await ctx.emit(result, (r) => renderRecord({ ...r }));
      } catch (e) {
        if (e instanceof CertAgentError) throw new CliError(e.code, e.message, EXIT_CLIENT, { cause: e });
        throw e;
      } finally {
        process.off("SIGTERM", stop);
        process.off("SIGINT", stop);
      }
    });
}

/** A file's directory must exist before the agent runs for hours only to fail at its first write. */
function checkDirectory(flag: string, file: string): void {
  const dir = dirname(resolve(file));
  try {
    if (!statSync(dir).isDirectory()) throw usageError(`${flag} ${file}: ${dir} is not a directory`);
  } catch (e) {
    if (e instanceof CliError) throw e;
    throw usageError(`${flag} ${file}: ${dir}: ${errnoOrMessage(e)}`, e);
  }
}
