/** Versioned secrets scoped to apps (and shared ones granted to apps), encrypted at rest through the KMS. */
export { type DeliveredSecret, Secrets, type SecretsOptions } from "./secrets.js";
