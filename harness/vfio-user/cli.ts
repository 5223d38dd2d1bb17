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
import { EXIT, runCommandSpec, str, UsageError, type CommandSpec, type Parsed } from '../cli/options.js';
import { deviceDescriptions, loadDeviceDescription } from './devices/index.js';
import { startVfioUserServer } from './server.js';

const SPEC: CommandSpec = {
  name: 'vfio-user/cli.js',
  summary: `Serves one synthetic PCIe device over vfio-user, for a QEMU started by hand (-device vfio-user-pci,socket=...). Prints "listening PATH" once QEMU may connect; logs go to stderr. Built-in devices: ${Object.keys(deviceDescriptions).join(', ')}.`,
  options: {
    socket: { type: 'string', value: 'PATH', help: 'the unix socket to listen on (required)' },
    device: { type: 'string', value: 'NAME|FILE.json', help: 'a built-in device or a description file (required)' },
    once: { type: 'boolean', help: "exit after the first client session and print the server's counters as JSON" },
  },
  epilogue: 'exit status: 0 served until the session ended or SIGINT/SIGTERM, 1 the server failed, 128 bad usage',
};

async function main({ values: v }: Parsed): Promise<number> {
  const values = { socket: str(v, 'socket'), device: str(v, 'device'), once: v.once === true };
  if (!values.socket || !values.device) throw new UsageError(`${!values.socket ? '--socket' : '--device'} is required`);
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

runCommandSpec(SPEC, process.argv.slice(2), main).then(
  (code) => process.exit(code),
  (e: Error) => {
    process.stderr.write(`${e.message}\n`);
    process.exit(EXIT.failed);
  },
);
