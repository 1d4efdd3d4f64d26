import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { loadConfig } from "../../src/config/index.js";
import { isCustosError } from "../../src/errors/index.js";
import { type CustosInstance, errorCode, type HttpAnswer, ok, startCustos } from "../helpers/custos.js";

type Json = Record<string, unknown>;
type Answer = HttpAnswer & { readonly headers?: Record<string, unknown> };
interface Made extends Json {
  token: string;
  id: string;
  createdAt: string;
  expiresAt: string | null;
  maxExpiresAt: string | null;
  renewTtlSeconds: number | null;
}

/**
 * Token renewal over HTTPS against a real server: `maxTtlSeconds` at creation and the
 * views that show it (`expiresAt`, `maxExpiresAt`, `renewTtlSeconds`), login sessions'
 * maximum (`auth.sessionMaxTtlSeconds`), `POST /v1/auth/tokens/:id/renew` (self, the
 * default increment, an explicit ttl, the caps by maxExpiresAt and by the parent's
 * expiry, never shortening), who may renew what (the revoking rule), the errors
 * (revoked, not renewable, expired, bad input), the audit record, the principal cache
 * and the CLI (`token renew`, `token create --max-ttl`).
 *
 * Oracles: the specification's arithmetic on the server's own timestamps (createdAt,
 * the creator's expiresAt) and, where the server's "now" is involved, the interval of
 * the test's clock around the request (same host); the audit_log table read directly.
 * The only real wait is one: two 60-second tokens made when the server starts, one
 * renewed at once, checked past their old expiry by the last test.
 */

const SESSION_TTL_SECONDS = 600;
const SESSION_MAX_TTL_SECONDS = 1_800;
const TEN_YEARS = 10 * 365 * 86_400;
/** Slack either side of the request's interval for the server's "now" (same host). */
const SLACK_MS = 2_000;

const ms = (iso: unknown) => Date.parse(String(iso));
const sleep = (millis: number) => new Promise((r) => setTimeout(r, Math.max(0, millis)));

/** Asserts `iso` is `seconds` after a moment between t0 and t1 (the request's interval). */
function assertAfter(iso: unknown, t0: number, t1: number, seconds: number, what: string): void {
  const at = ms(iso);
  const lo = t0 + seconds * 1000 - SLACK_MS;
  const hi = t1 + seconds * 1000 + SLACK_MS;
  assert.ok(
    Number.isFinite(at) && at >= lo && at <= hi,
    `${what}: expiresAt ${String(iso)} is not now + ${seconds}s (between ${new Date(lo).toISOString()} and ${new Date(hi).toISOString()})`,
  );
}

/** A view must never carry the token string or its hash. */
function assertNoSecret(view: Json, tokenText: string | undefined, what: string): void {
  assert.equal("token" in view, false, `${what}: the view has a token field`);
  assert.equal("hash" in view, false, `${what}: the view has a hash field`);
  if (tokenText !== undefined) {
    assert.ok(!JSON.stringify(view).includes(tokenText.slice(21)), `${what}: the view holds the token's secret`);
  }
}

