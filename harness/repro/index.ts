import { qmpWebsocket } from './qmp-websocket.js';
import { smmuv3DefaultNic } from './smmuv3-default-nic.js';
import type { Reproducer } from './types.js';

export type { Reproducer, ReproOptions, ReproOutcome } from './types.js';

/** Every reproducer `harness repro` knows, by name. */
export const REPRODUCERS: readonly Reproducer[] = [qmpWebsocket, smmuv3DefaultNic];

export function findReproducer(name: string): Reproducer | undefined {
  return REPRODUCERS.find((r) => r.name === name);
}
