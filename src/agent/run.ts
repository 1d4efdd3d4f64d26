/**
 * `custos run`'s supervisor: turns a bootstrap token into the app's credentials,
 * starts the app with them, and keeps them current while it runs.
 *
 * Startup does everything slow first (templates read and parsed, the key and CSR
 * made, the directory created), so between the exchange's answer and the app's
 * start there are only the file writes. Afterwards three loops run beside the app:
 * the certificate renews at its renewAt, the JWT at half its life, and the secrets
 * are polled. A change rewrites the files and templates and signals (or restarts)
 * the app. Failures there are warnings retried with capped back-off: a Custos
 * outage never stops the app. Revoked credentials end the loops, not the app (the
 * platform that stopped the instance is stopping its container too).
 */
import { constants } from "node:fs";
import { access, readFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import {
  type BrokerSecret,
  BrokerSession,
  bootstrap,
  type Credentials,
  type Identity,
  isBrokerError,
  type KeyType,
  prepareKey,
} from "../broker-client/index.js";
import { errnoOrMessage } from "../errors/index.js";
import { writeFileAtomic } from "../files/index.js";
import { startReaper } from "./reaper.js";
import { Child, type ChildSpec, missingProgram } from "./run-child.js";
import { type EnvPolicy, findSecret, type SecretVariables, secretVariables } from "./run-env.js";
import {
  type CredentialFiles,
  credentialFiles,
  PRIVATE_MODE,
  prepareDirectory,
  removePrivateFiles,
  writeCredentials,
  writeJwt,
} from "./run-files.js";
import { parseTemplate, renderTemplate, type Template, TemplateError, usesJwt } from "./run-template.js";

export { exitCodeOf } from "./run-child.js";
export { type EnvMapping, type EnvPolicy, parseEnvMapping, RESERVED_VARIABLES, variableFor } from "./run-env.js";
export { credentialFiles } from "./run-files.js";
export { parseTemplate, renderTemplate, TemplateError } from "./run-template.js";

/** One `--template <src>:<dest>`. */
export interface TemplateSpec {
  readonly source: string;
  readonly dest: string;
}

/** What to change about the app when its secrets or certificate change. */
export type OnChange = "signal" | "restart";

export interface RunAppOptions {
  readonly address: string;
  /** PEM of the CA that signed Custos's server certificate; undefined: the system store. */
  readonly ca: string | Buffer | undefined;
  readonly token: string;
  readonly instance: string;
  readonly keyType?: KeyType | undefined;
  /** The credentials directory (created 0700 if missing). */
  readonly dir: string;
  readonly env: EnvPolicy;
  readonly templates: readonly TemplateSpec[];
  readonly command: readonly string[];
  readonly shell: boolean;
  /** Sent to the app when something changed (with `onChange: "signal"`). */
  readonly signal: NodeJS.Signals;
  readonly onChange: OnChange;
  readonly pollSeconds: number;
  /** The environment the app inherits (the bootstrap token is taken out of it). */
  readonly baseEnv: NodeJS.ProcessEnv;
  /** Receives each log line, already prefixed `custos run:`. Never handed a secret. */
  readonly log: (line: string) => void;
  /** How long a restart waits after SIGTERM before SIGKILL. Default 10 s. */
  readonly stopGraceMs?: number | undefined;
  /** Longest pause between retries after failures. Default 30 s. */
  readonly retryCapMs?: number | undefined;
}

/** A failure before the app started, with what kind it was (the CLI gives each its exit code). */
export class RunError extends Error {
  constructor(
    readonly code: "invalid_template" | "env_conflict" | "io_error" | "missing_secret" | "unusable_secret",
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "RunError";
  }
}

/**
 * What `custos run` passes on to the app, as envconsul and consul-template's exec
 * do. Without a listener, SIGQUIT, SIGUSR2 (and SIGTERM, SIGINT, SIGHUP) would end
 * `custos run` and leave the app running without its supervisor, and SIGUSR1 would
 * open Node's inspector on 127.0.0.1:9229 (a debugger into this process's memory);
 * a listener stops both.
 */
const SIGNALS_FORWARDED: readonly NodeJS.Signals[] = [
  "SIGHUP",
  "SIGINT",
  "SIGQUIT",
  "SIGTERM",
  "SIGUSR1",
  "SIGUSR2",
  "SIGWINCH",
];
const MIN_WAIT_MS = 1000;
const MAX_TIMER_MS = 2 ** 31 - 1;

interface LoadedTemplate {
  readonly spec: TemplateSpec;
  readonly dest: string;
  readonly template: Template;
  /** What was last written, so unchanged templates aren't rewritten. */
  written: string | undefined;
}

/**
 * Runs the app under `options` and resolves with its exit code once it has ended
 * (128 + signal when a signal ended it).
 * @throws RunError or BrokerError when the app could not be started.
 */
export async function runApp(options: RunAppOptions): Promise<number> {
  // Until the app runs there is nothing to pass SIGUSR1 on to, but it must not open the inspector.
  const ignore = (): void => {};
  process.on("SIGUSR1", ignore);
  try {
    return await supervise(options);
  } finally {
    process.off("SIGUSR1", ignore);
  }
}

async function supervise(options: RunAppOptions): Promise<number> {
  const log = (message: string): void => options.log(`custos run: ${message}`);
  const files = credentialFiles(options.dir);
  const spec: ChildSpec = {
    command: options.command,
    shell: options.shell,
    stopGraceMs: options.stopGraceMs ?? 10_000,
    searchPath: options.baseEnv.PATH,
  };
  const missing = missingProgram(spec);
  if (missing !== undefined) {
    log(missing);
    return 127;
  }

  const [templates, key] = await Promise.all([
    loadTemplates(options.templates),
    prepareKey(options.instance, options.keyType ?? "ec-p256"),
    prepareDirectory(files.dir).catch((cause: unknown) => {
      throw new RunError("io_error", `cannot create ${files.dir}: ${errnoOrMessage(cause)}`, { cause });
    }),
  ]);

  const credentials = await bootstrap(
    {
      address: options.address,
      ca: options.ca,
      token: options.token,
      instance: options.instance,
      keyType: options.keyType,
    },
    key,
  );

  // From here to the spawn: only what the app needs before it starts.
  const state = new RunState(credentials, files, templates, options);
  const refused = state.startupError();
  if (refused !== undefined) throw refused;
  try {
    await Promise.all([state.writeCredentials(), state.writeTemplates()]);
  } catch (cause) {
    await removePrivateFiles(files).catch(() => {});
    throw new RunError("io_error", `cannot write the credential files: ${errnoOrMessage(cause)}`, { cause });
  }
  const child = new Child(spec, log);
  const reaper = await startReaper((pid) => child.owns(pid), log);
  const forward = (signal: NodeJS.Signals): void => child.forward(signal);
  for (const s of SIGNALS_FORWARDED) process.on(s, forward);
  child.start(state.environment(true), () =>
    log(`started ${options.command[0] ?? ""} as ${credentials.identity.spiffeId}`),
  );

  const session = new BrokerSession(
    {
      address: options.address,
      ca: options.ca,
      keyType: options.keyType,
      // The loops below do the patient retrying; the session only smooths over blips.
      retry: { retries: 2, baseDelayMs: 200, maxDelayMs: 1000 },
    },
    credentials,
  );
  const background = new Background(state, session, child, options, log);
  try {
    return await child.exited;
  } finally {
    for (const s of SIGNALS_FORWARDED) process.off(s, forward);
    reaper?.stop();
    // Closing first aborts calls in flight, so a hung connection can't hold up the exit.
    session.close();
    await background.stop();
    await removePrivateFiles(files).catch((e: unknown) =>
      log(`warning: cannot remove the private key and JWT from ${files.dir}: ${errnoOrMessage(e)}`),
    );
  }
}

/** What the app has been given: identity, JWT and secrets, and the files and templates they went into. */
class RunState {
  identity: Identity;
  jwt: string;
  jwtReceivedAt: number;
  jwtExpiresAt: Date;
  secrets: readonly BrokerSecret[];
  readonly files: CredentialFiles;
  readonly templates: readonly LoadedTemplate[];
  readonly #credentials: Credentials;
  readonly #options: RunAppOptions;
  /** What the app inherits from custos run's environment, which secrets' default names must not replace. */
  readonly #inherited: ReadonlySet<string>;

  constructor(credentials: Credentials, files: CredentialFiles, templates: LoadedTemplate[], options: RunAppOptions) {
    this.#credentials = credentials;
    this.identity = credentials.identity;
    this.jwt = credentials.jwt;
    this.jwtReceivedAt = Date.now();
    this.jwtExpiresAt = credentials.jwtExpiresAt;
    this.secrets = credentials.secrets;
    this.files = files;
    this.templates = templates;
    this.#options = options;
    this.#inherited = new Set(Object.keys(options.baseEnv).filter((name) => name !== "CUSTOS_BOOTSTRAP_TOKEN"));
  }

  /**
   * What keeps the app from starting as configured, as the error to refuse it with:
   * variable names in conflict (the configuration to fix), secrets named by templates
   * or --env that didn't come, values no environment can hold. Undefined when nothing does.
   */
  startupError(): RunError | undefined {
    const env = this.#options.env.automatic || this.#options.env.mappings.length > 0 ? this.#secretEnv() : undefined;
    const missing = [...(env?.missing ?? [])];
    for (const t of this.templates) {
      try {
        this.#render(t);
      } catch (e) {
        if (!(e instanceof TemplateError)) throw e;
        missing.push(e.message);
      }
    }
    const conflicts = env?.conflicts ?? [];
    const unusable = env?.unusable ?? [];
    const all = [...conflicts, ...missing, ...unusable].join("; ");
    if (conflicts.length > 0) return new RunError("env_conflict", all);
    if (missing.length > 0) return new RunError("missing_secret", all);
    if (unusable.length > 0) return new RunError("unusable_secret", all);
    return undefined;
  }

  /** Why the app's environment can't be set now: secret values no environment can hold. */
  unusableValues(): string[] {
    return this.#secretEnv().unusable;
  }

  /** The app's environment: the inherited one without the bootstrap token, the credential files, the secrets. */
  environment(startup: boolean): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { ...this.#options.baseEnv };
    delete env.CUSTOS_BOOTSTRAP_TOKEN;
    const { variables, conflicts, missing } = this.#secretEnv();
    if (!startup) for (const p of [...conflicts, ...missing]) this.#options.log(`custos run: warning: ${p}`);
    return {
      ...env,
      ...variables,
      CUSTOS_CERT_FILE: this.files.cert,
      CUSTOS_KEY_FILE: this.files.key,
      CUSTOS_CA_FILE: this.files.ca,
      CUSTOS_JWT_FILE: this.files.jwt,
      CUSTOS_SPIFFE_ID: this.identity.spiffeId,
    };
  }

  writeCredentials(): Promise<void> {
    return writeCredentials(this.files, {
      certificate: this.identity.certificate,
      chain: this.identity.chain,
      caChain: this.identity.caChain,
      privateKeyPem: this.identity.privateKeyPem,
      jwt: this.jwt,
    });
  }

  writeJwt(): Promise<void> {
    return writeJwt(this.files, this.jwt);
  }

  /**
   * Renders and writes the templates whose output changed (`only` narrows them).
   * One that can't be rendered any more (a secret it names went away) is left as it
   * was, with a warning. Resolves with the destinations written.
   */
  async writeTemplates(only: (t: Template) => boolean = () => true): Promise<string[]> {
    const written: string[] = [];
    await Promise.all(
      this.templates
        .filter((t) => only(t.template))
        .map(async (t) => {
          let text: string;
          try {
            text = this.#render(t);
          } catch (e) {
            if (!(e instanceof TemplateError)) throw e;
            this.#options.log(`custos run: warning: ${e.message}; ${t.dest} left as it was`);
            return;
          }
          if (text === t.written) return;
          await writeFileAtomic(t.dest, text, PRIVATE_MODE);
          t.written = text;
          written.push(t.dest);
        }),
    );
    return written;
  }

  #render(t: LoadedTemplate): string {
    return renderTemplate(t.template, {
      spiffeId: this.identity.spiffeId,
      instance: this.#credentials.instance,
      jwt: this.jwt,
      secret: (name) => findSecret(this.secrets, name)?.value,
    });
  }

  #secretEnv(): SecretVariables {
    return secretVariables(this.secrets, this.#options.env, this.#inherited);
  }
}

