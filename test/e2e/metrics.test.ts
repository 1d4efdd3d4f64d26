import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { connect } from "node:tls";
import { type CustosInstance, errorCode, fetchRaw, httpsRaw, ok, startCustos } from "../helpers/custos.js";
import { unplugToken } from "../helpers/softhsm.js";

type Json = Record<string, unknown>;
type Labels = Record<string, string>;

interface Sample {
  readonly name: string;
  readonly labels: Labels;
  readonly value: number;
}

interface Family {
  readonly name: string;
  readonly type: string;
  readonly documentation: string;
  readonly samples: Sample[];
}

/**
 * The Prometheus project's own parser is the oracle for the exposition, so a format
 * our code and a hand-written reader would both get wrong still fails. Non-finite
 * values go through as their repr: JSON has no spelling for them.
 */
const PARSER = `
import sys, json, math
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({
        "name": f.name, "type": f.type, "documentation": f.documentation,
        "samples": [[s.name, s.labels, s.value if math.isfinite(s.value) else repr(s.value)] for s in f.samples],
    })
print(json.dumps(out))
`;

function parseExposition(text: string): Family[] {
  const r = spawnSync("/usr/bin/python3", ["-c", PARSER], { input: text, encoding: "utf8", maxBuffer: 64 << 20 });
  assert.equal(r.status, 0, `the Prometheus parser refused the scrape:\n${r.stderr}\n--- scrape ---\n${text}`);
  const raw = JSON.parse(r.stdout) as { name: string; type: string; documentation: string; samples: unknown[][] }[];
  const number = (v: unknown): number =>
    typeof v === "number" ? v : v === "inf" ? Infinity : v === "-inf" ? -Infinity : Number.NaN;
  return raw.map((f) => ({
    ...f,
    samples: f.samples.map(([name, labels, value]) => ({
      name: name as string,
      labels: labels as Labels,
      value: number(value),
    })),
  }));
}

interface Scrape {
  readonly status: number;
  readonly contentType: string;
  readonly cacheControl: string;
  readonly requestId: string;
  readonly text: string;
  readonly families: Family[];
}

async function scrape(custos: CustosInstance, bearer: string): Promise<Scrape> {
  const r = await httpsRaw({
    port: custos.port,
    ca: custos.ca,
    method: "GET",
    path: "/v1/metrics",
    headers: { authorization: `Bearer ${bearer}` },
  });
  assert.equal(r.status, 200, r.text);
  return {
    status: r.status,
    contentType: String(r.headers["content-type"]),
    cacheControl: String(r.headers["cache-control"]),
    requestId: String(r.headers["x-request-id"]),
    text: r.text,
    families: parseExposition(r.text),
  };
}

function samplesNamed(s: Scrape, name: string): Sample[] {
  return s.families.flatMap((f) => f.samples.filter((x) => x.name === name));
}

function sameLabels(a: Labels, b: Labels): boolean {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k]);
}

/** The value of the one sample with exactly these labels; undefined when there is none. */
function sampleValue(s: Scrape, name: string, labels: Labels = {}): number | undefined {
  const found = samplesNamed(s, name).filter((x) => sameLabels(x.labels, labels));
  assert.ok(found.length <= 1, `${name} ${JSON.stringify(labels)} appears ${found.length} times`);
  return found[0]?.value;
}

function familyOf(s: Scrape, sampleName: string): Family {
  const f = s.families.find((x) => x.samples.some((y) => y.name === sampleName));
  assert.ok(f, `no family holds ${sampleName}`);
  return f;
}

/** How many requests the histogram counted with these labels (none yet: 0). */
function requests(s: Scrape, method: string, route: string, code: number): number {
  return sampleValue(s, "custos_http_request_duration_seconds_count", { method, route, code: String(code) }) ?? 0;
}

const health = async (custos: CustosInstance) =>
  (await custos.call("GET", "/v1/health", undefined, null)).body as {
    status: string;
    version: string;
    hsm: { state: string; sessions: { open: number; size: number } };
  };

const HSM_STATES = ["ok", "degraded", "unavailable"] as const;
const JOBS = ["kms-schedule", "crl-refresh", "broker-sweep", "tls-renewal"] as const;

/** Unix seconds from the date text openssl and node print (`Nov 25 08:31:00 2026 GMT`). */
function unixSeconds(text: string): number {
  const ms = Date.parse(text);
  assert.ok(Number.isFinite(ms), `unparsable date ${text}`);
  return ms / 1000;
}

