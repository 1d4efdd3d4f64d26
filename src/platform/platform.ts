import { randomUUID } from "node:crypto";
import { type Actor, auditEntry } from "../audit/index.js";
import { type Principal, tryNormalizeName } from "../auth/index.js";
import { CustosError, isCustosError } from "../errors/index.js";
import type { KmsService } from "../kms/index.js";
import { KeyedSerial } from "../serial/index.js";
import type { AppRecord, OrgRecord, SpaceRecord, Store } from "../store/index.js";
import { appKeyName, checkKeyNameFits, checkLabel, checkOrgName } from "./names.js";

export interface PlatformOptions {
  readonly store: Store;
  readonly kms: KmsService;
  readonly clock?: () => Date;
}

/** An app as `<org>/<space>/<app>`. */
export interface AppRef {
  readonly org: string;
  readonly space: string;
  readonly app: string;
}

export interface App extends AppRef {
  readonly id: string;
  /** Its KMS key: `app.<org>.<space>.<app>`. */
  readonly keyName: string;
  /** Owner user and group ids. */
  readonly ownerUsers: readonly string[];
  readonly ownerGroups: readonly string[];
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly revision: number;
}

/** Owners as the API names them: user and group names. */
export interface OwnersInput {
  readonly users?: readonly string[];
  readonly groups?: readonly string[];
}

/** An app as the API shows it: owners by name, its key, and its instances. */
export interface AppView {
  readonly id: string;
  readonly org: string;
  readonly space: string;
  readonly app: string;
  readonly keyName: string;
  readonly owners: { readonly users: string[]; readonly groups: string[] };
  /** Instances by state (filled in by the broker; empty when none is wired). */
  readonly instances: Readonly<Record<string, number>>;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly revision: number;
}

/** Counts each app's instances by state, in the order given; the broker provides it (`useInstanceCounts`). */
export type InstanceCounter = (apps: readonly App[]) => Promise<Record<string, number>[]>;

const MAX_OWNERS = 64;

/** The path of an app: `<org>/<space>/<app>`. */
export function appPath(ref: AppRef): string {
  return `${ref.org}/${ref.space}/${ref.app}`;
}

/** The policy resource of an app: `org/<org>/space/<space>/app/<app>`. */
export function appResource(ref: AppRef): string {
  return `org/${ref.org}/space/${ref.space}/app/${ref.app}`;
}

/** Parses `<org>/<space>/<app>`; `invalid_request` otherwise. */
export function parseAppPath(value: unknown): AppRef {
  const parts = typeof value === "string" ? value.split("/") : [];
  if (parts.length !== 3) throw new CustosError("invalid_request", "an app is written <org>/<space>/<app>");
  return checkAppRef({ org: parts[0], space: parts[1], app: parts[2] });
}

/** Validates the three names of an app reference. */
export function checkAppRef(ref: { org?: unknown; space?: unknown; app?: unknown }): AppRef {
  return {
    org: checkOrgName(ref.org),
    space: checkLabel(ref.space, "space name"),
    app: checkLabel(ref.app, "app name"),
  };
}

function fromRecord(r: AppRecord): App {
  return {
    id: r.id,
    org: r.org,
    space: r.space,
    app: r.name,
    keyName: r.keyName,
    ownerUsers: r.ownerUsers,
    ownerGroups: r.ownerGroups,
    createdAt: r.createdAt,
    updatedAt: r.updatedAt,
    revision: r.revision,
  };
}

function toRecord(a: App): AppRecord {
  return {
    id: a.id,
    org: a.org,
    space: a.space,
    name: a.app,
    keyName: a.keyName,
    ownerUsers: a.ownerUsers,
    ownerGroups: a.ownerGroups,
    createdAt: a.createdAt,
    updatedAt: a.updatedAt,
    revision: a.revision,
  };
}

/** The one key `#structure` serialises under: every structural change waits for the others. */
const STRUCTURE = "structure";

/**
 * Orgs, spaces, apps and owners (docs/broker.md). Each app has its own KMS key,
 * created with it and destroyed with it (crypto-shredding its secrets). Every
 * change commits with its audit record in one store transaction; the key's
 * creation and destruction are audited by the KMS.
 */