/** The loops that keep the credentials current while the app runs. */
class Background {
  readonly #state: RunState;
  readonly #session: BrokerSession;
  readonly #child: Child;
  readonly #options: RunAppOptions;
  readonly #log: (message: string) => void;
  readonly #stop = new AbortController();
  readonly #loops: Promise<void>[];
  /** Changes are applied one at a time, so files and signals never interleave. */
  #applying: Promise<unknown> = Promise.resolve();

  constructor(
    state: RunState,
    session: BrokerSession,
    child: Child,
    options: RunAppOptions,
    log: (message: string) => void,
  ) {
    this.#state = state;
    this.#session = session;
    this.#child = child;
    this.#options = options;
    this.#log = log;
    this.#loops = [
      this.#loop(
        "renew the identity certificate",
        () => renewalWait(this.#state.identity),
        () => this.#renew(),
      ),
      this.#loop(
        "refresh the JWT",
        () => this.#jwtDue() - Date.now(),
        () => this.#refreshJwt(),
      ),
      this.#loop(
        "fetch the secrets",
        () => options.pollSeconds * 1000,
        () => this.#poll(),
      ),
    ];
  }

  /** Ends the loops and waits for them and for any change being applied. */
  async stop(): Promise<void> {
    this.#stop.abort();
    await Promise.allSettled(this.#loops);
    await this.#applying.catch(() => undefined);
  }

  /**
   * Runs `task` when `firstWaitMs()` has passed, then again after the wait it
   * returns. A failure is a warning and a capped, jittered back-off; revoked
   * credentials end every loop.
   */
  async #loop(what: string, firstWaitMs: () => number, task: () => Promise<number>): Promise<void> {
    const cap = this.#options.retryCapMs ?? 30_000;
    let wait = firstWaitMs();
    let failures = 0;
    while (await this.#sleep(wait)) {
      try {
        wait = await task();
        if (failures > 0) this.#log(`${what}: working again`);
        failures = 0;
      } catch (e) {
        if (this.#stop.signal.aborted || isBrokerError(e, "closed")) return;
        if (isBrokerError(e, "credential_revoked")) {
          this.#revoked(e.message);
          return;
        }
        failures += 1;
        const ceiling = Math.min(cap, MIN_WAIT_MS * 2 ** (failures - 1));
        wait = Math.max(MIN_WAIT_MS / 2, Math.floor(ceiling / 2 + (Math.random() * ceiling) / 2));
        this.#log(`warning: cannot ${what}: ${describe(e)}; retrying in ${seconds(wait)}`);
      }
    }
  }

  #revoked(message: string): void {
    if (this.#stop.signal.aborted) return;
    this.#log(
      `credentials revoked (${message}): no more renewals or secret updates; the app keeps running until the platform stops it`,
    );
    this.#stop.abort();
  }

  /** Sleeps `ms` (at least a second, at most what a timer holds); false once the loops are stopped. */
  #sleep(ms: number): Promise<boolean> {
    const signal = this.#stop.signal;
    if (signal.aborted) return Promise.resolve(false);
    const delay = Math.min(MAX_TIMER_MS, Math.max(MIN_WAIT_MS, Number.isFinite(ms) ? ms : MIN_WAIT_MS));
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        signal.removeEventListener("abort", aborted);
        resolve(true);
      }, delay);
      function aborted(): void {
        clearTimeout(timer);
        resolve(false);
      }
      signal.addEventListener("abort", aborted, { once: true });
    });
  }

  #jwtDue(): number {
    const { jwtReceivedAt, jwtExpiresAt } = this.#state;
    return jwtReceivedAt + (jwtExpiresAt.getTime() - jwtReceivedAt) / 2;
  }

  async #renew(): Promise<number> {
    const renewed = await this.#session.renew();
    await this.#apply(async () => {
      const state = this.#state;
      state.identity = renewed.identity;
      state.jwt = renewed.jwt;
      state.jwtExpiresAt = renewed.jwtExpiresAt;
      state.jwtReceivedAt = Date.now();
      await Promise.all([state.writeCredentials(), state.writeTemplates()]);
      await this.#notify(`identity certificate renewed (until ${renewed.identity.notAfter.toISOString()})`);
    });
    return renewalWait(renewed.identity);
  }

  async #refreshJwt(): Promise<number> {
    // A renewal since the last look may have brought a fresh JWT already.
    if (Date.now() < this.#jwtDue()) return this.#jwtDue() - Date.now();
    const fresh = await this.#session.refreshJwt();
    await this.#apply(async () => {
      const state = this.#state;
      state.jwt = fresh.jwt;
      state.jwtExpiresAt = fresh.jwtExpiresAt;
      state.jwtReceivedAt = Date.now();
      // Files only: a JWT refresh every few minutes is no reason to disturb the app.
      await Promise.all([state.writeJwt(), state.writeTemplates(usesJwt)]);
    });
    return this.#jwtDue() - Date.now();
  }

  async #poll(): Promise<number> {
    const secrets = await this.#session.secrets();
    const changed = changedSecrets(this.#state.secrets, secrets);
    if (changed.length > 0) {
      await this.#apply(async () => {
        const previous = this.#state.secrets;
        this.#state.secrets = secrets;
        try {
          await this.#state.writeTemplates();
        } catch (e) {
          // Seen as unchanged otherwise: the next poll must try again.
          this.#state.secrets = previous;
          throw e;
        }
        await this.#notify(`secrets changed (${changed.join(", ")})`);
      });
    }
    return this.#options.pollSeconds * 1000;
  }

  /** Tells the app: its signal, or a restart with the new environment. */
  async #notify(what: string): Promise<void> {
    if (this.#stop.signal.aborted) return;
    if (this.#options.onChange === "restart") {
      const unusable = this.#state.unusableValues();
      if (unusable.length > 0) {
        // A restart would start it without them (or not at all): the app running as it is serves better.
        this.#log(`${what}: not restarting the app, which keeps its current environment`);
        for (const u of unusable) this.#log(`warning: ${u}`);
        return;
      }
      this.#log(`${what}: restarting the app`);
      await this.#child.restart(this.#state.environment(false));
    } else if (this.#child.signal(this.#options.signal)) {
      this.#log(`${what}: sent ${this.#options.signal} to the app`);
    }
  }

  #apply(change: () => Promise<void>): Promise<void> {
    const next = this.#applying.then(change);
    this.#applying = next.catch(() => undefined);
    return next;
  }
}

