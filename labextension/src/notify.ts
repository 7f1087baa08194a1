import { Notification } from '@jupyterlab/apputils';
import type { TranslationBundle } from '@jupyterlab/translation';

import type { JobStore } from './jobstore';
import type { IJob } from './tokens';

/**
 * Raise a notification for what a user must not miss while the panel is
 * closed: a job that failed (its first line: what happened and what to do),
 * and what recovery found at server start (an operation a crash cut short).
 */
export function connectNotifications(
  jobs: JobStore,
  trans: TranslationBundle
): void {
  const told = new Set<string>();
  jobs.finished.connect((_, job) => {
    if (job.state === 'failed') {
      told.add(job.id);
      Notification.error(failureText(job, trans), { autoClose: false });
    }
  });
  jobs.changed.connect(() => {
    for (const job of jobs.visible) {
      if (job.kind === 'recover' && !told.has(job.id)) {
        told.add(job.id);
        Notification.warning(job.message, { autoClose: false });
      }
    }
  });
}

/** "Create bio failed: <the error's first line>". */
export function failureText(job: IJob, trans: TranslationBundle): string {
  const first = (job.error ?? job.message).split('\n')[0];
  return trans.__('%1 %2 failed: %3', job.kind, job.target, first);
}
