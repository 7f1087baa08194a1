import type { TranslationBundle } from '@jupyterlab/translation';

import type { JobStore } from './jobstore';
import type { IJob } from './tokens';

/** Where notifications go: JupyterLab's `Notification` in the app, a fake in tests. */
export interface INotifier {
  error(message: string): void;
  warning(message: string): void;
}

/**
 * Raise a notification for what a user must not miss while the panel is
 * closed: a job that failed (its first line: what happened and what to do),
 * and what recovery found at server start (an operation a crash cut short).
 * Each job is told once.
 */
export function connectNotifications(
  jobs: JobStore,
  trans: TranslationBundle,
  notifier: INotifier
): void {
  const told = new Set<string>();
  jobs.finished.connect((_, job) => {
    if (job.state === 'failed' && !told.has(job.id)) {
      told.add(job.id);
      notifier.error(failureText(job, trans));
    }
  });
  jobs.changed.connect(() => {
    for (const job of jobs.visible) {
      if (job.kind === 'recover' && !told.has(job.id)) {
        told.add(job.id);
        notifier.warning(job.message);
      }
    }
  });
}

/** "create bio failed: <the error's first line>". */
export function failureText(job: IJob, trans: TranslationBundle): string {
  const first = (job.error ?? job.message).split('\n')[0];
  return trans.__('%1 %2 failed: %3', job.kind, job.target, first);
}
