import { Signal } from '@lumino/signaling';
import type { ISignal } from '@lumino/signaling';

import { isFinalState } from './tokens';
import type { IJob } from './tokens';

/**
 * The jobs the panel knows about, fed by REST answers and bus events alike.
 *
 * Both sources describe the same job in slightly different shapes (REST has
 * the whole `log`, events only `log_tail`), and can arrive in any order, so
 * every update goes through `upsert`, which keeps a short tail of the log and
 * reports the moment a job reaches a final state, exactly once.
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
    return this._all()
      .filter(job => !isFinalState(job.state))
      .sort((a, b) => a.created - b.created);
  }

  /** Active jobs, then the most recent finished ones. */
  get visible(): IJob[] {
    const finished = this._all()
      .filter(job => isFinalState(job.state))
      .sort((a, b) => (b.finished ?? b.created) - (a.finished ?? a.created))
      .slice(0, this.maxFinished);
    return [...this.active, ...finished];
  }

  get(id: string): IJob | undefined {
    return this._jobs.get(id);
  }

  /**
   * Add or update one job. Keeps only a tail of the log: the panel shows the
   * last lines, and the full log is fetched on demand.
   */
  upsert(job: IJob): void {
    const previous = this._jobs.get(job.id);
    // Ignore an update that is older than what we have: an event can overtake
    // the REST answer of the request that started the job.
    if (previous && isFinalState(previous.state) && !isFinalState(job.state)) {
      return;
    }
    const tail =
      job.log_tail ??
      job.log?.slice(-this.tailLength) ??
      previous?.log_tail ??
      [];
    const stored: IJob = { ...job, log: undefined, log_tail: tail };
    this._jobs.set(job.id, stored);
    this._changed.emit();
    // A job first seen already ended counts only after the first listing:
    // those listed on page load changed nothing the panel has shown yet.
    const endedNow =
      isFinalState(stored.state) &&
      (previous ? !isFinalState(previous.state) : this._loaded);
    if (endedNow) {
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
