import { expect } from 'chai';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentClosedError, AgentCommandTimeoutError, AgentDeadlineError } from '../../harness/guest/agent.js';
import { bootGuest } from '../../harness/guest/boot.js';
import { readKernelConfig } from '../../harness/guest/image.js';
import { repoRoot } from '../../harness/util/paths.js';
import { boot, useGuest } from './helpers.js';

describe('guest boot and agent (TCG)', function () {
  this.timeout(120_000);
  const guest = useGuest();
  const machines = guest.machines;

  it('reaches the agent within 10 s of launch, with the boot milestones on the console in order', async () => {
    const g = await boot(machines, { image: guest.image });
    expect(g.agentReadyMs, 'launch to agent ready (ms), target 10 s').to.be.at.most(10_000);
    expect(g.agent.kernelRelease).to.equal(guest.image.kernelRelease);
    await g.console.waitFor(`Command line: console=ttyS0,115200`, 1000, { from: 'start' });
    await g.console.waitFor('DMAR: Intel(R) Virtualization Technology for Directed I/O', 1000);
    await g.console.waitFor(/Run \/init as init process/, 1000);
    await g.console.waitFor(/harness-init: started \(kernel \S+, uptime [\d.]+ s\)/, 1000);
    await g.console.waitFor(/harness-init: agent listening on \/dev\/vport\d+p\d+ \(port org\.harness\.agent\)/, 1000);
    expect(g.console.logPath).to.be.a('string');
    expect(readFileSync(g.console.logPath!, 'utf8')).to.include('harness-init: agent listening');
  });

  it('runs commands with their status and output; a hung command is killed at its timeout and the agent goes on', async () => {
    const g = await boot(machines, { image: guest.image });
    const r = await g.agent.run('echo hello; echo oops >&2; exit 7');
    expect(r).to.deep.include({ status: 7, stdout: 'hello\n', stderr: 'oops\n', timedOut: false });
    const t0 = Date.now();
    const e = (await g.agent.run('sleep 600', { timeoutMs: 1000 }).catch((x: unknown) => x)) as AgentCommandTimeoutError;
    expect(e).to.be.instanceOf(AgentCommandTimeoutError);
    expect(Date.now() - t0).to.be.below(8000);
    expect((await g.agent.check('cat /proc/sys/kernel/osrelease')).trim()).to.equal(guest.image.kernelRelease);
  });

  it('runs the kernel the build verified: every fragment option is in the booted /proc/config.gz', async () => {
    const g = await boot(machines, { image: guest.image });
    const booted = new Map<string, string>();
    for (const line of (await g.agent.check('zcat /proc/config.gz')).split('\n')) {
      const eq = line.indexOf('=');
      if (line.startsWith('CONFIG_') && eq > 0) booted.set(line.slice(0, eq), line.slice(eq + 1).replace(/^"(.*)"$/, '$1'));
    }
    const fragment = readFileSync(join(repoRoot, 'images', 'kernel', 'x86_64.config'), 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('CONFIG_'))
      .map((l) => l.split('=') as [string, string]);
    expect(fragment.length).to.be.greaterThan(50);
    const missing = fragment.filter(([k, v]) => booted.get(k) !== v).map(([k, v]) => `${k}=${v} (booted: ${booted.get(k) ?? 'not set'})`);
    expect(missing).to.deep.equal([]);
    expect(booted.get('CONFIG_MODULES')).to.equal(undefined);
    expect(Object.fromEntries(readKernelConfig(guest.image.kernelConfig))).to.deep.equal(Object.fromEntries(booted));
  });

  it('fails a guest whose agent never comes up at the deadline, with the console tail in the error', async () => {
    const err = await bootGuest((d) => machines.launch(d), { image: guest.image, append: ['harness.agent=org.harness.nosuchport'] }, { readyTimeoutMs: 6000 }).catch(
      (x: unknown) => x,
    );
    expect(err).to.be.instanceOf(AgentDeadlineError);
    const msg = (err as Error).message;
    expect(msg).to.include('guest agent to answer PING: no answer within 6000 ms');
    expect(msg).to.include("| harness-init: waiting for agent port 'org.harness.nosuchport'");
    expect(msg).to.match(/full console log: \S+serial0\.log/);
  });

  it('fails at once, not at the deadline, when the guest powers off while booting', async () => {
    const t0 = Date.now();
    const err = await bootGuest((d) => machines.launch(d), { image: guest.image, append: ['harness.role=nonsense'] }, { readyTimeoutMs: 60_000 }).catch((x: unknown) => x);
    expect(err).to.be.instanceOf(AgentClosedError);
    expect((err as Error).message).to.include('FATAL: unknown harness.role=nonsense');
    expect(Date.now() - t0).to.be.below(30_000);
  });

  it('keeps the serial log as an artifact of the test', async function () {
    const g = await boot(machines, { image: guest.image });
    const log = join(g.machine.artifactsDir, 'serial0.log');
    expect(existsSync(log)).to.equal(true);
    expect(existsSync(join(g.machine.artifactsDir, 'boot-timing.json'))).to.equal(true);
  });
});
