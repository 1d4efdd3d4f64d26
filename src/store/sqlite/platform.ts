import type { PlatformStore } from "../platform.js";
import type { Area } from "./area.js";

/** The platform area's statements, run through the store's reads and group-committed writes. */
export function platformStore(_area: Area): PlatformStore {
  return {};
}
