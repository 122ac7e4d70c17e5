// Shared by the bench tests: is a written SVG well-formed XML?

/** A small XML well-formedness check: balanced tags, quoted attributes, no stray '<' or '&'. */
export function wellFormed(xml: string): boolean {
  const stack: string[] = [];
  const tag = /<(\/?)([a-zA-Z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|<!--[\s\S]*?-->|<\?[\s\S]*?\?>/g;
  let last = 0;
  for (let m = tag.exec(xml); m; m = tag.exec(xml)) {
    const between = xml.slice(last, m.index);
    if (/[<]/.test(between) || /&(?!(lt|gt|amp|quot|apos|#\d+);)/.test(between)) return false;
    last = m.index + m[0].length;
    if (!m[2]) continue;
    if (m[1]) {
      if (stack.pop() !== m[2]) return false;
    } else if (!m[4]) stack.push(m[2]);
  }
  return stack.length === 0 && !/[<>]/.test(xml.slice(last).trim());
}
