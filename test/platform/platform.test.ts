import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { isCustosError } from "../../src/errors/index.js";
import { Platform } from "../../src/platform/index.js";
import type { AuditEntry, BootstrapTokenRecord, InstanceRecord } from "../../src/store/index.js";
import { admin, openPlatformFixture, type PlatformFixture } from "./setup.js";

describe("platform model", () => {
  let f: PlatformFixture;
  before(async () => {
    f = await openPlatformFixture("platform");
  });
  after(async () => {
    await f?.close();
  });

  test("an app is created with its own AES-256 encrypt key, and owners by name", async () => {
    await f.user("ann");
    await f.user("bob");
    await f.group("web-team", ["bob"]);
    await f.platform.createOrg(admin, "acme");
    await f.platform.createSpace(admin, "acme", "prod");
    const view = await f.platform.createApp(
      admin,
      { org: "acme", space: "prod", app: "web" },
      { users: ["ann"], groups: ["web-team"] },
    );
    assert.equal(view.keyName, "app.acme.prod.web");
    assert.deepEqual(view.owners, { users: ["ann"], groups: ["web-team"] });
    const key = await f.kms.getKey(admin, "app.acme.prod.web");
    assert.equal(key.purpose, "encrypt");
    assert.equal(key.algorithm, "aes-256-gcm");
    assert.equal(key.state, "enabled");
    const app = await f.platform.getApp({ org: "acme", space: "prod", app: "web" });
    assert.deepEqual(await f.platform.appById(app.id), app);
    const [created] = await f.records("platform.app.create");
    assert.equal(created?.resource, "org/acme/space/prod/app/web");
  });

  test("isOwner: directly, through a group, and not for others, standalone tokens or scoped tokens", async () => {
    const app = await f.platform.getApp({ org: "acme", space: "prod", app: "web" });
    const ann = { ...(await principal("ann")) };
    const bob = await principal("bob");
    const carl = await f.user("carl");
    assert.equal(await f.platform.isOwner(ann, app), true);
    assert.equal(await f.platform.isOwner(bob, app), true, "bob owns it through web-team");
    assert.equal(await f.platform.isOwner(carl, app), false);
    assert.equal(await f.platform.isOwner({ ...ann, kind: "token", userId: null }, app), false);
    assert.equal(await f.platform.isOwner({ ...ann, kind: "token" }, app), true, "ann's unscoped token");
    assert.equal(await f.platform.isOwner({ ...ann, kind: "token", scoped: true }, app), false, "ann's scoped token");
    assert.equal(await f.platform.isOwner({ ...bob, kind: "token", scoped: true }, app), false, "bob's scoped token");
  });

  test("the store finds the apps a user or group owns, and none for others", async () => {
    const names = async (users: string[], groups: string[]) =>
      (await f.store.platform.appsOwnedBy(users, groups)).map((a) => `${a.org}/${a.space}/${a.name}`);
    assert.deepEqual(await names(["u-ann"], []), ["acme/prod/web"]);
    assert.deepEqual(await names([], ["g-web-team"]), ["acme/prod/web"]);
    assert.deepEqual(await names(["u-ann"], ["g-web-team"]), ["acme/prod/web"], "each app once");
    assert.deepEqual(await names(["u-bob"], []), [], "bob owns it only through his group");
    assert.deepEqual(await names([], []), []);
  });

  async function principal(name: string) {
    return {
      kind: "user" as const,
      id: `u-${name}`,
      name,
      userId: `u-${name}`,
      tokenId: `t-${name}`,
      policies: [],
      scoped: false,
      isAdmin: false,
      sudoUntil: null,
      display: `user:${name}`,
    };
  }

  test("names are DNS labels; the org name shared is reserved; duplicates conflict", async () => {
    for (const bad of ["Acme", "-a", "a-", "a_b", "", "x".repeat(64)]) {
      await assert.rejects(f.platform.createOrg(admin, bad), (e) => isCustosError(e, "invalid_request"), bad);
    }
    await assert.rejects(f.platform.createOrg(admin, "shared"), (e) => isCustosError(e, "invalid_request"));
    await assert.rejects(f.platform.createOrg(admin, "acme"), (e) => isCustosError(e, "conflict"));
    await assert.rejects(f.platform.createApp(admin, { org: "acme", space: "prod", app: "web" }), (e) =>
      isCustosError(e, "conflict"),
    );
    await assert.rejects(f.platform.createApp(admin, { org: "acme", space: "nope", app: "web" }), (e) =>
      isCustosError(e, "not_found"),
    );
    await assert.rejects(
      f.platform.createApp(admin, { org: "acme", space: "prod", app: "api" }, { users: ["nobody"] }),
      (e) => isCustosError(e, "invalid_request"),
    );
    await assert.rejects(f.kms.getKey(admin, "app.acme.prod.api"), (e) => isCustosError(e, "not_found"));
  });

  test("an org with spaces and a space with apps can't be deleted", async () => {
    await assert.rejects(f.platform.deleteOrg(admin, "acme"), (e) => isCustosError(e, "conflict"));
    await assert.rejects(f.platform.deleteSpace(admin, "acme", "prod"), (e) => isCustosError(e, "conflict"));
  });

  test("owners are replaced and audited with before and after", async () => {
    const view = await f.platform.setOwners(admin, { org: "acme", space: "prod", app: "web" }, { users: ["carl"] });
    assert.deepEqual(view.owners, { users: ["carl"], groups: [] });
    const app = await f.platform.getApp({ org: "acme", space: "prod", app: "web" });
    assert.deepEqual(app.ownerUsers, ["u-carl"]);
    const [rec] = (await f.records("platform.app.update")).slice(-1);
    assert.deepEqual(rec?.details.after, { owners: { users: ["carl"], groups: [] } });
  });

  test("an owner deleted after it was looked up: the creation is refused as if it had gone first, and the name stays free", async () => {
    await f.user("leaver");
    let deletion: Promise<void> | undefined;
    const platform = new Platform({
      store: f.store,
      kms: f.kms,
      // Read once the owners are looked up, before the app is written: the user's deletion is queued then.
      clock: () => {
        deletion ??= f.store.deleteUser("u-leaver", setupEntry("user.delete", "user/leaver"));
        return new Date();
      },
    });
    const ref = { org: "acme", space: "prod", app: "left" };
    await assert.rejects(
      platform.createApp(admin, ref, { users: ["leaver"] }),
      (e) => isCustosError(e, "invalid_request") && e.message === "owner: no user named leaver",
    );
    assert.ok(deletion, "control: the user was deleted in between");
    await deletion;
    await assert.rejects(f.kms.getKey(admin, "app.acme.prod.left"), (e) => isCustosError(e, "not_found"));
    const again = await f.platform.createApp(admin, ref);
    assert.equal(again.keyName, "app.acme.prod.left");
    assert.equal((await f.kms.getKey(admin, "app.acme.prod.left")).state, "enabled");
    await f.platform.deleteApp(admin, ref);
  });

  test("an app is made after its record: a key of its name made meanwhile refuses it and leaves no app", async () => {
    const ref = { org: "acme", space: "prod", app: "taken" };
    await f.kms.createKey(admin, { name: "app.acme.prod.taken", purpose: "encrypt" });
    await assert.rejects(
      f.platform.createApp(admin, ref),
      (e) => isCustosError(e, "conflict") && /keeps its name/.test(e.message),
    );
    await assert.rejects(f.platform.getApp(ref), (e) => isCustosError(e, "not_found"));
    assert.equal(
      (await f.kms.getKey(admin, "app.acme.prod.taken")).state,
      "enabled",
      "someone else's key is left alone",
    );
  });

  test("owner names that fold to one are one owner, in the answer, the record and the audit", async () => {
    const ref = { org: "acme", space: "prod", app: "folded" };
    const view = await f.platform.createApp(admin, ref, {
      users: ["ann", "ANN", "Ann"],
      groups: ["web-team", "WEB-TEAM"],
    });
    assert.deepEqual(view.owners, { users: ["ann"], groups: ["web-team"] });
    const app = await f.platform.getApp(ref);
    assert.deepEqual([app.ownerUsers, app.ownerGroups], [["u-ann"], ["g-web-team"]]);
    const [created] = (await f.records("platform.app.create")).slice(-1);
    assert.deepEqual(created?.details.owners, view.owners);
    await f.platform.deleteApp(admin, ref);
  });

  test("a live instance blocks the app's deletion before its key goes; a deletion begun takes no new instance", async () => {
    const ref = { org: "acme", space: "prod", app: "busy" };
    const { id: appId } = await f.platform.createApp(admin, ref);
    const register = (id: string) => f.store.broker.register(...instanceOf(id, appId));
    await register("busy-1");
    await assert.rejects(f.platform.deleteApp(admin, ref), (e) => isCustosError(e, "conflict"));
    assert.equal((await f.kms.getKey(admin, "app.acme.prod.busy")).state, "enabled", "the key stays with its app");
    await f.store.broker.stop("busy-1", new Date().toISOString(), "deregistered", setupEntry("broker.deregister", ""));
    // The first step of a deletion, as a deletion interrupted after it leaves the app.
    await f.store.platform.beginDeleteApp(
      appId,
      new Date().toISOString(),
      setupEntry("platform.app.delete.begin", "org/acme/space/prod/app/busy"),
    );
    await assert.rejects(register("busy-2"), (e) => isCustosError(e, "conflict") && /being deleted/.test(e.message));
    await f.platform.deleteApp(admin, ref);
    await assert.rejects(register("busy-3"), (e) => isCustosError(e, "not_found"));
    assert.equal(await f.store.broker.getInstance("busy-2"), undefined);
  });

  test("deleting the app destroys its key; then the space and org can go", async () => {
    await f.platform.deleteApp(admin, { org: "acme", space: "prod", app: "web" });
    const key = await f.kms.getKey(admin, "app.acme.prod.web");
    assert.equal(key.state, "destroyed");
    await assert.rejects(f.platform.getApp({ org: "acme", space: "prod", app: "web" }), (e) =>
      isCustosError(e, "not_found"),
    );
    await f.platform.deleteSpace(admin, "acme", "prod");
    await f.platform.deleteOrg(admin, "acme");
    assert.deepEqual(await f.platform.listOrgs(), []);
  });
});

function setupEntry(action: string, resource: string): AuditEntry {
  return {
    time: new Date().toISOString(),
    requestId: "setup",
    principal: "system",
    source: "local",
    action,
    resource,
    outcome: "success",
    errorCode: null,
    details: {},
  };
}

/** A registered instance of acme/prod/busy as the broker writes it, with its token and audit record. */
function instanceOf(id: string, appId: string): [InstanceRecord, BootstrapTokenRecord, AuditEntry] {
  const now = new Date();
  const at = now.toISOString();
  return [
    {
      id,
      org: "acme",
      space: "prod",
      app: "busy",
      appId,
      state: "registered",
      leaseExpiresAt: new Date(now.getTime() + 3_600_000).toISOString(),
      registeredBy: "token:agent",
      createdAt: at,
      updatedAt: at,
      stoppedAt: null,
      stopReason: null,
      revision: 1,
    },
    {
      id: `tok-${id}`,
      instanceId: id,
      hash: `hash-${id}`,
      createdAt: at,
      expiresAt: at,
      state: "unused",
      usedAt: null,
    },
    setupEntry("broker.register", `instance/acme/prod/busy/${id}`),
  ];
}
