/**
 * Authentication and authorisation: users, groups, API tokens, policies and sudo
 * grants (`AuthService`), the action vocabulary, and the bootstrap of the first admin.
 */
export { ACTIONS, type Action, isAction, isPrivilegedAction, PRIVILEGED_ACTIONS } from "./actions.js";
export { buildInitialAdmin, type InitialAdmin, type InitialAdminInput } from "./bootstrap.js";
export { globMatch } from "./glob.js";
export { foldedName, tryNormalizeName } from "./names.js";
export { MIN_PASSWORD_LENGTH } from "./password.js";
export { ADMIN_POLICY, builtinAdminPolicy, type PolicyInput, PolicySet, validatePolicy } from "./policy.js";
export type { Principal } from "./principal.js";
export { AuthService } from "./service.js";
export { hashToken, parseTokenId } from "./token.js";
export type {
  AuthServiceOptions,
  CreateGroupInput,
  CreateTokenInput,
  CreateUserInput,
  GrantSudoInput,
  LoginResult,
  PasswordInput,
  PutPolicyInput,
  RenewTokenInput,
  UpdateGroupInput,
  UpdateUserInput,
} from "./types.js";
export { type GroupInfo, groupInfo, type TokenInfo, tokenInfo, type UserInfo, userInfo } from "./views.js";
