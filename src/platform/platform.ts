import type { Principal } from "../auth/index.js";
import { CustosError } from "../errors/index.js";
import type { KmsService } from "../kms/index.js";
import type { Store } from "../store/index.js";

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

const notBuilt = () => new CustosError("internal", "the platform model is not built yet");

/** Orgs, spaces, apps and owners (docs/broker.md). */
export class Platform {
  constructor(_options: PlatformOptions) {}

  /** The app, or `not_found`. */
  async getApp(_ref: AppRef): Promise<App> {
    throw notBuilt();
  }

  /** The app with this id, or undefined. */
  async appById(_id: string): Promise<App | undefined> {
    throw notBuilt();
  }

  /** Whether the principal's user owns the app, directly or through a group. */
  async isOwner(_principal: Principal, _app: App): Promise<boolean> {
    throw notBuilt();
  }
}
