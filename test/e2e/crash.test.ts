import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type CustosInstance, startCustos } from "../helpers/custos.js";
import { freePort } from "../helpers/ports.js";

const CUSTOS = join(import.meta.dirname, "../../bin/custos.js");

/** `custos server` on `custos`'s data, on a port of its own or at `listen`; what it said when it exited. */
async function secondServer(
  custos: CustosInstance,
  listen?: string,
  more: NodeJS.ProcessEnv = {},
): Promise<{ status: number | null; stderr: string }> {
  const env = { ...custos.env, CUSTOS_LISTEN: listen ?? `127.0.0.1:${await freePort()}`, ...more };
  const r = spawnSync(process.execPath, [CUSTOS, "server"], { env, encoding: "utf8", timeout: 60_000 });
  return { status: r.status, stderr: `${r.stdout}${r.stderr}` };
}

/** A kill -9 never loses an acknowledged write, and never breaks the audit chain. */
describe("kill -9 during a burst of key creations and rotations", () => {
  let custos: CustosInstance;
  before(async () => {
    custos = await startCustos();
  });
  after(async () => {
    await custos?.dispose();
  });

  test("every acknowledged change survives and audit verify passes", async () => {
    const created = new Set<string>();
    const rotatedTo = new Map<string, number>();
    let stop = false;
    let failuresAfterKill = 0;

    const worker = async (w: number) => {
      for (let i = 0; !stop; i++) {
        const name = `crash-${w}-${i}`;
        try {
          const r = await custos.call("POST", "/v1/keys", { name, purpose: "encrypt" });
          if (r.status !== 201) continue;
          created.add(name);
          const rot = await custos.call("POST", `/v1/keys/${name}/rotate`);
          if (rot.status === 200) {
            const body = rot.body as { latestVersion: number };
            rotatedTo.set(name, body.latestVersion);
          }
        } catch {
          failuresAfterKill++;
          return; // the server is gone
        }
      }
    };
    const workers = [0, 1, 2, 3, 4, 5, 6, 7].map(worker);
    // Let the burst build up, then kill without warning.
    while (created.size < 40) await new Promise((r) => setTimeout(r, 20));
    await custos.kill9();
    stop = true;
    await Promise.all(workers);
    assert.ok(failuresAfterKill > 0, "the kill landed in the middle of the burst");

    await custos.start();
    for (const name of created) {
      const r = await custos.call("GET", `/v1/keys/${name}`);
      assert.equal(r.status, 200, `acknowledged key ${name} is missing after restart`);
      const expected = rotatedTo.get(name);
      if (expected !== undefined) {
        assert.ok((r.body as { latestVersion: number }).latestVersion >= expected, `rotation of ${name} lost`);
      }
    }
    const verify = custos.cli(["audit", "verify"]);
    assert.equal(verify.status, 0, verify.stdout + verify.stderr);
  });
});

/** The store keeps the audit chain's head in memory: a second server would fork it. */
describe("one server per database", () => {
  let custos: CustosInstance;
  before(async () => {
    custos = await startCustos();
  });
  after(async () => {
    await custos?.dispose();
  });

  test("a second server on the same database refuses to start, and the first keeps a whole audit chain", async () => {
    const second = await secondServer(custos);
    assert.notEqual(second.status, 0);
    assert.notEqual(second.status, null, "the second server started serving");
    assert.match(second.stderr, /another Custos server is serving .*custos\.db: one server per database/);
    assert.equal((await custos.call("POST", "/v1/keys", { name: "after-second", purpose: "encrypt" })).status, 201);
    const verify = custos.cli(["audit", "verify"]);
    assert.equal(verify.status, 0, verify.stdout + verify.stderr);
  });

  test("a kill -9 leaves no lock behind: the next server starts", async () => {
    await custos.kill9();
    await custos.start();
    assert.equal((await custos.call("GET", "/v1/keys/after-second")).status, 200);
  });

  test("a listen address, a setting or a PIN it can't use: the server says which and exits", async () => {
    await custos.stop();
    const unknownHost = await secondServer(custos, "no-such-host.invalid:8445");
    assert.equal(unknownHost.status, 1, unknownHost.stderr);
    assert.match(
      unknownHost.stderr,
      /invalid_request: cannot listen on no-such-host\.invalid:8445: (ENOTFOUND|EAI_AGAIN)/,
    );
    const badSetting = await secondServer(custos, "8445");
    assert.equal(badSetting.status, 64, badSetting.stderr);
    assert.match(badSetting.stderr, /CUSTOS_LISTEN must be host:port or \[ipv6\]:port/);
    // An explicit CUSTOS_HSM_PIN wins over the PIN file the instance was started with.
    const wrongPin = await secondServer(custos, undefined, { CUSTOS_HSM_PIN: "not-the-pin" });
    assert.equal(wrongPin.status, 2, wrongPin.stderr);
    assert.match(wrongPin.stderr, /error: hsm_unavailable: HSM unavailable during open \(CKR_PIN_INCORRECT\)/);
    await custos.start();
    assert.equal((await custos.call("GET", "/v1/keys/after-second")).status, 200);
  });
});
