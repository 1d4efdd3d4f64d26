/**
 * Agents that run beside what Custos serves: `runCertAgent` keeps a TLS endpoint's
 * certificate files equal to its consumer's target and reports what it serves.
 */
export {
  AGENT_ID_RULE,
  type AgentLog,
  type AgentLogLevel,
  CertAgent,
  CertAgentError,
  type CertAgentErrorCode,
  type CertAgentOptions,
  type CheckTarget,
  defaultServername,
  fingerprintOf,
  isAgentId,
  isRefusal,
  presentedFingerprint,
  type RoundResult,
  type RunOptions,
  runCertAgent,
  runReload,
  STATE_SUFFIX,
  writeFileAtomic,
} from "./cert-agent.js";
