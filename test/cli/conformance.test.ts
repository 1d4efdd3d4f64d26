import assert from "node:assert/strict";
import { mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { EXIT_CLIENT, EXIT_OK, EXIT_SERVER, EXIT_USAGE } from "../../src/cli/errors.js";
import { type CustosInstance, startCustos } from "../helpers/custos.js";
import { freePort } from "../helpers/ports.js";
import { foreignCa, runCli } from "./harness.js";

/**
 * The `custos` command as a user meets it, against a real server: the README's
 * examples, the help's exit codes (0 done, 1 refused, 2 server failure or
 * unreachable, 64 usage), the CUSTOS_* variables, and the conventions scripts rely
 * on (data on stdout, diagnostics on stderr, `--json` is JSON and nothing else,
 * `--` ends options, secrets never echoed, no terminal escapes into pipes).
 */
describe("custos CLI conformance against a running Custos", () => {
  let custos: CustosInstance;
  let scratch: string;
  let caFile: string;
  /** The CLI in process, pointed at the server as the admin; `env` replaces what it names. */
  const cli = (args: string[], env: NodeJS.ProcessEnv = {}, stdin: string | Buffer = "") =>
    runCli(args, { CUSTOS_ADDR: custos.url, CUSTOS_CACERT: caFile, CUSTOS_TOKEN: custos.adminToken, ...env }, stdin);
  const secretPart = (token: string): string => token.slice(token.lastIndexOf("_") + 1);

  before(async () => {
    custos = await startCustos();
    caFile = join(custos.dir, "tls", "ca.pem");
    scratch = join(custos.dir, "cli-conformance");
    mkdirSync(scratch);
  });
  after(async () => {
    await custos?.dispose();
  });

  test("the README's first commands work as written, with only CUSTOS_TOKEN_FILE and CUSTOS_CACERT", () => {
    const tokenFile = join(scratch, "admin.token");
    writeFileSync(tokenFile, `${custos.adminToken}\n`, { mode: 0o600 });
    const env = { CUSTOS_TOKEN_FILE: tokenFile };
    const created = custos.cli(["key", "create", "app-a-data"], { token: "", env });
    assert.equal(created.status, EXIT_OK, created.stderr);
    const dk = custos.cli(["datakey", "--key", "app-a-data", "--context", "app=a", "--json"], { token: "", env });
    assert.equal(dk.status, EXIT_OK, dk.stderr);
    assert.equal(dk.stderr, "");
    const answer = JSON.parse(dk.stdout) as { plaintext: string; ciphertext: string };
    assert.equal(Buffer.from(answer.plaintext, "base64").length, 32);
    const verify = custos.cli(["audit", "verify"], { token: "", env });
    assert.equal(verify.status, EXIT_OK, verify.stderr);
    assert.match(verify.stdout, /^ok: \d+ records?/);
  });

  test("--help on the program and every command group exits 0 with the help on stdout only", async () => {
    const groups = ["key", "file", "storage", "pki", "cert", "agent", "org", "space", "app", "secret"];
    groups.push("broker", "run", "ssh", "user", "group", "policy", "sudo", "audit", "token", "login", "status");
    for (const args of [["--help"], ["-h"], ["help"], ...groups.map((g) => [g, "--help"])]) {
      const r = await cli(args);
      assert.equal(r.code, EXIT_OK, `custos ${args.join(" ")}`);
      assert.match(r.out, /^Usage: custos/, `custos ${args.join(" ")}`);
      assert.equal(r.err, "", `custos ${args.join(" ")}`);
    }
  });

  test("--version and -V exit 0 and print the package version on stdout", () => {
    const pkg = JSON.parse(readFileSync(resolve(import.meta.dirname, "../../package.json"), "utf8")) as {
      version: string;
    };
    for (const flag of ["--version", "-V"]) {
      const r = custos.cli([flag]);
      assert.equal(r.status, EXIT_OK, `${flag}: ${r.stderr}`);
      assert.match(r.stdout, new RegExp(`\\b${pkg.version.replaceAll(".", "\\.")}\\b`));
      assert.equal(r.stderr, "");
    }
  });

  test("usage errors exit 64 with a diagnostic on stderr and nothing on stdout", async () => {
    const bad = [
      ["frobnicate"],
      ["status", "extra"],
      ["encrypt", "--key", "k", "extra"],
      ["whoami", "--json=yes"],
      ["key", "list", "--limit", "0"],
      ["decrypt", "--key"],
      ["key", "create", "k", "--purpose", "hmac"],
    ];
    for (const args of bad) {
      const r = await cli(args);
      assert.equal(r.code, EXIT_USAGE, `custos ${args.join(" ")}`);
      assert.equal(r.out, "", `custos ${args.join(" ")}`);
      assert.match(r.err, /^error: /, `custos ${args.join(" ")}`);
    }
  });

  test("-- ends options: what follows is an operand, even when it looks like an option", async () => {
    const shown = await cli(["key", "show", "--", "--json"]);
    assert.equal(shown.code, EXIT_CLIENT, shown.err);
    assert.match(shown.err, /^error: invalid_request: key name/, "the name reached the server");
    assert.equal(shown.out, "", "--json after -- must not switch JSON output on");

    const enc = await cli(["encrypt", "--key", "app-a-data"], {}, "after the marker");
    assert.equal(enc.code, EXIT_OK, enc.err);
    const dec = await cli(["decrypt", "--key", "app-a-data", "--", enc.out.trim()]);
    assert.equal(dec.code, EXIT_OK, dec.err);
    assert.equal(dec.out, "after the marker");
  });

  test("--json answers are one JSON document on stdout, with nothing on stderr and no escapes", async () => {
    const commands = [
      ["whoami"],
      ["status"],
      ["key", "list"],
      ["key", "show", "app-a-data"],
      ["token", "list"],
      ["user", "list"],
      ["policy", "list"],
      ["pki", "issuers"],
      ["pki", "ca"],
      ["ssh", "ca"],
      ["audit", "verify"],
      ["random", "--hex"],
    ];
    for (const args of commands) {
      const r = await cli([...args, "--json"], { NO_COLOR: "1" });
      assert.equal(r.code, EXIT_OK, `custos ${args.join(" ")}: ${r.err}`);
      assert.doesNotThrow(() => JSON.parse(r.out), `custos ${args.join(" ")} --json`);
      assert.equal(r.err, "", `custos ${args.join(" ")}`);
      assert.ok(!r.out.includes("\u001b"), `custos ${args.join(" ")}`);
    }
  });

  test("file encrypt --json never writes the binary envelope to stdout: a usage error, or JSON with --out", async () => {
    const toStdout = await cli(["file", "encrypt", "--key", "app-a-data", "--json"], {}, "some data");
    assert.equal(toStdout.code, EXIT_USAGE, toStdout.err);
    assert.equal(toStdout.out, "");
    assert.match(toStdout.err, /--out FILE/);
    const out = join(scratch, "json.cenv");
    const toFile = await cli(["file", "encrypt", "--key", "app-a-data", "--out", out, "--json"], {}, "some data");
    assert.equal(toFile.code, EXIT_OK, toFile.err);
    assert.deepEqual(JSON.parse(toFile.out), { out, bytes: statSync(out).size });
  });

  test("a CA that did not sign the server's certificate is a tls_error, exit 2, and can't be switched off", () => {
    const wrong = foreignCa(scratch);
    for (const args of [["key", "list"], ["pki", "ca"], ["status"]]) {
      const r = custos.cli(args, { env: { CUSTOS_CACERT: wrong, NODE_TLS_REJECT_UNAUTHORIZED: "0" } });
      assert.equal(r.status, EXIT_SERVER, `custos ${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, /^error: tls_error: TLS verification of https:\/\/127\.0\.0\.1:\d+ failed/m);
      assert.equal(r.stdout, "");
    }
  });

  test("an unreachable Custos is exit 2, code unavailable, naming the address", async () => {
    const port = await freePort();
    for (const args of [["key", "list"], ["pki", "ca"], ["status"]]) {
      const r = await cli(args, { CUSTOS_ADDR: `https://127.0.0.1:${port}` });
      assert.equal(r.code, EXIT_SERVER, `custos ${args.join(" ")}`);
      assert.match(r.err, new RegExp(`^error: unavailable: cannot reach https://127\\.0\\.0\\.1:${port}`));
      assert.equal(r.out, "");
    }
  });

  test("CUSTOS_TOKEN_FILE: a trailing LF, CRLF or BOM is not part of the token; a missing file is exit 64", async () => {
    for (const [name, text] of [
      ["lf", `${custos.adminToken}\n`],
      ["crlf", `${custos.adminToken}\r\n`],
      ["bom", `\ufeff${custos.adminToken}\n`],
    ] as const) {
      const file = join(scratch, `${name}.token`);
      writeFileSync(file, text, { mode: 0o600 });
      const r = await cli(["whoami", "--json"], { CUSTOS_TOKEN: "", CUSTOS_TOKEN_FILE: file });
      assert.equal(r.code, EXIT_OK, `${name}: ${r.err}`);
      assert.equal((JSON.parse(r.out) as { isAdmin: boolean }).isAdmin, true);
    }
    const missing = await cli(["whoami"], { CUSTOS_TOKEN: "", CUSTOS_TOKEN_FILE: join(scratch, "absent.token") });
    assert.equal(missing.code, EXIT_USAGE);
    assert.match(missing.err, /^error: invalid_config: cannot read CUSTOS_TOKEN_FILE .*absent\.token: ENOENT/);
  });

  test("CUSTOS_TOKEN comes before CUSTOS_TOKEN_FILE, as the help lists them", async () => {
    const file = join(scratch, "other.token");
    writeFileSync(file, "cst_notarealtoken_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n", { mode: 0o600 });
    const r = await cli(["whoami", "--json"], { CUSTOS_TOKEN_FILE: file });
    assert.equal(r.code, EXIT_OK, r.err);
    assert.equal((JSON.parse(r.out) as { isAdmin: boolean }).isAdmin, true);
  });

  test("a token that can't go into an HTTP header is an unusable setting (64) naming its variable, not a server failure", async () => {
    const file = join(scratch, "two-lines.token");
    writeFileSync(file, `${custos.adminToken}\n${custos.adminToken}\n`, { mode: 0o600 });
    const fromFile = await cli(["whoami"], { CUSTOS_TOKEN: "", CUSTOS_TOKEN_FILE: file });
    assert.equal(fromFile.code, EXIT_USAGE, fromFile.err);
    assert.match(fromFile.err, /CUSTOS_TOKEN_FILE/);
    const inline = await cli(["whoami"], { CUSTOS_TOKEN: "cst_token_\u20ac" });
    assert.equal(inline.code, EXIT_USAGE, inline.err);
    assert.match(inline.err, /CUSTOS_TOKEN/);
  });

  test("the token never shows in output: refused requests, --json answers, the audit log", async () => {
    const wrong = "cst_wrongtokenid1_Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXg";
    const refused = await cli(["key", "list"], { CUSTOS_TOKEN: wrong });
    assert.equal(refused.code, EXIT_CLIENT);
    assert.ok(!(refused.out + refused.err).includes(secretPart(wrong)));
    for (const args of [["whoami"], ["token", "list"], ["audit", "list", "--limit", "1000"]]) {
      const r = await cli([...args, "--json"]);
      assert.equal(r.code, EXIT_OK, r.err);
      assert.ok(!(r.out + r.err).includes(secretPart(custos.adminToken)), `custos ${args.join(" ")}`);
    }
  });

  test("a password in CUSTOS_ADDR is never echoed, whatever is wrong with the address", async () => {
    for (const address of [
      "http://admin:hunter2pw@127.0.0.1:8443",
      "https://admin:hunter2pw@127.0.0.1:99999",
      "https://admin:hunter2pw@127.0.0.1:8443",
    ]) {
      const r = await cli(["key", "list"], { CUSTOS_ADDR: address });
      assert.equal(r.code, EXIT_USAGE, address);
      assert.match(r.err, /^error: invalid_config: /);
      assert.ok(!r.err.includes("hunter2pw"), r.err);
    }
  });

  test("secret put from stdin drops exactly one trailing newline, LF or CRLF", async () => {
    for (const args of [
      ["org", "create", "acme"],
      ["space", "create", "acme/dev"],
      ["app", "create", "acme/dev/web"],
    ]) {
      const r = await cli(args);
      assert.equal(r.code, EXIT_OK, `custos ${args.join(" ")}: ${r.err}`);
    }
    for (const [input, stored] of [
      ["pw-lf\n", "pw-lf"],
      ["pw-crlf\r\n", "pw-crlf"],
      ["pw-two\n\n", "pw-two\n"],
      ["pw-none", "pw-none"],
    ] as const) {
      const put = await cli(["secret", "put", "acme/dev/web/db/password"], {}, input);
      assert.equal(put.code, EXIT_OK, put.err);
      assert.ok(!put.out.includes(stored.trim()), "a write never prints the value");
      const got = await cli(["secret", "get", "acme/dev/web/db/password", "--field", "value"]);
      assert.equal(got.out, stored);
    }
  });

  test("datakey --bytes outside 16, 24 or 32 (the help's values) is a usage error caught before the server", async () => {
    const r = await cli(["datakey", "--key", "app-a-data", "--bytes", "17"]);
    assert.equal(r.code, EXIT_USAGE, r.err);
  });

  test("a CUSTOS_CACERT whose certificate does not parse is an unusable setting (64) naming CUSTOS_CACERT, for the API client and for custos run alike", async () => {
    const broken = join(scratch, "broken-ca.pem");
    writeFileSync(broken, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    for (const args of [
      ["key", "list"],
      ["run", "--instance", "i-1", "--", "true"],
    ]) {
      const r = await cli(args, { CUSTOS_CACERT: broken, CUSTOS_BOOTSTRAP_TOKEN: "cbt.unused" });
      assert.equal(r.code, EXIT_USAGE, `${args[0]}: ${r.err}`);
      assert.match(r.err, /^error: invalid_config: .*CUSTOS_CACERT/, args[0]);
    }
  });

  test("storage rewrap into pipes: progress lines on stderr without escapes, the summary on stdout", async () => {
    const dir = join(scratch, "tree");
    mkdirSync(dir);
    for (const name of ["a.env", "b.env"]) {
      const r = await cli(["file", "encrypt", "--key", "app-a-data", "--out", join(dir, name)], {}, name);
      assert.equal(r.code, EXIT_OK, r.err);
    }
    const rotated = await cli(["key", "rotate", "app-a-data"]);
    assert.equal(rotated.code, EXIT_OK, rotated.err);
    const r = await cli(["storage", "rewrap", dir, "--json"], { NO_COLOR: "1" });
    assert.equal(r.code, EXIT_OK, r.err);
    assert.equal((JSON.parse(r.out) as { rewrapped: number }).rewrapped, 2);
    assert.match(r.err, /^progress: 2\/2 files/m);
    assert.ok(!r.err.includes("\r") && !r.err.includes("\u001b"), JSON.stringify(r.err));
  });
});
