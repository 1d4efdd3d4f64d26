export {
  createTlsCaCertificate,
  defaultServerNames,
  issueServerCertificate,
  needsRenewal,
  SERVER_CERT_LIFETIME_MS,
  type ServerTls,
  TLS_CA_KEY_LABEL,
} from "./tls.js";
