import type { SecretStore } from "../secrets.js";
import type { Area } from "./area.js";

/** The secrets area's statements, run through the store's reads and group-committed writes. */
export function secretStore(_area: Area): SecretStore {
  return {};
}
