import { expect } from 'chai';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  Agent,
  AgentClosedError,
  AgentCommandError,
  AgentCommandTimeoutError,
  AgentDeadlineError,
  type AgentPort,
} from '../../harness/guest/agent.js';
import { skipBecause } from '../../harness/report/skip.js';
import { repoRoot } from '../../harness/util/paths.js';

/**
 * The real guest agent (images/init/harness/agent.sh) under the host's
 * busybox, its port being the child's stdin/stdout: the same script and
 * protocol as in the guest, without booting one.
 */
class ChildPort implements AgentPort {
  isClosed = false;
  constructor(readonly child: ChildProcessWithoutNullStreams) {
    child.stdout.setEncoding('utf8');
    child.on('close', () => (this.isClosed = true));
  }
  onData(cb: (t: string) => void): () => void {
    this.child.stdout.on('data', cb);
    return () => this.child.stdout.off('data', cb);
  }
  onClose(cb: () => void): () => void {
    this.child.on('close', cb);
    return () => this.child.off('close', cb);
  }
  write(data: string): void {
    this.child.stdin.write(data);
  }
}

/** A port whose far end never answers (a hung guest). */
class SilentPort implements AgentPort {
  isClosed = false;
  written: string[] = [];
  private closeCbs: Array<() => void> = [];
  onData(): () => void {
    return () => {};
  }
  onClose(cb: () => void): () => void {
    this.closeCbs.push(cb);
    return () => {};
  }
  write(d: string): void {
    this.written.push(d);
  }
  close(): void {
    this.isClosed = true;
    for (const cb of this.closeCbs) cb();
  }
}

const BUSYBOX = '/bin/busybox';

describe('guest agent (agent.sh under the host busybox)', function () {
  let child: ChildProcessWithoutNullStreams | undefined;
  let agent: Agent;

  before(function () {
    if (!existsSync(BUSYBOX)) skipBecause(this, `${BUSYBOX} is missing (apt-get install busybox-static; see scripts/bootstrap-tools.txt)`);
  });

  beforeEach(() => {
    const script = join(repoRoot, 'images', 'init', 'harness', 'agent.sh');
    child = spawn(
      BUSYBOX,
      ['sh', '-c', `BB=${BUSYBOX}; . "$0"; agent_work=$(mktemp -d); exec 3>&1; while IFS= read -r line; do agent_handle "$line"; done; rm -rf "$agent_work"`, script],
      { stdio: 'pipe' },
    );
    agent = new Agent(new ChildPort(child));
  });

  afterEach(() => {
    agent.detach();
    if (child && child.exitCode === null) child.kill('SIGKILL');
  });

  it('answers PING', async () => {
    const r = await agent.ready(5000);
    expect(r.uptimeS).to.be.a('number').and.greaterThan(0);
  });

  it('returns status, stdout and stderr of a command', async () => {
    const r = await agent.run('echo out; echo err >&2; exit 3', { timeoutMs: 5000 });
    expect(r).to.deep.include({ status: 3, stdout: 'out\n', stderr: 'err\n', timedOut: false });
  });

  it('keeps binary output and many lines intact', async () => {
    const r = await agent.run(`printf '\\000\\001\\377 x\\n'; seq 1 20000`, { timeoutMs: 10_000 });
    expect([...r.stdoutBytes.subarray(0, 5)]).to.deep.equal([0, 1, 0xff, 0x20, 0x78]);
    const lines = r.stdout.split('\n');
    expect(lines[1]).to.equal('1');
    expect(lines[20000]).to.equal('20000');
  });

  it('feeds stdin and writes files', async () => {
    const r = await agent.run('wc -c; cat', { stdin: 'hello\n' });
    expect(r.stdout).to.equal('6\n');
    const dir = (await agent.check('mktemp -d')).trim();
    await agent.writeFile(`${dir}/f`, Buffer.from([1, 2, 3]));
    expect([...(await agent.readFile(`${dir}/f`))]).to.deep.equal([1, 2, 3]);
    await agent.check(`rm -rf ${dir}`);
  });

  it('kills a command at its timeout and stays usable', async () => {
    const t0 = Date.now();
    const e = (await agent.run('echo started; sleep 30', { timeoutMs: 1000 }).catch((x: unknown) => x)) as AgentCommandTimeoutError;
    expect(e).to.be.instanceOf(AgentCommandTimeoutError);
    expect(e.result.stdout).to.equal('started\n');
    expect(e.message).to.include('was killed in the guest');
    expect(Date.now() - t0).to.be.lessThan(5000);
    expect((await agent.run('echo still here')).stdout).to.equal('still here\n');
  });

  it('does not let a command write into the protocol (fd 3 closed)', async () => {
    const r = await agent.run('echo RES 999 0 0 0 >&3');
    expect(r.status).to.not.equal(0);
    expect(agent.garbage).to.deep.equal([]);
  });

  it('check() reports a failing command with its stderr', async () => {
    const e = (await agent.check('ls /no/such/dir').catch((x: unknown) => x)) as AgentCommandError;
    expect(e).to.be.instanceOf(AgentCommandError);
    expect(e.message).to.include('exited with status').and.include('/no/such/dir');
  });

  it('runs requests in order when several are sent at once', async () => {
    const rs = await Promise.all([1, 2, 3, 4].map((i) => agent.run(`echo ${i}`)));
    expect(rs.map((r) => r.stdout)).to.deep.equal(['1\n', '2\n', '3\n', '4\n']);
  });
});

