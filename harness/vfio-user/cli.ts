#!/usr/bin/env node
/**
 * Serves one synthetic device by hand, for QEMU started outside the harness:
 *
 *   node dist/harness/vfio-user/cli.js --socket DIR/dev.sock --device pasid-endpoint [--once]
 *
 * Prints "listening PATH" on stdout once QEMU may connect; logs go to stderr.
 * With --once it exits after the first client session and prints the server's
 * counters as JSON; otherwise it serves until SIGINT or SIGTERM.
 */
import { parseArgs } from 'node:util';
import { deviceDescriptions, loadDeviceDescription } from './devices/index.js';
import { startVfioUserServer } from './server.js';

const usage = `usage: cli.js --socket PATH --device NAME|FILE.json [--once]\n  built-in devices: ${Object.keys(deviceDescriptions).join(', ')}`;

async function main(): Promise<number> {
  let values: { socket?: string; device?: string; once?: boolean };
  try {
    ({ values } = parseArgs({ options: { socket: { type: 'string' }, device: { type: 'string' }, once: { type: 'boolean' } }, strict: true }));
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${usage}\n`);
    return 2;
  }
  if (!values.socket || !values.device) {
    process.stderr.write(`${!values.socket ? '--socket' : '--device'} is required\n${usage}\n`);
    return 2;
  }
  const server = await startVfioUserServer({
    socketPath: values.socket,
    device: loadDeviceDescription(values.device),
    log: (l) => process.stderr.write(`${l}\n`),
  });
  process.stdout.write(`listening ${server.socketPath}\n`);
  const stop = new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  if (values.once) {
    // No deadline on purpose: a person runs this and ends it with a signal.
    await Promise.race([server.waitForSessionEnd(2 ** 31 - 1), stop]);
  } else {
    await stop;
  }
  await server.close();
  if (values.once) process.stdout.write(`${JSON.stringify(server.stats)}\n`);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e: Error) => {
    process.stderr.write(`${e.message}\n`);
    process.exit(1);
  },
);
