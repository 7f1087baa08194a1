import {
  KERNEL_EVENT_SCHEMA_ID,
  countdownMessage,
  formatLeft,
  kernelEvent,
  missedEnds,
  noticeView,
  seenKey
} from '../src/kernelnotices';

describe('kernel notices', () => {
  it('keeps only kernel events', () => {
    expect(
      kernelEvent({ schema_id: 'other', kernel_id: 'k', event: 'x' })
    ).toBeNull();
    expect(
      kernelEvent({ schema_id: KERNEL_EVENT_SCHEMA_ID, event: 'x' })
    ).toBeNull();
    const event = {
      schema_id: KERNEL_EVENT_SCHEMA_ID,
      kernel_id: 'k',
      event: 'culled',
      message: 'idle'
    };
    expect(kernelEvent(event)?.kernel_id).toBe('k');
  });

  it.each([
    [42, '42 s'],
    [899, '14 min 59 s'],
    [3720, '1 h 02 min'],
    [-3, '0 s']
  ])('%d seconds left read %s', (seconds, text) => {
    expect(formatLeft(seconds)).toBe(text);
  });

  it('counts down to the end, then says the limit is reached', () => {
    expect(countdownMessage('12', 1000, 700_000)).toBe(
      'SLURM job 12 ends in 5 min 00 s (its time limit): save your work'
    );
    expect(countdownMessage('12', 1000, 1_000_500)).toBe(
      'SLURM job 12 has reached its time limit'
    );
  });

  it('shows each event as what it means', () => {
    const base = { kernel_id: 'k', message: 'm', job_id: '1' };
    expect(noticeView({ ...base, event: 'running' })).toBeNull();
    expect(noticeView({ ...base, event: 'queued' })).toMatchObject({
      type: 'info',
      cancellable: true
    });
    expect(
      noticeView({ ...base, event: 'walltime-warning', end_time: 5 })
    ).toMatchObject({ type: 'warning', countdown: true });
    expect(noticeView({ ...base, event: 'time-limit' })?.type).toBe('error');
    expect(noticeView({ ...base, event: 'culled' })?.type).toBe('error');
  });

  it('tells a returning user about the ends it missed, once', () => {
    const culled = {
      kernel_id: 'k1',
      job_id: '7',
      ended: 'culled',
      message: 'idle culling',
      updated: 100
    };
    const running = { ...culled, kernel_id: 'k2', ended: '', updated: 5 };
    expect(missedEnds([culled, running], new Set())).toEqual([
      { kernel_id: 'k1', event: 'culled', message: 'idle culling', job_id: '7' }
    ]);
    expect(missedEnds([culled], new Set([seenKey('k1', 100)]))).toEqual([]);
  });
});
