import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  chmodSync,
  chownSync,
  closeSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Readable, Writable } from "node:stream";
import { after, before, describe, test } from "node:test";
import type { Command } from "commander";
import { CliContext } from "../../src/cli/context.js";
import { EXIT_CLIENT, EXIT_OK, EXIT_SERVER, EXIT_USAGE } from "../../src/cli/errors.js";
import { buildProgram } from "../../src/cli/index.js";
import { type CustosInstance, startCustos } from "../helpers/custos.js";
import { freePort } from "../helpers/ports.js";
import { foreignCa, runCli } from "./harness.js";

const BIN = resolve(import.meta.dirname, "../../bin/custos.js");
const NOBODY = 65534;
const TAG = 16;

/** The header of an envelope message, read as docs/envelope-format.md lays it out (not through src/). */
function docHeader(message: Buffer): {
  keyName: string;
  keyVersion: number;
  wrapped: string;
  context: Record<string, string>;
  chunkSize: number;
  length: number;
} {
  let at = 0;
  const take = (n: number): Buffer => {
    assert.ok(at + n <= message.length, "the header runs past the message");
    at += n;
    return message.subarray(at - n, at);
  };
  assert.equal(take(9).toString("latin1"), "CUSTENV\x01\x01", "magic, format version 1, suite 1");
  const keyName = take(take(2).readUInt16BE(0)).toString("latin1");
  const context: Record<string, string> = {};
  const count = take(4).readUInt32BE(0);
  for (let i = 0; i < count; i++) {
    const key = take(take(4).readUInt32BE(0)).toString("utf8");
    context[key] = take(take(4).readUInt32BE(0)).toString("utf8");
  }
  const chunkSize = take(4).readUInt32BE(0);
  take(7 + 32 + 32 + 32); // nonce prefix, message id, commitment, header MAC
  const keyVersion = take(4).readUInt32BE(0);
  const wrapped = take(take(2).readUInt16BE(0)).toString("latin1");
  return { keyName, keyVersion, wrapped, context, chunkSize, length: at };
}

const sha256 = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

/** Every name under `dir`, recursively, sorted (temporary files show up here). */
const listing = (dir: string): string[] => readdirSync(dir, { recursive: true }).map(String).sort();

/** The plaintext 0x00..0xff repeated to `length` bytes: every byte value, so a text conversion would show. */
function everyByte(length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = i & 0xff;
  return b;
}

/**
 * The `custos` CLI as a user of Vault's or step's CLI meets it, third review: the help of every command,
 * usage errors in the `file` and `storage` commands (named, exit 64, nothing sent), unusable CUSTOS_TOKEN_FILE
 * and CUSTOS_CACERT, real process-to-process pipes, output written through symbolic links and onto a full
 * device, `file inspect` of what is not an envelope, `file rewrap` naming one file twice, and `storage rewrap`
 * as an unprivileged user, with a leftover temporary file, with a Custos that is down or not trusted, and rerun
 * with nothing to do. Oracles: docs/envelope-format.md read here, the file system (bytes, inodes, modes), the
 * audit log read from the database, the server's log, sha256 of what went in and out, and the CLI's own other
 * commands where they behave as documented. What the first two CLI reviews and the envelope reviews pin is
 * not repeated.
 */
