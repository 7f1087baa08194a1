import type { TranslationBundle } from '@jupyterlab/translation';

import { JobStore } from '../src/jobstore';
import { connectNotifications, failureText } from '../src/notify';
import { makeJob } from './factories';

/** Fills %1, %2, … as JupyterLab's translation bundles do. */
const trans = {
  __: (message: string, ...args: string[]) =>
    message.replace(/%(\d)/g, (_, n) => args[Number(n) - 1])
} as TranslationBundle;

function notified(): {
  store: JobStore;
  errors: string[];
  warnings: string[];
} {
  const store = new JobStore();
  const errors: string[] = [];
  const warnings: string[] = [];
  connectNotifications(store, trans, {
    error: message => errors.push(message),
    warning: message => warnings.push(message)
  });
  return { store, errors, warnings };
}

describe('notifications', () => {
  it('say a failed job once, with the first line of its error', () => {
    const { store, errors } = notified();
    store.reset([]);
    store.upsert(makeJob({ kind: 'create', target: 'bio' }));
    const failed = makeJob({
      kind: 'create',
      target: 'bio',
      state: 'failed',
      finished: 200,
      error:
        'No conda channel could be reached. Give a channel…\nmm-create failed:\nERROR: dns error'
    });
    store.upsert(failed);
    store.upsert({ ...failed, message: 'again' });
    expect(errors).toEqual([
      'create bio failed: No conda channel could be reached. Give a channel…'
    ]);
  });

  it('tell what recovery found, once, and nothing for succeeded jobs', () => {
    const { store, errors, warnings } = notified();
    const recovered = makeJob({
      id: 'r1',
      kind: 'recover',
      target: '',
      state: 'succeeded',
      finished: 100,
      message: 'install into bio was cut short; bio is as it was before'
    });
    store.reset([recovered]);
    store.reset([recovered]);
    expect(warnings).toEqual([recovered.message]);
    expect(errors).toEqual([]);
  });

  it('fall back to the message when a failed job has no error', () => {
    const job = makeJob({ state: 'failed', error: null, message: 'gone' });
    expect(failureText(job, trans)).toBe('install env/1.0 failed: gone');
  });
});
