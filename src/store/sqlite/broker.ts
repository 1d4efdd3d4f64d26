import type { BrokerStore } from "../broker.js";
import type { Area } from "./area.js";

/** The broker area's statements, run through the store's reads and group-committed writes. */
export function brokerStore(_area: Area): BrokerStore {
  return {};
}
