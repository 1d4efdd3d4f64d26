import type { Actor } from "../../src/audit/index.js";
import type { Principal } from "../../src/auth/index.js";
import { Platform } from "../../src/platform/index.js";
import { Secrets } from "../../src/secrets/index.js";
import type { UserRecord } from "../../src/store/index.js";
import { type KmsFixture, openFixture } from "../kms/setup.js";

/** The real KMS fixture (SoftHSM, SQLite, audit log) with the platform and secrets services on it. */
export interface PlatformFixture extends KmsFixture {
  readonly platform: Platform;
  readonly secrets: Secrets;
  /** Creates a user (no password) and answers a principal acting for it without policies. */
  user(name: string): Promise<Principal>;
  /** Creates a group with these user names as members. */
  group(name: string, members: readonly string[]): Promise<void>;
}

export const admin: Actor = { principal: "user:admin", requestId: "req-admin", source: "127.0.0.1" };

export async function openPlatformFixture(prefix: string): Promise<PlatformFixture> {
  const f = await openFixture(prefix);
  const platform = new Platform({ store: f.store, kms: f.kms });
  const secrets = new Secrets({ store: f.store, kms: f.kms, platform });
  const users = new Map<string, UserRecord>();
  const stamp = new Date().toISOString();
  return Object.assign(f, {
    platform,
    secrets,
    async user(name: string): Promise<Principal> {
      const record: UserRecord = {
        id: `u-${name}`,
        name,
        passwordHash: null,
        policies: [],
        disabled: false,
        createdAt: stamp,
        updatedAt: stamp,
        revision: 1,
      };
      await f.store.createUser(record, { ...entry("user.create", `user/${name}`) });
      users.set(name, record);
      return {
        kind: "user",
        id: record.id,
        name,
        userId: record.id,
        tokenId: `t-${name}`,
        policies: [],
        scoped: false,
        isAdmin: false,
        sudoUntil: null,
        display: `user:${name}`,
      };
    },
    async group(name: string, members: readonly string[]): Promise<void> {
      await f.store.createGroup(
        {
          id: `g-${name}`,
          name,
          members: members.map((m) => `u-${m}`),
          policies: [],
          createdAt: stamp,
          updatedAt: stamp,
          revision: 1,
        },
        entry("group.create", `group/${name}`),
      );
    },
  });
}

function entry(action: string, resource: string) {
  return {
    time: new Date().toISOString(),
    requestId: "setup",
    principal: "system",
    source: "local",
    action,
    resource,
    outcome: "success" as const,
    errorCode: null,
    details: {},
  };
}
