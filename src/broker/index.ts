/** Container instances: registration, bootstrap tokens, identity, JWTs, delivery of secrets, revocation. */
export { Broker, type BrokerOptions } from "./broker.js";
