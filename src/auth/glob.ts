/**
 * Matches `text` against `pattern`, where `*` stands for any run of characters
 * (including none and including `/`). Every other character matches itself.
 *
 * Written as the two-pointer wildcard walk rather than a RegExp so that a
 * pattern full of stars costs O(pattern × text) at worst, never exponential
 * backtracking: patterns come from policy authors, resources from callers.
 */
export function globMatch(pattern: string, text: string): boolean {
  let p = 0;
  let t = 0;
  let star = -1;
  let mark = 0;
  while (t < text.length) {
    const pc = pattern[p];
    if (pc !== undefined && pc !== "*" && pc === text[t]) {
      p++;
      t++;
    } else if (pc === "*") {
      star = p++;
      mark = t;
    } else if (star !== -1) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (pattern[p] === "*") p++;
  return p === pattern.length;
}
