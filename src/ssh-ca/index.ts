export { certificateLine, parseCertificate } from "./certificate.js";
export { parsePublicKeyLine } from "./keys.js";
export { BUILTIN_ROLES, CRITICAL_OPTIONS, EXTENSIONS, type RoleSpec, type SshRole } from "./role.js";
export {
  type CaKeys,
  type CertificateView,
  type Requester,
  type Revoked,
  type SignedCertificate,
  type SignInput,
  SshCa,
  type SshCaOptions,
} from "./service.js";
export { type GrantSudoInput, MAX_SUDO_TTL_SECONDS, MIN_SUDO_TTL_SECONDS, type SudoGrantView } from "./sudo.js";
