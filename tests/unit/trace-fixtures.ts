/** Shared by the trace unit tests: the fixtures folder, 11.1.3's formats, models of fixture files. */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TraceFormats } from '../../harness/trace/formats.js';
import { IommufdModel } from '../../harness/trace/model.js';
import { parseTrace } from '../../harness/trace/parse.js';
import { repoRoot } from '../../harness/util/paths.js';

export const TRACE_FIXTURES = join(repoRoot, 'tests', 'fixtures', 'trace');
export const traceFixture = (name: string): string => readFileSync(join(TRACE_FIXTURES, name), 'utf8');
/** Verbatim lines of QEMU 11.1.3's trace-events-all: the unit tests need no reference QEMU. */
export const formats1113 = TraceFormats.fromText(traceFixture('trace-events-11.1.3-excerpt'));

/** The model of a fixture (path under tests/fixtures/trace); every line must parse unless `garbled`. */
export function fixtureModel(name: string, opts: { formats?: TraceFormats; garbled?: boolean } = {}): IommufdModel {
  return textModel(traceFixture(name), opts);
}

/** The model of trace text; every line must parse unless `garbled`. */
export function textModel(text: string, opts: { formats?: TraceFormats; garbled?: boolean } = {}): IommufdModel {
  const p = parseTrace(text, opts.formats ?? formats1113);
  if (!opts.garbled) expect(p.diagnostics, 'lines that did not parse').to.deep.equal([]);
  return IommufdModel.fromParse(p);
}

/** The message of the assertion `fn` makes, which must fail. */
export function failure(fn: () => void): string {
  try {
    fn();
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error('expected the assertion to fail');
}
