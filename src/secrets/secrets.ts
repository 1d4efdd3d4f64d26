import { CustosError } from "../errors/index.js";
import type { KmsService } from "../kms/index.js";
import type { App, Platform } from "../platform/index.js";
import type { Store } from "../store/index.js";

export interface SecretsOptions {
  readonly store: Store;
  readonly kms: KmsService;
  readonly platform: Platform;
  readonly clock?: () => Date;
}

/** A secret as an instance receives it. */
export interface DeliveredSecret {
  /** The whole path: `<org>/<space>/<app>/<name>` or `shared/<name>`. */
  readonly path: string;
  /** Relative to the app (`db/password`), or `shared/<name>` for a shared secret. */
  readonly name: string;
  readonly version: number;
  readonly value: string;
}

const notBuilt = () => new CustosError("internal", "secrets are not built yet");

/** Versioned secrets (docs/broker.md). */
export class Secrets {
  constructor(_options: SecretsOptions) {}

  /** The latest live version of every secret the app may read: its own and the shared ones granted to it. */
  async forApp(_app: App): Promise<DeliveredSecret[]> {
    throw notBuilt();
  }

  /** One secret for an instance of `app`; `forbidden` unless it is the app's own or granted to it. */
  async readForApp(_app: App, _path: string): Promise<DeliveredSecret> {
    throw notBuilt();
  }
}
