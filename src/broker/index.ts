/** Container instances: registration, bootstrap tokens, identity, JWTs, delivery of secrets, revocation. */
export {
  type AuthenticatedInstance,
  Broker,
  type BrokerOptions,
  type ExchangeAnswer,
  type IdentityAnswer,
  type InstanceCredential,
  type InstanceSummary,
  type InstanceView,
  MAX_LEASE_SECONDS,
  PLATFORM_AGENT_POLICY,
  type Registered,
  type RegisterInput,
  type RequestInfo,
} from "./broker.js";
export { IDENTITY_ROLE } from "./identity.js";
export { type InstanceClaims, JWT_KEY_LABEL, JWT_KEY_SETTING } from "./jwt.js";
export { checkListQuery, instanceScopeResource } from "./list.js";
export { instanceResource, isDnsLabel, spiffeIdOf } from "./names.js";
