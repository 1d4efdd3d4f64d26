import type { ChildProcess } from "node:child_process";

/** A child process started with piped stdout and stderr, and what it has written so far. */
export interface Running {
  readonly proc: ChildProcess;
  stdout: string;
  stderr: string;
  /** Its exit code (null when a signal ended it). */
  readonly exited: Promise<number | null>;
}

/** Follows `proc`: collects its output as text and settles `exited` when it ends. */
export function follow(proc: ChildProcess): Running {
  const running: Running = {
    proc,
    stdout: "",
    stderr: "",
    exited: new Promise((ok) => proc.once("exit", (code) => ok(code))),
  };
  proc.stdout?.on("data", (c: Buffer) => {
    running.stdout += c.toString("utf8");
  });
  proc.stderr?.on("data", (c: Buffer) => {
    running.stderr += c.toString("utf8");
  });
  return running;
}
