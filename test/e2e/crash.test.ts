import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type CustosInstance, startCustos } from "../helpers/custos.js";

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