async function makeToken(custos: CustosInstance, name: string, policies: string[]): Promise<string> {
  return ok(await custos.call("POST", "/v1/auth/tokens", { name, policies }), 201).token as string;
}

async function grantMetricsReader(custos: CustosInstance): Promise<string> {
  ok(
    await custos.call("PUT", "/v1/policies/metrics-reader", {
      rules: [{ resource: "metrics", actions: ["metrics:read"] }],
    }),
  );
  return makeToken(custos, "prometheus", ["metrics-reader"]);
}

describe("GET /v1/metrics on a running server", () => {
  let custos: CustosInstance;
  let startedAt: number;
  let reader: string;
  let nobody: string;
  let keysOnly: string;

  before(async () => {
    startedAt = Date.now() / 1000;
    // Every timer at (or near) the least the config allows, so each job has run within the test.
    custos = await startCustos({
      kms: { schedulerIntervalMs: 200 },
      broker: { sweepSeconds: 1 },
      tls: { renewCheckSeconds: 1 },
    });
    reader = await grantMetricsReader(custos);
    nobody = await makeToken(custos, "no-rights", []);
    ok(await custos.call("PUT", "/v1/policies/keys-only", { rules: [{ resource: "key/*", actions: ["*"] }] }));
    keysOnly = await makeToken(custos, "keys-only", ["keys-only"]);
  });
  after(async () => {
    await custos?.dispose();
  });

  test("needs metrics:read on metrics: 401 without a token, 403 without the right, audited when read", async () => {
    const anonymous = await custos.call("GET", "/v1/metrics", undefined, null);
    assert.equal(anonymous.status, 401, anonymous.text);
    assert.equal(errorCode(anonymous), "unauthenticated");
    // "*" covers every non-privileged action, but only on the resources its pattern matches.
    for (const bearer of [nobody, keysOnly]) {
      const refused = await custos.call("GET", "/v1/metrics", undefined, bearer);
      assert.equal(refused.status, 403, refused.text);
      assert.equal(errorCode(refused), "forbidden");
    }

    const byReader = await scrape(custos, reader);
    const byAdmin = await scrape(custos, custos.adminToken);
    for (const s of [byReader, byAdmin]) {
      assert.match(s.contentType, /^text\/plain/);
      assert.ok(s.contentType.includes("version=0.0.4"), s.contentType);
      assert.equal(s.cacheControl, "no-store");
    }

    const { records } = ok(await custos.call("GET", "/v1/audit?action=metrics.read&order=desc&limit=50")) as {
      records: Json[];
    };
    for (const s of [byReader, byAdmin]) {
      const mine = records.find((r) => r.requestId === s.requestId);
      assert.ok(mine, `no audit record for scrape ${s.requestId}`);
      assert.equal(mine.action, "metrics.read");
      assert.equal(mine.resource, "metrics");
      assert.equal(mine.outcome, "success");
    }
  });

  test("every family has HELP and TYPE; build info, histogram shape and node's process metrics", async () => {
    const s = await scrape(custos, reader);
    for (const f of s.families) {
      assert.notEqual(f.type, "unknown", `${f.name} has no TYPE line`);
      assert.ok(f.documentation.length > 0, `${f.name} has no HELP line`);
    }

    const build = familyOf(s, "custos_build_info");
    assert.equal(build.type, "gauge");
    assert.equal(build.samples.length, 1);
    assert.deepEqual(build.samples[0]?.labels, { version: (await health(custos)).version });
    assert.equal(build.samples[0]?.value, 1);

    const histogram = familyOf(s, "custos_http_request_duration_seconds_count");
    assert.equal(histogram.name, "custos_http_request_duration_seconds");
    assert.equal(histogram.type, "histogram");
    const counts = samplesNamed(s, "custos_http_request_duration_seconds_count");
    assert.ok(counts.length > 0, "the requests before this scrape were counted");
    for (const c of counts) {
      assert.deepEqual(Object.keys(c.labels).sort(), ["code", "method", "route"]);
      assert.match(c.labels.code ?? "", /^[1-5]\d\d$/);
      const buckets = samplesNamed(s, "custos_http_request_duration_seconds_bucket")
        .filter((b) => {
          const { le: _le, ...rest } = b.labels;
          return sameLabels(rest, c.labels);
        })
        .map((b) => ({ le: b.labels.le === "+Inf" ? Infinity : Number(b.labels.le), value: b.value }))
        .sort((a, b) => a.le - b.le);
      assert.ok(buckets.length >= 2, JSON.stringify(c.labels));
      for (let i = 1; i < buckets.length; i++) {
        assert.ok(
          (buckets[i]?.value ?? -1) >= (buckets[i - 1]?.value ?? 0),
          `buckets not cumulative for ${JSON.stringify(c.labels)}`,
        );
      }
      assert.equal(buckets.at(-1)?.le, Infinity, "a +Inf bucket");
      assert.equal(buckets.at(-1)?.value, c.value, "+Inf bucket equals _count");
      const sum = sampleValue(s, "custos_http_request_duration_seconds_sum", c.labels);
      assert.ok(sum !== undefined && sum >= 0, `_sum ${sum}`);
    }
    // The token grants, the refusals and the scrapes before this one, by route pattern.
    assert.ok(requests(s, "PUT", "/v1/policies/:name", 200) >= 2);
    assert.ok(requests(s, "POST", "/v1/auth/tokens", 201) >= 3);

    assert.equal(familyOf(s, "process_cpu_seconds_total").type, "counter");
    assert.ok((sampleValue(s, "process_cpu_seconds_total") ?? -1) > 0);
    assert.equal(familyOf(s, "process_resident_memory_bytes").type, "gauge");
    assert.ok((sampleValue(s, "process_resident_memory_bytes") ?? -1) > 0);
    assert.equal(familyOf(s, "nodejs_eventloop_lag_seconds").type, "gauge");
    assert.ok((sampleValue(s, "nodejs_eventloop_lag_seconds") ?? -1) >= 0);
  });

  test("HSM gauges agree with /v1/health", async () => {
    const s = await scrape(custos, reader);
    const h = await health(custos);
    assert.equal(h.hsm.state, "ok");
    assert.equal(familyOf(s, "custos_hsm_up").type, "gauge");
    assert.equal(sampleValue(s, "custos_hsm_up"), 1);
    assert.equal(familyOf(s, "custos_hsm_state").type, "gauge");
    assert.equal(samplesNamed(s, "custos_hsm_state").length, 3);
    for (const state of HSM_STATES) assert.equal(sampleValue(s, "custos_hsm_state", { state }), state === "ok" ? 1 : 0);

    assert.equal(familyOf(s, "custos_hsm_sessions_max").type, "gauge");
    assert.equal(sampleValue(s, "custos_hsm_sessions_max"), h.hsm.sessions.size);
    const open = sampleValue(s, "custos_hsm_sessions_open");
    assert.equal(familyOf(s, "custos_hsm_sessions_open").type, "gauge");
    assert.ok(open !== undefined && Number.isInteger(open) && open >= 0 && open <= h.hsm.sessions.size, `${open}`);
  });

  test("exact counts: each answered request once, by route pattern, the scrape after it is answered", async () => {
    ok(await custos.call("POST", "/v1/keys", { name: "count-key", purpose: "encrypt" }), 201);
    const first = await scrape(custos, reader);
    for (let i = 0; i < 7; i++) {
      const plaintext = Buffer.from(`message ${i}`).toString("base64");
      ok(await custos.call("POST", "/v1/keys/count-key/encrypt", { plaintext }));
    }
    for (let i = 0; i < 3; i++) {
      const r = await custos.call("POST", "/v1/keys/count-key/encrypt", { plaintext: 42 });
      assert.equal(r.status, 400, r.text);
    }
    for (let i = 0; i < 2; i++) {
      const r = await custos.call("GET", `/v1/no-such-route-${randomBytes(8).toString("hex")}`);
      assert.equal(r.status, 404, r.text);
    }
    const second = await scrape(custos, reader);

    const delta = (method: string, route: string, code: number) =>
      requests(second, method, route, code) - requests(first, method, route, code);
    assert.equal(delta("POST", "/v1/keys/:name/encrypt", 200), 7);
    assert.equal(delta("POST", "/v1/keys/:name/encrypt", 400), 3);
    assert.equal(delta("GET", "unmatched", 404), 2);
    assert.equal(delta("GET", "/v1/metrics", 200), 1);
    const concrete = samplesNamed(second, "custos_http_request_duration_seconds_count").filter((x) =>
      x.labels.route?.includes("count-key"),
    );
    assert.deepEqual(concrete, [], "no series is named by a concrete path");
  });

  test("nothing secret or unbounded leaks into the scrape", async () => {
    const key = `leak-${randomBytes(6).toString("hex")}`;
    const path = `/v1/no-such-route-${randomBytes(8).toString("hex")}`;
    const plaintext = `plaintext-${randomBytes(8).toString("hex")}`;
    ok(await custos.call("POST", "/v1/keys", { name: key, purpose: "encrypt" }), 201);
    const encrypted = await custos.call(
      "POST",
      `/v1/keys/${key}/encrypt`,
      { plaintext: Buffer.from(plaintext).toString("base64") },
      keysOnly,
    );
    ok(encrypted);
    assert.equal((await custos.call("GET", path)).status, 404);
    assert.equal((await custos.call("GET", "/v1/metrics", undefined, nobody)).status, 403);
    const s = await scrape(custos, reader);

    // The requests made it in, under their patterns: the absence below is not an empty scrape.
    assert.ok(requests(s, "POST", "/v1/keys/:name/encrypt", 200) >= 1);
    assert.ok(requests(s, "GET", "unmatched", 404) >= 1);
    assert.ok(requests(s, "GET", "/v1/metrics", 403) >= 1);
    const ciphertext = (encrypted.body as Json).ciphertext as string;
    const secrets = {
      key,
      path,
      plaintext,
      plaintextBase64: Buffer.from(plaintext).toString("base64"),
      ciphertext,
      reader,
      nobody,
      keysOnly,
      admin: custos.adminToken,
    };
    for (const [what, value] of Object.entries(secrets)) {
      assert.ok(!s.text.includes(value), `the scrape contains the ${what}`);
    }
    // The random part of a token alone is what matters, should it be printed in pieces.
    for (const token of [reader, nobody, keysOnly, custos.adminToken]) {
      const tail = token.slice(-16);
      assert.ok(!s.text.includes(tail), "the scrape contains part of a token");
    }
  });

  test("one CA lifetime sample per issuer, equal to openssl's notAfter, also after a rotation", async () => {
    ok(await custos.call("POST", "/v1/pki/issuers/rotate", {}));
    const issuers = (
      JSON.parse((await fetchRaw(custos, "/v1/pki/issuers")).body.toString()) as {
        issuers: { id: string; name: string; kind: string; state: string }[];
      }
    ).issuers;
    assert.ok(issuers.length >= 3, "root, the retiring intermediate and the new one");
    const s = await scrape(custos, reader);
    assert.equal(familyOf(s, "custos_ca_not_after_timestamp_seconds").type, "gauge");
    assert.equal(samplesNamed(s, "custos_ca_not_after_timestamp_seconds").length, issuers.length);
    for (const issuer of issuers) {
      const pem = await fetchRaw(custos, `/v1/pki/issuers/${issuer.id}/cert.pem`);
      assert.equal(pem.status, 200);
      const out = spawnSync("openssl", ["x509", "-noout", "-enddate"], { input: pem.body, encoding: "utf8" });
      assert.equal(out.status, 0, out.stderr);
      const notAfter = unixSeconds(out.stdout.trim().replace(/^notAfter=/, ""));
      const labels = { ca: issuer.id, name: issuer.name, kind: issuer.kind, state: issuer.state };
      assert.equal(sampleValue(s, "custos_ca_not_after_timestamp_seconds", labels), notAfter, JSON.stringify(labels));
    }
  });

  test("the TLS certificate's notAfter is the one the listener serves", async () => {
    const validTo = await new Promise<string>((resolve, reject) => {
      const socket = connect({ host: "127.0.0.1", port: custos.port, ca: custos.ca }, () => {
        const cert = socket.getPeerCertificate();
        socket.end();
        resolve(cert.valid_to);
      });
      socket.on("error", reject);
    });
    const s = await scrape(custos, reader);
    assert.equal(familyOf(s, "custos_tls_not_after_timestamp_seconds").type, "gauge");
    assert.equal(samplesNamed(s, "custos_tls_not_after_timestamp_seconds").length, 1);
    assert.equal(sampleValue(s, "custos_tls_not_after_timestamp_seconds"), unixSeconds(validTo));
  });

  test("each background job is counted and its last success lies between start and now", async () => {
    let s = await scrape(custos, reader);
    const succeeded = (x: Scrape, job: string) =>
      (sampleValue(x, "custos_job_runs_total", { job, outcome: "success" }) ?? 0) >= 1;
    for (let i = 0; i < 60 && !JOBS.every((job) => succeeded(s, job)); i++) {
      await sleep(500);
      s = await scrape(custos, reader);
    }
    const now = Date.now() / 1000;
    assert.equal(familyOf(s, "custos_job_runs_total").type, "counter");
    assert.equal(familyOf(s, "custos_job_last_success_timestamp_seconds").type, "gauge");
    for (const job of JOBS) {
      assert.ok(
        succeeded(s, job),
        `${job} never succeeded: ${JSON.stringify(samplesNamed(s, "custos_job_runs_total"))}`,
      );
      const last = sampleValue(s, "custos_job_last_success_timestamp_seconds", { job });
      assert.ok(last !== undefined && last >= startedAt && last <= now, `${job}: ${last} not in ${startedAt}..${now}`);
    }
    for (const x of samplesNamed(s, "custos_job_runs_total")) {
      assert.ok((JOBS as readonly string[]).includes(x.labels.job ?? ""), JSON.stringify(x.labels));
      assert.ok(["success", "failure"].includes(x.labels.outcome ?? ""), JSON.stringify(x.labels));
    }
  });
});

