import { isNode, LineCounter, parseDocument, visit, type Document } from 'yaml';

/**
 * Where a field of a YAML (or JSON, a subset of YAML) file is, so an error can
 * name its line as well as its path. Kept apart from the parsers: they check
 * plain values and name fields by path ("devices[3].bdf"), and this maps the
 * path back to the text.
 */
export class SourceLines {
  private constructor(
    readonly doc: Document.Parsed,
    private readonly lc: LineCounter,
  ) {}

  static parse(text: string): SourceLines {
    const lc = new LineCounter();
    return new SourceLines(parseDocument(text, { lineCounter: lc }), lc);
  }

  /** The 1-based line of `offset`. */
  line(offset: number): number {
    return this.lc.linePos(offset).line;
  }

  /** The line of the value at `field` ("bars[1].size"), else of its nearest ancestor that is there. */
  lineOf(field: string): number | undefined {
    for (let path = fieldPath(field); path.length > 0; path = path.slice(0, -1)) {
      const node = this.doc.getIn(path, true);
      if (isNode(node) && node.range) return this.line(node.range[0]);
    }
    return undefined;
  }

  /** The line of the first alias (`*name`), where an alias bomb starts. */
  firstAliasLine(): number | undefined {
    let at: number | undefined;
    visit(this.doc, {
      Alias(_, node) {
        at = node.range?.[0];
        return visit.BREAK;
      },
    });
    return at === undefined ? undefined : this.line(at);
  }
}

/** "devices[3].bdf" as ['devices', 3, 'bdf']; "(root)" and "" as []. */
export function fieldPath(field: string): Array<string | number> {
  if (field === '' || field === '(root)') return [];
  const out: Array<string | number> = [];
  for (const m of field.matchAll(/([^.[\]]+)|\[(\d+)\]/g)) out.push(m[2] !== undefined ? Number(m[2]) : m[1]!);
  return out;
}

/** At most `max` characters of `text` for an error message, saying how long it was. */
export function excerpt(text: string, max = 80): string {
  return text.length <= max ? text : `${text.slice(0, max)}... (${text.length} characters)`;
}

/** A file's size checked before it is read: `limit` bytes at most, or an error naming both sizes. */
export function sizeProblem(bytes: number, limit: number, what: string): string | undefined {
  return bytes > limit ? `${what} is ${bytes} bytes; the limit is ${limit} bytes (refused before parsing)` : undefined;
}
