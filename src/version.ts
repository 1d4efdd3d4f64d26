/** The release of this checkout: the server reports it, `custos --version` prints it. */
export const VERSION = "0.1.0";
