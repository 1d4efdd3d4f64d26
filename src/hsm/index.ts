export type * from "./keystore.js";
