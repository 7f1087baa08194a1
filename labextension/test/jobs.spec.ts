import type { Event } from '@jupyterlab/services';

import {
  activeJobOn,
  activeJobs,
  endsNow,
  jobFromEvent,
  lastLines,
  mergeJobUpdate,
  mergeLogTail,
  shownLogLines,
  shownMessage,
  visibleJobs
} from '../src/jobs';
import { JOB_EVENT_SCHEMA_ID } from '../src/tokens';
import { makeJob } from './factories';

describe('lastLines', () => {
  it('keeps the last lines', () => {
    expect(lastLines(['a', 'b', 'c'], 2)).toEqual(['b', 'c']);
  });

  it('keeps nothing for a count of zero', () => {
    expect(lastLines(['a', 'b'], 0)).toEqual([]);
  });
});

describe('mergeLogTail', () => {
  it('appends only the lines past an overlapping tail', () => {
    expect(mergeLogTail(['a', 'b', 'c'], ['b', 'c', 'd', 'e'], 10)).toEqual([
      'a',
      'b',
      'c',
      'd',
      'e'
    ]);
  });

  it('adds nothing when the same tail comes again', () => {
    expect(mergeLogTail(['a', 'b', 'c'], ['a', 'b', 'c'], 10)).toEqual([
      'a',
      'b',
      'c'
    ]);
  });

  it('adds nothing for an older tail that lies within the kept lines', () => {
    expect(mergeLogTail(['a', 'b', 'c', 'd'], ['b', 'c'], 10)).toEqual([
      'a',
      'b',
      'c',
      'd'
    ]);
  });

  it('adds nothing for an older tail that ends where the kept lines start', () => {
    expect(
      mergeLogTail(['c', 'd', 'e', 'f'], ['a', 'b', 'c', 'd'], 10)
    ).toEqual(['c', 'd', 'e', 'f']);
  });

  it('follows a whole log that contains the kept lines', () => {
    expect(mergeLogTail(['b', 'c'], ['a', 'b', 'c', 'd'], 10)).toEqual([
      'a',
      'b',
      'c',
      'd'
    ]);
  });

  it('keeps a line the log really repeats', () => {
    expect(mergeLogTail(['x'], ['x', 'x'], 10)).toEqual(['x', 'x']);
  });

  it('aligns repeated lines on the longest agreement', () => {
    expect(
      mergeLogTail(['a', 'b', 'a', 'b'], ['a', 'b', 'a', 'b', 'c'], 10)
    ).toEqual(['a', 'b', 'a', 'b', 'c']);
  });

  it('replaces the kept lines by a tail with no line in common', () => {
    expect(mergeLogTail(['a', 'b'], ['x', 'y'], 10)).toEqual(['x', 'y']);
  });

  it('starts from the incoming lines when none are kept', () => {
    expect(mergeLogTail([], ['a', 'b'], 10)).toEqual(['a', 'b']);
  });

  it('keeps the kept lines when the incoming ones are empty', () => {
    expect(mergeLogTail(['a', 'b'], [], 10)).toEqual(['a', 'b']);
  });

  it('keeps only the last maxLines', () => {
    expect(mergeLogTail(['a', 'b', 'c'], ['c', 'd', 'e'], 3)).toEqual([
      'c',
      'd',
      'e'
    ]);
  });

  it('never repeats a line over a stream of five-line event tails', () => {
    const log = Array.from({ length: 40 }, (_, index) => `line ${index}`);
    let kept: string[] = [];
    for (let end = 1; end <= log.length; end++) {
      kept = mergeLogTail(kept, log.slice(Math.max(0, end - 5), end), 20);
    }
    expect(kept).toEqual(log.slice(-20));
  });
});

describe('mergeJobUpdate', () => {
  it('stores a job first seen with the tail of its whole log, without the log', () => {
    const stored = mergeJobUpdate(
      undefined,
      makeJob({ log: ['1', '2', '3', '4'] }),
      2
    );
    expect(stored?.log).toBeUndefined();
    expect(stored?.log_tail).toEqual(['3', '4']);
  });

  it('merges an event tail into the stored tail', () => {
    const previous = makeJob({ log_tail: ['1', '2', '3'] });
    const stored = mergeJobUpdate(
      previous,
      makeJob({ log_tail: ['2', '3', '4'], progress: 0.7 }),
      10
    );
    expect(stored?.log_tail).toEqual(['1', '2', '3', '4']);
    expect(stored?.progress).toBe(0.7);
  });

  it('keeps the stored tail when the update has no log', () => {
    const previous = makeJob({ log_tail: ['1', '2'] });
    const stored = mergeJobUpdate(previous, makeJob({ message: 'later' }), 10);
    expect(stored?.log_tail).toEqual(['1', '2']);
    expect(stored?.message).toBe('later');
  });

  it('ignores a running update for a job that already ended', () => {
    const previous = makeJob({ state: 'succeeded', finished: 200 });
    expect(mergeJobUpdate(previous, makeJob(), 10)).toBeNull();
  });

  it('accepts a final update for a job that already ended', () => {
    const previous = makeJob({ state: 'failed', finished: 200 });
    const update = makeJob({ state: 'failed', error: 'boom', finished: 200 });
    expect(mergeJobUpdate(previous, update, 10)?.error).toBe('boom');
  });
});