describe("custos CLI third review", () => {
  let custos: CustosInstance;
  let scratch: string;
  let caFile: string;
  /** The environment of a spawned `custos` (the server's, so SoftHSM and PATH are there), as the admin. */
  let spawnEnv: NodeJS.ProcessEnv;
  let n = 0;
  const fresh = (): string => {
    const dir = join(scratch, `case-${++n}`);
    mkdirSync(dir);
    return dir;
  };
  /** The CLI in process as the admin; `env` replaces what it names. */
  const cli = (args: string[], stdin: string | Buffer = "", env: NodeJS.ProcessEnv = {}) =>
    runCli(
      args,
      {
        CUSTOS_ADDR: custos.url,
        CUSTOS_CACERT: caFile,
        CUSTOS_TOKEN: custos.adminToken,
        CUSTOS_TOKEN_FILE: "",
        ...env,
      },
      stdin,
    );
  const ok = async (args: string[], stdin: string | Buffer = "") => {
    const r = await cli(args, stdin);
    assert.equal(r.code, EXIT_OK, `custos ${args.join(" ")}: ${r.err}`);
    return r;
  };
  /** Audit records of KMS requests: what reached the server. */
  const kmsRequests = (): number =>
    custos.query<{ n: number }>("SELECT count(*) AS n FROM audit_log WHERE action LIKE 'key.%'")[0]?.n ?? -1;
  /** An envelope message of `plaintext` under `key`, written to `path` by the CLI. */
  const encryptTo = async (path: string, plaintext: Buffer | string, key = "files", extra: string[] = []) => {
    await ok(["file", "encrypt", "--key", key, "--out", path, ...extra], plaintext);
  };
  const versionOf = (path: string): number => docHeader(readFileSync(path)).keyVersion;
  const latest = async (key = "files"): Promise<number> =>
    (JSON.parse((await ok(["--json", "key", "show", key])).out) as { latestVersion: number }).latestVersion;

  before(async () => {
    custos = await startCustos();
    scratch = join(custos.dir, "cli-third-review");
    mkdirSync(scratch);
    caFile = join(custos.dir, "tls", "ca.pem");
    spawnEnv = {
      ...custos.env,
      CUSTOS_ADDR: custos.url,
      CUSTOS_CACERT: caFile,
      CUSTOS_TOKEN: custos.adminToken,
      CUSTOS_TOKEN_FILE: "",
    };
    for (const name of ["files", "spare"]) await ok(["key", "create", name]);
  });
  after(async () => {
    await custos?.dispose();
  });

  test("every command's --help and `help <command>` exit 0 with its usage on stdout and nothing on stderr", async () => {
    const io = {
      stdin: Readable.from([]),
      stdout: new Writable({ write: (_c, _e, d) => d() }),
      stderr: new Writable({ write: (_c, _e, d) => d() }),
      env: {},
    };
    const paths: string[][] = [];
    const walk = (command: Command, prefix: string[]): void => {
      for (const sub of command.commands) {
        const path = [...prefix, sub.name()];
        paths.push(path);
        walk(sub, path);
      }
    };
    walk(buildProgram(new CliContext(io)), []);
    assert.ok(paths.length > 100, `only ${paths.length} commands found`);
    for (const path of [
      ["file", "encrypt"],
      ["file", "decrypt"],
      ["file", "inspect"],
      ["file", "rewrap"],
    ]) {
      assert.ok(
        paths.some((p) => p.join(" ") === path.join(" ")),
        path.join(" "),
      );
    }
    assert.ok(paths.some((p) => p.join(" ") === "storage rewrap"));
    for (const path of paths) {
      for (const args of [
        [...path, "--help"],
        ["help", ...path],
      ]) {
        // No token, no address: help never needs the server.
        const r = await runCli(args, {});
        const shown = `custos ${args.join(" ")}`;
        assert.equal(r.code, EXIT_OK, `${shown}: ${r.err}`);
        assert.equal(r.err, "", shown);
        assert.ok(r.out.startsWith(`Usage: custos ${path.join(" ")}`), `${shown}: ${r.out.slice(0, 80)}`);
      }
    }
    const top = await runCli(["--help"], {});
    for (const documented of ["0 done", "1 refused", "2 server failure or unreachable", "64 usage error"]) {
      assert.ok(top.out.replace(/\s+/g, " ").includes(documented), documented);
    }
  });

  test("usage errors of the file and storage commands: exit 64 naming what is wrong, nothing on stdout, nothing sent", async () => {
    const dir = fresh();
    const message = join(dir, "m.cenv");
    await encryptTo(message, "some data");
    const aFile = join(dir, "plain.txt");
    writeFileSync(aFile, "not a directory");
    const cases: [string[], RegExp][] = [
      [["storage", "rewrap"], /missing required argument 'dir'/],
      [["storage", "rewrap", dir, dir], /too many arguments/],
      [["storage", "rewrap", dir, "--batch", "0"], /--batch/],
      [["storage", "rewrap", dir, "--batch", "1001"], /--batch/],
      [["storage", "rewrap", dir, "--batch", "1.5"], /--batch/],
      [["storage", "rewrap", dir, "--batch", "many"], /--batch/],
      [["storage", "rewrap", dir, "--batch"], /--batch/],
      [["storage", "rewrap", join(dir, "absent")], /cannot read .*absent: ENOENT/],
      [["storage", "rewrap", aFile], /plain\.txt is not a directory/],
      [["storage", "frobnicate"], /unknown command 'frobnicate'/],
      [["file", "frobnicate"], /unknown command 'frobnicate'/],
      [["file", "encrypt"], /required option '--key <name>'/],
      [["file", "encrypt", "--key", "files", "--context", "novalue"], /--context/],
      [["file", "encrypt", "--key", "files", "--out"], /--out/],
      [["file", "decrypt", "--in", message, "--offset", "-1"], /--offset/],
      [["file", "decrypt", "--in", message, "--length", "ten"], /--length/],
      [["file", "decrypt", "--offset", "1"], /--in FILE/],
      [["file", "inspect", message], /too many arguments/],
      [["file", "rewrap", message, "--bogus"], /unknown option '--bogus'/],
    ];
    const sent = kmsRequests();
    for (const [args, says] of cases) {
      const r = await cli(args, "stdin data");
      const shown = `custos ${args.join(" ")}`;
      assert.equal(r.code, EXIT_USAGE, `${shown}: ${r.err}`);
      assert.equal(r.out, "", shown);
      assert.match(r.err, /^error: /, shown);
      assert.match(r.err, says, shown);
    }
    // A group without its command: the group's help, as a diagnostic.
    for (const group of ["file", "storage"]) {
      const r = await cli([group]);
      assert.equal(r.code, EXIT_USAGE, group);
      assert.equal(r.out, "", group);
      assert.match(r.err, new RegExp(`^Usage: custos ${group}`), group);
    }
    assert.equal(kmsRequests(), sent, "a bad invocation reaches no KMS endpoint");
    assert.deepEqual(listing(dir), ["m.cenv", "plain.txt"]);
  });

  test("a CUSTOS_TOKEN_FILE or CUSTOS_CACERT that can't be used: exit 64 naming the variable, no output file, nothing sent", async (t) => {
    const dir = fresh();
    const emptyToken = join(dir, "empty.token");
    writeFileSync(emptyToken, "", { mode: 0o600 });
    const blankToken = join(dir, "blank.token");
    writeFileSync(blankToken, " \n\t\n", { mode: 0o600 });
    const emptyCa = join(dir, "empty.pem");
    writeFileSync(emptyCa, "");
    const out = join(dir, "out.cenv");
    const cases: [NodeJS.ProcessEnv, RegExp][] = [
      [
        { CUSTOS_TOKEN: "", CUSTOS_TOKEN_FILE: emptyToken },
        /^error: invalid_config: CUSTOS_TOKEN_FILE .*empty\.token is empty/,
      ],
      [
        { CUSTOS_TOKEN: "", CUSTOS_TOKEN_FILE: blankToken },
        /^error: invalid_config: CUSTOS_TOKEN_FILE .*blank\.token is empty/,
      ],
      [
        { CUSTOS_TOKEN: "", CUSTOS_TOKEN_FILE: dir },
        /^error: invalid_config: cannot read CUSTOS_TOKEN_FILE .*: EISDIR/,
      ],
      [{ CUSTOS_CACERT: emptyCa }, /^error: invalid_config: CUSTOS_CACERT .*empty\.pem holds no PEM certificate/],
      [{ CUSTOS_CACERT: dir }, /^error: invalid_config: cannot read CUSTOS_CACERT .*: EISDIR/],
    ];
    const sent = kmsRequests();
    for (const [env, says] of cases) {
      const r = await cli(["file", "encrypt", "--key", "files", "--out", out], "plaintext", env);
      assert.equal(r.code, EXIT_USAGE, `${JSON.stringify(env)}: ${r.err}`);
      assert.equal(r.out, "");
      assert.match(r.err, says);
      assert.ok(!r.err.includes(custos.adminToken), "the token is never echoed");
    }
    assert.equal(kmsRequests(), sent);
    assert.deepEqual(
      listing(dir).filter((f) => f.includes("out")),
      [],
      "no output and no part file",
    );
    // CUSTOS_TOKEN comes first: a broken file beside it is never read.
    const both = await cli(["file", "encrypt", "--key", "files", "--out", out], "plaintext", {
      CUSTOS_TOKEN_FILE: emptyToken,
    });
    assert.equal(both.code, EXIT_OK, both.err);
    assert.equal(docHeader(readFileSync(out)).keyName, "files");

    if (process.getuid?.() !== 0) return t.skip("needs root to run the CLI as another user");
    // A token file its reader may not read (root's, 0600), in a directory anyone may enter.
    const open = mkdtempSync(join(tmpdir(), "custos-cli3-"));
    try {
      chmodSync(open, 0o755);
      const token = join(open, "root.token");
      writeFileSync(token, `${custos.adminToken}\n`, { mode: 0o600 });
      const ca = join(open, "ca.pem");
      copyFileSync(caFile, ca);
      chmodSync(ca, 0o644);
      const r = spawnSync(process.execPath, [BIN, "key", "list"], {
        env: {
          PATH: process.env.PATH,
          HOME: open,
          CUSTOS_ADDR: custos.url,
          CUSTOS_CACERT: ca,
          CUSTOS_TOKEN_FILE: token,
        },
        uid: NOBODY,
        gid: NOBODY,
        encoding: "utf8",
        timeout: 120_000,
      });
      assert.equal(r.status, EXIT_USAGE, r.stderr);
      assert.equal(r.stdout, "");
      assert.match(r.stderr, /^error: invalid_config: cannot read CUSTOS_TOKEN_FILE .*root\.token: EACCES\n$/);
    } finally {
      rmSync(open, { recursive: true, force: true });
    }
  });

  test("file encrypt | file rewrap | file decrypt between real processes: 24 MiB + 1 of every byte value, byte for byte", async () => {
    const chunk = 262_144;
    const plaintext = everyByte(24 * 1024 * 1024 + 1);
    await ok(["key", "rotate", "files"]);
    const spawnCli = (args: string[]) => spawn(process.execPath, [BIN, ...args], { env: spawnEnv });
    const enc = spawnCli(["file", "encrypt", "--key", "files", "--context", "pipe=yes"]);
    const rewrap = spawnCli(["file", "rewrap"]);
    const dec = spawnCli(["file", "decrypt", "--context", "pipe=yes"]);
    const errors = ["", "", ""];
    [enc, rewrap, dec].forEach((p, i) => {
      p.stderr?.on("data", (c: Buffer) => {
        errors[i] += c.toString();
      });
    });
    // The message as it passes between the processes, for its size and header.
    const between: Buffer[] = [];
    enc.stdout?.on("data", (c: Buffer) => between.push(c));
    enc.stdout?.pipe(rewrap.stdin as Writable);
    rewrap.stdout?.pipe(dec.stdin as Writable);
    const hash = createHash("sha256");
    let outBytes = 0;
    dec.stdout?.on("data", (c: Buffer) => {
      hash.update(c);
      outBytes += c.length;
    });
    const exits = [enc, rewrap, dec].map((p) => new Promise<number | null>((ok) => p.once("close", ok)));
    Readable.from([plaintext]).pipe(enc.stdin as Writable);
    assert.deepEqual(await Promise.all(exits), [0, 0, 0], errors.join("\n"));
    assert.deepEqual(errors, ["", "", ""]);
    assert.equal(outBytes, plaintext.length);
    assert.equal(hash.digest("hex"), sha256(plaintext));
    const message = Buffer.concat(between);
    const header = docHeader(message);
    assert.equal(header.chunkSize, chunk);
    assert.deepEqual(header.context, { pipe: "yes" });
    const chunks = Math.max(1, Math.ceil(plaintext.length / chunk));
    assert.equal(message.length, header.length + plaintext.length + TAG * chunks, "the document's layout");
  });

  test("file inspect --json, from a file and from stdin, follows the document's layout at the chunk edges", async () => {
    const dir = fresh();
    const size = 64;
    for (const length of [0, 1, size - 1, size, size + 1, 2 * size, 5 * size + 7]) {
      const path = join(dir, `m${length}`);
      await encryptTo(path, randomBytes(length), "files", ["--chunk-size", String(size), "--context", "k=v"]);
      const bytes = readFileSync(path);
      const h = docHeader(bytes);
      const chunks = Math.max(1, Math.ceil(length / size));
      assert.equal(bytes.length, h.length + length + TAG * chunks, `${length}: the document's layout`);
      const fromFile = JSON.parse((await ok(["--json", "file", "inspect", "--in", path])).out);
      assert.deepEqual(
        fromFile,
        {
          format: "custos envelope v1",
          key: "files",
          keyVersion: h.keyVersion,
          context: { k: "v" },
          chunkSize: size,
          headerBytes: h.length,
          messageBytes: bytes.length,
          chunks,
          plaintextBytes: length,
        },
        `${length} bytes`,
      );
      const fromStdin = JSON.parse((await ok(["--json", "file", "inspect"], bytes)).out);
      assert.deepEqual(fromStdin, fromFile, `${length} bytes from stdin`);
    }
  });

  test("file inspect of input that is not an envelope message says so, from --in and from stdin alike", async () => {
    const dir = fresh();
    const plain = join(dir, "notes.txt");
    writeFileSync(plain, "just some notes, no envelope here\n");
    const empty = join(dir, "empty");
    writeFileSync(empty, "");
    const cases: [string, string[], string][] = [
      ["--in plain", ["file", "inspect", "--in", plain], ""],
      ["--in empty", ["file", "inspect", "--in", empty], ""],
      ["stdin plain", ["file", "inspect"], "just some notes, no envelope here\n"],
      ["stdin empty", ["file", "inspect"], ""],
    ];
    for (const [what, args, stdin] of cases) {
      const r = await cli(args, stdin);
      assert.equal(r.code, EXIT_CLIENT, `${what}: ${r.err}`);
      assert.equal(r.out, "", what);
      assert.match(r.err, /^error: \w+: not an envelope message/, what);
    }
  });

  test("file encrypt and decrypt --out naming a symbolic link write the file it points to and keep the link, as encrypt --out does", async () => {
    const dir = fresh();
    const message = join(dir, "m.cenv");
    await encryptTo(message, "the plaintext");
    const cases: [string, string[]][] = [
      ["encrypt", ["encrypt", "--key", "files"]],
      ["file encrypt", ["file", "encrypt", "--key", "files"]],
      ["file decrypt", ["file", "decrypt", "--in", message]],
    ];
    for (const [what, args] of cases) {
      const target = join(dir, `${what.replace(" ", "-")}.target`);
      writeFileSync(target, "old contents\n");
      const link = join(dir, `${what.replace(" ", "-")}.link`);
      symlinkSync(target, link);
      const r = await cli([...args, "--out", link], "the plaintext");
      assert.equal(r.code, EXIT_OK, `${what}: ${r.err}`);
      assert.ok(lstatSync(link).isSymbolicLink(), `${what}: the link is still a link`);
      assert.notEqual(readFileSync(target, "utf8"), "old contents\n", `${what}: the output went where the link points`);
    }
    assert.equal(readFileSync(join(dir, "file-decrypt.target"), "utf8"), "the plaintext");
    assert.equal(docHeader(readFileSync(join(dir, "file-encrypt.target"))).keyName, "files");
  });

  test("--out files are 0600 whatever the umask or the old file's mode; a failed decrypt onto its own --in leaves it as it was", async () => {
    const dir = fresh();
    const message = join(dir, "m.cenv");
    const old = process.umask(0);
    try {
      await encryptTo(message, "private words", "files", ["--context", "c=1"]);
      assert.equal(statSync(message).mode & 0o777, 0o600);
      const existing = join(dir, "existing");
      writeFileSync(existing, "world readable before\n", { mode: 0o644 });
      chmodSync(existing, 0o644);
      await ok(["file", "decrypt", "--in", message, "--context", "c=1", "--out", existing]);
      assert.equal(statSync(existing).mode & 0o777, 0o600);
      assert.equal(readFileSync(existing, "utf8"), "private words");
    } finally {
      process.umask(old);
    }
    const before = readFileSync(message);
    const inode = statSync(message).ino;
    const wrong = await cli(["file", "decrypt", "--in", message, "--context", "c=2", "--out", message]);
    assert.equal(wrong.code, EXIT_CLIENT, wrong.err);
    assert.match(wrong.err, /^error: decryption_failed: /);
    assert.deepEqual(readFileSync(message), before);
    assert.equal(statSync(message).ino, inode, "not even replaced by a copy");
    assert.deepEqual(listing(dir), ["existing", "m.cenv"], "nothing beside it");
  });

  test("file rewrap naming one file twice (through a link, then by its name) rewraps it and reports no conflict", async () => {
    const dir = fresh();
    const target = join(dir, "v3.cenv");
    await encryptTo(target, "the third version", "files", ["--context", "v=3"]);
    symlinkSync("v3.cenv", join(dir, "latest"));
    // Other files between the two namings, larger, so the first naming is done before the second starts.
    const filler = join(dir, "filler-0");
    await encryptTo(filler, randomBytes(2 * 1024 * 1024));
    const fillers = [filler];
    for (let i = 1; i < 9; i++) {
      fillers.push(join(dir, `filler-${i}`));
      copyFileSync(filler, fillers[i] as string);
    }
    await ok(["key", "rotate", "files"]);
    const newest = await latest();
    const r = await cli(["--json", "file", "rewrap", join(dir, "latest"), ...fillers, target]);
    const files = (JSON.parse(r.out) as { files: { path: string; status: string }[] }).files;
    assert.deepEqual(
      files.filter((f) => f.status === "failed"),
      [],
    );
    assert.equal(r.code, EXIT_OK, r.out);
    assert.equal(versionOf(target), newest);
    const back = await ok(["file", "decrypt", "--in", join(dir, "latest"), "--context", "v=3"]);
    assert.equal(back.out, "the third version");
  });

  test("a write error on stdout other than EPIPE (a full device) is one error line and exit 1, as with --out, never a stack trace", async (t) => {
    if (!existsSync("/dev/full")) return t.skip("no /dev/full here");
    const dir = fresh();
    const message = join(dir, "m.cenv");
    await encryptTo(message, randomBytes(100_000));
    // The CLI's own answer for the same device named as --out: the oracle.
    const named = await cli(["file", "decrypt", "--in", message, "--out", "/dev/full"]);
    assert.equal(named.code, EXIT_CLIENT, named.err);
    assert.match(named.err, /^error: io_error: cannot write \/dev\/full: ENOSPC\n$/);
    for (const args of [
      ["file", "decrypt", "--in", message],
      ["key", "list"],
      ["storage", "rewrap", fresh()],
    ]) {
      const full = openSync("/dev/full", "w");
      try {
        const r = spawnSync(process.execPath, [BIN, ...args], {
          env: spawnEnv,
          stdio: ["ignore", full, "pipe"],
          encoding: "utf8",
          timeout: 120_000,
        });
        const shown = `custos ${args.join(" ")} >/dev/full`;
        assert.doesNotMatch(r.stderr, /\n\s+at /, `${shown}: a stack trace`);
        assert.match(r.stderr, /^(progress: .*\n)*error: io_error: .*ENOSPC.*\n$/, shown);
        assert.equal(r.status, EXIT_CLIENT, shown);
      } finally {
        closeSync(full);
      }
    }
  });

  test("storage rewrap with stderr on a full device still rewraps every file, not only the first batch", async (t) => {
    if (!existsSync("/dev/full")) return t.skip("no /dev/full here");
    const dir = fresh();
    const paths = Array.from({ length: 6 }, (_, i) => join(dir, `f${i}`));
    for (const p of paths) await encryptTo(p, `object ${p}`);
    await ok(["key", "rotate", "files"]);
    const newest = await latest();
    const full = openSync("/dev/full", "w");
    let r: ReturnType<typeof spawnSync>;
    try {
      r = spawnSync(process.execPath, [BIN, "storage", "rewrap", dir, "--batch", "1"], {
        env: spawnEnv,
        stdio: ["ignore", "pipe", full],
        encoding: "utf8",
        timeout: 120_000,
      });
    } finally {
      closeSync(full);
    }
    assert.deepEqual(
      paths.map(versionOf),
      paths.map(() => newest),
      `exit ${r.status}, stdout ${JSON.stringify(r.stdout)}`,
    );
    assert.match(String(r.stdout), /^rewrapped 6, already current 0, not envelope files 0, failed 0\n/);
  });

  test("storage rewrap as an unprivileged user: an unreadable file, an unlistable directory and an unwritable one fail by name; the rest are rewrapped", async (t) => {
    if (process.getuid?.() !== 0) return t.skip("needs root to run the CLI as another user");
    const open = mkdtempSync(join(tmpdir(), "custos-cli3-"));
    try {
      chmodSync(open, 0o755);
      const ca = join(open, "ca.pem");
      copyFileSync(caFile, ca);
      chmodSync(ca, 0o644);
      const tree = join(open, "tree");
      for (const d of ["", "sub", "locked", "closed"]) mkdirSync(join(tree, d), { recursive: true });
      const good = [join(tree, "a"), join(tree, "sub", "b")];
      const unreadable = join(tree, "c");
      const unwritable = join(tree, "locked", "d");
      const hidden = join(tree, "closed", "e");
      for (const p of [...good, unreadable, unwritable, hidden]) await encryptTo(p, `object at ${p}`);
      for (const p of [tree, join(tree, "sub"), ...good, unwritable]) chownSync(p, NOBODY, NOBODY);
      chmodSync(unwritable, 0o644);
      chmodSync(join(tree, "locked"), 0o755); // root's: nobody may read it, not add to it
      chmodSync(join(tree, "closed"), 0o700); // root's: user nobody cannot even list it
      chmodSync(unreadable, 0o600); // root's
      await ok(["key", "rotate", "files"]);
      const newest = await latest();
      const before = new Map([unreadable, unwritable, hidden].map((p) => [p, readFileSync(p)]));
      const r = spawnSync(process.execPath, [BIN, "--json", "storage", "rewrap", tree], {
        env: {
          PATH: process.env.PATH,
          HOME: open,
          CUSTOS_ADDR: custos.url,
          CUSTOS_CACERT: ca,
          CUSTOS_TOKEN: custos.adminToken,
        },
        uid: NOBODY,
        gid: NOBODY,
        encoding: "utf8",
        timeout: 120_000,
      });
      assert.equal(r.status, EXIT_CLIENT, r.stderr);
      const summary = JSON.parse(r.stdout) as {
        rewrapped: number;
        failed: number;
        files: number;
        failures: { path: string; error: { code: string } }[];
      };
      assert.equal(summary.rewrapped, 2);
      assert.equal(summary.failed, 3);
      assert.equal(summary.files, 4, "the files it could see: a, b, c and locked/d");
      assert.deepEqual(
        summary.failures.map((f) => [f.path, f.error.code]).sort(),
        [
          [join(tree, "c"), "EACCES"],
          [join(tree, "closed"), "EACCES"],
          [join(tree, "locked", "d"), "EACCES"],
        ].sort(),
      );
      assert.deepEqual(
        good.map(versionOf),
        good.map(() => newest),
      );
      for (const [p, bytes] of before) assert.deepEqual(readFileSync(p), bytes, p);
      assert.deepEqual(
        listing(tree).filter((f) => f.includes(".custos-rewrap-")),
        [],
      );
    } finally {
      rmSync(open, { recursive: true, force: true });
    }
  });

  test("storage rewrap's summary adds up to the tree; leftover temporary files are removed and counted; a rerun with nothing to do touches nothing, exit 0", async () => {
    const dir = fresh();
    const deep = join(dir, "a", "b", "c");
    mkdirSync(deep, { recursive: true });
    const envelopes = [join(dir, "top"), join(dir, "a", "one"), join(dir, "a", "b", "two"), join(deep, "three")];
    for (const p of envelopes) await encryptTo(p, randomBytes(1000 + envelopes.indexOf(p)));
    const spare = join(dir, "a", "spare-key");
    await encryptTo(spare, "under the spare key", "spare");
    writeFileSync(join(dir, "a", "plain.txt"), "plain text\n");
    writeFileSync(join(deep, "empty"), "");
    // A name like the rewrap's temporary files but not one of them (upper-case hex): somebody's data, kept.
    const lookalike = join(dir, ".custos-rewrap-0123456789AB.tmp");
    writeFileSync(lookalike, "not ours\n");
    // What an interrupted run leaves: removed and counted.
    const leftovers = [join(dir, ".custos-rewrap-0123456789ab.tmp"), join(deep, ".custos-rewrap-a1b2c3d4e5f6.tmp")];
    for (const p of leftovers) writeFileSync(p, readFileSync(envelopes[0] as string).subarray(0, 100));
    const counted = [...envelopes, spare, join(dir, "a", "plain.txt"), join(deep, "empty"), lookalike];
    const bytes = counted.reduce((sum, p) => sum + statSync(p).size, 0);
    await ok(["key", "rotate", "files"]);
    await ok(["key", "rotate", "spare"]);
    await ok(["key", "disable", "spare"]);
    const newest = await latest();

    const first = await cli(["--json", "storage", "rewrap", dir]);
    assert.equal(first.code, EXIT_CLIENT, first.err);
    const summary = JSON.parse(first.out);
    assert.equal(typeof summary.seconds, "number");
    delete summary.seconds;
    assert.deepEqual(summary, {
      rewrapped: 4,
      current: 0,
      not_envelope: 3,
      failed: 1,
      files: counted.length,
      bytes,
      removedTemporary: 2,
      failures: [
        { path: spare, status: "failed", error: { code: "key_disabled", message: 'key "spare" is disabled' } },
      ],
    });
    for (const p of leftovers) assert.ok(!existsSync(p), `${p} removed`);
    assert.equal(readFileSync(lookalike, "utf8"), "not ours\n");
    assert.deepEqual(
      envelopes.map(versionOf),
      envelopes.map(() => newest),
    );

    await ok(["key", "enable", "spare"]);
    const second = await cli(["storage", "rewrap", dir]);
    assert.equal(second.code, EXIT_OK, second.err);
    assert.match(second.out, /^rewrapped 1, already current 4, not envelope files 3, failed 0\n/);

    const stamps = [...envelopes, spare].map((p) => {
      const s = statSync(p);
      return [p, s.ino, s.mtimeMs, sha256(readFileSync(p))];
    });
    const third = await cli(["storage", "rewrap", dir]);
    assert.equal(third.code, EXIT_OK, third.err);
    assert.match(third.out, /^rewrapped 0, already current 5, not envelope files 3, failed 0\n/);
    assert.doesNotMatch(third.out, /removed|failed:/);
    assert.deepEqual(
      [...envelopes, spare].map((p) => {
        const s = statSync(p);
        return [p, s.ino, s.mtimeMs, sha256(readFileSync(p))];
      }),
      stamps,
      "nothing replaced",
    );
  });

  test("storage rewrap, file rewrap and file encrypt --out against a Custos that is down or not trusted: exit 2, one line, files as they were", async () => {
    const dir = fresh();
    const paths = [join(dir, "x"), join(dir, "y")];
    for (const p of paths) await encryptTo(p, `object ${p}`);
    const plain = join(dir, "plain");
    writeFileSync(plain, "to encrypt");
    await ok(["key", "rotate", "files"]);
    const wrongCa = foreignCa(scratch);
    const down = `https://127.0.0.1:${await freePort()}`;
    const before = listing(dir).map((f) => [f, sha256(readFileSync(join(dir, f)))]);
    for (const [what, env, says] of [
      ["down", { CUSTOS_ADDR: down }, /^error: unavailable: cannot reach https:\/\/127\.0\.0\.1:\d+/],
      [
        "untrusted",
        { CUSTOS_CACERT: wrongCa },
        /^error: tls_error: TLS verification of https:\/\/127\.0\.0\.1:\d+ failed/,
      ],
    ] as const) {
      for (const args of [
        ["storage", "rewrap", dir],
        ["file", "rewrap", ...paths],
        ["file", "encrypt", "--key", "files", "--in", plain, "--out", join(dir, "new.cenv")],
      ]) {
        const r = await cli(args, "", env);
        const shown = `${what}: custos ${args.join(" ")}`;
        assert.equal(r.code, EXIT_SERVER, `${shown}: ${r.err}`);
        assert.equal(r.out, "", shown);
        assert.match(r.err.replace(/^progress: .*\n/gm, ""), says, shown);
        assert.equal(r.err.replace(/^progress: .*\n/gm, "").split("\n").length, 2, `${shown}: one line`);
        assert.ok(!r.err.includes(custos.adminToken), shown);
        assert.deepEqual(
          listing(dir).map((f) => [f, sha256(readFileSync(join(dir, f)))]),
          before,
          `${shown}: files as they were, nothing beside`,
        );
      }
    }
  });

  test("the data key and plaintext that file encrypt and storage rewrap handle never reach the audit log or the server's log", async () => {
    const dir = fresh();
    const marker = `plaintext-marker-${randomBytes(8).toString("hex")}`;
    const path = join(dir, "m.cenv");
    await encryptTo(path, marker, "files", ["--context", "bucket=b"]);
    await ok(["key", "rotate", "files"]);
    const r = await ok(["storage", "rewrap", dir]);
    assert.match(r.out, /^rewrapped 1,/);
    const h = docHeader(readFileSync(path));
    const answer = await custos.call("POST", "/v1/keys/files/decrypt", { ciphertext: h.wrapped, context: h.context });
    assert.equal(answer.status, 200, answer.text);
    const dataKey = Buffer.from((answer.body as { plaintext: string }).plaintext, "base64");
    assert.equal(dataKey.length, 32);
    const audit = JSON.stringify(custos.query("SELECT * FROM audit_log"));
    const log = readFileSync(custos.logFile, "utf8");
    for (const [where, text] of [
      ["audit log", audit],
      ["server log", log],
      ["CLI output", r.out + r.err],
    ] as const) {
      for (const secret of [dataKey.toString("base64"), dataKey.toString("hex"), dataKey.toString("base64url")]) {
        assert.ok(!text.includes(secret), `the data key in the ${where}`);
      }
      assert.ok(!text.includes(marker), `the plaintext in the ${where}`);
      assert.ok(!text.includes(Buffer.from(marker).toString("base64")), `the plaintext (base64) in the ${where}`);
    }
    assert.equal((await ok(["file", "decrypt", "--in", path, "--context", "bucket=b"])).out, marker);
  });
});
