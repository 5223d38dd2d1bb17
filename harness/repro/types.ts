/**
 * A reproducer: one defect or surprise the harness found in QEMU or the
 * kernel, kept as evidence a QEMU developer can rerun with one command
 * (`harness repro NAME`). Each says which QEMU it ran, the command line,
 * what was expected and what was seen.
 */
import type { Arch } from '../qemu/binary.js';

export interface ReproOptions {
  arch: Arch;
  /** A QEMU binary instead of the one the harness finds. */
  qemuPath?: string;
  /** Where the machine's artifacts go. */
  artifactsDir: string;
}

export interface ReproOutcome {
  /** True: QEMU still behaves as the reproducer describes. */
  present: boolean;
  qemu: { path: string; version: string };
  /** QEMU's command line, as a person reruns it. */
  cmdline: string;
  /** What the reproducer did to QEMU, step by step. */
  steps: string[];
  expected: string;
  seen: string;
  /** Observations that rule out a fault of the reproducer itself. */
  control?: string;
  artifactsDir: string;
}

export interface Reproducer {
  name: string;
  /** One line: the defect. */
  summary: string;
  /** Where it was found, and in which versions. */
  found: string;
  run(o: ReproOptions): Promise<ReproOutcome>;
}