export class Platform {
  readonly #store: Store;
  readonly #kms: KmsService;
  readonly #now: () => Date;
  #instanceCounter: InstanceCounter | undefined;
  /**
   * App creations, app deletions, space deletions and owner replacements, one at a
   * time. An app's record is written before its key is made, and a deletion in
   * between would find no key to destroy and leave the key, made after it, with no app.
   */
  readonly #structure = new KeyedSerial();

  constructor(options: PlatformOptions) {
    this.#store = options.store;
    this.#kms = options.kms;
    this.#now = options.clock ?? (() => new Date());
  }

  /** Lets the broker report instance counts in `describeApp` (it is built after the platform). */
  useInstanceCounts(counter: InstanceCounter): void {
    this.#instanceCounter = counter;
  }

  // ---- orgs -----------------------------------------------------------------

  async createOrg(actor: Actor, name: unknown): Promise<OrgRecord> {
    const org: OrgRecord = { name: checkOrgName(name), createdAt: this.#now().toISOString() };
    await this.#store.platform.createOrg(org, auditEntry(actor, "platform.org.create", `org/${org.name}`, { org }));
    return org;
  }

  listOrgs(): Promise<OrgRecord[]> {
    return this.#store.platform.listOrgs();
  }

  /** `conflict` while it has spaces. */
  async deleteOrg(actor: Actor, name: unknown): Promise<void> {
    const org = checkOrgName(name);
    await this.#store.platform.deleteOrg(org, auditEntry(actor, "platform.org.delete", `org/${org}`));
  }

  // ---- spaces -----------------------------------------------------------------

  async createSpace(actor: Actor, org: unknown, name: unknown): Promise<SpaceRecord> {
    const space: SpaceRecord = {
      org: checkOrgName(org),
      name: checkLabel(name, "space name"),
      createdAt: this.#now().toISOString(),
    };
    const resource = `org/${space.org}/space/${space.name}`;
    await this.#store.platform.createSpace(space, auditEntry(actor, "platform.space.create", resource, { space }));
    return space;
  }

  async listSpaces(org: unknown): Promise<SpaceRecord[]> {
    const name = checkOrgName(org);
    if ((await this.#store.platform.getOrg(name)) === undefined) {
      throw new CustosError("not_found", `org ${name} not found`);
    }
    return this.#store.platform.listSpaces(name);
  }

  /** `conflict` while it has apps. */
  async deleteSpace(actor: Actor, org: unknown, name: unknown): Promise<void> {
    const o = checkOrgName(org);
    const s = checkLabel(name, "space name");
    await this.#structure.run(STRUCTURE, () =>
      this.#store.platform.deleteSpace(o, s, auditEntry(actor, "platform.space.delete", `org/${o}/space/${s}`)),
    );
  }

  // ---- apps -----------------------------------------------------------------

  /** The app, or `not_found`. */
  async getApp(ref: AppRef): Promise<App> {
    const r = checkAppRef(ref);
    const record = await this.#store.platform.getApp(r.org, r.space, r.app);
    if (record === undefined) throw new CustosError("not_found", `app ${appPath(r)} not found`);
    return fromRecord(record);
  }

  /** The app with this id, or undefined. */
  async appById(id: string): Promise<App | undefined> {
    const record = await this.#store.platform.getAppById(id);
    return record === undefined ? undefined : fromRecord(record);
  }

  /**
   * Whether the principal's user owns the app, directly or through a group, and the
   * principal carries that user's full rights: a token scoped to its own policies
   * (or a standalone one) acts only through them and owns nothing.
   */
  async isOwner(principal: Principal, app: App): Promise<boolean> {
    const userId = principal.userId;
    if (userId === null || principal.scoped) return false;
    if (app.ownerUsers.includes(userId)) return true;
    if (app.ownerGroups.length === 0) return false;
    const groups = await this.#store.groupsOfUser(userId);
    return groups.some((g) => app.ownerGroups.includes(g.id));
  }

  /** The apps of a space (`not_found` if the space doesn't exist). */
  async listApps(org: unknown, space: unknown): Promise<AppView[]> {
    const o = checkOrgName(org);
    const s = checkLabel(space, "space name");
    if ((await this.#store.platform.getSpace(o, s)) === undefined) {
      throw new CustosError("not_found", `space ${o}/${s} not found`);
    }
    const names = await this.#ownerNames();
    const apps = (await this.#store.platform.listApps(o, s)).map(fromRecord);
    const counts = await this.#instanceCounts(apps);
    return apps.map((app, i) => this.#view(app, names, counts[i] ?? {}));
  }

  /** One app with owners by name, its key and its instance counts. */
  async describeApp(ref: AppRef): Promise<AppView> {
    const app = await this.getApp(ref);
    const [counts] = await this.#instanceCounts([app]);
    return this.#view(app, await this.#ownerNames(), counts ?? {});
  }

  /** Each app's instance counts, in the order of `apps` (none before the broker is wired in). */
  async #instanceCounts(apps: readonly App[]): Promise<Record<string, number>[]> {
    return this.#instanceCounter === undefined ? apps.map(() => ({})) : this.#instanceCounter(apps);
  }

  /**
   * Creates the app and its KMS key `app.<org>.<space>.<app>` (AES-256, encrypt).
   * `conflict` if the app or a key of that name exists (the key of a deleted app
   * stays, destroyed, and keeps its name).
   *
   * The record goes first, then the key: a refused record (an owner or the space
   * deleted meanwhile) leaves nothing behind, where a key made first would have to
   * be destroyed and would hold the app's name for good.
   */
  async createApp(actor: Actor, ref: AppRef, owners: OwnersInput = {}): Promise<AppView> {
    const r = checkAppRef(ref);
    checkKeyNameFits(r.org, r.space, r.app);
    return this.#structure.run(STRUCTURE, () => this.#createApp(actor, r, owners));
  }

  async #createApp(actor: Actor, r: AppRef, owners: OwnersInput): Promise<AppView> {
    const ids = await this.#resolveOwners(owners);
    if ((await this.#store.platform.getSpace(r.org, r.space)) === undefined) {
      throw new CustosError("not_found", `space ${r.org}/${r.space} not found`);
    }
    if ((await this.#store.platform.getApp(r.org, r.space, r.app)) !== undefined) {
      throw new CustosError("conflict", `app ${appPath(r)} already exists`);
    }
    const keyName = appKeyName(r.org, r.space, r.app);
    // Cheap early answer before the record is written; createKey's unique name is what decides.
    if ((await this.#store.getKey(keyName)) !== undefined) throw keyNameTaken(keyName);
    const now = this.#now().toISOString();
    const app: App = { id: randomUUID(), ...r, keyName, ...ids, createdAt: now, updatedAt: now, revision: 1 };
    const names = await this.#ownerNames();
    const view = this.#view(app, names, {});
    try {
      await this.#store.platform.createApp(
        toRecord(app),
        auditEntry(actor, "platform.app.create", appResource(r), { app: appPath(r), keyName, owners: view.owners }),
      );
    } catch (e) {
      // An owner deleted since it was looked up fails the record's foreign key: answer as if it had been first.
      if (isCustosError(e, "invalid_request")) await this.#resolveOwners(owners);
      throw e;
    }
    try {
      await this.#kms.createKey(actor, {
        name: keyName,
        purpose: "encrypt",
        algorithm: "aes-256-gcm",
        description: `secrets of app ${appPath(r)}`,
      });
    } catch (e) {
      await this.#withdrawQuietly(actor, app, e);
      throw isCustosError(e, "conflict") ? keyNameTaken(keyName) : e;
    }
    return view;
  }

  /**
   * Replaces the owners. A replacement has no precondition, so concurrent ones are
   * serialised (the last one wins) rather than refused; the store's revision check
   * stays as the guard against a writer outside this process.
   */
  async setOwners(actor: Actor, ref: AppRef, owners: OwnersInput): Promise<AppView> {
    const ids = await this.#resolveOwners(owners);
    return this.#structure.run(STRUCTURE, async () => {
      const before = await this.getApp(ref);
      const after: App = { ...before, ...ids, updatedAt: this.#now().toISOString(), revision: before.revision + 1 };
      const names = await this.#ownerNames();
      const [counts] = await this.#instanceCounts([after]);
      const view = this.#view(after, names, counts ?? {});
      await this.#store.platform.updateApp(
        toRecord(after),
        before.revision,
        auditEntry(actor, "platform.app.update", appResource(before), {
          before: { owners: this.#view(before, names, {}).owners },
          after: { owners: view.owners },
        }),
      );
      return view;
    });
  }

  /**
   * Deletes the app: `conflict` while it has live instances. It is marked first, in
   * the transaction that finds no live instance, so that no instance can be
   * registered from then on; its key is destroyed next (so its secrets are
   * unrecoverable even if the rest fails), then the app, owners, secrets and grants
   * go in one transaction. A deletion that fails half-way leaves the app marked
   * (taking no instances): deleting it again finishes it.
   */
  async deleteApp(actor: Actor, ref: AppRef): Promise<void> {
    const r = checkAppRef(ref);
    await this.#structure.run(STRUCTURE, async () => {
      const app = await this.getApp(r);
      // Stops the instances whose lease has lapsed, which would otherwise count as live.
      await this.#instanceCounts([app]);
      await this.#store.platform.beginDeleteApp(
        app.id,
        this.#now().toISOString(),
        auditEntry(actor, "platform.app.delete.begin", appResource(app), { app: appPath(app) }),
      );
      try {
        await this.#kms.destroyKey(actor, app.keyName);
      } catch (e) {
        if (!isCustosError(e, "not_found")) throw e;
      }
      await this.#store.platform.deleteApp(
        app.id,
        auditEntry(actor, "platform.app.delete", appResource(app), { app: appPath(app), keyName: app.keyName }),
      );
    });
  }

  // ---- helpers ----------------------------------------------------------------

  async #resolveOwners(owners: OwnersInput): Promise<{ ownerUsers: string[]; ownerGroups: string[] }> {
    const users = [...new Set(owners.users ?? [])];
    const groups = [...new Set(owners.groups ?? [])];
    if (users.length + groups.length > MAX_OWNERS) {
      throw new CustosError("invalid_request", `an app has at most ${MAX_OWNERS} owners`);
    }
    // Names are looked up as the auth module stores them: ASCII, folded to lower case.
    const stored = (name: unknown) => (typeof name === "string" ? tryNormalizeName(name) : undefined);
    // Sets: two spellings of one name ("admin", "ADMIN") are one owner, as the store keeps them.
    const ownerUsers = new Set<string>();
    for (const name of users) {
      const folded = stored(name);
      const user = folded === undefined ? undefined : await this.#store.getUserByName(folded);
      if (user === undefined) throw new CustosError("invalid_request", `owner: no user named ${String(name)}`);
      ownerUsers.add(user.id);
    }
    const ownerGroups = new Set<string>();
    for (const name of groups) {
      const folded = stored(name);
      const group = folded === undefined ? undefined : await this.#store.getGroupByName(folded);
      if (group === undefined) throw new CustosError("invalid_request", `owner: no group named ${String(name)}`);
      ownerGroups.add(group.id);
    }
    return { ownerUsers: [...ownerUsers], ownerGroups: [...ownerGroups] };
  }

  /** Names of users and groups by id, for showing owners. */
  async #ownerNames(): Promise<Map<string, string>> {
    const [users, groups] = await Promise.all([this.#store.listUsers(), this.#store.listGroups()]);
    return new Map([...users.map((u) => [u.id, u.name] as const), ...groups.map((g) => [g.id, g.name] as const)]);
  }

  #view(app: App, names: Map<string, string>, instances: Record<string, number>): AppView {
    return {
      id: app.id,
      org: app.org,
      space: app.space,
      app: app.app,
      keyName: app.keyName,
      owners: {
        users: app.ownerUsers.map((id) => names.get(id) ?? id),
        groups: app.ownerGroups.map((id) => names.get(id) ?? id),
      },
      instances,
      createdAt: app.createdAt,
      updatedAt: app.updatedAt,
      revision: app.revision,
    };
  }

  /**
   * Removes the record of an app whose key could not be made, so that the name is
   * free again. The store says whether the failure made one after all (a commit
   * whose sync failed): then, or when the store can't say, the app stays (and can
   * be deleted); an instance registered meanwhile keeps it too.
   */
  async #withdrawQuietly(actor: Actor, app: App, cause: unknown): Promise<void> {
    const made =
      !isCustosError(cause, "conflict") &&
      (await this.#store.getKey(app.keyName).then(
        (key) => key !== undefined,
        () => true,
      ));
    if (made) return;
    try {
      await this.#store.platform.deleteApp(
        app.id,
        auditEntry(actor, "platform.app.delete", appResource(app), {
          app: appPath(app),
          keyName: app.keyName,
          reason: "its key could not be made",
        }),
      );
    } catch {
      // The key's error is the one the caller must see.
    }
  }
}

function keyNameTaken(keyName: string): CustosError {
  return new CustosError(
    "conflict",
    `a key named ${keyName} exists already (a deleted app's key keeps its name); choose another app name`,
  );
}
