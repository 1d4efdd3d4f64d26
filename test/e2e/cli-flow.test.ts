import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type CustosInstance, startCustos } from "../helpers/custos.js";

/** The first "done when": the operator's path through the CLI against a real server. */
describe("CLI against a running Custos", () => {
  let custos: CustosInstance;
  before(async () => {
    custos = await startCustos();
  });
  after(async () => {
    await custos?.dispose();
  });

  const json = (args: string[], input?: string) => {
    const r = custos.cli([...args, "--json"], input === undefined ? {} : { input });
    assert.equal(r.status, 0, `custos ${args.join(" ")} failed: ${r.stderr}`);
    return JSON.parse(r.stdout) as Record<string, unknown>;
  };

  test("create a key, get a data key with a context, decrypt it; another context fails", () => {
    json(["key", "create", "app-a-data"]);
    const listed = custos.cli(["key", "list"]);
    assert.equal(listed.status, 0, listed.stderr);
    assert.match(listed.stdout, /app-a-data/);

    const dk = json(["datakey", "--key", "app-a-data", "--context", "app=a", "--context", "bucket=photos"]);
    assert.equal(typeof dk.ciphertext, "string");
    assert.equal(Buffer.from(dk.plaintext as string, "base64").length, 32);

    const back = custos.cli(["decrypt", "--key", "app-a-data", "--context", "app=a", "--context", "bucket=photos"], {
      input: dk.ciphertext as string,
    });
    assert.equal(back.status, 0, back.stderr);
    assert.deepEqual(back.stdoutBytes, Buffer.from(dk.plaintext as string, "base64"));

    const wrong = custos.cli(["decrypt", "--key", "app-a-data", "--context", "app=b", "--context", "bucket=photos"], {
      input: dk.ciphertext as string,
    });
    assert.equal(wrong.status, 1);
    assert.match(wrong.stderr, /decryption_failed/);
    assert.equal(wrong.stdout, "");
  });

  test("encrypt and decrypt pipe through stdin and stdout", () => {
    const enc = custos.cli(["encrypt", "--key", "app-a-data"], { input: "hello, custos\n" });
    assert.equal(enc.status, 0, enc.stderr);
    const dec = custos.cli(["decrypt", "--key", "app-a-data"], { input: enc.stdout });
    assert.equal(dec.status, 0, dec.stderr);
    assert.equal(dec.stdout, "hello, custos\n");
  });

  test("rotate: old ciphertexts decrypt, rewrap moves them, minDecryptionVersion retires the old version", () => {
    json(["key", "create", "rotating"]);
    const v1 = custos.cli(["encrypt", "--key", "rotating", "--context", "k=v"], { input: "first" });
    assert.equal(v1.status, 0, v1.stderr);
    const oldCiphertext = v1.stdout.trim();

    json(["key", "rotate", "rotating"]);
    const shown = json(["key", "show", "rotating"]);
    assert.equal(shown.latestVersion, 2);

    const stillOk = custos.cli(["decrypt", "--key", "rotating", "--context", "k=v"], { input: oldCiphertext });
    assert.equal(stillOk.status, 0, stillOk.stderr);
    assert.equal(stillOk.stdout, "first");

    const rewrapped = json(["rewrap", "--key", "rotating", "--context", "k=v"], oldCiphertext);
    assert.equal(rewrapped.version, 2);
    assert.notEqual(rewrapped.ciphertext, oldCiphertext);

    json(["key", "update", "rotating", "--min-decryption-version", "2"]);
    const retired = custos.cli(["decrypt", "--key", "rotating", "--context", "k=v"], { input: oldCiphertext });
    assert.equal(retired.status, 1);
    assert.match(retired.stderr, /version_too_old|decryption_failed/);
    assert.equal(retired.stdout, "");

    const fresh = custos.cli(["decrypt", "--key", "rotating", "--context", "k=v"], {
      input: rewrapped.ciphertext as string,
    });
    assert.equal(fresh.status, 0, fresh.stderr);
    assert.equal(fresh.stdout, "first");
  });

  test("sign and verify through the CLI", () => {
    json(["key", "create", "signer", "--purpose", "sign"]);
    const sig = json(["sign", "--key", "signer"], "release-1.2.3");
    const ok = custos.cli(["verify", "--key", "signer", "--signature", sig.signature as string], {
      input: "release-1.2.3",
    });
    assert.equal(ok.status, 0, ok.stderr);
    const bad = custos.cli(["verify", "--key", "signer", "--signature", sig.signature as string], {
      input: "release-1.2.4",
    });
    assert.equal(bad.status, 1);
  });

  test("failures exit non-zero with the error code", () => {
    const missing = custos.cli(["key", "show", "no-such-key"]);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /not_found/);
    const unauth = custos.cli(["key", "list"], {
      token: "cst_notarealtoken_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    });
    assert.equal(unauth.status, 1);
    assert.match(unauth.stderr, /unauthenticated/);
  });

  test("audit verify passes on an untouched log and the log shows the work", () => {
    const verify = custos.cli(["audit", "verify"]);
    assert.equal(verify.status, 0, verify.stdout + verify.stderr);
    const records = json(["audit", "list", "--limit", "1000"]);
    const actions = (records.records as { action: string }[]).map((r) => r.action);
    assert.ok(actions.includes("custos.init"), "init is audited");
    assert.ok(
      actions.some((a) => a.includes("datakey")),
      "datakey is audited",
    );
  });
});
