import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { changedSecrets, renewalWait } from "../../src/agent/run.js";
import { Child, exitCodeOf } from "../../src/agent/run-child.js";
import { waitFor } from "../helpers/wait.js";

const node = process.execPath;
const spec = (command: string[], shell = false) => ({
  command,
  shell,
  stopGraceMs: 2000,
  searchPath: process.env.PATH,
});

describe("custos run's app process", () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "custos-run-child-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test("exit codes: the app's own, 128 + signal, 1 when neither is known", () => {
    assert.equal(exitCodeOf(0, null), 0);
    assert.equal(exitCodeOf(42, null), 42);
    assert.equal(exitCodeOf(null, "SIGKILL"), 137);
    assert.equal(exitCodeOf(null, "SIGTERM"), 143);
    assert.equal(exitCodeOf(null, null), 1);
  });

  test("the app's exit code and environment", async () => {
    const child = new Child(spec([node, "-e", "process.exit(Number(process.env.CODE))"]), () => {});
    child.start({ ...process.env, CODE: "23" });
    assert.equal(await child.exited, 23);
  });

  test("a bare command name is looked up in custos run's PATH, never in the app's", async () => {
    // The app's PATH (a secret may set it) names a directory holding its own "node".
    const decoy = join(dir, "decoy-bin");
    mkdirSync(decoy, { recursive: true });
    writeFileSync(join(decoy, "node"), "#!/bin/sh\nexit 99\n", { mode: 0o755 });
    const child = new Child(spec(["node", "-e", "process.exit(7)"]), () => {});
    child.start({ ...process.env, PATH: decoy });
    assert.equal(await child.exited, 7);

    const lines: string[] = [];
    const missing = new Child({ ...spec(["node", "-e", ""]), searchPath: join(dir, "empty-bin") }, (l) =>
      lines.push(l),
    );
    missing.start({ ...process.env, PATH: decoy });
    assert.equal(await missing.exited, 127);
    assert.match(lines.join("\n"), /cannot start node: ENOENT/);
  });

  test("a command that doesn't exist ends with 127 and says so, and is never said to have started", async () => {
    const lines: string[] = [];
    const child = new Child(spec([join(dir, "no-such-command")]), (l) => lines.push(l));
    let started = 0;
    child.start(process.env, () => started++);
    assert.equal(await child.exited, 127);
    assert.match(lines.join("\n"), /cannot start .*no-such-command: ENOENT/);
    assert.equal(started, 0);

    const running = new Child(spec([node, "-e", ""]), () => {});
    running.start(process.env, () => started++);
    assert.equal(await running.exited, 0);
    assert.equal(started, 1);
  });

  test("--shell runs the words through /bin/sh -c", async () => {
    const child = new Child(spec(["exit", "$((6*7))"], true), () => {});
    child.start(process.env);
    assert.equal(await child.exited, 42);
  });

  test("signals reach the app; a forwarded SIGTERM ends it", async () => {
    const hups = join(dir, "hups");
    const ready = join(dir, "ready");
    const script = `const fs = require("node:fs");
      process.on("SIGHUP", () => fs.appendFileSync(${JSON.stringify(hups)}, "hup\\n"));
      fs.writeFileSync(${JSON.stringify(ready)}, "");
      setInterval(() => {}, 1000);`;
    const child = new Child(spec([node, "-e", script]), () => {});
    child.start(process.env);
    await waitFor("the app", () => existsSync(ready));
    assert.equal(child.signal("SIGHUP"), true);
    await waitFor("the SIGHUP", () => existsSync(hups));
    child.forward("SIGTERM");
    assert.equal(await child.exited, 143);
    assert.equal(child.signal("SIGHUP"), false, "no app left to signal");
    assert.equal(readFileSync(hups, "utf8"), "hup\n");
  });

  test("restart: the old app stops, a new one starts with the new environment, exited waits for the last", async () => {
    const log = join(dir, "restarts");
    const script = `require("node:fs").appendFileSync(${JSON.stringify(log)}, process.env.GEN + "\\n");
      process.on("SIGTERM", () => process.exit(0)); setInterval(() => {}, 1000);`;
    const lines = (): string[] => (existsSync(log) ? readFileSync(log, "utf8").trim().split("\n") : []);
    const child = new Child(spec([node, "-e", script]), () => {});
    child.start({ ...process.env, GEN: "1" });
    await waitFor("the first app", () => lines().length === 1);
    const first = child.pid;
    await child.restart({ ...process.env, GEN: "2" });
    await waitFor("the second app", () => lines().length === 2);
    assert.deepEqual(lines(), ["1", "2"]);
    assert.notEqual(child.pid, first);
    child.forward("SIGINT");
    assert.equal(await child.exited, 130);
  });

  test("an environment spawn refuses (a NUL in a value) ends the start with 126; the log names no value", async () => {
    const lines: string[] = [];
    const child = new Child(spec([node, "-e", "process.exit(0)"]), (l) => lines.push(l));
    assert.equal(child.start({ ...process.env, TOKEN: "refused-value\u0000tail" }), false);
    assert.equal(await child.exited, 126);
    assert.deepEqual(lines, [`cannot start ${node}: ERR_INVALID_ARG_VALUE`]);
  });

  test("a restart whose new start fails ends the run: exited settles instead of waiting with no app", async () => {
    const ready = join(dir, "before-failed-restart");
    const script = `require("node:fs").writeFileSync(${JSON.stringify(ready)}, "");
      process.on("SIGTERM", () => process.exit(0)); setInterval(() => {}, 1000);`;
    const lines: string[] = [];
    const child = new Child(spec([node, "-e", script]), (l) => lines.push(l));
    child.start(process.env);
    await waitFor("the app", () => existsSync(ready));
    const first = child.pid as number;
    await child.restart({ ...process.env, TOKEN: "refused-value\u0000tail" });
    assert.equal(await child.exited, 126);
    assert.equal(child.pid, undefined);
    assert.throws(() => process.kill(first, 0), { code: "ESRCH" }, "the old app was stopped");
    assert.ok(!lines.join("\n").includes("refused-value"), lines.join("\n"));
  });

  test("USR1, USR2 and WINCH pass on without ending anything: a restart still follows", async () => {
    const notes = join(dir, "user-signals");
    const script = `const fs = require("node:fs"); const note = (t) => fs.appendFileSync(${JSON.stringify(notes)}, t + "\\n");
      for (const s of ["SIGUSR1", "SIGUSR2", "SIGWINCH"]) process.on(s, () => note(s));
      process.on("SIGQUIT", () => process.exit(5)); note("start"); setInterval(() => {}, 1000);`;
    const lines = (): string[] => (existsSync(notes) ? readFileSync(notes, "utf8").trim().split("\n") : []);
    const child = new Child(spec([node, "-e", script]), () => {});
    child.start(process.env);
    await waitFor("the app", () => lines().includes("start"));
    for (const s of ["SIGUSR1", "SIGUSR2", "SIGWINCH"] as const) {
      child.forward(s);
      await waitFor(s, () => lines().includes(s));
    }
    const first = child.pid;
    await child.restart(process.env);
    assert.notEqual(child.pid, first, "a user signal is no reason to stop restarting");
    await waitFor("the second app", () => lines().filter((l) => l === "start").length === 2);
    child.forward("SIGQUIT");
    assert.equal(await child.exited, 5);
  });

  test("an app that ignores SIGTERM is killed after the grace period on restart", async () => {
    const ready = join(dir, "stubborn");
    const script = `process.on("SIGTERM", () => {}); require("node:fs").writeFileSync(${JSON.stringify(ready)}, "");
      setInterval(() => {}, 1000);`;
    const child = new Child({ ...spec([node, "-e", script]), stopGraceMs: 300 }, () => {});
    child.start(process.env);
    await waitFor("the app", () => existsSync(ready));
    const first = child.pid;
    rmSync(ready);
    await child.restart(process.env);
    assert.notEqual(child.pid, first);
    await waitFor("the second app", () => existsSync(ready));
    child.signal("SIGKILL");
    assert.equal(await child.exited, 137);
  });
});

describe("custos run's schedule and change detection", () => {
  const secret = (path: string, version: number, value: string) => ({ path, name: path, version, value });

  test("renewal at renewAt, but never sooner than a quarter of the remaining life", () => {
    const now = Date.parse("2030-01-01T00:00:00Z");
    const at = (s: number) => new Date(now + s * 1000);
    assert.equal(renewalWait({ renewAt: at(1800), notAfter: at(3600) }, now), 1_800_000);
    assert.equal(renewalWait({ renewAt: at(-5), notAfter: at(60) }, now), 15_000);
    assert.equal(renewalWait({ renewAt: at(0), notAfter: at(0) }, now), 0);
  });

  test("changes: added, removed, new version, same version with another value; order-insensitive", () => {
    const before = [secret("a", 1, "x"), secret("b", 1, "y"), secret("c", 2, "z")];
    assert.deepEqual(changedSecrets(before, [...before].reverse()), []);
    assert.deepEqual(changedSecrets(before, [secret("a", 2, "x2"), secret("b", 1, "y-changed"), secret("d", 1, "w")]), [
      "a",
      "b",
      "c",
      "d",
    ]);
  });
});
