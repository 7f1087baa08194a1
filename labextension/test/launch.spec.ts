import type { Event } from '@jupyterlab/services';

import {
  elapsedSeconds,
  formatSeconds,
  LAUNCH_EVENT_SCHEMA_ID,
  launchFromEvent,
  LaunchStore
} from '../src/launch';
import type { ILaunchEvent } from '../src/launch';

function launchEvent(over: Partial<ILaunchEvent> = {}): ILaunchEvent {
  return {
    kernel_id: 'k1',
    kernel_name: 'condatainer-python-3.11',
    step: 'instance',
    state: 'running',
    message: 'starting instance, mounting base + python/3.11',
    elapsed: 0.5,
    error: null,
    ...over
  };
}

describe('launchFromEvent', () => {
  it('reads launch events and ignores other schemas', () => {
    const emission = {
      schema_id: LAUNCH_EVENT_SCHEMA_ID,
      ...launchEvent()
    } as unknown as Event.Emission;
    expect(launchFromEvent(emission)?.step).toBe('instance');
    const job = {
      schema_id: 'https://events.jupyter.org/jupyter_condatainer/job/v1',
      id: 'j'
    } as unknown as Event.Emission;
    expect(launchFromEvent(job)).toBeNull();
  });
});

describe('LaunchStore', () => {
  it('shows the running start, then a failure with its step, until dismissed', () => {
    const store = new LaunchStore();
    store.add(launchEvent({ kernel_id: 'a' }));
    store.add(launchEvent({ kernel_id: 'b', step: 'wait' }));
    expect(store.headline?.event.kernel_id).toBe('b');
    store.add(launchEvent({ kernel_id: 'b', step: 'ready', state: 'ready' }));
    expect(store.headline?.event.kernel_id).toBe('a');
    store.add(
      launchEvent({
        kernel_id: 'a',
        state: 'failed',
        message: 'failed while starting the instance: boom'
      })
    );
    expect(store.headline?.event.state).toBe('failed');
    expect(store.headline?.event.step).toBe('instance');
    store.dismiss('a');
    expect(store.headline).toBeNull();
    expect(store.all.map(l => l.event.kernel_id)).toEqual(['b']);
  });

  it('keeps only the last few ready starts', () => {
    const store = new LaunchStore();
    store.keepReady = 2;
    for (const id of ['a', 'b', 'c']) {
      store.add(launchEvent({ kernel_id: id, step: 'ready', state: 'ready' }));
    }
    expect(store.all.map(l => l.event.kernel_id)).toEqual(['b', 'c']);
  });

  it('counts the seconds of a running start from the server elapsed time', () => {
    const store = new LaunchStore();
    store.add(launchEvent({ elapsed: 2 }), 1000);
    const [launch] = store.all;
    expect(elapsedSeconds(launch, 4000)).toBe(5);
    expect(formatSeconds(75.4)).toBe('1 min 15 s');
    expect(formatSeconds(4.9)).toBe('4 s');
  });
});
