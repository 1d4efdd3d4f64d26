import { initialSchema } from "./001-initial.js";
import { pkiSchema } from "./002-pki.js";
import { platformSecretsSchema } from "./003-platform-secrets.js";
import { brokerSchema } from "./004-broker.js";
import { sshSchema } from "./005-ssh.js";
import { tokenParentSchema } from "./006-token-parent.js";
import { appDeletingSchema } from "./007-app-deleting.js";
import { tokenMakerSchema } from "./008-token-maker.js";
import { instanceNamesSchema } from "./009-instance-names.js";
import { tokenRenewalSchema } from "./010-token-renewal.js";
import type { Migration } from "./types.js";

export type { Migration } from "./types.js";

/** Every migration, in order. Append only: a released migration is never edited. */
export const migrations: readonly Migration[] = [
  initialSchema,
  pkiSchema,
  platformSecretsSchema,
  brokerSchema,
  sshSchema,
  tokenParentSchema,
  appDeletingSchema,
  tokenMakerSchema,
  instanceNamesSchema,
  tokenRenewalSchema,
];