describe("GET /v1/metrics audit gauges on a quiet server", () => {
  let custos: CustosInstance;
  before(async () => {
    // Nothing on a timer may write an audit record between the scrape and its own record.
    custos = await startCustos({
      kms: { schedulerIntervalMs: 3_600_000 },
      broker: { sweepSeconds: 86_400 },
      tls: { renewCheckSeconds: 86_400 },
      audit: { checkpointIntervalMs: 3_600_000 },
    });
    // A clean stop signs a last checkpoint, so the restarted server has one below its head.
    await custos.stop();
    await custos.start();
  });
  after(async () => {
    await custos?.dispose();
  });

  test("head is the record before the scrape's own; the checkpoint is the newest signed one", async () => {
    const s = await scrape(custos, custos.adminToken);
    const head = sampleValue(s, "custos_audit_head_seq");
    const checkpoint = sampleValue(s, "custos_audit_checkpoint_seq");
    assert.equal(familyOf(s, "custos_audit_head_seq").type, "gauge");
    assert.equal(familyOf(s, "custos_audit_checkpoint_seq").type, "gauge");

    const { records } = ok(await custos.call("GET", "/v1/audit?action=metrics.read&order=desc&limit=1")) as {
      records: Json[];
    };
    assert.equal(records[0]?.requestId, s.requestId);
    assert.equal(head, (records[0]?.seq as number) - 1);

    const [newest] = custos.query<{ seq: number }>("SELECT MAX(seq) AS seq FROM audit_checkpoints");
    assert.ok((newest?.seq ?? 0) > 0, "the stop signed a checkpoint");
    assert.equal(checkpoint, newest?.seq);
    assert.ok(checkpoint !== undefined && head !== undefined && checkpoint <= head);
  });
});