describe("token renewal", () => {
  let custos: CustosInstance;
  const call = (method: string, path: string, body?: unknown, bearer?: string | null) =>
    custos.call(method, path, body, bearer) as Promise<Answer>;
  const whoami = (token: string) => call("GET", "/v1/auth/whoami", undefined, token);
  const renew = (id: string, body?: unknown, bearer?: string) =>
    call("POST", `/v1/auth/tokens/${id}/renew`, body, bearer);
  /** Renews and answers the view, the request's interval and the raw answer. */
  async function renewed(id: string, body?: unknown, bearer?: string) {
    const t0 = Date.now();
    const r = await renew(id, body, bearer);
    const t1 = Date.now();
    return { view: ok(r) as Made, t0, t1, r };
  }
  const make = async (body: Json, bearer?: string) =>
    ok(await call("POST", "/v1/auth/tokens", body, bearer), 201) as Made;
  /** A token's entry in `GET /v1/auth/tokens` as `bearer` (the admin by default) sees it. */
  const listed = async (id: string, bearer?: string) =>
    (ok(await call("GET", "/v1/auth/tokens", undefined, bearer)).tokens as Json[]).find((t) => t.id === id);
  /** The `[status, error code]` of an answer, "ok" for no error code. */
  const outcome = (r: Answer) => [r.status, errorCode(r) ?? "ok"];
  const messageOf = (r: Answer) => String((r.body as { error?: { message?: unknown } } | null)?.error?.message);
  /** A user with a password and policies, logged in: the session's answer. */
  async function userSession(name: string, policies: string[] = []) {
    const password = `${name} password 1234`;
    ok(await call("POST", "/v1/users", { name, password, policies }), 201);
    return { ...(await login(name, password)), password };
  }
  async function login(name: string, password: string) {
    const t0 = Date.now();
    const r = await call("POST", "/v1/auth/login", { username: name, password }, null);
    const t1 = Date.now();
    const s = ok(r) as { token: string; tokenId: string; expiresAt: string };
    return { ...s, t0, t1 };
  }

  // Made as soon as the server is up, so the one real wait (the last test) overlaps the rest.
  let early: { kept: Answer; lapsing: Answer; made: number };

  before(async () => {
    custos = await startCustos({
      auth: {
        loginAttemptsPerMinute: 1000,
        sessionTtlSeconds: SESSION_TTL_SECONDS,
        sessionMaxTtlSeconds: SESSION_MAX_TTL_SECONDS,
      },
    });
    const made = Date.now();
    early = {
      kept: await call("POST", "/v1/auth/tokens", { name: "kept", policies: [], ttlSeconds: 60, maxTtlSeconds: 600 }),
      lapsing: await call("POST", "/v1/auth/tokens", {
        name: "lapsing",
        policies: [],
        ttlSeconds: 60,
        maxTtlSeconds: 600,
      }),
      made,
    };
    ok(
      await call("PUT", "/v1/policies/maker", {
        rules: [{ resource: "token/*", actions: ["token:create", "token:read"] }],
      }),
    );
  });
  after(async () => {
    await custos?.dispose();
  });

  let keptOldExpiry: string | undefined;
  let keptNewExpiry: string | undefined;

  test("a 60-second token renews itself as self at once, by 300 s (checked past its old expiry by the last test)", async () => {
    const kept = ok(early.kept, 201) as Made;
    ok(early.lapsing, 201);
    keptOldExpiry = kept.expiresAt ?? undefined;
    const { view, t0, t1 } = await renewed("self", { ttlSeconds: 300 }, kept.token);
    assertAfter(view.expiresAt, t0, t1, 300, "kept");
    assert.equal(view.id, kept.id);
    keptNewExpiry = view.expiresAt ?? undefined;
  });

  describe("creating renewable tokens", () => {
    test("maxTtlSeconds makes maxExpiresAt = createdAt + maxTtlSeconds and renewTtlSeconds = ttlSeconds, in the answer and the listing", async () => {
      const t = await make({ name: "renewable", policies: [], ttlSeconds: 600, maxTtlSeconds: 7_200 });
      const entry = await listed(t.id);
      assert.ok(entry, "the token is listed");
      for (const [what, v] of [
        ["answer", t],
        ["listing", entry],
      ] as [string, Json][]) {
        assert.deepEqual(
          {
            kind: v.kind,
            ttl: ms(v.expiresAt) - ms(v.createdAt),
            maxTtl: ms(v.maxExpiresAt) - ms(v.createdAt),
            renewTtlSeconds: v.renewTtlSeconds,
          },
          { kind: "api", ttl: 600_000, maxTtl: 7_200_000, renewTtlSeconds: 600 },
          what,
        );
      }
      assert.deepEqual(
        [entry?.expiresAt, entry?.maxExpiresAt, entry?.createdAt],
        [t.expiresAt, t.maxExpiresAt, t.createdAt],
      );
      assertNoSecret(entry as Json, t.token, "listing");
    });

    test("a token made without maxTtlSeconds is not renewable: maxExpiresAt and renewTtlSeconds are null", async () => {
      const withTtl = await make({ name: "fixed", policies: [], ttlSeconds: 600 });
      const forever = await make({ name: "forever", policies: [] });
      const seen = [];
      for (const t of [withTtl, forever]) {
        const entry = await listed(t.id);
        seen.push([t.maxExpiresAt, t.renewTtlSeconds, entry?.maxExpiresAt, entry?.renewTtlSeconds]);
      }
      assert.equal(ms(withTtl.expiresAt) - ms(withTtl.createdAt), 600_000);
      assert.equal(forever.expiresAt, null);
      assert.deepEqual(seen, [
        [null, null, null, null],
        [null, null, null, null],
      ]);
    });

    test("maxTtlSeconds without ttlSeconds, below it, out of 60 s..10 years or not an integer is 400 and makes nothing", async () => {
      const bodies: Json[] = [
        { maxTtlSeconds: 3_600 },
        { ttlSeconds: 600, maxTtlSeconds: 599 },
        { ttlSeconds: 60, maxTtlSeconds: 59 },
        { ttlSeconds: 600, maxTtlSeconds: TEN_YEARS + 1 },
        { ttlSeconds: 600, maxTtlSeconds: 3_600.5 },
        { ttlSeconds: 600, maxTtlSeconds: "3600" },
        { ttlSeconds: 600, maxTtlSeconds: null },
      ];
      const answers = [];
      for (const body of bodies) {
        answers.push(outcome(await call("POST", "/v1/auth/tokens", { name: "refused-max", policies: [], ...body })));
      }
      assert.deepEqual(answers, Array(bodies.length).fill([400, "invalid_request"]));
      assert.deepEqual(custos.query("SELECT id FROM tokens WHERE name = 'refused-max'"), []);
      // The bounds themselves are accepted: maxTtlSeconds equal to ttlSeconds, and 10 years.
      const equal = await make({ name: "max-equal", policies: [], ttlSeconds: 600, maxTtlSeconds: 600 });
      const longest = await make({ name: "max-longest", policies: [], ttlSeconds: 600, maxTtlSeconds: TEN_YEARS });
      assert.equal(equal.maxExpiresAt, equal.expiresAt);
      assert.equal(ms(longest.maxExpiresAt) - ms(longest.createdAt), TEN_YEARS * 1000);
    });

    test("a token made by an API token that expires gets expiresAt and maxExpiresAt no later than its creator's expiry", async () => {
      const parent = await make({ name: "cap-parent", policies: ["maker"], ttlSeconds: 600, maxTtlSeconds: 3_600 });
      const short = await make({ name: "cap-short", ttlSeconds: 300, maxTtlSeconds: 7_200 }, parent.token);
      const long = await make({ name: "cap-long", ttlSeconds: 1_200, maxTtlSeconds: 7_200 }, parent.token);
      assert.deepEqual(
        {
          short: [ms(short.expiresAt) - ms(short.createdAt), short.maxExpiresAt, short.renewTtlSeconds],
          long: [long.expiresAt, long.maxExpiresAt, long.renewTtlSeconds],
          parentId: [short.parentId, long.parentId],
        },
        {
          short: [300_000, parent.expiresAt, 300],
          long: [parent.expiresAt, parent.expiresAt, 1_200],
          parentId: [parent.id, parent.id],
        },
      );
    });
  });

  describe("login sessions", () => {
    test("a session shows maxExpiresAt = login + auth.sessionMaxTtlSeconds and renewTtlSeconds = auth.sessionTtlSeconds", async () => {
      const session = await userSession("sess-view", ["maker"]);
      const entry = await listed(session.tokenId, session.token);
      assert.ok(entry, "the session is listed to itself");
      assert.deepEqual(
        {
          kind: entry.kind,
          expiresAt: entry.expiresAt,
          ttl: ms(entry.expiresAt) - ms(entry.createdAt),
          maxTtl: ms(entry.maxExpiresAt) - ms(entry.createdAt),
          renewTtlSeconds: entry.renewTtlSeconds,
        },
        {
          kind: "session",
          expiresAt: session.expiresAt,
          ttl: SESSION_TTL_SECONDS * 1000,
          maxTtl: SESSION_MAX_TTL_SECONDS * 1000,
          renewTtlSeconds: SESSION_TTL_SECONDS,
        },
      );
      assert.ok(ms(entry.createdAt) >= session.t0 - SLACK_MS && ms(entry.createdAt) <= session.t1 + SLACK_MS);
    });

    test("a session renews itself as self: sessionTtlSeconds by default, ttlSeconds when asked, then exactly up to its maximum, then 409", async () => {
      const session = await userSession("sess-renew", ["maker"]);
      const first = await renewed("self", undefined, session.token);
      assertAfter(first.view.expiresAt, first.t0, first.t1, SESSION_TTL_SECONDS, "default");
      assert.ok(ms(first.view.expiresAt) > ms(session.expiresAt), "the default renewal moved the expiry later");
      assert.deepEqual(
        [first.view.id, first.view.kind, first.view.renewTtlSeconds],
        [session.tokenId, "session", SESSION_TTL_SECONDS],
      );
      assertNoSecret(first.view, session.token, "renew answer");
      const maxExpiresAt = first.view.maxExpiresAt;
      assert.equal(ms(maxExpiresAt) - ms(first.view.createdAt), SESSION_MAX_TTL_SECONDS * 1000);

      const asked = await renewed("self", { ttlSeconds: 1_200 }, session.token);
      assertAfter(asked.view.expiresAt, asked.t0, asked.t1, 1_200, "ttlSeconds 1200");
      const capped = await renewed(session.tokenId, { ttlSeconds: 3_600 }, session.token);
      assert.equal(capped.view.expiresAt, maxExpiresAt, "a renewal past the maximum stops exactly at it");
      const again = await renew("self", {}, session.token);
      assert.deepEqual(outcome(again), [409, "conflict"]);
      assert.match(messageOf(again), /renew|max/i);
      assert.equal((await whoami(session.token)).status, 200);
      const entry = await listed(session.tokenId, session.token);
      assert.deepEqual([entry?.expiresAt, entry?.maxExpiresAt], [maxExpiresAt, maxExpiresAt]);
    });

    test("the config: sessionMaxTtlSeconds defaults to 43,200, must be 60 s..30 days and at least sessionTtlSeconds", () => {
      const dir = mkdtempSync(join(tmpdir(), "custos-renew-config-"));
      try {
        const load = (auth: Json) => {
          const file = join(dir, "custos.json");
          writeFileSync(file, JSON.stringify({ auth }));
          return loadConfig({ configFile: file, env: { CUSTOS_DATA_DIR: dir } });
        };
        const defaults = load({}).auth as unknown as Json;
        assert.deepEqual([defaults.sessionTtlSeconds, defaults.sessionMaxTtlSeconds], [3_600, 43_200]);
        const set = load({ sessionTtlSeconds: 60, sessionMaxTtlSeconds: 60 }).auth as unknown as Json;
        assert.equal(set.sessionMaxTtlSeconds, 60);
        assert.equal(
          (load({ sessionMaxTtlSeconds: 30 * 86_400 }).auth as unknown as Json).sessionMaxTtlSeconds,
          2_592_000,
        );
        for (const auth of [
          { sessionTtlSeconds: 60, sessionMaxTtlSeconds: 59 },
          { sessionMaxTtlSeconds: 30 * 86_400 + 1 },
          { sessionTtlSeconds: 3_600, sessionMaxTtlSeconds: 3_599 },
          { sessionMaxTtlSeconds: 7_200.5 },
          { sessionMaxTtlSeconds: "43200" },
          // A session lifetime above the default maximum needs a maximum of its own.
          { sessionTtlSeconds: 86_400 },
        ]) {
          assert.throws(
            () => load(auth),
            (e: unknown) => isCustosError(e) && e.code === "invalid_request",
            JSON.stringify(auth),
          );
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe("renewing API tokens", () => {
    test("an API token renews itself by id and as self: by its renewTtlSeconds by default, by ttlSeconds when asked", async () => {
      const t = await make({ name: "self-renew", policies: [], ttlSeconds: 600, maxTtlSeconds: 7_200 });
      const byDefault = await renewed("self", undefined, t.token);
      assertAfter(byDefault.view.expiresAt, byDefault.t0, byDefault.t1, 600, "default");
      assert.ok(ms(byDefault.view.expiresAt) > ms(t.expiresAt));
      assert.deepEqual([byDefault.view.id, byDefault.view.name, byDefault.view.kind], [t.id, "self-renew", "api"]);
      assert.deepEqual(
        [byDefault.view.maxExpiresAt, byDefault.view.renewTtlSeconds, byDefault.view.createdAt],
        [t.maxExpiresAt, 600, t.createdAt],
      );
      assertNoSecret(byDefault.view, t.token, "renew answer");
      const emptyBody = await renewed(t.id, {}, t.token);
      assertAfter(emptyBody.view.expiresAt, emptyBody.t0, emptyBody.t1, 600, "empty body");
      const asked = await renewed(t.id, { ttlSeconds: 1_800 }, t.token);
      assertAfter(asked.view.expiresAt, asked.t0, asked.t1, 1_800, "ttlSeconds 1800");
      // The renewal is what the listing shows, and the token still works.
      assert.equal((await listed(t.id))?.expiresAt, asked.view.expiresAt);
      assert.equal((await whoami(t.token)).status, 200);
    });

    test("a renewal never shortens: one that would give an earlier expiry is 409 and changes nothing", async () => {
      const t = await make({ name: "no-shorter", policies: [], ttlSeconds: 3_600, maxTtlSeconds: 7_200 });
      const shorter = await renew(t.id, { ttlSeconds: 60 }, t.token);
      // The default is 3600 s too, but from now; after a longer explicit renewal it would be earlier.
      const longer = await renewed("self", { ttlSeconds: 5_400 }, t.token);
      const byDefault = await renew("self", undefined, t.token);
      assert.deepEqual(
        { shorter: outcome(shorter), byDefault: outcome(byDefault) },
        { shorter: [409, "conflict"], byDefault: [409, "conflict"] },
      );
      assert.equal((await listed(t.id))?.expiresAt, longer.view.expiresAt);
    });

    test("a renewal is capped exactly at maxExpiresAt, and the next one is 409; so is any renewal of a token made at its maximum", async () => {
      const t = await make({ name: "capped", policies: [], ttlSeconds: 600, maxTtlSeconds: 1_200 });
      const capped = await renewed("self", { ttlSeconds: 3_600 }, t.token);
      const next = await renew("self", { ttlSeconds: 3_600 }, t.token);
      const atMax = await make({ name: "at-max", policies: [], ttlSeconds: 600, maxTtlSeconds: 600 });
      const atMaxRenew = await renew(atMax.id, undefined);
      assert.deepEqual(
        {
          capped: [capped.view.expiresAt, capped.view.maxExpiresAt],
          next: outcome(next),
          atMax: outcome(atMaxRenew),
        },
        { capped: [t.maxExpiresAt, t.maxExpiresAt], next: [409, "conflict"], atMax: [409, "conflict"] },
      );
      assert.match(messageOf(next), /renew|max/i);
      assert.equal((await listed(atMax.id))?.expiresAt, atMax.expiresAt);
    });

    test("a child's renewal goes no further than its parent's expiry, even after the parent renews itself", async () => {
      const parent = await make({ name: "p", policies: ["maker"], ttlSeconds: 600, maxTtlSeconds: 3_600 });
      const child = await make({ name: "c", ttlSeconds: 120, maxTtlSeconds: 7_200 }, parent.token);
      assert.equal(child.maxExpiresAt, parent.expiresAt);
      // The parent renews the token it made (no policy needed), asking for more than the parent has left.
      const byParent = await renewed(child.id, { ttlSeconds: 3_000 }, parent.token);
      assert.equal(byParent.view.expiresAt, parent.expiresAt);
      const parentRenewed = await renewed("self", { ttlSeconds: 1_800 }, parent.token);
      assert.ok(ms(parentRenewed.view.expiresAt) > ms(parent.expiresAt));
      const childAgain = await renew("self", { ttlSeconds: 3_000 }, child.token);
      assert.deepEqual(outcome(childAgain), [409, "conflict"]);
      assert.equal((await listed(child.id))?.expiresAt, parent.expiresAt);
    });

    test("a renewed token's new expiry counts at once: a token it makes right after may outlive its old expiry", async () => {
      const t = await make({ name: "cache", policies: ["maker"], ttlSeconds: 120, maxTtlSeconds: 7_200 });
      // Cached with its old expiry by these requests, if the cache is not cleared.
      assert.equal((await whoami(t.token)).status, 200);
      const r = await renewed("self", { ttlSeconds: 3_600 }, t.token);
      const t0 = Date.now();
      const child = await make({ name: "cache-child", ttlSeconds: 1_800 }, t.token);
      const t1 = Date.now();
      assert.ok(ms(r.view.expiresAt) > ms(t.expiresAt));
      assertAfter(child.expiresAt, t0, t1, 1_800, "a child made right after its maker's renewal");
    });

    test("a token with no expiry or made without maxTtlSeconds can't be renewed: 409, unchanged", async () => {
      const forever = await make({ name: "nr-forever", policies: [] });
      const fixed = await make({ name: "nr-fixed", policies: [], ttlSeconds: 600 });
      const answers = {
        foreverByAdmin: outcome(await renew(forever.id, undefined)),
        foreverSelf: outcome(await renew("self", { ttlSeconds: 600 }, forever.token)),
        fixedByAdmin: outcome(await renew(fixed.id, { ttlSeconds: 3_600 })),
        fixedSelf: outcome(await renew("self", undefined, fixed.token)),
      };
      assert.deepEqual(answers, {
        foreverByAdmin: [409, "conflict"],
        foreverSelf: [409, "conflict"],
        fixedByAdmin: [409, "conflict"],
        fixedSelf: [409, "conflict"],
      });
      assert.deepEqual(
        [(await listed(forever.id))?.expiresAt, (await listed(fixed.id))?.expiresAt],
        [null, fixed.expiresAt],
      );
    });

    test("a revoked token is 409 for its user's session and for an admin", async () => {
      const session = await userSession("rv-user", ["maker"]);
      const t = await make({ name: "rv", ttlSeconds: 600, maxTtlSeconds: 3_600 }, session.token);
      ok(await call("DELETE", `/v1/auth/tokens/${t.id}`, undefined, session.token));
      assert.deepEqual(
        { bySession: outcome(await renew(t.id, undefined, session.token)), byAdmin: outcome(await renew(t.id)) },
        { bySession: [409, "conflict"], byAdmin: [409, "conflict"] },
      );
      assert.equal((await whoami(t.token)).status, 401);
    });

    test("bad ttlSeconds and unknown members are 400 invalid_request and change nothing; 60 s and 10 years are in range", async () => {
      const t = await make({ name: "bad-input", policies: [], ttlSeconds: 600, maxTtlSeconds: 7_200 });
      const bodies: unknown[] = [
        { ttlSeconds: 59 },
        { ttlSeconds: 1.5 },
        { ttlSeconds: "60" },
        { ttlSeconds: TEN_YEARS + 1 },
        { ttlSeconds: 0 },
        { ttlSeconds: -600 },
        { ttlSeconds: null },
        { ttl: 600 },
        { ttlSeconds: 600, maxTtlSeconds: 7_200 },
      ];
      const answers = [];
      for (const body of bodies) answers.push(outcome(await renew(t.id, body, t.token)));
      assert.deepEqual(answers, Array(bodies.length).fill([400, "invalid_request"]));
      assert.equal((await listed(t.id))?.expiresAt, t.expiresAt);
      // 60 s is valid input; it only comes earlier than the current expiry.
      assert.deepEqual(outcome(await renew(t.id, { ttlSeconds: 60 }, t.token)), [409, "conflict"]);
      const longest = await renewed(t.id, { ttlSeconds: TEN_YEARS }, t.token);
      assert.equal(longest.view.expiresAt, t.maxExpiresAt);
    });
  });

  describe("who may renew", () => {
    test("a user's session, its API tokens and the standalone tokens made in its sessions renew one another without a policy", async () => {
      const s1 = await userSession("own-user", ["maker"]);
      const a1 = await make({ name: "own-a1", ttlSeconds: 600, maxTtlSeconds: 3_600 }, s1.token);
      const bare = await make({ name: "own-bare", policies: [], ttlSeconds: 600, maxTtlSeconds: 3_600 }, s1.token);
      const standalone = await make(
        { name: "own-standalone", forUser: false, policies: ["maker"], ttlSeconds: 600, maxTtlSeconds: 3_600 },
        s1.token,
      );
      const s2 = await login("own-user", s1.password);
      const answers = {
        bareRenewsA1: outcome(await renew(a1.id, { ttlSeconds: 900 }, bare.token)),
        bareRenewsSession: outcome(await renew(s1.tokenId, { ttlSeconds: 900 }, bare.token)),
        bareRenewsStandalone: outcome(await renew(standalone.id, { ttlSeconds: 900 }, bare.token)),
        otherSessionRenewsStandalone: outcome(await renew(standalone.id, { ttlSeconds: 1_200 }, s2.token)),
        standaloneRenewsItself: outcome(await renew(standalone.id, { ttlSeconds: 1_500 }, standalone.token)),
        a1RenewsBare: outcome(await renew(bare.id, { ttlSeconds: 900 }, a1.token)),
      };
      assert.deepEqual(answers, {
        bareRenewsA1: [200, "ok"],
        bareRenewsSession: [200, "ok"],
        bareRenewsStandalone: [200, "ok"],
        otherSessionRenewsStandalone: [200, "ok"],
        standaloneRenewsItself: [200, "ok"],
        a1RenewsBare: [200, "ok"],
      });
      // Each did renew: every expiry is later than it was made with.
      for (const [id, was] of [
        [a1.id, a1.expiresAt],
        [s1.tokenId, s1.expiresAt],
        [standalone.id, standalone.expiresAt],
        [bare.id, bare.expiresAt],
      ] as [string, string][]) {
        assert.ok(ms((await listed(id))?.expiresAt) > ms(was), `token ${id} was not renewed`);
      }
    });

    test("a token its own token made is renewable by the maker token, not by another session of the same user", async () => {
      const session = await userSession("made-user", ["maker"]);
      const api = await make({ name: "made-api", ttlSeconds: 600, maxTtlSeconds: 3_600 }, session.token);
      const child = await make(
        { name: "made-child", forUser: false, policies: ["maker"], ttlSeconds: 300, maxTtlSeconds: 600 },
        api.token,
      );
      assert.equal(child.parentId, api.id);
      const byMaker = await renew(child.id, { ttlSeconds: 450 }, api.token);
      const expiryAfterMaker = (await listed(child.id))?.expiresAt;
      // Neither its token, its user's (it is standalone) nor made in a session: as revoking.
      const bySession = await renew(child.id, { ttlSeconds: 600 }, session.token);
      assert.deepEqual(
        { byMaker: outcome(byMaker), bySession: outcome(bySession) },
        { byMaker: [200, "ok"], bySession: [403, "forbidden"] },
      );
      assert.ok(ms(expiryAfterMaker) > ms(child.expiresAt));
      assert.equal((await listed(child.id))?.expiresAt, expiryAfterMaker);
    });

    test("another user's token is 403; an unknown id is 403 for a non-admin and 404 for an admin, who may renew any token", async () => {
      const owner = await userSession("who-owner", ["maker"]);
      const target = await make({ name: "who-target", ttlSeconds: 600, maxTtlSeconds: 3_600 }, owner.token);
      const other = await userSession("who-other", ["maker"]);
      const otherApi = await make({ name: "who-other-api" }, other.token);
      const adminsToken = await make({ name: "who-admins", policies: [], ttlSeconds: 600, maxTtlSeconds: 3_600 });
      const answers = {
        otherSession: outcome(await renew(target.id, undefined, other.token)),
        otherApi: outcome(await renew(target.id, { ttlSeconds: 900 }, otherApi.token)),
        otherSessionOnOwnerSession: outcome(await renew(owner.tokenId, undefined, other.token)),
        ownerOnAdminsToken: outcome(await renew(adminsToken.id, undefined, owner.token)),
        unknownAsUser: outcome(await renew("aaaaaaaaaaaaaaaa", undefined, other.token)),
        unknownAsAdmin: outcome(await renew("aaaaaaaaaaaaaaaa")),
      };
      const unchanged = [(await listed(target.id))?.expiresAt, (await listed(owner.tokenId))?.expiresAt];
      const byAdmin = await renewed(target.id, { ttlSeconds: 1_200 });
      assert.deepEqual(answers, {
        otherSession: [403, "forbidden"],
        otherApi: [403, "forbidden"],
        otherSessionOnOwnerSession: [403, "forbidden"],
        ownerOnAdminsToken: [403, "forbidden"],
        unknownAsUser: [403, "forbidden"],
        unknownAsAdmin: [404, "not_found"],
      });
      assert.deepEqual(unchanged, [target.expiresAt, owner.expiresAt]);
      assertAfter(byAdmin.view.expiresAt, byAdmin.t0, byAdmin.t1, 1_200, "renewed by an admin");
    });
  });

  test("a renewal is audited as token.renew on token/<id> with the old and new expiresAt, never the token string", async () => {
    const session = await userSession("audit-user", ["maker"]);
    const t = await make({ name: "audited", ttlSeconds: 600, maxTtlSeconds: 3_600 }, session.token);
    const { view, r } = await renewed(t.id, { ttlSeconds: 1_800 }, session.token);
    const records = (
      ok(await call("GET", `/v1/audit?action=token.renew&resource=token/${t.id}&order=desc&limit=10`)).records as Json[]
    ).filter((rec) => rec.resource === `token/${t.id}` && rec.action === "token.renew");
    assert.equal(records.length, 1, JSON.stringify(records));
    const record = records[0] as Json;
    const details = record.details as { before?: Json; after?: Json };
    assert.deepEqual(
      {
        principal: record.principal,
        outcome: record.outcome,
        requestId: record.requestId,
        before: details.before?.expiresAt,
        after: details.after?.expiresAt,
      },
      {
        principal: "user:audit-user",
        outcome: "success",
        requestId: r.headers?.["x-request-id"],
        before: t.expiresAt,
        after: view.expiresAt,
      },
    );
    assert.equal("hash" in (details.before ?? {}), false);
    assert.equal("hash" in (details.after ?? {}), false);
    const everywhere = JSON.stringify(records) + JSON.stringify(custos.query("SELECT * FROM audit_log"));
    assert.ok(!everywhere.includes(t.token.slice(21)), "the audit log holds the token's secret");
    assert.ok(!everywhere.includes(session.token.slice(21)), "the audit log holds the session's secret");
  });

  describe("the CLI", () => {
    test("custos token renew renews the caller's token by default and a named one with --ttl, showing the view without the token", async () => {
      const t = await make({ name: "cli-renew", policies: [], ttlSeconds: 600, maxTtlSeconds: 86_400 });
      const t0 = Date.now();
      const self = custos.cli(["--json", "token", "renew", "--ttl", "2h"], { token: t.token });
      const t1 = Date.now();
      assert.equal(self.status, 0, self.stderr);
      const view = JSON.parse(self.stdout) as Json;
      assertAfter(view.expiresAt, t0, t1, 7_200, "custos token renew --ttl 2h");
      assert.deepEqual([view.id, view.maxExpiresAt, view.renewTtlSeconds], [t.id, t.maxExpiresAt, 600]);
      assertNoSecret(view, t.token, "CLI JSON");

      // As the admin, by id, in human output: asking for a day stops at the maximum.
      const named = custos.cli(["token", "renew", t.id, "--ttl", "1d"]);
      assert.equal(named.status, 0, named.stderr);
      assert.ok(named.stdout.includes(String(t.maxExpiresAt)), named.stdout);
      assert.ok(!named.stdout.includes(t.token.slice(21)), "the CLI printed the token");
      assert.equal((await listed(t.id))?.expiresAt, t.maxExpiresAt);
      // At its maximum: the server's 409 makes a failing command.
      const refused = custos.cli(["token", "renew", t.id]);
      assert.equal(refused.status, 1, refused.stdout);
      assert.match(refused.stderr, /conflict/);
    });

    test("custos token create --max-ttl passes maxTtlSeconds", async () => {
      const r = custos.cli(["--json", "token", "create", "--name", "cli-max", "--ttl", "1h", "--max-ttl", "1d"]);
      assert.equal(r.status, 0, r.stderr);
      const made = JSON.parse(r.stdout) as Json;
      assert.deepEqual(
        {
          ttl: ms(made.expiresAt) - ms(made.createdAt),
          maxTtl: ms(made.maxExpiresAt) - ms(made.createdAt),
          renewTtlSeconds: made.renewTtlSeconds,
        },
        { ttl: 3_600_000, maxTtl: 86_400_000, renewTtlSeconds: 3_600 },
      );
      const entry = await listed(String(made.id));
      assert.equal(entry?.maxExpiresAt, made.maxExpiresAt);
    });
  });

  test("past the old expiry: the renewed token still works; the one left to expire can't authenticate (self: 401) nor be renewed (409)", async () => {
    const kept = ok(early.kept, 201) as Made;
    const lapsing = ok(early.lapsing, 201) as Made;
    assert.ok(keptOldExpiry && keptNewExpiry, "the first test renewed the kept token");
    const until = Math.max(ms(keptOldExpiry), ms(lapsing.expiresAt)) + 1_500;
    assert.ok(until - early.made < 65_000, "the early tokens live about 60 s");
    await sleep(until - Date.now());
    const answers = {
      kept: (await whoami(kept.token)).status,
      lapsing: (await whoami(lapsing.token)).status,
      lapsingSelf: (await renew("self", { ttlSeconds: 300 }, lapsing.token)).status,
      lapsingByAdmin: outcome(await renew(lapsing.id, { ttlSeconds: 300 })),
    };
    assert.deepEqual(answers, { kept: 200, lapsing: 401, lapsingSelf: 401, lapsingByAdmin: [409, "conflict"] });
    assert.deepEqual(
      [(await listed(kept.id))?.expiresAt, (await listed(lapsing.id))?.expiresAt],
      [keptNewExpiry, lapsing.expiresAt],
    );
  });
});
