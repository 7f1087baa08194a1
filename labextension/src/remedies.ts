import type { IFreezeRequest } from './lifecycle';
import type { IJob } from './tokens';

/** The notebook metadata key of the recorded stack, in the notebook's own metadata and in `language_info`. */
export const STACK_METADATA_KEY = 'condatainer';

/**
 * The stack record a notebook holds: the kernel's own first
 * (`language_info.condatainer`, saved by every client that ran it:
 * JupyterLab, nbclient, nbconvert, papermill), else the one this plugin
 * wrote (`condatainer`) in notebooks saved before kernels carried it.
 */
export function recordedStack(
  getMetadata: (key: string) => unknown
): Record<string, unknown> | null {
  const isObject = (value: unknown): value is Record<string, unknown> =>
    typeof value === 'object' && value !== null && !Array.isArray(value);
  const languageInfo = getMetadata('language_info');
  if (isObject(languageInfo) && isObject(languageInfo[STACK_METADATA_KEY])) {
    return languageInfo[STACK_METADATA_KEY];
  }
  const own = getMetadata(STACK_METADATA_KEY);
  return isObject(own) ? own : null;
}

/** One way to get the recorded stack back (`POST stack/remedies`). */
export interface IRemedy {
  action: 'switch_kernel' | 'freeze' | 'rollback';
  /** What the button says. */
  label: string;
  /** What it does, in a sentence or two. */
  description: string;
  /** switch_kernel: the kernelspec; freeze: the kernel the freeze registers. */
  kernel: string;
  /** freeze, rollback: the env and its recorded revision. */
  env: string;
  revision: number | null;
  /** freeze: the new overlay's name and version. */
  name: string;
  version: string;
  /** It changes what other notebooks and users get: ask first. */
  shared: boolean;
}

/**
 * What applying a remedy needs: the server's routes and the notebook's
 * session, passed in so that the steps are tested with fakes.
 */
export interface IRemedyTarget {
  freeze(env: string, request: IFreezeRequest): Promise<IJob>;
  rollback(env: string, revision: number): Promise<IJob>;
  job(id: string): Promise<IJob>;
  /** Reload the kernelspecs: a freeze registers a new one. */
  refreshKernelspecs(): Promise<void>;
  changeKernel(name: string): Promise<void>;
  /** Restart the notebook's kernel, if it runs: the env it mounts changed. */
  restartKernel(): Promise<void>;
  /** Wait between looks at a running job. */
  sleep(ms: number): Promise<void>;
}

const FINAL_STATES = ['succeeded', 'failed', 'cancelled'];
const POLL_MS = 1000;

/** Follow a job until it ends; an Error with its first line when it did not succeed. */
export async function jobDone(job: IJob, target: IRemedyTarget): Promise<IJob> {
  while (!FINAL_STATES.includes(job.state)) {
    await target.sleep(POLL_MS);
    job = await target.job(job.id);
  }
  if (job.state !== 'succeeded') {
    const first = (job.error || job.message || job.state).split('\n')[0];
    throw new Error(`${job.kind} ${job.target} ${job.state}: ${first}`);
  }
  return job;
}

/**
 * Apply a remedy: switch the notebook's kernel; or freeze the recorded env
 * revision (the freeze registers a kernel) and switch to that kernel; or roll
 * the env back and restart the kernel. A `shared` remedy (the rollback)
 * changes the env for everyone: the caller asks the user first.
 */
export async function applyRemedy(
  remedy: IRemedy,
  target: IRemedyTarget
): Promise<void> {
  switch (remedy.action) {
    case 'switch_kernel':
      await target.changeKernel(remedy.kernel);
      return;
    case 'freeze': {
      const job = await target.freeze(remedy.env, {
        name: remedy.name,
        version: remedy.version,
        revision: remedy.revision ?? undefined,
        register_kernel: true
      });
      await jobDone(job, target);
      await target.refreshKernelspecs();
      await target.changeKernel(remedy.kernel);
      return;
    }
    case 'rollback': {
      const revision = remedy.revision ?? 0; // the server always names it
      await jobDone(await target.rollback(remedy.env, revision), target);
      await target.restartKernel();
      return;
    }
  }
}
