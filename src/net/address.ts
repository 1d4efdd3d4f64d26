/**
 * A Custos address as clients take it: `https://host:port`, without credentials,
 * query or fragment (the token must not travel in clear, and nothing else may ride
 * along). A problem names the address without any credentials it holds.
 */
export function parseHttpsAddress(address: string): { url: URL } | { problem: string } {
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    return { problem: `invalid address "${withoutCredentials(address)}": expected https://host:port` };
  }
  if (url.protocol !== "https:") {
    return {
      problem: `invalid address "${url.protocol}//${url.host}": only https:// is supported (the token must not travel in clear)`,
    };
  }
  if (url.username !== "" || url.password !== "" || url.search !== "" || url.hash !== "") {
    return { problem: `invalid address for ${url.host}: no credentials, query or fragment allowed` };
  }
  return { url };
}

/** The text with any `user:password@` after a scheme cut out (it may not parse as a URL). */
function withoutCredentials(text: string): string {
  return text.replace(/^([^:/?#]*:\/\/)[^/?#]*@/, "$1…@");
}
