import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join, resolve } from "node:path";
import { Readable, Writable } from "node:stream";
import { after, before, describe, test } from "node:test";
import { EXIT_BROKEN_PIPE, EXIT_CLIENT, EXIT_OK, EXIT_SERVER, EXIT_USAGE } from "../../src/cli/errors.js";
import { run } from "../../src/cli/index.js";
import { type CustosInstance, startCustos } from "../helpers/custos.js";
import { follow } from "../helpers/process.js";
import { waitFor } from "../helpers/wait.js";
import { runCli } from "./harness.js";

const BIN = resolve(import.meta.dirname, "../../bin/custos.js");

/**
 * The `custos` CLI as a user of Vault's or step's CLI meets it, second review: what
 * happens at the edges of files and pipes (a reader gone early, Ctrl-C, a directory,
 * a FIFO or the input itself as --out), tokens issued to an unwritable file, the
 * "byte for byte" promise of --from-file, nested help topics and local limits.
 * Oracles: a real server (read back through the API), the files on disk, exit
 * codes and the CLI's own other commands where they behave as documented.
 */
describe("custos CLI second review", () => {
  let custos: CustosInstance;
  let scratch: string;
  let plaintext: Buffer;
  let message: string;
  let env: NodeJS.ProcessEnv;
  let n = 0;
  const fresh = (): string => {
    const dir = join(scratch, `case-${++n}`);
    mkdirSync(dir);
    return dir;
  };
  const cli = (args: string[], stdin: string | Buffer = "") => runCli(args, env, stdin);
  /** bin/custos.js as a child whose streams the test holds. */
  const spawnCli = (args: string[], stdin: "pipe" | "ignore" = "ignore") =>
    follow(spawn(process.execPath, [BIN, ...args], { env, stdio: [stdin, "pipe", "pipe"] }));

  /** The CLI in process with a stdout that says it is a terminal. */
  async function runOnTerminal(args: string[], stdin = ""): Promise<{ code: number; stdout: Buffer; err: string }> {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const sink = (into: Buffer[]) =>
      new Writable({
        write(chunk: Buffer | string, _encoding, done) {
          into.push(Buffer.from(chunk));
          done();
        },
      });
    const stdout = Object.assign(sink(out), { isTTY: true });
    const code = await run(args, { stdin: Readable.from([Buffer.from(stdin)]), stdout, stderr: sink(err), env });
    return { code, stdout: Buffer.concat(out), err: Buffer.concat(err).toString("utf8") };
  }

  before(async () => {
    custos = await startCustos();
    scratch = join(custos.dir, "cli-second-review");
    mkdirSync(scratch);
    env = {
      ...custos.env,
      CUSTOS_ADDR: custos.url,
      CUSTOS_CACERT: join(custos.dir, "tls", "ca.pem"),
      CUSTOS_TOKEN: custos.adminToken,
      CUSTOS_TOKEN_FILE: "",
    };
    assert.equal(custos.cli(["key", "create", "files"]).status, EXIT_OK);
    // Twelve 256 KiB chunks: long enough that output is still flowing when a reader leaves.
    plaintext = randomBytes(3 * 1024 * 1024);
    writeFileSync(join(scratch, "plain.bin"), plaintext);
    message = join(scratch, "big.cenv");
    const r = custos.cli(["file", "encrypt", "--key", "files", "--in", join(scratch, "plain.bin"), "--out", message]);
    assert.equal(r.status, EXIT_OK, r.stderr);
  });
  after(async () => {
    await custos?.dispose();
  });

  test("file decrypt into a pipe whose reader left early is not reported as an internal server-class failure", async () => {
    const run = spawnCli(["file", "decrypt", "--in", message]);
    // Like `| head -c1`: take the first bytes, then close the reading end.
    await new Promise<void>((ok) => run.proc.stdout?.once("data", () => ok()));
    run.proc.stdout?.destroy();
    const code = await run.exited;
    assert.notEqual(code, EXIT_SERVER, run.stderr);
    assert.doesNotMatch(run.stderr, /internal|EPIPE|\n\s+at /, run.stderr);
    // What a shell reports for a process SIGPIPE ended, as `--help` lists it.
    assert.equal(code, EXIT_BROKEN_PIPE, run.stderr);
  });

  test("any command whose stdout reader has left ends quietly, as for SIGPIPE", async () => {
    const run = spawnCli(["key", "list"]);
    // Gone before the answer arrives: the first write meets a closed pipe.
    run.proc.stdout?.destroy();
    const code = await run.exited;
    assert.equal(code, EXIT_BROKEN_PIPE, run.stderr);
    assert.equal(run.stderr, "");
  });

  /** Feeds a decrypt --out part of the message, waits for plaintext to reach disk, then sends Ctrl-C. */
  async function interruptDecrypt(dest: string): Promise<number | null> {
    const run = spawnCli(["file", "decrypt", "--out", dest], "pipe");
    // The child dies with input still open: its pipe's EPIPE is expected, not a failure of the test.
    run.proc.stdin?.on("error", () => {});
    // The header and a little over two chunks: two chunks' plaintext is released, the rest never comes.
    run.proc.stdin?.write(readFileSync(message).subarray(0, 700_000));
    const dir = resolve(dest, "..");
    const partial = () => readdirSync(dir).filter((f) => f.endsWith(".part"));
    await waitFor("plaintext written beside the destination", () =>
      partial().some((f) => lstatSync(join(dir, f)).size > 0),
    );
    run.proc.kill("SIGINT");
    return run.exited;
  }

  test("Ctrl-C during file decrypt --out leaves an existing destination as it was", async () => {
    const dir = fresh();
    const dest = join(dir, "plain.out");
    writeFileSync(dest, "old contents");
    await interruptDecrypt(dest);
    assert.equal(readFileSync(dest, "utf8"), "old contents");
  });

  test("Ctrl-C during file decrypt --out leaves no partial plaintext beside the destination", async () => {
    const dir = fresh();
    const code = await interruptDecrypt(join(dir, "plain.out"));
    assert.deepEqual(readdirSync(dir), []);
    assert.equal(code, 130, "128 + SIGINT, as a shell reports a process Ctrl-C ended");
  });

  test("file decrypt of a truncated message with --out writes neither the destination nor a temporary file", async () => {
    const dir = fresh();
    const cut = join(scratch, "cut.cenv");
    writeFileSync(cut, readFileSync(message).subarray(0, 2_000_000));
    const r = await cli(["file", "decrypt", "--in", cut, "--out", join(dir, "plain.out")]);
    assert.equal(r.code, EXIT_CLIENT, r.err);
    assert.match(r.err, /^error: decryption_failed: /);
    assert.deepEqual(readdirSync(dir), []);
  });

  test("file encrypt and decrypt with --out naming the --in file replace it whole, in place", async () => {
    const file = join(fresh(), "in-place");
    writeFileSync(file, plaintext);
    const enc = await cli(["file", "encrypt", "--key", "files", "--in", file, "--out", file]);
    assert.equal(enc.code, EXIT_OK, enc.err);
    assert.notDeepEqual(readFileSync(file).subarray(0, 64), plaintext.subarray(0, 64));
    const dec = await cli(["file", "decrypt", "--in", file, "--out", file]);
    assert.equal(dec.code, EXIT_OK, dec.err);
    assert.ok(readFileSync(file).equals(plaintext));
  });

  test("file encrypt and decrypt --out naming a directory is an io_error (exit 1), as encrypt --out is", async () => {
    const dir = fresh();
    const target = join(dir, "a-directory");
    mkdirSync(target);
    const kms = await cli(["encrypt", "--key", "files", "--out", target], "x");
    assert.equal(kms.code, EXIT_CLIENT, "the oracle: the KMS command's answer");
    assert.match(kms.err, /^error: io_error: cannot write /);
    const enc = await cli(["file", "encrypt", "--key", "files", "--out", target], "x");
    assert.equal(enc.code, EXIT_CLIENT, enc.err);
    assert.match(enc.err, /^error: io_error: cannot write /);
    const dec = await cli(["file", "decrypt", "--in", message, "--out", target]);
    assert.equal(dec.code, EXIT_CLIENT, dec.err);
    assert.match(dec.err, /^error: io_error: cannot write /);
    assert.deepEqual(readdirSync(dir), ["a-directory"], "no temporary file left");
  });

  test("file decrypt --out onto a FIFO writes into it, as decrypt --out does, and leaves the FIFO a FIFO", async () => {
    const dir = fresh();
    const fifo = join(dir, "fifo");
    assert.equal(spawnSync("mkfifo", [fifo]).status, 0);
    const small = join(dir, "small.cenv");
    assert.equal(custos.cli(["file", "encrypt", "--key", "files", "--out", small], { input: "via fifo" }).status, 0);
    const reader = follow(spawn("cat", [fifo], { stdio: ["ignore", "pipe", "pipe"] }));
    try {
      const r = spawnSync(process.execPath, [BIN, "file", "decrypt", "--in", small, "--out", fifo], {
        env,
        timeout: 60_000,
      });
      assert.equal(r.status, EXIT_OK, r.stderr.toString());
      assert.ok(lstatSync(fifo).isFIFO(), "the FIFO was replaced by a regular file");
      await reader.exited;
      assert.equal(reader.stdout, "via fifo");
    } finally {
      reader.proc.kill();
    }
  });

  test("token create and login with a --token-file that can't be written leave no live token behind", async () => {
    const absent = join(scratch, "absent", "t");
    const r = await cli(["token", "create", "--name", "lost-token", "--token-file", absent]);
    assert.equal(r.code, EXIT_CLIENT, r.err);
    assert.match(r.err, /^error: io_error: cannot write /);
    const created = await cli(["user", "create", "operator", "--password-stdin"], "a-long-password-42\n");
    assert.equal(created.code, EXIT_OK, created.err);
    const login = await cli(["login", "operator", "--password-stdin", "--token-file", absent], "a-long-password-42\n");
    assert.equal(login.code, EXIT_CLIENT, login.err);
    // The admin works with API tokens only: any session on this server is the one that login made.
    const listed = await custos.call("GET", "/v1/auth/tokens");
    const tokens = (listed.body as { tokens: { name: string; kind: string; revokedAt?: string | null }[] }).tokens;
    const live = tokens.filter((t) => (t.name === "lost-token" || t.kind === "session") && !t.revokedAt);
    assert.deepEqual(live, [], "a token nobody holds is live on the server");
  });

  test("secret put --from-file stores the file byte for byte, or refuses it; it never alters the value", async () => {
    for (const args of [
      ["org", "create", "acme"],
      ["space", "create", "acme/dev"],
      ["app", "create", "acme/dev/web"],
    ]) {
      assert.equal((await cli(args)).code, EXIT_OK, args.join(" "));
    }
    const file = join(fresh(), "keytab");
    const bytes = Buffer.from([0x61, 0xff, 0xfe, 0x00, 0x80, 0x62, 0x0a]);
    writeFileSync(file, bytes);
    const put = await cli(["secret", "put", "acme/dev/web/keytab", "--from-file", file]);
    if (put.code !== EXIT_OK) {
      assert.equal(put.code, EXIT_USAGE, put.err);
      assert.ok(put.err.includes(file), `the refusal names the file: ${put.err}`);
      const read = await cli(["secret", "get", "acme/dev/web/keytab"]);
      assert.equal(read.code, EXIT_CLIENT, "nothing was stored");
      return;
    }
    const got = await cli(["secret", "get", "acme/dev/web/keytab", "--field", "value"]);
    assert.equal(got.code, EXIT_OK, got.err);
    assert.deepEqual(got.stdout, bytes);
  });

  test("custos help <group> <command> shows that command's help, and an unknown one exits 64", async () => {
    const direct = await cli(["key", "create", "--help"]);
    assert.equal(direct.code, EXIT_OK);
    const viaHelp = await cli(["help", "key", "create"]);
    assert.equal(viaHelp.code, EXIT_OK, viaHelp.err);
    assert.equal(viaHelp.out, direct.out);
    const nested = await cli(["key", "help", "lst"]);
    assert.equal(nested.code, EXIT_USAGE, "the oracle: the same topic asked one level down");
    const unknown = await cli(["help", "key", "lst"]);
    assert.equal(unknown.code, EXIT_USAGE, unknown.out);
    assert.match(unknown.err, /unknown command 'lst'/);
  });

  test("file encrypt --chunk-size beyond the format's 16 MiB is a usage error (64), not a refusal", async () => {
    const dir = fresh();
    const ok = await cli(["file", "encrypt", "--key", "files", "--chunk-size", "16777216", "--out", join(dir, "a")]);
    assert.equal(ok.code, EXIT_OK, ok.err);
    const r = await cli(["file", "encrypt", "--key", "files", "--chunk-size", "16777217", "--out", join(dir, "b")]);
    assert.equal(r.code, EXIT_USAGE, r.err);
    assert.match(r.err, /chunk/);
    assert.deepEqual(readdirSync(dir), ["a"]);
  });

  test("--context k=v=w binds key k to value v=w: the header shows it and only that context decrypts", async () => {
    const file = join(fresh(), "ctx.cenv");
    const enc = await cli(["file", "encrypt", "--key", "files", "--context", "k=v=w", "--out", file], "bound");
    assert.equal(enc.code, EXIT_OK, enc.err);
    const shown = await cli(["file", "inspect", "--in", file, "--json"]);
    assert.deepEqual((JSON.parse(shown.out) as { context: unknown }).context, { k: "v=w" });
    const right = await cli(["file", "decrypt", "--in", file, "--context", "k=v=w"]);
    assert.equal(right.out, "bound");
    const wrong = await cli(["file", "decrypt", "--in", file, "--context", "k=v"]);
    assert.equal(wrong.code, EXIT_CLIENT);
    assert.equal(wrong.out, "");
  });

  test("file encrypt, decrypt and inspect --in naming a directory is a usage error (64), as encrypt --in is", async () => {
    const dir = fresh();
    const kms = await cli(["encrypt", "--key", "files", "--in", dir]);
    assert.equal(kms.code, EXIT_USAGE, "the oracle: the KMS command's answer");
    for (const args of [
      ["file", "encrypt", "--key", "files", "--in", dir, "--out", join(scratch, "never.cenv")],
      ["file", "decrypt", "--in", dir],
      ["file", "inspect", "--in", dir],
    ]) {
      const r = await cli(args);
      assert.equal(r.code, EXIT_USAGE, `custos ${args.slice(0, 2).join(" ")}: ${r.err}`);
      assert.match(r.err, /^error: usage: cannot read /);
    }
  });

  test("file encrypt refuses to write the binary envelope to a terminal, as pki crl and ssh krl do", async () => {
    const crl = await runOnTerminal(["pki", "crl"]);
    assert.equal(crl.code, EXIT_USAGE, "the oracle: the CLI's rule for binary output");
    const r = await runOnTerminal(["file", "encrypt", "--key", "files"], "to the screen");
    assert.equal(r.code, EXIT_USAGE, r.err);
    assert.equal(r.stdout.length, 0);
    const rewrap = await runOnTerminal(["file", "rewrap"], "never read");
    assert.equal(rewrap.code, EXIT_USAGE, rewrap.err);
    assert.equal(rewrap.stdout.length, 0);
  });

  test("secret get with a misspelt --field is refused before the secret is read (no audited read)", async () => {
    assert.equal((await cli(["org", "create", "typo"])).code, EXIT_OK);
    assert.equal((await cli(["space", "create", "typo/dev"])).code, EXIT_OK);
    assert.equal((await cli(["app", "create", "typo/dev/web"])).code, EXIT_OK);
    assert.equal((await cli(["secret", "put", "typo/dev/web/pw"], "hunter2\n")).code, EXIT_OK);
    const reads = async (): Promise<number> => {
      const a = await custos.call("GET", "/v1/audit?action=secret.read&resource=secret/typo/dev/web/pw&limit=1000");
      return (a.body as { records: unknown[] }).records.length;
    };
    const before = await reads();
    const r = await cli(["secret", "get", "typo/dev/web/pw", "--field", "valeu"]);
    assert.equal(r.code, EXIT_USAGE, r.err);
    assert.equal(await reads(), before, "the typo reached the server as a secret read");
  });
  test("file encrypt --out accepts any name the file system accepts, as encrypt --out does (255 bytes)", async () => {
    const dir = fresh();
    const longest = join(dir, `${"n".repeat(250)}.cenv`);
    writeFileSync(longest, "the file system takes this name");
    const kms = await cli(["encrypt", "--key", "files", "--out", longest], "x");
    assert.equal(kms.code, EXIT_OK, "the oracle: the KMS command writes there");
    const r = await cli(["file", "encrypt", "--key", "files", "--out", longest], "long name");
    assert.equal(r.code, EXIT_OK, r.err);
    assert.equal((await cli(["file", "decrypt", "--in", longest])).out, "long name");
  });
  test("storage rewrap and file rewrap never print a file name's control characters raw to the terminal", async () => {
    const dir = fresh();
    assert.equal((await cli(["key", "create", "off-key"])).code, EXIT_OK);
    // An OSC sequence (set the window title) in a name, as anyone writing into a shared tree may choose.
    const hostile = join(dir, "f\u001b]0;owned\u0007.cenv");
    const enc = await cli(["file", "encrypt", "--key", "off-key", "--out", hostile], "x");
    assert.equal(enc.code, EXIT_OK, enc.err);
    assert.equal((await cli(["key", "disable", "off-key"])).code, EXIT_OK);
    for (const args of [
      ["storage", "rewrap", dir],
      ["file", "rewrap", hostile],
    ]) {
      const r = await cli(args);
      assert.equal(r.code, EXIT_CLIENT, r.err);
      assert.match(r.out, /key_disabled/, "the failure is named");
      const shown = r.out + r.err;
      assert.ok(
        !shown.includes("\u001b") && !shown.includes("\u0007"),
        `custos ${args[0]} rewrap: ${JSON.stringify(shown)}`,
      );
    }
  });
  test("--context __proto__=v binds that pair (or is refused); it is never dropped, leaving a context-free ciphertext", async () => {
    const enc = await cli(["encrypt", "--key", "files", "--context", "__proto__=bound"], "needs its context");
    if (enc.code !== EXIT_OK) {
      assert.equal(enc.code, EXIT_USAGE, enc.err);
      // Refused alike where the context goes into an envelope's header.
      const dir = fresh();
      const file = await cli([
        "file",
        "encrypt",
        "--key",
        "files",
        "--context",
        "__proto__=bound",
        "--out",
        join(dir, "p"),
      ]);
      assert.equal(file.code, EXIT_USAGE, file.err);
      assert.deepEqual(readdirSync(dir), []);
      return;
    }
    const bare = await cli(["decrypt", "--key", "files", enc.out.trim()]);
    assert.equal(bare.code, EXIT_CLIENT, "decrypted without the context it was encrypted with");
    assert.equal(bare.out, "");
    const file = join(fresh(), "proto.cenv");
    assert.equal(
      (await cli(["file", "encrypt", "--key", "files", "--context", "__proto__=bound", "--out", file])).code,
      0,
    );
    const shown = await cli(["file", "inspect", "--in", file, "--json"]);
    assert.equal(JSON.stringify((JSON.parse(shown.out) as { context: unknown }).context), '{"__proto__":"bound"}');
  });

  test("a token issued while its --token-file fails to take it is revoked, and the error says so", async (t) => {
    // Opens for writing like any file, and every write fails (ENOSPC): the failure comes after the request.
    if (!existsSync("/dev/full")) return t.skip("no /dev/full here");
    const r = await cli(["token", "create", "--name", "full-disk", "--token-file", "/dev/full"]);
    assert.equal(r.code, EXIT_CLIENT, r.err);
    assert.match(r.err, /^error: io_error: cannot write \/dev\/full: ENOSPC; token \S+ was revoked\n$/);
    const listed = await custos.call("GET", "/v1/auth/tokens");
    const tokens = (listed.body as { tokens: { name: string; revokedAt?: string | null }[] }).tokens;
    const issued = tokens.filter((x) => x.name === "full-disk");
    assert.equal(issued.length, 1);
    assert.ok(issued[0]?.revokedAt, "the token nobody holds is still live");
  });

  test("broker agent-token and register with a --token-file that can't be written issue nothing", async () => {
    for (const args of [
      ["org", "create", "brk"],
      ["space", "create", "brk/dev"],
      ["app", "create", "brk/dev/web"],
    ]) {
      assert.equal((await cli(args)).code, EXIT_OK, args.join(" "));
    }
    const absent = join(scratch, "absent", "t");
    const agent = await cli(["broker", "agent-token", "lost-agent", "--token-file", absent]);
    assert.equal(agent.code, EXIT_CLIENT, agent.err);
    assert.match(agent.err, /^error: io_error: cannot write /);
    const listed = await custos.call("GET", "/v1/auth/tokens");
    const tokens = (listed.body as { tokens: { name: string }[] }).tokens;
    assert.deepEqual(
      tokens.filter((x) => x.name === "lost-agent"),
      [],
    );
    const reg = await cli(["broker", "register", "brk/dev/web", "lost-1", "--token-file", absent]);
    assert.equal(reg.code, EXIT_CLIENT, reg.err);
    assert.match(reg.err, /^error: io_error: cannot write /);
    const shown = await cli(["broker", "instance", "lost-1"]);
    assert.equal(shown.code, EXIT_CLIENT, "the instance was registered");
  });

  test("encrypt --out onto a FIFO leaves the FIFO's mode as it was", async () => {
    const fifo = join(fresh(), "fifo");
    assert.equal(spawnSync("mkfifo", ["-m", "644", fifo]).status, 0);
    const reader = follow(spawn("cat", [fifo], { stdio: ["ignore", "pipe", "pipe"] }));
    try {
      const r = spawnSync(process.execPath, [BIN, "encrypt", "--key", "files", "--out", fifo], {
        env,
        input: "x",
        timeout: 60_000,
      });
      assert.equal(r.status, EXIT_OK, r.stderr.toString());
      await reader.exited;
      assert.match(reader.stdout, /^custos:v1:/);
      assert.equal(statSync(fifo).mode & 0o777, 0o644);
    } finally {
      reader.proc.kill();
    }
  });

  test("custos help takes a topic of any depth; a misspelt word at any depth exits 64", async () => {
    const direct = await cli(["pki", "role", "put", "--help"]);
    assert.equal(direct.code, EXIT_OK);
    const viaHelp = await cli(["help", "pki", "role", "put"]);
    assert.equal(viaHelp.code, EXIT_OK, viaHelp.err);
    assert.equal(viaHelp.out, direct.out);
    const oneDown = await cli(["pki", "help", "role", "put"]);
    assert.equal(oneDown.out, direct.out);
    const wrong = await cli(["help", "pki", "rol", "put"]);
    assert.equal(wrong.code, EXIT_USAGE);
    assert.match(wrong.err, /unknown command 'rol'/);
  });

  test("run --poll has one upper bound, whether in seconds or as a duration", async () => {
    for (const poll of ["86401", "1d1s", "100d"]) {
      const r = await cli(["run", "--instance", "i-1", "--poll", poll, "--", "true"]);
      assert.equal(r.code, EXIT_USAGE, `--poll ${poll}: ${r.err}`);
      assert.match(r.err, /--poll/);
    }
  });

  test("storage rewrap follows a symbolic link it is given to the directory, as it names the tree", async () => {
    const dir = fresh();
    const file = join(dir, "one.cenv");
    assert.equal((await cli(["file", "encrypt", "--key", "files", "--out", file], "x")).code, EXIT_OK);
    const link = join(scratch, `link-${n}`);
    symlinkSync(dir, link);
    const r = await cli(["--json", "storage", "rewrap", link]);
    assert.equal(r.code, EXIT_OK, r.err);
    assert.equal((JSON.parse(r.out) as { files: number }).files, 1);
  });

  test("storage rewrap into a pipe prints each progress line once", async () => {
    const dir = fresh();
    assert.equal((await cli(["file", "encrypt", "--key", "files", "--out", join(dir, "a.cenv")], "x")).code, EXIT_OK);
    const r = await cli(["storage", "rewrap", dir]);
    assert.equal(r.code, EXIT_OK, r.err);
    const lines = r.err.split("\n").filter((l) => l.startsWith("progress:"));
    assert.equal(lines.length, 1, r.err);
  });

  test("key show prints a signing key's public key as the PEM it is", async () => {
    assert.equal((await cli(["key", "create", "signer", "--purpose", "sign", "--algorithm", "ed25519"])).code, EXIT_OK);
    const r = await cli(["key", "show", "signer"]);
    assert.equal(r.code, EXIT_OK, r.err);
    assert.ok(!r.out.includes("\ufffd"), r.out);
    const json = await cli(["--json", "key", "show", "signer"]);
    const pem = (JSON.parse(json.out) as { versions: { publicKeyPem: string }[] }).versions[0]?.publicKeyPem ?? "";
    assert.match(pem, /^-----BEGIN PUBLIC KEY-----\n/);
    assert.ok(r.out.includes(pem), r.out);
  });
});
