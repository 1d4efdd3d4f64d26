/**
 * The app `custos run` starts: spawned with the terminal's stdio in a process group
 * of its own, told about changes by a signal or restarted, sent (with everything in
 * its group) the signals `custos run` itself receives, and its end turned into an
 * exit code (its own, or 128 + the signal that killed it).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { accessSync, closeSync, existsSync, constants as files, openSync, statSync } from "node:fs";
import { constants } from "node:os";
import { join } from "node:path";

/** How the app is started. */
export interface ChildSpec {
  /** The command and its arguments; with `shell`, joined by spaces and run by /bin/sh -c. */
  readonly command: readonly string[];
  readonly shell: boolean;
  /**
   * Where a command named without a `/` is looked up: `custos run`'s own PATH. Not
   * the app's: a secret may set that one, and must not choose the program.
   */
  readonly searchPath: string | undefined;
  /** How long a restart waits after SIGTERM before SIGKILL. */
  readonly stopGraceMs: number;
}

type Log = (message: string) => void;

/** Signals that, passed on, mean the app is to end: it is not restarted after them. */
const TERMINATING: ReadonlySet<NodeJS.Signals> = new Set(["SIGINT", "SIGQUIT", "SIGTERM"]);

/** The exit code a shell would give for a process that ended with `code` or was killed by `signal`. */
export function exitCodeOf(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  if (signal !== null) return 128 + (constants.signals[signal] ?? 0);
  return 1;
}

/** One app process at a time: started, signalled, restarted; `exited` settles when it ends for good. */
export class Child {
  readonly #spec: ChildSpec;
  readonly #log: Log;
  #process: ChildProcess | undefined;
  #restarting = false;
  #stopping: NodeJS.Signals | undefined;
  #settle: ((code: number) => void) | undefined;
  /** The exit code once the app has ended and won't be restarted. */
  readonly exited: Promise<number>;

  constructor(spec: ChildSpec, log: Log) {
    if (spec.command.length === 0) throw new Error("no command to run");
    this.#spec = spec;
    this.#log = log;
    this.exited = new Promise((resolve) => {
      this.#settle = resolve;
    });
  }

  /** The running process's id, if one runs. */
  get pid(): number | undefined {
    return this.#process?.exitCode === null ? this.#process.pid : undefined;
  }

  /** Whether `pid` is an app process whose end libuv has not yet reported (it alone may collect it). */
  owns(pid: number): boolean {
    return this.#process?.pid === pid;
  }

