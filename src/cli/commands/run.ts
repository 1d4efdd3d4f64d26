/** `custos run -- <command>`: start an app with its instance's credentials and keep them current. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { type Command, Option } from "commander";
import {
  type EnvMapping,
  type OnChange,
  parseEnvMapping,
  RunError,
  runApp,
  type TemplateSpec,
} from "../../agent/run.js";
import { BrokerError, KEY_TYPES, type KeyType } from "../../broker-client/index.js";
import { caFromEnv, DEFAULT_ADDR } from "../../client/index.js";
import { errnoOrMessage, messageOf } from "../../errors/index.js";
import { arg, type CliContext } from "../context.js";
import { CliError, EXIT_CLIENT, EXIT_SERVER, EXIT_USAGE, type ExitCode, printable, usageError } from "../errors.js";
import { parseDuration, parseInteger } from "../parse.js";

interface RunOptions {
  tokenFile?: string;
  instance?: string;
  dir?: string;
  template?: TemplateSpec[];
  signal: NodeJS.Signals;
  onChange: OnChange;
  poll: number;
  keyType: KeyType;
  shell?: boolean;
}

const SIGNAL_NAMES = ["SIGHUP", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT", "SIGQUIT", "SIGWINCH"] as const;

const HELP = `
Reads the bootstrap token from CUSTOS_BOOTSTRAP_TOKEN (or --token-file) and the
instance id from CUSTOS_INSTANCE_ID (or --instance), exchanges them with Custos
(CUSTOS_ADDR, CUSTOS_CACERT) for an identity certificate, a JWT and the app's
secrets, writes

  <dir>/cert.pem   the certificate followed by its chain
  <dir>/key.pem    its private key (0600), generated here
  <dir>/ca.pem     the CA chain identities are checked against
  <dir>/jwt        the JWT (0600)

and starts the command with, in its environment, CUSTOS_CERT_FILE,
CUSTOS_KEY_FILE, CUSTOS_CA_FILE, CUSTOS_JWT_FILE, CUSTOS_SPIFFE_ID and each
secret under its name upper-cased, other characters turned into _ (db/password
→ DB_PASSWORD, shared/ca-bundle → SHARED_CA_BUNDLE; --env NAME=<secret> picks
the name; --no-env leaves out all but those --env names). A default name that
would replace an inherited variable (PATH, HOME, ...) or one that makes a
program load code (LD_*, DYLD_*, NODE_OPTIONS, PYTHONPATH, JAVA_TOOL_OPTIONS,
BASH_ENV, ...) stops the start: map it with --env to mean it. The command is
looked up in custos run's own PATH, before the bootstrap token is spent. The
bootstrap token is not passed on. The command runs in a process group of its
own; the signals custos run receives go to that whole group.

Templates (--template src:dest, written 0600) know only these placeholders; any
other, or a secret the instance doesn't receive, stops the start:
  {{ secret "db/password" }}  {{ spiffe_id }}  {{ instance }}  {{ jwt }}  {{ "{{" }}

While the command runs, the certificate renews at half its life, the JWT at half
its life (the jwt file and templates using it are rewritten, the app is not
disturbed), and the secrets are fetched every --poll seconds. When a secret or
the certificate changes, the files and templates are rewritten and the app gets
--signal, or with --on-change restart is restarted with the new environment
(the environment of a running process can't change: read rotating secrets from
templates, or restart). SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2 and
SIGWINCH are passed on to the app. A secret whose value holds a NUL byte can't go
into an environment: it stops the start (exit 1); with --on-change restart, such a
change leaves the app running unrestarted, with a warning.

A Custos outage never stops the app: each failure is a warning on stderr and is
retried with back-off. If the instance's credentials are revoked (the platform
deregistered it), custos run says so and stops renewing but leaves the app
running: the platform is stopping it. When the command has ended, key.pem and
jwt are removed (the other files and templates stay).

Exits with the command's exit code (128 + the signal's number if a signal ended
it); before the command starts: 1 refused (an invalid bootstrap token, a missing
secret, a value no environment can hold), 2 Custos unreachable, 64 usage (a bad
template, two secrets or a secret and an inherited variable wanting one name),
127 command not found.`;

/** Registers `run`. */
export function registerRunCommand(program: Command, ctx: CliContext): void {
  // Commander stores --env and --no-env in one value (--no-env sets it to false), so
  // both are tracked here instead; a program is built per run, so this is per run.
  const env: { automatic: boolean; mappings: EnvMapping[] } = { automatic: true, mappings: [] };
  const run = program
    .command("run")
    .description("run a command with its instance's identity, JWT and secrets, kept current while it runs")
    .usage("[options] -- <command> [args...]")
    .argument("<command...>", "the command to run and its arguments")
    .option("--token-file <file>", "read the bootstrap token from this file (default: CUSTOS_BOOTSTRAP_TOKEN)")
    .option("--instance <id>", "the instance id (default: CUSTOS_INSTANCE_ID)")
    .option("--dir <dir>", "credentials directory, created 0700 (default: CUSTOS_CREDENTIALS_DIR or ./.custos)")
    .option(
      "--env <NAME=secret>",
      "put a secret into the environment under NAME (repeatable)",
      arg((text: string) => {
        env.mappings = addMapping(text, env.mappings);
        return env.mappings;
      }),
    )
    .option("--no-env", "put no secret into the environment except those named by --env")
    .option("--template <src:dest>", "render a template file to dest, mode 0600 (repeatable)", arg(addTemplate))
    .addOption(
      new Option("--signal <signal>", "signal sent to the app when its credentials change")
        .argParser(arg(parseSignal))
        .default("SIGHUP"),
    )
    .addOption(
      new Option("--on-change <action>", "what a change does to the app")
        .choices(["signal", "restart"])
        .default("signal"),
    )
    .addOption(
      new Option("--poll <seconds>", "fetch the secrets this often (seconds, or a duration like 5m; at most 1d)")
        .argParser(arg(parsePoll))
        .default(30),
    )
    .addOption(new Option("--key-type <type>", "the identity key's type").choices(KEY_TYPES).default("ec-p256"))
    .option("--shell", "run the command through /bin/sh -c (its words joined by spaces)")
    .addHelpText("after", HELP)
    .action(async (command: string[], o: RunOptions): Promise<void> => {
      const vars = ctx.io.env;
      const token = readToken(o.tokenFile, vars);
      const instance = (o.instance ?? vars.CUSTOS_INSTANCE_ID ?? "").trim();
      if (instance === "") throw usageError("no instance id: set CUSTOS_INSTANCE_ID or pass --instance");
      const address = nonEmpty(vars.CUSTOS_ADDR) ?? DEFAULT_ADDR;
      const ca = caFromEnv(vars);
      const dir = o.dir ?? nonEmpty(vars.CUSTOS_CREDENTIALS_DIR) ?? join(".", ".custos");
      const write = (line: string): void => {
        ctx.io.stderr.write(`${printable(line)}\n`);
      };
      try {
        const code = await runApp({
          address,
          ca,
          token,
          instance,
          keyType: o.keyType,
          dir,
          env,
          templates: o.template ?? [],
          command,
          shell: o.shell === true,
          signal: o.signal,
          onChange: o.onChange,
          pollSeconds: o.poll,
          baseEnv: vars,
          log: write,
        });
        // The app's own exit code passes through, whatever it is: custos run stands in for the app.
        ctx.exitCode = code as ExitCode;
      } catch (e) {
        throw asCliError(e);
      }
    });
  run.on("option:no-env", () => {
    env.automatic = false;
  });
}

