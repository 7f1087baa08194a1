import { JobStore } from '../src/jobstore';
import type { IJob } from '../src/tokens';
import { makeJob } from './factories';

/** A store with counters of its signals. */
function watchedStore(): {
  store: JobStore;
  changes: () => number;
  finished: IJob[];
} {
  const store = new JobStore();
  let changes = 0;
  const finished: IJob[] = [];
  store.changed.connect(() => {
    changes++;
  });
  store.finished.connect((_, job) => {
    finished.push(job);
  });
  return { store, changes: () => changes, finished };
}

describe('JobStore', () => {
  it('keeps each log line once while events with overlapping tails arrive', () => {
    const { store } = watchedStore();
    store.tailLength = 10;
    // The POST answer that started the job has the whole log so far.
    store.upsert(makeJob({ log: ['solving', 'downloading'] }));
    // Every new log line is an event with the last five lines.
    const log = ['solving', 'downloading', 'a', 'b', 'c', 'd', 'e', 'f'];
    for (let end = 3; end <= log.length; end++) {
      store.upsert(makeJob({ log_tail: log.slice(Math.max(0, end - 5), end) }));
    }
    // A progress event without a new line repeats the same tail.
    store.upsert(makeJob({ log_tail: log.slice(-5), progress: 0.9 }));
    expect(store.get('job1')?.log_tail).toEqual(log);
    expect(store.get('job1')?.progress).toBe(0.9);
  });

  it('does not take back lines for a listing older than the events', () => {
    const { store } = watchedStore();
    store.upsert(makeJob({ log_tail: ['a', 'b', 'c', 'd', 'e'] }));
    store.upsert(makeJob({ log_tail: ['b', 'c', 'd', 'e', 'f'] }));
    store.reset([makeJob({ log_tail: ['a', 'b', 'c', 'd', 'e'] })]);
    expect(store.get('job1')?.log_tail).toEqual(['b', 'c', 'd', 'e', 'f']);
  });

  it('emits finished once when a job ends, and ignores later stale updates', () => {
    const { store, finished } = watchedStore();
    store.reset([]);
    store.upsert(makeJob());
    const done = makeJob({ state: 'succeeded', progress: 1, finished: 200 });
    store.upsert(done);
    store.upsert(done);
    store.upsert(makeJob({ progress: 0.6 }));
    expect(finished.map(job => job.id)).toEqual(['job1']);
    expect(store.get('job1')?.state).toBe('succeeded');
  });

  it('does not report jobs that had ended before the first listing', () => {
    const { store, finished } = watchedStore();
    store.reset([makeJob({ state: 'failed', error: 'x', finished: 50 })]);
    expect(finished).toEqual([]);
    store.upsert(
      makeJob({ id: 'job2', state: 'succeeded', finished: 60, created: 55 })
    );
    expect(finished.map(job => job.id)).toEqual(['job2']);
  });

  it('drops the jobs a new listing no longer has', () => {
    const { store, changes } = watchedStore();
    store.upsert(makeJob({ id: 'gone' }));
    store.upsert(makeJob({ id: 'kept' }));
    const before = changes();
    store.reset([makeJob({ id: 'kept' })]);
    expect(store.get('gone')).toBeUndefined();
    expect(store.active.map(job => job.id)).toEqual(['kept']);
    expect(changes()).toBeGreaterThan(before);
  });

  it('lists active jobs and the configured number of finished ones', () => {
    const { store } = watchedStore();
    store.maxFinished = 1;
    store.upsert(makeJob({ id: 'runs', target: 'a' }));
    store.upsert(
      makeJob({ id: 'old', target: 'b', state: 'succeeded', finished: 10 })
    );
    store.upsert(
      makeJob({ id: 'new', target: 'b', state: 'failed', finished: 20 })
    );
    expect(store.visible.map(job => job.id)).toEqual(['runs', 'new']);
    expect(store.activeOn('a')?.id).toBe('runs');
    expect(store.activeOn('b')).toBeUndefined();
  });

  it('keeps the configured number of log lines', () => {
    const { store } = watchedStore();
    store.tailLength = 2;
    store.upsert(makeJob({ log: ['1', '2', '3'] }));
    store.upsert(makeJob({ log_tail: ['2', '3', '4'] }));
    expect(store.get('job1')?.log_tail).toEqual(['3', '4']);
  });
});