  /**
   * Starts the app with `env`, calling `started` once it runs; false if spawn
   * refused at once. A failure to start ends the run (`exited` settles with 127 or
   * 126, as a shell would say), on a restart too.
   */
  start(env: NodeJS.ProcessEnv, started?: () => void): boolean {
    const [name, ...args] = this.#spec.shell ? ["/bin/sh", "-c", this.#spec.command.join(" ")] : this.#spec.command;
    const file = commandFile(name as string, this.#spec.searchPath);
    if (file === undefined) {
      this.#process = undefined;
      this.#log(notFound(name as string));
      this.#settle?.(127);
      return false;
    }
    let child: ChildProcess;
    try {
      // Without a terminal, the app leads a process group of its own (a session: setsid), so a signal at custos
      // run's group reaches the app once, forwarded, not twice, and a forwarded one reaches what the app started.
      // At a terminal it stays in custos run's group: a new session would lose the terminal (/dev/tty, prompts).
      child = spawn(file, args, { env, stdio: "inherit", detached: !hasTerminal() });
    } catch (e) {
      // spawn checks its arguments synchronously, and its message quotes the one it
      // refuses, which can be a secret from `env`: only the code is said.
      this.#process = undefined;
      this.#log(`cannot start ${file}: ${codeOf(e)}`);
      this.#settle?.(126);
      return false;
    }
    this.#process = child;
    let ended = false;
    const end = (code: number): void => {
      if (ended) return;
      ended = true;
      if (this.#process === child) this.#process = undefined;
      if (!this.#restarting) this.#settle?.(code);
    };
    child.on("error", (e: NodeJS.ErrnoException) => {
      // Only a failure to start reaches here with no exit to follow; 127/126 as a shell would say.
      if (child.pid !== undefined) return;
      this.#log(`cannot start ${file}: ${e.code ?? e.message}`);
      end(e.code === "ENOENT" ? 127 : 126);
    });
    child.once("exit", (code, signal) => end(exitCodeOf(code, signal)));
    if (started) child.once("spawn", started);
    return true;
  }

  /** Sends `signal` to the app if it runs; false when there was none to send it to. */
  signal(signal: NodeJS.Signals): boolean {
    const child = this.#process;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return false;
    return signalGroup(child, signal);
  }

  /**
   * Passes on a signal `custos run` received. A terminating one (INT, QUIT, TERM)
   * also means "don't restart": if it arrives while no app runs (mid-restart), the
   * run ends with 128 + signal. Others (HUP, USR1, USR2, WINCH) only pass.
   */
  forward(signal: NodeJS.Signals): void {
    if (TERMINATING.has(signal)) this.#stopping = signal;
    if (!this.signal(signal) && this.#stopping !== undefined) this.#settle?.(exitCodeOf(null, this.#stopping));
  }

  /** Stops the app (SIGTERM, then SIGKILL after the grace period) and starts it again with `env`. */
  async restart(env: NodeJS.ProcessEnv): Promise<void> {
    if (this.#restarting || this.#stopping !== undefined) return;
    const child = this.#process;
    if (child === undefined) return;
    this.#restarting = true;
    try {
      await stop(child, this.#spec.stopGraceMs);
      if (this.#stopping !== undefined) {
        this.#settle?.(exitCodeOf(null, this.#stopping));
        return;
      }
      this.start(env);
    } finally {
      this.#restarting = false;
    }
  }
}

/** An error's code (`ERR_INVALID_ARG_VALUE`, `EACCES`), never its message. */
function codeOf(e: unknown): string {
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code === "string") return code;
  return e instanceof Error ? e.name : "unknown error";
}

/** SIGTERM, and SIGKILL if it hasn't exited within `graceMs`; resolves once it has exited. */
function stop(child: ChildProcess, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve();
      return;
    }
    const timer = setTimeout(() => signalGroup(child, "SIGKILL"), graceMs);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    signalGroup(child, "SIGTERM");
  });
}

/** Sends `signal` to the app and, where it leads a group of its own, whatever it started that stayed in it. */
function signalGroup(child: ChildProcess, signal: NodeJS.Signals): boolean {
  if (child.pid === undefined) return false;
  try {
    if (hasTerminal()) return child.kill(signal);
    process.kill(-child.pid, signal);
    return true;
  } catch {
    return false;
  }
}

let terminal: boolean | undefined;

/** Whether custos run has a controlling terminal (only then does opening /dev/tty succeed); asked once, at the first start. */
function hasTerminal(): boolean {
  if (terminal === undefined) {
    try {
      closeSync(openSync("/dev/tty", "r"));
      terminal = true;
    } catch {
      terminal = false;
    }
  }
  return terminal;
}

/**
 * Why `spec`'s program can't be started, if it can't be found: asked before the
 * exchange too, where a typo would otherwise spend the one-time token.
 */
export function missingProgram(spec: Pick<ChildSpec, "command" | "shell" | "searchPath">): string | undefined {
  const name = spec.shell ? "/bin/sh" : (spec.command[0] ?? "");
  return commandFile(name, spec.searchPath) === undefined ? notFound(name) : undefined;
}

function notFound(name: string): string {
  return name.includes("/")
    ? `cannot start ${name}: ENOENT`
    : `cannot start ${name}: ENOENT (not found in custos run's PATH)`;
}

/**
 * The executable `name` names: itself when it holds a `/` and exists (whether it may
 * be run, spawn finds out), else the first match along `searchPath`.
 */
function commandFile(name: string, searchPath: string | undefined): string | undefined {
  if (name.includes("/")) return existsSync(name) ? name : undefined;
  for (const dir of (searchPath ?? "").split(":")) {
    // An empty entry is the working directory, as execvp reads it.
    const candidate = join(dir === "" ? "." : dir, name);
    try {
      accessSync(candidate, files.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // Not here: the next directory.
    }
  }
  return undefined;
}
