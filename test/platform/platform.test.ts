import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { isCustosError } from "../../src/errors/index.js";
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