/**
 * How long until the certificate should be renewed: at its renewAt, but no sooner
 * than a quarter of its remaining life, so a renewAt already past (a clock behind
 * the server's, or a lifetime as short as the issuer's backdating) can't make the
 * renewals run back to back.
 */
export function renewalWait(identity: Pick<Identity, "renewAt" | "notAfter">, now = Date.now()): number {
  return Math.max(identity.renewAt.getTime() - now, (identity.notAfter.getTime() - now) / 4);
}

/** The names of secrets added, removed or given a new version (values are compared too, never shown). */
export function changedSecrets(before: readonly BrokerSecret[], after: readonly BrokerSecret[]): string[] {
  const old = new Map(before.map((s) => [s.path, s]));
  const changed: string[] = [];
  for (const s of after) {
    const was = old.get(s.path);
    if (was === undefined || was.version !== s.version || was.value !== s.value) changed.push(s.name);
    old.delete(s.path);
  }
  for (const s of old.values()) changed.push(s.name);
  return changed.sort();
}

async function loadTemplates(specs: readonly TemplateSpec[]): Promise<LoadedTemplate[]> {
  const seen = new Set<string>();
  return Promise.all(
    specs.map(async (spec) => {
      const dest = resolve(spec.dest);
      if (seen.has(dest)) throw new RunError("invalid_template", `two templates write ${spec.dest}`);
      seen.add(dest);
      // Checked now, not when the file is written: by then the exchange has spent the one-time token.
      try {
        await access(dirname(dest), constants.W_OK | constants.X_OK);
      } catch (cause) {
        throw new RunError(
          "invalid_template",
          `template ${spec.source} writes ${spec.dest}, whose directory can't be written: ${errnoOrMessage(cause)}`,
          { cause },
        );
      }
      let text: string;
      try {
        text = await readFile(spec.source, "utf8");
      } catch (cause) {
        throw new RunError("invalid_template", `cannot read template ${spec.source}: ${errnoOrMessage(cause)}`, {
          cause,
        });
      }
      try {
        return { spec, dest, template: parseTemplate(text, spec.source), written: undefined };
      } catch (cause) {
        if (cause instanceof TemplateError) throw new RunError("invalid_template", cause.message, { cause });
        throw cause;
      }
    }),
  );
}

function describe(e: unknown): string {
  return isBrokerError(e) ? `${e.code}: ${e.message}` : errnoOrMessage(e);
}

function seconds(ms: number): string {
  return ms < 10_000 ? `${(ms / 1000).toFixed(1)}s` : `${Math.round(ms / 1000)}s`;
}
