import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  certificateWithChain,
  credentialFiles,
  prepareDirectory,
  writeCredentials,
  writeJwt,
} from "../../src/agent/run-files.js";

const LEAF = "-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n";
const CHAIN = "-----BEGIN CERTIFICATE-----\nINTER\n-----END CERTIFICATE-----";
const contents = {
  certificate: LEAF,
  chain: CHAIN,
  caChain: `${CHAIN}\n-----BEGIN CERTIFICATE-----\nROOT\n-----END CERTIFICATE-----`,
  privateKeyPem: "-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n",
  jwt: "h.p.s",
};
const mode = (path: string): number => statSync(path).mode & 0o777;

describe("custos run credential files", () => {
  let root: string;
  let umask: number;
  before(() => {
    root = mkdtempSync(join(tmpdir(), "custos-run-files-"));
    // The widest umask: modes must come out exact regardless of it.
    umask = process.umask(0);
  });
  after(() => {
    process.umask(umask);
    rmSync(root, { recursive: true, force: true });
  });

  test("the directory is created 0700 with its parents; paths are absolute", async () => {
    const dir = join(root, "a", "b", ".custos");
    await prepareDirectory(dir);
    assert.equal(mode(dir), 0o700);
    const files = credentialFiles(join("relative", "dir"));
    assert.ok(files.cert.startsWith("/") && files.cert.endsWith("/relative/dir/cert.pem"));
  });

  test("an existing directory keeps its mode; a file in its place is refused", async () => {
    const dir = join(root, "existing");
    await prepareDirectory(dir);
    const { chmodSync } = await import("node:fs");
    chmodSync(dir, 0o750);
    await prepareDirectory(dir);
    assert.equal(mode(dir), 0o750);
    const file = join(root, "not-a-dir");
    writeFileSync(file, "");
    await assert.rejects(prepareDirectory(file), /EEXIST|not a directory/);
  });

  test("key and jwt 0600, cert and ca 0644, even over wider files; no temporary files left", async () => {
    const dir = join(root, "creds");
    await prepareDirectory(dir);
    const files = credentialFiles(dir);
    writeFileSync(files.key, "old", { mode: 0o666 });
    writeFileSync(files.jwt, "old", { mode: 0o666 });
    await writeCredentials(files, contents);
    assert.equal(mode(files.key), 0o600);
    assert.equal(mode(files.jwt), 0o600);
    assert.equal(mode(files.cert), 0o644);
    assert.equal(mode(files.ca), 0o644);
    assert.equal(readFileSync(files.cert, "utf8"), `${LEAF}${CHAIN}\n`);
    assert.equal(readFileSync(files.key, "utf8"), contents.privateKeyPem);
    assert.equal(readFileSync(files.jwt, "utf8"), "h.p.s");
    assert.ok(readFileSync(files.ca, "utf8").endsWith("ROOT\n-----END CERTIFICATE-----\n"));
    assert.deepEqual(readdirSync(dir).sort(), ["ca.pem", "cert.pem", "jwt", "key.pem"]);

    await writeJwt(files, "h2.p2.s2");
    assert.equal(readFileSync(files.jwt, "utf8"), "h2.p2.s2");
    assert.equal(mode(files.jwt), 0o600);
    assert.deepEqual(readdirSync(dir).sort(), ["ca.pem", "cert.pem", "jwt", "key.pem"]);
  });

  test("a failed write leaves no file and no temporary behind", async () => {
    const files = credentialFiles(join(root, "missing-dir"));
    await assert.rejects(writeCredentials(files, contents), /ENOENT/);
    assert.ok(!readdirSync(root).includes("missing-dir"));
  });

  test("the certificate file is the leaf then the chain, one newline between", () => {
    assert.equal(certificateWithChain("A", "B"), "A\nB\n");
    assert.equal(certificateWithChain("A\n", "B\n"), "A\nB\n");
    assert.equal(certificateWithChain("A\n", "  "), "A\n");
  });
});