/** The CLI's view of a failure to start: 64 for configuration, 1 for refusals, 2 for Custos's failures. */
function asCliError(e: unknown): unknown {
  if (e instanceof RunError) {
    const configuration = e.code === "invalid_template" || e.code === "env_conflict";
    const exit: ExitCode = configuration ? EXIT_USAGE : EXIT_CLIENT;
    return new CliError(e.code, e.message, exit, { cause: e });
  }
  if (e instanceof BrokerError) {
    let exit: ExitCode = EXIT_SERVER;
    if (e.code === "invalid_argument") exit = EXIT_USAGE;
    else if (e.status >= 400 && e.status < 500) exit = EXIT_CLIENT;
    return new CliError(e.code, e.message, exit, { cause: e });
  }
  return e;
}

function readToken(file: string | undefined, env: NodeJS.ProcessEnv): string {
  if (file !== undefined) {
    let raw: Buffer;
    try {
      raw = readFileSync(file);
    } catch (cause) {
      throw usageError(`cannot read --token-file ${file}: ${errnoOrMessage(cause)}`, cause);
    }
    const token = raw.toString("utf8").trim();
    raw.fill(0);
    if (token === "") throw usageError(`--token-file ${file} is empty`);
    return token;
  }
  const token = env.CUSTOS_BOOTSTRAP_TOKEN?.trim();
  if (token === undefined || token === "") {
    throw usageError("no bootstrap token: set CUSTOS_BOOTSTRAP_TOKEN or pass --token-file");
  }
  return token;
}

function addMapping(text: string, previous: EnvMapping[]): EnvMapping[] {
  let mapping: EnvMapping;
  try {
    mapping = parseEnvMapping(text);
  } catch (e) {
    throw usageError(messageOf(e));
  }
  if (previous.some((m) => m.variable === mapping.variable)) throw usageError(`--env ${mapping.variable} given twice`);
  return [...previous, mapping];
}

function addTemplate(text: string, previous: TemplateSpec[] | undefined): TemplateSpec[] {
  const at = text.indexOf(":");
  const source = at < 0 ? "" : text.slice(0, at);
  const dest = at < 0 ? "" : text.slice(at + 1);
  if (source === "" || dest === "") throw usageError(`invalid --template "${text}": expected <src>:<dest>`);
  return [...(previous ?? []), { source, dest }];
}

function parseSignal(text: string): NodeJS.Signals {
  const name = text.trim().toUpperCase();
  const full = name.startsWith("SIG") ? name : `SIG${name}`;
  if (!(SIGNAL_NAMES as readonly string[]).includes(full)) {
    throw usageError(`invalid signal "${text}": one of ${SIGNAL_NAMES.join(", ")}`);
  }
  return full as NodeJS.Signals;
}

/** The longest --poll: a day. Longer ones would also overflow the timer that waits them out (about 24.8 days). */
const MAX_POLL_SECONDS = 86_400;

function parsePoll(text: string): number {
  if (/^\s*\d+\s*$/.test(text)) return parseInteger(text, "--poll", 1, MAX_POLL_SECONDS);
  const seconds = parseDuration(text);
  if (seconds > MAX_POLL_SECONDS)
    throw usageError(`invalid --poll "${text}": at most 1d (${MAX_POLL_SECONDS} seconds)`);
  return seconds;
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === "" ? undefined : value.trim();
}
