import type { AuthService } from "../auth/index.js";
import type { CustosConfig } from "../config/index.js";
import type { Keystore } from "../hsm/index.js";
import type { Authority, Issuer } from "../pki/index.js";
import type { Platform } from "../platform/index.js";
import type { Secrets } from "../secrets/index.js";
import type { Store } from "../store/index.js";

export interface BrokerOptions {
  readonly store: Store;
  readonly keystore: Keystore;
  readonly auth: AuthService;
  readonly platform: Platform;
  readonly secrets: Secrets;
  readonly issuer: Issuer;
  readonly authority: Authority;
  readonly config: CustosConfig["broker"];
  /** Where clients reach Custos (the JWT issuer when none is configured). */
  readonly baseUrl: string;
  readonly clock?: () => Date;
}

/** The container credential broker (docs/broker.md). */
export class Broker {
  constructor(_options: BrokerOptions) {}
}
