/** The universal DER tags Custos reads and writes by hand (X.680 8.4, X.690). */
export const BOOLEAN = 0x01;
export const INTEGER = 0x02;
export const BIT_STRING = 0x03;
export const OCTET_STRING = 0x04;
export const OBJECT_IDENTIFIER = 0x06;
export const UTF8_STRING = 0x0c;
export const PRINTABLE_STRING = 0x13;
export const TELETEX_STRING = 0x14;
export const IA5_STRING = 0x16;
export const UTC_TIME = 0x17;
export const GENERALIZED_TIME = 0x18;
export const UNIVERSAL_STRING = 0x1c;
export const BMP_STRING = 0x1e;
export const SEQUENCE = 0x30;
export const SET = 0x31;

// GeneralName choices (RFC 5280 4.2.1.6), context-specific and IMPLICIT: [1] rfc822Name,
// [2] dNSName, [6] URI, [7] iPAddress and [8] registeredID are primitive; [0]
// otherName, [3] x400Address, [4] directoryName and [5] ediPartyName are constructed.
export const EMAIL_NAME = 0x81;
export const DNS_NAME = 0x82;
export const URI_NAME = 0x86;
export const IP_ADDRESS_NAME = 0x87;
export const REGISTERED_ID_NAME = 0x88;
