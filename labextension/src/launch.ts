import type { Event } from '@jupyterlab/services';
import { Token } from '@lumino/coreutils';
import { Signal } from '@lumino/signaling';
import type { ISignal } from '@lumino/signaling';

/** Schema id of the launch steps the provisioners emit on the event bus. */
export const LAUNCH_EVENT_SCHEMA_ID =
  'https://events.jupyter.org/jupyter_condatainer/launch/v1';

/** Steps of a start, in the order they can happen (`server/events/launch.yaml`). */
export type LaunchStep =
  | 'stack'
  | 'instance'
  | 'queue'
  | 'python'
  | 'supply'
  | 'kernel'
  | 'wait'
  | 'ready';

/** One launch event, as the server emits it. */
export interface ILaunchEvent {
  kernel_id: string;
  kernel_name: string;
  step: LaunchStep;
  state: 'running' | 'ready' | 'failed';
  message: string;
  /** Seconds since the start began, when the server emitted the event. */
  elapsed: number;
  error?: string | null;
}

/** A kernel's start as the UI shows it: its latest event and when it came. */
export interface ILaunch {
  event: ILaunchEvent;
  /** `Date.now()` when the event arrived, to keep counting the seconds. */
  receivedAt: number;
}

/** The launch event in a bus emission, or null for other schemas and bad data. */
export function launchFromEvent(emission: Event.Emission): ILaunchEvent | null {
  if (emission.schema_id !== LAUNCH_EVENT_SCHEMA_ID) {
    return null;
  }
  const data = emission as unknown as Partial<ILaunchEvent>;
  if (
    typeof data.kernel_id !== 'string' ||
    typeof data.step !== 'string' ||
    typeof data.state !== 'string' ||
    typeof data.message !== 'string'
  ) {
    return null;
  }
  return {
    kernel_id: data.kernel_id,
    kernel_name: data.kernel_name ?? '',
    step: data.step,
    state: data.state,
    message: data.message,
    elapsed: typeof data.elapsed === 'number' ? data.elapsed : 0,
    error: data.error ?? null
  };
}

/** Seconds a start has taken so far (it goes on counting while it runs). */
export function elapsedSeconds(launch: ILaunch, now: number): number {
  const { event } = launch;
  const since =
    event.state === 'running' ? Math.max(0, now - launch.receivedAt) : 0;
  return event.elapsed + since / 1000;
}

/** `12.3` → `12 s`; `75` → `1 min 15 s`. */
export function formatSeconds(seconds: number): string {
  const whole = Math.floor(seconds);
  if (whole < 60) {
    return `${whole} s`;
  }
  return `${Math.floor(whole / 60)} min ${whole % 60} s`;
}

/**
 * The starts of CondaTainer kernels this page has heard of: running ones,
 * and failed ones until dismissed. Ready ones are kept briefly (the last
 * `keepReady`) so the panel can show how long they took.
 */
export class LaunchStore {
  /** Emitted whenever a start changes, is added or dismissed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** How many finished (ready) starts stay listed. */
  keepReady = 3;

  /** Opens a terminal in a kernel's container; set by the plugin, none in tests. */
  openTerminal: ((kernelId: string) => Promise<void>) | null = null;

  /** Add one event; events of other schemas are ignored. */
  add(event: ILaunchEvent, now = Date.now()): void {
    this._launches.delete(event.kernel_id);
    this._launches.set(event.kernel_id, { event, receivedAt: now });
    const ready = this.all.filter(l => l.event.state === 'ready');
    for (const old of ready.slice(
      0,
      Math.max(0, ready.length - this.keepReady)
    )) {
      this._launches.delete(old.event.kernel_id);
    }
    this._changed.emit();
  }

  /** Forget a start (a failure the user has read). */
  dismiss(kernelId: string): void {
    if (this._launches.delete(kernelId)) {
      this._changed.emit();
    }
  }

  /** Every start kept, oldest first. */
  get all(): ILaunch[] {
    return [...this._launches.values()];
  }

  /** Starts still running, oldest first. */
  get running(): ILaunch[] {
    return this.all.filter(l => l.event.state === 'running');
  }

  /**
   * What the status bar shows: the newest running start, else the newest
   * failure; nothing once every start ended well.
   */
  get headline(): ILaunch | null {
    const all = this.all;
    const running = all.filter(l => l.event.state === 'running');
    const failed = all.filter(l => l.event.state === 'failed');
    return running.pop() ?? failed.pop() ?? null;
  }

  private _launches = new Map<string, ILaunch>();
  private _changed = new Signal<this, void>(this);
}

/** The launch progress store, shared by the status bar item and the panel. */
export const ILaunchProgress = new Token<LaunchStore>(
  'jupyter-condatainer:ILaunchProgress',
  'The steps of CondaTainer kernel starts, from the server event bus.'
);
