/**
 * The app `custos run` starts: spawned with the terminal's stdio, told about
 * changes by a signal or restarted, sent the signals `custos run` itself receives,
 * and its end turned into an exit code (its own, or 128 + the signal that killed it).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { constants } from "node:os";

/** How the app is started. */
export interface ChildSpec {
  /** The command and its arguments; with `shell`, joined by spaces and run by /bin/sh -c. */
  readonly command: readonly string[];
  readonly shell: boolean;
  /** How long a restart waits after SIGTERM before SIGKILL. */
  readonly stopGraceMs: number;
}

type Log = (message: string) => void;

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

  /** Starts the app with `env`. */
  start(env: NodeJS.ProcessEnv): void {
    const [file, ...args] = this.#spec.shell ? ["/bin/sh", "-c", this.#spec.command.join(" ")] : this.#spec.command;
    const child = spawn(file as string, args, { env, stdio: "inherit" });
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
  }

  /** Sends `signal` to the app if it runs; false when there was none to send it to. */
  signal(signal: NodeJS.Signals): boolean {
    const child = this.#process;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return false;
    try {
      return child.kill(signal);
    } catch {
      return false;
    }
  }

  /**
   * Passes on a signal `custos run` received. A terminating one also means "don't
   * restart": if it arrives while no app runs (mid-restart), the run ends with 128 + signal.
   */
  forward(signal: NodeJS.Signals): void {
    if (signal !== "SIGHUP") this.#stopping = signal;
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

/** SIGTERM, and SIGKILL if it hasn't exited within `graceMs`; resolves once it has exited. */
function stop(child: ChildProcess, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve();
      return;
    }
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill("SIGTERM");
  });
}
