/**
 * The platform model: orgs, spaces, apps (each with its own KMS key) and their
 * owners. Running instances belong to the broker.
 */
export { type App, type AppRef, Platform, type PlatformOptions } from "./platform.js";
