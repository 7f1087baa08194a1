import { Signal } from '@lumino/signaling';
import type { ISignal } from '@lumino/signaling';

import {
  activeJobOn,
  activeJobs,
  endsNow,
  mergeJobUpdate,
  visibleJobs
} from './jobs';
import type { IJob } from './tokens';

/**
 * The jobs the panel knows about, fed by REST answers and bus events alike.
 *
 * Both sources describe the same job in slightly different shapes (REST has
 * the whole `log`, events only `log_tail`), and can arrive in any order, so
 * every update goes through `upsert`, which merges the log into a short tail
 * without repeating lines and reports the moment a job reaches a final
 * state, exactly once.
 */
export class JobStore {
  /** Emitted when any job is added, changed or dropped. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Emitted once per job when it reaches a final state. */
  get finished(): ISignal<this, IJob> {
    return this._finished;
  }

  /** Number of log lines kept per job for display. */
  tailLength = 5;

  /** How many finished jobs `visible` lists, newest first. */
  maxFinished = 5;

  /** Pending and running jobs, oldest first. */
  get active(): IJob[] {
    return activeJobs(this._all());
  }

  /** Active jobs, then the most recent finished ones. */
  get visible(): IJob[] {
    return visibleJobs(this._all(), this.maxFinished);
  }

  /** The job that is changing an overlay right now, if any. */
  activeOn(target: string): IJob | undefined {
    return activeJobOn(this._all(), target);
  }

  get(id: string): IJob | undefined {
    return this._jobs.get(id);
  }

  /**
   * Add or update one job (see `mergeJobUpdate`). Keeps only a tail of the
   * log: the panel shows the last lines, and the full log is fetched on
   * demand.
   */
  upsert(job: IJob): void {
    const previous = this._jobs.get(job.id);
    const stored = mergeJobUpdate(previous, job, this.tailLength);
    if (!stored) {
      return;
    }
    this._jobs.set(job.id, stored);
    this._changed.emit();
    if (endsNow(previous, stored, this._loaded)) {
      this._finished.emit(stored);
    }
  }

  /**
   * Replace the whole list with a fresh `GET jobs` answer; jobs the server
   * no longer reports are dropped.
   */
  reset(jobs: IJob[]): void {
    const ids = new Set(jobs.map(job => job.id));
    for (const id of [...this._jobs.keys()]) {
      if (!ids.has(id)) {
        this._jobs.delete(id);
      }
    }
    jobs.forEach(job => this.upsert(job));
    this._loaded = true;
    this._changed.emit();
  }

  private _all(): IJob[] {
    return [...this._jobs.values()];
  }

  private _loaded = false;
  private _jobs = new Map<string, IJob>();
  private _changed = new Signal<this, void>(this);
  private _finished = new Signal<this, IJob>(this);
}
