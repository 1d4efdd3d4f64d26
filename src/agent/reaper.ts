/**
 * Reaping for `custos run` as a container's PID 1. What the app starts and leaves
 * behind (a daemonising helper, a shell's background job) is re-parented to PID 1
 * when its parent ends, and once it ends too only PID 1 can collect its exit status:
 * until then it stays a zombie, holding a slot of the process table. Node has no call
 * that waits for a process it did not spawn, so this calls libc's waitpid through
 * koffi, an FFI.
 *
 * It must never collect a child Node spawned itself: libuv waits for its children by
 * pid, and one collected under it is never reported, so custos run would never learn
 * how the app ended. So zombies are found in /proc by pid, and the ones `owned`
 * claims are left to libuv.
 */
import { readdirSync, readFileSync } from "node:fs";

/** waitpid's "don't block" flag (the same on every Linux architecture). */
const WNOHANG = 1;

type WaitPid = (pid: number, status: number[], options: number) => number;

export interface Reaper {
  stop(): void;
}

/**
 * Starts reaping when this process is PID 1 on Linux (else there is nothing to do, and
 * undefined comes back): at once, and again at every SIGCHLD, which the kernel sends
 * PID 1 when an adopted process ends too.
 */
export async function startReaper(owned: (pid: number) => boolean, log: (message: string) => void) {
  if (process.platform !== "linux" || process.pid !== 1) return undefined;
  let waitpid: WaitPid;
  try {
    const { default: koffi } = await import("koffi");
    // null: the symbols already in the process (node's own libc, glibc or musl).
    waitpid = koffi.load(null).func("int waitpid(int pid, _Out_ int *status, int options)") as WaitPid;
  } catch (e) {
    log(`warning: orphans the app leaves will stay zombies: cannot load waitpid (${(e as Error).message})`);
    return undefined;
  }
  const sweep = (): void => {
    for (const pid of zombieChildren()) if (!owned(pid)) waitpid(pid, [0], WNOHANG);
  };
  process.on("SIGCHLD", sweep);
  sweep();
  return { stop: () => process.off("SIGCHLD", sweep) } satisfies Reaper;
}

/** This process's children that have ended and not been collected, read from /proc. */
export function zombieChildren(): number[] {
  const zombies: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return zombies;
  }
  for (const name of entries) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, "latin1");
    } catch {
      continue; // Gone since the listing.
    }
    // "pid (comm) state ppid …": comm may hold spaces and parentheses, so read after its last ")".
    const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (state === "Z" && Number(ppid) === process.pid) zombies.push(Number(name));
  }
  return zombies;
}
