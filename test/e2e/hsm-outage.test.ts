import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { type CustosInstance, startCustos } from "../helpers/custos.js";
import { unplugToken } from "../helpers/softhsm.js";

/** The HSM going away under a running server: clear 503s during, no failures after. */
describe("HSM outage seen through the API", () => {
  let custos: CustosInstance;
  const context = { app: "outage" };
  before(async () => {
    // The default deadline: the bursts before and after the outage must all succeed, on a busy machine too.
    custos = await startCustos({ hsm: { operationTimeoutMs: 5000 } });
    assert.equal((await custos.call("POST", "/v1/keys", { name: "k", purpose: "encrypt" })).status, 201);
  });
  after(async () => {
    await custos?.dispose();
  });

  const datakeys = (n: number) =>
    Promise.all(Array.from({ length: n }, () => custos.call("POST", "/v1/keys/k/datakey", { context })));

  test("requests fail with hsm_unavailable while the token is gone, and none fail after it returns", async () => {
    for (const r of await datakeys(10)) assert.equal(r.status, 200, r.text);

    const plugBack = unplugToken(custos.token.label);
    let during: Awaited<ReturnType<typeof datakeys>>;
    try {
      // SoftHSM keeps serving what it holds in memory, so the outage shows once the
      // keystore's health probe (or a request that needs the token) notices it.
      let health = await custos.call("GET", "/v1/health", undefined, null);
      for (let i = 0; i < 100 && health.status === 200; i++) {
        await sleep(200);
        health = await custos.call("GET", "/v1/health", undefined, null);
      }
      assert.equal(health.status, 503, health.text);
      assert.notEqual((health.body as { status: string }).status, "ok");
      during = await datakeys(8);
    } finally {
      plugBack();
    }
    for (const r of during) {
      if (r.status === 200) continue; // a request that raced the unplugging may still succeed
      assert.equal(r.status, 503, r.text);
      assert.equal((r.body as { error: { code: string } }).error.code, "hsm_unavailable");
    }
    assert.ok(
      during.some((r) => r.status === 503),
      "at least one request saw the outage",
    );

    let healthy = false;
    for (let i = 0; i < 100 && !healthy; i++) {
      healthy = (await custos.call("GET", "/v1/health", undefined, null)).status === 200;
      if (!healthy) await sleep(200);
    }
    assert.ok(healthy, "health returns to ok after the token is back");
    for (const r of await datakeys(30)) assert.equal(r.status, 200, r.text);
  });
});
