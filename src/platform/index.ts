/**
 * The platform model: orgs, spaces, apps (each with its own KMS key) and their
 * owners. Running instances belong to the broker.
 */
export { appKeyName, checkLabel, checkOrgName } from "./names.js";
export {
  type App,
  type AppRef,
  type AppView,
  appPath,
  appResource,
  checkAppRef,
  type InstanceCounter,
  type OwnersInput,
  Platform,
  type PlatformOptions,
  parseAppPath,
} from "./platform.js";