describe("GET /v1/metrics while the HSM is gone", () => {
  let custos: CustosInstance;
  let reader: string;
  before(async () => {
    custos = await startCustos({ hsm: { operationTimeoutMs: 5000 } });
    reader = await grantMetricsReader(custos);
  });
  after(async () => {
    await custos?.dispose();
  });

  const stateSamples = (s: Scrape) =>
    Object.fromEntries(HSM_STATES.map((st) => [st, sampleValue(s, "custos_hsm_state", { state: st })]));

  test("a scrape answers during the outage with the HSM down, and shows it up again after", async () => {
    assert.equal(sampleValue(await scrape(custos, reader), "custos_hsm_up"), 1);

    const plugBack = unplugToken(custos.token.label);
    let during: Scrape;
    let states: string[];
    try {
      // SoftHSM serves from memory until the health probe notices the token is gone.
      let h = await health(custos);
      for (let i = 0; i < 100 && h.hsm.state === "ok"; i++) {
        await sleep(200);
        h = await health(custos);
      }
      assert.notEqual(h.hsm.state, "ok", "the outage was noticed");
      during = await scrape(custos, reader);
      states = [h.hsm.state, (await health(custos)).hsm.state];
    } finally {
      plugBack();
    }
    assert.equal(sampleValue(during, "custos_hsm_up"), 0);
    const shown = stateSamples(during);
    const current = HSM_STATES.filter((st) => shown[st] === 1);
    assert.equal(current.length, 1, JSON.stringify(shown));
    assert.ok(states.includes(current[0] ?? ""), `scrape says ${current[0]}, health said ${states.join(" then ")}`);
    for (const st of HSM_STATES) if (st !== current[0]) assert.equal(shown[st], 0);

    let healthy = false;
    for (let i = 0; i < 100 && !healthy; i++) {
      healthy = (await health(custos)).hsm.state === "ok";
      if (!healthy) await sleep(200);
    }
    assert.ok(healthy, "health returns to ok after the token is back");
    const recovered = await scrape(custos, reader);
    assert.equal(sampleValue(recovered, "custos_hsm_up"), 1);
    assert.deepEqual(stateSamples(recovered), { ok: 1, degraded: 0, unavailable: 0 });
  });
});
