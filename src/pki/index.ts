/**
 * The internal PKI: CA keys in the HSM (`Authority`), roles and issued
 * certificates (`Issuer`), TLS consumers and their rotation (`Consumers`), and
 * Custos's own HTTPS certificate.
 */
export { Authority, type AuthorityOptions, type IssuerView } from "./authority.js";
export {
  type AgentView,
  type ConsumerInput,
  type ConsumerMaterial,
  Consumers,
  type ConsumerView,
  type GenerationView,
} from "./consumers.js";
export { crlToPem, REVOCATION_REASONS, type RevocationReason } from "./crl.js";
export { MAX_CSR_BYTES, type ParsedCsr, parseCsr } from "./csr.js";
export {
  type CertificateView,
  type Issued,
  type IssuedWithKey,
  type IssueInput,
  Issuer,
  type LeafRequest,
  type RoleView,
  SERVER_ROLE,
  type SignInput,
} from "./issuer.js";
export { isOcspErrorResponse, ocspErrorResponse } from "./ocsp.js";
export { KEY_TYPES, type KeyType, type Role } from "./role.js";
export { defaultServerNames, issueServerCertificate, type ServerTls, serverNeedsNew } from "./tls.js";