describe('guest agent deadlines', () => {
  it('fails a request with no reply at the deadline, then refuses further requests', async () => {
    const port = new SilentPort();
    const agent = new Agent(port, () => '  console tail:\n    | [  9.9] hung');
    const e = (await agent.run('true', { timeoutMs: 100, graceMs: 50 }).catch((x: unknown) => x)) as AgentDeadlineError;
    expect(e).to.be.instanceOf(AgentDeadlineError);
    expect(e.message).to.include('guest command "true"').and.include('no answer within 1050 ms').and.include('| [  9.9] hung');
    expect(port.written[0]).to.match(/^RUN 1 1 dHJ1ZQ==\n$/);
    const again = await agent.run('true').catch((x: unknown) => x);
    expect(again).to.equal(e);
    expect(port.written).to.have.length(1);
  });

  it('sends a waiting PING again when the guest says HELLO (firmware may have taken the first), never a RUN', async () => {
    let deliver: (t: string) => void = () => {};
    const port = new (class extends SilentPort {
      override onData(cb?: (t: string) => void): () => void {
        if (cb) deliver = cb;
        return () => {};
      }
    })();
    const agent = new Agent(port);
    const ready = agent.ready(10_000);
    await new Promise((r) => setImmediate(r));
    expect(port.written).to.deep.equal(['PING 1\n']);
    deliver('HELLO 1 7.2.13\n');
    expect(port.written).to.deep.equal(['PING 1\n', 'PING 1\n']);
    deliver('PONG 1 12.5\n');
    expect((await ready).uptimeS).to.equal(12.5);
    const run = agent.run('true', { timeoutMs: 5000 });
    await new Promise((r) => setImmediate(r));
    deliver('HELLO 1 7.2.13\n');
    expect(port.written.slice(2)).to.have.length(1);
    expect(port.written[2]).to.match(/^RUN 2 /);
    port.close();
    await run.catch(() => undefined);
  });

  it('fails pending requests at once when the port closes', async () => {
    const port = new SilentPort();
    const agent = new Agent(port);
    const p = agent.ready(10_000);
    port.close();
    expect(await p.catch((x: unknown) => x)).to.be.instanceOf(AgentClosedError);
    expect(await agent.run('true').catch((x: unknown) => x)).to.be.instanceOf(AgentClosedError);
  });
});
