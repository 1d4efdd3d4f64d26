import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { type GaugeSample, Metrics } from "../../src/metrics/index.js";

/** A family's samples as `name{labels} value` lines, from prom-client's own JSON view. */
async function samples(metrics: Metrics, family: string): Promise<Map<string, number>> {
  const all = await metrics.registry.getMetricsAsJSON();
  const found = all.find((m) => m.name === family);
  assert.ok(found, `no family ${family}`);
  const out = new Map<string, number>();
  for (const v of found.values as { metricName?: string; labels: Record<string, unknown>; value: number }[]) {
    const labels = Object.entries(v.labels)
      .map(([k, x]) => `${k}=${String(x)}`)
      .join(",");
    out.set(`${v.metricName ?? family}{${labels}}`, v.value);
  }
  return out;
}

describe("Metrics", () => {
  test("a job's outcomes start at 0, count each run, and a failure reaches onFailure without being thrown", async () => {
    const metrics = new Metrics("test");
    const failures: unknown[] = [];
    let fail = false;
    const tick = metrics.job(
      "sweep",
      async () => {
        if (fail) throw new Error("store gone");
      },
      (err) => failures.push(err),
    );
    const before = await samples(metrics, "custos_job_runs_total");
    assert.equal(before.get("custos_job_runs_total{job=sweep,outcome=success}"), 0);
    assert.equal(before.get("custos_job_runs_total{job=sweep,outcome=failure}"), 0);

    const startedAt = Date.now() / 1000;
    await tick();
    fail = true;
    await tick();
    await tick();
    const after = await samples(metrics, "custos_job_runs_total");
    assert.equal(after.get("custos_job_runs_total{job=sweep,outcome=success}"), 1);
    assert.equal(after.get("custos_job_runs_total{job=sweep,outcome=failure}"), 2);
    assert.equal(failures.length, 2);
    assert.match(String(failures[0]), /store gone/);
    const last = (await samples(metrics, "custos_job_last_success_timestamp_seconds")).get(
      "custos_job_last_success_timestamp_seconds{job=sweep}",
    );
    assert.ok(last !== undefined && last >= startedAt && last <= Date.now() / 1000, `last success ${last}`);
  });

  test("requests are counted per method, route and status, each in its own series", async () => {
    const metrics = new Metrics("test");
    for (let i = 0; i < 3; i++) metrics.observeRequest("POST", "/v1/keys/:name/encrypt", 200, 0.002);
    metrics.observeRequest("POST", "/v1/keys/:name/encrypt", 400, 0.0005);
    metrics.observeRequest("GET", "/v1/keys/:name", 200, 3);
    const h = await samples(metrics, "custos_http_request_duration_seconds");
    assert.equal(
      h.get("custos_http_request_duration_seconds_count{method=POST,route=/v1/keys/:name/encrypt,code=200}"),
      3,
    );
    assert.equal(
      h.get("custos_http_request_duration_seconds_count{method=POST,route=/v1/keys/:name/encrypt,code=400}"),
      1,
    );
    // 3 s falls above the 2.5 s bucket and within the 5 s one.
    assert.equal(
      h.get("custos_http_request_duration_seconds_bucket{le=2.5,method=GET,route=/v1/keys/:name,code=200}"),
      0,
    );
    assert.equal(
      h.get("custos_http_request_duration_seconds_bucket{le=5,method=GET,route=/v1/keys/:name,code=200}"),
      1,
    );
    assert.equal(h.get("custos_http_request_duration_seconds_sum{method=GET,route=/v1/keys/:name,code=200}"), 3);
  });

  test("a scrape-time gauge shows what its reader returns now, and drops label sets it no longer returns", async () => {
    const metrics = new Metrics("test");
    let current: GaugeSample[] = [
      [{ ca: "int-1" }, 100],
      [{ ca: "int-2" }, 200],
    ];
    metrics.gauge("custos_test_not_after", "test", ["ca"], () => current);
    assert.deepEqual(
      [...(await samples(metrics, "custos_test_not_after"))],
      [
        ["custos_test_not_after{ca=int-1}", 100],
        ["custos_test_not_after{ca=int-2}", 200],
      ],
    );
    current = [[{ ca: "int-2" }, 250]];
    assert.deepEqual(
      [...(await samples(metrics, "custos_test_not_after"))],
      [["custos_test_not_after{ca=int-2}", 250]],
    );
    assert.match(await metrics.render(), /^custos_build_info\{version="test"\} 1$/m);
  });
});
