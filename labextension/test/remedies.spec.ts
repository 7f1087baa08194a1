import type { IFreezeRequest } from '../src/lifecycle';
import type { IRemedy, IRemedyTarget } from '../src/remedies';
import { applyRemedy, recordedStack } from '../src/remedies';
import type { IJob } from '../src/tokens';
import { makeJob } from './factories';

function makeRemedy(fields: Partial<IRemedy>): IRemedy {
  return {
    action: 'switch_kernel',
    label: '',
    description: '',
    kernel: '',
    env: '',
    revision: null,
    name: '',
    version: '',
    shared: false,
    ...fields
  };
}

/** A target that records every call; jobs run once, then end as `ends`. */
function fakeTarget(ends: Partial<IJob> = { state: 'succeeded' }): {
  target: IRemedyTarget;
  calls: string[];
} {
  const calls: string[] = [];
  const job = (kind: string, target: string) =>
    makeJob({ id: 'j1', kind, target, state: 'running' });
  const target: IRemedyTarget = {
    freeze: async (env: string, request: IFreezeRequest) => {
      calls.push(`freeze ${env} ${JSON.stringify(request)}`);
      return job('freeze', env);
    },
    rollback: async (env: string, revision: number) => {
      calls.push(`rollback ${env} ${revision}`);
      return job('rollback', env);
    },
    job: async (id: string) => {
      calls.push(`job ${id}`);
      return makeJob({ id, kind: 'freeze', target: 'bio', ...ends });
    },
    refreshKernelspecs: async () => {
      calls.push('refresh');
    },
    changeKernel: async (name: string) => {
      calls.push(`kernel ${name}`);
    },
    restartKernel: async () => {
      calls.push('restart');
    },
    sleep: async () => undefined
  };
  return { target, calls };
}

describe('recordedStack', () => {
  const record = { version: 1 };
  it("prefers the kernel's record in language_info", () => {
    const metadata: Record<string, unknown> = {
      language_info: { name: 'python', condatainer: record },
      condatainer: { version: 0 }
    };
    expect(recordedStack(key => metadata[key])).toBe(record);
  });
  it("falls back to the plugin's key, and to null", () => {
    expect(
      recordedStack(key =>
        key === 'condatainer' ? record : { name: 'python' }
      )
    ).toBe(record);
    expect(recordedStack(() => undefined)).toBeNull();
  });
});

describe('applyRemedy', () => {
  it('switches the kernel', async () => {
    const { target, calls } = fakeTarget();
    const remedy = makeRemedy({ kernel: 'condatainer-kept' });
    await applyRemedy(remedy, target);
    expect(calls).toEqual(['kernel condatainer-kept']);
  });

  it('freezes the revision, waits for the job, then switches to its kernel', async () => {
    const { target, calls } = fakeTarget();
    const remedy = makeRemedy({
      action: 'freeze',
      env: 'bio',
      revision: 2,
      name: 'bio-rev2',
      version: '1.0',
      kernel: 'condatainer-bio-rev2-1.0-frozen'
    });
    await applyRemedy(remedy, target);
    expect(calls).toEqual([
      'freeze bio {"name":"bio-rev2","version":"1.0","revision":2,"register_kernel":true}',
      'job j1',
      'refresh',
      'kernel condatainer-bio-rev2-1.0-frozen'
    ]);
  });

  it('rolls back, waits for the job, then restarts the kernel', async () => {
    const remedy = makeRemedy({
      action: 'rollback',
      env: 'bio',
      revision: 2,
      shared: true
    });
    const { target, calls } = fakeTarget();
    await applyRemedy(remedy, target);
    expect(calls).toEqual(['rollback bio 2', 'job j1', 'restart']);
  });

  it('says why a job failed and switches no kernel', async () => {
    const { target, calls } = fakeTarget({
      state: 'failed',
      error: 'no space left on device\ndetails'
    });
    const remedy = makeRemedy({
      action: 'freeze',
      env: 'bio',
      revision: 2,
      kernel: 'k'
    });
    await expect(applyRemedy(remedy, target)).rejects.toThrow(
      'freeze bio failed: no space left on device'
    );
    expect(calls).not.toContain('kernel k');
  });
});
