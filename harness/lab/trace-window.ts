/**
 * A QEMU trace read in windows: each call models only the lines QEMU wrote
 * since the last one. Tests that repeat a scenario on one machine judge each
 * repetition on its own lines (iommufd reuses freed ids, so a whole-trace
 * model would mix cycles), and a soak must not re-read, nor keep, every
 * earlier cycle's lines.
 */

import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import type { TraceFormats } from '../trace/formats.js';
import type { IommufdModel, KernelRecord } from '../trace/model.js';
import { iommufdModelOfText } from './l2.js';

export class TraceWindow {
  private offset = 0;
  /** Complete lines read so far (skipped ones too). */
  lines = 0;
  constructor(
    private readonly file: string,
    private readonly formats: TraceFormats,
  ) {}

  /** The model of the complete lines written since the last call. */
  next(kernel: KernelRecord[] = []): IommufdModel {
    return iommufdModelOfText(this.read(), this.formats, kernel);
  }

  /** Passes over what is written so far: the next window starts here. */
  skip(): void {
    this.read();
  }

  private read(): string {
    const fd = openSync(this.file, 'r');
    let buf: Buffer;
    try {
      buf = Buffer.alloc(fstatSync(fd).size - this.offset);
      readSync(fd, buf, 0, buf.length, this.offset);
    } finally {
      closeSync(fd);
    }
    // A line QEMU is still writing waits for the next window.
    const end = buf.lastIndexOf(0x0a) + 1;
    const text = buf.subarray(0, end).toString('utf8');
    this.offset += end;
    for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) this.lines++;
    return text;
  }
}