describe('endsNow', () => {
  const running = makeJob();
  const done = makeJob({ state: 'succeeded', finished: 200 });

  it('is true when a known job reaches a final state', () => {
    expect(endsNow(running, done, false)).toBe(true);
  });

  it('is false for a job that stays ended', () => {
    expect(endsNow(done, done, true)).toBe(false);
  });

  it('is false for a job that still runs', () => {
    expect(endsNow(running, running, true)).toBe(false);
  });

  it('counts a job first seen ended only after the first listing', () => {
    expect(endsNow(undefined, done, false)).toBe(false);
    expect(endsNow(undefined, done, true)).toBe(true);
  });
});

describe('activeJobs and visibleJobs', () => {
  const jobs = [
    makeJob({ id: 'late', created: 30 }),
    makeJob({ id: 'old-done', state: 'succeeded', created: 1, finished: 5 }),
    makeJob({ id: 'early', state: 'pending', created: 10 }),
    makeJob({ id: 'new-fail', state: 'failed', created: 2, finished: 50 }),
    makeJob({ id: 'mid-cancel', state: 'cancelled', created: 3, finished: 20 })
  ];
  const ids = (list: { id: string }[]) => list.map(job => job.id);

  it('lists pending and running jobs, oldest first', () => {
    expect(ids(activeJobs(jobs))).toEqual(['early', 'late']);
  });

  it('lists active jobs, then the most recently ended ones', () => {
    expect(ids(visibleJobs(jobs, 2))).toEqual([
      'early',
      'late',
      'new-fail',
      'mid-cancel'
    ]);
  });

  it('lists no ended job when none may be shown', () => {
    expect(ids(visibleJobs(jobs, 0))).toEqual(['early', 'late']);
  });

  it('finds the active job on a target, not an ended one', () => {
    const list = [
      makeJob({ id: 'done', target: 'a', state: 'succeeded', finished: 9 }),
      makeJob({ id: 'runs', target: 'a' }),
      makeJob({ id: 'other', target: 'b' })
    ];
    expect(activeJobOn(list, 'a')?.id).toBe('runs');
    expect(activeJobOn(list, 'c')).toBeUndefined();
  });
});

describe('jobFromEvent', () => {
  it('returns the job of a job event, without the schema id', () => {
    const { log_tail, ...fields } = makeJob({ log_tail: ['x'] });
    const emission = {
      schema_id: JOB_EVENT_SCHEMA_ID,
      ...fields,
      log_tail
    } as Event.Emission;
    const job = jobFromEvent(emission);
    expect(job).toEqual({ ...fields, log_tail });
    expect(job).not.toHaveProperty('schema_id');
  });

  it('ignores other events', () => {
    const emission = {
      schema_id: 'https://events.jupyter.org/jupyter_server/kernel_actions/v1'
    } as Event.Emission;
    expect(jobFromEvent(emission)).toBeNull();
  });
});

describe('shownMessage', () => {
  it('shows the message of a running job', () => {
    expect(shownMessage(makeJob({ message: 'solving' }))).toBe('solving');
  });

  it('hides a message that repeats the start of the error', () => {
    const job = makeJob({
      state: 'failed',
      message: 'conda failed',
      error: 'conda failed\nPackagesNotFoundError: nope'
    });
    expect(shownMessage(job)).toBe('');
  });

  it('keeps a message the error does not start with', () => {
    const job = makeJob({ state: 'failed', message: 'stopped', error: 'x' });
    expect(shownMessage(job)).toBe('stopped');
  });
});

describe('shownLogLines', () => {
  const tail = ['1', '2', '3'];

  it('shows the last lines of a running job', () => {
    expect(shownLogLines(makeJob({ log_tail: tail }), 2)).toEqual(['2', '3']);
  });

  it('shows the lines of a failed job', () => {
    const job = makeJob({ state: 'failed', log_tail: tail, finished: 9 });
    expect(shownLogLines(job, 5)).toEqual(tail);
  });

  it('shows no lines for a job that succeeded or was cancelled', () => {
    for (const state of ['succeeded', 'cancelled'] as const) {
      const job = makeJob({ state, log_tail: tail, finished: 9 });
      expect(shownLogLines(job, 5)).toEqual([]);
    }
  });
});
