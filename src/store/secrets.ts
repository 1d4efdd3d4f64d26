/** The secrets area of the Store (see docs/broker.md). */
// biome-ignore lint/suspicious/noEmptyInterface: filled in as the area is built
export interface SecretStore {}
